"""SyncCoordinator checks on a real store (LMDB in tmp_path) with in-process peers and a task.Clock.

* state consistency (SPEC §6 b): our state root at a recent height against the peers' certified blocks;
* fork checks on demand (``fork_suspected``: announcements, and synced blocks whose parent is not our tip);
* ``sync-status.json`` is current after every applied batch.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.chaingen import ChainBuilder, ChainSpec, build_chain, make_genesis, make_keys
from tests.syncpeers import StorePeer
from timecoin.config import build_config
from timecoin.ledger.block import Block, CommitCertificate
from timecoin.node import Node, StoreService
from timecoin.p2p.peers import Event
from timecoin.store import Store
from timecoin.sync.coordinator import FORK_SUSPECT_INTERVAL, STATUS_FILE, SyncCoordinator
from timecoin.sync.forks import OutcomeKind
from timecoin.sync.peer import PeerStatus

T = TypeVar("T")
GENESIS_TIME = 1_700_000_000_000
TIP = 40
COMMON = 30                                  # a forged branch takes over from 31


@pytest.fixture(scope="module")
def spec() -> ChainSpec:
    return make_genesis(validators=4, chain_id="timecoin-coordtest", genesis_time=GENESIS_TIME)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory, spec: ChainSpec) -> Iterator[ChainBuilder]:
    builder = build_chain(str(tmp_path_factory.mktemp("honest") / "chain"), spec, 60, txs_per_block=1)
    yield builder
    builder.store.close()


class Running:
    """A node of the store service and the SyncCoordinator only, on a task.Clock, syncing from ``peers``."""

    def __init__(self, tmp_path: Path, spec: ChainSpec, peers: list[Any], **extra: str) -> None:
        datadir = tmp_path / "node"
        os.makedirs(datadir, exist_ok=True)
        self.datadir = datadir
        self.config = build_config({"datadir": str(datadir), "sync_interval": "3600", **extra})
        self.peers = peers
        self.clock = Clock()
        self.clock.advance(GENESIS_TIME / 1000 + 10 * 86400)
        self.node = Node(self.config, make_keys(1, seed=77)[0], spec.genesis)
        StoreService(self.node).setServiceParent(self.node)
        self.sync = SyncCoordinator(self.node, self.clock, peers=lambda: list(self.peers))
        self.node.sync = self.sync
        self.sync.setServiceParent(self.node)
        self.node.startService()

    @property
    def store(self) -> Store:
        assert self.node.store is not None
        return self.node.store

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        d = defer.Deferred.fromCoroutine(coro)
        for _ in range(200):                 # bounded: simulated seconds
            if d.called:
                break
            self.clock.advance(1.0)
        out: list[Any] = []
        d.addBoth(out.append)
        assert out, "did not finish"
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def cycle(self) -> None:
        self.sync.trigger()
        for _ in range(20):
            self.clock.advance(1.0)

    def status_file(self) -> dict[str, Any]:
        return json.loads((self.datadir / STATUS_FILE).read_text())

    def stop(self) -> None:
        self.node.stopService()


@pytest.fixture
def stops() -> Iterator[list[Running]]:
    nodes: list[Running] = []
    yield nodes
    for n in nodes:
        n.stop()


def prefill(tmp_path: Path, honest: ChainBuilder, upto: int = TIP, forged_from: int | None = None) -> None:
    """The node's store before it starts: honest blocks, or honest to ``forged_from - 1`` then a forged branch."""
    store = Store(str(tmp_path / "node" / "chain"))
    if forged_from is None:
        honest.copy_to(store, upto)
    else:
        branch = honest.fork(forged_from - 1, store, salt=3)
        branch.build(upto - forged_from + 1, signers=[0])
    store.close()


def copies(honest: ChainBuilder, tmp_path: Path, n: int, upto: int = TIP, cls: type = StorePeer) -> list[Any]:
    out = []
    for i in range(n):
        store = Store(str(tmp_path / f"peer{i}"))
        honest.copy_to(store, upto)
        out.append(cls(f"h{i}", store))
    return out


def close_peers(peers: list[Any]) -> None:
    for p in peers:
        p.store.close()


