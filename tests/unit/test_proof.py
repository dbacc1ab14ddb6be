"""Finality proofs: built from a real certified chain with validator-set changes, verified offline, and every
tampered part (signature, validator set, set-change chain, Merkle path, chain) refused with a message naming it.

The chain (4 equal validators A-D of 10,000 TIME, funded E and F): E stakes 30,000 TIME in block 4 (the set
changes at 6), block 7 holds 5 transfers, A and B unstake everything in block 8 (the set changes at 10: C, D, E).
C and D alone hold half of the genesis set's power, so the change at 10 can only be trusted through the one at 6.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from tests.chaingen import ChainBuilder, ChainSpec, certify, make_genesis
from timecoin import crypto
from timecoin.ledger import proof as fp
from timecoin.ledger.merkle import merkle_root
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import IN_WARMUP, INVALID_ADDRESS_OR_KEY, INVALID_PARAMETER, INVALID_PARAMS, RPCError
from timecoin.rpc.methods import TABLE
from timecoin.store import Store

TIP = 12
TX_BLOCK = 7
CHANGES = (6, 10)


@dataclass
class World:
    spec: ChainSpec
    store: Store
    txs: list[Transaction]

    @property
    def trusted(self) -> fp.Trusted:
        return fp.Trusted.from_genesis(self.spec.genesis)


def _tx(store: Store, spec: ChainSpec, key: crypto.PrivateKey, kind: TxKind, amount: int,
        to: bytes = bytes(20)) -> Transaction:
    acct = store.get_account(key.address)
    nonce = acct.nonce if acct is not None else 0
    return Transaction.create(key, kind, spec.genesis.chain_id, nonce, spec.genesis.params.min_fee, amount, to)


def build_world(path: str, seed: int = 7, chain_id: str = "timecoin-chaingen") -> World:
    """The chain of the module docstring in a fresh store at ``path``."""
    spec = make_genesis(4, funded=2, seed=seed, chain_id=chain_id)
    store = Store(path)
    b = ChainBuilder(store, spec)
    a, bb, c, d = spec.validators
    e, f = spec.funded
    b.build(3)
    b.next_block([_tx(store, spec, e, TxKind.STAKE, 30_000 * crypto.UNITS_PER_TIME)])
    b.build(2)
    txs = [_tx(store, spec, k, TxKind.TRANSFER, 5 + i, e.address) for i, k in enumerate((f, a, bb, c, d))]
    b.next_block(txs)
    b.next_block([_tx(store, spec, k, TxKind.UNSTAKE, 10_000 * crypto.UNITS_PER_TIME) for k in (a, bb)])
    b.build(TIP - 8)
    assert store.tip_height() == TIP
    return World(spec, store, txs)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(str(tmp_path_factory.mktemp("proof") / "chain"))
    yield w
    w.store.close()


def refused(proof: Any, trusted: fp.Trusted) -> str:
    with pytest.raises(fp.ProofError) as info:
        fp.verify_proof(proof, trusted)
    return str(info.value)


def flip(hex_text: str, bit: int = 0) -> str:
    raw = bytearray(bytes.fromhex(hex_text))
    raw[bit // 8] ^= 1 << (bit % 8)
    return raw.hex()


# -- Merkle paths -------------------------------------------------------------------------------------
def test_merkle_paths_lead_every_leaf_of_every_tree_shape_to_merkle_root() -> None:
    for n in range(1, 18):
        items = [bytes([i]) * 32 for i in range(n)]
        root = merkle_root(items)
        for i in range(n):
            path = fp.merkle_path(items, i)
            assert fp.root_from_path(items[i], i, n, path) == root
            assert fp.root_from_path(items[i], i, n, path + [root]) is None       # a path of the wrong length
            if n > 1:
                assert fp.root_from_path(items[(i + 1) % n], i, n, path) != root   # another leaf
    with pytest.raises(IndexError):
        fp.merkle_path([b"x"], 1)


# -- proofs that verify -------------------------------------------------------------------------------
def test_a_block_proof_walks_both_set_changes_from_genesis(world: World) -> None:
    proof = fp.build_proof(world.store, TIP)
    assert [link["header"]["height"] for link in proof["set_changes"]] == list(CHANGES)
    v = fp.verify_proof(proof, world.trusted)
    assert (v.height, v.block_hash, v.chain_id) == (TIP, world.store.block_hash_at(TIP), "timecoin-chaingen")
    assert v.set_changes == CHANGES and v.txid is None
    assert v.signed_power == v.total_power == 50_000 * crypto.UNITS_PER_TIME       # C, D and E


def test_a_block_before_any_change_needs_no_link(world: World) -> None:
    proof = fp.build_proof(world.store, 3)
    assert proof["set_changes"] == []
    assert fp.verify_proof(proof, world.trusted).height == 3


def test_every_tx_of_a_five_tx_block_has_a_verifying_inclusion_proof(world: World) -> None:
    for index, tx in enumerate(world.txs):
        proof = fp.build_proof(world.store, TX_BLOCK, tx.id)
        assert proof["tx"]["count"] == 5 and proof["tx"]["index"] == index
        v = fp.verify_proof(proof, world.trusted)
        assert (v.txid, v.tx_index, v.height, v.set_changes) == (tx.id, index, TX_BLOCK, (6,))


def test_a_proof_from_a_trusted_block_needs_only_the_changes_after_it(world: World) -> None:
    proof = fp.build_proof(world.store, TIP, trusted_height=TX_BLOCK)
    trusted = fp.Trusted.at(TX_BLOCK, world.store.block_hash_at(TX_BLOCK))
    assert fp.verify_proof(proof, trusted).set_changes == (10,)
    same = fp.build_proof(world.store, TX_BLOCK, trusted_height=TX_BLOCK)
    assert fp.verify_proof(same, trusted).height == TX_BLOCK
    wrong = fp.Trusted.at(TX_BLOCK, world.store.block_hash_at(TX_BLOCK - 1))
    assert "trusted header of height 7 has hash" in refused(proof, wrong)
    assert "proof starts from height 7, not the trusted height 6" in refused(
        proof, fp.Trusted.at(6, world.store.block_hash_at(6)))
    assert "verify it with --trusted-height 7" in refused(proof, world.trusted)
    assert "proof starts from height 0, not the trusted height 7" in refused(fp.build_proof(world.store, TIP), trusted)


def test_build_refuses_what_it_cannot_prove(world: World) -> None:
    with pytest.raises(fp.ProofBuildError, match="trusted height 5 must be between 0 and"):
        fp.build_proof(world.store, 4, trusted_height=5)
    with pytest.raises(fp.ProofBuildError, match="is not in block 3"):
        fp.build_proof(world.store, 3, world.txs[0].id)
    with pytest.raises(fp.ProofBuildError, match="no certified block at height 13"):
        fp.build_proof(world.store, TIP + 1)


# -- tampering: each names what fails -----------------------------------------------------------------
def _tampered(world: World, edit: Any) -> str:
    proof = fp.build_proof(world.store, TX_BLOCK if "tx" in edit.__name__ else TIP,
                           world.txs[3].id if "tx" in edit.__name__ else None)
    edit(proof)
    return refused(proof, world.trusted)


def flip_block_sig(p: Any) -> None:
    s = p["block"]["certificate"]["signatures"][1]
    s["signature"] = flip(s["signature"], 77)


def flip_link_sig(p: Any) -> None:
    s = p["set_changes"][1]["certificate"]["signatures"][0]
    s["signature"] = flip(s["signature"], 511)


def drop_block_validator(p: Any) -> None:
    del p["block"]["validators"][0]


def drop_link_validator(p: Any) -> None:
    del p["set_changes"][0]["validators"][2]


def drop_block_signatures(p: Any) -> None:
    del p["block"]["certificate"]["signatures"][:2]


def alter_tx_path(p: Any) -> None:
    p["tx"]["path"][0] = flip(p["tx"]["path"][0], 3)


def shorten_tx_path(p: Any) -> None:
    p["tx"]["path"].pop()


def move_tx_index(p: Any) -> None:
    p["tx"]["index"] = 2


def swap_tx_id(p: Any) -> None:
    p["tx"]["txid"] = flip(p["tx"]["txid"])
    del p["tx"]["raw"]


def swap_tx_id_keep_raw(p: Any) -> None:
    p["tx"]["txid"] = flip(p["tx"]["txid"])


def skip_first_change(p: Any) -> None:
    del p["set_changes"][0]


def skip_every_change(p: Any) -> None:
    p["set_changes"] = []


def repeat_a_change(p: Any) -> None:
    p["set_changes"].insert(1, copy.deepcopy(p["set_changes"][0]))


def edit_header_field(p: Any) -> None:
    p["block"]["header"]["timestamp"] += 1


def edit_block_hash(p: Any) -> None:
    p["block"]["hash"] = flip(p["block"]["hash"])


def unsort_signers(p: Any) -> None:
    p["block"]["certificate"]["signatures"].reverse()


def duplicate_signer(p: Any) -> None:
    sigs = p["block"]["certificate"]["signatures"]
    sigs.insert(1, copy.deepcopy(sigs[0]))


def other_round(p: Any) -> None:
    p["block"]["certificate"]["round"] = 1


@pytest.mark.parametrize(("edit", "says"), [
    (flip_block_sig, r"^certificate of block 12: signature of validator [0-9a-f]{8}\.\. does not verify$"),
    (flip_link_sig, r"^certificate of block 10: signature of validator [0-9a-f]{8}\.\. does not verify$"),
    (drop_block_validator, r"^validator set of height 12 does not match validators_hash$"),
    (drop_link_validator, r"^validator set of height 6 does not match validators_hash$"),
    (drop_block_signatures, r"^certificate of block 12: signers hold \d+ of \d+ power, not more than 2/3$"),
    (alter_tx_path, r"^tx [0-9a-f]{8}\.\. not in block 7: Merkle path does not reach tx_root$"),
    (shorten_tx_path, r"^tx [0-9a-f]{8}\.\. not in block 7: Merkle path has 2 hashes"),
    (move_tx_index, r"^tx [0-9a-f]{8}\.\. not in block 7: Merkle path does not reach tx_root$"),
    (swap_tx_id, r"^tx [0-9a-f]{8}\.\. not in block 7: Merkle path does not reach tx_root$"),
    (swap_tx_id_keep_raw, r"raw transaction hashes to [0-9a-f]{8}\.\., not the txid$"),
    (skip_first_change, r"^set change at height 10: the trusted set \(from height 0\) signed \d+ of \d+ power, "
                        r"not more than 2/3$"),
    (skip_every_change, r"^validator set of height 12 is not the trusted one: .* misses a change between heights "
                        r"0 and 12$"),
    (repeat_a_change, r"^set change at height 6 is not between the trusted height 6 and the block's height 12$"),
    (edit_header_field, r"^block: hash [0-9a-f]{8}\.\. is not the hash of its header"),
    (edit_block_hash, r"^block: hash [0-9a-f]{8}\.\. is not the hash of its header"),
    (unsort_signers, r"^certificate of block 12: signers are not in strictly ascending order"),
    (duplicate_signer, r"^certificate of block 12: signers are not in strictly ascending order"),
    (other_round, r"^certificate of block 12: signature of validator [0-9a-f]{8}\.\. does not verify$"),
], ids=lambda x: getattr(x, "__name__", ""))
def test_a_tampered_proof_fails_naming_the_part(world: World, edit: Any, says: str) -> None:
    message = _tampered(world, edit)
    assert re.search(says, message), message


def test_a_header_edited_with_its_hash_recomputed_breaks_the_certificate(world: World) -> None:
    proof = fp.build_proof(world.store, TIP)
    proof["block"]["header"]["timestamp"] += 1
    del proof["block"]["hash"]                      # the hash is optional: the header's own hash is used
    assert refused(proof, world.trusted).startswith("certificate of block 12 is for block")


def test_a_certificate_forged_by_keys_outside_the_set_is_refused(world: World) -> None:
    block = world.store.get_block(TIP)
    assert block is not None
    outsiders = make_genesis(4, seed=99).validators
    proof = fp.build_proof(world.store, TIP)
    proof["block"]["certificate"] = fp.certificate_json(certify(block, outsiders, world.spec.genesis.chain_id))
    assert "is not in the validator set of height 12" in refused(proof, world.trusted)


def test_a_block_of_a_foreign_set_with_a_consistent_header_is_not_trusted(world: World, tmp_path: Any) -> None:
    """An attacker's own validators sign a block whose header names them: every hash matches, the set is not ours."""
    forged = make_genesis(4, seed=99)
    other = Store(str(tmp_path / "forged"))
    try:
        ChainBuilder(other, forged).build(2)
        proof = fp.build_proof(other, 2)
        proof["genesis_hash"] = world.spec.genesis.hash.hex()       # claim our chain
        assert "is not the trusted one" in refused(proof, world.trusted)
        # A foreign set presented as a set change is not vouched for by ours.
        link = copy.deepcopy(proof["block"])
        proof["set_changes"] = [link]
        assert "set change at height 2: the trusted set (from height 0) signed 0 of" in refused(proof, world.trusted)
    finally:
        other.close()


