"""The node's configuration: one frozen object from defaults < config file < command-line flags (SPEC §8).

Every key is declared once in :data:`KEYS` (name, parser, per-network default, help). From that table
come the ``twistd timecoin`` and ``timecoin config`` flags (key ``rpc_port`` is flag ``--rpc-port``),
the checks, the JSON dump and ``etc/timecoin.conf.example`` (:func:`render_example`; a test keeps the
file equal to it).

File format: INI with one ``[timecoin]`` section (``key = value``, ``#`` comments). Unknown keys or
sections are errors, not silently ignored (a typo must not leave a default in force). Relative paths in
a file are relative to the file's folder, so ``timecoin status --config D/node1/timecoin.conf`` works
from anywhere; relative paths given as flags are relative to the working directory.

The network (``devnet`` default, ``testnet``, ``mainnet``) picks the defaults: ports, block interval,
consensus timeouts (SPEC §4: mainnet 30 s per phase +5 s per round; testnet CometBFT's defaults;
devnet CometBFT's test profile). Every consensus timeout and per-round increment must be > 0 (a 0 s
step timeout gives up before a message can arrive; a 0 s increment stops timeouts growing, which
liveness needs); ``block_interval`` may be 0 (benchmarks). ``datadir`` must not be empty. Durations
accept ``ms``/``s``/``m``/``h``/``d`` suffixes (seconds otherwise), sizes ``KiB``/``MiB``/``GiB`` (bytes
otherwise).
"""
from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from timecoin.errors import ConfigError

NETWORKS = ("devnet", "testnet", "mainnet")
SECTION = "timecoin"