class StateLiar(StorePeer):
    """Serves the honest chain, but its block at ``height`` carries another state root (same certificate)."""

    def __init__(self, peer_id: str, store: Store, height: int) -> None:
        super().__init__(peer_id, store, latency=0.001)          # ranked first among equals
        self.at = height

    def get_blocks(self, start: int, count: int) -> defer.Deferred[list[tuple[Block, CommitCertificate]]]:
        self.block_requests.append((start, count))
        out = []
        for block, cert in self.store.get_blocks(start, count):
            if block.height == self.at:
                block = dataclasses.replace(block, header=dataclasses.replace(block.header, state_root=b"\x07" * 32))
            out.append((block, cert))
        return defer.succeed(out)


class SlowStatusPeer(StorePeer):
    """Answers its status after 5 simulated seconds (a sync cycle stays busy meanwhile)."""

    def __init__(self, peer_id: str, store: Store, clock: Clock) -> None:
        super().__init__(peer_id, store)
        self.clock = clock

    def get_status(self) -> defer.Deferred[PeerStatus]:
        return task.deferLater(self.clock, 5.0, self.status)


# -- state consistency ------------------------------------------------------------------------------------
def test_state_check_agreement_raises_no_alert(tmp_path: Path, spec: ChainSpec, honest: ChainBuilder,
                                               stops: list[Running]) -> None:
    prefill(tmp_path, honest)
    peers = copies(honest, tmp_path, 3)
    node = Running(tmp_path, spec, peers)
    stops.append(node)
    node.cycle()
    assert [p.block_requests for p in peers] == [[(TIP - 2, 1)]] * 3      # a recent height, from 3 peers
    assert node.sync.state_alert is None and node.sync.last_fork is None
    assert all(p.penalties == [] for p in peers)
    status = node.status_file()
    assert status["state_alert"] is None and status["tip"] == TIP and status["updated"] <= node.clock.seconds()
    close_peers(peers)


def test_state_check_majority_with_another_certified_state_root_alerts_and_resolves_the_fork(
        tmp_path: Path, spec: ChainSpec, honest: ChainBuilder, stops: list[Running]) -> None:
    prefill(tmp_path, honest, forged_from=COMMON + 1)                    # our blocks 31..40 are uncertified
    peers = copies(honest, tmp_path, 3)
    node = Running(tmp_path, spec, peers)
    stops.append(node)
    ours_38 = node.store.get_block(TIP - 2)
    assert ours_38 is not None and ours_38.header.state_root != honest.store.get_block(TIP - 2).header.state_root
    statuses = {p.peer_id: p.status() for p in peers}
    handled = node.run(node.sync.check_state(peers, statuses))
    assert handled
    alert = node.sync.state_alert
    assert alert is not None and f"our state root at height {TIP - 2}" in alert and "3 of 3 peers" in alert
    assert node.status_file()["state_alert"] == alert                    # shown by `timecoin status`
    fork = node.sync.last_fork
    assert fork is not None and fork.kind is OutcomeKind.ROLLED_BACK and fork.height == COMMON + 1
    assert node.store.tip_height() == COMMON
    assert all(p.penalties == [] for p in peers)
    close_peers(peers)


def test_state_check_a_single_lying_peer_is_outvoted_and_charged(tmp_path: Path, spec: ChainSpec,
                                                                 honest: ChainBuilder, stops: list[Running]) -> None:
    prefill(tmp_path, honest)
    good = copies(honest, tmp_path, 2)
    liar_store = Store(str(tmp_path / "liar"))
    honest.copy_to(liar_store, TIP)
    liar = StateLiar("liar", liar_store, TIP - 2)
    node = Running(tmp_path, spec, [liar, *good])
    stops.append(node)
    node.cycle()
    assert liar.block_requests == [(TIP - 2, 1)]
    assert liar.penalties == [Event.FORGED_CERTIFICATE]
    assert all(p.penalties == [] for p in good)
    assert node.sync.state_alert is None and node.sync.last_fork is None and node.store.tip_height() == TIP
    close_peers([liar, *good])


def test_state_check_finds_a_state_accumulator_that_is_not_the_tip_state_root(
        tmp_path: Path, spec: ChainSpec, honest: ChainBuilder, stops: list[Running]) -> None:
    prefill(tmp_path, honest)
    node = Running(tmp_path, spec, [])
    stops.append(node)
    node.store.put("meta", b"lthash", bytes(len(node.store.lthash())))   # a corrupted accumulator
    node.run(node.sync.check_state([], {}))
    assert node.sync.state_alert is not None and "state accumulator" in node.sync.state_alert


