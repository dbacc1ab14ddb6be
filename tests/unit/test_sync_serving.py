"""Sync serving without re-encoding: stored block bytes spliced into the BLOCKS answer (issue 15).

The stored bytes are the canonical encodings, so the spliced envelope must equal, byte for byte, what
encoding the decoded blocks gives -- and decode back to the same blocks. ``Store.get_raw_blocks`` reads a
range bounded by count, bytes (at least one block) and the chain's end.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from timecoin.ledger.block import Block, CommitCertificate
from timecoin.p2p.service import _blocks_payload
from timecoin.sim.chaingen import ChainBuilder, build_chain, make_genesis
from timecoin.wire import messages as m

BLOCKS = 12


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainBuilder]:
    spec = make_genesis(validators=4, chain_id="timecoin-serving", funded=2)
    builder = build_chain(str(tmp_path_factory.mktemp("serving") / "chain"), spec, BLOCKS // 2)
    builder.build(BLOCKS // 2, txs_per_block=15)                      # empty blocks, then blocks of txs
    yield builder
    builder.store.close()


@pytest.mark.parametrize(("start", "count"), [(1, BLOCKS), (5, 3), (BLOCKS, 1), (3, 0)])
def test_spliced_blocks_answer_equals_the_encoded_one(chain: ChainBuilder, start: int, count: int) -> None:
    raw = chain.store.get_raw_blocks(start, count, 1 << 30)
    decoded = chain.store.get_blocks(start, count)
    assert len(raw) == len(decoded) == min(count, BLOCKS - start + 1)
    body = {"blocks": [{"block": b.to_wire(), "certificate": c.to_wire()} for b, c in decoded]}
    payload = _blocks_payload(77, raw)
    assert payload == m.encode_message(m.MsgType.BLOCKS, body, 77)
    msg_type, rid, got = m.decode_message(payload)
    assert (msg_type, rid) == (m.MsgType.BLOCKS, 77)
    assert [(Block.from_wire(i.block).hash, CommitCertificate.from_wire(i.certificate).encoded) for i in got.blocks] \
        == [(b.hash, c.encoded) for b, c in decoded]


def test_raw_ranges_stop_at_the_byte_bound_with_at_least_one_block(chain: ChainBuilder) -> None:
    sizes = [len(b) + len(c) for b, c in chain.store.get_raw_blocks(1, BLOCKS, 1 << 30)]
    assert len(sizes) == BLOCKS
    assert len(chain.store.get_raw_blocks(1, BLOCKS, 1)) == 1                     # at least one
    bound = sum(sizes[:5]) + 5 * 8
    assert len(chain.store.get_raw_blocks(1, BLOCKS, bound, overhead=8)) == 5
    assert len(chain.store.get_raw_blocks(1, BLOCKS, bound - 1, overhead=8)) == 4
    assert chain.store.get_raw_blocks(BLOCKS + 1, 10, 1 << 30) == []              # beyond the tip
    assert len(chain.store.get_raw_blocks(BLOCKS - 1, 10, 1 << 30)) == 2          # up to the tip
