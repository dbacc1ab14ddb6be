"""The peer manager: reputation, bans, rate limits, connection slots and in-flight caps (SPEC §5).

A sans-I/O core (ARCHITECTURE "Sans-I/O cores"): no reactor, no sockets, no clock reads. Every method whose
answer depends on time takes ``now`` in seconds; pass the reactor's ``seconds()`` (wall-clock epoch time),
because ban expiries and score time stamps are persisted and must mean the same after a restart.

Reputation
    An integer in [-100, +100]; a new peer is at 0. Every change comes from one table, :data:`DELTAS`.
    Provable misbehaviour costs 50 at once, so a neutral peer is banned by one offence; ambiguous faults
    cost a few points, so several are needed. A score drifts back toward 0 by one point per
    :data:`DECAY_INTERVAL` seconds, computed lazily from ``now`` (nothing is written for decay).
    Race-prone faults (:data:`RACE_PRONE`: an invalid tx, a message for another height or round, a vote
    by a non-validator, txs over the gossip budget, a request over the rate limit) are what honest peers
    send when blocks and gossip cross or when their limits differ from ours, so at most one of them is
    charged per :data:`RACE_WINDOW` per peer: a racing honest peer loses at most a point a minute (five
    for a rate-limit hit, which it answers by backing off) and decay gives it back, while a peer that
    sends them on purpose gains nothing by it. A peer that keeps sending requests after many refusals in
    one window has ignored them on purpose: that is :data:`Event.REQUEST_FLOOD`, provable.
    Good deliveries (:data:`GOOD`: the first copy of a valid vote, proposal or tx, a certified block we
    committed, a useful answer) raise a score *slowly*: at most :data:`GOOD_PER_WINDOW` points per
    :data:`GOOD_WINDOW` per peer, whatever the number of deliveries, so relaying a busy network's traffic
    cannot farm reputation faster than a steady +2 a minute net of decay.
    Scores are keyed by PeerID, survive disconnects (a peer cannot reset its score by reconnecting) and
    restarts (the ``peers`` database, key :data:`SCORE_PREFIX` + PeerID, written once per change; a score
    back at 0 is deleted). At most :data:`MAX_SCORES` are kept: the least telling (closest to 0) go first.

Bans
    A peer whose score reaches :data:`BAN_THRESHOLD` (-50) is banned for ``ban_duration``, by PeerID and by
    the IP it was connected from; :meth:`PeerManager.record` says so and the caller disconnects. Bans live
    in the ``bans`` database and are honoured after a restart. While banned, a score does not decay; when
    the ban expires (or an operator lifts it) the score is set to :data:`POST_BAN_SCORE` (-20): the peer
    comes back on probation -- not bannable by one ambiguous fault, but a provable offence bans it again.

    **Loopback is never banned by IP.** A testnet runs every node on 127.0.0.1 (and ::1); an IP ban there
    would ban every honest local peer along with the offender. So an offence from a loopback address bans
    the PeerID only, :meth:`PeerManager.is_banned` ignores IP bans for loopback addresses, and
    :meth:`PeerManager.set_ban` refuses a loopback IP. IPv4-mapped IPv6 addresses count as their IPv4.

    **IPv6 is banned by /64** (SPEC §5): one host or one customer line usually holds a whole /64, so a ban
    of one address of it would cost the offender nothing. An IP ban's target is :func:`ip_key` of the
    address -- the address itself for IPv4, ``"2001:db8:1:2::/64"`` for IPv6 -- so any address of that /64
    is refused; ``set_ban``/``unban`` take any address of the /64 (or the /64 itself). A ban an older node
    stored for one IPv6 address is read as a ban of its /64. Loopback ``::1`` stays exempt.

Limits
    A token bucket per peer for request messages (``rate_limit`` per minute, ``rate_limit_burst`` at once);
    a second, separate bucket per peer for transaction gossip (:data:`TX_GOSSIP_RATE` per minute,
    :data:`TX_GOSSIP_BURST` at once): honest validators relay bursts of txs, which must not spend the
    budget of get_* requests. Duplicates (seen-cache hits) cost no token at all. A tx over the gossip
    budget is dropped (not relayed) and charged :data:`Event.TX_OVER_BUDGET`, a race-prone fault (at
    most one charge per RACE_WINDOW); our own relay paces itself inside the same budget;
    connection slots (``max_inbound`` for observers plus ``validator_slots`` more inbound slots that only
    validator peers may use, ``max_outbound``, ``max_per_ip`` over both directions including loopback and
    counting an IPv6 /64 as one address (:func:`ip_key`), one connection per PeerID, ``require_stake``); at
    most ``max_inflight_requests`` open requests per peer. Connections not yet through TLS are counted
    before this, by the service (:mod:`timecoin.p2p.pending`, per :func:`ip_key` and :func:`ip_prefix`).
"""
from __future__ import annotations

import enum
import ipaddress
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from timecoin import crypto
from timecoin.config import NodeConfig
from timecoin.errors import DecodeError, Reason
from timecoin.store import BANS, PEERS, Store

# Keys in the ``peers`` database: scores here, addresses in discovery.py (one place for both prefixes).
SCORE_PREFIX = b"score:"
ADDR_PREFIX = b"addr:"
# Keys in the ``bans`` database.
BAN_PEER_PREFIX = b"peer:"
BAN_IP_PREFIX = b"ip:"

