"""Resource caps of the consensus side that a remote party can push on (issue 16, "Resource bounds").

* The evidence pool (``ChainApp.pending_evidence``): an equivocating validator can sign any number of
  distinct conflicting pairs, each a distinct, valid piece of evidence. The pool keeps one per validator
  (the newest height) and at most ``MAX_PENDING_EVIDENCE`` in all, forgets what no block can take any
  more -- and the validator is still jailed.
* The proposer priority cache (``ChainApp._prio_cache``): one entry per committed height, so it is
  bounded by ``MAX_CACHED_PRIORITIES`` (a slow leak, not a remote one, found while making this list).
* The proposer cache (``Engine._proposers``): votes for ever new rounds (up to ``MAX_ROUND_AHEAD``) and a
  long stall fill it; it starts again at ``MAX_CACHED_PROPOSERS``.
"""
from __future__ import annotations

import pytest

from tests.simnet import SimNet, SimNode, conflicting_vote, is_prevote
from timecoin.consensus import app as chain_app
from timecoin.consensus import engine as eng
from timecoin.crypto import PrivateKey
from timecoin.ledger.block import Evidence, Proposal, Vote, VoteType


def pair(key_index: int, height: int, salt: int, chain_id: str, keys: list[PrivateKey]) -> Evidence:
    """A valid equivocation of validator ``key_index`` at ``height``: two prevotes for made-up blocks."""
    key = keys[key_index]
    a = Vote(VoteType.PREVOTE, height, 0, bytes([1, salt % 256, salt // 256]) + bytes(29), key.address)
    b = Vote(VoteType.PREVOTE, height, 0, bytes([2, salt % 256, salt // 256]) + bytes(29), key.address)
    return Evidence.of(a.signed(key, chain_id), b.signed(key, chain_id))


def test_a_flood_of_one_validators_evidence_holds_one_piece_the_newest() -> None:
    net = SimNet(4, seed=1)
    app = net.nodes[0].app
    keys = net.keys
    assert app.add_evidence(pair(3, 1, 0, net.chain_id, keys))
    refused = [app.add_evidence(pair(3, 1, s, net.chain_id, keys)) for s in range(1, 500)]
    assert not any(refused)                                          # same height: adds nothing, not re-gossiped
    assert len(app.pending_evidence) == 1
    newer = pair(3, 2, 0, net.chain_id, keys)
    assert app.add_evidence(newer)                                   # a newer height replaces it
    assert list(app.pending_evidence) == [newer.hash]
    assert app.add_evidence(pair(2, 1, 0, net.chain_id, keys))      # another validator has its own slot
    assert len(app.pending_evidence) == 2


def test_the_evidence_pool_refuses_newcomers_at_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain_app, "MAX_PENDING_EVIDENCE", 2)
    net = SimNet(4, seed=1)
    app = net.nodes[0].app
    assert app.add_evidence(pair(0, 1, 0, net.chain_id, net.keys))
    assert app.add_evidence(pair(1, 1, 0, net.chain_id, net.keys))
    assert not app.add_evidence(pair(2, 1, 0, net.chain_id, net.keys))
    assert len(app.pending_evidence) == 2
    assert app.add_evidence(pair(1, 2, 0, net.chain_id, net.keys))   # a held validator's newer one still replaces


def test_evidence_no_block_can_take_is_forgotten_at_commit() -> None:
    net = SimNet(4, seed=1)
    app = net.nodes[0].app
    old = pair(3, 1, 0, net.chain_id, net.keys)
    app.add_evidence(old)
    app.prune_evidence(1 + app.params.evidence_max_age)             # still admissible at that height
    assert old.hash in app.pending_evidence
    app.prune_evidence(2 + app.params.evidence_max_age)             # too old for any block now
    assert not app.pending_evidence
    assert app.add_evidence(pair(3, 3, 0, net.chain_id, net.keys))  # and the validator's slot is free again


def test_an_equivocator_flooding_evidence_is_still_jailed_and_the_pools_drain() -> None:
    net = SimNet(4, seed=4, latency=(0.001, 0.01))
    byz = net.nodes[-1]
    flooded: list[bool] = []

    def equivocate(node: SimNode, msg: Proposal | Vote) -> list[Proposal | Vote]:
        # at height 2 the byzantine validator signs a conflicting prevote, and a flood of distinct evidence
        # of itself reaches every honest node's pool (as a relaying peer would deliver it)
        if node is byz and is_prevote(msg) and msg.height == 2 and not flooded:
            flooded.append(True)
            for other in net.nodes[:-1]:
                for s in range(200):
                    other.app.add_evidence(pair(3, 2, s, net.chain_id, net.keys))
                assert len(other.app.pending_evidence) == 1
            return [conflicting_vote(byz.key, msg, net.chain_id)]
        return []

    net.hooks.append(equivocate)
    net.start()
    assert net.run_until_height(6, max_time=10.0)
    net.assert_agreement()
    honest = net.nodes[:-1]
    assert flooded and all(x.store.get_account(byz.address).jailed for x in honest)
    assert all(not x.app.pending_evidence for x in honest)          # jailed: nothing left to hold


def test_the_proposer_cache_starts_again_at_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eng, "MAX_CACHED_PROPOSERS", 8)
    net = SimNet(4, seed=1)
    engine = net.nodes[0].engine
    for r in range(40):                                              # rounds a stall (or votes far ahead) reach
        engine._proposer(1, r)
        assert len(engine._proposers) <= 8
    assert engine._proposer(1, 39) == net.nodes[0].app.proposer(1, 39)   # still answers right


def test_the_proposer_priority_cache_stays_bounded_as_heights_are_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain_app, "MAX_CACHED_PRIORITIES", 8)
    net = SimNet(4, seed=2, latency=(0.001, 0.01))
    net.start()
    assert net.run_until_height(30, max_time=60.0)
    net.assert_agreement()                                            # the rotation is still right for all
    assert all(len(x.app._prio_cache) <= 8 for x in net.nodes)
