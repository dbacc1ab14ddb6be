"""JSON forms of chain objects for RPC replies: amounts, addresses, transactions, headers, blocks, certificates.

One module so that every method renders the same object the same way (getblock's txs look like
getrawtransaction's, a certificate in getblock like one in a finality proof).

Conventions (docs/rpc.md):

* **Amounts** (balances, fees, transfer amounts) are decimal strings of TIME with exactly 8 decimals,
  ``"12.50000000"`` -- never JSON numbers, which many clients parse as binary floats and round. A
  consumer that wants exact units strips the dot. :func:`amount` and :func:`parse_amount` convert.
* **Hashes, txids, public keys, signatures** are lower-case hex of the bytes as stored (no reversal).
* **Addresses** are the network's ``TIME0…``/``TIME1…`` form (:func:`timecoin.crypto.encode_address`).
* **Times** are seconds since the epoch (``time``, bitcoind's unit) with the exact block time in
  milliseconds beside them (``time_ms``), since blocks may be less than a second apart.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from timecoin import crypto
from timecoin.ledger.block import Block, CommitCertificate, Evidence, Header, Vote
from timecoin.ledger.tx import ZERO_ADDRESS, Transaction, TxKind

DECIMALS = 8


def amount(units: int) -> str:
    """``1250000000`` -> ``"12.50000000"`` (negative amounts keep their sign)."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), crypto.UNITS_PER_TIME)
    return f"{sign}{whole}.{frac:0{DECIMALS}d}"


def parse_amount(text: str) -> int:
    """``"12.5"`` -> ``1250000000`` units; ValueError for more than 8 decimals, signs, exponents or junk."""
    if not isinstance(text, str) or not text or text.strip() != text or text[0] in "+-":
        raise ValueError(f"not a TIME amount: {text!r}")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a TIME amount: {text!r}") from None
    if not value.is_finite() or "e" in text.lower():
        raise ValueError(f"not a TIME amount: {text!r}")
    units = value * crypto.UNITS_PER_TIME
    if units != units.to_integral_value():
        raise ValueError(f"more than {DECIMALS} decimals: {text!r}")
    return int(units)


def address(addr: bytes, network: str) -> str:
    return crypto.encode_address(addr, network)


def tx_json(tx: Transaction, network: str) -> dict[str, Any]:
    """A transaction as decoderawtransaction shows it (no chain position: see :func:`tx_position`)."""
    return {
        "txid": tx.id.hex(),
        "hash": tx.id.hex(),
        "size": tx.size,
        "kind": tx.kind.name.lower(),
        "chain_id": tx.chain_id,
        "from": address(tx.sender_address, network),
        "sender_pubkey": tx.sender.hex(),
        "nonce": tx.nonce,
        "fee": amount(tx.fee),
        "amount": amount(tx.amount),
        "to": recipient(tx, network),
        "signature": tx.signature.hex(),
    }


def recipient(tx: Transaction, network: str) -> str | None:
    """A transfer's recipient address; None for stake and unstake (they name no recipient)."""
    if tx.kind != TxKind.TRANSFER or tx.recipient == ZERO_ADDRESS:
        return None
    return address(tx.recipient, network)


def tx_position(height: int, block_hash: bytes, timestamp_ms: int, tip: int) -> dict[str, Any]:
    """Where a committed tx is: bitcoind's getrawtransaction fields for a confirmed tx."""
    return {"blockhash": block_hash.hex(), "height": height, "confirmations": confirmations(height, tip),
            "time": timestamp_ms // 1000, "blocktime": timestamp_ms // 1000}


def confirmations(height: int, tip: int) -> int:
    """bitcoind's count: the tip block has 1 confirmation."""
    return tip - height + 1


def vote_json(vote: Vote, network: str) -> dict[str, Any]:
    return {"type": vote.type.name.lower(), "height": vote.height, "round": vote.round,
            "block_hash": vote.block_hash.hex(), "validator": address(vote.validator, network),
            "signature": vote.signature.hex()}


def evidence_json(ev: Evidence, network: str) -> dict[str, Any]:
    return {"hash": ev.hash.hex(), "validator": address(ev.validator, network), "height": ev.height,
            "vote_a": vote_json(ev.vote_a, network), "vote_b": vote_json(ev.vote_b, network)}


def certificate_json(cert: CommitCertificate, network: str) -> dict[str, Any]:
    """A commit certificate: the precommits (validator address, signature) that finalized a block."""
    return {"height": cert.height, "round": cert.round, "block_hash": cert.block_hash.hex(),
            "signatures": [{"validator": address(a, network), "validator_hex": a.hex(), "signature": s.hex()}
                           for a, s in cert.signatures]}


def header_json(header: Header, network: str, *, tip: int, n_tx: int,
                next_hash: bytes | None) -> dict[str, Any]:
    """bitcoind's getblockheader fields that apply, plus ours (proposer, round, roots)."""
    out: dict[str, Any] = {
        "hash": header.hash.hex(),
        "confirmations": confirmations(header.height, tip),
        "height": header.height,
        "version": header.version,
        "merkleroot": header.tx_root.hex(),
        "time": header.timestamp // 1000,
        "time_ms": header.timestamp,
        "nTx": n_tx,
        "previousblockhash": header.prev_hash.hex(),
        "proposer": address(header.proposer, network),
        "round": header.round,
        "state_root": header.state_root.hex(),
        "validators_hash": header.validators_hash.hex(),
        "evidence_root": header.evidence_root.hex(),
    }
    if next_hash is not None:              # bitcoind omits it at the tip
        out["nextblockhash"] = next_hash.hex()
    return out


def block_json(block: Block, cert: CommitCertificate | None, network: str, *, tip: int,
               next_hash: bytes | None, verbosity: int) -> dict[str, Any]:
    """getblock's JSON: verbosity 1 lists txids, 2 decoded txs; ``commit`` is the certificate (null if absent)."""
    out = header_json(block.header, network, tip=tip, n_tx=len(block.txs), next_hash=next_hash)
    out["size"] = block.size
    out["tx"] = [tx_json(t, network) if verbosity >= 2 else t.id.hex() for t in block.txs]
    out["evidence"] = [evidence_json(e, network) for e in block.evidence]
    out["commit"] = certificate_json(cert, network) if cert is not None else None
    return out
