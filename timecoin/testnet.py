"""``timecoin testnet``: a local N-validator testnet in one folder, and a supervisor that runs it (SPEC §8).

Layout written into ``D``::

    D/genesis.json              one shared genesis: N validators staking 10,000 TIME, each funded
    D/node{i}/node.key          the node's key (PEM); i < N are validators, the K after them observers
    D/node{i}/timecoin.conf     network testnet, datadir ``data``, ports base+2i / base+2i+1, bootstrap
                                = every OTHER validator's multiaddr

Every path in a ``timecoin.conf`` is relative to its folder, so the folder can be moved, and
``timecoin status --config D/node{i}/timecoin.conf`` works from anywhere. The chain id defaults to
``timecoin-testnet-<8 random hex>`` so two local testnets never accept each other's messages.

``--start`` runs every node of a layout as a child process (``twistd -n --pidfile= timecoin --config
timecoin.conf`` in its folder, output appended to ``node.log``). It can follow the writing
(``--nodes N --start``) or, given alone (``--dir D --start``), run a layout written earlier: the nodes
then continue their chains. SIGINT/SIGTERM stop all children (SIGTERM, 10 s grace, then SIGKILL).
The children run in their own process group (a terminal's Ctrl-C reaches only the supervisor, which
then stops them in order) and, on Linux, receive SIGTERM should the supervisor itself die.

``--netns`` (root; :func:`run_in_namespaces`) writes a fresh layout for one network namespace per node
(:mod:`timecoin.sim.netns`) and runs each node there; leaving, however it happens, removes the namespaces.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from timecoin import crypto
from timecoin.config import KEYS_BY_NAME, build_config, format_value
from timecoin.errors import ConfigError, DecodeError, TimecoinError
from timecoin.ledger.genesis import Genesis

DEFAULT_BASE_PORT = 19400          # away from the testnet's default 19332/19333, so a real node may run too
DEFAULT_BLOCK_INTERVAL = 0.5       # a local testnet: two blocks a second
# Loopback round trips are well under a millisecond, so a local testnet uses shorter consensus timeouts
# than the public testnet's CometBFT defaults (3 s / 1 s / 1 s): a stopped validator's proposer turn then
# costs about one second instead of three.
LOCAL_TIMEOUTS = (("timeout_propose", "1"), ("timeout_propose_delta", "0.5"), ("timeout_prevote", "0.5"),
                  ("timeout_prevote_delta", "0.25"), ("timeout_precommit", "0.5"),
                  ("timeout_precommit_delta", "0.25"))
VALIDATOR_STAKE = 10_000 * crypto.UNITS_PER_TIME
VALIDATOR_BALANCE = 1_000_000 * crypto.UNITS_PER_TIME
STOP_GRACE = 10.0                  # seconds between SIGTERM and SIGKILL
GENESIS_FILE = "genesis.json"
CONFIG_FILE = "timecoin.conf"
KEY_FILE = "node.key"
LOG_FILE = "node.log"
DATADIR = "data"
# ``python -m twisted`` runs ``twist``, not ``twistd``; this is the ``twistd`` console script.
TWISTD_CODE = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
_NODE_DIR = re.compile(r"^node(\d+)$")
_CHAIN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class TestnetError(TimecoinError):
    """A testnet that cannot be written or started; one line for the operator."""

    __test__ = False  # not a pytest test class despite the name


@dataclass(frozen=True)
class NodeInfo:
    """One node of a layout, as read back from its files."""

    index: int
    dir: str                 # the node's folder, under the --dir as the operator gave it
    role: str                # "validator" or "observer"
    peer_id: str
    address: str
    p2p_port: int
    rpc_port: int
    datadir: str
    config_file: str
    metrics_port: int = 0    # Prometheus /metrics (base + 2 x nodes + index)
    host: str = "127.0.0.1"  # the P2P address (its own namespace's with --netns)
    rpc_host: str = "127.0.0.1"

    @property
    def name(self) -> str:
        return f"node{self.index}"

    def start_command(self) -> str:
        """What an operator types to start this node by hand."""
        return f"cd {shlex.quote(self.dir)} && twistd -n --pidfile= timecoin --config {CONFIG_FILE}"


@dataclass(frozen=True)
class Layout:
    """A testnet folder: its genesis and its nodes (validators first)."""

    directory: str
    chain_id: str
    genesis_hash: str
    nodes: tuple[NodeInfo, ...] = field(default_factory=tuple)

    @property
    def validators(self) -> int:
        return sum(1 for n in self.nodes if n.role == "validator")


# -- arguments -------------------------------------------------------------------------------------
def parse_count(text: str | int, flag: str, lo: int) -> int:
    """An integer flag with a lower bound; one-line TestnetError otherwise."""
    try:
        value = int(str(text).replace("_", ""), 10)
    except ValueError:
        raise TestnetError(f"{flag}: {text!r} is not an integer") from None
    if value < lo:
        raise TestnetError(f"{flag} must be at least {lo}, not {value}")
    return value


def parse_block_interval(text: str | float) -> float:
    try:
        return float(KEYS_BY_NAME["block_interval"].parse(str(text)))
    except ValueError as exc:
        raise TestnetError(f"--block-interval: {exc}") from None


def check_ports(base_port: int, count: int) -> None:
    """Node i uses base+2i (P2P), base+2i+1 (RPC) and base+2*count+i (metrics): all valid fixed ports."""
    last = base_port + 2 * count - 1
    if base_port < 1 or last > 65535:
        raise TestnetError(f"--base-port {base_port}: {count} node(s) need ports {base_port}..{last}, "
                           "which must lie within 1..65535")
    first_metrics, last_metrics = metrics_port(base_port, count, 0), metrics_port(base_port, count, count - 1)
    if last_metrics > 65535:
        raise TestnetError(f"--base-port {base_port}: {count} node(s) need metrics ports "
                           f"{first_metrics}..{last_metrics}, which must lie within 1..65535")


def metrics_port(base_port: int, count: int, index: int) -> int:
    """Node ``index``'s metrics port: after every node's P2P and RPC ports, so no two listeners share one."""
    return base_port + 2 * count + index


def check_chain_id(chain_id: str) -> str:
    if not _CHAIN_ID.match(chain_id):
        raise TestnetError(f"--chain-id {chain_id!r}: 1 to 64 characters of A-Z a-z 0-9 . _ - are required")
    return chain_id


def random_chain_id() -> str:
    return f"timecoin-testnet-{secrets.token_hex(4)}"


def multiaddr(port: int, peer_id: str, host: str = "127.0.0.1") -> str:
    return f"/ip4/{host}/tcp/{port}/p2p/{peer_id}"


# -- writing ---------------------------------------------------------------------------------------
def _is_empty_dir(path: str) -> bool:
    return not os.listdir(path)


def _clear_layout(directory: str) -> None:
    """--force: remove what a testnet owns in ``directory`` (genesis.json, node<i>/); leave the rest."""
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if entry == GENESIS_FILE or entry == GENESIS_FILE + ".tmp" or _NODE_DIR.match(entry):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def _write_text(path: str, text: str) -> None:
    """Write atomically (tmp + rename) so a crash never leaves half a file behind."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def render_config(index: int, role: str, chain_id: str, p2p_port: int, rpc_port: int, block_interval: float,
                  bootstrap: Sequence[str], max_per_ip: int, max_inbound: int | None,
                  metrics_port: int | None = None, host: str | None = None, rpc_allow_ip: str | None = None) -> str:
    """The text of ``node{index}/timecoin.conf``; keys as in :data:`timecoin.config.KEYS`."""
    lines = [
        f"# Timecoin local testnet {chain_id}: node{index}, {role}. Written by `timecoin testnet`.",
        "# Start this node from this folder:",
        f"#   twistd -n --pidfile= timecoin --config {CONFIG_FILE}",
        "# Start every node of the testnet:  timecoin testnet --dir <testnet folder> --start",
        f"# Its height and tip:              timecoin status --config <this folder>/{CONFIG_FILE}",
        "# Relative paths are relative to this file's folder. Every other key keeps its testnet default",
        "# (see `timecoin config --example`).",
        "",
        "[timecoin]",
        "network = testnet",
        f"datadir = {DATADIR}",
        f"key_file = {KEY_FILE}",
        f"genesis_file = ../{GENESIS_FILE}",
        f"p2p_host = {host or '127.0.0.1'}",
        f"p2p_port = {p2p_port}",
        *([f"# Its own network namespace (timecoin testnet --netns): RPC on its address, for {rpc_allow_ip}:",
           f"rpc_host = {host}", f"rpc_allow_ip = {rpc_allow_ip}"] if host and rpc_allow_ip else []),
        f"rpc_port = {rpc_port}",
        *([f"metrics_port = {metrics_port}"] if metrics_port is not None else []),
        f"block_interval = {format_value(block_interval)}",
        "# Consensus timeouts for loopback (the public testnet's defaults are 3 s / 1 s / 1 s):",
        *(f"{key} = {value}" for key, value in LOCAL_TIMEOUTS),
        "# Every other validator of this testnet:",
    ]
    if bootstrap:
        lines.append(f"bootstrap = {bootstrap[0]}" + ("," if len(bootstrap) > 1 else ""))
        lines.extend(f"    {addr}" + ("," if i < len(bootstrap) - 1 else "") for i, addr in enumerate(bootstrap[1:], 1))
    else:
        lines.append("bootstrap =")
    lines.append("# All nodes connect from 127.0.0.1, so the per-IP cap must hold every connection between them:")
    lines.append(f"max_per_ip = {max_per_ip}")
    if max_inbound is not None:
        lines.append(f"max_inbound = {max_inbound}")
    return "\n".join(lines) + "\n"