def test_a_proof_from_another_genesis_or_chain_is_refused(world: World, tmp_path: Any) -> None:
    other = build_world(str(tmp_path / "other"), chain_id="timecoin-other")
    try:
        proof = fp.build_proof(other.store, 3)
        assert "proof is for genesis" in refused(proof, world.trusted)
        assert fp.verify_proof(proof, other.trusted).height == 3
        proof["genesis_hash"] = world.spec.genesis.hash.hex()
        assert "proof is for chain 'timecoin-other', not the trusted 'timecoin-chaingen'" in refused(
            proof, world.trusted)
        proof["chain_id"] = "timecoin-chaingen"                # same keys, but they signed another chain id
        assert "signature of validator" in refused(proof, world.trusted)
    finally:
        other.store.close()


def test_a_change_no_certificate_vouches_for_cannot_be_proved(tmp_path: Any) -> None:
    """Half the power leaves in one block: the new set's certificates never carry > 2/3 of the old set."""
    spec = make_genesis(4)
    store = Store(str(tmp_path / "chain"))
    try:
        b = ChainBuilder(store, spec)
        b.next_block([_tx(store, spec, k, TxKind.UNSTAKE, 10_000 * crypto.UNITS_PER_TIME)
                      for k in spec.validators[:2]])
        b.build(3)
        with pytest.raises(fp.ProofBuildError, match="changed at height 3 is not vouched for"):
            fp.build_proof(store, 4)
        proof = fp.build_proof(store, 4, trusted_height=3)
        assert fp.verify_proof(proof, fp.Trusted.at(3, store.block_hash_at(3))).height == 4
    finally:
        store.close()


