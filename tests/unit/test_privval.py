"""Never double-sign (SPEC §4): the guard's record lives in a real LMDB store and survives reopening and
SIGKILL; a validator restarted mid-height from its WAL resumes the height (round and lock) and signs
nothing that conflicts with what it signed before the crash.

Run as a script, this module is the child process of the crash tests (see :func:`_child`).
"""
from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.simnet import SimNet, SimNode
from timecoin import crypto
from timecoin.consensus import engine as eng
from timecoin.consensus.privval import KeyValue, PrivValidator, proposal_from_record, vote_from_record
from timecoin.ledger.block import NIL_HASH, Block, Header, Proposal, Vote, VoteType
from timecoin.store import Store

CHAIN = "timecoin-privval-test"
KEY = crypto.PrivateKey(bytes.fromhex("5a" * 32))
A = b"\xaa" * 32
B = b"\xbb" * 32
REPO = Path(__file__).resolve().parents[2]


def _vote(vtype: VoteType, h: int, r: int, block_hash: bytes) -> Vote:
    return Vote(vtype, h, r, block_hash, KEY.address)


def _verify(v: Vote) -> None:
    v.verify_signature(KEY.public_key, CHAIN)


# -- the guard over LMDB -----------------------------------------------------------------------------------
def test_guard_survives_reopening_the_store(tmp_path: Path) -> None:
    path = str(tmp_path / "pv")
    with Store(path) as store:
        pv = PrivValidator(KEY, CHAIN, store)
        assert pv.last_signed() is None
        signed_a = pv.sign_vote(_vote(VoteType.PREVOTE, 5, 2, A))
        assert signed_a is not None
        _verify(signed_a)
    with Store(path) as store:
        pv = PrivValidator(KEY, CHAIN, store)
        h, r, step, payload, sig = pv.last_signed()
        assert (h, r, step, sig) == (5, 2, 2, signed_a.signature) and payload == signed_a.signing_payload()
        assert pv.sign_vote(_vote(VoteType.PREVOTE, 5, 2, B)) is None          # conflicting: refused
        assert pv.sign_vote(_vote(VoteType.PREVOTE, 5, 2, NIL_HASH)) is None   # nil conflicts with A too
        again = pv.sign_vote(_vote(VoteType.PREVOTE, 5, 2, A))                 # identical: the same signature
        assert again == signed_a
        assert pv.sign_vote(_vote(VoteType.PREVOTE, 5, 1, A)) is None          # lower round
        assert pv.sign_vote(_vote(VoteType.PRECOMMIT, 4, 9, A)) is None        # lower height
        assert pv.sign_proposal(Proposal(5, 2, -1, KEY.address, _block(5))) is None   # lower step
        assert pv.last_signed()[:3] == (5, 2, 2)                                # refusals record nothing
        pc = pv.sign_vote(_vote(VoteType.PRECOMMIT, 5, 2, B))                   # higher step: allowed
        assert pc is not None
        _verify(pc)
        assert pv.sign_vote(_vote(VoteType.PREVOTE, 5, 2, A)) is None          # now below the last signature
    with Store(path) as store:
        pv = PrivValidator(KEY, CHAIN, store)
        assert pv.last_signed()[:3] == (5, 2, 3)
        assert pv.sign_vote(_vote(VoteType.PRECOMMIT, 5, 2, A)) is None
        nxt = pv.sign_vote(_vote(VoteType.PREVOTE, 5, 3, A))                    # next round
        assert nxt is not None and pv.sign_vote(_vote(VoteType.PREVOTE, 6, 0, B)) is not None


def _block(height: int, timestamp: int = 1000) -> Block:
    return Block(Header(height, 0, bytes(32), timestamp, KEY.address, bytes(32), bytes(32), bytes(32), bytes(32)))


