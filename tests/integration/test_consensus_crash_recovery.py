"""Crash recovery when the double-sign guard is ahead of the WAL (SPEC §4), and block_interval = 0.

A single-validator ConsensusService over real LMDB in tmp_path, on ``task.Clock``. The crash states are
built directly, as a kill -9 would leave them: the guard's record committed (fsync'd LMDB), the WAL cut
before the signed message's record.

* With ``WalSigner`` the guard can be ahead of the WAL by the one message being signed: a proposal (its
  unsigned intent is logged), a prevote or a precommit of height 4. Each restart rebuilds the missing
  message from the guard, decides height 4 with the block signed before the crash, finalizes the next
  heights, and never signs two different messages for one (height, round, step).
* The state the old ordering left (guard at the prevote or precommit, nothing of height 4 in the WAL —
  the CI stall): the vote is rebuilt from the guard, the round times out, round 1 decides.
* ``block_interval = 0``: ``startService`` returns (the reactor turns between heights).
"""
from __future__ import annotations

import os
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from tests.integration.test_consensus_service import make_node, run_until
from timecoin.config import NodeConfig, build_config
from timecoin.consensus import engine as eng
from timecoin.consensus.app import ChainApp
from timecoin.consensus.guardfile import GUARD_FILE, GuardFile
from timecoin.consensus.privval import PrivValidator
from timecoin.consensus.service import WalSigner
from timecoin.consensus.wal import WalKind, WriteAheadLog
from timecoin.ledger.block import Proposal, Vote, VoteType
from timecoin.node import Node, StoreService, prepare_datadir

Message = Proposal | Vote


def _drop_last_record(path: str) -> WalKind:
    """Cut the WAL before its last record (what a crash before that append leaves); returns its kind."""
    with open(path, "rb") as f:
        data = f.read()
    off, last = 0, 0
    while off + 8 <= len(data):
        length, _ = struct.unpack_from(">II", data, off)
        if length == 0:
            break                                  # the log's end: preallocated zeros follow
        last, off = off, off + 8 + length
    assert not any(data[off:])
    kind = WalKind(data[last + 8])
    with open(path, "r+b") as f:
        f.truncate(last)
    return kind


def _log_size(path: str) -> int:
    """Bytes of records in the WAL at ``path`` (its file is longer: preallocated zeros follow them)."""
    wal = WriteAheadLog(path)
    try:
        return wal.size
    finally:
        wal.close()


def _crash_state(config: NodeConfig, clock: Clock, upto: str, wal_records: bool = True,
                 guard_in: str = "file") -> list[Message]:
    """Height 4 as a single validator signs it (proposal, prevote, precommit), with a crash right after
    the guard committed ``upto`` and before its WAL record. Returns the signed messages.

    ``guard_in``: "file" is the node's own layout (the guard file in the datadir); "store" is a datadir of
    a node from before the guard file (its record in the store's ``privval`` database), which the service
    must adopt."""
    key, genesis = prepare_datadir(config)
    node = Node(config, key, genesis)
    store_service = StoreService(node)
    store_service.startService()
    store = node.store
    try:
        assert store.tip_height() == 3
        clock.advance(1.0)                                   # height 4's block interval is over
        app = ChainApp(store, genesis.params, key.address, genesis.genesis_time)
        wal_path = os.path.join(config.datadir, "consensus.wal")
        wal = WriteAheadLog(wal_path)
        guard_file = GuardFile(os.path.join(config.datadir, GUARD_FILE)) if guard_in == "file" else None
        signer = WalSigner(PrivValidator(key, genesis.chain_id, guard_file or store), wal)
        wal.append(WalKind.TIMEOUT, (4).to_bytes(8, "big") + (0).to_bytes(4, "big") +
                   bytes((eng.TimeoutKind.BLOCK_INTERVAL,)))
        block = app.propose(4, 0, int(clock.seconds() * 1000))
        signed: list[Message] = []
        proposal = signer.sign_proposal(Proposal(4, 0, -1, key.address, block))
        assert proposal is not None
        signed.append(proposal)
        votes = {"proposal": [], "prevote": [VoteType.PREVOTE], "precommit": [VoteType.PREVOTE, VoteType.PRECOMMIT]}
        for vtype in votes[upto]:
            vote = signer.sign_vote(Vote(vtype, 4, 0, block.hash, key.address))
            assert vote is not None
            signed.append(vote)
        wal.close()
        if wal_records:
            expected = WalKind.PROPOSAL if upto == "proposal" else WalKind.VOTE
            assert _drop_last_record(wal_path) == expected      # the crash: guard committed, WAL not
            if upto == "proposal":                              # the unsigned intent (with the block) survives
                assert [r.kind for r in WriteAheadLog(wal_path).pending()][-1] == WalKind.PROPOSAL_INTENT
        else:                                                   # the old ordering: none of height 4 logged
            logged = _log_size(wal_path)
            while WriteAheadLog(wal_path).pending():
                _drop_last_record(wal_path)
            assert _log_size(wal_path) < logged
        if guard_file is not None:
            assert guard_file.get("privval", b"last_signed") is not None
            assert store.get("privval", b"last_signed") is None
            guard_file.close()
        else:
            assert store.get("privval", b"last_signed") is not None
        return signed
    finally:
        store_service.stopService()