# -- malformed documents: one clear ProofError, never another exception --------------------------------
def _set(path: tuple[Any, ...], value: Any) -> Any:
    def edit(p: Any) -> None:
        obj = p
        for k in path[:-1]:
            obj = obj[k]
        if value is KeyError:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
    return edit


@pytest.mark.parametrize(("path", "value", "says"), [
    (("type",), "bitcoin", "not a finality proof"),
    (("version",), 2, "unsupported proof version 2"),
    (("chain_id",), 5, "proof.chain_id must be a non-empty string"),
    (("genesis_hash",), "zz", "proof.genesis_hash must be a hex string"),
    (("genesis_hash",), "abcd", "proof.genesis_hash must be 32 bytes, not 2"),
    (("trusted",), KeyError, "proof.trusted is missing"),
    (("trusted",), [], "trusted must be an object"),
    (("block", "header", "height"), "12", "block.header.height must be an integer"),
    (("block", "header", "height"), 2**64, "block.header.height must be an integer"),
    (("block", "header", "height"), True, "block.header.height must be an integer"),
    (("block", "header", "round"), -1, "block.header.round must be an integer"),
    (("block", "header", "proposer"), "00" * 21, "block.header.proposer must be 20 bytes"),
    (("block", "certificate", "signatures"), {}, "block.certificate.signatures must be an array"),
    (("block", "certificate", "signatures", 0, "signature"), None, "must be a hex string"),
    (("block", "validators", 0, "power"), 0, "block.validators[0].power must be an integer in [1,"),
    (("block", "validators", 1, "address"), KeyError, "block.validators[1].address is missing"),
    (("set_changes",), "x", "proof.set_changes must be an array"),
    (("set_changes", 0, "header"), 7, "set_changes[0].header must be an object"),
    (("tx", "count"), 0, "tx.count must be an integer in [1,"),
    (("tx", "index"), 5, "tx.index must be an integer in [0, 4]"),
    (("tx", "path"), ["00"] * 65, "tx.path must be an array of at most 64"),
    (("tx", "raw"), "00", "tx.raw is not a transaction"),
])
def test_malformed_fields_are_named(world: World, path: tuple[Any, ...], value: Any, says: str) -> None:
    proof = fp.build_proof(world.store, TX_BLOCK, world.txs[0].id)
    _set(path, value)(proof)
    assert says in refused(proof, world.trusted)


