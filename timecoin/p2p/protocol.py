"""One authenticated peer connection: TLS identity, framing, fair input queue, requests (SPEC §5).

The protocol owns the bytes; the :class:`~timecoin.p2p.service.P2PService` owns the meaning. The
connection

* learns the peer's PeerID from the verified TLS certificate (``handshakeCompleted``) and asks the
  service whether to admit it;
* cuts the stream into frames with the configured maximum enforced on the length prefix, so an
  oversized or malformed frame costs the peer the connection before we buffer it;
* queues decoded frames and lets the service take them one per peer in turn; a peer whose
  unprocessed input passes ``MAX_QUEUED_BYTES`` is paused (``pauseProducing``) until it drains, so one
  flooding peer cannot starve the others (SPEC §5 "Fairness under load");
* matches responses to its own requests by request id, each with a timeout;
* bounds what it queues for a peer that does not read (:mod:`timecoin.p2p.sendbuffer`): past the limit
  the connection is dropped, and a closing connection that cannot flush is aborted after CLOSE_GRACE.
"""
from __future__ import annotations

import collections
import itertools
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from timecoin import crypto
from timecoin.errors import DecodeError, Reason, TimecoinError
from timecoin.p2p import sendbuffer
from timecoin.p2p.channel import certificate_time
from timecoin.p2p.discovery import parse_multiaddr
from timecoin.p2p.gossip import MAX_SENT_IDS, SeenCache
from timecoin.p2p.identity import PeerAuthError, peer_public_key
from timecoin.p2p.peers import TX_GOSSIP_BURST, TX_GOSSIP_RATE, gcra
from timecoin.p2p.sendbuffer import SendBuffer, send_limit
from timecoin.wire import messages as m
from timecoin.wire.framing import FrameDecoder, encode_frame

if TYPE_CHECKING:
    from timecoin.p2p.service import P2PService

MAX_QUEUED_BYTES = 4 << 20          # unprocessed input per peer before its socket is paused
HANDSHAKE_TIMEOUT = 10.0            # TLS + hello must complete within this (from the TCP connection)
PRE_TLS_TIMEOUT = 3.0               # ... and TLS alone within this: a socket idle before TLS loses its slot
PACE_FRACTION = 0.9                 # our request rate to a peer, as a fraction of its (assumed) rate_limit
PACE_BURST_MARGIN = 2               # requests of its burst we leave unused (pings share the budget)
PACE_RECOVERY = 300.0               # s for a backed-off pace to double again (up to our own rate_limit)
PACE_MIN_RATE = 1.0                 # requests per minute: the slowest pace back-offs go down to
REQUEST_TIMEOUT = 15.0              # SPEC §6: an unanswered request moves on after ~15 s
MAX_TX_BACKLOG = 10_000             # txs queued for one peer by our relay pacing; beyond, new ones are not sent


