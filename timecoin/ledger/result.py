"""What the state transition reads (StateReader) and what it produces (BlockResult).

The transition (``ledger/state.py``) never writes: it returns the final value of every account a
block touched, the previous values (undo data for rollbacks), the new LtHash accumulator and state
root, and the validator set that takes effect at height + 2. The store commits all of it in one
LMDB write transaction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from timecoin.ledger.account import Account
from timecoin.ledger.block import Evidence
from timecoin.ledger.tx import Transaction
from timecoin.ledger.validators import ValidatorSet


class StateReader(Protocol):
    """Read access to committed state (the LMDB store, or ``state.MemoryState`` in tests and sims)."""

    def get_account(self, address: bytes) -> Account | None:
        """The account, or None if it never existed (or was emptied)."""

    def validator_set(self, height: int) -> ValidatorSet | None:
        """The validator set of ``height`` (known up to tip + 2), or None."""

    def lthash(self) -> bytes:
        """The 2048-byte LtHash accumulator of the committed state."""


@dataclass(frozen=True)
class BlockResult:
    height: int
    changes: dict[bytes, Account]              # address -> final account (EMPTY_ACCOUNT = delete)
    undo: dict[bytes, Account | None]          # address -> value before the block (None = absent)
    lthash: bytes                              # 2048-byte accumulator after the block
    state_root: bytes                          # sha256(lthash)
    next_validators: ValidatorSet              # the set of height + 2
    applied: tuple[Transaction, ...] = ()      # txs included (build mode skips invalid ones)
    rejected: tuple[tuple[Transaction, str], ...] = field(default=())  # (tx, reason) skipped
    evidence: tuple[Evidence, ...] = ()        # evidence applied (build mode skips what no longer applies)