def test_duplicate_validators_and_non_objects_are_malformed(world: World) -> None:
    proof = fp.build_proof(world.store, TIP)
    proof["block"]["validators"].append(copy.deepcopy(proof["block"]["validators"][0]))
    assert "duplicate validator address" in refused(proof, world.trusted)
    for junk in (None, [], "proof", 5):
        assert "not a finality proof" in refused(junk, world.trusted)


# -- RPC getfinalityproof --------------------------------------------------------------------------------
def call(world: World, *params: Any) -> Any:
    return TABLE.call(RPCContext(SimpleNamespace(store=world.store), None, 0.0), "getfinalityproof", list(params))


def rpc_error(world: World, *params: Any) -> RPCError:
    with pytest.raises(RPCError) as info:
        call(world, *params)
    return info.value


def test_rpc_proofs_by_height_block_hash_and_txid_verify(world: World) -> None:
    by_height = call(world, TIP)
    assert fp.verify_proof(by_height, world.trusted).height == TIP
    block_hash = world.store.block_hash_at(TX_BLOCK)
    assert block_hash is not None
    by_hash = call(world, block_hash.hex())
    assert "tx" not in by_hash and fp.verify_proof(by_hash, world.trusted).block_hash == block_hash
    txid = world.txs[4].id
    by_txid = call(world, txid.hex().upper())
    v = fp.verify_proof(by_txid, world.trusted)
    assert (v.txid, v.tx_index, v.height) == (txid, 4, TX_BLOCK)
    anchored = call(world, TIP, 10)
    assert fp.verify_proof(anchored, fp.Trusted.at(10, world.store.block_hash_at(10))).set_changes == ()
    assert call(world, TIP, None) == by_height                      # null takes the default (genesis)


