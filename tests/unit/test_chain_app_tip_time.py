"""ChainApp.prev_block_time_ms remembers the tip's timestamp by the tip's hash (issue 15, load path).

The tip can hold 1,000 txs, and the timestamp was read by decoding it for every proposal and every
validated block. These tests pin both halves: the block is decoded at most once per tip, and any change
of tip (commit, rollback, another writer) is seen at once.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.store_crash_writer import ChainBuilder, initialize, make_genesis
from timecoin.consensus.app import ChainApp
from timecoin.ledger.genesis import Genesis
from timecoin.store import Store


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture
def store(tmp_path: Path, genesis: Genesis) -> Iterator[Store]:
    s = Store(str(tmp_path / "chain"))
    initialize(s, genesis)
    yield s
    s.close()


def _commit(app: ChainApp, store: Store, builder: ChainBuilder, n_txs: int = 2) -> None:
    height = store.tip_height() + 1
    block, _result, cert = builder.block(store, height, store.tip_hash(), builder.transfers(store, height, n_txs))
    app.commit(block, cert)


def _counting(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    decoded: list[int] = []
    real = store.get_block

    def get_block(height: int) -> Any:
        decoded.append(height)
        return real(height)

    monkeypatch.setattr(store, "get_block", get_block)
    return decoded


def test_genesis_time_at_height_zero(store: Store, genesis: Genesis) -> None:
    assert ChainApp(store, genesis.params, None, genesis.genesis_time).prev_block_time_ms() == genesis.genesis_time


def test_tip_time_is_not_decoded_again(store: Store, genesis: Genesis, monkeypatch: pytest.MonkeyPatch) -> None:
    builder = ChainBuilder(genesis)
    app = ChainApp(store, genesis.params, None, genesis.genesis_time)
    _commit(app, store, builder)
    decoded = _counting(store, monkeypatch)
    for _ in range(5):
        assert app.prev_block_time_ms() == store.get_block(1).header.timestamp
    assert decoded == [1] * 5            # only the test's own reads: the app took the time from its commit


def test_a_new_tip_is_seen_after_commit_rollback_and_another_writer(store: Store, genesis: Genesis) -> None:
    builder = ChainBuilder(genesis)
    app = ChainApp(store, genesis.params, None, genesis.genesis_time)
    other = ChainApp(store, genesis.params, None, genesis.genesis_time)
    for _ in range(3):
        _commit(app, store, builder)
        assert app.prev_block_time_ms() == store.get_block(store.tip_height()).header.timestamp
    assert other.prev_block_time_ms() == store.get_block(3).header.timestamp
    _commit(app, store, builder)                  # written by ``app``: ``other`` must not keep height 3's time
    assert other.prev_block_time_ms() == store.get_block(4).header.timestamp
    store.rollback_to(2)
    assert app.prev_block_time_ms() == store.get_block(2).header.timestamp
    store.rollback_to(0)
    assert app.prev_block_time_ms() == genesis.genesis_time