def _assert_no_conflicts(messages: list[Message]) -> None:
    by_slot: dict[tuple[int, int, int], set[bytes]] = {}
    for m in messages:
        step = 1 if isinstance(m, Proposal) else 1 + int(m.type)
        payload = m.signing_payload()
        by_slot.setdefault((m.height, m.round, step), set()).add(payload)
    conflicts = {k: v for k, v in by_slot.items() if len(v) > 1}
    assert not conflicts, f"conflicting signatures at {sorted(conflicts)}"


def _first_run(tmp_path: Path, block_interval: str = "1") -> tuple[NodeConfig, Clock, list[Message]]:
    clock = Clock()
    clock.advance(2_000_000_000)
    config = build_config({"datadir": str(tmp_path / "d"), "block_interval": block_interval})
    node = make_node(config, clock)
    sent: list[Message] = []
    node.consensus.broadcast = sent.append
    node.startService()
    run_until(clock, node, 3)
    # stop between heights: height 4 is not started yet (its block interval is still running)
    assert node.store.tip_height() == 3
    node.stopService()
    return config, clock, sent


@pytest.mark.parametrize("guard_in", ["file", "store"])
@pytest.mark.parametrize("upto", ["proposal", "prevote", "precommit"])
def test_crash_between_guard_commit_and_wal_append_resumes_with_the_signed_message(
        tmp_path: Path, upto: str, guard_in: str) -> None:
    config, clock, sent = _first_run(tmp_path)
    signed = _crash_state(config, clock, upto, guard_in=guard_in)
    clock.advance(0.5)                                       # restarted a little later: new timestamps

    node = make_node(config, clock)
    resent: list[Message] = []
    node.consensus.broadcast = resent.append
    node.startService()
    try:
        assert signed[-1] in resent                          # the message missing from the WAL went out
        run_until(clock, node, 6)
        block4 = node.store.get_block(4)
        assert block4.hash == signed[0].block.hash           # the block signed before the crash, round 0
        assert node.store.get_certificate(4).round == 0
        assert all(node.store.get_certificate(h).round == 0 for h in (5, 6))
    finally:
        node.stopService()
    _assert_no_conflicts(sent + signed + resent)


