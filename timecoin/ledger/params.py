"""Consensus-critical chain parameters, fixed by the genesis file (SPEC §2–§3)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from timecoin.crypto import UNITS_PER_TIME
from timecoin.ledger.validators import MAX_TOTAL_VOTING_POWER

MIN_VALIDATOR_STAKE = 1_000 * UNITS_PER_TIME
# The account layout counts unbonding entries in 16 bits (ledger/account.py); a chain's cap must fit it.
UNBONDING_ENTRIES_LAYOUT_MAX = 2**16 - 1
MAX_UNBONDING_ENTRIES = 32
# Params added after genesis files already existed: the canonical genesis JSON (and so the hash) has
# one only at a value other than its default, so older files keep their hash; absent means the default.
OPTIONAL_PARAMS = frozenset({"max_unbonding_entries"})
# Total supply (balances + stakes + unbonding) is kept at or below CometBFT's MaxTotalVotingPower
# (int64 max / 8, consensus/proposer.py), so no validator set's total power can exceed it.
MAX_TOTAL_SUPPLY = MAX_TOTAL_VOTING_POWER


@dataclass(frozen=True)
class ChainParams:
    chain_id: str
    block_reward: int = 10 * UNITS_PER_TIME       # units minted to the proposer per block
    min_fee: int = 1_000                           # units
    min_stake: int = MIN_VALIDATOR_STAKE           # stake at which an account is a validator
    unbonding_period: int = 100                    # blocks from unstake to spendable
    # Pending unbonding entries per account: an unstake that would add one more is refused
    # (ValidationError BAD_AMOUNT) until earlier ones mature. Keeps an account's encoding, which
    # every tx touching it re-hashes, small; at most UNBONDING_ENTRIES_LAYOUT_MAX.
    max_unbonding_entries: int = MAX_UNBONDING_ENTRIES
    slash_ppm: int = 50_000                        # stake slashed on equivocation, parts per million
    max_block_txs: int = 1_000
    max_block_bytes: int = 4 * 1024 * 1024
    evidence_max_age: int = 10_000                 # blocks after which evidence is no longer accepted
    # Not a genesis field: the genesis accounts' total, set by Genesis (0 for params built by hand).
    # Fees move and slashing burns, so the supply after block h is at most this + h * block_reward,
    # the bound the transition keeps <= MAX_TOTAL_SUPPLY.
    genesis_supply: int = field(default=0, compare=False, repr=False)

    def to_json(self) -> dict[str, int | str]:
        return {k: v for k, v in asdict(self).items() if k != "genesis_supply"}

    def supply_bound(self, height: int) -> int:
        """An upper bound on total supply after block ``height`` (exact if nothing was slashed)."""
        return self.genesis_supply + height * self.block_reward

    def reward_at(self, height: int) -> int:
        """The reward minted at ``height``: ``block_reward`` while ``supply_bound(height)`` stays within
        MAX_TOTAL_SUPPLY, then nothing (fees are still paid), so the chain never stops at the cap."""
        return self.block_reward if self.supply_bound(height) <= MAX_TOTAL_SUPPLY else 0