def write_testnet(directory: str, nodes: int, observers: int = 0, base_port: int = DEFAULT_BASE_PORT,
                  block_interval: float = DEFAULT_BLOCK_INTERVAL, chain_id: str | None = None,
                  force: bool = False, genesis_time: int | None = None, hosts: Sequence[str] | None = None,
                  rpc_allow_ip: str | None = None) -> Layout:
    """Write genesis, keys and configs for ``nodes`` validators and ``observers`` observers; read them back.

    ``hosts`` (one IP per node; ``--netns``): node i binds P2P and RPC to ``hosts[i]`` (RPC allowing
    ``rpc_allow_ip``, the bridge's address) and the bootstrap lists name the others' addresses.

    Reading back goes through :func:`timecoin.config.build_config`, so every written file is known to load.
    """
    if nodes < 1:
        raise TestnetError(f"--nodes must be at least 1, not {nodes}")
    if observers < 0:
        raise TestnetError(f"--observers must be at least 0, not {observers}")
    total = nodes + observers
    if hosts is not None and len(hosts) != total:
        raise TestnetError(f"{total} node(s) need {total} host address(es), not {len(hosts)}")
    check_ports(base_port, total)
    if block_interval < 0:
        raise TestnetError(f"--block-interval must not be negative, not {block_interval:g}")
    chain_id = check_chain_id(chain_id) if chain_id is not None else random_chain_id()
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise TestnetError(f"{directory} exists and is not a folder")
    try:
        if os.path.isdir(directory) and not _is_empty_dir(directory):
            if not force:
                raise TestnetError(f"{directory} is not empty (use --force to replace its genesis.json and node*/)")
            _clear_layout(directory)
        os.makedirs(directory, exist_ok=True)
        keys = [crypto.PrivateKey.generate() for _ in range(total)]
        genesis = Genesis.for_validators([k.public_key for k in keys[:nodes]], chain_id, stake=VALIDATOR_STAKE,
                                         balance=VALIDATOR_BALANCE, genesis_time=genesis_time)
        _write_text(os.path.join(directory, GENESIS_FILE), genesis.to_json())
        p2p = [base_port + 2 * i for i in range(total)]
        host_of = list(hosts) if hosts is not None else ["127.0.0.1"] * total
        validator_addrs = [multiaddr(p2p[i], keys[i].peer_id, host_of[i]) for i in range(nodes)]
        # Each pair of local nodes may hold a connection each way, all from 127.0.0.1.
        max_per_ip = max(KEYS_BY_NAME["max_per_ip"].default_for("testnet"), 2 * total)
        default_inbound = KEYS_BY_NAME["max_inbound"].default_for("testnet")
        max_inbound = total - 1 if total - 1 > default_inbound else None
        for i, key in enumerate(keys):
            node_dir = os.path.join(directory, f"node{i}")
            os.makedirs(node_dir, mode=0o700)
            key.save(os.path.join(node_dir, KEY_FILE))
            role = "validator" if i < nodes else "observer"
            bootstrap = [addr for j, addr in enumerate(validator_addrs) if j != i]
            _write_text(os.path.join(node_dir, CONFIG_FILE),
                        render_config(i, role, chain_id, p2p[i], p2p[i] + 1, block_interval, bootstrap,
                                      max_per_ip, max_inbound, metrics_port(base_port, total, i),
                                      hosts[i] if hosts is not None else None, rpc_allow_ip))
    except OSError as exc:
        raise TestnetError(f"cannot write the testnet in {directory}: {exc.strerror or exc}"
                           + (f" ({exc.filename})" if exc.filename else "")) from None
    return read_layout(directory)


