"""The evidence pool against a flood from the remote side, over real TLS on 127.0.0.1 (issue 16, resource bounds).

An equivocating validator can sign any number of distinct conflicting vote pairs; each is valid evidence, and
a relaying peer may deliver all of them. The pool holds one per validator (``ChainApp.add_evidence``), so
the flood costs the target no memory beyond one entry, the equivocator is still jailed by a block, the pool
drains, the relaying peer is not blamed for delivering valid evidence, and the honest observer keeps up.

The equivocator is a "ghost" validator of the genesis with a small stake (no node runs it), so node0 keeps
more than 2/3 of the power and finalizes alone before and after the ghost is jailed.
"""
from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.integration.test_p2p_hostile_tables import connect_ready_plain, frames
from tests.integration.test_p2p_misbehaviour import honest_unaffected
from tests.p2pnet import Net, banned, make_keys, wait_for
from timecoin.ledger.block import Evidence, Vote, VoteType
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.ledger.params import MIN_VALIDATOR_STAKE
from timecoin.wire import messages as m

FLOOD = 300


@pytest_twisted.ensureDeferred
async def test_a_flood_of_one_validators_evidence_holds_one_entry_and_still_jails_it(tmp_path: Path) -> None:
    keys = make_keys(2, seed=90)
    ghost = make_keys(1, seed=91)[0]
    extra = (GenesisAccount(ghost.address, 0, MIN_VALIDATOR_STAKE, ghost.public_key),)
    genesis = Genesis.for_validators([keys[0].public_key], "timecoin-caps-test", extra=extra)
    net = Net(tmp_path, 1, observers=1, genesis=genesis, keys=keys)
    await net.start()
    try:
        target = net.nodes[0]
        await wait_for(lambda: min(net.heights()) >= 2 and len(target.p2p.connections) == 1, 15.0,
                       "pair connected and growing")
        assert ghost.address in target.store.validator_set(1).by_address
        relay = make_keys(1, seed=92)[0]
        peer = await connect_ready_plain(relay, target)
        conn = target.p2p.connections[relay.peer_id]
        chain_id = genesis.chain_id
        flood = []
        for i in range(FLOOD):
            a, b = (Vote(VoteType.PREVOTE, 1, 0, bytes([side]) + i.to_bytes(4, "big") + bytes(27),
                         ghost.address).signed(ghost, chain_id) for side in (1, 2))
            flood.append(m.encode_message(m.MsgType.EVIDENCE, Evidence.of(a, b).to_wire()))
        app = target.consensus.app
        held: list[int] = []
        add = app.add_evidence

        def counting_add(ev: Evidence) -> bool:        # the pool's size right after each piece it was offered
            added = add(ev)
            held.append(sum(1 for e in app.pending_evidence.values() if e.validator == ghost.address))
            return added

        app.add_evidence = counting_add                 # type: ignore[method-assign]
        peer.transport.write(frames(flood))
        await wait_for(lambda: conn.messages_in >= FLOOD or peer.lost.called, 30.0, "the flood handled")
        assert len(held) >= FLOOD
        assert max(held) <= 1, f"{max(held)} pieces of one validator's evidence held"
        assert target.p2p.accepted[m.MsgType.EVIDENCE] >= FLOOD      # each was valid, and judged
        await wait_for(lambda: bool(target.store.get_account(ghost.address).jailed), 15.0, "the ghost jailed")
        await wait_for(lambda: not app.pending_evidence, 10.0, "the pool drained")
        assert not banned(target, relay) and relay.peer_id in target.p2p.connections
        await honest_unaffected(net)
    finally:
        await net.stop()