def test_proposals_are_guarded_too(tmp_path: Path) -> None:
    with Store(str(tmp_path / "pv")) as store:
        pv = PrivValidator(KEY, CHAIN, store)
        p = pv.sign_proposal(Proposal(3, 0, -1, b"\x00" * 20, _block(3)))
        assert p is not None and p.proposer == KEY.address                      # signs as itself
        p.verify_signature(KEY.public_key, CHAIN)
        assert pv.sign_proposal(Proposal(3, 0, -1, KEY.address, _block(3, timestamp=1001))) is None
        assert pv.sign_proposal(Proposal(3, 0, -1, KEY.address, _block(3))) == p
        assert pv.sign_vote(_vote(VoteType.PREVOTE, 3, 0, p.block.hash)) is not None   # prevote after proposal


def test_signed_messages_rebuild_from_the_guard_record(tmp_path: Path) -> None:
    """After a crash between the guard's commit and the WAL: a vote is rebuilt from the record alone; a
    proposal (whose sign bytes hold only the block hash) needs its unsigned copy, which the service logs
    before signing."""
    with Store(str(tmp_path / "pv")) as store:
        pv = PrivValidator(KEY, CHAIN, store)
        unsigned = Proposal(3, 0, -1, KEY.address, _block(3))
        assert pv.would_sign_proposal(unsigned)
        p = pv.sign_proposal(unsigned)
        _, _, step, payload, sig = pv.last_signed()
        assert vote_from_record(step, payload, sig) is None
        other = Proposal(3, 0, -1, KEY.address, _block(3, timestamp=1001))
        assert proposal_from_record(step, payload, sig, [other]) is None      # another block: not it
        assert proposal_from_record(step, payload, sig, [other, unsigned]) == p
        assert pv.would_sign_proposal(unsigned) and not pv.would_sign_proposal(other)
        for vtype in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            v = pv.sign_vote(_vote(vtype, 3, 0, p.block.hash))
            _, _, step, payload, sig = pv.last_signed()
            assert vote_from_record(step, payload, sig) == v
            assert proposal_from_record(step, payload, sig, [unsigned]) is None
        assert not pv.would_sign_proposal(unsigned)                            # below the last signature


def test_vote_is_signed_under_its_own_address() -> None:
    """Whatever validator field it is given, the guard signs as its key (no signing for others)."""
    kv: dict[tuple[str, bytes], bytes] = {}

    class Dict:
        def get(self, db: str, key: bytes) -> bytes | None:
            return kv.get((db, key))

        def put(self, db: str, key: bytes, value: bytes) -> None:
            kv[(db, key)] = value

    pv = PrivValidator(KEY, CHAIN, Dict())
    v = pv.sign_vote(Vote(VoteType.PREVOTE, 1, 0, A, b"\x01" * 20))
    assert v is not None and v.validator == KEY.address
    _verify(v)
    assert ("privval", b"last_signed") in kv


# -- SIGKILL right after the guard's commit ------------------------------------------------------------------
def _child(argv: list[str]) -> None:
    """``sign PATH``: sign a prevote for A at 7/1, print ``signed`` (the guard has committed), then "send"
    after a pause (the test kills us first). ``stream PATH``: sign prevotes at heights 1, 2, ... printing
    each height after sign() returns, until killed."""
    mode, path = argv[0], argv[1]
    store = Store(path)
    pv = PrivValidator(KEY, CHAIN, store)
    if mode == "sign":
        vote = pv.sign_vote(_vote(VoteType.PREVOTE, 7, 1, A))
        print("signed", flush=True)
        time.sleep(30)                                       # the send step, never reached
        print(vote.signature.hex() if vote else "refused", flush=True)
        return
    h = 0
    while True:
        h += 1
        if pv.sign_vote(_vote(VoteType.PREVOTE, h, 0, A)) is None:
            print("refused", flush=True)
            return
        print(h, flush=True)


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=str(REPO))


