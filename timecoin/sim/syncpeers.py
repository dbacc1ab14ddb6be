"""SyncPeer implementations over real stores (honest ones, and later hostile ones) for tests and benchmarks."""
from __future__ import annotations

from twisted.internet import defer

from timecoin.ledger.block import Block, CommitCertificate
from timecoin.p2p.peers import Event
from timecoin.store import Store
from timecoin.sync.peer import PeerStatus


class StorePeer:
    """The SyncPeer protocol over a store: what a remote node holding that chain would answer."""

    def __init__(self, peer_id: str, store: Store, power: int = 0, usable: bool = True,
                 latency: float = 0.01) -> None:
        self.peer_id = peer_id
        self._latency = latency
        self.store = store
        self._power = power
        self._usable = usable
        self.penalties: list[Event] = []
        self.rewards: list[Event] = []
        self.hash_requests: list[tuple[int, int]] = []
        self.block_requests: list[tuple[int, int]] = []

    @property
    def height(self) -> int:
        return self.store.tip_height()

    @property
    def latency(self) -> float | None:
        return self._latency

    @property
    def power(self) -> int:
        return self._power

    def status(self) -> PeerStatus:
        tip = self.store.tip_height()
        tip_hash = self.store.tip_hash()
        return PeerStatus(tip, tip_hash, tip, tip_hash, self.store.genesis_hash(), self._latency)

    def get_status(self) -> defer.Deferred[PeerStatus]:
        return defer.succeed(self.status())

    def hashes(self, start: int, count: int) -> list[bytes]:
        return self.store.block_hashes(start, count)

    def get_block_hashes(self, start: int, count: int) -> defer.Deferred[list[bytes]]:
        self.hash_requests.append((start, count))
        return defer.succeed(self.hashes(start, count))

    def get_blocks(self, start: int, count: int) -> defer.Deferred[list[tuple[Block, CommitCertificate]]]:
        self.block_requests.append((start, count))
        return defer.succeed(self.store.get_blocks(start, count))

    def penalize(self, event: Event) -> None:
        self.penalties.append(event)

    def reward(self, event: Event) -> None:
        self.rewards.append(event)

    def usable(self) -> bool:
        return self._usable
