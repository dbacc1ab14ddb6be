"""Fast builder of certified chains into a real LMDB :class:`~timecoin.store.Store` (sync and fork tests, benchmarks).

A :class:`ChainBuilder` writes blocks exactly as a node would finalize them, without running consensus:
each block is assembled by ``ledger.state.build_block`` over the store (so its state root, validator
set hash and tx root are the real ones), certified by PRECOMMITs of round 0 signed by the validators'
keys (all of them, or a chosen subset, even one without quorum to forge a bad certificate), and
committed with ``Store.commit_block`` in one write transaction. The proposer of every height is the
one CometBFT's priority rotation picks, and the proposer priorities of every height are stored (the
``priorities`` database, as ``consensus.app.ChainApp`` does), so a node started on a generated store
goes on with consensus at the right proposer.

Optional ``txs_per_block`` signed transfers move 1 unit round-robin between the funded genesis
accounts whose keys the builder holds (validators, plus ``funded`` extra accounts from
:func:`make_genesis`), nonces in order. ``fork(from_height, other_store)`` copies blocks
1..from_height into another store and returns a builder whose next blocks diverge (another timestamp
offset, ``salt``), so both stores hold valid, certified, different branches above ``from_height``.

Speed: the builder's own transactions are marked verified in the ledger's signature cache (it just
signed them), so building costs one signature per tx plus one per precommit. A process that then
measures verification (benchmarks) must clear ``timecoin.ledger.tx.VERIFIED`` first.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from timecoin import crypto
from timecoin.consensus import proposer as prio
from timecoin.consensus.app import PRIORITIES_DB
from timecoin.ledger.block import Block, CommitCertificate, Vote, VoteType
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.ledger.state import build_block, execute_block
from timecoin.ledger.tx import VERIFIED, Transaction, TxKind
from timecoin.ledger.validators import ValidatorSet
from timecoin.store import VALIDATORS, Store

BLOCK_INTERVAL_MS = 1_000
DAY_MS = 86_400_000
FUNDED_BALANCE = 1_000_000 * crypto.UNITS_PER_TIME


def make_keys(n: int, seed: int = 7) -> list[crypto.PrivateKey]:
    """Deterministic keys (seed, index): two runs build byte-identical chains."""
    return [crypto.PrivateKey(hashlib.sha256(b"chaingen %d %d" % (seed, i)).digest()) for i in range(n)]


@dataclass(frozen=True)
class ChainSpec:
    """A genesis and the keys behind it: ``validators`` stake, ``funded`` only hold a balance."""

    genesis: Genesis
    validators: tuple[crypto.PrivateKey, ...]
    funded: tuple[crypto.PrivateKey, ...] = ()

    @property
    def keys(self) -> tuple[crypto.PrivateKey, ...]:
        """Every key whose account is funded at genesis (senders of generated transfers)."""
        return self.validators + self.funded


def make_genesis(validators: int = 4, chain_id: str = "timecoin-chaingen", seed: int = 7, funded: int = 0,
                 genesis_time: int | None = None, **params: int) -> ChainSpec:
    """A genesis of ``validators`` equal-stake validators and ``funded`` extra funded accounts.

    The default genesis time is one day ago, so blocks 1 s apart stay in the past for 86,400 heights
    (a node never waits for a block time in its future before proposing on top of a generated chain).
    """
    keys = make_keys(validators + funded, seed)
    gtime = int(time.time() * 1000) - DAY_MS if genesis_time is None else genesis_time
    extra = tuple(GenesisAccount(k.address, FUNDED_BALANCE) for k in keys[validators:])
    genesis = Genesis.for_validators([k.public_key for k in keys[:validators]], chain_id, genesis_time=gtime,
                                     extra=extra, **params)  # type: ignore[arg-type]
    return ChainSpec(genesis, tuple(keys[:validators]), tuple(keys[validators:]))


def initialize(store: Store, genesis: Genesis) -> None:
    """Write the genesis state as ``node.StoreService`` does on first start (no-op if already there)."""
    if not store.is_initialized:
        vs = genesis.validators()
        store.initialize(genesis.chain_id, genesis.hash, genesis.initial_accounts(), vs, vs, genesis.initial_lthash())
    store.check_chain(genesis.chain_id, genesis.hash)


def certify(block: Block, keys: Sequence[crypto.PrivateKey], chain_id: str, round_: int = 0) -> CommitCertificate:
    """A commit certificate of ``block`` signed (PRECOMMIT) by exactly ``keys`` (quorum not checked)."""
    votes = [Vote(VoteType.PRECOMMIT, block.height, round_, block.hash, k.address).signed(k, chain_id)
             for k in keys]
    return CommitCertificate.from_votes(votes)


def _signed_transfer(key: crypto.PrivateKey, chain_id: str, nonce: int, fee: int, to: bytes) -> Transaction:
    """``Transaction.create`` of a 1-unit transfer, encoding once: the signed encoding is the signed
    payload followed by the 64-byte signature (``Transaction.signing_payload``), so it is not rebuilt."""
    unsigned = Transaction(TxKind.TRANSFER, chain_id, key.public_key, nonce, fee, 1, to)
    payload = unsigned.signing_payload()
    signature = key.sign(crypto.TAG_TX, chain_id, payload)
    tx = replace(unsigned, signature=signature)
    tx.__dict__["encoded"] = payload + signature
    return tx


class ChainBuilder:
    """Extends the chain in ``store`` with certified blocks; see the module docstring."""

    def __init__(self, store: Store, spec: ChainSpec, salt: int = 0,
                 block_interval_ms: int = BLOCK_INTERVAL_MS) -> None:
        if not 0 <= salt < block_interval_ms:
            raise ValueError(f"salt must lie in [0, {block_interval_ms}): timestamps must not go backwards")
        self.store = store
        self.spec = spec
        self.genesis = spec.genesis
        self.params = spec.genesis.params
        self.chain_id = spec.genesis.chain_id
        self.salt = salt
        self.block_interval_ms = block_interval_ms
        self._by_address = {k.address: k for k in spec.keys}
        self._nonces: dict[bytes, int] = {}
        self._next_sender = 0
        self._priorities: tuple[int, prio.Priorities] | None = None     # (height, its priorities)
        self._pending_prio: dict[int, bytes] = {}
        self._batching = False
        self._vset_cache: tuple[bytes, ValidatorSet] | None = None
        initialize(store, self.genesis)

    @property
    def height(self) -> int:
        return self.store.tip_height()

    # -- proposer rotation -----------------------------------------------------------------------
    def _priorities_at(self, height: int) -> prio.Priorities:
        if self._priorities is not None and self._priorities[0] == height:
            return self._priorities[1]
        raw = self.store.get(PRIORITIES_DB, height.to_bytes(8, "big"))
        if raw is not None:
            return prio.decode(raw)
        if height <= 1:
            return prio.initial(self._validators(1))
        raise AssertionError(f"no proposer priorities stored for height {height}")

    def _validators(self, height: int) -> ValidatorSet:
        raw = self.store.get(VALIDATORS, height.to_bytes(8, "big"))
        if raw is None:
            raise AssertionError(f"no validator set for height {height}")
        if self._vset_cache is None or self._vset_cache[0] != raw:      # sets rarely change: decode once
            self._vset_cache = (raw, ValidatorSet.decode(raw))
        return self._vset_cache[1]

    # -- transactions ----------------------------------------------------------------------------
    def _nonce(self, address: bytes) -> int:
        if address not in self._nonces:
            acct = self.store.get_account(address)
            self._nonces[address] = acct.nonce if acct is not None else 0
        return self._nonces[address]

    def make_transfers(self, count: int) -> list[Transaction]:
        """``count`` signed 1-unit transfers, round-robin between funded keys, nonces in order."""
        senders = self.spec.keys
        if count and len(senders) < 2:
            raise ValueError("transfers need at least two funded keys")
        out = []
        for _ in range(count):
            i = self._next_sender
            self._next_sender = (i + 1) % len(senders)
            key, to = senders[i], senders[(i + 1) % len(senders)]
            nonce = self._nonce(key.address)
            tx = _signed_transfer(key, self.chain_id, nonce, self.params.min_fee, to.address)
            VERIFIED.add(tx.id)                   # we signed it just now: skip re-verifying our own signature
            self._nonces[key.address] = nonce + 1
            out.append(tx)
        return out

    # -- blocks ----------------------------------------------------------------------------------
    def timestamp(self, height: int) -> int:
        """Block time of ``height``: genesis time + height intervals (+ salt ms on a forked branch)."""
        return self.genesis.genesis_time + height * self.block_interval_ms + self.salt

    def next_block(self, txs: Sequence[Transaction] = (), signers: Sequence[int] | None = None,
                   ) -> tuple[Block, CommitCertificate]:
        """Build, certify and commit the next block; returns it with its certificate.

        ``signers``: indices into ``spec.validators`` that sign the certificate (default: every
        validator of the height whose key we hold). A subset without > 2/3 of the power makes a
        certificate that ``verify_certificate`` refuses -- a forged block for misbehaving-peer tests.
        """
        height = self.store.tip_height() + 1
        vs = self._validators(height)
        height_prio = self._priorities_at(height)
        proposer = prio.proposer_for(vs, height_prio, 0)
        block, result = build_block(self.store, self.params, height, 0, self.store.tip_hash(),
                                    self.timestamp(height), proposer, txs, [], max_txs=len(txs))
        if len(block.txs) != len(txs):
            rejected = "; ".join(f"{t.id.hex()[:12]}: {why}" for t, why in result.rejected)
            raise AssertionError(f"block {height}: {len(txs) - len(block.txs)} generated txs rejected: {rejected}")
        if signers is None:
            keys = [self._by_address[v.address] for v in vs.validators if v.address in self._by_address]
        else:
            keys = [self.spec.validators[i] for i in signers]
        cert = certify(block, keys, self.chain_id)
        next_prio = prio.next_height(vs, height_prio, self._validators(height + 1))
        self.store.commit_block(block, cert, result)
        self._priorities = (height + 1, next_prio)
        self._pending_prio[height + 1] = prio.encode(next_prio)
        if not self._batching:
            self.flush_priorities()
        return block, cert

    def build(self, count: int, txs_per_block: int = 0, signers: Sequence[int] | None = None) -> int:
        """Append ``count`` blocks of ``txs_per_block`` transfers each; returns the new tip height."""
        self._batching = True
        try:
            for _ in range(count):
                self.next_block(self.make_transfers(txs_per_block), signers)
        finally:
            self._batching = False
            self.flush_priorities()
        return self.store.tip_height()

    def flush_priorities(self) -> None:
        """Store the proposer priorities of built heights (one write transaction for all of them)."""
        if self._pending_prio:
            self.store.write_many(PRIORITIES_DB, {h.to_bytes(8, "big"): raw for h, raw in self._pending_prio.items()})
            self._pending_prio.clear()

    # -- forks -----------------------------------------------------------------------------------
    def copy_to(self, other: Store, upto: int) -> None:
        """Commit blocks 1..``upto`` of this chain (with their certificates) into ``other``."""
        initialize(other, self.genesis)
        pending: dict[bytes, bytes] = {}
        for height in range(other.tip_height() + 1, upto + 1):
            block = self.store.get_block(height)
            cert = self.store.get_certificate(height)
            if block is None or cert is None:
                raise AssertionError(f"this chain has no certified block {height}")
            result = execute_block(other, self.params, height, block.header.proposer, block.txs, block.evidence)
            other.commit_block(block, cert, result)
            raw = self.store.get(PRIORITIES_DB, (height + 1).to_bytes(8, "big"))
            if raw is not None:
                pending[(height + 1).to_bytes(8, "big")] = raw
        if pending:
            other.write_many(PRIORITIES_DB, pending)

    def fork(self, from_height: int, other: Store, salt: int = 1, blocks: int = 0,
             txs_per_block: int = 0) -> ChainBuilder:
        """A builder on ``other`` holding this chain up to ``from_height``, then ``blocks`` of its own.

        The branch's blocks are ``salt`` ms later than this chain's at the same height (and differ in
        their txs, if the caller builds different ones), so block ``from_height + 1`` and every one
        after it has another hash; both branches are fully certified.
        """
        if salt == self.salt or not 0 <= salt < self.block_interval_ms:
            raise ValueError(f"salt must differ from {self.salt} and lie in [0, {self.block_interval_ms})")
        self.copy_to(other, from_height)
        branch = ChainBuilder(other, self.spec, salt=salt, block_interval_ms=self.block_interval_ms)
        if blocks:
            branch.build(blocks, txs_per_block)
        return branch


def build_chain(path: str, spec: ChainSpec, blocks: int, txs_per_block: int = 0, salt: int = 0) -> ChainBuilder:
    """Open (or create) a store at ``path`` and build ``blocks`` certified blocks into it."""
    builder = ChainBuilder(Store(path), spec, salt=salt)
    builder.build(blocks, txs_per_block)
    return builder