@pytest.mark.parametrize(("params", "code", "says"), [
    ((TIP + 1,), INVALID_ADDRESS_OR_KEY, "no block at height 13"),
    (("ab" * 32,), INVALID_ADDRESS_OR_KEY, "No block or transaction with hash"),
    ((0,), INVALID_PARAMS, "blocks start at height 1"),
    ((-1,), INVALID_PARAMS, "target out of range"),
    ((2**70,), INVALID_PARAMS, "target out of range"),
    ((True,), INVALID_PARAMS, "target must be a block height"),
    ((1.5,), INVALID_PARAMS, "target must be a block height"),
    (([1],), INVALID_PARAMS, "target must be a block height"),
    (("12",), INVALID_PARAMS, "target must be a block height"),
    (("zz" * 32,), INVALID_PARAMS, "target must be a block height"),
    (("ab" * 33,), INVALID_PARAMS, "target must be a block height"),
    ((), INVALID_PARAMS, "missing parameter target"),
    ((TIP, TIP + 1), INVALID_PARAMETER, "trusted_height must be between 0 and the block's height 12, not 13"),
    ((TIP, -1), INVALID_PARAMETER, "trusted_height must be between 0"),
    ((TIP, "1"), INVALID_PARAMS, "trusted_height must be an integer"),
    ((TIP, 2**70), INVALID_PARAMS, "trusted_height out of range"),
    ((TIP, 0, 1), INVALID_PARAMS, "at most 2 parameters"),
])
def test_rpc_bad_params_get_the_right_code(world: World, params: tuple[Any, ...], code: int, says: str) -> None:
    err = rpc_error(world, *params)
    assert err.code == code and says in err.message, (err.code, err.message)


def test_rpc_the_genesis_hash_is_not_a_block(world: World) -> None:
    err = rpc_error(world, world.spec.genesis.hash.hex())
    assert err.code == INVALID_ADDRESS_OR_KEY


def test_rpc_maps_an_unprovable_change_to_invalid_parameter(tmp_path: Any) -> None:
    spec = make_genesis(4)
    store = Store(str(tmp_path / "chain"))
    try:
        b = ChainBuilder(store, spec)
        b.next_block([_tx(store, spec, k, TxKind.UNSTAKE, 10_000 * crypto.UNITS_PER_TIME)
                      for k in spec.validators[:2]])
        b.build(2)
        w = World(spec, store, [])
        err = rpc_error(w, 3)
        assert err.code == INVALID_PARAMETER and "not vouched for" in err.message
    finally:
        store.close()


def test_rpc_help_documents_the_method() -> None:
    text = TABLE.help("getfinalityproof")
    assert "getfinalityproof target [trusted_height]" in text and "-5:" in text and "-8:" in text


def test_rpc_while_the_store_is_closed_says_warming_up() -> None:
    ctx = RPCContext(SimpleNamespace(store=None), None, 0.0)
    with pytest.raises(RPCError) as info:
        TABLE.call(ctx, "getfinalityproof", [1])
    assert info.value.code == IN_WARMUP
