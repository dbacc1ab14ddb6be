"""The store's read paths for RPC and sync (issue 15 target 8): blocks parsed once, validator sets decoded once
per distinct value, getblock's view from one snapshot, and the non-durable mode of bulk chain builders."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from timecoin.errors import DecodeError
from timecoin.ledger.block import Block, CommitCertificate
from timecoin.ledger.validators import ValidatorSet
from timecoin.sim import chaingen
from timecoin.store import HEADER_SIZE, VALIDATORS, Store, stored_block, stored_certificate
from timecoin.wire import messages


@pytest.fixture(scope="module")
def spec() -> chaingen.ChainSpec:
    return chaingen.make_genesis(validators=4, chain_id="timecoin-store-reads", funded=2)


@pytest.fixture
def store(tmp_path: os.PathLike[str], spec: chaingen.ChainSpec) -> Iterator[Store]:
    s = Store(os.path.join(str(tmp_path), "chain"))
    chaingen.ChainBuilder(s, spec).build(6, txs_per_block=3)
    yield s
    s.close()


def test_stored_decoders_give_what_the_canonical_decoders_give(store: Store) -> None:
    for height in range(1, 7):
        raw = store.get_block_bytes(height)
        cert_raw = store.get("certs", height.to_bytes(8, "big"))
        assert raw is not None and cert_raw is not None
        block, canonical = stored_block(raw), Block.decode(raw)
        assert block == canonical and len(block.txs) == 3
        assert block.encoded == raw and block.header.encoded == raw[:HEADER_SIZE]
        assert block.hash == canonical.hash == store.block_hash_at(height)
        cert = stored_certificate(cert_raw)
        assert cert == CommitCertificate.decode(cert_raw) and cert.encoded == cert_raw


def test_stored_decoders_refuse_corrupt_bytes_with_a_decode_error(store: Store) -> None:
    raw = store.get_block_bytes(3)
    assert raw is not None
    for bad in (raw[:-1], raw[:HEADER_SIZE + 2], b""):
        with pytest.raises(DecodeError, match="stored Block"):
            stored_block(bad)
    with pytest.raises(DecodeError, match="stored CommitCertificate"):
        stored_certificate(b"\x00\x01")


def test_reading_a_block_parses_it_and_never_re_encodes_it(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The canonical decoder parses, rebuilds and compares; the store's own bytes need only the parse."""
    expected = Block.decode(store.get_block_bytes(4) or b"")
    expected_hash = expected.hash

    def no_build(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("a stored block was re-encoded")

    monkeypatch.setattr(messages.BLOCK.compiled, "build", no_build)
    monkeypatch.setattr(messages.HEADER.compiled, "build", no_build)
    monkeypatch.setattr(messages.COMMIT_CERTIFICATE.compiled, "build", no_build)
    block, cert = store.get_block(4), store.get_certificate(4)
    assert block == expected and block is not None and block.hash == expected_hash
    assert cert is not None and cert.block_hash == block.hash
    view = store.block_view(4)
    assert view is not None and view[0] == expected


def test_block_view_is_the_block_its_certificate_the_tip_and_the_next_hash(store: Store) -> None:
    for height in (1, 5):
        view = store.block_view(height)
        assert view == (store.get_block(height), store.get_certificate(height), 6, store.block_hash_at(height + 1))
    tip = store.block_view(6)
    assert tip is not None and tip[3] is None and tip[2] == 6
    assert store.block_view(7) is None and store.block_view(0) is None and store.block_view(-1) is None


def test_validator_set_is_decoded_once_per_distinct_stored_value(store: Store, spec: chaingen.ChainSpec,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store.close()
    store = Store(store.path)                    # reopened: nothing decoded yet
    real = ValidatorSet.decode.__func__  # type: ignore[attr-defined]
    decoded: list[bytes] = []

    def counting(cls: type[ValidatorSet], data: bytes) -> ValidatorSet:
        decoded.append(bytes(data))
        return real(cls, data)

    monkeypatch.setattr(ValidatorSet, "decode", classmethod(counting))
    first = store.validator_set(3)
    assert first == spec.genesis.validators()
    for height in (1, 2, 3, 4, 5, 6, 7, 8, 3):
        assert store.validator_set(height) is first
    assert len(decoded) == 1
    # A write that changes the stored set of a height is seen at once: the cache is keyed by the bytes.
    smaller = ValidatorSet(first.validators[:3])
    store.put(VALIDATORS, (5).to_bytes(8, "big"), smaller.encode())
    assert store.validator_set(5) == smaller and store.validator_set(4) == first
    assert len(decoded) == 3
    assert store.validator_set(9) is None and store.validator_set(-1) is None
    store.close()


def test_a_non_durable_store_skips_fsync_and_a_default_one_does_not(tmp_path: os.PathLike[str]) -> None:
    with Store(os.path.join(str(tmp_path), "a")) as durable, \
            Store(os.path.join(str(tmp_path), "b"), durable=False) as bulk:
        assert durable._live_env().flags()["sync"] and durable._live_env().flags()["metasync"]
        assert not bulk._live_env().flags()["sync"] and not bulk._live_env().flags()["metasync"]
