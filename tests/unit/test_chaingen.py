"""The certified-chain generator (tests/chaingen.py) builds chains a node would accept, fast.

Every generated block is checked the way sync checks it: its certificate against the validator set of
its height (``verify_certificate``) and the block itself by full re-execution (``validate_block``) on a
second, independent store.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaingen import ChainBuilder, build_chain, make_genesis
from timecoin.consensus.app import ChainApp
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.block import verify_certificate
from timecoin.ledger.genesis import Genesis
from timecoin.ledger.state import validate_block
from timecoin.store import Store


def replay(source: Store, target: Store, genesis: Genesis, upto: int) -> None:
    """Validate and commit ``source``'s blocks 1..upto into ``target`` as a syncing node would."""
    params = genesis.params
    for h in range(1, upto + 1):
        block, cert = source.get_block(h), source.get_certificate(h)
        assert block is not None and cert is not None
        verify_certificate(block, cert, target.validator_set(h), genesis.chain_id)
        prev_ts = genesis.genesis_time if h == 1 else target.get_block(h - 1).header.timestamp
        result = validate_block(target, params, block, target.tip_hash(), prev_ts)
        target.commit_block(block, cert, result)


def test_blocks_with_transfers_certify_and_validate_on_a_fresh_store(tmp_path: Path) -> None:
    spec = make_genesis(4, funded=2)
    builder = build_chain(str(tmp_path / "a"), spec, 20, txs_per_block=12)
    store = builder.store
    assert store.tip_height() == 20
    assert store.block_hash_at(0) == spec.genesis.hash
    nonces = 0
    for key in spec.keys:
        acct = store.get_account(key.address)
        assert acct is not None
        nonces += acct.nonce
    assert nonces == 20 * 12                       # every generated tx was included, nonces in order
    app = ChainApp(store, spec.genesis.params, None, spec.genesis.genesis_time)
    for h in range(1, 21):
        block = store.get_block(h)
        assert len(block.txs) == 12
        assert block.header.proposer == app.proposer(h, 0)     # CometBFT rotation, as consensus picks it
        assert len(store.get_certificate(h).signatures) == 4
    with Store(str(tmp_path / "b")) as fresh:
        ChainBuilder(fresh, spec)                  # genesis only
        replay(store, fresh, spec.genesis, 20)
        assert fresh.tip_hash() == store.tip_hash()
        assert fresh.lthash() == store.lthash()
    store.close()


def test_same_spec_builds_the_same_chain(tmp_path: Path) -> None:
    spec = make_genesis(3, genesis_time=1_700_000_000_000)
    a = build_chain(str(tmp_path / "a"), spec, 5, txs_per_block=2)
    b = build_chain(str(tmp_path / "b"), spec, 5, txs_per_block=2)
    assert a.store.block_hashes(0, 6) == b.store.block_hashes(0, 6)
    assert a.store.get_block(5).header.timestamp == 1_700_000_000_000 + 5_000
    a.store.close()
    b.store.close()


def test_signer_subset_makes_weak_or_valid_certificates(tmp_path: Path) -> None:
    spec = make_genesis(4)
    with Store(str(tmp_path / "a")) as store:
        builder = ChainBuilder(store, spec)
        block, cert = builder.next_block(signers=[0, 1, 2])             # 3 of 4 equal stakes: > 2/3
        verify_certificate(block, cert, store.validator_set(1), spec.genesis.chain_id)
        block, cert = builder.next_block(signers=[0, 1])                # 2 of 4: a forged certificate
        with pytest.raises(ValidationError) as exc:
            verify_certificate(block, cert, store.validator_set(2), spec.genesis.chain_id)
        assert exc.value.reason == Reason.BAD_CERTIFICATE
        assert store.tip_height() == 2


def test_fork_shares_the_prefix_and_diverges_after(tmp_path: Path) -> None:
    spec = make_genesis(4, funded=1)
    main = build_chain(str(tmp_path / "main"), spec, 30, txs_per_block=3)
    with Store(str(tmp_path / "branch")) as other:
        branch = main.fork(10, other, salt=7, blocks=25, txs_per_block=1)
        assert other.tip_height() == 35
        for h in range(0, 11):
            assert other.block_hash_at(h) == main.store.block_hash_at(h)
        for h in range(11, 31):
            assert other.block_hash_at(h) != main.store.block_hash_at(h)
        assert other.get_block(11).header.timestamp == main.store.get_block(11).header.timestamp + 7
        assert len(other.get_block(11).txs) == 1
        with Store(str(tmp_path / "check")) as fresh:
            ChainBuilder(fresh, spec)
            replay(other, fresh, spec.genesis, 35)                      # the branch is fully valid too
            assert fresh.tip_hash() == other.tip_hash()
        branch.build(2)
        assert other.tip_height() == 37
        with pytest.raises(ValueError):
            main.fork(5, other, salt=0)                                 # same salt: no divergence
    main.store.close()


def test_builder_resumes_on_an_existing_store(tmp_path: Path) -> None:
    spec = make_genesis(4, funded=1)
    first = build_chain(str(tmp_path / "a"), spec, 6, txs_per_block=4)
    first.store.close()
    with Store(str(tmp_path / "a")) as store:
        again = ChainBuilder(store, spec)
        again.build(4, txs_per_block=4)                                  # nonces and priorities read back
        assert store.tip_height() == 10
        app = ChainApp(store, spec.genesis.params, None, spec.genesis.genesis_time)
        assert all(store.get_block(h).header.proposer == app.proposer(h, 0) for h in range(1, 11))


def test_thousand_empty_blocks_in_seconds(tmp_path: Path) -> None:
    """5,000 blocks must take well under a minute: 1,000 in under 10 s (measured ~2.5 s)."""
    spec = make_genesis(4)
    t0 = time.perf_counter()
    builder = build_chain(str(tmp_path / "a"), spec, 1000)
    elapsed = time.perf_counter() - t0
    assert builder.store.tip_height() == 1000
    builder.store.close()
    assert elapsed < 10.0, f"1,000 blocks took {elapsed:.1f} s"
