"""The peer store and dial scheduling (SPEC §5 "Discovery"): a sans-I/O core.

Addresses are multiaddrs ``/ip4/H/tcp/P/p2p/ID`` (or ``/ip6/...``). The store keeps, per PeerID, up to
:data:`MAX_ADDRS_PER_PEER` addresses, where it learned them (:class:`Source`), when we last had a
connection, the consecutive dial failures and the time of the next dial. Entries live in the ``peers``
database under :data:`~timecoin.p2p.peers.ADDR_PREFIX` + PeerID (scores share that database under their
own prefix), written on a change of substance -- added, dial failed, dial succeeded -- never per read.

Dialing backs off exponentially: after the n-th consecutive failure the next attempt is at
``now + min(base * 2**(n-1), max) * (1 - JITTER * u)``, ``u`` from the injected ``random.Random``, so a
fleet of nodes does not retry in step; a success resets the count. A dial "succeeds" only when the
connection reaches ready (TLS, identity and hello accepted): a peer that refuses us during the handshake
(banned, full, wrong stake) or times out counts as a failure. A connection that reached ready but lasted
less than :data:`MIN_SESSION` seconds is a *short session* (:meth:`PeerStore.connection_closed`): the
peer accepts us and then drops us, so its redial backs off exponentially too (without forgetting it).
A peer that is not a bootstrap peer is forgotten after :data:`MAX_FAILURES` consecutive failures. At
most ``max_peers`` are kept; a new one evicts the worst, bootstrap peers never: first peers we never
reached by dialing that are not validators (issue 11: addresses strangers handed us, before those we
reached or that belong to a validator), among them *claims* first (below), then learned by exchange
before learned from the peer itself, most failures, oldest. A peer that connected *to* us proves
nothing about its address, so :meth:`PeerStore.mark_seen` resets its failures but does not count as
reaching it, and the listen address a stranger's hello gives is added as a *claim* (``claimed=True``):
kept in memory only, not shared in peer exchange, evicted before anything else, until it is added again
unclaimed (its connection lasted) or a dial reaches it. So throwaway identities saying hello cannot
flush honest entries, nor write to the database.

Peer exchange is untrusted input: :meth:`PeerStore.add_from_exchange` ignores lists longer than
:data:`MAX_EXCHANGE_ADDRS`, skips malformed, oversized, undialable and ID-less addresses, adds at most
:data:`MAX_EXCHANGE_ADDED` per call and never lets an exchanged address displace what a peer said of
itself.

A bootstrap address without ``/p2p/ID`` is accepted and kept in memory only (the configuration brings it
back at each start); its PeerID is learned when a dial succeeds (:meth:`PeerStore.dial_succeeded`).
"""
from __future__ import annotations

import enum
import ipaddress
import json
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from timecoin import crypto
from timecoin.errors import DecodeError
from timecoin.p2p.peers import ADDR_PREFIX
from timecoin.store import PEERS, Store

MAX_MULTIADDR_LEN = 256
MAX_PEERS = 1_000
MAX_ADDRS_PER_PEER = 8
MAX_FAILURES = 10                  # consecutive failures after which a non-bootstrap peer is forgotten
BACKOFF_BASE = 1.0                 # seconds after the first failure
BACKOFF_MAX = 300.0                # the longest wait between attempts
JITTER = 0.25                      # a wait is shortened by up to this fraction, at random
DIAL_HOLD = 30.0                   # an address handed out by due() is not handed out again for this long
MIN_SESSION = 60.0                 # a dialed connection closed sooner than this backs off the next dial
MAX_EXCHANGE_ADDRS = 1_000         # a longer peers list is ignored whole
MAX_EXCHANGE_ADDED = 100           # at most this many new addresses per peers list


class Source(enum.Enum):
    """Where an address came from; a higher rank is trusted more (kept longer, dialed first)."""

    EXCHANGE = "exchange"          # a peers list (get_peers) from another peer
    IDENTIFY = "identify"          # the peer's own listen address, from its authenticated hello
    BOOTSTRAP = "bootstrap"        # the configuration

    @classmethod
    def _missing_(cls, value: object) -> Source | None:
        return {"peer-exchange": cls.EXCHANGE, "inbound": cls.IDENTIFY}.get(value)  # type: ignore[call-overload]

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Source.EXCHANGE: 0, Source.IDENTIFY: 1, Source.BOOTSTRAP: 2}


