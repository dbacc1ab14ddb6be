"""What sync and fork handling need from a peer, and its implementation over a P2P connection.

:class:`SyncPeer` is the seam between the sync logic (``manager.py``, ``forks.py``) and the network:
the logic asks for status, block hashes and certified blocks, and reports faults; it never touches a
socket. :class:`ConnectionPeer` implements it over a live :class:`~timecoin.p2p.protocol.PeerConnection`;
tests implement it over stores they build, including peers that lie, stall or forge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer

from timecoin.errors import DecodeError
from timecoin.ledger.block import Block, CommitCertificate
from timecoin.p2p.peers import Event
from timecoin.wire import messages as m

if TYPE_CHECKING:
    from timecoin.p2p.protocol import PeerConnection
    from timecoin.p2p.service import P2PService

MAX_HASHES_PER_REQUEST = 10_000
MAX_BLOCKS_PER_REQUEST = 1000      # SPEC §6: a get_blocks range is answered with at most 1,000 blocks


class BadResponse(Exception):
    """A response that does not decode into what was asked (the caller charges the peer)."""

    def __init__(self, event: Event, detail: str) -> None:
        super().__init__(detail)
        self.event = event


@dataclass(frozen=True)
class PeerStatus:
    height: int
    tip_hash: bytes
    finalized_height: int
    finalized_hash: bytes
    genesis_hash: bytes
    latency: float                 # seconds the status request took


class SyncPeer(Protocol):
    peer_id: str

    @property
    def height(self) -> int:
        """The best height the peer last announced."""

    @property
    def latency(self) -> float | None:
        """Round-trip estimate in seconds (None before any measurement)."""

    @property
    def last_queue_delay(self) -> float:
        """Seconds our own request pacing held the latest request to this peer back before it was sent
        (0 if it left at once): the part of a response time that is not the peer's."""

    @property
    def power(self) -> int:
        """Voting power of the peer's host key at our next height (0 for observers)."""

    @property
    def score(self) -> int:
        """The reputation we hold for the peer (SPEC §5: 0 for a new one; earned slowly by useful service)."""

    def get_status(self) -> defer.Deferred[PeerStatus]: ...

    def get_block_hashes(self, start: int, count: int) -> defer.Deferred[list[bytes]]: ...

    def get_blocks(self, start: int, count: int) -> defer.Deferred[list[tuple[Block, CommitCertificate]]]:
        """A range (SPEC §6): the consecutive blocks from ``start`` the peer's answer holds, at most
        ``count`` (a server sends what fits its ``sync_response_bytes``, at least one)."""

    def penalize(self, event: Event) -> None:
        """Charge the peer for wrong, missing or late data (reputation, maybe a ban)."""

    def reward(self, event: Event) -> None: ...

    def usable(self) -> bool:
        """Connected, not banned, reputation >= 0."""


class ConnectionPeer:
    """SyncPeer over a live PeerConnection."""

    def __init__(self, conn: PeerConnection, service: P2PService) -> None:
        self.conn = conn
        self.service = service
        self.peer_id = conn.peer_id

    @property
    def height(self) -> int:
        return self.conn.height

    @height.setter
    def height(self, value: int) -> None:
        self.conn.height = value

    @property
    def latency(self) -> float | None:
        return self.conn.latency

    @property
    def last_queue_delay(self) -> float:
        return self.conn.last_queue_delay

    @property
    def power(self) -> int:
        store = self.service.node.store
        vs = store.validator_set(store.tip_height() + 1) if store is not None else None
        v = vs.by_address.get(self.conn.address) if vs is not None else None
        return v.power if v is not None else 0

    @property
    def score(self) -> int:
        peers = self.service.peers
        return peers.score(self.peer_id) if peers is not None else 0

    def usable(self) -> bool:
        peers = self.service.peers
        return (self.conn.state == "ready" and peers is not None
                and not peers.is_banned(self.peer_id, None, self.service.reactor.seconds())
                and peers.score(self.peer_id) >= 0)

    def penalize(self, event: Event) -> None:
        self.service.record(self.conn, event)

    def reward(self, event: Event) -> None:
        self.service.record(self.conn, event)

    def get_status(self) -> defer.Deferred[PeerStatus]:
        clock = self.service.reactor
        t0 = clock.seconds()

        def got(response: tuple[m.MsgType, Any]) -> PeerStatus:
            s = _expect(response, m.MsgType.STATUS)
            status = PeerStatus(s.height, s.tip_hash, s.finalized_height, s.finalized_hash, s.genesis_hash,
                                max(clock.seconds() - t0, 0.0))
            if status.height > self.conn.height:
                self.conn.height = status.height
            return status

        return self.conn.request(m.MsgType.GET_STATUS, {}).addCallback(got)

    def get_block_hashes(self, start: int, count: int) -> defer.Deferred[list[bytes]]:
        def got(response: tuple[m.MsgType, Any]) -> list[bytes]:
            body = _expect(response, m.MsgType.BLOCK_HASHES)
            hashes = list(body.hashes)
            if body.start != start or len(hashes) > count:
                raise BadResponse(Event.UNSOLICITED, "block hashes for another range")
            return hashes

        count = min(count, MAX_HASHES_PER_REQUEST)
        return self.conn.request(m.MsgType.GET_BLOCK_HASHES, {"start": start, "count": count}).addCallback(got)

    def get_blocks(self, start: int, count: int) -> defer.Deferred[list[tuple[Block, CommitCertificate]]]:
        def got(response: tuple[m.MsgType, Any]) -> list[tuple[Block, CommitCertificate]]:
            body = _expect(response, m.MsgType.BLOCKS)
            out = []
            try:
                for item in body.blocks:
                    out.append((Block.from_wire(item.block), CommitCertificate.from_wire(item.certificate)))
            except (DecodeError, ValueError) as exc:
                raise BadResponse(Event.MALFORMED_FRAME, f"undecodable block: {exc}") from None
            if len(out) > count or any(b.height != start + i for i, (b, _) in enumerate(out)):
                raise BadResponse(Event.UNSOLICITED, "blocks of another range")
            return out

        count = max(1, min(count, MAX_BLOCKS_PER_REQUEST))
        return self.conn.request(m.MsgType.GET_BLOCKS, {"start": start, "count": count}).addCallback(got)


def _expect(response: tuple[m.MsgType, Any], msg_type: m.MsgType) -> Any:
    got, body = response
    if got != msg_type:
        raise BadResponse(Event.UNSOLICITED, f"expected {msg_type.name}, got {got.name}")
    return body