# -- reading ---------------------------------------------------------------------------------------
def read_layout(directory: str) -> Layout:
    """The testnet in ``directory`` as its files say (configs through build_config, keys, genesis roles)."""
    genesis_path = os.path.join(directory, GENESIS_FILE)
    try:
        entries = os.listdir(directory)
    except OSError as exc:
        raise TestnetError(f"no testnet in {directory}: {exc.strerror or exc}") from None
    found = sorted((int(m.group(1)), e) for e in entries if (m := _NODE_DIR.match(e))
                   and os.path.isfile(os.path.join(directory, e, CONFIG_FILE)))
    if not found or not os.path.isfile(genesis_path):
        raise TestnetError(f"no testnet in {directory} (no genesis.json and node*/{CONFIG_FILE}); "
                           "give --nodes N to write one")
    genesis = Genesis.load(genesis_path)
    validators = genesis.validators()
    nodes = []
    for index, entry in found:
        node_dir = os.path.join(directory, entry)
        config_file = os.path.join(node_dir, CONFIG_FILE)
        try:
            config = build_config(config_file=config_file)
        except ConfigError as exc:
            raise TestnetError(f"{config_file}: {exc}") from None
        try:
            key = crypto.PrivateKey.load(config.key_path)
        except OSError as exc:
            raise TestnetError(f"{entry}: cannot read {config.key_path}: {exc.strerror or exc}") from None
        except DecodeError as exc:
            raise TestnetError(f"{entry}: {config.key_path}: {exc}") from None
        nodes.append(NodeInfo(index=index, dir=node_dir,
                              role="validator" if key.address in validators else "observer",
                              peer_id=key.peer_id, address=crypto.encode_address(key.address, config.network),
                              p2p_port=config.p2p_port, rpc_port=config.rpc_port, datadir=config.datadir,
                              config_file=config_file, metrics_port=config.metrics_port, host=config.p2p_host,
                              rpc_host=config.rpc_host))
    return Layout(directory, genesis.chain_id, genesis.hash.hex(), tuple(nodes))


