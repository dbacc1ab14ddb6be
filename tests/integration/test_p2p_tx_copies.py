"""Copies of a relayed tx are dropped before their envelope is decoded (issue 15, the load path).

Under load every node hears each tx from every peer that relays it, so most tx frames are copies; a
py-spy profile of a loaded 4-validator testnet showed the codec's parse-and-rebuild of those frames as
a large share of a node's CPU. ``P2PService.precheck_duplicate`` now hashes a TX frame's body and drops
a copy it has seen, as it did for votes: counted as a duplicate, never decoded, never relayed again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.integration.test_p2p_gossip import funded_line, funded_net, known, submit, transfers
from tests.p2pnet import connect_ready, make_keys, sleep, wait_for
from timecoin.wire import messages as m


@pytest_twisted.ensureDeferred
async def test_tx_copies_are_not_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net, funded = funded_net(tmp_path, senders=2)
    try:
        await funded_line(net)
        validator, sender, _far = net.nodes
        txs = transfers(net.genesis, funded, per_sender=3)
        ids = submit(sender, txs)
        await wait_for(lambda: known(validator, ids) == ids, 20.0, "every tx at the validator")
        decoded: list[int] = []
        real = m.decode_message

        def counting(payload: bytes) -> Any:
            if payload and payload[0] == int(m.MsgType.TX):
                decoded.append(1)
            return real(payload)

        monkeypatch.setattr(m, "decode_message", counting)
        relayed = validator.p2p.relayed[m.MsgType.TX]
        peer = await connect_ready(make_keys(1, seed=53)[0], validator)
        for tx in txs:
            peer.send(m.MsgType.TX, tx.to_wire())
        await wait_for(lambda: validator.p2p.duplicates[m.MsgType.TX] == len(txs), 10.0, "copies counted")
        await sleep(0.2)
        assert decoded == []                                   # dropped at the seen-cache, before decoding
        assert validator.p2p.relayed[m.MsgType.TX] == relayed  # and not relayed again
        assert validator.p2p.accepted[m.MsgType.TX] == len(txs)
    finally:
        await net.stop()