MIN_SCORE = -100
MAX_SCORE = 100
BAN_THRESHOLD = -50           # at or below: banned
POST_BAN_SCORE = -20          # a lifted ban leaves the peer here (probation; decays to 0 in 20 minutes)
DECAY_INTERVAL = 60.0         # seconds per point of drift toward 0
RACE_WINDOW = 60.0            # at most one race-prone fault is charged per window and peer (= decay)
GOOD_WINDOW = 60.0            # good deliveries earn at most GOOD_PER_WINDOW points per window and peer
GOOD_PER_WINDOW = 3           # net of decay (1/min) at most +2 a minute: ~50 minutes of service to reach +100
MAX_SCORES = 10_000           # persisted scores kept (a PeerID costs nothing to make: bound the table)
MAX_BANS = 50_000             # bans kept per table (PeerIDs; addresses): each costs an attacker a connection and
                              # an offence, but keys and IPv6 /64s are plentiful. At the cap the automatic ban that
                              # ends soonest goes (never an operator's): a flood can only shorten the oldest bans.
MAX_BAN_SECONDS = 10 * 365 * 86400.0
MAX_BUCKETS = 4_096           # token buckets kept for disconnected peers before the full ones are dropped
RATE_SLACK = 1e-3             # seconds of clock rounding forgiven by the token bucket
# Transaction gossip budget per peer, separate from the get_* request bucket (rate_limit): a constant
# here, next to the table, because config.py has no key for it yet. Sized for honest relay bursts (a
# validator forwarding a full mempool refill), far above what one peer needs to keep 50_000-tx mempools fed.
TX_GOSSIP_RATE = 12_000       # txs per minute a peer may relay to us (200/s); our own relay stays inside it
TX_GOSSIP_BURST = 2_000       # txs a peer may relay at once before the rate applies

_SCORE = struct.Struct(">hd")  # score, decay base time



def gcra(tat: float, now: float, per_minute: float, burst: int) -> tuple[float, float]:
    """One token bucket step as GCRA (the token bucket's exact equivalent, one float of state).

    ``tat`` is the bucket's theoretical arrival time (``now`` or earlier for a full bucket). Returns
    (seconds until a token is free, ``tat`` after taking it). Used for the buckets we enforce on peers
    (:meth:`PeerManager._take`) and for pacing what we send them (``PeerConnection.pace``/``send_tx``).
    """
    interval = 60.0 / per_minute
    wait = max(tat - (max(1, burst) - 1) * interval - now, 0.0)
    return wait, max(tat, now) + interval

class Event(enum.Enum):
    """Something a peer did that changes its reputation. The value is the name shown in logs and RPC."""

    # provable misbehaviour
    INVALID_SIGNATURE = "invalid_signature"
    FORGED_CERTIFICATE = "forged_certificate"
    EQUIVOCATION = "equivocation"
    MALFORMED_FRAME = "malformed_frame"
    OVERSIZED_FRAME = "oversized_frame"
    INVALID_BLOCK = "invalid_block"
    REQUEST_FLOOD = "request_flood"
    # ambiguous faults
    TIMEOUT = "timeout"
    STALE_DATA = "stale_data"
    SLOW_RESPONSE = "slow_response"
    RATE_LIMITED = "rate_limited"
    UNSOLICITED = "unsolicited"
    INVALID_TX = "invalid_tx"
    WRONG_HEIGHT_ROUND = "wrong_height_round"
    NOT_VALIDATOR = "not_validator"
    TX_OVER_BUDGET = "tx_over_budget"
    # good deliveries
    VALID_BLOCK = "valid_block"
    USEFUL_RESPONSE = "useful_response"
    VALID_CONSENSUS_MESSAGE = "valid_consensus_message"
    VALID_TX = "valid_tx"