def _readline(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child said nothing in time"
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"child exited: {proc.wait(5)} {proc.stderr.read() if proc.stderr else ''}")
    return line.strip()


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def test_sigkill_after_signing_before_sending_then_conflict_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "pv")
    proc = _spawn("sign", path)
    try:
        assert _readline(proc) == "signed"
    finally:
        _kill(proc)
    with Store(path) as store:
        pv = PrivValidator(KEY, CHAIN, store)
        h, r, step, payload, sig = pv.last_signed()
        assert (h, r, step) == (7, 1, 2)
        assert crypto.verify(KEY.public_key, crypto.TAG_VOTE, CHAIN, payload, sig)
        assert pv.sign_vote(_vote(VoteType.PREVOTE, 7, 1, B)) is None
        assert pv.sign_vote(_vote(VoteType.PREVOTE, 7, 1, NIL_HASH)) is None
        assert pv.sign_vote(_vote(VoteType.PREVOTE, 7, 0, B)) is None
        resent = pv.sign_vote(_vote(VoteType.PREVOTE, 7, 1, A))           # the unsent vote can still go out
        assert resent is not None and resent.signature == sig


def test_sigkill_while_signing_a_stream_leaves_a_consistent_record(tmp_path: Path) -> None:
    path = str(tmp_path / "pv")
    proc = _spawn("stream", path)
    try:
        for expected in range(1, 31):
            assert _readline(proc) == str(expected)
    finally:
        _kill(proc)                                          # somewhere in or between later signatures
    with Store(path) as store:
        pv = PrivValidator(KEY, CHAIN, store)
        h, r, step, payload, sig = pv.last_signed()
        assert h >= 30 and (r, step) == (0, 2)
        assert payload == _vote(VoteType.PREVOTE, h, 0, A).signing_payload()
        assert crypto.verify(KEY.public_key, crypto.TAG_VOTE, CHAIN, payload, sig)
        for hh in (h, h - 1, 1):
            assert pv.sign_vote(_vote(VoteType.PREVOTE, hh, 0, B)) is None
        assert pv.sign_vote(_vote(VoteType.PREVOTE, h + 1, 0, B)) is not None


# -- engine restart from the WAL (no ConsensusService) --------------------------------------------------------
def _lmdb_signers(tmp_path: Path) -> tuple[Callable[[int], KeyValue], dict[int, Store]]:
    """Each node's guard in its own LMDB store; asking again (a restart) closes and reopens it."""
    stores: dict[int, Store] = {}

    def kv(i: int) -> KeyValue:
        old = stores.get(i)
        if old is not None:
            old.close()
        stores[i] = Store(str(tmp_path / f"privval{i}"))
        return stores[i]
    return kv, stores


class Hand:
    """One validator (proposer of none of rounds 0..2) driven by hand; the others' messages are signed
    directly with their keys."""

    def __init__(self, tmp_path: Path) -> None:
        self.kv, self.stores = _lmdb_signers(tmp_path)
        self.net = SimNet(4, wal_dir=str(tmp_path), signer_kv=self.kv)
        app = self.net.nodes[0].app
        self.proposers = [app.proposer(1, r) for r in range(3)]
        self.me = next(x for x in self.net.nodes if x.address not in self.proposers)
        self.others = [x for x in self.net.nodes if x is not self.me]
        self.net.start_node(self.me)

    def proposal(self, round_: int, timestamp_ms: int | None = None) -> Proposal:
        node = self.net.node_of(self.proposers[round_])
        block = node.app.propose(1, round_, timestamp_ms or round_ + 1)     # ms: timely at the simulated times used
        return Proposal(1, round_, -1, node.address, block).signed(node.key, self.net.chain_id)

    def vote(self, node: SimNode, vtype: VoteType, round_: int, block_hash: bytes) -> Vote:
        return Vote(vtype, 1, round_, block_hash, node.address).signed(node.key, self.net.chain_id)

    def my_votes(self, actions: list[eng.Action] | None) -> list[Vote]:
        return [a.vote for a in actions or [] if isinstance(a, eng.BroadcastVote)]


