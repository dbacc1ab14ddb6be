"""What a relay one height behind lets through (issue 11, finding 4; SPEC §5 "a relay checks all it can").

A node at height h buffers the next height's messages and relays them. A peer already at h+1 judges the same
message with ``on_proposal``/``on_vote`` and charges whoever delivered it. Every refusal there that costs more
than a race-prone point must already be a refusal in the buffer (``Engine._defer``), or an honest relay is
charged -- and banned, for a provable fault -- for a message it could have refused and did not.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from tests.simnet import FAST, SimNet, make_keys
from timecoin import crypto
from timecoin.consensus import engine as eng
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.block import NIL_HASH, Block, Proposal, QuorumProof, Vote, VoteType
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.p2p import peers

PRE, PC = VoteType.PREVOTE, VoteType.PRECOMMIT


class Heights:
    """Two engines of one 4-validator net: ``behind`` deciding height 1, ``ahead`` deciding height 2."""

    def __init__(self) -> None:
        self.net = SimNet(4)
        self.chain = self.net.chain_id
        nodes = self.net.nodes
        self.behind = nodes[0].engine
        self.behind.start_height(1, 0.0, 0.0)
        self.ahead = eng.Engine(nodes[1].app, None, FAST)
        self.ahead.start_height(1, 0.0, 0.0)
        proposer = self.net.node_of(nodes[1].app.proposer(1, 0))
        block = proposer.app.propose(1, 0, 1)
        out = self.ahead.on_proposal(Proposal(1, 0, -1, proposer.address, block).signed(proposer.key, self.chain),
                                     0.0)
        for x in nodes:
            out += self.ahead.on_vote(Vote(PC, 1, 0, block.hash, x.address).signed(x.key, self.chain), 0.0)
        commit = next(a for a in out if isinstance(a, eng.CommitBlock))
        for x in nodes:
            x.app.commit(commit.block, commit.certificate)
        self.ahead.start_height(2, 0.0, commit.block.header.timestamp / 1000)
        assert self.behind.height == 1 and self.ahead.height == 2

    def key(self, address: bytes) -> crypto.PrivateKey:
        return self.net.node_of(address).key

    def proposal(self, round_: int = 0, pol_round: int = -1, signer: bytes | None = None,
                 block: Block | None = None) -> Proposal:
        proposer = self.net.nodes[1].app.proposer(2, round_)
        node = self.net.node_of(proposer)
        block = block or node.app.propose(2, round_, 10)
        return Proposal(2, round_, pol_round, proposer, block).signed(self.key(signer or proposer), self.chain)


def _judge(engine: eng.Engine, msg: Proposal | Vote) -> Reason | None:
    try:
        if isinstance(msg, Proposal):
            engine.on_proposal(msg, 0.0)
        else:
            engine.on_vote(msg, 0.0)
    except ValidationError as exc:
        return exc.reason
    return None


def _faults(w: Heights) -> dict[str, Proposal | Vote]:
    """Height-2 messages with a fault of their own (the proposal's or vote's signer, or its body)."""
    good = w.proposal()
    not_proposer = next(x.address for x in w.net.nodes if x.address != good.proposer)
    outsider = make_keys(1, "outsider")[0]
    tx = Transaction.create(w.net.nodes[0].key, TxKind.TRANSFER, w.chain, 0, 10_000, 5, outsider.address)
    height_1 = w.net.nodes[0].store.get_blocks(1, 1)[0][0]
    voter = w.net.nodes[2]
    return {
        "block_for_another_height": w.proposal(block=height_1),
        "block_for_the_height_after": w.proposal(block=replace(good.block, header=replace(good.block.header,
                                                                                            height=3))),
        "pol_round_equal_to_round": w.proposal(pol_round=0),
        "pol_round_below_minus_one": w.proposal(round_=1, pol_round=-2),
        "not_the_proposer_of_its_round": replace(w.proposal(signer=not_proposer), proposer=not_proposer).signed(
            w.key(not_proposer), w.chain),
        "proposer_not_a_validator": replace(good, proposer=outsider.address).signed(outsider, w.chain),
        "body_not_the_headers": replace(good, block=replace(good.block, txs=(tx,))),
        "proposal_signature_bad": replace(good, signature=bytes(64)),
        "proposal_round_too_far": w.proposal(round_=eng.MAX_ROUND_AHEAD + 1),
        "vote_by_an_outsider": Vote(PRE, 2, 0, NIL_HASH, outsider.address).signed(outsider, w.chain),
        "vote_signature_forged": replace(Vote(PRE, 2, 0, NIL_HASH, voter.address).signed(outsider, w.chain),
                                         validator=voter.address),
        "vote_of_another_chain": Vote(PRE, 2, 0, NIL_HASH, voter.address).signed(voter.key, "another-chain"),
    }


FAULTS = list(_faults(Heights()))


def _costly(reason: Reason | None) -> bool:
    """Would the P2P layer charge the deliverer more than a capped race-prone point for this refusal?"""
    event = peers.event_for_reason(reason) if reason is not None else None
    return event is not None and event not in peers.RACE_PRONE


@pytest.mark.parametrize("fault", FAULTS)
def test_what_the_next_height_charges_for_the_relay_one_height_behind_refuses(fault: str) -> None:
    w = Heights()
    msg = _faults(w)[fault]
    at_its_height = _judge(w.ahead, msg)
    assert at_its_height is not None, f"{fault}: accepted at its own height"
    one_behind = _judge(w.behind, msg)
    if _costly(at_its_height):
        # provable: the buffer must refuse it, so an honest relay never delivers it (and never pays for it)
        assert one_behind is not None, f"{fault}: buffered and relayed, then charged {at_its_height.name}"
        assert msg not in w.behind.buffered_next_height
    else:
        assert at_its_height in (Reason.WRONG_ROUND, Reason.NOT_VALIDATOR, Reason.WRONG_HEIGHT, Reason.DUPLICATE)


def test_a_genuine_next_height_proposal_is_buffered_and_then_taken() -> None:
    """The checks above refuse faults, not the genuine proposal (and its round's proposer is known one height
    ahead: the buffer and the height agree on it)."""
    w = Heights()
    good = w.proposal(round_=2)
    assert _judge(w.behind, good) is None and good in w.behind.buffered_next_height
    assert _judge(w.ahead, good) is None and w.ahead.proposals[2] == good


# -- Engine.precheck: what the P2P layer may refuse before decoding a body (issue 11, finding 7) -----------
def test_precheck_refuses_only_what_the_engine_refuses_and_for_the_same_reason() -> None:
    """``precheck`` sees a message's height, round and signer only. Whenever it answers, judging the whole
    message gives that very refusal; so dropping a frame on its answer never loses a message the engine
    would have taken (and charges what the engine's refusal would)."""
    w = Heights()
    outsider = make_keys(1, "outsider")[0]
    signers = [x.key for x in w.net.nodes] + [outsider]
    rounds = [0, 1, 3, eng.MAX_ROUND_AHEAD, eng.MAX_ROUND_AHEAD + 1, eng.MAX_ROUND_AHEAD + 7]
    answered = set()
    for engine in (w.behind, w.ahead):
        for height in range(4):
            for round_ in rounds:
                for key in signers:
                    block = w.net.nodes[0].store.get_blocks(1, 1)[0][0]
                    block = replace(block, header=replace(block.header, height=height))
                    msgs: list[Proposal | Vote] = [
                        Proposal(height, round_, -1, key.address, block).signed(key, w.chain),
                        Vote(PRE, height, round_, NIL_HASH, key.address).signed(key, w.chain)]
                    for msg in msgs:
                        signer = msg.proposer if isinstance(msg, Proposal) else msg.validator
                        said = engine.precheck(type(msg), msg.height, msg.round, signer)
                        judged = _judge(engine, msg)
                        if said is not None:
                            answered.add(said)
                            assert judged == said, (type(msg).__name__, height, round_, said, judged)
    assert answered == {Reason.WRONG_HEIGHT, Reason.WRONG_ROUND, Reason.NOT_VALIDATOR}


def test_precheck_of_quorum_proofs_and_of_the_height_just_decided() -> None:
    """A quorum proof is judged at its height only (``on_quorum``); a message of a height whose decision is
    in (step COMMITTED) is dropped by the engine, so precheck says WRONG_HEIGHT for it too."""
    w = Heights()
    assert w.ahead.precheck(QuorumProof, 2, 0, None) is None
    assert w.ahead.precheck(QuorumProof, 3, 0, None) == Reason.WRONG_HEIGHT
    assert w.ahead.precheck(QuorumProof, 2, eng.MAX_ROUND_AHEAD + 1, None) == Reason.WRONG_ROUND
    w.ahead.step = eng.Step.COMMITTED
    voter = w.net.nodes[2]
    assert w.ahead.precheck(Vote, 2, 0, voter.address) == Reason.WRONG_HEIGHT
