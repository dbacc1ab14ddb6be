"""P2PService: listens, dials, and carries consensus, transactions and blocks between peers (SPEC §5).

It adapts the sans-I/O parts to Twisted: the :class:`~timecoin.p2p.peers.PeerManager` (reputation,
bans, rate limits, slots), the :class:`~timecoin.p2p.discovery.PeerStore` (addresses, dial backoff) and
the gossip bookkeeping (:mod:`timecoin.p2p.gossip`). The consensus engine does not know about sockets:
``ConsensusService.broadcast`` is pointed at :meth:`P2PService.broadcast`, and messages from peers are
fed to ``ConsensusService.receive_proposal/receive_vote``.

Liveness needs more than one-shot flooding: a node that connects (or reconnects) in the middle of a
height must still see that height's proposal and votes. Every ``gossip_interval`` each peer known to
be at our height is offered the archived messages of the height it does not have yet (CometBFT's
gossip routines do the same), and a peer that announces a higher height is asked for the certified
blocks we lack (catch-up; the full StateSyncManager of SPEC §6 builds on this).
"""
from __future__ import annotations

import collections
from typing import Any, cast

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from timecoin import __version__, crypto
from timecoin.config import external_host_port
from timecoin.errors import DecodeError, InvalidSignature, Reason, ValidationError
from timecoin.ledger.block import Block, CommitCertificate, Evidence, Proposal, QuorumProof, Vote
from timecoin.ledger.tx import Transaction
from timecoin.p2p import discovery, peers
from timecoin.p2p.channel import SecureChannel, certificate_time, channel_for, random_for
from timecoin.p2p.gossip import HeightArchive, SeenCache, message_id
from timecoin.p2p.identity import HostIdentity
from timecoin.p2p.logonce import LogOnce
from timecoin.p2p.pending import PendingTable
from timecoin.p2p.protocol import PeerConnection, RequestFailed
from timecoin.wire import messages as m

AGENT = f"timecoin/{__version__}"
PROTOCOLS = ("/timecoin/consensus/1.0.0", "/timecoin/sync/1.0.0", "/timecoin/tx/1.0.0", "/timecoin/ping/1.0.0")
MAX_BLOCKS_PER_RESPONSE = 1000     # SPEC §6: a get_blocks range is answered with up to 1,000 blocks
# get_blocks answers are held to a byte budget per peer (a request is a few bytes, its answer up to a frame):
# each answer at most sync_response_bytes (config, SPEC §6), and all of a peer's answers a token bucket of bytes,
# RESPONSE_BYTES_BURST at once and RESPONSE_BYTES_PER_MINUTE after. Honest sync asks several peers for
# ranges in turn; 4 MiB/s from each (12 MiB/s from 3: ~800 blocks of 100 txs a second) is above what a
# node applies, and 16 such peers draw 64 MiB/s at most. Over budget: refused rate_limited.
RESPONSE_BYTES_BURST = 32 << 20
RESPONSE_BYTES_PER_MINUTE = 240 << 20
MAX_RESPONSE_BUDGETS = 4_096       # peers whose byte budget is tracked; a full (refilled) one is dropped first
MAX_PEERS_PER_RESPONSE = 100
DRAIN_BATCH = 256                  # frames handled per reactor turn (one per peer in turn)
LATENCY_ALPHA = 0.2                # EWMA weight of a new ping sample
DIAL_INTERVAL = 1.0
DIAL_TIMEOUT = 5.0
PING_MISSES_BEFORE_DROP = 4
ENVELOPE_HEADER = 5                # type (1) + request id (4): what a message id leaves out
MAX_PENDING_INBOUND = 64           # inbound connections not yet through TLS at once (pending.py)
MAX_PENDING_PER_IP = 8             # of those, from one address (an IPv6 /64 counts as one: peers.ip_key)
MAX_PENDING_PER_PREFIX = 16        # ... from one /24 (IPv4) or /64 (IPv6): peers.ip_prefix
RESERVED_PENDING = 16              # ... held only by addresses where validator peers are known to be
VALIDATOR_IPS_REFRESH = 10.0       # s between rebuilds of those addresses from the validator set and peer store
MAX_VALIDATOR_IPS = 1_024          # addresses validator peers were connected from, remembered (oldest forgotten)
MAX_FIRST_PROPOSALS = 1024         # proposals of the current height remembered for VALID_BLOCK credit
MAX_CAPPED = 10_000                # next-height messages refused for a per-sender cap, remembered per height
FETCH_RETRY = 0.5                  # s before a block wanted by hash is asked of the next peer
LAG_GRACE = 2.0                    # s a peer may stay one height ahead of us before we sync that height
FETCH_ATTEMPTS = 30                # asks per wanted block (while we are still at its height); sync covers the rest
NOTICE_RATE = 3_000                # per minute: new_block announcements + rejects without a request id, per peer
NOTICE_BURST = 500                 # ... at once (honest peers send about one announcement per block)
NEW_BLOCK_PAYLOAD = ENVELOPE_HEADER + 8 + 32   # a new_block envelope: type, request id, height, hash
NOTICE_TYPES = frozenset({int(m.MsgType.NEW_BLOCK), int(m.MsgType.REJECT)})   # unnumbered: notices
FLOOD_REFUSALS = 2                 # refusals per RACE_WINDOW, in units of max_inflight_requests, before REQUEST_FLOOD
# Penalized on a quorum proof: built by its sender from votes it verified, so a bad one is its own provable fault.
QUORUM_FAULTS = frozenset({Reason.BAD_SIGNATURE, Reason.NOT_VALIDATOR, Reason.BAD_CERTIFICATE})

RESPONSES = frozenset({m.MsgType.STATUS, m.MsgType.PEERS, m.MsgType.BLOCKS, m.MsgType.BLOCK_HASHES})
# get_* requests and pings share the request bucket. Transactions (in m.REQUESTS) have their own gossip
# budget instead (PeerManager.allow_tx), charged in _on_tx after the seen-cache: duplicates cost nothing.
RATE_LIMITED_TYPES = (m.REQUESTS - {m.MsgType.TX}) | {m.MsgType.PING}


def _blocks_payload(request_id: int, items: list[tuple[bytes, bytes]]) -> bytes:
    """The BLOCKS envelope of stored (canonical) block and certificate bytes, spliced without re-encoding:
    type, request id, a u16 count, then each CertifiedBlock (the block's encoding, then its certificate's).
    Byte for byte ``m.encode_message(BLOCKS, ...)`` of the decoded items (tests/unit/test_sync_serving.py)."""
    head = bytes((int(m.MsgType.BLOCKS),)) + request_id.to_bytes(4, "big") + len(items).to_bytes(2, "big")
    return head + b"".join(block + cert for block, cert in items)


class _ConnectionFactory(Factory):
    def __init__(self, p2p: P2PService, inbound: bool, dialed: str | None = None) -> None:
        self.p2p = p2p
        self.inbound = inbound
        self.dialed = dialed

    def buildProtocol(self, addr: Any) -> PeerConnection:  # noqa: N802 - Twisted API
        conn = PeerConnection(self.p2p, self.p2p.reactor, self.inbound, self.dialed)
        conn.factory = self
        return conn


class _GateFactory(Factory):
    """Inbound TCP, before TLS: refuse banned IPs and full addresses at accept time, count the rest as pending.

    Returning None from buildProtocol makes the listening port close the socket at once, so a refused
    connection costs no TLS handshake (no certificate check, no key exchange) and no bytes are sent. A
    connection over a pending cap is not refused: the oldest one it competes with is evicted
    (:meth:`P2PService.pending_started`).
    """

    def __init__(self, p2p: P2PService, tls: Any) -> None:
        self.p2p = p2p
        self.tls = tls

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted API
        ip = getattr(addr, "host", "")
        reason = self.p2p.pre_tls_refusal(ip)
        if reason != Reason.OK:
            self.p2p.log.debug("Refused {ip} before TLS: {why}", ip=ip, why=reason.name.lower())
            return None
        proto = self.tls.buildProtocol(addr)
        self.p2p.pending_started(proto.wrappedProtocol, ip)
        return proto