def test_restart_from_wal_resumes_round_and_lock(tmp_path: Path) -> None:
    d = Hand(tmp_path)
    net, me = d.net, d.me
    p0 = d.proposal(0)
    assert d.my_votes(net.deliver(me, p0)) == [d.vote(me, VoteType.PREVOTE, 0, p0.block.hash)]
    for x in d.others[:2]:
        net.deliver(me, d.vote(x, VoteType.PREVOTE, 0, p0.block.hash))
    assert me.engine.locked_round == 0
    for x in d.others:
        net.deliver(me, d.vote(x, VoteType.PRECOMMIT, 0, NIL_HASH))
    net.timeout(me, 1, 0, eng.TimeoutKind.PRECOMMIT)
    assert (me.engine.round, me.engine.step) == (1, eng.Step.PROPOSE)
    before = list(me.signed)
    assert [(v.type, v.block_hash) for v in before] == [(VoteType.PREVOTE, p0.block.hash),
                                                        (VoteType.PRECOMMIT, p0.block.hash)]

    net.crash(me)
    me = net.restart(me)                                     # fresh engine + guard on reopened LMDB, WAL replayed
    e = me.engine
    assert (e.height, e.round, e.step) == (1, 1, eng.Step.PROPOSE)
    assert e.locked_value == p0.block and e.locked_round == 0
    assert e.valid_value == p0.block and e.valid_round == 0
    assert all(m in before for m in me.signed[len(before):]), "replay produced a different signature"
    # round 1 brings a fresh, different block: the restored lock makes us prevote nil
    p1 = d.proposal(1)
    assert d.my_votes(net.deliver(me, p1)) == [d.vote(me, VoteType.PREVOTE, 1, NIL_HASH)]
    assert not any(x.evidence for x in net.nodes)


@pytest.mark.parametrize("replay", [True, False])
def test_restart_never_signs_a_conflicting_prevote(tmp_path: Path, replay: bool) -> None:
    """Crash right after prevoting; the byzantine proposer then offers a different block for that round.
    With the WAL the engine re-derives its prevote (same signature) and refuses the second proposal; without
    the WAL the engine would prevote it, and the guard in LMDB refuses to sign."""
    d = Hand(tmp_path)
    net, me = d.net, d.me
    p0 = d.proposal(0)
    first = d.my_votes(net.deliver(me, p0))
    assert first == [d.vote(me, VoteType.PREVOTE, 0, p0.block.hash)]
    net.crash(me)
    me = net.restart(me, replay=replay)
    before = len(me.signed)
    p0_other = d.proposal(0, timestamp_ms=7777)
    assert p0_other.block.hash != p0.block.hash
    out = net.deliver(me, p0_other)
    assert d.my_votes(out) == []
    if replay:
        assert out is None and me.engine.proposals[0] == p0       # refused: the round already has a proposal
        assert me.signed[before - 1:] == first                     # the replay re-sent the identical prevote
    else:
        assert out is not None and me.engine.step == eng.Step.PREVOTE   # the engine tried; the guard said no
    assert me.signer.last_signed()[:3] == (1, 0, 2)
    assert me.signer.last_signed()[4] == first[0].signature


def test_random_crashes_and_restarts_keep_agreement_and_never_double_sign(tmp_path: Path) -> None:
    """4 validators with WAL and LMDB guards; every 0.25 s one crashes and restarts 0.1 s later."""
    kv, stores = _lmdb_signers(tmp_path)
    net = SimNet(4, seed=11, wal_dir=str(tmp_path), signer_kv=kv, drop=0.05, duplicate=0.05,
                 latency=(0.001, 0.02), gossip_interval=0.02)
    chaos = random.Random(11)
    restarts: list[int] = []

    def crash_one() -> None:
        victim = chaos.choice([x for x in net.nodes if x.online])
        net.crash(victim)
        net.at(0.1, lambda: restarts.append(net.restart(victim).index))
        net.at(0.25, crash_one)

    net.start()
    net.at(0.05, crash_one)
    assert net.run_until_height(40, max_time=60.0, max_events=400_000), [x.height for x in net.nodes]
    net.assert_agreement()
    assert len(restarts) >= 5
    assert not any(x.evidence for x in net.nodes), "someone saw an equivocation"
    seen: dict[tuple[bytes, int, int, int], set[bytes]] = {}
    for x in net.nodes:
        for m in x.signed:
            if isinstance(m, Vote):
                seen.setdefault((m.validator, m.height, m.round, int(m.type)), set()).add(m.signature)
    assert seen and all(len(sigs) == 1 for sigs in seen.values())
    for s in stores.values():
        s.close()


if __name__ == "__main__":
    _child(sys.argv[1:])
