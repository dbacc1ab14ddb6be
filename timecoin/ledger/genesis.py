"""Genesis: the JSON file that founds a network; its hash is the network's identity (SPEC §2).

Format (amounts in units, 1 TIME = 10^8 units; ``genesis_time`` in ms since the epoch)::

    {"chain_id": "timecoin-devnet", "genesis_time": 1767225600000,
     "params": {"block_reward": 1000000000, "min_fee": 1000, ...},        # ChainParams, all optional
     "accounts": [{"address": "TIME0…", "balance": 0, "stake": 100000000000,
                   "pubkey": "02…"}]}                                     # pubkey required for stakers

``params.min_stake`` must be at least 1,000 TIME (SPEC §2: a validator stakes >= 1,000 TIME). A chain
for tests may go lower (down to 1 unit) only if the file says so with ``"test_chain": true`` at the top
level; that field is part of the hash when present (and absent from the canonical JSON when false, so
ordinary genesis files hash as before). ``params.max_unbonding_entries`` is between 1 and 65,535; like
``test_chain`` it is in the canonical JSON only when its value differs from the default (32; absent
means the default), so genesis files written before it existed keep their hash, and stating the default
changes nothing. Total supply (balances + stakes) plus one
block reward must not exceed MAX_TOTAL_SUPPLY (int64 max / 8 units, consensus's MaxTotalVotingPower).

The genesis hash is SHA-256 of the canonical JSON (keys sorted, no whitespace, accounts ordered by
address, every param explicit except optional ones at their default), so two files that mean the same
thing have the same hash. Block 1's
``prev_hash`` is the genesis hash; "height 0" has no block.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Any

from timecoin import crypto
from timecoin.errors import DecodeError, TimecoinError
from timecoin.ledger import lthash as lt
from timecoin.ledger.account import Account
from timecoin.ledger.params import (
    MAX_TOTAL_SUPPLY,
    MIN_VALIDATOR_STAKE,
    OPTIONAL_PARAMS,
    UNBONDING_ENTRIES_LAYOUT_MAX,
    ChainParams,
)
from timecoin.ledger.state import is_validator
from timecoin.ledger.validators import Validator, ValidatorSet

_PARAM_DEFAULTS = {f.name: f.default for f in fields(ChainParams)}   # optional params at these are not hashed

U64_MAX = 2**64 - 1


class GenesisError(TimecoinError):
    """A genesis file that cannot found a chain; the message says which field and why."""


@dataclass(frozen=True)
class GenesisAccount:
    address: bytes
    balance: int = 0
    stake: int = 0
    pubkey: bytes = b""


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time: int
    params: ChainParams
    accounts: tuple[GenesisAccount, ...]
    test_chain: bool = False          # allows params.min_stake below 1,000 TIME (tests only)

    # -- JSON ------------------------------------------------------------------------------------
    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"test_chain": True} if self.test_chain else {}
        return obj | {
            "chain_id": self.chain_id,
            "genesis_time": self.genesis_time,
            "params": {k: v for k, v in self.params.to_json().items()
                       if k != "chain_id" and (k not in OPTIONAL_PARAMS or v != _PARAM_DEFAULTS[k])},
            "accounts": [
                {"address": crypto.encode_address(a.address, "devnet"), "balance": a.balance,
                 "stake": a.stake, "pubkey": a.pubkey.hex()}
                for a in sorted(self.accounts, key=lambda a: a.address)],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_obj(), indent=1, sort_keys=True) + "\n"

    @cached_property
    def canonical(self) -> bytes:
        return json.dumps(self.to_json_obj(), sort_keys=True, separators=(",", ":")).encode()

    @cached_property
    def hash(self) -> bytes:
        return hashlib.sha256(self.canonical).digest()

    @classmethod
    def from_json(cls, text: str | bytes) -> Genesis:
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise GenesisError(f"genesis is not JSON: {exc}") from None
        return cls.from_obj(obj)

    @classmethod
    def load(cls, path: str) -> Genesis:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise GenesisError(f"cannot read genesis file {path}: {exc.strerror}") from None
        return cls.from_json(data)

    @classmethod
    def from_obj(cls, obj: Any) -> Genesis:
        if not isinstance(obj, dict):
            raise GenesisError("genesis must be a JSON object")
        unknown = set(obj) - {"chain_id", "genesis_time", "params", "accounts", "test_chain"}
        if unknown:
            raise GenesisError(f"unknown genesis field(s): {', '.join(sorted(unknown))}")
        chain_id = obj.get("chain_id")
        if not isinstance(chain_id, str) or not 0 < len(chain_id.encode()) <= 64:
            raise GenesisError("chain_id: a string of 1 to 64 bytes is required")
        gtime = _uint(obj.get("genesis_time"), "genesis_time")
        test_chain = obj.get("test_chain", False)
        if not isinstance(test_chain, bool):
            raise GenesisError("test_chain: true or false")
        raw_params = obj.get("params", {})
        params = _params(chain_id, raw_params, test_chain)
        raw_accounts = obj.get("accounts")
        if not isinstance(raw_accounts, list) or not raw_accounts:
            raise GenesisError("accounts: a non-empty list is required")
        accounts: dict[bytes, GenesisAccount] = {}
        for i, a in enumerate(raw_accounts):
            acct = _account(a, f"accounts[{i}]", params)
            if acct.address in accounts:
                raise GenesisError(f"accounts[{i}]: duplicate address")
            accounts[acct.address] = acct
        supply = sum(a.balance + a.stake for a in accounts.values())
        if supply + params.block_reward > MAX_TOTAL_SUPPLY:
            raise GenesisError(f"total supply {supply} units (balances + stakes) plus one block reward exceeds "
                               f"the maximum {MAX_TOTAL_SUPPLY} (int64 max / 8: consensus's total voting power cap)")
        params = replace(params, genesis_supply=supply)
        genesis = cls(chain_id, gtime, params, tuple(sorted(accounts.values(), key=lambda a: a.address)),
                      test_chain)
        if not len(genesis.validators()):
            raise GenesisError(f"no account stakes at least min_stake ({params.min_stake} units): no validators")
        return genesis

    # -- state -----------------------------------------------------------------------------------
    def initial_accounts(self) -> dict[bytes, Account]:
        """The accounts of the genesis state; empty ones (nothing to hold) are absent, as in the store."""
        accounts = {a.address: Account(balance=a.balance, stake=a.stake, pubkey=a.pubkey) for a in self.accounts}
        return {address: acct for address, acct in accounts.items() if not acct.is_empty}

    def validators(self) -> ValidatorSet:
        return ValidatorSet(Validator(addr, acct.pubkey, acct.stake)
                            for addr, acct in self.initial_accounts().items() if is_validator(acct, self.params))

    def initial_lthash(self) -> bytes:
        acc = lt.LtHash()
        for address, account in self.initial_accounts().items():
            acc.add(address + account.encoded)
        return acc.to_bytes()

    @classmethod
    def single_validator(cls, key: crypto.PrivateKey, chain_id: str = "timecoin-devnet",
                         stake: int = 10_000 * crypto.UNITS_PER_TIME, balance: int = 1_000_000 * crypto.UNITS_PER_TIME,
                         genesis_time: int | None = None, test_chain: bool = False, **params: int) -> Genesis:
        """A genesis where ``key`` is the one validator (the devnet's first start)."""
        return cls.for_validators([key.public_key], chain_id, stake, balance, genesis_time, (), test_chain, **params)

    @classmethod
    def for_validators(cls, pubkeys: list[bytes], chain_id: str, stake: int = 10_000 * crypto.UNITS_PER_TIME,
                       balance: int = 1_000_000 * crypto.UNITS_PER_TIME, genesis_time: int | None = None,
                       extra: tuple[GenesisAccount, ...] = (), test_chain: bool = False, **params: int) -> Genesis:
        gtime = int(time.time() * 1000) if genesis_time is None else genesis_time
        accounts = tuple(GenesisAccount(crypto.address_of(pk), balance, stake, pk) for pk in pubkeys) + extra
        genesis = cls(chain_id, gtime, ChainParams(chain_id, **params), accounts, test_chain)
        return cls.from_obj(genesis.to_json_obj())


def _uint(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise GenesisError(f"{name}: an integer between 0 and 2^64-1 is required, got {value!r}")
    return value


def _params(chain_id: str, raw: Any, test_chain: bool = False) -> ChainParams:
    if not isinstance(raw, dict):
        raise GenesisError("params must be an object")
    known = {f.name for f in fields(ChainParams)} - {"chain_id", "genesis_supply"}
    unknown = set(raw) - known
    if unknown:
        raise GenesisError(f"params: unknown key(s): {', '.join(sorted(unknown))}")
    values = {k: _uint(v, f"params.{k}") for k, v in raw.items()}
    params = ChainParams(chain_id, **values)
    if params.slash_ppm > 1_000_000:
        raise GenesisError("params.slash_ppm: at most 1000000")
    if params.max_block_txs < 1 or params.max_block_bytes < 1024:
        raise GenesisError("params: max_block_txs >= 1 and max_block_bytes >= 1024 are required")
    if params.min_stake < 1:
        raise GenesisError("params.min_stake: must be positive")
    if params.min_stake < MIN_VALIDATOR_STAKE and not test_chain:
        raise GenesisError(f"params.min_stake: {params.min_stake} is below {MIN_VALIDATOR_STAKE} units (1,000 TIME, "
                           "SPEC §2); only a genesis with \"test_chain\": true may go lower")
    if not 1 <= params.max_unbonding_entries <= UNBONDING_ENTRIES_LAYOUT_MAX:
        raise GenesisError(f"params.max_unbonding_entries: between 1 and {UNBONDING_ENTRIES_LAYOUT_MAX} "
                           "(the account layout counts entries in 16 bits)")
    return params


def _account(a: Any, where: str, params: ChainParams) -> GenesisAccount:
    if not isinstance(a, dict):
        raise GenesisError(f"{where}: must be an object")
    unknown = set(a) - {"address", "balance", "stake", "pubkey"}
    if unknown:
        raise GenesisError(f"{where}: unknown field(s): {', '.join(sorted(unknown))}")
    pubkey = b""
    if a.get("pubkey"):
        try:
            pubkey = bytes.fromhex(a["pubkey"])
        except (TypeError, ValueError):
            raise GenesisError(f"{where}.pubkey: not hex") from None
        if not crypto.valid_pubkey(pubkey):
            raise GenesisError(f"{where}.pubkey: not a compressed secp256k1 public key")
    if "address" in a:
        try:
            address = crypto.decode_address(a["address"]) if isinstance(a["address"], str) else None
        except DecodeError as exc:
            raise GenesisError(f"{where}.address: {exc}") from None
        if address is None:
            raise GenesisError(f"{where}.address: must be a string")
        if pubkey and crypto.address_of(pubkey) != address:
            raise GenesisError(f"{where}: address does not belong to pubkey")
    elif pubkey:
        address = crypto.address_of(pubkey)
    else:
        raise GenesisError(f"{where}: address or pubkey required")
    balance = _uint(a.get("balance", 0), f"{where}.balance")
    stake = _uint(a.get("stake", 0), f"{where}.stake")
    if stake and not pubkey:
        raise GenesisError(f"{where}: a staked account needs its pubkey (validators sign votes)")
    if stake and stake < params.min_stake:
        raise GenesisError(f"{where}.stake: {stake} is below min_stake {params.min_stake}")
    return GenesisAccount(address, balance, stake, pubkey)