@pytest.mark.parametrize("upto", ["prevote", "precommit"])
def test_guard_ahead_of_a_wal_missing_the_whole_round_no_longer_stalls(tmp_path: Path, upto: str) -> None:
    """The state the old ordering left after kill -9 (CI's stalled devnet): the guard holds our prevote or
    precommit of 4/0, the WAL nothing of height 4. The vote is rebuilt from the guard and replayed; without
    its proposal it decides nothing, but it completes the round's quorum of votes, so the step timeouts
    fire ([L34], [L47]); the fresh proposal and the conflicting nil votes of round 0 are refused, and
    round 1 decides."""
    config, clock, sent = _first_run(tmp_path)
    signed = _crash_state(config, clock, upto, wal_records=False)
    clock.advance(0.5)
    node = make_node(config, clock)
    resent: list[Message] = []
    node.consensus.broadcast = resent.append
    node.startService()
    try:
        assert signed[-1] in resent
        run_until(clock, node, 6)
        assert node.store.get_certificate(4).round == 1
    finally:
        node.stopService()
    _assert_no_conflicts(sent + signed + resent)


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"did not return within {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _reactor_turn(clock: Clock) -> int:
    """Run the calls due now, as one reactor iteration does: calls they schedule (even with delay 0) wait
    for the next turn. (``Clock.advance(0)`` would run those too, forever, with block_interval = 0.)"""
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)
    return len(due)


def test_block_interval_zero_start_service_returns_and_the_clock_drives_heights(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(2_000_000_000)
    config = build_config({"datadir": str(tmp_path / "d"), "block_interval": "0"})
    node = make_node(config, clock)
    with _deadline(20):
        node.startService()                                  # used to loop forever, deciding height after height
    try:
        assert node.store.tip_height() == 0
        for expected in range(1, 21):                        # one height per reactor turn
            assert _reactor_turn(clock) >= 1
            assert node.store.tip_height() == expected
        node.stopService()
        # a restart on a WAL with zero-delay block-interval timeouts returns too, and goes on
        node = make_node(config, clock)
        with _deadline(20):
            node.startService()
        tip = node.store.tip_height()
        assert tip == 20
        for _ in range(5):
            _reactor_turn(clock)
        assert node.store.tip_height() == tip + 5
    finally:
        node.stopService()


def test_next_height_messages_received_before_a_commit_stay_in_the_wal_after_its_marker(tmp_path: Path) -> None:
    """A message for h+1 arrives while the node is still at h and is buffered. Replay keeps only what follows
    the last end-of-height marker, so the buffered messages must be in the WAL after h's marker (the engine
    hands them to the WAL when h+1 starts); otherwise a crash at h+1 would lose inputs that may have locked
    this validator."""
    clock = Clock()
    clock.advance(2_000_000_000)
    config = build_config({"datadir": str(tmp_path / "d"), "block_interval": "1"})
    node = make_node(config, clock)
    node.consensus.broadcast = lambda msg: None
    node.startService()
    try:
        run_until(clock, node, 2)
        height = node.store.tip_height() + 1                 # the engine is at `height`, in its block interval
        # A prevote of height+1 signed with the validator's key (as a peer relaying it would deliver it).
        early = Vote(VoteType.PREVOTE, height + 1, 0, b"\x00" * 32, node.key.address).signed(
            node.key, node.genesis.chain_id)
        node.consensus.receive_vote(early)
        assert early in node.consensus.engine.buffered_next_height
        run_until(clock, node, height)                       # `height` commits: its marker is written
        pending = WriteAheadLog(os.path.join(config.datadir, "consensus.wal")).pending()
        assert any(r.kind == WalKind.VOTE and r.data == early.encoded for r in pending)
    finally:
        node.stopService()


def test_a_replayed_timeout_cancels_the_live_timer_it_stands_for(tmp_path: Path) -> None:
    """start_height schedules height 4's block-interval timer; the WAL already holds that timeout (it fired
    before the crash). Replaying it must cancel the live timer, or it would fire a second time and be logged
    again."""
    config, clock, _ = _first_run(tmp_path)
    _crash_state(config, clock, "proposal")                  # its WAL starts with height 4's BLOCK_INTERVAL timeout
    node = make_node(config, clock)
    node.consensus.broadcast = lambda msg: None
    node.startService()
    try:
        live = [c for c in clock.getDelayedCalls()
                if c.active() and c.args[:3] == (4, 0, eng.TimeoutKind.BLOCK_INTERVAL)]
        assert live == []
    finally:
        node.stopService()