class RequestFailed(TimecoinError):
    """A request that timed out, was rejected by the peer, or lost its connection."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.name.lower()}: {detail}" if detail else reason.name.lower())
        self.reason = reason


@implementer(IHandshakeListener)
class PeerConnection(Protocol):
    """A TLS connection to one peer (inbound or dialed)."""

    log = Logger()

    def __init__(self, service: P2PService, clock: IReactorTime, inbound: bool, dialed: str | None = None) -> None:
        self.service = service
        self.clock = clock
        self.inbound = inbound
        self.dialed = dialed                   # the multiaddr we dialed (outbound only)
        self.peer_id = ""
        self.pubkey = b""
        self.address = b""                     # the peer's ledger address (validator check)
        self.ip = ""
        self.port = 0
        self.state = "tls"                     # tls -> hello -> ready -> (closing ->) closed
        self.is_validator = False
        self.hello: Any = None
        self.height = 0                        # the peer's best height as last announced
        self.latency: float | None = None      # ping round-trip EWMA, seconds
        self.ready_at: float | None = None     # when the hello was accepted (None: never reached ready)
        self.pending_ip: str | None = None     # set while an inbound connection counts as pending (pre-auth)
        # Ids of current-height messages the peer has: ones we accepted from it or sent it (gossip.py).
        self.sent_ids = SeenCache(MAX_SENT_IDS)
        self.announced = -1                    # highest height it announced (new_block) on this connection
        self.notice_tat = 0.0                  # GCRA state of its notice budget (P2PService._notice_allowed)
        self.identify = ""                     # its hello listen addresses in the peer store: "", "claimed", "learned"
        self.refused = 0                       # its requests refused for the rate limit since refused_since
        self.refused_since = 0.0
        self.decoder = FrameDecoder(service.config.max_frame_bytes, m.HEIGHT_AT, m.SIGNER_AT)
        self.inbox: collections.deque[bytes] = collections.deque()
        self.inbox_bytes = 0
        self.paused = False
        self.pauses = 0                        # times its input was paused for passing MAX_QUEUED_BYTES
        self.sendbuf = SendBuffer(send_limit(service.config.max_frame_bytes))   # our output it has not read
        self._producing = False                # sendbuf registered as the transport's producer
        self._close_timer: Any = None
        self._requests: dict[int, tuple[defer.Deferred[Any], Any, m.MsgType]] = {}
        self._ids = itertools.count(1)
        self._handshake_timer: Any = None
        self.ping_sent: dict[int, float] = {}
        self._pace_tat = 0.0                   # GCRA theoretical arrival time of our next request (pace())
        self.last_queue_delay = 0.0            # seconds our pacing held the latest request back before sending
        self._pace_factor = 1.0                # share of our own rate we assume it allows (halved per back_off)
        self._pace_factor_at = 0.0             # when it was last halved (it doubles back per PACE_RECOVERY)
        self._backoffs = 0                     # back-offs so far (a request paced before the last is paced again)
        self._backoff_rid = 0                  # requests numbered below this were paced before the last back-off
        self._last_rid = 0
        self._tx_queue: collections.deque[bytes] = collections.deque()   # relayed txs waiting for budget
        self._tx_tat = 0.0                     # the same GCRA for the peer's tx gossip budget
        self._tx_flush: Any = None
        self.txs_dropped = 0                   # relayed txs not sent because the backlog was full
        self.messages_in = 0
        self.messages_out = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        """TCP is up, TLS not yet: the handshake timer first checks TLS (PRE_TLS_TIMEOUT), then hello.

        A connection not through TLS holds a pending slot (service.pending_started) and costs its peer
        nothing -- an idle socket sends no byte at all -- so it gets a short timeout; a slow but honest link
        still finishes TLS 1.3 (one round trip) in far less. The hello after TLS keeps HANDSHAKE_TIMEOUT.
        """
        peer = self.transport.getPeer()
        self.ip, self.port = getattr(peer, "host", ""), getattr(peer, "port", 0)
        # Consensus messages are small and latency-bound: without TCP_NODELAY, Nagle's algorithm holds a
        # vote back until the previous segment is acknowledged, and the peer's delayed ACK holds that back.
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)
        self._hello_deadline = self.clock.seconds() + HANDSHAKE_TIMEOUT
        self._handshake_timer = self.clock.callLater(min(PRE_TLS_TIMEOUT, HANDSHAKE_TIMEOUT),
                                                     self._handshake_timed_out)

    def handshakeCompleted(self) -> None:  # noqa: N802 - Twisted API
        self.service.pending_done(self)
        try:
            self.pubkey = peer_public_key(self.transport, certificate_time(self.clock))
        except PeerAuthError as exc:
            self.log.info("Peer {ip} failed TLS identity checks: {why}", ip=self.ip, why=str(exc))
            self.abort()
            return
        self.peer_id = crypto.peer_id_of(self.pubkey)
        self.address = crypto.address_of(self.pubkey)
        expected = _dialed_peer_id(self.dialed)
        if expected is not None and expected != self.peer_id:
            # TLS pins the key (identity.client_creator); this is the second lock on the same door.
            self.log.info("Peer at {ip}:{port} is {peer}, not the {want} we dialed", ip=self.ip, port=self.port,
                          peer=self.peer_id, want=expected)
            self.peer_id = ""
            self.abort()
            return
        self.state = "hello"
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            register(self.sendbuf, True)
            self._producing = True
        reason = self.service.admit(self)
        if reason != Reason.OK:
            self.reject(reason, "connection refused")
            self.close()
            return
        self.send(m.MsgType.HELLO, self.service.hello_body())

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self.state == "tls":
            # No key yet, so no one to charge; debug only: an attacker opens such sockets by the thousand.
            self.log.debug("Peer {ip}:{port} did not finish TLS in time", ip=self.ip, port=self.port)
            self.abort()
        elif self.state == "hello":
            left = self._hello_deadline - self.clock.seconds()
            if left > 0:
                self._handshake_timer = self.clock.callLater(left, self._handshake_timed_out)
                return
            self.log.info("Peer {ip}:{port} did not complete the handshake in time", ip=self.ip, port=self.port)
            self.service.penalize(self, Reason.TIMEOUT)
            self.abort()

    def became_ready(self) -> None:
        self.state = "ready"
        self.ready_at = self.clock.seconds()
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802 - Twisted API
        was = self.state
        self.state = "closed"
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        if self._tx_flush is not None and self._tx_flush.active():
            self._tx_flush.cancel()
        self._tx_flush = None
        self._tx_queue.clear()
        self.inbox.clear()
        self.inbox_bytes = 0
        pending, self._requests = self._requests, {}
        for d, timer, _ in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(RequestFailed(Reason.INTERNAL, "connection lost"))
        self.service.pending_done(self)
        self.service.connection_lost(self, was)

    def close(self) -> None:
        """Finish writing what is queued (answers, the reject that says why), then disconnect.

        Input still queued is dropped: nothing more from this peer will be handled. A peer that does not
        read would keep a closing connection (and its slot) forever: it is aborted after CLOSE_GRACE.
        """
        self.inbox.clear()
        self.inbox_bytes = 0
        if self.transport is not None and self.state not in ("closed", "closing"):
            self.state = "closing"
            self._stop_producing()                 # TLS waits for the producer to go before it closes
            self.transport.loseConnection()
            if self.state == "closing":
                self._close_timer = self.clock.callLater(sendbuffer.CLOSE_GRACE, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if self.state == "closing":
            self.log.debug("Peer {peer} did not take our last bytes in time", peer=self.peer_id)
            abort = getattr(self.transport, "abortConnection", None)
            (abort or self.transport.loseConnection)()

    def _stop_producing(self) -> None:
        if self._producing and self.transport is not None:
            self._producing = False
            self.transport.unregisterProducer()

    def abort(self) -> None:
        """Drop at once (protocol violations: nothing more from this peer is worth reading)."""
        self.inbox.clear()
        self.inbox_bytes = 0
        if self.transport is not None and self.state != "closed":
            self.state = "closing"
            abort = getattr(self.transport, "abortConnection", None)
            (abort or self.transport.loseConnection)()

    # -- input -----------------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        if self.state in ("closed", "closing", "tls"):
            return
        # Consensus frames for heights the engine cannot use, or signed by keys that cannot sign at those
        # heights, are skipped while the stream is cut into frames, before they cost a copy, a queue slot, a
        # turn or a decode (SPEC §5: every message metered). Honest peers send far heights when either side
        # lags (uncharged); a far-ahead height is remembered as the peer's.
        window = self.service.consensus_window() if self.state == "ready" else None
        muted = self.service.muted_notices(self) if self.state == "ready" else None
        skipped = self.decoder.frames_foreign + self.decoder.frames_dropped + self.decoder.frames_muted
        foreign, silenced = self.decoder.frames_foreign, self.decoder.frames_muted
        try:
            frames = self.decoder.feed(data, window[:2] if window else None, window[2] if window else None, muted)
        except DecodeError as exc:
            self._queue(getattr(exc, "frames", []))
            self.log.info("Peer {peer} sent a bad frame: {why}", peer=self.peer_id, why=str(exc))
            self.service.penalize(self, exc.reason)
            self.abort()
            return
        self.messages_in += (self.decoder.frames_foreign + self.decoder.frames_dropped + self.decoder.frames_muted
                             - skipped)                                   # received and judged at the frame
        if self.decoder.frames_muted != silenced:
            self.service.notices_muted(self)
        if self.decoder.dropped_above > self.height + 1:
            self.height = self.decoder.dropped_above - 1
        if self.decoder.frames_foreign != foreign:
            # Votes or proposals signed by keys outside the validator sets of [h, h + 1]: what the engine
            # refuses as NOT_VALIDATOR (race-prone: a set change can race); charged once per chunk.
            self.service.penalize(self, Reason.NOT_VALIDATOR)
        self._queue(frames)

    def _queue(self, frames: list[bytes]) -> None:
        if not frames:
            return
        for frame in frames:
            self.inbox.append(frame)
            self.inbox_bytes += len(frame)
        self.service.schedule(self)
        if self.inbox_bytes > MAX_QUEUED_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.pauses += 1
            self.transport.pauseProducing()

    def process_one(self) -> bool:
        """Handle the oldest queued frame; True if more are queued."""
        if not self.inbox or self.state in ("closed", "closing"):
            return False
        payload = self.inbox.popleft()
        self.inbox_bytes -= len(payload)
        self.service.count_traffic("in", payload)
        if self.paused and self.inbox_bytes <= MAX_QUEUED_BYTES // 2 and self.transport is not None:
            self.paused = False
            self.transport.resumeProducing()
        if self.state == "ready" and (self.service.precheck_consensus(self, payload)
                                      or self.service.precheck_duplicate(self, payload)
                                      or self.service.precheck_notice(self, payload)):
            self.messages_in += 1               # judged by its fixed-offset fields, never decoded
            return bool(self.inbox) and self.state not in ("closed", "closing")
        try:
            msg_type, request_id, body = m.decode_message(payload)
        except DecodeError as exc:
            self.log.info("Peer {peer} sent an undecodable message: {why}", peer=self.peer_id, why=str(exc))
            self.service.penalize(self, Reason.MALFORMED)
            self.abort()
            return False
        self.messages_in += 1
        self.service.handle(self, msg_type, request_id, body, payload)
        return bool(self.inbox) and self.state not in ("closed", "closing")

    # -- output ----------------------------------------------------------------------------------
    def send(self, msg_type: m.MsgType, body: Any, request_id: int = 0) -> None:
        self.send_payload(m.encode_message(msg_type, body, request_id))

    def send_payload(self, payload: bytes) -> None:
        if self.transport is None or self.state == "closed":
            return
        data = encode_frame(payload, self.service.config.max_frame_bytes)
        if not self.sendbuf.admit(len(data)):
            self.log.info("Peer {peer} is not reading: dropped with {n} bytes queued past a full transport",
                          peer=self.peer_id, n=self.sendbuf.since_blocked)
            self.abort()
            return
        self.messages_out += 1
        self.service.count_traffic("out", payload)
        self.transport.write(data)

    def send_tx(self, payload: bytes) -> None:
        """Relay a tx, paced inside the peer's tx gossip budget (assumed configured like ours).

        Sent at once while the budget allows (bursts up to PACE_FRACTION of TX_GOSSIP_BURST), else queued
        and sent as it refills; a full backlog drops the newest (the tx still reaches the peer by others
        or in a block). So an honest relay never makes us exceed what we allow our peers.
        """
        if self.state != "ready":
            return
        if len(self._tx_queue) >= MAX_TX_BACKLOG:
            self.txs_dropped += 1
            return
        self._tx_queue.append(payload)
        if self._tx_flush is None:
            self._flush_txs()

    def _flush_txs(self) -> None:
        self._tx_flush = None
        if self.state != "ready":
            self._tx_queue.clear()
            return
        peers = self.service.peers            # the peer's budget, assumed configured like ours
        tx_rate, tx_burst = (peers.tx_rate, peers.tx_burst) if peers is not None else (TX_GOSSIP_RATE, TX_GOSSIP_BURST)
        rate, burst = tx_rate * PACE_FRACTION, max(1, int(tx_burst * PACE_FRACTION))
        now = self.clock.seconds()
        while self._tx_queue:
            wait, taken = gcra(self._tx_tat, now, rate, burst)
            if wait > 0:
                self._tx_flush = self.clock.callLater(wait, self._flush_txs)
                return
            self._tx_tat = taken
            self.send_payload(self._tx_queue.popleft())

    @property
    def tx_backlog(self) -> int:
        return len(self._tx_queue)

    def reject(self, reason: Reason, message: str, request_id: int = 0) -> None:
        self.send(m.MsgType.REJECT, {"reason": int(reason), "message": message[:1000]}, request_id)

    def request(self, msg_type: m.MsgType, body: Any, timeout: float = REQUEST_TIMEOUT) -> defer.Deferred[Any]:
        """Send a request; the Deferred fires with (response type, body) or fails with RequestFailed."""
        if self.state != "ready":
            return defer.fail(RequestFailed(Reason.INTERNAL, "peer not ready"))
        if len(self._requests) >= self.service.config.max_inflight_requests:
            return defer.fail(RequestFailed(Reason.RATE_LIMITED, "max_inflight_requests open to this peer"))
        rid = next(self._ids) & 0xFFFFFFFF or next(self._ids)
        self._last_rid = rid
        d: defer.Deferred[Any] = defer.Deferred()
        delay = self.pace()
        self.last_queue_delay = delay
        timer = self.clock.callLater(delay + timeout, self._request_timed_out, rid)
        self._requests[rid] = (d, timer, msg_type)
        if delay > 0:
            self.clock.callLater(delay, self._send_request, rid, msg_type, body, self._backoffs)
        else:
            self.send(msg_type, body, rid)
        return d

    def pace(self) -> float:
        """Seconds to wait before our next rate-limited message to this peer, and count it.

        Peers limit our requests with a token bucket (``rate_limit`` per minute, ``rate_limit_burst``);
        we assume theirs is configured like ours and stay a margin inside it (GCRA), so an honest node
        syncing hard is slowed down instead of refused and charged. A peer configured lower tells us so
        by refusing one (``rate_limited``): :meth:`back_off` then lowers what we assume of it.
        """
        now = self.clock.seconds()
        rate, burst = self._pace_limits(now)
        wait, self._pace_tat = gcra(self._pace_tat, now, rate, burst)
        return wait

    def _pace_limits(self, now: float) -> tuple[float, int]:
        """(requests per minute, burst) we assume the peer allows us at ``now``."""
        cfg = self.service.config
        factor = self._pace_share(now)
        rate = max(cfg.rate_limit * PACE_FRACTION * factor, PACE_MIN_RATE)
        return rate, max(1, int((cfg.rate_limit_burst - PACE_BURST_MARGIN) * factor))

    def _pace_share(self, now: float) -> float:
        """The backed-off share of our own rate, doubling back per PACE_RECOVERY seconds (never above 1)."""
        if self._pace_factor >= 1.0:
            return 1.0
        elapsed = max(now - self._pace_factor_at, 0.0)
        return min(1.0, self._pace_factor * 2.0 ** (elapsed / PACE_RECOVERY))

    @property
    def assumed_rate(self) -> float:
        """Requests per minute we now pace ourselves to with this peer."""
        return self._pace_limits(self.clock.seconds())[0]

    def back_off(self, request_id: int = 0) -> None:
        """The peer refused a request of ours (``rate_limited``): it allows less than we assumed.

        Halve the rate and burst we assume (down to PACE_MIN_RATE), recovering slowly (doubling per
        PACE_RECOVERY), and push the pacing state so our next request waits a whole interval at the new
        rate (the peer's bucket is empty now). A refusal of a request paced before the last back-off
        (already in flight then) halves nothing more; requests queued at the old pace are paced again
        before they go (:meth:`_send_request`). ``request_id`` 0: an unnumbered message (a ping).
        """
        now = self.clock.seconds()
        rate, _ = self._pace_limits(now)
        if request_id:
            stale = request_id < self._backoff_rid
        else:
            stale = self._backoffs > 0 and now - self._pace_factor_at < 60.0 / rate
        if not stale:
            self._pace_factor = self._pace_share(now) / 2
            self._pace_factor_at = now
            self._backoffs += 1
            self._backoff_rid = self._last_rid + 1
        rate, burst = self._pace_limits(now)
        self._pace_tat = max(self._pace_tat, now + burst * 60.0 / rate)

    def _send_request(self, rid: int, msg_type: m.MsgType, body: Any, paced_at: int) -> None:
        entry = self._requests.get(rid)
        if entry is None or self.state != "ready":
            return
        if paced_at != self._backoffs:
            # Paced before a back-off: pace it again at the slower rate; its timeout counts from sending.
            wait = self.pace()
            if wait > 0:
                if entry[1].active():
                    entry[1].delay(wait)
                self.clock.callLater(wait, self._send_request, rid, msg_type, body, self._backoffs)
                return
        self.send(msg_type, body, rid)

    def _request_timed_out(self, rid: int) -> None:
        entry = self._requests.pop(rid, None)
        if entry is None:
            return
        self.service.penalize(self, Reason.TIMEOUT)
        entry[0].errback(RequestFailed(Reason.TIMEOUT, f"no answer to {entry[2].name}"))

    def answer(self, request_id: int, msg_type: m.MsgType, body: Any) -> bool:
        """Deliver a response to the request it answers; False if we asked no such thing."""
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return False
        d, timer, _ = entry
        if timer.active():
            timer.cancel()
        if msg_type == m.MsgType.REJECT:
            reason = _reason(body.reason)
            if reason == Reason.RATE_LIMITED:
                self.back_off(request_id)
            d.errback(RequestFailed(reason, body.message))
        else:
            d.callback((msg_type, body))
        return True

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def info(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "addr": f"{self.ip}:{self.port}", "inbound": self.inbound,
                "validator": self.is_validator, "height": self.height, "state": self.state,
                "latency_ms": None if self.latency is None else round(self.latency * 1000, 3),
                "agent": getattr(self.hello, "agent", ""), "messages_in": self.messages_in,
                "messages_out": self.messages_out, "pauses": self.pauses}


def _dialed_peer_id(addr: str | None) -> str | None:
    if not addr:
        return None
    try:
        return parse_multiaddr(addr)[2]
    except ValueError:
        return None


def _reason(code: int) -> Reason:
    try:
        return Reason(code)
    except ValueError:
        return Reason.INTERNAL