# THE table of reputation deltas (SPEC §5). Nothing else in the code changes a score.
DELTAS: dict[Event, int] = {
    # -- provable misbehaviour: no honest node sends these; one offence bans a neutral peer --------------
    Event.INVALID_SIGNATURE: -50,        # a tx, vote, proposal or evidence whose signature does not verify
    Event.FORGED_CERTIFICATE: -50,       # a commit certificate without a valid > 2/3 quorum
    Event.EQUIVOCATION: -50,             # the peer's own host key (= validator key) signed two conflicting votes;
                                         # never the relay of them: honest nodes relay both halves by design
    Event.MALFORMED_FRAME: -50,          # bytes that are not a canonical message, or data before hello
    Event.OVERSIZED_FRAME: -50,          # a length prefix above max_frame_bytes
    Event.INVALID_BLOCK: -50,            # a certified block that fails validation (or is too large)
    Event.REQUEST_FLOOD: -50,            # kept requesting after 2 x max_inflight_requests refusals in a RACE_WINDOW
                                         # (an honest client backs off at the first: PeerConnection.back_off)
    # -- ambiguous faults: slow links and lagging honest peers do these too; several make a ban ---------
    Event.TIMEOUT: -5,                   # a request or ping left unanswered past its timeout
    Event.STALE_DATA: -3,                # old or missing data it claimed to have (lagging peer, clock skew)
    Event.SLOW_RESPONSE: -2,             # answered, but below the minimum useful rate
    Event.RATE_LIMITED: -5,              # a request over its token bucket, answered rate_limited (RACE_PRONE: a peer
                                         # configured for more than we allow is honest; it backs off)
    Event.UNSOLICITED: -3,               # a response or pong to nothing we asked (or a second hello)
    Event.INVALID_TX: -1,                # a tx refused by state rules: often a race with a block (RACE_PRONE)
    Event.WRONG_HEIGHT_ROUND: -1,        # consensus message for a height/round it cannot be (RACE_PRONE)
    Event.NOT_VALIDATOR: -1,             # vote/proposal by a key outside the set: set changes race (RACE_PRONE)
    Event.TX_OVER_BUDGET: -1,            # txs over its TX_GOSSIP budget (dropped): a busy relay or a flood (RACE_PRONE)
    # -- good deliveries: reputation rises slowly (GOOD_PER_WINDOW points per GOOD_WINDOW at most) ----
    Event.VALID_BLOCK: +1,               # the first proposal of a block we then committed (or a synced block)
    Event.USEFUL_RESPONSE: +1,           # an answer to our request that we could use
    Event.VALID_CONSENSUS_MESSAGE: +1,   # the first copy of a new valid vote or proposal (copies earn nothing)
    Event.VALID_TX: +1,                  # the first copy of a new tx our mempool accepted
}

GOOD: frozenset[Event] = frozenset(e for e, d in DELTAS.items() if d > 0)
# Provable misbehaviour bans at once, whatever the peer earned before: otherwise a Byzantine peer banks
# credit with valid messages first (up to +100) and then forges a certificate or two for free.
PROVABLE: frozenset[Event] = frozenset(e for e, d in DELTAS.items() if d <= BAN_THRESHOLD)

RACE_PRONE: frozenset[Event] = frozenset({Event.INVALID_TX, Event.WRONG_HEIGHT_ROUND, Event.NOT_VALIDATOR,
                                          Event.TX_OVER_BUDGET, Event.RATE_LIMITED})

# Reject reasons of the peer's input -> the event charged. None: not the sender's fault (our limits, its
# network or version, duplicates from gossip), so no reputation change.
_REASON_EVENTS: dict[Reason, Event | None] = {
    Reason.OK: None,
    Reason.MALFORMED: Event.MALFORMED_FRAME,
    Reason.FRAME_TOO_LARGE: Event.OVERSIZED_FRAME,
    Reason.BAD_SIGNATURE: Event.INVALID_SIGNATURE,
    Reason.WRONG_CHAIN: Event.INVALID_TX,             # a tx of another chain; a hello mismatch just disconnects
    Reason.WRONG_GENESIS: None,                       # another network: disconnect, no blame
    Reason.BAD_NONCE: Event.INVALID_TX,
    Reason.FEE_TOO_LOW: Event.INVALID_TX,
    Reason.INSUFFICIENT_FUNDS: Event.INVALID_TX,
    Reason.INSUFFICIENT_STAKE: Event.INVALID_TX,
    Reason.BAD_AMOUNT: Event.INVALID_TX,
    Reason.UNKNOWN_ACCOUNT: Event.INVALID_TX,
    Reason.MEMPOOL_FULL: None,                        # our limit
    Reason.DUPLICATE: None,                           # gossip delivers copies by design
    Reason.BAD_BLOCK: Event.INVALID_BLOCK,
    Reason.BAD_CERTIFICATE: Event.FORGED_CERTIFICATE,
    Reason.NOT_VALIDATOR: Event.NOT_VALIDATOR,
    Reason.WRONG_HEIGHT: Event.WRONG_HEIGHT_ROUND,
    Reason.WRONG_ROUND: Event.WRONG_HEIGHT_ROUND,
    Reason.BAD_EVIDENCE: Event.STALE_DATA,            # mostly evidence that aged out while in flight
    Reason.RATE_LIMITED: Event.RATE_LIMITED,
    Reason.BANNED: None,
    Reason.TOO_MANY_CONNECTIONS: None,
    Reason.PROTOCOL_VERSION: None,                    # an older or newer node: disconnect, no blame
    Reason.TIMEOUT: Event.TIMEOUT,
    Reason.BLOCK_TOO_LARGE: Event.INVALID_BLOCK,
    Reason.BAD_TIMESTAMP: Event.STALE_DATA,           # clocks differ between honest nodes
    Reason.REPLACEMENT_UNDERPRICED: Event.INVALID_TX,
    Reason.SHUTTING_DOWN: None,
    Reason.INTERNAL: None,                            # our own failure
}


def event_for_reason(reason: Reason) -> Event | None:
    """The event to charge a peer whose input was refused with ``reason``; None when it is not its fault."""
    return _REASON_EVENTS.get(reason)