# -- fork checks on demand ----------------------------------------------------------------------------------
def test_fork_suspected_checks_at_once_coalesced_and_never_during_a_cycle(
        tmp_path: Path, spec: ChainSpec, honest: ChainBuilder, stops: list[Running]) -> None:
    prefill(tmp_path, honest, forged_from=COMMON + 1)
    peers = copies(honest, tmp_path, 3)
    node = Running(tmp_path, spec, peers)
    stops.append(node)
    theirs = honest.store.block_hash_at(35)
    assert theirs is not None and node.store.block_hash_at(35) != theirs
    for _ in range(3):
        node.sync.fork_suspected("h0", 35, theirs)
    node.sync.fork_suspected("h1", 35, theirs)
    node.sync.fork_suspected("h2", TIP + 5, b"\x01" * 32)               # above our tip: nothing to compare
    assert all(p.hash_requests == [] for p in peers)                    # scheduled, not run inline
    node.clock.advance(0)                                                # at once: no 30 s wait
    fork = node.sync.last_fork                                           # found, resolved, rolled back ...
    assert fork is not None and fork.kind is OutcomeKind.ROLLED_BACK and fork.new_tip == COMMON
    assert node.store.tip_hash() == honest.store.block_hash_at(TIP)      # ... and re-synced at once
    assert peers[0].hash_requests[0] == (1, 35) and peers[0].hash_requests.count((1, 35)) == 1   # coalesced
    assert (1, TIP + 5) not in peers[2].hash_requests and (1, TIP) not in peers[2].hash_requests
    close_peers(peers)


def test_a_false_fork_suspicion_is_charged_and_suspicions_are_rate_limited_per_peer(
        tmp_path: Path, spec: ChainSpec, honest: ChainBuilder, stops: list[Running]) -> None:
    prefill(tmp_path, honest)
    peers = copies(honest, tmp_path, 2)
    node = Running(tmp_path, spec, peers)
    stops.append(node)
    fake = b"\x05" * 32                                                  # not our block 35, nor theirs
    node.sync.fork_suspected("h0", 35, fake)
    node.clock.advance(0)
    assert peers[0].hash_requests and node.sync.last_fork is None        # checked: its chain is ours
    assert peers[0].penalties == [Event.STALE_DATA] and peers[1].penalties == []
    asked = len(peers[0].hash_requests)
    node.clock.advance(FORK_SUSPECT_INTERVAL - 1)
    node.sync.fork_suspected("h0", 35, fake)                             # within the window: ignored
    node.sync.fork_suspected("h1", 35, fake)                             # another peer has its own window
    node.clock.advance(0)
    assert len(peers[0].hash_requests) == asked and peers[0].penalties == [Event.STALE_DATA]
    assert peers[1].hash_requests and peers[1].penalties == [Event.STALE_DATA]
    node.clock.advance(1)
    node.sync.fork_suspected("h0", 35, fake)                             # the window has passed
    node.clock.advance(0)
    assert len(peers[0].hash_requests) > asked and peers[0].penalties == [Event.STALE_DATA] * 2
    assert node.store.tip_height() == TIP and node.sync.last_fork is None
    close_peers(peers)


def test_suspicions_with_nothing_to_check_spend_no_window(tmp_path: Path, spec: ChainSpec, honest: ChainBuilder,
                                                          stops: list[Running]) -> None:
    """An announcement above our tip, or of our own hash, is no suspicion: it must not use up the peer's
    window and so hide a real one (a fork the sync run reports right after)."""
    prefill(tmp_path, honest)
    peers = copies(honest, tmp_path, 1)
    node = Running(tmp_path, spec, peers)
    stops.append(node)
    node.sync.fork_suspected("h0", TIP + 1, b"\x07" * 32)               # above our tip
    node.sync.fork_suspected("h0", 35, node.store.block_hash_at(35))     # our own block
    node.clock.advance(0)
    assert peers[0].hash_requests == [] and peers[0].penalties == []
    node.sync.fork_suspected("h0", 35, b"\x05" * 32)                    # a real one, at once: checked
    node.clock.advance(0)
    assert peers[0].hash_requests and peers[0].penalties == [Event.STALE_DATA]
    close_peers(peers)