# -- multiaddrs ------------------------------------------------------------------------------------
def _host(proto: str, text: str) -> str:
    if "%" in text:
        raise ValueError(f"IPv6 zone ids are not supported: {text!r}")
    try:
        addr = ipaddress.IPv4Address(text) if proto == "ip4" else ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an {'IPv4' if proto == 'ip4' else 'IPv6'} address") from None
    return str(addr)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdecimal()) or str(int(text)) != text:
        raise ValueError(f"{text!r} is not a TCP port number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"TCP port {port} is out of range [1, 65535]")
    return port


def _peer_id(text: str) -> str:
    try:
        crypto.pubkey_from_peer_id(text)
    except DecodeError as exc:
        raise ValueError(f"{text!r} is not a valid PeerID: {exc}") from None
    return text


def parse_multiaddr(text: str) -> tuple[str, int, str | None]:
    """``/ip4/H/tcp/P[/p2p/ID]`` or ``/ip6/H/tcp/P[/p2p/ID]`` -> (host, port, PeerID or None).

    The host comes back in canonical form. ValueError says what is wrong with anything else.
    """
    if not isinstance(text, str):
        raise ValueError(f"a multiaddr is text, not {type(text).__name__}")
    if len(text) > MAX_MULTIADDR_LEN:
        raise ValueError(f"a multiaddr is at most {MAX_MULTIADDR_LEN} characters, this is {len(text)}")
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is not a multiaddr: it must start with '/'")
    parts = text[1:].split("/")
    if len(parts) not in (4, 6):
        raise ValueError(f"{text!r} is not a multiaddr like /ip4/127.0.0.1/tcp/9333/p2p/16Uiu2HA...")
    proto, host_text, tcp, port_text = parts[:4]
    if proto not in ("ip4", "ip6"):
        raise ValueError(f"{text!r}: only /ip4 and /ip6 addresses are supported, not /{proto}")
    if tcp != "tcp":
        raise ValueError(f"{text!r}: the transport must be /tcp, not /{tcp}")
    host, port = _host(proto, host_text), _port(port_text)
    if len(parts) == 4:
        return host, port, None
    if parts[4] != "p2p":
        raise ValueError(f"{text!r}: expected /p2p/<PeerID> after the port, not /{parts[4]}")
    return host, port, _peer_id(parts[5])


def format_multiaddr(host: str, port: int, peer_id: str | None = None) -> str:
    """The multiaddr of an IPv4/IPv6 ``host``, TCP ``port`` and optional PeerID (ValueError if invalid)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    proto = "ip4" if addr.version == 4 else "ip6"
    text = f"/{proto}/{_host(proto, host)}/tcp/{_port(str(port))}"
    return text if peer_id is None else f"{text}/p2p/{_peer_id(peer_id)}"


def canonical(text: str) -> str:
    """The canonical spelling of a multiaddr (ValueError if it is not one)."""
    return format_multiaddr(*parse_multiaddr(text))


def dialable(host: str) -> bool:
    """False for addresses no one can dial: unspecified (0.0.0.0, ::) and multicast."""
    addr = ipaddress.ip_address(host)
    return not (addr.is_unspecified or addr.is_multicast)


# -- the store -------------------------------------------------------------------------------------
@dataclass
class PeerEntry:
    """What we know about one peer (or, for an ID-less bootstrap address, about that address)."""

    key: str                                    # the PeerID, or the multiaddr of an ID-less bootstrap entry
    peer_id: str | None
    addrs: list[str]                            # canonical multiaddrs, most trusted first
    source: Source
    added: float
    last_seen: float | None = None              # last successful dial (we reached its address)
    failures: int = 0                           # consecutive failed dials
    next_dial: float = 0.0
    latency: float | None = None                # ping EWMA (memory only)
    short_sessions: int = 0                     # consecutive connections closed within MIN_SESSION (memory only)
    resolved: str | None = field(default=None)  # the PeerID an ID-less bootstrap address turned out to have
    validator: bool = False                     # a validator's host key (memory only): evicted last
    claimed: bool = False                       # only a stranger's word for it (memory only): evicted first

    def encode(self) -> bytes:
        return json.dumps({"addrs": self.addrs, "source": self.source.value, "added": self.added,
                           "last_seen": self.last_seen, "failures": self.failures,
                           "next_dial": self.next_dial}, sort_keys=True).encode()

    @classmethod
    def decode(cls, peer_id: str, raw: bytes) -> PeerEntry:
        """ValueError (or KeyError/TypeError) on anything but a record :meth:`encode` wrote."""
        data = json.loads(raw)
        addrs = [canonical(a) for a in data["addrs"]][:MAX_ADDRS_PER_PEER]
        if not addrs or any(parse_multiaddr(a)[2] != peer_id for a in addrs):
            raise ValueError("addresses of another peer")
        last_seen = data["last_seen"]
        entry = cls(peer_id, peer_id, addrs, Source(data["source"]), float(data["added"]),
                    None if last_seen is None else float(last_seen), int(data["failures"]),
                    float(data["next_dial"]))
        if entry.failures < 0 or not all(math.isfinite(v) for v in (entry.added, entry.next_dial)):
            raise ValueError("bad numbers")
        return entry

    def _badness(self) -> tuple[bool, bool, int, int, float]:
        """Sort key: the smallest is the first to evict (never reached and not a validator first; claims first)."""
        return (self.last_seen is not None or self.validator, not self.claimed, self.source.rank, -self.failures,
                self.added)


class PeerStore:
    """Known peer addresses, persisted, with dial backoff (module docstring).

    ``self_id`` (our PeerID) is never stored or dialed. ``rng`` supplies the backoff jitter: inject a
    seeded one in tests and simulations.
    """

    log = Logger()

    def __init__(self, store: Store | None, rng: random.Random | None = None, self_id: str | None = None,
                 max_peers: int = MAX_PEERS, backoff_base: float = BACKOFF_BASE,
                 backoff_max: float = BACKOFF_MAX) -> None:
        if max_peers < 1 or not 0 < backoff_base <= backoff_max:
            raise ValueError("max_peers must be >= 1 and 0 < backoff_base <= backoff_max")
        self.store = store
        self.rng = rng if rng is not None else random.Random()
        self.self_id = self_id
        self.max_peers = max_peers
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._entries: dict[str, PeerEntry] = {}
        if store is not None:
            self._load(store)

    def _load(self, store: Store) -> None:
        bad: list[bytes] = []
        for key, raw in store.items(PEERS, ADDR_PREFIX):
            try:
                peer_id = _peer_id(key[len(ADDR_PREFIX):].decode())
                entry = PeerEntry.decode(peer_id, raw)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                bad.append(key)
                continue
            if peer_id != self.self_id:
                self._entries[peer_id] = entry
        if bad:
            self.log.warn("Dropping {n} unreadable peer address records", n=len(bad))
            store.write_many(PEERS, dict.fromkeys(bad))

    def _save(self, entry: PeerEntry) -> None:
        if entry.claimed:
            return                                  # a claim lives in memory only
        if self.store is not None and entry.peer_id is not None and entry.key == entry.peer_id:
            self.store.put(PEERS, ADDR_PREFIX + entry.peer_id.encode(), entry.encode())

    def _drop(self, entry: PeerEntry) -> None:
        self._entries.pop(entry.key, None)
        if self.store is not None and entry.key == entry.peer_id and entry.peer_id is not None and not entry.claimed:
            self.store.delete(PEERS, ADDR_PREFIX + entry.peer_id.encode())

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> PeerEntry | None:
        """The entry of a PeerID (or of an ID-less bootstrap multiaddr)."""
        return self._entries.get(key)

    def entries(self) -> list[PeerEntry]:
        return list(self._entries.values())

    def _entry_for(self, addr: str) -> PeerEntry | None:
        try:
            host, port, peer_id = parse_multiaddr(addr)
        except ValueError:
            return None
        return self._entries.get(peer_id if peer_id is not None else format_multiaddr(host, port))

    # -- learning addresses ----------------------------------------------------------------------
    def add(self, addr: str, source: Source | str, now: float, claimed: bool = False) -> bool:
        """Learn ``addr``; True if it is a new peer or a new address of a known one.

        ValueError for text that is not a multiaddr, or an ID-less address not from bootstrap; False
        (ignored) for our own PeerID and undialable hosts. ``claimed``: a stranger's own word (module
        docstring); it makes a new entry a claim, never an existing one, and an unclaimed add of a
        claimed entry confirms it.
        """
        source = Source(source)
        host, port, peer_id = parse_multiaddr(addr)
        text = format_multiaddr(host, port, peer_id)
        if not dialable(host):
            self.log.debug("Ignoring undialable address {addr}", addr=text)
            return False
        if peer_id is None:
            if source is not Source.BOOTSTRAP:
                raise ValueError(f"{addr!r} has no /p2p/<PeerID>: only bootstrap addresses may omit it")
            if text in self._entries:
                return False
            self._entries[text] = PeerEntry(text, None, [text], source, now, next_dial=now)
            return True
        if peer_id == self.self_id:
            return False
        entry = self._entries.get(peer_id)
        if entry is None:
            entry = self._entries[peer_id] = PeerEntry(peer_id, peer_id, [text], source, now, next_dial=now,
                                                       claimed=claimed)
            self._save(entry)
            self._evict()
            return peer_id in self._entries
        changed = False
        if entry.claimed and not claimed:
            entry.claimed = False
            changed = True
        if source.rank > entry.source.rank:
            entry.source = source
            changed = True
        new = text not in entry.addrs
        if source is Source.EXCHANGE:
            # Hearsay never displaces what the peer said of itself or what the operator configured.
            if new and len(entry.addrs) < MAX_ADDRS_PER_PEER:
                entry.addrs.append(text)
                changed = True
            else:
                new = False
        elif entry.addrs[0] != text:
            if not new:
                entry.addrs.remove(text)
            entry.addrs.insert(0, text)
            del entry.addrs[MAX_ADDRS_PER_PEER:]
            changed = True
        if changed:
            self._save(entry)
        return new

    def add_from_exchange(self, addrs: Any, source_peer: str | None, now: float) -> int:
        """Learn a peers list from ``source_peer``; returns how many addresses were new.

        Not a list/tuple of at most MAX_EXCHANGE_ADDRS: ignored whole. Malformed, undialable, ID-less
        entries and our own PeerID are skipped; at most MAX_EXCHANGE_ADDED are added.
        """
        if not isinstance(addrs, (list, tuple)) or len(addrs) > MAX_EXCHANGE_ADDRS:
            self.log.debug("Ignoring a peers list from {peer}", peer=source_peer)
            return 0
        added = 0
        for addr in addrs:
            if added >= MAX_EXCHANGE_ADDED:
                break
            if not isinstance(addr, str):
                continue
            try:
                _, _, peer_id = parse_multiaddr(addr)
                if peer_id is None:
                    continue
                added += self.add(addr, Source.EXCHANGE, now)
            except ValueError:
                continue
        return added

    def add_bootstrap(self, addrs: Iterable[str], now: float) -> int:
        """Learn the configured bootstrap addresses (ValueError names the first bad one)."""
        return sum(self.add(addr, Source.BOOTSTRAP, now) for addr in addrs)

    def _evict(self) -> None:
        """Over ``max_peers`` (ID-less bootstrap entries do not count): drop the worst non-bootstrap peers."""
        known = [e for e in self._entries.values() if e.peer_id is not None and e.key == e.peer_id]
        excess = len(known) - self.max_peers
        if excess <= 0:
            return
        candidates = sorted((e for e in known if e.source is not Source.BOOTSTRAP), key=PeerEntry._badness)
        for entry in candidates[:excess]:
            self._drop(entry)

    def forget(self, key: str) -> bool:
        """Remove a peer (or an ID-less bootstrap address); True if it was known."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._drop(entry)
        return True

    # -- dialing ---------------------------------------------------------------------------------
    def backoff(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures, before jitter."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_base * 2.0 ** min(failures - 1, 60), self.backoff_max)

    def dial_failed(self, addr: str, now: float) -> float | None:
        """Count a failed dial of ``addr``; returns the next dial time (None if the peer was forgotten)."""
        entry = self._entry_for(addr)
        if entry is None:
            return None
        entry.failures += 1
        if entry.failures >= MAX_FAILURES and entry.source is not Source.BOOTSTRAP:
            self.log.debug("Forgetting {peer} after {n} failed dials", peer=entry.key, n=entry.failures)
            self._drop(entry)
            return None
        entry.next_dial = now + self.backoff(entry.failures) * (1.0 - JITTER * self.rng.random())
        self._save(entry)
        return entry.next_dial

    def dial_succeeded(self, addr: str, now: float, peer_id: str | None = None) -> None:
        """A dial of ``addr`` reached the peer: reset the backoff, note the time, put the address first.

        For an ID-less bootstrap address pass the ``peer_id`` it turned out to have, so it is not dialed
        again while that peer is connected; without one it waits ``backoff_max`` before the next dial.
        """
        entry = self._entry_for(addr)
        if entry is None:
            return
        entry.failures = 0
        entry.last_seen = now
        entry.next_dial = now
        entry.claimed = False                      # reached: no longer anyone's word for it
        if entry.peer_id is None:
            if peer_id is not None:
                entry.resolved = peer_id
            elif entry.resolved is None:
                entry.next_dial = now + self.backoff_max
        else:
            text = canonical(addr)
            if text in entry.addrs and entry.addrs[0] != text:
                entry.addrs.remove(text)
                entry.addrs.insert(0, text)
        self._save(entry)

    def connection_closed(self, addr: str, now: float, lasted: float) -> float | None:
        """A dialed connection that reached ready has closed after ``lasted`` seconds; the next dial time.

        Shorter than MIN_SESSION: one more short session, and the next dial waits ``backoff(n)`` (with
        jitter) instead of coming at once, so a peer that accepts and drops us is not redialled every
        second. A session that lasted resets the count and may be redialled at once.
        """
        entry = self._entry_for(addr)
        if entry is None:
            return None
        if lasted >= MIN_SESSION:
            entry.short_sessions = 0
            entry.next_dial = now
        else:
            entry.short_sessions += 1
            entry.next_dial = now + self.backoff(entry.short_sessions) * (1.0 - JITTER * self.rng.random())
        self._save(entry)
        return entry.next_dial

    def mark_seen(self, peer_id: str, now: float) -> None:
        """A known peer connected to us: it is alive, so forget its failures.

        Not ``last_seen``: that we reached its address is what keeps an entry from eviction, and an inbound
        connection does not show it.
        """
        entry = self._entries.get(peer_id)
        if entry is not None:
            entry.failures, entry.next_dial = 0, now
            self._save(entry)

    def mark_validator(self, peer_id: str) -> None:
        """The peer's host key is a validator's (it authenticated as one): its entry is evicted last."""
        entry = self._entries.get(peer_id)
        if entry is not None:
            entry.validator = True

    def set_latency(self, peer_id: str, latency: float | None) -> None:
        """The peer's ping EWMA (memory only): ties in dial order and sharing prefer fast peers."""
        entry = self._entries.get(peer_id)
        if entry is not None:
            entry.latency = latency

    def due(self, now: float, connected: set[str], limit: int,
            is_banned: Callable[[str], bool] | None = None) -> list[str]:
        """Up to ``limit`` addresses to dial now, one per peer, bootstrap first.

        Skips our own PeerID, peers in ``connected``, peers ``is_banned(peer_id)`` says are banned (IP
        bans are enforced at admission) and peers whose next dial is later. Each address handed out is
        held back for DIAL_HOLD seconds: report the outcome with :meth:`dial_failed` / :meth:`dial_succeeded`.
        """
        if limit <= 0:
            return []
        ready = []
        for entry in self._entries.values():
            pid = entry.peer_id or entry.resolved
            if entry.next_dial > now or (pid is not None and (pid == self.self_id or pid in connected)):
                continue
            if pid is not None and is_banned is not None and is_banned(pid):
                continue
            ready.append(entry)
        ready.sort(key=lambda e: (-e.source.rank, e.failures, math.inf if e.latency is None else e.latency,
                                  -(e.last_seen or 0.0), e.next_dial, e.key))
        out: list[str] = []
        endpoints: set[tuple[str, int]] = set()
        for entry in ready:
            addr = entry.addrs[entry.failures % len(entry.addrs)]
            host, port, _ = parse_multiaddr(addr)
            if (host, port) in endpoints:
                continue
            endpoints.add((host, port))
            entry.next_dial = now + DIAL_HOLD
            out.append(addr)
            if len(out) >= limit:
                break
        return out

    def sample(self, limit: int, rng: random.Random | None = None) -> list[str]:
        """Up to ``limit`` addresses to share in a peers reply: peers we reached first, at random."""
        rng = rng or self.rng
        shareable = [e for e in self._entries.values()
                     if e.peer_id is not None and e.key == e.peer_id and not e.claimed]
        reached = [e for e in shareable if e.last_seen is not None and e.failures == 0]
        others = [e for e in shareable if not (e.last_seen is not None and e.failures == 0)]
        rng.shuffle(reached)
        rng.shuffle(others)
        return [e.addrs[0] for e in (reached + others)[:max(limit, 0)]]