def normalize_ip(ip: str | None) -> str | None:
    """Canonical text of an IP address (IPv4-mapped IPv6 as IPv4); None for None, "" or a non-address."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def is_loopback(ip: str | None) -> bool:
    """True for 127.0.0.0/8 and ::1 (also IPv4-mapped): addresses never banned by IP (module docstring)."""
    norm = normalize_ip(ip)
    return norm is not None and ipaddress.ip_address(norm).is_loopback


IPV6_BAN_PREFIX = 64          # IPv6 addresses are banned and counted for max_per_ip by /64 (SPEC §5)
IPV4_PENDING_PREFIX = 24      # connections not yet through TLS are counted per /24 (IPv4) and /64 (IPv6)


def ip_key(ip: str | None) -> str | None:
    """What bans and ``max_per_ip`` count an address as: an IPv4 address (IPv4-mapped too) or loopback as
    itself, any other IPv6 address as its /64 (``"2001:db8:1:2::/64"``); None for a non-address."""
    norm = normalize_ip(ip)
    if norm is None:
        return None
    addr = ipaddress.ip_address(norm)
    if addr.version == 4 or addr.is_loopback:
        return norm
    return str(ipaddress.IPv6Network((addr, IPV6_BAN_PREFIX), strict=False))


def ip_prefix(ip: str | None) -> str | None:
    """The network a connection not yet through TLS is counted in: the /24 of IPv4, the /64 of IPv6."""
    norm = normalize_ip(ip)
    if norm is None:
        return None
    addr = ipaddress.ip_address(norm)
    if addr.version == 6:
        return ip_key(norm)
    return str(ipaddress.IPv4Network((addr, IPV4_PENDING_PREFIX), strict=False))


def ban_ip_key(target: str | None) -> str | None:
    """The IP ban key ``target`` names: :func:`ip_key` of an address, or an IPv6 /64 written as a network
    (``"2001:db8:1:2::/64"``); None for anything else."""
    key = ip_key(target)
    if key is not None or not target:
        return key
    try:
        net = ipaddress.IPv6Network(target.strip(), strict=True)
    except ValueError:
        return None
    return str(net) if net.prefixlen == IPV6_BAN_PREFIX else None


@dataclass(frozen=True)
class Outcome:
    """What :meth:`PeerManager.record` did: the delta applied, the new score, and whether the peer is banned."""

    event: Event
    delta: int
    score: int
    banned: bool                   # banned now (newly or already): the caller disconnects
    newly_banned: bool = False
    banned_ip: str | None = None   # the IP banned along with the PeerID, if any


@dataclass(frozen=True)
class Ban:
    """One ban: ``kind`` is "peer" (target is a PeerID) or "ip" (target is an address)."""

    kind: str
    target: str
    until: float
    since: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "until": self.until, "since": self.since,
                "reason": self.reason}

    @property
    def key(self) -> bytes:
        return (BAN_PEER_PREFIX if self.kind == "peer" else BAN_IP_PREFIX) + self.target.encode()

    def encode(self) -> bytes:
        return json.dumps({"until": self.until, "since": self.since, "reason": self.reason}).encode()


@dataclass(frozen=True)
class PeerInfo:
    """A peer as RPC and metrics show it."""

    peer_id: str
    score: int
    banned_until: float | None
    connected: bool
    inbound: bool | None
    validator: bool
    ip: str | None
    inflight: int

    def to_json(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "score": self.score, "banned_until": self.banned_until,
                "connected": self.connected, "inbound": self.inbound, "validator": self.validator,
                "ip": self.ip, "inflight": self.inflight}


@dataclass
class _Score:
    score: int
    base: float                    # decay is counted in whole DECAY_INTERVALs from here


@dataclass
class _Conn:
    ip: str | None
    inbound: bool
    validator: bool
    inflight: int = 0


def _clamp(score: int) -> int:
    return max(MIN_SCORE, min(MAX_SCORE, score))


def _decayed(entry: _Score, now: float) -> _Score:
    """``entry`` moved toward 0 by one point per whole DECAY_INTERVAL elapsed since its base."""
    if entry.score == 0 or now <= entry.base:
        return entry
    steps = int((now - entry.base) // DECAY_INTERVAL)
    if steps <= 0:
        return entry
    if steps >= abs(entry.score):
        return _Score(0, now)
    sign = 1 if entry.score > 0 else -1
    return _Score(entry.score - sign * steps, entry.base + steps * DECAY_INTERVAL)


class PeerManager:
    """Reputation, bans, rate limits, slots and in-flight caps of every peer (module docstring).

    ``store`` None keeps everything in memory (simulations, tests); otherwise scores and bans are loaded
    from it at construction and written on change. Single-threaded, like the reactor that drives it.
    """

    log = Logger()

    def __init__(self, store: Store | None, config: NodeConfig) -> None:
        self.store = store
        self.config = config
        self._now = -math.inf                       # the latest ``now`` seen (for score() without one)
        self._scores: dict[str, _Score] = {}
        self._peer_bans: dict[str, Ban] = {}
        self._ip_bans: dict[str, Ban] = {}
        self._bans_full_logged = False
        self._conns: dict[str, _Conn] = {}
        self._per_ip: dict[str, int] = {}         # connections by ip_key (an IPv6 /64 counts as one address)
        self._buckets: dict[str, float] = {}      # token buckets as theoretical arrival times
        self._tx_buckets: dict[str, float] = {}   # the same for transaction gossip (a separate budget)
        self.tx_rate = TX_GOSSIP_RATE             # per minute
        self.tx_burst = TX_GOSSIP_BURST
        self._race_charged: dict[str, float] = {}  # peer -> when a race-prone fault was last charged
        self._good: dict[str, tuple[float, int]] = {}  # peer -> (GOOD_WINDOW start, points earned in it)
        if store is not None:
            self._load(store)

    # -- persistence -----------------------------------------------------------------------------
    def _load(self, store: Store) -> None:
        for key, value in store.items(PEERS, SCORE_PREFIX):
            try:
                score, base = _SCORE.unpack(value)
                peer_id = key[len(SCORE_PREFIX):].decode()
            except (struct.error, UnicodeDecodeError):
                self.log.warn("Ignoring a corrupt reputation record {key!r}", key=key)
                continue
            if score != 0 and math.isfinite(base):
                self._scores[peer_id] = _Score(_clamp(score), base)
        rekeyed: dict[bytes, bytes | None] = {}
        for key, value in store.items(BANS):
            ban = self._decode_ban(key, value)
            if ban is None:
                self.log.warn("Ignoring a corrupt ban record {key!r}", key=key)
            elif ban.kind == "peer":
                self._peer_bans[ban.target] = ban
            else:
                ban = self._rekeyed_ip_ban(ban, key, rekeyed)
                self._ip_bans[ban.target] = ban
        for ban in self._evict_bans(set()):     # a store written with a larger cap
            rekeyed[ban.key] = None
        if rekeyed:
            store.write_many(BANS, rekeyed)

    def _rekeyed_ip_ban(self, ban: Ban, key: bytes, rekeyed: dict[bytes, bytes | None]) -> Ban:
        """An IP ban under its :func:`ip_key` (an older node banned one IPv6 address: now its /64)."""
        target = ban_ip_key(ban.target)
        if target is None or target == ban.target:
            return ban
        new = Ban("ip", target, ban.until, ban.since, ban.reason)
        held = self._ip_bans.get(target)
        if held is not None and held.until >= new.until:
            new = held
        rekeyed[key] = None
        rekeyed[new.key] = new.encode()
        return new

    @staticmethod
    def _decode_ban(key: bytes, value: bytes) -> Ban | None:
        try:
            data = json.loads(value)
            until, since, reason = float(data["until"]), float(data["since"]), str(data["reason"])
            if key.startswith(BAN_PEER_PREFIX):
                kind, target = "peer", key[len(BAN_PEER_PREFIX):].decode()
            elif key.startswith(BAN_IP_PREFIX):
                kind, target = "ip", key[len(BAN_IP_PREFIX):].decode()
            else:
                return None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        return Ban(kind, target, until, since, reason) if math.isfinite(until) else None

    def _write_score(self, peer_id: str, entry: _Score | None) -> None:
        """Keep ``entry`` (None or 0: forget) in memory and, with a store, on disk: one write."""
        key = SCORE_PREFIX + peer_id.encode()
        if entry is None or entry.score == 0:
            existed = self._scores.pop(peer_id, None) is not None
            if existed and self.store is not None:
                self.store.delete(PEERS, key)
            return
        self._scores[peer_id] = entry
        if self.store is not None:
            self.store.put(PEERS, key, _SCORE.pack(entry.score, entry.base))
        if len(self._scores) > MAX_SCORES:
            self._evict_scores(keep=peer_id)

    def _evict_scores(self, keep: str) -> None:
        """Drop the scores closest to 0 (decayed first), never a connected or banned peer's, to MAX_SCORES."""
        now = self._now
        ranked = sorted(
            (abs(_decayed(e, now).score), pid) for pid, e in self._scores.items()
            if pid != keep and pid not in self._conns and pid not in self._peer_bans)
        excess = len(self._scores) - MAX_SCORES
        drop = [pid for _, pid in ranked[:max(excess, 0)]]
        for pid in drop:
            del self._scores[pid]
        if drop and self.store is not None:
            self.store.write_many(PEERS, {SCORE_PREFIX + pid.encode(): None for pid in drop})

    def _tick(self, now: float) -> None:
        if now > self._now:
            self._now = now

    # -- reputation ------------------------------------------------------------------------------
    def score(self, peer_id: str, now: float | None = None) -> int:
        """The peer's current score (0 for a peer never seen). Without ``now``: at the latest time seen."""
        if now is None:
            now = self._now
        else:
            self._tick(now)
        return self._current(peer_id, now).score

    def _current(self, peer_id: str, now: float) -> _Score:
        banned = self._ban_until(self._peer_bans, peer_id, now) is not None    # lifts an expired ban first
        entry = self._scores.get(peer_id)
        if entry is None:
            return _Score(0, now)
        return entry if banned else _decayed(entry, now)

    def record(self, peer_id: str, event: Event, now: float, ip: str | None = None) -> Outcome:
        """Apply ``DELTAS[event]`` to the peer; ban it (PeerID and, unless loopback, IP) at <= -50.

        ``ip`` defaults to the address of its current connection. The caller disconnects when
        ``Outcome.banned`` is true.
        """
        self._tick(now)
        delta = DELTAS[event]
        if event in RACE_PRONE:
            last = self._race_charged.get(peer_id)
            if last is not None and now - last < RACE_WINDOW:
                delta = 0
            else:
                self._race_charged[peer_id] = now
                if len(self._race_charged) > MAX_BUCKETS:
                    self._race_charged = {k: t for k, t in self._race_charged.items() if now - t < RACE_WINDOW}
        elif delta > 0:
            # Good news earns nothing while banned (a ban is lifted by time or an operator, not by credit).
            banned = self._ban_until(self._peer_bans, peer_id, now) is not None
            delta = 0 if banned else self._earn(peer_id, delta, now)
        current = self._current(peer_id, now)
        new = _clamp(current.score + delta)
        if event in PROVABLE:
            new = min(new, BAN_THRESHOLD)
        if new != current.score:
            same_side = current.score != 0 and (new > 0) == (current.score > 0)
            self._write_score(peer_id, _Score(new, current.base if same_side else now))
        already = peer_id in self._peer_bans
        if already or new > BAN_THRESHOLD or delta >= 0:     # good news never bans
            return Outcome(event, new - current.score, new, already)
        conn = self._conns.get(peer_id)
        ip_norm = normalize_ip(ip) if ip else (conn.ip if conn else None)
        bans = [Ban("peer", peer_id, now + self.config.ban_duration, now, f"reputation {new} after {event.value}")]
        banned_ip = None
        if ip_norm is not None and not is_loopback(ip_norm):
            banned_ip = ip_key(ip_norm) or ip_norm  # an IPv6 address: its /64
            bans.append(Ban("ip", banned_ip, now + self.config.ban_duration, now, f"peer {peer_id} banned"))
        self._put_bans(bans)
        self.log.info("Banned peer {peer} (ip {ip}) until {until}: reputation {score} after {event}",
                      peer=peer_id, ip=banned_ip, until=bans[0].until, score=new, event=event.value)
        return Outcome(event, new - current.score, new, True, newly_banned=True, banned_ip=banned_ip)

    def _earn(self, peer_id: str, delta: int, now: float) -> int:
        """How much of a positive ``delta`` the peer may still earn in its current GOOD_WINDOW (and count it)."""
        start, earned = self._good.get(peer_id, (now, 0))
        if now - start >= GOOD_WINDOW or now < start:
            start, earned = now, 0
        granted = max(0, min(delta, GOOD_PER_WINDOW - earned))
        self._good[peer_id] = (start, earned + granted)
        if len(self._good) > MAX_BUCKETS:
            self._good = {k: v for k, v in self._good.items() if now - v[0] < GOOD_WINDOW}
        return granted

    def record_reason(self, peer_id: str, reason: Reason, now: float, ip: str | None = None) -> Outcome | None:
        """:meth:`record` of ``event_for_reason(reason)``; None if that reason blames no one."""
        event = event_for_reason(reason)
        return None if event is None else self.record(peer_id, event, now, ip)

    # -- bans ------------------------------------------------------------------------------------
    def _put_bans(self, bans: list[Ban]) -> None:
        for ban in bans:
            (self._peer_bans if ban.kind == "peer" else self._ip_bans)[ban.target] = ban
        evicted = self._evict_bans({ban.target for ban in bans})
        if self.store is not None:
            writes: dict[bytes, bytes | None] = {ban.key: None for ban in evicted}
            writes.update({ban.key: ban.encode() for ban in bans})
            self.store.write_many(BANS, writes)

    def _evict_bans(self, keep: set[str]) -> list[Ban]:
        """Hold each ban table to :data:`MAX_BANS`: the automatic bans that end soonest go first, never an
        operator's ban nor one in ``keep`` (just made). The caller deletes the evicted records."""
        evicted: list[Ban] = []
        for table in (self._peer_bans, self._ip_bans):
            excess = len(table) - MAX_BANS
            if excess <= 0:
                continue
            movable = sorted((b for b in table.values()
                              if b.target not in keep and not b.reason.startswith("operator")),
                             key=lambda b: (b.until, b.target))
            for ban in movable[:excess]:
                del table[ban.target]
                evicted.append(ban)
        if evicted and not self._bans_full_logged:
            self._bans_full_logged = True
            self.log.warn("Ban table full ({cap} per kind): the bans ending soonest are forgotten early", cap=MAX_BANS)
        return evicted

    def _ban_until(self, table: dict[str, Ban], target: str | None, now: float) -> float | None:
        """The ban's end if ``target`` is banned at ``now``; an expired ban is lifted here."""
        if target is None:
            return None
        ban = table.get(target)
        if ban is None:
            return None
        if ban.until > now:
            return ban.until
        self._lift(ban)
        return None

    def _lift(self, ban: Ban) -> None:
        """Remove a ban; a peer's score comes back no lower than POST_BAN_SCORE (probation)."""
        table = self._peer_bans if ban.kind == "peer" else self._ip_bans
        table.pop(ban.target, None)
        if self.store is not None:
            self.store.delete(BANS, ban.key)
        if ban.kind == "peer":
            entry = self._scores.get(ban.target)
            if entry is not None and entry.score < POST_BAN_SCORE:
                # Probation starts when the ban ended (expiry) or now (an operator lifted it early).
                base = min(ban.until, self._now) if math.isfinite(self._now) else ban.until
                self._write_score(ban.target, _Score(POST_BAN_SCORE, base))

    def is_banned(self, peer_id: str | None, ip: str | None, now: float) -> bool:
        """True if the PeerID is banned, or the IP is -- an IPv6 address when its /64 is (IP bans never apply
        to loopback addresses)."""
        self._tick(now)
        if self._ban_until(self._peer_bans, peer_id, now) is not None:
            return True
        key = ip_key(ip)
        return key is not None and not is_loopback(key) and self._ban_until(self._ip_bans, key, now) is not None

    def list_bans(self, now: float) -> list[Ban]:
        """Every ban in force (expired ones are lifted), soonest to end first."""
        self._tick(now)
        for ban in [*self._peer_bans.values(), *self._ip_bans.values()]:
            self._ban_until(self._peer_bans if ban.kind == "peer" else self._ip_bans, ban.target, now)
        return sorted([*self._peer_bans.values(), *self._ip_bans.values()], key=lambda b: (b.until, b.target))

    def _target(self, target: str) -> tuple[str, str]:
        """("ip", ban key: :func:`ban_ip_key`) or ("peer", PeerID); ValueError for anything else."""
        key = ban_ip_key(target)
        if key is not None:
            return "ip", key
        try:
            crypto.pubkey_from_peer_id(target)
        except DecodeError as exc:
            raise ValueError(f"{target!r} is neither an IP address nor a PeerID ({exc})") from None
        return "peer", target

    def set_ban(self, target: str, seconds: float, now: float, reason: str = "operator") -> Ban:
        """Operator ban of a PeerID or an IP for ``seconds`` (replaces a ban of the same target).

        An IPv6 address bans its /64 (module docstring). Refuses (ValueError) a loopback IP -- it would ban
        every local peer -- and a bad duration. The caller disconnects the matching connections
        (:meth:`connections_of`).
        """
        self._tick(now)
        kind, norm = self._target(target)
        if kind == "ip" and is_loopback(norm):
            raise ValueError(f"{norm} is a loopback address: loopback is never banned by IP (ban the PeerID)")
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_BAN_SECONDS):
            raise ValueError(f"ban duration must be in (0, {MAX_BAN_SECONDS:g}] seconds, not {seconds}")
        ban = Ban(kind, norm, now + seconds, now, reason)
        self._put_bans([ban])
        return ban

    def unban(self, target: str) -> bool:
        """Lift the ban of a PeerID or IP; True if there was one. A peer's score goes to POST_BAN_SCORE."""
        kind, norm = self._target(target)
        ban = (self._peer_bans if kind == "peer" else self._ip_bans).get(norm)
        if ban is None:
            return False
        self._lift(ban)
        return True

    def clear_bans(self) -> int:
        """Lift every ban; returns how many there were."""
        bans = [*self._peer_bans.values(), *self._ip_bans.values()]
        for ban in bans:
            self._lift(ban)
        return len(bans)

    def connections_of(self, target: str) -> list[str]:
        """Connected PeerIDs a ban of ``target`` (PeerID or IP; IPv6: its /64) covers: the ones to disconnect."""
        kind, key = self._target(target)
        if kind == "peer":
            return [key] if key in self._conns else []
        return sorted(pid for pid, c in self._conns.items() if ip_key(c.ip) == key)

    # -- rate limit ------------------------------------------------------------------------------
    def allow_request(self, peer_id: str, now: float) -> bool:
        """Take one token from the peer's bucket; False (refuse with rate_limited, record RATE_LIMITED) if empty.

        The bucket holds ``rate_limit_burst`` tokens, starts full and refills ``rate_limit`` per minute. It
        is kept as its "theoretical arrival time" (GCRA, the token bucket's exact equivalent): one float
        per peer, no drift from summing fractions; ``RATE_SLACK`` forgives float rounding of ``now``.
        """
        return self._take(self._buckets, self.config.rate_limit, self.config.rate_limit_burst, peer_id, now)

    def allow_tx(self, peer_id: str, now: float) -> bool:
        """Take one token from the peer's transaction gossip bucket (``tx_rate``/min, ``tx_burst``).

        Separate from :meth:`allow_request`: relayed txs never spend the get_* budget. Call it for new
        txs only (not seen-cache hits). False: drop the tx and record TX_OVER_BUDGET.
        """
        return self._take(self._tx_buckets, self.tx_rate, self.tx_burst, peer_id, now)

    def _take(self, buckets: dict[str, float], rate: int, burst: int, peer_id: str, now: float) -> bool:
        self._tick(now)
        tat = buckets.get(peer_id)
        if tat is None:
            if len(buckets) >= MAX_BUCKETS:
                self._prune_buckets(buckets, now)
            tat = now
        wait, taken = gcra(tat, now, rate, burst)
        if wait > RATE_SLACK:
            buckets[peer_id] = tat
            return False
        buckets[peer_id] = taken
        return True

    def _prune_buckets(self, buckets: dict[str, float], now: float) -> None:
        """Forget buckets of disconnected peers that have refilled (they start full anyway)."""
        for pid, tat in list(buckets.items()):
            if pid not in self._conns and tat <= now:
                del buckets[pid]

    # -- connection slots ------------------------------------------------------------------------
    def admit(self, peer_id: str, ip: str | None, inbound: bool, is_validator: bool, now: float) -> Reason:
        """May this authenticated peer take a connection slot? Reason.OK, or why not.

        On OK the caller must call :meth:`connected` before admitting anyone else.
        """
        self._tick(now)
        cfg = self.config
        if self.is_banned(peer_id, ip, now):
            return Reason.BANNED
        if cfg.require_stake and not is_validator:
            return Reason.INSUFFICIENT_STAKE
        if peer_id in self._conns:
            return Reason.DUPLICATE
        if self.ip_count(ip) >= cfg.max_per_ip:
            return Reason.TOO_MANY_CONNECTIONS
        if inbound:
            total = sum(1 for c in self._conns.values() if c.inbound)
            validators = sum(1 for c in self._conns.values() if c.inbound and c.validator)
            if is_validator:
                ok = total < cfg.max_inbound + cfg.validator_slots
            else:
                # Validators fill the reserved slots first; only their overflow takes general slots.
                general = (total - validators) + max(0, validators - cfg.validator_slots)
                ok = general < cfg.max_inbound
        else:
            ok = self.outbound_count < cfg.max_outbound
        return Reason.OK if ok else Reason.TOO_MANY_CONNECTIONS

    def connected(self, peer_id: str, ip: str | None, inbound: bool, is_validator: bool) -> None:
        """Register an admitted connection (ValueError if the PeerID already holds one)."""
        if peer_id in self._conns:
            raise ValueError(f"peer {peer_id} is already connected")
        self._conns[peer_id] = _Conn(normalize_ip(ip), inbound, is_validator)
        key = ip_key(ip)
        if key is not None:
            self._per_ip[key] = self._per_ip.get(key, 0) + 1

    def disconnected(self, peer_id: str) -> None:
        """Free the peer's slot and its in-flight count (a no-op for a peer not connected)."""
        conn = self._conns.pop(peer_id, None)
        key = ip_key(conn.ip) if conn is not None else None
        if key is not None:
            left = self._per_ip.get(key, 1) - 1
            if left > 0:
                self._per_ip[key] = left
            else:
                self._per_ip.pop(key, None)

    def ip_count(self, ip: str | None) -> int:
        """Connections (both directions) registered from ``ip`` (from its /64 for IPv6: :func:`ip_key`)."""
        key = ip_key(ip)
        return 0 if key is None else self._per_ip.get(key, 0)

    def is_connected(self, peer_id: str) -> bool:
        return peer_id in self._conns

    @property
    def inbound_count(self) -> int:
        return sum(1 for c in self._conns.values() if c.inbound)

    @property
    def outbound_count(self) -> int:
        return sum(1 for c in self._conns.values() if not c.inbound)

    def can_dial(self, now: float, pending: int = 0) -> bool:
        """True while outbound connections plus ``pending`` dials are below max_outbound."""
        self._tick(now)
        return self.outbound_count + pending < self.config.max_outbound

    # -- in-flight requests ----------------------------------------------------------------------
    def request_started(self, peer_id: str) -> bool:
        """Count a request we send to the peer; False (do not send) at max_inflight_requests or if not connected."""
        conn = self._conns.get(peer_id)
        if conn is None or conn.inflight >= self.config.max_inflight_requests:
            return False
        conn.inflight += 1
        return True

    def request_finished(self, peer_id: str) -> None:
        """A request to the peer was answered, failed or timed out."""
        conn = self._conns.get(peer_id)
        if conn is not None and conn.inflight > 0:
            conn.inflight -= 1

    # -- introspection ---------------------------------------------------------------------------
    def peer_info(self, peer_id: str, now: float | None = None) -> PeerInfo:
        """Everything known about one peer (a never-seen peer reads as neutral and disconnected)."""
        if now is None:
            now = self._now
        score = self._current(peer_id, now).score
        until = self._ban_until(self._peer_bans, peer_id, now)
        conn = self._conns.get(peer_id)
        return PeerInfo(peer_id, score, until, conn is not None, conn.inbound if conn else None,
                        bool(conn and conn.validator), conn.ip if conn else None, conn.inflight if conn else 0)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready state for RPC and metrics: counts, limits and every connected peer."""
        if now is None:
            now = self._now
        bans = self.list_bans(now) if math.isfinite(now) else []
        cfg = self.config
        return {
            "inbound": self.inbound_count,
            "outbound": self.outbound_count,
            "validators": sum(1 for c in self._conns.values() if c.validator),
            "limits": {"max_inbound": cfg.max_inbound, "max_outbound": cfg.max_outbound,
                       "validator_slots": cfg.validator_slots, "max_per_ip": cfg.max_per_ip,
                       "rate_limit": cfg.rate_limit, "rate_limit_burst": cfg.rate_limit_burst,
                       "max_inflight_requests": cfg.max_inflight_requests,
                       "tx_gossip_rate": self.tx_rate, "tx_gossip_burst": self.tx_burst},
            "banned_peers": sum(1 for b in bans if b.kind == "peer"),
            "banned_ips": sum(1 for b in bans if b.kind == "ip"),
            "known_scores": len(self._scores),
            "peers": [self.peer_info(pid, now).to_json() for pid in sorted(self._conns)],
        }