def test_fork_suspected_during_a_cycle_waits_for_it(tmp_path: Path, spec: ChainSpec, honest: ChainBuilder,
                                                    stops: list[Running]) -> None:
    prefill(tmp_path, honest)
    store = Store(str(tmp_path / "slow"))
    honest.copy_to(store, TIP)
    slow = SlowStatusPeer("slow", store, Clock())
    node = Running(tmp_path, spec, [slow])
    slow.clock = node.clock
    stops.append(node)
    node.sync.trigger()                                                  # the cycle waits for the status
    node.sync.fork_suspected("slow", 10, b"\x02" * 32)
    node.clock.advance(0)
    node.clock.advance(1.0)
    assert slow.hash_requests == []                                      # not concurrently with the cycle
    node.clock.advance(5.0)                                              # the cycle ends; then the check runs
    node.clock.advance(0)
    assert slow.hash_requests[-1] == (1, 10)
    store.close()


def test_a_synced_block_whose_parent_is_not_our_tip_starts_the_fork_search(
        tmp_path: Path, spec: ChainSpec, honest: ChainBuilder, stops: list[Running]) -> None:
    prefill(tmp_path, honest, forged_from=COMMON + 1)
    peers = copies(honest, tmp_path, 3, upto=60)
    node = Running(tmp_path, spec, peers)
    stops.append(node)
    result = node.run(node.sync.manager.sync(peers))                     # blocks 41.. build on the honest 40
    assert result.fork_suspected and node.store.tip_height() == TIP
    node.clock.advance(0)                                                # the fork check, at once
    fork = node.sync.last_fork
    assert fork is not None and fork.kind is OutcomeKind.ROLLED_BACK and fork.new_tip == COMMON
    assert node.store.tip_height() == 60 and node.store.tip_hash() == honest.store.block_hash_at(60)
    close_peers(peers)


# -- progress file ------------------------------------------------------------------------------------------
def test_the_status_file_is_current_after_every_batch(tmp_path: Path, spec: ChainSpec, honest: ChainBuilder,
                                                      stops: list[Running]) -> None:
    peers = copies(honest, tmp_path, 3, upto=60)
    node = Running(tmp_path, spec, peers, sync_batch="10")
    stops.append(node)
    seen: list[tuple[int, int]] = []
    apply = node.sync.manager.apply

    def observed(items: Any) -> Any:
        if (node.datadir / STATUS_FILE).exists():
            seen.append((node.status_file()["height"], node.store.tip_height()))
        return apply(items)
    node.sync.manager.apply = observed
    result = node.run(node.sync.manager.sync(peers))
    assert result.end_height == 60 and len(seen) == 5
    assert all(written == tip for written, tip in seen)                 # never one batch behind
    status = node.status_file()
    assert status["height"] == 60 and status["syncing"] is False and status["tip"] == 60
    close_peers(peers)


@pytest.mark.parametrize("stop_after", [1.0, 3.0, 5.0, 7.0])
def test_a_cycle_in_flight_when_the_node_stops_ends_without_a_failure(tmp_path: Path, spec: ChainSpec,
                                                                      honest: ChainBuilder,
                                                                      stop_after: float) -> None:
    """Seen in whole-node simulator runs at shutdown: a node stopped while its sync cycle waited on peers went
    on when the answers came, found its store closed and logged 'Sync cycle failed' (AttributeError). A stop
    ends the cycle quietly, at whatever point it is."""
    from twisted.logger import LogLevel, globalLogPublisher

    from timecoin.sim.syncpeers import TimedPeer

    prefill(tmp_path, honest, upto=5)
    peers: list[Any] = []
    running = Running(tmp_path, spec, peers)
    peers.extend(TimedPeer(f"peer{i}", honest.store, running.clock, latency=2.0, power=1) for i in range(3))
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        running.sync.trigger()
        running.clock.advance(stop_after)
        assert running.sync._busy, "the cycle must still be running when the node stops"
        running.stop()
        for _ in range(60):
            running.clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert errors == [], [e.get("log_format") for e in errors]
