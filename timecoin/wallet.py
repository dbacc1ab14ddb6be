"""Wallet commands: sign transactions with a local key file and hand them to a node over JSON-RPC (SPEC §8).

The key never leaves this process: the node gets only the signed transaction. Amounts are decimal TIME
strings with at most 8 decimals (``"1.5"``, ``"0.00000001"``), parsed exactly (``rpc.render.parse_amount``), never
floats. The nonce comes from the node (``getaccount``'s ``next_nonce`` counts the sender's txs already
in its mempool), so several sends in a row work. ``--wait`` follows the tx until a block carrying it is
final (every stored block is: it carries its commit certificate) and reports height and block hash.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from timecoin import crypto
from timecoin.errors import DecodeError, TimecoinError
from timecoin.ledger.tx import ZERO_ADDRESS, Transaction, TxKind
from timecoin.rpc import render

DECIMALS = render.DECIMALS
MAX_UNITS = (1 << 63) - 1
WAIT_POLL_MS = 1_000                  # each long poll (waitfornewblock) lasts at most this long


class WalletError(TimecoinError):
    """One line for the user; the command exits non-zero."""


def parse_amount(text: str, what: str = "amount", allow_zero: bool = False) -> int:
    """Units (10^-8 TIME) of a decimal TIME string: at most 8 decimals, no exponent, no sign, in range."""
    text = text.strip()
    if not text or any(c not in "0123456789." for c in text) or text.count(".") > 1 or text == ".":
        raise WalletError(f"{what} must be a decimal number of TIME like 1.5 (at most {DECIMALS} decimals), "
                          f"not {text!r}")
    try:
        n = render.parse_amount(text)
    except ValueError:
        raise WalletError(f"{what} {text} has more than {DECIMALS} decimals") from None
    if n > MAX_UNITS:
        raise WalletError(f"{what} {text} TIME is more than can exist")
    if n == 0 and not allow_zero:
        raise WalletError(f"{what} must be more than 0")
    return n


def parse_address(text: str) -> bytes:
    try:
        return crypto.decode_address(text.strip())
    except DecodeError as exc:
        raise WalletError(f"bad address {text!r}: {exc}") from None


def load_key(path: str) -> crypto.PrivateKey:
    try:
        return crypto.PrivateKey.load(path)
    except OSError as exc:
        raise WalletError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except TimecoinError as exc:
        raise WalletError(f"{path} is not a key file: {exc}") from None


# call(method, params) -> result; raises the RPC client's errors (turned into WalletError by the caller)
Call = Callable[[str, list[Any]], Any]


@dataclass(frozen=True)
class Sent:
    txid: str
    height: int | None = None          # with --wait: where it became final
    block_hash: str | None = None


def build(call: Call, key: crypto.PrivateKey, kind: TxKind, amount: int, fee: int,
          recipient: bytes = ZERO_ADDRESS) -> Transaction:
    """The signed tx: the node's chain id, the sender's next nonce counting its mempool txs."""
    info = call("getblockchaininfo", [])
    chain_id = info.get("chain_id") if isinstance(info, dict) else None
    if not isinstance(chain_id, str):
        raise WalletError("the node did not say its chain id (getblockchaininfo.chain_id)")
    account = call("getaccount", [crypto.encode_address(key.address, _network_of(info))])
    nonce = account.get("next_nonce") if isinstance(account, dict) else None
    if not isinstance(nonce, int) or nonce < 0:
        raise WalletError("the node did not say the account's next nonce (getaccount.next_nonce)")
    return Transaction.create(key, kind, chain_id, nonce, fee, amount, recipient)


def submit(call: Call, tx: Transaction, wait: bool = False, timeout: float = 120.0,
           clock: Callable[[], float] = time.monotonic) -> Sent:
    """Send ``tx``; with ``wait``, follow it until final (WalletError after ``timeout`` seconds)."""
    txid = call("sendrawtransaction", [tx.encoded.hex()])
    if not wait:
        return Sent(txid)
    deadline = clock() + timeout
    for _ in range(int(timeout * 1000 / WAIT_POLL_MS) + 2):       # bounded: one long poll per pass
        status = call("gettransactionfinality", [txid])
        if isinstance(status, dict) and status.get("final"):
            return Sent(txid, status.get("height"), status.get("blockhash"))
        if isinstance(status, dict) and status.get("where") == "unknown":
            raise WalletError(f"tx {txid} is no longer known to the node (dropped from its mempool)")
        left = deadline - clock()
        if left <= 0:
            break
        call("waitfornewblock", [int(min(left * 1000, WAIT_POLL_MS))])
    raise WalletError(f"tx {txid} was not final within {timeout:g} s (it may still be: timecoin tx {txid})")


def _network_of(info: dict[str, Any]) -> str:
    chain = info.get("chain")
    return chain if chain in ("devnet", "testnet", "mainnet") else "devnet"