# -- value parsers: str -> value, ValueError with the reason ------------------------------------------
def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""), 10)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range [{lo}, {hi}]")
        return value
    return parse


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(hi: float, positive: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        m = _DURATION.match(text)
        if not m:
            raise ValueError(f"{text!r} is not a duration (e.g. 30, 1.5s, 500ms, 24h)")
        value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        if not math.isfinite(value) or value > hi:
            raise ValueError(f"{text!r} is longer than the maximum of {hi:g} s")
        if positive and value <= 0:
            raise ValueError(f"{text!r} must be longer than 0 s")
        return value
    return parse


_SIZE = re.compile(r"^\s*([0-9_]+)\s*(B|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def _size(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        m = _SIZE.match(text)
        if not m:
            raise ValueError(f"{text!r} is not a size (e.g. 1048576, 64KiB, 8MiB)")
        value = int(m.group(1).replace("_", "")) * _SIZE_UNITS[m.group(2)]
        if not lo <= value <= hi:
            raise ValueError(f"{value} bytes is out of range [{lo}, {hi}]")
        return value
    return parse


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return text.strip()
    return parse


def _text(text: str) -> str:
    return text.strip()


def _required_path(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty (omit the key for the default)")
    return text.strip()


_HOST = re.compile(r"^[A-Za-z0-9.:\-]+$")


def _host(text: str) -> str:
    if not _HOST.match(text.strip()):
        raise ValueError(f"{text!r} is not a host name or IP address")
    return text.strip()


def _multiaddrs(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in re.split(r"[,\s]+", text) if item.strip())
    for item in items:
        if not item.startswith("/") or "/tcp/" not in item:
            raise ValueError(f"{item!r} is not a multiaddr like /ip4/127.0.0.1/tcp/9333/p2p/16Uiu2HA...")
    return items


def external_host_port(text: str) -> tuple[str, int | None]:
    """``external_address`` -> (IP, port or None: the bound P2P port). ValueError says what is wrong.

    Accepts ``IP``, ``IP:PORT``, ``[IPv6]:PORT``, a bare IPv6 address, or a multiaddr ``/ip4|ip6/IP/tcp/PORT``
    (without ``/p2p/``: the node appends its own PeerID). An IP, not a name: peers dial what they are told
    without resolving it. Unspecified (0.0.0.0, ::) and multicast addresses are refused: no one can dial them.
    """
    text = text.strip()
    port_text: str | None = None
    if text.startswith("/"):
        parts = text[1:].split("/")
        if len(parts) != 4 or parts[0] not in ("ip4", "ip6") or parts[2] != "tcp":
            raise ValueError(f"{text!r} is not a multiaddr like /ip4/203.0.113.7/tcp/9333 (no /p2p/: the node "
                             "adds its own PeerID)")
        host, port_text = parts[1], parts[3]
    elif text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [IPv6]:PORT")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (give host[:port] or /ip4/H/tcp/P)") from None
    if text.startswith("/") and (parts[0] == "ip4") != (addr.version == 4):
        raise ValueError(f"{text!r}: /{parts[0]} with an IPv{addr.version} address")
    if addr.is_unspecified or addr.is_multicast:
        raise ValueError(f"{text!r}: {addr} cannot be dialed by peers (give the address they reach this node at)")
    port = None if port_text is None else _int_range(1, 65535)(port_text)
    return str(addr), port


def _external_address(text: str) -> str:
    if not text.strip():
        return ""
    external_host_port(text)
    return text.strip()


def _cidrs(text: str) -> tuple[str, ...]:
    """A comma- or space-separated list of networks (``10.0.0.0/8``, ``::1``), normalized."""
    out = []
    for item in (i.strip() for i in re.split(r"[,\s]+", text) if i.strip()):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network (e.g. 192.168.1.0/24)") from None
    return tuple(out)


# -- the key table ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """One configuration key: its parser, default (one, or one per network), kind and help line."""

    name: str
    parse: Callable[[str], Any]
    default: Any                   # a value, or a dict network -> value
    help: str
    kind: str = "value"            # "path" values are resolved against the config file's folder

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")

    def default_for(self, network: str) -> Any:
        return self.default[network] if isinstance(self.default, dict) else self.default


def _per_network(devnet: Any, testnet: Any, mainnet: Any) -> dict[str, Any]:
    return {"devnet": devnet, "testnet": testnet, "mainnet": mainnet}


_PORT = _int_range(0, 65535)
_SECONDS = _duration(86400.0)
# Consensus timeouts must be > 0: a 0 s step timeout gives up before any peer's message can arrive, and
# a 0 s delta stops timeouts growing per round, which Tendermint's liveness after the network stabilizes
# relies on. block_interval keeps 0 (benchmarks).
_TIMEOUT = _duration(86400.0, positive=True)
KEYS: tuple[Key, ...] = (
    Key("network", _choice(*NETWORKS), "devnet",
        "Which network's defaults apply: devnet (single validator, 1 s blocks), testnet or mainnet."),
    Key("datadir", _required_path, _per_network("timecoin-data", "timecoin-data-testnet", "timecoin-data-mainnet"),
        "Folder of the chain store, node key, genesis and consensus WAL (must not be empty).", kind="path"),
    Key("key_file", _text, "", "Node key (PEM, secp256k1). Empty: <datadir>/node.key, created on first start.",
        kind="path"),
    Key("genesis_file", _text, "",
        "Genesis JSON. Empty: <datadir>/genesis.json (a devnet creates one on first start).", kind="path"),
    Key("p2p_host", _host, "127.0.0.1", "Address the peer-to-peer listener binds to."),
    Key("external_address", _external_address, "",
        "Address peers are told to dial (hello listen_addrs): IP, IP:PORT or /ip4/IP/tcp/PORT; PORT defaults "
        "to the bound port. Empty: the bound address, or none when bound to 0.0.0.0/:: (behind NAT: set it)."),
    Key("p2p_port", _PORT, _per_network(29333, 19333, 9333), "Peer-to-peer TCP port (0: any free port)."),
    Key("rpc_host", _host, "127.0.0.1", "Address the JSON-RPC server binds to (keep it on loopback)."),
    Key("rpc_port", _PORT, _per_network(29332, 19332, 9332), "JSON-RPC TCP port (0: any free port)."),
    Key("rpc_user", _text, "", "RPC user name (with rpc_password). Empty: the cookie file <datadir>/.cookie."),
    Key("rpc_password", _text, "", "RPC password (with rpc_user). Empty: a fresh cookie at each start."),
    Key("rpc_allow_ip", _cidrs, (),
        "Comma-separated networks (CIDR) allowed to call RPC besides loopback; required when rpc_host is not "
        "a loopback address."),
    Key("rpc_max_body_bytes", _size(1024, 1 << 30), 4 << 20,
        "Largest RPC request body; a larger one gets HTTP 413 before it is buffered."),
    Key("rpc_max_batch", _int_range(1, 1_000_000), 1000, "Most requests in one JSON-RPC batch."),
    Key("rpc_max_concurrent", _int_range(1, 10_000), 16,
        "Most RPC requests one client IP may have in progress at once (more get HTTP 429)."),
    Key("bootstrap", _multiaddrs, (),
        "Comma-separated multiaddrs of peers to dial at start (/ip4/H/tcp/P/p2p/ID)."),
    Key("max_frame_bytes", _size(1024, 1 << 30), 8 << 20,
        "Largest wire frame accepted; a larger length prefix is refused before buffering."),
    Key("sync_response_bytes", _size(1024, 1 << 30), 4 << 20,
        "Most bytes of blocks in one get_blocks answer (at least one block is always sent)."),
    Key("max_inbound", _int_range(0, 10_000), 40, "Most inbound peer connections."),
    Key("max_outbound", _int_range(0, 1_000), 10, "Most outbound peer connections this node dials."),
    Key("max_per_ip", _int_range(1, 10_000), 8,
        "Most connections (both directions) from one IP address (an IPv6 /64 counts as one address)."),
    Key("validator_slots", _int_range(0, 10_000), 10,
        "Inbound slots reserved for validator peers (host key staked >= 1,000 TIME), beyond max_inbound."),
    Key("require_stake", _bool, False, "Accept only validator peers (their host key is a staked validator)."),
    Key("rate_limit", _int_range(1, 1_000_000), 100,
        "Request messages (get_*) allowed per peer per minute; tx gossip has its own budget (docs/p2p.md)."),
    Key("rate_limit_burst", _int_range(1, 1_000_000), 20, "Requests a peer may send at once before the rate applies."),
    Key("max_inflight_requests", _int_range(1, 10_000), 16, "Most unanswered requests we keep open to one peer."),
    Key("ban_duration", _duration(10 * 365 * 86400.0), 86400.0,
        "How long a peer whose reputation reached -50 stays banned (by PeerID and IP)."),
    Key("ping_interval", _SECONDS, 15.0, "Seconds between pings to each peer (latency EWMA, dead-peer detection)."),
    Key("gossip_interval", _SECONDS, _per_network(0.2, 1.0, 5.0),
        "Seconds between offers of current-height consensus messages a peer may have missed."),
    Key("sync_interval", _SECONDS, 30.0,
        "Seconds between sync checks (genesis consensus, state consistency, catch-up); also run at once when a "
        "peer announces a higher height."),
    Key("sync_batch", _int_range(1, 100), 50,
        "Most blocks applied in one LMDB write transaction during sync (bodies are fetched in ranges of up "
        "to 1,000 blocks, at most 2 ranges in flight per peer, SPEC §6)."),
    Key("sync_redundancy", _int_range(1, 16), 3, "Peers asked for the block hashes of each sync range."),
    Key("max_reorg_depth", _int_range(0, 1_000_000), 1000,
        "Deepest rollback a fork resolution may do; a deeper fork halts block application for the operator."),
    Key("block_interval", _SECONDS, _per_network(1.0, 60.0, 600.0),
        "Seconds between blocks: the proposer of h+1 waits until time(h) + block_interval, never longer than "
        "block_interval by its own clock (0 allowed)."),
    Key("precision", _TIMEOUT, _per_network(0.05, 0.5, 0.5),
        "Clock bound between honest validators (proposer-based timestamps): a fresh proposal stamped more than "
        "this after our clock is untimely and gets a nil prevote."),
    Key("message_delay", _TIMEOUT, _per_network(0.2, 2.0, 2.0),
        "Largest delay of a proposal on the network: a fresh proposal received later than its timestamp + "
        "message_delay + precision is untimely and gets a nil prevote."),
    Key("timeout_propose", _TIMEOUT, _per_network(0.04, 3.0, 30.0), "Propose-step timeout, round 0 (> 0)."),
    Key("timeout_propose_delta", _TIMEOUT, _per_network(0.001, 0.5, 5.0),
        "Added to timeout_propose per round (> 0: timeouts grow each round, which liveness needs)."),
    Key("timeout_prevote", _TIMEOUT, _per_network(0.01, 1.0, 30.0), "Prevote-step timeout, round 0 (> 0)."),
    Key("timeout_prevote_delta", _TIMEOUT, _per_network(0.001, 0.5, 5.0),
        "Added to timeout_prevote per round (> 0)."),
    Key("timeout_precommit", _TIMEOUT, _per_network(0.01, 1.0, 30.0), "Precommit-step timeout, round 0 (> 0)."),
    Key("timeout_precommit_delta", _TIMEOUT, _per_network(0.001, 0.5, 5.0),
        "Added to timeout_precommit per round (> 0)."),
    Key("max_block_txs", _int_range(0, 100_000), 1000,
        "Most transactions this node puts in a block it proposes (the chain's own limit also applies)."),
    Key("mempool_max_txs", _int_range(1, 10_000_000), 50_000, "Most transactions held in the mempool."),
    Key("mempool_max_bytes", _size(1024, 1 << 34), 256 << 20, "Most bytes of transactions in the mempool."),
    Key("min_relay_fee", _int_range(0, 2**64 - 1), 1000,
        "Lowest fee (units) accepted into the mempool; never below the chain's min_fee."),
    Key("lmdb_map_size", _size(1 << 20, 1 << 40), 64 << 20,
        "Initial LMDB map size; it doubles automatically when full."),
    Key("lmdb_max_map_size", _size(1 << 20, 1 << 40), 1 << 40,
        "Largest the LMDB map may grow to; a store that fills it stops the node with one line (bounds disk use)."),
    Key("metrics_host", _host, "127.0.0.1", "Address the Prometheus metrics endpoint binds to."),
    Key("metrics_port", _PORT, _per_network(29334, 19334, 9334),
        "Prometheus metrics TCP port (/metrics; 0: any free port)."),
    Key("manhole_ssh_port", _PORT, 0, "SSH manhole port on manhole_host (0: off). Needs manhole_authorized_keys."),
    Key("manhole_telnet_port", _PORT, 0, "Telnet manhole port, loopback only (0: off). Needs manhole_passwd."),
    Key("manhole_host", _host, "127.0.0.1", "Address the SSH manhole binds to (telnet always binds loopback)."),
    Key("manhole_authorized_keys", _text, "",
        "OpenSSH authorized_keys file: a listed key logs into the SSH manhole under any user name.", kind="path"),
    Key("manhole_passwd", _text, "", "user:password lines for the telnet manhole.", kind="path"),
    Key("blocknotify", _text, "", "Command run for each new block; %s is replaced by the block hash."),
    Key("log_format", _choice("text", "json"), "text", "Log lines as text, or JSON (one event per line)."),
)
KEYS_BY_NAME: dict[str, Key] = {key.name: key for key in KEYS}


@dataclass(frozen=True)
class NodeConfig:
    """The effective configuration (frozen: services share one object and none may change it)."""

    network: str
    datadir: str
    key_file: str
    genesis_file: str
    p2p_host: str
    external_address: str
    p2p_port: int
    rpc_host: str
    rpc_port: int
    rpc_user: str
    rpc_password: str
    rpc_allow_ip: tuple[str, ...]
    rpc_max_body_bytes: int
    rpc_max_batch: int
    rpc_max_concurrent: int
    bootstrap: tuple[str, ...]
    max_frame_bytes: int
    sync_response_bytes: int
    max_inbound: int
    max_outbound: int
    max_per_ip: int
    validator_slots: int
    require_stake: bool
    rate_limit: int
    rate_limit_burst: int
    max_inflight_requests: int
    ban_duration: float
    ping_interval: float
    gossip_interval: float
    sync_interval: float
    sync_batch: int
    sync_redundancy: int
    max_reorg_depth: int
    block_interval: float
    precision: float
    message_delay: float
    timeout_propose: float
    timeout_propose_delta: float
    timeout_prevote: float
    timeout_prevote_delta: float
    timeout_precommit: float
    timeout_precommit_delta: float
    max_block_txs: int
    mempool_max_txs: int
    mempool_max_bytes: int
    min_relay_fee: int
    lmdb_map_size: int
    lmdb_max_map_size: int
    metrics_host: str
    metrics_port: int
    manhole_ssh_port: int
    manhole_telnet_port: int
    manhole_host: str
    manhole_authorized_keys: str
    manhole_passwd: str
    blocknotify: str
    log_format: str
    config_file: str | None = None

    @property
    def key_path(self) -> str:
        return self.key_file or os.path.join(self.datadir, "node.key")

    @property
    def genesis_path(self) -> str:
        return self.genesis_file or os.path.join(self.datadir, "genesis.json")

    def to_json(self) -> dict[str, Any]:
        """The effective values, keys as in the file (tuples as lists)."""
        out: dict[str, Any] = {}
        for key in KEYS:
            value = getattr(self, key.name)
            out[key.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **changes)


if {f.name for f in dataclasses.fields(NodeConfig)} - {"config_file"} != set(KEYS_BY_NAME):
    raise AssertionError("NodeConfig fields and KEYS disagree")  # pragma: no cover - import-time guard


# -- building --------------------------------------------------------------------------------------
def read_file(path: str) -> dict[str, str]:
    """The raw ``key -> text`` of a config file; ConfigError on unreadable files or unknown keys."""
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#", ";"),
                                       inline_comment_prefixes=("#",), strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError("config", f"{path} is not a valid config file: {first}") from None
    extra = [s for s in parser.sections() if s != SECTION]
    if extra:
        raise ConfigError("config", f"{path}: unknown section [{extra[0]}] (only [{SECTION}])")
    if not parser.has_section(SECTION):
        return {}
    values = dict(parser.items(SECTION))
    for name in values:
        if name not in KEYS_BY_NAME:
            raise ConfigError(name, f"unknown key in {path}")
    return values


def _parse(key: Key, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return key.parse(raw)
    except ValueError as exc:
        raise ConfigError(key.name, str(exc)) from None


def build_config(flags: Mapping[str, Any] | None = None, config_file: str | None = None) -> NodeConfig:
    """Defaults (of the network) < config file < flags. Flag values may be text or already parsed.

    Raises ConfigError naming the key and the reason.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    for name in flags:
        if name not in KEYS_BY_NAME:
            raise ConfigError(name, "unknown key")
    from_file = read_file(config_file) if config_file else {}
    base = os.path.dirname(os.path.abspath(config_file)) if config_file else os.getcwd()
    network = _parse(KEYS_BY_NAME["network"], flags.get("network", from_file.get("network", "devnet")))
    values: dict[str, Any] = {}
    for key in KEYS:
        if key.name in flags:
            value = _parse(key, flags[key.name])
            origin = os.getcwd()
        elif key.name in from_file:
            value = _parse(key, from_file[key.name])
            origin = base
        else:
            value = key.default_for(network)
            origin = base if key.name == "datadir" and config_file else os.getcwd()
        if key.kind == "path" and value:
            value = os.path.abspath(os.path.join(origin, os.path.expanduser(value)))
        values[key.name] = value
    values["network"] = network
    config = NodeConfig(**values, config_file=os.path.abspath(config_file) if config_file else None)
    check(config)
    return config


def check(config: NodeConfig) -> None:
    """Rules that span keys."""
    if config.p2p_port and config.p2p_port == config.rpc_port:
        raise ConfigError("rpc_port", f"equals p2p_port ({config.p2p_port}); the two listeners need two ports")
    ports = {"p2p_port": config.p2p_port, "rpc_port": config.rpc_port, "metrics_port": config.metrics_port,
             "manhole_ssh_port": config.manhole_ssh_port, "manhole_telnet_port": config.manhole_telnet_port}
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port and port in seen:
            raise ConfigError(name, f"equals {seen[port]} ({port}); every listener needs its own port")
        seen.setdefault(port, name)
    if config.manhole_ssh_port and not config.manhole_authorized_keys:
        raise ConfigError("manhole_authorized_keys", "the SSH manhole (manhole_ssh_port) needs an authorized_keys file")
    if config.manhole_telnet_port and not config.manhole_passwd:
        raise ConfigError("manhole_passwd", "the telnet manhole (manhole_telnet_port) needs a passwd file")
    if config.lmdb_max_map_size < config.lmdb_map_size:
        raise ConfigError("lmdb_max_map_size", f"is below lmdb_map_size ({config.lmdb_map_size})")
    if bool(config.rpc_user) != bool(config.rpc_password):
        missing = "rpc_password" if config.rpc_user else "rpc_user"
        raise ConfigError(missing, "rpc_user and rpc_password go together (set both, or neither for the cookie)")
    if config.rpc_user and ":" in config.rpc_user:
        raise ConfigError("rpc_user", "must not contain ':' (HTTP Basic auth separates user and password with it)")
    from timecoin.rpc.auth import is_loopback_host
    if not is_loopback_host(config.rpc_host) and not config.rpc_allow_ip:
        raise ConfigError("rpc_allow_ip", f"rpc_host {config.rpc_host} is not a loopback address: set rpc_allow_ip "
                                          "to the networks allowed to call RPC (e.g. 192.168.1.0/24)")


def default_config(**flags: Any) -> NodeConfig:
    """The defaults (optionally with some keys set), as tests and tools want them."""
    return build_config(flags)


# -- presentation ----------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """A value as it is written in the config file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render_example() -> str:
    """The text of ``etc/timecoin.conf.example``: every key, its help and its default (per network)."""
    lines = [
        "# Timecoin node configuration (INI). Every key, with its default; uncomment to change.",
        "# Generated from timecoin/config.py by `timecoin config --example`; a test keeps the two equal.",
        "# Precedence: defaults (of the chosen network) < this file < command-line flags",
        "# (key rpc_port is flag --rpc-port of `twistd timecoin` and `timecoin config`).",
        "# Relative paths are relative to this file's folder. Durations take ms/s/m/h/d, sizes KiB/MiB/GiB.",
        "",
        f"[{SECTION}]",
    ]
    for key in KEYS:
        lines.append("")
        lines.append(f"# {key.help}")
        if isinstance(key.default, dict):
            per = ", ".join(f"{net} {format_value(key.default[net]) or '(empty)'}" for net in NETWORKS)
            lines.append(f"# Default per network: {per}.")
            lines.append(f"#{key.name} = {format_value(key.default['devnet'])}".rstrip())
        else:
            lines.append(f"#{key.name} = {format_value(key.default)}".rstrip())
    return "\n".join(lines) + "\n"


def flag_names() -> Iterable[tuple[str, Key]]:
    """(``--flag``, key) pairs for argument parsers."""
    return ((f"--{key.flag}", key) for key in KEYS)