class P2PService(service.Service):
    name = "p2p"
    log = Logger()

    def __init__(self, node: Any, reactor: Any) -> None:
        self.node = node
        self.reactor = reactor
        self.config = node.config
        self.identity = HostIdentity(node.key, now=certificate_time(reactor))
        self.channel: SecureChannel = channel_for(reactor, self.identity)   # TLS, or the simulator's
        self.peer_id = node.key.peer_id
        self.peers: peers.PeerManager | None = None
        self.peerstore: discovery.PeerStore | None = None
        self.connections: dict[str, PeerConnection] = {}     # admitted (hello or ready), by PeerID
        self.seen = SeenCache()
        self._log_once = LogOnce()                           # repeated per-peer log lines: once per window
        self.relayed: collections.Counter[m.MsgType] = collections.Counter()     # frames flooded to peers, by type
        self.duplicates: collections.Counter[m.MsgType] = collections.Counter()  # seen-cache hits, by type
        self.accepted: collections.Counter[m.MsgType] = collections.Counter()    # new valid messages from peers
        self.charged: collections.Counter[str] = collections.Counter()  # reputation events charged, by name (metrics)
        self.bans = 0                                        # peers banned by this node since it started (metrics)
        self.traffic: collections.Counter[tuple[str, int]] = collections.Counter()  # (in|out, type) -> messages
        self.traffic_bytes: collections.Counter[tuple[str, int]] = collections.Counter()  # ... -> payload bytes
        self._first_proposal: dict[bytes, str] = {}          # block hash -> PeerID that delivered it first
        self._capped: dict[bytes, None] = {}                 # next-height messages refused for a cap (not seen)
        self._capped_height = -1                             # ... while the engine is at this height
        self._response_budgets: dict[str, tuple[float, float]] = {}   # PeerID -> (bytes left, when), get_blocks
        self._quorum_frames: dict[QuorumProof, tuple[bytes, bytes, bytes]] = {}   # proof -> (id, key id, frame)
        self._fetch: _Fetch | None = None                    # the block wanted by hash (fetch_block), if any
        self.archive = HeightArchive()
        self.listening_port: Any = None
        self.listen_addr = ""                                # the bound address (0.0.0.0 if bound there)
        self.advertised_addr = ""                            # what hello's listen_addrs says (advertised)
        self._ready: collections.deque[PeerConnection] = collections.deque()
        self._queued: set[int] = set()
        self._drain_call: Any = None
        self._dialing: set[str] = set()
        self.pending = PendingTable(MAX_PENDING_INBOUND, MAX_PENDING_PER_IP, MAX_PENDING_PER_PREFIX,
                                    RESERVED_PENDING)         # inbound connections not yet through TLS
        self._validator_ips: set[str] = set()                # ip_keys of validators in the peer store ...
        self._validator_ips_at = -float("inf")               # ... as of this time
        self._validator_seen: dict[str, None] = {}           # ip_keys validator peers connected from, oldest first
        self._loops: list[task.LoopingCall] = []
        self._draining = False                 # inside _drain: a frame queued now waits for its turn
        self._lag_check: Any = None            # the pending "still one height behind?" check (_maybe_catch_up)
        self._rng = random_for(reactor, "p2p")
        if node.consensus is not None:
            # Hooked before anything starts: a validator that proposes or votes while the services
            # start (the proposer of the first height does) must have those messages archived for
            # gossip, or its peers never see them and the height cannot finish.
            node.consensus.broadcast = self.broadcast
            node.consensus.fetch_block = self.fetch_block
            node.consensus.on_commit.append(self._on_commit)

    # -- lifecycle -------------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802 - Twisted API
        super().startService()
        cfg, node = self.config, self.node
        self.peers = peers.PeerManager(node.store, cfg)
        self.peerstore = discovery.PeerStore(node.store, rng=self._rng)
        now = self.reactor.seconds()
        for addr in cfg.bootstrap:
            try:
                self.peerstore.add(addr, "bootstrap", now)
            except ValueError as exc:
                self.log.warn("Ignoring bootstrap address {addr}: {why}", addr=addr, why=str(exc))
        # Plain TCP with TLS layered on per connection by _GateFactory, so limits apply before TLS.
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, cfg.p2p_port, interface=cfg.p2p_host)
        tls = self.channel.server_factory(_ConnectionFactory(self, inbound=True))
        d = endpoint.listen(_GateFactory(self, tls))
        d.addCallbacks(self._listening, self._listen_failed)
        for interval, fn in ((DIAL_INTERVAL, self._dial_due), (cfg.gossip_interval, self._gossip),
                             (cfg.ping_interval, self._ping_all)):
            loop = task.LoopingCall(fn)
            loop.clock = self.reactor
            loop.start(max(interval, 0.01), now=False).addErrback(self._loop_failed)
            self._loops.append(loop)

    def _listening(self, port: Any) -> None:
        self.listening_port = port
        host = port.getHost()
        self.listen_addr = discovery.format_multiaddr(host.host, host.port, self.peer_id)
        self.advertised_addr = self.advertised(host.host, host.port)
        self.log.info("P2P listening on {addr}, advertising {adv}", addr=self.listen_addr,
                      adv=self.advertised_addr or "no address (bound to an unspecified one)")

    def advertised(self, bound_host: str, bound_port: int) -> str:
        """The multiaddr our hello tells peers to dial: ``external_address`` (its port defaulting to the bound
        one) if set, else the bound address -- unless that is 0.0.0.0/:: (no one can dial it): then none."""
        if self.config.external_address:
            host, port = external_host_port(self.config.external_address)
            return discovery.format_multiaddr(host, port or bound_port, self.peer_id)
        if not discovery.dialable(bound_host):
            return ""
        return discovery.format_multiaddr(bound_host, bound_port, self.peer_id)

    def _listen_failed(self, failure: Failure) -> None:
        # The node still works without inbound peers (it dials out), so this is loud but not fatal.
        self.log.error("Cannot listen for peers on {host}:{port}: {why}; running without inbound connections",
                       host=self.config.p2p_host, port=self.config.p2p_port, why=failure.getErrorMessage())

    def _loop_failed(self, failure: Failure) -> None:
        self.log.failure("A P2P background loop failed", failure)

    def stopService(self) -> defer.Deferred[None] | None:  # noqa: N802 - Twisted API
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._end_fetch()
        if self._lag_check is not None and self._lag_check.active():
            self._lag_check.cancel()
        self._lag_check = None
        for conn in list(self.connections.values()):
            conn.close()
        if self.listening_port is not None:
            port, self.listening_port = self.listening_port, None
            return defer.maybeDeferred(port.stopListening)
        return None

    # -- admission -------------------------------------------------------------------------------
    # Before TLS (SPEC §5: "connections not yet through TLS get few slots per /24 and /64, a short timeout,
    # and oldest-first eviction, with room kept for validators"): the listener asks pre_tls_refusal, then
    # pending_started counts the connection in self.pending (timecoin.p2p.pending: the caps, eviction and
    # reservation rules) and evicts what it must; PeerConnection aborts it if TLS is not done within
    # protocol.PRE_TLS_TIMEOUT. The key is unknown until TLS ends, so the room kept for validators goes by
    # address: addresses validator peers have been connected from (remembered, MAX_VALIDATOR_IPS) and the
    # peer-store addresses of PeerIDs in the validator set (rebuilt every VALIDATOR_IPS_REFRESH s). An
    # attacker on such an address gains only what that address already had; a validator at a new address
    # still gets in by eviction (it takes the slot of the oldest of the most crowded prefix), and after TLS
    # PeerManager.admit keeps validator_slots for keys proved to be validators.
    def pre_tls_refusal(self, ip: str) -> Reason:
        """May an inbound TCP connection from ``ip`` start a TLS handshake? Reason.OK or why not.

        Banned IPs (never loopback: PeerManager.is_banned ignores IP bans there; an IPv6 ban covers the /64),
        an address (IPv6: its /64) whose admitted connections already reach max_per_ip, inbound slots full
        even counting the validator-reserved ones, and a pending table with nothing the newcomer may evict
        (only entries reserved for validators). A full table, prefix or address (its pending connections
        plus admitted ones at max_per_ip) is not a refusal: the oldest connection competing with the
        newcomer is evicted (pending_started).
        """
        if not self.running or self.peers is None:
            return Reason.SHUTTING_DOWN
        if self.peers.is_banned(None, ip, self.reactor.seconds()):
            return Reason.BANNED
        if self.peers.inbound_count >= self.config.max_inbound + self.config.validator_slots:
            return Reason.TOO_MANY_CONNECTIONS
        key, prefix, reserved, room = self._pending_slot(ip)
        ok, _ = self.pending.make_room(key, prefix, reserved, room)
        return Reason.OK if ok else Reason.TOO_MANY_CONNECTIONS

    def _pending_slot(self, ip: str) -> tuple[str, str, bool, int]:
        """(address key, prefix, reserved for validators?, slots max_per_ip leaves the address) of ``ip``."""
        key = peers.ip_key(ip) or ip
        prefix = peers.ip_prefix(ip) or key
        room = self.config.max_per_ip - (self.peers.ip_count(ip) if self.peers is not None else 0)
        return key, prefix, self.is_validator_ip(ip), room

    def pending_started(self, conn: PeerConnection, ip: str) -> None:
        """Count an accepted connection as pending; first evict (abort) the one :class:`PendingTable` names."""
        key, prefix, reserved, room = self._pending_slot(ip)
        _, evict = self.pending.make_room(key, prefix, reserved, room)
        if evict is not None:
            victim = cast(PeerConnection, evict)
            self.log.debug("Evicted a pending connection from {old} for one from {ip}", old=victim.pending_ip,
                           ip=ip)
            self.pending_done(victim)                        # now: aborting closes it on a later reactor turn
            victim.abort()
        self.pending.add(conn, key, prefix, reserved)
        conn.pending_ip = key

    def pending_done(self, conn: PeerConnection) -> None:
        """The connection authenticated (or closed, or was evicted): it no longer counts as pending."""
        conn.pending_ip = None
        self.pending.remove(conn)

    def is_validator_ip(self, ip: str | None) -> bool:
        """Is ``ip`` (its ip_key) an address where validator peers are known to be? (room kept for them)"""
        key = peers.ip_key(ip)
        if key is None:
            return False
        self.refresh_validator_ips()
        return key in self._validator_ips or key in self._validator_seen

    def refresh_validator_ips(self, force: bool = False) -> None:
        """Rebuild the peer-store addresses of the PeerIDs whose key is in the next height's validator set
        (only every VALIDATOR_IPS_REFRESH s unless ``force``: this runs on every accept)."""
        now = self.reactor.seconds()
        if not force and 0 <= now - self._validator_ips_at < VALIDATOR_IPS_REFRESH:
            return
        self._validator_ips_at = now
        store, book = self.node.store, self.peerstore
        vs = store.validator_set(store.tip_height() + 1) if store is not None else None
        ips: set[str] = set()
        for validator in vs.validators if vs is not None and book is not None else ():
            entry = book.get(crypto.peer_id_of(validator.pubkey)) if book is not None else None
            for addr in entry.addrs if entry is not None else ():
                key = peers.ip_key(discovery.parse_multiaddr(addr)[0])
                if key is not None:
                    ips.add(key)
        self._validator_ips = ips

    def _remember_validator_ip(self, ip: str) -> None:
        key = peers.ip_key(ip)
        if key is None:
            return
        self._validator_seen.pop(key, None)
        self._validator_seen[key] = None
        while len(self._validator_seen) > MAX_VALIDATOR_IPS:
            del self._validator_seen[next(iter(self._validator_seen))]

    def admit(self, conn: PeerConnection) -> Reason:
        """Called once the TLS identity is known. Reason.OK admits; anything else is sent and closes."""
        if not self.running or self.peers is None:
            return Reason.SHUTTING_DOWN
        now = self.reactor.seconds()
        if conn.peer_id == self.peer_id:
            return Reason.DUPLICATE                   # we dialed ourselves (our own address came back)
        if self.peers.is_banned(conn.peer_id, conn.ip, now):
            return Reason.BANNED
        conn.is_validator = self._is_validator(conn.address)
        old = self.connections.get(conn.peer_id)
        if old is not None:
            # Both sides dialed each other: keep the connection dialed by the smaller PeerID, on both ends.
            new_dialer = self.peer_id if not conn.inbound else conn.peer_id
            old_dialer = self.peer_id if not old.inbound else old.peer_id
            if new_dialer >= old_dialer:
                return Reason.DUPLICATE
            self._unregister(old)
            old.close()
        reason = self.peers.admit(conn.peer_id, conn.ip, conn.inbound, conn.is_validator, now)
        if reason != Reason.OK:
            return reason
        self.peers.connected(conn.peer_id, conn.ip, conn.inbound, conn.is_validator)
        self.connections[conn.peer_id] = conn
        if conn.is_validator:
            self._remember_validator_ip(conn.ip)            # room before TLS next time (pre_tls_refusal)
        return Reason.OK

    def _is_validator(self, address: bytes) -> bool:
        store = self.node.store
        if store is None:
            return False
        vs = store.validator_set(store.tip_height() + 1)
        return vs is not None and address in vs

    def _unregister(self, conn: PeerConnection) -> None:
        if self.connections.get(conn.peer_id) is conn:
            del self.connections[conn.peer_id]
            if self.peers is not None:
                self.peers.disconnected(conn.peer_id)

    def connection_lost(self, conn: PeerConnection, was: str) -> None:
        registered = self.connections.get(conn.peer_id) is conn
        self._unregister(conn)
        if conn.dialed and self.peerstore is not None and self.running:
            # ``was`` may be "closing" (we closed or aborted it): what matters is whether it ever got ready.
            now = self.reactor.seconds()
            if conn.ready_at is None:
                # Refused (banned, full, stake, identity), timed out or failed in TLS/hello: a failed dial.
                self.peerstore.dial_failed(conn.dialed, now)
            else:
                self.peerstore.connection_closed(conn.dialed, now, now - conn.ready_at)
        if registered and conn.hello is not None:
            self.log.info("Peer {peer} disconnected", peer=conn.peer_id)

    def hello_body(self) -> dict[str, Any]:
        store = self.node.store
        tip, tip_hash = store.tip_height(), store.tip_hash()
        return {"protocol_version": m.PROTOCOL_VERSION, "chain_id": self.node.genesis.chain_id,
                "genesis_hash": self.node.genesis.hash, "best_height": tip, "best_hash": tip_hash,
                "finalized_height": tip, "finalized_hash": tip_hash,
                "listen_addrs": [self.advertised_addr] if self.advertised_addr else [], "agent": AGENT,
                "protocols": list(PROTOCOLS)}

    # -- reputation ------------------------------------------------------------------------------
    def penalize(self, conn: PeerConnection, reason: Reason) -> None:
        event = peers.event_for_reason(reason)
        if event is not None:
            self.record(conn, event)

    def record(self, conn: PeerConnection, event: peers.Event) -> None:
        if not conn.peer_id or self.peers is None:
            return
        outcome = self.peers.record(conn.peer_id, event, self.reactor.seconds(), ip=conn.ip)
        if event not in peers.GOOD:
            self.charged[event.value] += 1
        if outcome.banned:
            self.bans += 1
            self.log.warn("Banned peer {peer} ({ip}): reputation {score} after {event}", peer=conn.peer_id,
                          ip=conn.ip, score=outcome.score, event=event.name)
            conn.reject(Reason.BANNED, "banned")
            conn.close()

    def count_traffic(self, direction: str, payload: bytes) -> None:
        """One whole message in or out (its type is the payload's first byte): the metrics' p2p counters."""
        key = (direction, payload[0] if payload else -1)
        self.traffic[key] += 1
        self.traffic_bytes[key] += len(payload)

    def credit(self, peer_id: str, event: peers.Event) -> None:
        """A good delivery (peers.GOOD), by PeerID: the peer may have disconnected since.

        peers.PeerManager caps what good deliveries earn per window, so calling this for every first copy
        of a valid message is safe: a busy relay earns the cap, not one point per message.
        """
        if self.peers is not None and peer_id and peer_id != self.peer_id:
            self.peers.record(peer_id, event, self.reactor.seconds())

    def charge_equivocator(self, ev: Evidence) -> None:
        """EQUIVOCATION goes to the equivocating validator's own PeerID, never to whoever relayed the votes.

        Honest nodes relay both halves of an equivocation (they are two different messages, each valid on
        its own), so the connection that delivered the second vote proves nothing about itself. What the
        evidence proves is that the validator's key signed both; a validator peer's host key *is* its
        validator key (``conn.is_validator`` compares the host key's address with the validator set), so
        the connection whose host key has that address -- or, if none is open, the PeerID of that key --
        is charged (and banned: -50). Our own key is never charged here.
        """
        if self.peers is None:
            return
        conns = [c for c in list(self.connections.values()) if c.address == ev.validator]
        if conns:
            for conn in conns:
                self.log.warn("Peer {peer} is validator {v}, which equivocated", peer=conn.peer_id,
                              v=ev.validator.hex())
                self.record(conn, peers.Event.EQUIVOCATION)
            return
        store = self.node.store
        vs = store.validator_set(ev.height) if store is not None else None
        v = vs.by_address.get(ev.validator) if vs is not None else None
        if v is None:
            return
        pid = crypto.peer_id_of(v.pubkey)
        if pid != self.peer_id:
            self.peers.record(pid, peers.Event.EQUIVOCATION, self.reactor.seconds())

    # -- input scheduling (one message per peer in turn) ----------------------------------------------
    def schedule(self, conn: PeerConnection) -> None:
        """``conn`` has frames queued: handle them in turn with every other peer's (a fair input queue).

        When nothing else is queued and we are not already handling, this peer's oldest frame is handled
        now, in its ``dataReceived``: a consensus message then costs no extra reactor turn per hop (issue 15:
        a turn each way was a third of a loopback round trip). One frame only: the rest wait for the next
        turn, after every other readable peer has been read, as before.
        """
        if id(conn) not in self._queued:
            self._queued.add(id(conn))
            self._ready.append(conn)
        if self._drain_call is None and not self._draining and len(self._ready) == 1:
            self._drain(budget=1)
        if self._ready and self._drain_call is None:
            self._drain_call = self.reactor.callLater(0, self._drain)

    def _drain(self, budget: int = DRAIN_BATCH) -> None:
        if budget == DRAIN_BATCH:
            self._drain_call = None
        self._draining = True
        try:
            for _ in range(budget):
                if not self._ready:
                    break
                conn = self._ready.popleft()
                try:
                    more = conn.process_one()
                except Exception:
                    self.log.failure("Handling a message from {peer} failed", peer=conn.peer_id)
                    more = bool(conn.inbox)
                if more:
                    self._ready.append(conn)
                else:
                    self._queued.discard(id(conn))
        finally:
            self._draining = False
        if self._ready and self._drain_call is None:
            self._drain_call = self.reactor.callLater(0, self._drain)

    # -- message handling ------------------------------------------------------------------------
    def handle(self, conn: PeerConnection, msg_type: m.MsgType, request_id: int, body: Any, payload: bytes) -> None:
        if conn.state == "hello":
            if msg_type == m.MsgType.HELLO:
                self._on_hello(conn, body)
            elif msg_type == m.MsgType.REJECT:
                self.log.info("Peer {peer} refused us: {why}", peer=conn.peer_id, why=body.message)
                conn.close()
            else:
                self.penalize(conn, Reason.MALFORMED)       # protocol violation: data before hello
                conn.abort()
            return
        if msg_type in RATE_LIMITED_TYPES and not self.peers.allow_request(conn.peer_id, self.reactor.seconds()):
            conn.reject(Reason.RATE_LIMITED, "rate limited", request_id)
            self._refused(conn)
            return
        if msg_type in RESPONSES or (msg_type == m.MsgType.REJECT and request_id):
            if not conn.answer(request_id, msg_type, body):
                self.record(conn, peers.Event.UNSOLICITED)
            return
        handler = self._HANDLERS.get(msg_type)
        if handler is None:                                 # a second HELLO
            self.record(conn, peers.Event.UNSOLICITED)
            return
        handler(self, conn, request_id, body, payload)

    def _refused(self, conn: PeerConnection) -> None:
        """Charge a request refused for the rate limit: RATE_LIMITED (race-prone: an honest peer configured
        for more than we allow is refused too, and backs off), or REQUEST_FLOOD once the peer has gone on
        past FLOOD_REFUSALS x max_inflight_requests refusals in one RACE_WINDOW on this connection (an
        honest client has at most its in-flight requests on the way when the first refusal reaches it).
        """
        now = self.reactor.seconds()
        if not 0 <= now - conn.refused_since < peers.RACE_WINDOW:
            conn.refused_since, conn.refused = now, 0
        conn.refused += 1
        flood = conn.refused > FLOOD_REFUSALS * self.config.max_inflight_requests
        self.record(conn, peers.Event.REQUEST_FLOOD if flood else peers.Event.RATE_LIMITED)

    def _on_hello(self, conn: PeerConnection, hello: Any) -> None:
        genesis = self.node.genesis
        if hello.protocol_version != m.PROTOCOL_VERSION:
            reason, why = Reason.PROTOCOL_VERSION, f"protocol version {hello.protocol_version}"
        elif hello.chain_id != genesis.chain_id:
            reason, why = Reason.WRONG_CHAIN, f"chain {hello.chain_id!r}"
        elif hello.genesis_hash != genesis.hash:
            reason, why = Reason.WRONG_GENESIS, f"genesis {hello.genesis_hash.hex()[:16]}"
        else:
            reason, why = Reason.OK, ""
        if reason != Reason.OK:
            self.log.info("Disconnecting {peer}: {why} is not ours", peer=conn.peer_id, why=why)
            conn.reject(reason, f"{why} is not ours ({genesis.chain_id} {genesis.hash.hex()[:16]})")
            self._unregister(conn)
            conn.close()                          # connection_lost counts the failed dial (never ready)
            return
        conn.hello = hello
        conn.height = hello.best_height
        conn.became_ready()
        now = self.reactor.seconds()
        if conn.dialed:
            self.peerstore.dial_succeeded(conn.dialed, now)
        self.peerstore.mark_seen(conn.peer_id, now)
        self._learn_identify(conn, now)
        self.log.info("Connected to {kind} peer {peer} ({dir} {ip}:{port}, height {h}, {agent})",
                      kind="validator" if conn.is_validator else "observer", peer=conn.peer_id,
                      dir="in" if conn.inbound else "out", ip=conn.ip, port=conn.port, h=hello.best_height,
                      agent=hello.agent)
        if not conn.inbound:
            conn.request(m.MsgType.GET_PEERS, {}).addCallbacks(lambda r: self._on_peers(conn, r), _ignore)
        self._offer(conn)
        self._maybe_catch_up()

    def _learn_identify(self, conn: PeerConnection, now: float) -> None:
        """Learn the peer's own listen addresses (its hello); from a stranger, only as a claim (issue 11).

        From a peer we dialed (its address works) or a validator (marked: evicted last) they count in full
        at once. From an inbound observer they are only *claimed* -- kept in memory, never written, the
        first evicted -- until its connection has lasted discovery.MIN_SESSION (checked every gossip
        round), so throwaway identities saying hello displace no one and write nothing.
        """
        if conn.identify == "learned" or conn.hello is None or conn.state != "ready" or self.peerstore is None:
            return
        claimed = conn.inbound and not conn.is_validator and now - (conn.ready_at or now) < discovery.MIN_SESSION
        if claimed and conn.identify == "claimed":
            return
        conn.identify = "claimed" if claimed else "learned"
        for addr in list(conn.hello.listen_addrs)[:8]:
            self._learn(addr, conn.peer_id, "identify", now, claimed)
        if conn.is_validator:
            self.peerstore.mark_validator(conn.peer_id)

    def _learn(self, addr: str, source: str, kind: str, now: float, claimed: bool = False) -> None:
        try:
            _, _, pid = discovery.parse_multiaddr(addr)
        except ValueError:
            return
        if pid is None or pid == self.peer_id or (kind == "identify" and pid != source):
            return
        self.peerstore.add(addr, kind, now, claimed=claimed)

    def _on_ping(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        conn.send(m.MsgType.PONG, {"nonce": body.nonce, "payload": body.payload}, rid)

    def _on_pong(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        sent = conn.ping_sent.pop(body.nonce, None)
        if sent is None:
            self.record(conn, peers.Event.UNSOLICITED)
            return
        rtt = max(self.reactor.seconds() - sent, 0.0)
        conn.latency = rtt if conn.latency is None else (1 - LATENCY_ALPHA) * conn.latency + LATENCY_ALPHA * rtt
        self.peerstore.set_latency(conn.peer_id, conn.latency)

    def _on_get_status(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        conn.send(m.MsgType.STATUS, self.status_body(), rid)

    def status_body(self) -> dict[str, Any]:
        store = self.node.store
        tip, tip_hash = store.tip_height(), store.tip_hash()
        return {"height": tip, "tip_hash": tip_hash, "finalized_height": tip, "finalized_hash": tip_hash,
                "genesis_hash": self.node.genesis.hash}

    def _on_get_peers(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        addrs = [a for a in self.peerstore.sample(MAX_PEERS_PER_RESPONSE, self._rng) if conn.peer_id not in a]
        conn.send(m.MsgType.PEERS, {"addrs": addrs[:MAX_PEERS_PER_RESPONSE]}, rid)

    def _on_peers(self, conn: PeerConnection, response: tuple[m.MsgType, Any]) -> None:
        now = self.reactor.seconds()
        addrs = [a for a in list(response[1].addrs)[:MAX_PEERS_PER_RESPONSE]]
        for addr in addrs:
            self._learn(addr, conn.peer_id, "exchange", now)

    def _on_get_blocks(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        """A range (SPEC §6): as many consecutive blocks from ``start`` as fit ``sync_response_bytes``, the
        frame and the peer's byte budget, at most ``count`` and MAX_BLOCKS_PER_RESPONSE (at least one).

        The request itself was metered by the request limit (one range, one request). A peer whose byte
        budget is spent is refused rate_limited, uncharged: it cannot know our blocks' sizes.
        """
        now = self.reactor.seconds()
        allowance = self._response_allowance(conn.peer_id, now)
        if allowance <= 0:
            conn.reject(Reason.RATE_LIMITED, "get_blocks byte budget spent, ask again later", rid)
            return
        count = min(body.count, MAX_BLOCKS_PER_RESPONSE)
        budget = min(self.config.max_frame_bytes - 1024, self.config.sync_response_bytes, allowance)
        items = self.node.store.get_raw_blocks(body.start, count, budget, overhead=8)
        sent = sum(len(block) + len(cert) + 8 for block, cert in items)
        self._response_budgets[conn.peer_id] = (allowance - sent, now)
        conn.send_payload(_blocks_payload(rid, items))

    def _response_allowance(self, peer_id: str, now: float) -> float:
        """Bytes of get_blocks answers ``peer_id`` may draw now (refilled; negative: an overdraft still owed)."""
        left, when = self._response_budgets.get(peer_id, (float(RESPONSE_BYTES_BURST), now))
        left = min(float(RESPONSE_BYTES_BURST), left + max(now - when, 0.0) * RESPONSE_BYTES_PER_MINUTE / 60.0)
        if peer_id not in self._response_budgets and len(self._response_budgets) >= MAX_RESPONSE_BUDGETS:
            self._forget_full_budgets(now)
        return left

    def _forget_full_budgets(self, now: float) -> None:
        """Make room in the budget table: drop the budgets refilled to the full burst (forgetting them changes
        nothing), else the oldest one (that peer's next answer starts from a full burst)."""
        refill = RESPONSE_BYTES_PER_MINUTE / 60.0
        full = [p for p, (left, when) in self._response_budgets.items()
                if left + max(now - when, 0.0) * refill >= RESPONSE_BYTES_BURST]
        for p in full or [next(iter(self._response_budgets))]:
            del self._response_budgets[p]

    def _on_get_block_hashes(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        hashes = self.node.store.block_hashes(body.start, min(body.count, 10_000))
        conn.send(m.MsgType.BLOCK_HASHES, {"start": body.start, "hashes": hashes}, rid)

    def _on_tx(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        mid = message_id(m.MsgType.TX, payload[ENVELOPE_HEADER:])
        if mid in self.seen:                        # a copy of what gossip already brought: free
            self.duplicates[m.MsgType.TX] += 1
            return
        if not self.peers.allow_tx(conn.peer_id, self.reactor.seconds()):
            # Over the peer's tx gossip budget: dropped, not relayed, not marked seen (another peer may
            # bring it later). A busy honest relay can get here too, so the charge is race-prone: small,
            # at most once per window.
            self.record(conn, peers.Event.TX_OVER_BUDGET)
            if rid:
                conn.reject(Reason.RATE_LIMITED, "tx gossip budget exceeded", rid)
            return
        try:
            tx = Transaction.from_wire(body)
            self.node.mempool.add(tx)
        except (DecodeError, InvalidSignature, ValidationError) as exc:
            reason = getattr(exc, "reason", Reason.MALFORMED)
            self.seen.add(mid)
            if reason not in (Reason.DUPLICATE, Reason.BAD_NONCE, Reason.MEMPOOL_FULL):
                self.penalize(conn, reason)
            if rid:
                conn.reject(reason, str(exc), rid)
            return
        self.seen.add(mid)
        self.accepted[m.MsgType.TX] += 1
        self.credit(conn.peer_id, peers.Event.VALID_TX)        # the first copy of a new valid tx
        self._relay(m.MsgType.TX, mid, payload, exclude=conn)

    def _on_consensus(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        msg_type = m.MsgType.PROPOSAL if "proposer" in body else m.MsgType.VOTE
        mid = message_id(msg_type, payload[ENVELOPE_HEADER:])
        if mid in self.seen:
            if mid in self.archive:
                conn.sent_ids.add(mid)                # it has it: not offered back (only accepted ids are kept)
            self.duplicates[msg_type] += 1
            return
        consensus = self.node.consensus
        if mid in self._capped and self._capped_height == consensus.engine.height:
            self.duplicates[msg_type] += 1           # refused for a cap at this height: the answer is the same
            return
        try:
            msg = Proposal.from_wire(body) if msg_type == m.MsgType.PROPOSAL else Vote.from_wire(body)
        except (DecodeError, ValueError):
            self.penalize(conn, Reason.MALFORMED)
            return
        height = msg.height
        engine_height = consensus.engine.height
        if height < engine_height or height > engine_height + 1:
            # Late (a height we have decided) or far ahead (we are behind: catch-up will bring the
            # blocks). Honest peers send both routinely; neither is worth reputation or processing.
            if height > engine_height + 1:
                conn.height = max(conn.height, height - 1)
            return
        try:
            if msg_type == m.MsgType.PROPOSAL:
                consensus.receive_proposal(msg)
            else:
                consensus.receive_vote(msg)
        except ValidationError as exc:
            if exc.reason == Reason.DUPLICATE and height == engine_height + 1:
                # Over one of the engine's per-sender caps for the next height (a plain copy of a buffered
                # message was stopped at the seen-cache above). The message may be valid and needed once that
                # height starts, so it must not enter the seen-cache (every relay of it would be dropped for
                # good); it is remembered until our height changes, which is when the answer can change.
                self._remember_capped(mid, engine_height)
                return
            self.seen.add(mid)
            if exc.reason not in (Reason.DUPLICATE, Reason.WRONG_HEIGHT):
                self.log.info("Refused {kind} from {peer}: {why}", kind=msg_type.name.lower(), peer=conn.peer_id,
                              why=str(exc))
                self.penalize(conn, exc.reason)
            return
        self.seen.add(mid)
        conn.sent_ids.add(mid)
        self.accepted[msg_type] += 1
        # The first copy of a new valid vote or proposal (copies stopped at the seen-cache above).
        self.credit(conn.peer_id, peers.Event.VALID_CONSENSUS_MESSAGE)
        if msg_type == m.MsgType.PROPOSAL and len(self._first_proposal) < MAX_FIRST_PROPOSALS:
            self._first_proposal.setdefault(msg.block.hash, conn.peer_id)
        self._archive(height, mid, msg_type, payload)
        self._relay(msg_type, mid, payload, exclude=conn)

    def consensus_window(self) -> tuple[int, int, frozenset[bytes]] | None:
        """Heights [h, h + 1] whose consensus messages the engine may use now, and the addresses that may
        sign them (the validators of either height); None before the engine exists."""
        consensus = self.node.consensus
        engine = consensus.engine if consensus is not None else None
        return None if engine is None else (engine.height, engine.height + 1, engine.signers())

    def precheck_duplicate(self, conn: PeerConnection, payload: bytes) -> bool:
        """A vote we already hold, dropped before its body is decoded: True if dropped.

        Flooding brings each new vote once from every peer that relays it, so most consensus frames a
        well-connected node reads are copies. The message id is the hash of the body's bytes, which a copy
        shares; checking the seen-cache first costs hashing ~200 bytes instead of a decode (what
        ``_on_consensus`` does with a copy is unchanged: counted, and not offered back to a peer that has
        it). Votes and txs (a tx is relayed by every peer too: under load most tx frames are copies, and
        ``_on_tx`` treats a copy exactly so, before its budget check); not proposals: one can be megabytes,
        and is hashed once, in ``_on_consensus``; this runs after :meth:`precheck_consensus`, whose
        fixed-offset reads are cheaper still.
        """
        if not payload or payload[0] not in _PRECHECKED:
            return False
        msg_type = m.MsgType(payload[0])
        mid = message_id(msg_type, payload[ENVELOPE_HEADER:])
        if mid not in self.seen:
            return False
        if mid in self.archive:
            conn.sent_ids.add(mid)
        self.duplicates[msg_type] += 1
        return True

    def precheck_consensus(self, conn: PeerConnection, payload: bytes) -> bool:
        """A consensus frame judged by its height, round and signer before its body is decoded: True if dropped.

        Read at fixed offsets (``m.peek_consensus``), so a frame the engine could never accept costs about
        what reading its header does, whatever its size. A height outside [h, h+1] ([h] for a quorum proof)
        is dropped uncharged (honest peers send both when one side lags), a far-ahead one remembered as
        the peer's height; a round too far ahead or a signer that cannot sign it costs what the engine's
        refusal would (race-prone; a quorum proof's refusals blame no one, as in :meth:`_on_quorum`).
        Anything else (or a frame too short to read) is decoded and handled as usual.
        """
        fields = m.peek_consensus(payload)
        consensus = self.node.consensus
        if fields is None or consensus is None or consensus.engine is None:
            return False
        engine = consensus.engine
        kind = _PEEKED_KINDS[fields.msg_type]
        reason = engine.precheck(kind, fields.height, fields.round, fields.signer)
        if reason is None:
            return False
        if reason == Reason.WRONG_HEIGHT:
            if kind is not QuorumProof and fields.height > engine.height + 1:
                conn.height = max(conn.height, fields.height - 1)
        elif kind is not QuorumProof:
            self.penalize(conn, reason)
        return True

    def _on_quorum(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        """A peer's proof of > 2/3 of a round's votes for one value (SPEC §4 vote propagation).

        Judged by the engine (every signature and the power), at most once per (round, type, value) per peer
        and height: ``conn.sent_ids`` holds the proof's key id once the peer sent us one or we sent it ours,
        so a second proof of the same quorum from that peer is dropped unjudged. Never relayed: a node that
        accepts it holds the quorum and sends its own proof to its peers (:meth:`_send_quorums`).
        """
        mid = message_id(m.MsgType.VOTE_QUORUM, payload[ENVELOPE_HEADER:])
        if mid in self.seen:
            self.duplicates[m.MsgType.VOTE_QUORUM] += 1
            return
        try:
            proof = QuorumProof.from_wire(body)
        except (DecodeError, ValueError):
            self.penalize(conn, Reason.MALFORMED)
            return
        consensus = self.node.consensus
        key = _quorum_key(proof)
        if proof.height != consensus.engine.height or key in conn.sent_ids:
            # Another height (late, or ahead of us: nothing to count it in yet), or a quorum this peer
            # already proved to us (or we to it): no judging, no blame.
            return
        conn.sent_ids.add(key)
        try:
            consensus.receive_quorum(proof)
        except ValidationError as exc:
            self.seen.add(mid)
            if exc.reason in QUORUM_FAULTS:
                self.log.info("Refused a vote quorum from {peer}: {why}", peer=conn.peer_id, why=str(exc))
                self.penalize(conn, exc.reason)
            return                      # DUPLICATE, WRONG_HEIGHT, WRONG_ROUND...: races, no blame
        self.seen.add(mid)
        conn.sent_ids.add(mid)
        self.accepted[m.MsgType.VOTE_QUORUM] += 1
        self.credit(conn.peer_id, peers.Event.VALID_CONSENSUS_MESSAGE)

    def _remember_capped(self, mid: bytes, engine_height: int) -> None:
        if self._capped_height != engine_height:
            self._capped, self._capped_height = {}, engine_height
        if len(self._capped) >= MAX_CAPPED:
            del self._capped[next(iter(self._capped))]       # the oldest: at worst it is judged again (cheaply)
        self._capped[mid] = None

    def _on_evidence(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        mid = message_id(m.MsgType.EVIDENCE, payload[ENVELOPE_HEADER:])
        if mid in self.seen:
            self.duplicates[m.MsgType.EVIDENCE] += 1
            return
        try:
            ev = Evidence.from_wire(body)
            vs = self.node.store.validator_set(ev.height)
            if vs is None:
                return                            # too old or too new for us to judge: drop, no blame, not seen
            self.seen.add(mid)                    # judged from here on: copies are free
            ev.verify(vs, self.node.genesis.chain_id)
        except (DecodeError, ValueError):
            self.penalize(conn, Reason.MALFORMED)
            return
        except (InvalidSignature, ValidationError) as exc:
            self.penalize(conn, getattr(exc, "reason", Reason.BAD_EVIDENCE))
            return
        self.accepted[m.MsgType.EVIDENCE] += 1
        conn.sent_ids.add(mid)                    # verified: not broadcast back to it
        # Queues it for a block and, if new, broadcasts it on (broadcast() charges the equivocator).
        self.node.consensus.record_evidence(ev)

    def _on_new_block(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        """A block announcement: flooded with the seen-cache, relayed only once we hold that very block.

        An announcement means "the sender holds this block" (sync picks peers by it), so we relay one only
        when it is true of us too and news to our peers: our tip, with our hash. One above our tip is not
        relayed (catch-up brings the block and our own commit announces it, same bytes, same id); one that
        conflicts with our block is not relayed either, and tells sync a fork may exist.

        Metered by validity and by rate (issue 11): a copy of one in the seen-cache is free; otherwise an
        announcement is valid once per peer and height above the highest it announced before -- a stale or
        repeated one is dropped -- and every one takes a token of the peer's notice budget; both checks run
        before the body is decoded (:meth:`precheck_notice`). Only an announcement we relay enters the
        seen-cache, so made-up hashes cannot flush it; a fork warning is logged once per peer per window.
        """
        mid = message_id(m.MsgType.NEW_BLOCK, payload[ENVELOPE_HEADER:])
        if mid in self.seen:                         # we made or relayed it: true, and free
            self.duplicates[m.MsgType.NEW_BLOCK] += 1
            self._announced(conn, body.height)
            return
        if body.height <= conn.announced:
            return                                   # stale/repeated (its budget token: precheck_notice)
        self._announced(conn, body.height)
        store = self.node.store
        tip = store.tip_height()
        if body.height > tip:
            self._maybe_catch_up()
            return
        ours = store.block_hash_at(body.height)
        if ours is None:
            return
        if ours == body.hash:
            if body.height == tip and self.seen.add(mid):
                self._relay(m.MsgType.NEW_BLOCK, mid, payload, exclude=conn)
            return
        quiet = self._log_once.allow((conn.peer_id, "fork"), self.reactor.seconds())
        if quiet is not None:
            self.log.warn("Peer {peer} announces block {h} {theirs}, ours is {ours}: a fork "
                          "({quiet} more such announcements from it since the last line)",
                          peer=conn.peer_id, h=body.height, theirs=body.hash.hex(), ours=ours.hex(), quiet=quiet)
        fork_suspected = getattr(getattr(self.node, "sync", None), "fork_suspected", None)
        if callable(fork_suspected):
            fork_suspected(conn.peer_id, body.height, body.hash)

    def _announced(self, conn: PeerConnection, height: int) -> None:
        """The peer holds block ``height``: the first announcement of a new height moves it (and its gossip) on."""
        conn.announced = max(conn.announced, height)
        if height > conn.height:
            conn.height = height
            conn.sent_ids.clear()

    def precheck_notice(self, conn: PeerConnection, payload: bytes) -> bool:
        """Meter a notice (new_block, reject without a request id) before its body is decoded: True if dropped.

        An announcement is read at its fixed offsets. A copy of one we made or relayed (in the seen-cache) is
        free; any other notice takes a token of the peer's notice budget (:meth:`_notice_allowed`; over it,
        RATE_LIMITED, race-prone). One for a height at or below what the peer announced before is stale and
        dropped here; so is any notice over the budget. So a flood costs about a hash each, never a decode.
        """
        kind = payload[0] if payload else -1
        if kind == m.MsgType.REJECT:
            return payload[1:ENVELOPE_HEADER] == b"\0\0\0\0" and not self._notice_allowed(conn)
        if kind != m.MsgType.NEW_BLOCK or len(payload) != NEW_BLOCK_PAYLOAD:
            return False                              # not a notice, or malformed: the decoder says why
        height = int.from_bytes(payload[ENVELOPE_HEADER:ENVELOPE_HEADER + 8], "big")
        ours = message_id(m.MsgType.NEW_BLOCK, payload[ENVELOPE_HEADER:]) in self.seen
        if height <= conn.announced:                  # stale or repeated: nothing new, dropped here
            if ours:
                self.duplicates[m.MsgType.NEW_BLOCK] += 1     # a copy of ours coming back: free
            else:
                self._notice_allowed(conn)            # made up or stale: it costs a token (charged over budget)
            return True
        return False if ours else not self._notice_allowed(conn)

    def muted_notices(self, conn: PeerConnection) -> frozenset[int] | None:
        """The notice types to drop while framing ``conn``'s input: all of them while its notice budget is
        spent (a flood then costs what cutting its frames does), none otherwise."""
        wait, _ = peers.gcra(conn.notice_tat, self.reactor.seconds(), NOTICE_RATE, NOTICE_BURST)
        return NOTICE_TYPES if wait > peers.RATE_SLACK else None

    def notices_muted(self, conn: PeerConnection) -> None:
        """Notices of ``conn`` were dropped while framing (budget spent): RATE_LIMITED, race-prone."""
        self.record(conn, peers.Event.RATE_LIMITED)

    def _notice_allowed(self, conn: PeerConnection) -> bool:
        """Take a token of the peer's notice budget (announcements, rejects without a request id).

        Honest peers send about one announcement per block, far inside NOTICE_RATE; over it the notice is
        dropped and RATE_LIMITED charged (race-prone: at most once per window).
        """
        wait, taken = peers.gcra(conn.notice_tat, self.reactor.seconds(), NOTICE_RATE, NOTICE_BURST)
        if wait > peers.RATE_SLACK:
            self.record(conn, peers.Event.RATE_LIMITED)
            return False
        conn.notice_tat = taken
        return True

    def _on_reject(self, conn: PeerConnection, rid: int, body: Any, payload: bytes) -> None:
        """A reject without a request id: metered by the notice budget (:meth:`precheck_notice`, before it is
        decoded); its log line once per peer per window."""
        if body.reason == Reason.BANNED:
            self.log.info("Peer {peer} has banned us", peer=conn.peer_id)
            conn.close()
            return
        if body.reason == Reason.RATE_LIMITED:
            # Our ping (the one unnumbered message the peer limits) was refused: it allows less than we
            # assumed. Pace slower, and do not count that ping as unanswered (it never will be).
            conn.back_off()
            if conn.ping_sent:
                del conn.ping_sent[min(conn.ping_sent, key=conn.ping_sent.__getitem__)]
        quiet = self._log_once.allow((conn.peer_id, "reject"), self.reactor.seconds())
        if quiet is not None:
            self.log.info("Peer {peer} rejected a message: {reason} {why} ({quiet} more rejects from it since "
                          "the last line)", peer=conn.peer_id, reason=_reason_name(body.reason),
                          why=body.message, quiet=quiet)

    _HANDLERS: dict[m.MsgType, Any] = {
        m.MsgType.PING: _on_ping,
        m.MsgType.PONG: _on_pong,
        m.MsgType.GET_STATUS: _on_get_status,
        m.MsgType.GET_PEERS: _on_get_peers,
        m.MsgType.GET_BLOCKS: _on_get_blocks,
        m.MsgType.GET_BLOCK_HASHES: _on_get_block_hashes,
        m.MsgType.TX: _on_tx,
        m.MsgType.PROPOSAL: _on_consensus,
        m.MsgType.VOTE: _on_consensus,
        m.MsgType.VOTE_QUORUM: _on_quorum,
        m.MsgType.EVIDENCE: _on_evidence,
        m.MsgType.NEW_BLOCK: _on_new_block,
        m.MsgType.REJECT: _on_reject,
    }

    # -- output: broadcast and gossip ----------------------------------------------------------------
    def broadcast(self, msg: Proposal | Vote | Evidence | Transaction) -> None:
        """Send our own (or locally accepted) message to every peer; what consensus and RPC call."""
        if isinstance(msg, Proposal):
            msg_type = m.MsgType.PROPOSAL
        elif isinstance(msg, Vote):
            msg_type = m.MsgType.VOTE
        elif isinstance(msg, Evidence):
            msg_type = m.MsgType.EVIDENCE
        else:
            msg_type = m.MsgType.TX
        # The envelope's body is the message's own encoding (BODIES maps these types to their layouts), which
        # the message holds already (it was signed or hashed over it): no second encode (issue 15: re-encoding
        # each broadcast vote, proposal and tx was ~5% of a node's CPU).
        payload = bytes((msg_type,)) + bytes(4) + msg.encoded
        mid = message_id(msg_type, msg.encoded)
        self.seen.add(mid)
        if isinstance(msg, Evidence):
            self.charge_equivocator(msg)       # consensus found (or accepted) new evidence: blame its signer
        if msg_type in (m.MsgType.PROPOSAL, m.MsgType.VOTE):
            self._archive(msg.height, mid, msg_type, payload)
        self._relay(msg_type, mid, payload, exclude=None)

    def _archive(self, height: int, mid: bytes, msg_type: m.MsgType, payload: bytes) -> None:
        """Archive a consensus message for gossip, the archive following the height consensus is deciding.

        A message of the next height (any validator may be one step ahead) is kept apart and never
        replaces the current height's messages: those are offered until we decide the height (hole 6).
        """
        engine_height = self.node.consensus.engine.height
        if self.archive.height != engine_height:
            self.archive.reset(engine_height)
        self.archive.add(height, mid, msg_type, payload)

    def _relay(self, msg_type: m.MsgType, mid: bytes, payload: bytes, exclude: PeerConnection | None) -> None:
        conns = [c for c in self.connections.values() if c.state == "ready" and c is not exclude]
        # Validator peers first: their consensus messages matter most for liveness (SPEC §5).
        conns.sort(key=lambda c: not c.is_validator)
        if msg_type == m.MsgType.NEW_BLOCK:
            # Announcements are not per-height consensus traffic: conn.sent_ids is cleared as heights
            # change, so the seen-cache alone (checked by the caller) makes this once per announcement.
            for conn in conns:
                conn.send_payload(payload)
            self.relayed[msg_type] += len(conns)
            return
        for conn in conns:
            if mid not in conn.sent_ids:
                conn.sent_ids.add(mid)
                self.relayed[msg_type] += 1
                if msg_type == m.MsgType.TX:
                    conn.send_tx(payload)             # paced inside the peer's tx gossip budget
                else:
                    conn.send_payload(payload)

    def _offer(self, conn: PeerConnection) -> None:
        """Send ``conn`` the current height's messages it lacks, if it is at our height."""
        if conn.state != "ready" or conn.height + 1 != self.archive.height:
            return
        for mid, _, payload in self.archive.missing(conn.sent_ids):
            conn.sent_ids.add(mid)
            conn.send_payload(payload)

    def _gossip(self) -> None:
        frames = self._quorum_proofs()
        now = self.reactor.seconds()
        for conn in list(self.connections.values()):
            self._offer(conn)
            self._send_quorums(conn, frames)
            self._learn_identify(conn, now)

    def _quorum_proofs(self) -> list[tuple[bytes, bytes, bytes]]:
        """(id, key id, frame) of each > 2/3 quorum the engine holds at its height (encoded once per proof)."""
        consensus = self.node.consensus
        if consensus is None or consensus.engine is None:
            return []
        proofs = consensus.engine.quorums()
        if any(q not in self._quorum_frames for q in proofs):
            known = {q: f for q, f in self._quorum_frames.items() if q in proofs}
            for q in proofs:
                if q not in known:
                    payload = m.encode_message(m.MsgType.VOTE_QUORUM, q.to_wire())
                    mid = message_id(m.MsgType.VOTE_QUORUM, payload[ENVELOPE_HEADER:])
                    self.seen.add(mid)               # our own: a copy sent back is dropped for free
                    known[q] = (mid, _quorum_key(q), payload)
            self._quorum_frames = known
        return [self._quorum_frames[q] for q in proofs]

    def _send_quorums(self, conn: PeerConnection, frames: list[tuple[bytes, bytes, bytes]]) -> None:
        """Send a peer at our height each quorum proof of ours it lacks: one per (round, type, value)."""
        if conn.state != "ready" or conn.height + 1 != self.node.consensus.engine.height:
            return
        for mid, key, payload in frames:
            if mid not in conn.sent_ids and key not in conn.sent_ids:
                conn.sent_ids.add(mid)
                conn.sent_ids.add(key)
                conn.send_payload(payload)
                self.relayed[m.MsgType.VOTE_QUORUM] += 1

    def _on_commit(self, block: Block) -> None:
        if self._fetch is not None and self._fetch.height <= block.height:
            self._end_fetch()
        first = self._first_proposal.get(block.hash)
        self._first_proposal.clear()
        if first is not None:
            self.credit(first, peers.Event.VALID_BLOCK)      # it brought us the proposal of a certified block
        self.archive.reset(block.height + 1)
        payload = m.encode_message(m.MsgType.NEW_BLOCK, {"height": block.height, "hash": block.hash})
        mid = message_id(m.MsgType.NEW_BLOCK, payload[ENVELOPE_HEADER:])
        if not self.seen.add(mid):
            return                                   # already relayed (a peer announced it first)
        for conn in list(self.connections.values()):
            if conn.state == "ready":
                if conn.height < block.height:
                    conn.sent_ids.clear()
                conn.send_payload(payload)
                self.relayed[m.MsgType.NEW_BLOCK] += 1

    # -- a block wanted by hash ---------------------------------------------------------------------
    def fetch_block(self, height: int, block_hash: bytes, voters: tuple[bytes, ...]) -> None:
        """Consensus holds > 2/3 precommits for a block it never received: get it from a peer that has it.

        Voters (a validator peer's host key is its validator key, so ``conn.address`` names it) are asked
        first, with ``get_blocks(height, 1)``; then any ready peer at or above that height. An answer with
        that very block goes to ``apply_certified_block`` (which checks its certificate) and ends the fetch.
        A short answer or another block is no fault (a voter may simply not have committed yet): the next
        peer is asked after FETCH_RETRY, round-robin, at most FETCH_ATTEMPTS times while we are still at
        that height. The SyncCoordinator remains the fallback.
        """
        if self._fetch is not None and (self._fetch.height, self._fetch.block_hash) == (height, block_hash):
            self._fetch.voters = frozenset(voters) | self._fetch.voters
            return
        self._end_fetch()
        self._fetch = _Fetch(height, block_hash, frozenset(voters))
        self.log.info("Fetching block {h} {hash} from its voters", h=height, hash=block_hash.hex())
        self._fetch_next()

    def _end_fetch(self) -> None:
        fetch, self._fetch = self._fetch, None
        if fetch is not None and fetch.timer is not None and fetch.timer.active():
            fetch.timer.cancel()

    def _fetch_next(self) -> None:
        fetch = self._fetch
        if fetch is None:
            return
        fetch.timer = None
        if (not self.running or self.node.store.tip_height() + 1 != fetch.height
                or fetch.attempts >= FETCH_ATTEMPTS):
            if fetch.attempts >= FETCH_ATTEMPTS:
                self.log.info("Gave up fetching block {h} by hash; sync will bring it", h=fetch.height)
            self._end_fetch()
            return
        ready = [c for c in self.connections.values() if c.state == "ready"]
        voters = [c for c in ready if c.address in fetch.voters]
        candidates = voters + [c for c in ready if c not in voters and c.height >= fetch.height]
        untried = [c for c in candidates if c.peer_id not in fetch.asked]
        if not untried and candidates:
            fetch.asked.clear()                 # everyone was asked once: they may have committed since
            untried = candidates
        if untried:
            conn = untried[0]
            fetch.asked.add(conn.peer_id)
            fetch.attempts += 1
            d = conn.request(m.MsgType.GET_BLOCKS, {"start": fetch.height, "count": 1})
            d.addCallbacks(lambda r: self._fetched(fetch, conn, r), _ignore)
        fetch.timer = self.reactor.callLater(FETCH_RETRY, self._fetch_next)

    def _fetched(self, fetch: _Fetch, conn: PeerConnection, response: tuple[m.MsgType, Any]) -> None:
        if self._fetch is not fetch:
            return                              # done already (another peer answered, or we moved on)
        for item in list(response[1].blocks)[:1]:
            try:
                block = Block.from_wire(item.block)
                cert = CommitCertificate.from_wire(item.certificate)
            except (DecodeError, ValueError):
                self.penalize(conn, Reason.MALFORMED)
                return
            if block.height != fetch.height or block.hash != fetch.block_hash:
                return                          # not the block we want (it is sync's business if it conflicts)
            try:
                self.node.consensus.apply_certified_block(block, cert)
            except ValidationError as exc:
                if exc.reason in (Reason.BAD_CERTIFICATE, Reason.BAD_BLOCK):
                    self.penalize(conn, exc.reason)
                return
            self.log.info("Committed block {h} fetched by hash from {peer}", h=block.height, peer=conn.peer_id)
            self.credit(conn.peer_id, peers.Event.USEFUL_RESPONSE)
            self._end_fetch()

    # -- catch-up ----------------------------------------------------------------------------------
    def _maybe_catch_up(self) -> None:
        """A peer is ahead of us by more than the height consensus is finishing: let sync run now.

        One height ahead is normal while a commit propagates (gossip finishes it); further ahead means
        we missed blocks. The SyncCoordinator's own loop covers the rest.
        """
        sync = getattr(self.node, "sync", None)
        if sync is None or not self.running or self.node.store is None:
            return
        tip = self.node.store.tip_height()
        ahead = [c.height for c in self.connections.values() if c.state == "ready" and c.height > tip]
        if any(h > tip + 1 for h in ahead):
            sync.trigger()
        elif ahead and (self._lag_check is None or not self._lag_check.active()):
            # One ahead for longer than a commit takes to propagate: the peers have moved on and will not
            # gossip that height's votes again (a network restarted mid-commit halts here otherwise).
            self._lag_check = self.reactor.callLater(LAG_GRACE, self._still_behind, tip)

    def _still_behind(self, tip: int) -> None:
        self._lag_check = None
        store, sync = self.node.store, getattr(self.node, "sync", None)
        if not self.running or store is None or sync is None or store.tip_height() != tip:
            return
        if any(c.state == "ready" and c.height > tip for c in self.connections.values()):
            self.log.info("Peers are at height {h} and ours has not moved for {s} s: syncing", h=tip + 1,
                          s=LAG_GRACE)
            sync.trigger()

    # -- dialing and pinging -----------------------------------------------------------------------
    def _dial_due(self) -> None:
        if not self.running or self.peerstore is None:
            return
        now = self.reactor.seconds()
        outbound = sum(1 for c in self.connections.values() if not c.inbound) + len(self._dialing)
        room = self.config.max_outbound - outbound
        if room <= 0:
            return
        connected = set(self.connections) | {self.peer_id}
        for addr in self.peerstore.due(now, connected, room, lambda pid: self.peers.is_banned(pid, None, now)):
            if addr not in self._dialing:
                self.dial(addr)

    def dial(self, addr: str) -> defer.Deferred[Any]:
        """Dial ``/ip4/H/tcp/P/p2p/ID``; the TLS handshake fails if the peer's key is not ID's."""
        host, port, pid = discovery.parse_multiaddr(addr)
        self._dialing.add(addr)
        tcp = endpoints.TCP4ClientEndpoint(self.reactor, host, port, timeout=DIAL_TIMEOUT) if ":" not in host \
            else endpoints.TCP6ClientEndpoint(self.reactor, host, port, timeout=DIAL_TIMEOUT)
        endpoint = self.channel.client_endpoint(tcp, pid)
        d = endpoint.connect(_ConnectionFactory(self, inbound=False, dialed=addr))

        def failed(f: Failure) -> None:
            self.peerstore.dial_failed(addr, self.reactor.seconds())
            self.log.debug("Dial {addr} failed: {why}", addr=addr, why=f.getErrorMessage())

        def done(result: Any) -> Any:
            self._dialing.discard(addr)
            return result

        d.addErrback(failed)
        d.addBoth(done)
        return d

    def _ping_all(self) -> None:
        now = self.reactor.seconds()
        limit = self.config.ping_interval * PING_MISSES_BEFORE_DROP
        for conn in list(self.connections.values()):
            if conn.state != "ready":
                continue
            if any(now - t > limit for t in conn.ping_sent.values()):
                self.log.info("Peer {peer} stopped answering pings", peer=conn.peer_id)
                self.penalize(conn, Reason.TIMEOUT)
                conn.close()
                continue
            nonce = self._rng.getrandbits(64)
            conn.pace()                       # a ping counts against the peer's request budget too
            conn.ping_sent[nonce] = now
            conn.send(m.MsgType.PING, {"nonce": nonce, "payload": b""})

    # -- introspection -----------------------------------------------------------------------------
    def peer_info(self) -> list[dict[str, Any]]:
        out = []
        for conn in self.connections.values():
            info = conn.info()
            info["score"] = self.peers.score(conn.peer_id) if self.peers else 0
            out.append(info)
        return out


class _Fetch:
    """A block consensus wants by hash: who may have it, whom we asked, the retry timer."""

    __slots__ = ("height", "block_hash", "voters", "asked", "attempts", "timer")

    def __init__(self, height: int, block_hash: bytes, voters: frozenset[bytes]) -> None:
        self.height = height
        self.block_hash = block_hash
        self.voters = voters
        self.asked: set[str] = set()
        self.attempts = 0
        self.timer: Any = None


_VOTE = int(m.MsgType.VOTE)
_PRECHECKED = frozenset({_VOTE, int(m.MsgType.TX)})   # copies dropped before decoding (precheck_duplicate)
_PEEKED_KINDS: dict[m.MsgType, type[Proposal | Vote | QuorumProof]] = {
    m.MsgType.PROPOSAL: Proposal, m.MsgType.VOTE: Vote, m.MsgType.VOTE_QUORUM: QuorumProof}


def _quorum_key(proof: QuorumProof) -> bytes:
    """What a quorum proves, whoever signed it: (height, round, type, value). Kept in ``conn.sent_ids``."""
    return message_id(m.MsgType.VOTE_QUORUM, b"key" + proof.height.to_bytes(8, "big")
                      + proof.round.to_bytes(4, "big") + bytes((int(proof.type),)) + proof.block_hash)


def _ignore(failure: Failure) -> None:
    failure.trap(RequestFailed)


def _reason_name(code: int) -> str:
    try:
        return Reason(code).name.lower()
    except ValueError:
        return str(code)
