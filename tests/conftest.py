"""Shared pytest setup: the repository root importable even without an install, and the ledger backends.

``ledger_backend`` runs a test once over each real state backend: the in-memory ``MemoryStore`` (the
simulator's) and the LMDB ``Store`` in ``tmp_path``. Blocks are committed through each backend's own
``commit_block`` (a real block with a certificate), so the LMDB run exercises the store's write path.
"""
from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timecoin.crypto import PrivateKey  # noqa: E402
from timecoin.ledger import lthash as lt  # noqa: E402
from timecoin.ledger.account import Account  # noqa: E402
from timecoin.ledger.block import (  # noqa: E402
    Block,
    CommitCertificate,
    Header,
    Vote,
    VoteType,
    evidence_root,
    tx_root,
)
from timecoin.ledger.genesis import Genesis  # noqa: E402
from timecoin.ledger.result import BlockResult  # noqa: E402
from timecoin.memstore import MemoryStore  # noqa: E402
from timecoin.store import ACCOUNTS, K_LTHASH, META, VALIDATORS, Store  # noqa: E402

LEDGER_BACKENDS = ("memory", "lmdb")


class LedgerBackend:
    """A genesis state in one backend, with the few writes tests need besides committing blocks."""

    def __init__(self, kind: str, genesis: Genesis, path: Path, signers: Sequence[PrivateKey]) -> None:
        self.kind = kind
        self.genesis = genesis
        self.signers = tuple(signers)
        self.state: MemoryStore | Store
        if kind == "memory":
            self.state = MemoryStore(genesis)
        elif kind == "lmdb":
            store = Store(str(path), map_size=8 * 1024 * 1024)
            vs = genesis.validators()
            store.initialize(genesis.chain_id, genesis.hash, genesis.initial_accounts(), vs, vs,
                             genesis.initial_lthash())
            self.state = store
        else:  # pragma: no cover
            raise ValueError(kind)

    def close(self) -> None:
        if isinstance(self.state, Store):
            self.state.close()

    def commit(self, result: BlockResult, proposer: bytes) -> Block:
        """Wrap ``result`` in a block at the tip (header roots from the result) and commit it."""
        state, height = self.state, result.height
        validators = state.validator_set(height)
        assert validators is not None, f"no validator set for height {height}"
        header = Header(height=height, round=0, prev_hash=state.tip_hash(),
                        timestamp=self.genesis.genesis_time + 1_000 * height, proposer=proposer,
                        tx_root=tx_root(result.applied), state_root=result.state_root,
                        validators_hash=validators.hash, evidence_root=evidence_root(result.evidence))
        block = Block(header, result.applied, result.evidence)
        votes = [Vote(VoteType.PRECOMMIT, height, 0, block.hash, k.address).signed(k, self.genesis.chain_id)
                 for k in self.signers]
        state.commit_block(block, CommitCertificate.from_votes(votes), result)
        return block

    def accounts(self) -> dict[bytes, Account]:
        if isinstance(self.state, MemoryStore):
            return dict(self.state.accounts)
        return {k: Account.decode(v) for k, v in self.state.items(ACCOUNTS)}

    def validator_hashes(self) -> dict[int, bytes]:
        if isinstance(self.state, MemoryStore):
            return {h: v.hash for h, v in self.state.validators.items()}
        return {int.from_bytes(k, "big"): hashlib.sha256(v).digest() for k, v in self.state.items(VALIDATORS)}

    def set_account(self, address: bytes, account: Account) -> None:
        """Overwrite one account outside any block (a test's setup), keeping the LtHash consistent."""
        acc = lt.LtHash(self.state.lthash())
        old = self.state.get_account(address)
        if old is not None and not old.is_empty:
            acc.remove(address + old.encoded)
        if not account.is_empty:
            acc.add(address + account.encoded)
        if isinstance(self.state, MemoryStore):
            if account.is_empty:
                self.state.accounts.pop(address, None)
            else:
                self.state.accounts[address] = account
            self.state._lthash = acc.to_bytes()
        else:
            if account.is_empty:
                self.state.delete(ACCOUNTS, address)
            else:
                self.state.put(ACCOUNTS, address, account.encoded)
            self.state.put(META, K_LTHASH, acc.to_bytes())


LedgerFactory = Callable[..., LedgerBackend]


@pytest.fixture(params=LEDGER_BACKENDS)
def ledger_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerFactory]:
    """``make(genesis, signers=())`` -> a LedgerBackend of this run's kind ("memory" or "lmdb")."""
    opened: list[LedgerBackend] = []

    def make(genesis: Genesis, signers: Sequence[PrivateKey] = ()) -> LedgerBackend:
        backend = LedgerBackend(request.param, genesis, tmp_path / f"ledger-{len(opened)}", signers)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()