def format_summary(layout: Layout) -> str:
    """What ``timecoin testnet`` prints: the nodes and how to start them."""
    observers = len(layout.nodes) - layout.validators
    lines = [f"Testnet {layout.chain_id} in {layout.directory}: {layout.validators} validator(s), "
             f"{observers} observer(s); genesis {layout.genesis_hash}",
             "",
             f"{'node':<7} {'role':<10} {'p2p':>5} {'rpc':>5}  {'peer id':<53} dir"]
    for n in layout.nodes:
        lines.append(f"{n.name:<7} {n.role:<10} {n.p2p_port:>5} {n.rpc_port:>5}  {n.peer_id:<53} {n.dir}")
    lines += ["", "Start a node:"]
    lines += [f"  {n.start_command()}" for n in layout.nodes]
    quoted = shlex.quote(layout.directory)
    lines += ["Start them all (Ctrl-C stops them):", f"  timecoin testnet --dir {quoted} --start",
              "Status of node i:", f"  timecoin status --config {shlex.quote(os.path.join(layout.directory, 'node'))}"
              f"<i>/{CONFIG_FILE}"]
    return "\n".join(lines)


# -- running ---------------------------------------------------------------------------------------
def node_command(python: str = sys.executable) -> list[str]:
    """The child's argv (run in the node's folder): twistd in the foreground, no pid file."""
    return [python, "-c", TWISTD_CODE, "-n", "--pidfile=", "timecoin", "--config", CONFIG_FILE]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this child when the supervisor dies, so no node outlives a killed supervisor."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)           # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    dir: str
    proc: subprocess.Popen[bytes]
    reported: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    """Runs one child process per node folder, reports unexpected exits and stops them all in order."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.children: list[Child] = []

    def _say(self, text: str, err: bool = False) -> None:
        stream = self.err if err else self.out
        stream.write(text + "\n")
        stream.flush()

    def start(self, name: str, node_dir: str, argv: Sequence[str], log_file: str = LOG_FILE) -> Child:
        """Start ``argv`` in ``node_dir``, output appended to ``node_dir/log_file``."""
        log_path = os.path.join(node_dir, log_file)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(list(argv), cwd=node_dir, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, process_group=0,
                                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        child = Child(name, node_dir, proc)
        self.children.append(child)
        self._say(f"started {name} pid {proc.pid} (log {log_path})")
        return child

    def alive(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is None]

    def check(self) -> list[Child]:
        """Children that exited since the last check, each reported once (the others keep running)."""
        died = []
        for child in self.children:
            code = child.proc.poll()
            if code is not None and not child.reported:
                child.reported = True
                died.append(child)
                self._say(f"timecoin testnet: {child.name} (pid {child.pid}) exited unexpectedly with "
                          f"{_describe_exit(code)}; see {os.path.join(child.dir, LOG_FILE)}. "
                          f"{len(self.alive())} node(s) still running", err=True)
        return died

    def stop(self, grace: float = STOP_GRACE) -> dict[str, int]:
        """SIGTERM every running child, wait up to ``grace`` seconds, SIGKILL the stragglers; exit codes."""
        running = self.alive()
        if running:
            self._say(f"stopping {len(running)} node(s) (SIGTERM, up to {grace:g} s)")
        for child in running:
            _signal(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(f"{child.name} (pid {child.pid}) did not stop within {grace:g} s: SIGKILL", err=True)
                _signal(child.proc, signal.SIGKILL)
        codes = {}
        for child in self.children:
            codes[child.name] = child.proc.wait(timeout=30)   # after SIGKILL: the kernel reaps promptly
            if child in running:
                self._say(f"{child.name} (pid {child.pid}) stopped: {_describe_exit(codes[child.name])}")
        return codes


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):   # exited between poll and signal
        proc.send_signal(sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def run_layout(layout: Layout, out: IO[str] | None = None, err: IO[str] | None = None,
               argv: Callable[[NodeInfo], Sequence[str]] | None = None, poll: float = 0.2,
               grace: float = STOP_GRACE) -> int:
    """Run every node of ``layout`` until SIGINT/SIGTERM; then stop them all. Returns the exit code.

    0 after a signal (however the children ended: a clean stop is the point); 1 if every node
    exited on its own first, since then there is nothing left to supervise.
    """
    sup = Supervisor(out, err)
    stop_signal: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stop_signal.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            for node in layout.nodes:
                if stop_signal:
                    break
                sup.start(node.name, node.dir, argv(node) if argv else node_command())
        except OSError as exc:
            sup._say(f"timecoin testnet: error: cannot start a node: {exc.strerror or exc}", err=True)
            sup.stop(grace)
            return 1
        if not stop_signal:
            sup._say(f"testnet {layout.chain_id}: {len(sup.children)} node(s) running; "
                     "Ctrl-C or SIGTERM stops them all")
        while not stop_signal:
            sup.check()
            if not sup.alive():
                sup._say("timecoin testnet: every node has exited; nothing left to run", err=True)
                return 1
            time.sleep(poll)
        sup._say(f"received {signal.Signals(stop_signal[0]).name}")
        sup.stop(grace)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- in network namespaces (--netns) ---------------------------------------------------------------
class _Stop(Exception):
    """SIGTERM while the namespaces are being made: unwind (and remove them) like Ctrl-C does."""


def run_in_namespaces(count: int, write: Callable[[list[str], str], Layout], out: IO[str] | None = None,
                      err: IO[str] | None = None, grace: float = STOP_GRACE) -> int:
    """``--netns --start``: ``count`` nodes, each in its own network namespace (:mod:`timecoin.sim.netns`).

    Makes a lab with hosts node0..node{count-1}, calls ``write(addresses, bridge_address)`` to write the
    layout for those addresses (P2P and RPC bound to the node's own address, RPC allowing the bridge's
    address, so ``timecoin status --config node<i>/timecoin.conf`` works from the root namespace), runs
    every node in its namespace (``ip netns exec``) until SIGINT/SIGTERM, then removes every namespace,
    veth and the bridge -- also when writing or starting fails. Returns run_layout's exit code.
    """
    from timecoin.sim import netns

    ok, why = netns.netns_permitted()
    if not ok:
        raise TestnetError(f"--netns: {why}")

    def stop(signum: int, frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with netns.Lab([f"node{i}" for i in range(count)]) as lab:
            addresses = [lab.address(f"node{i}") for i in range(count)]
            layout = write(addresses, lab.bridge_address)
            say = out or sys.stdout
            say.write(f"network namespaces on bridge {lab.bridge} ({lab.bridge_address}/24); node i runs in "
                      f"{lab.host('node0').netns[:-1]}<i>:\n")
            for node in layout.nodes:
                say.write(f"  {node.name}: {node.host}  (ip netns exec {lab.host(node.name).netns} ...)\n")
            say.flush()
            return run_layout(layout, out, err, argv=lambda node: lab.exec_argv(node.name, node_command()),
                              grace=grace)
    except (_Stop, KeyboardInterrupt):
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
