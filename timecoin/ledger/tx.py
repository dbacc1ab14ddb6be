"""Transactions (SPEC §2): transfer, stake, unstake; each signed by its sender.

Wire layout: ``timecoin.wire.messages.Tx``. The signed bytes are the encoding without the trailing
64-byte signature, under the domain tag ``timecoin/tx/v1`` and the chain id. A tx id is the SHA-256
of the full encoding. Signatures are verified once per tx id (a bounded cache), not once per use.
"""
from __future__ import annotations

import enum
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from timecoin import crypto
from timecoin.errors import DecodeError, InvalidSignature
from timecoin.wire import messages

ZERO_ADDRESS = bytes(20)
ZERO_SIGNATURE = bytes(64)


class TxKind(enum.IntEnum):
    TRANSFER = 0
    STAKE = 1
    UNSTAKE = 2


class _VerifiedCache:
    """Ids of objects whose signature already verified; bounded LRU."""

    def __init__(self, size: int = 200_000) -> None:
        self._size = size
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def clear(self) -> None:
        """Forget every id (benchmarks that measure cold verification; tests)."""
        self._ids.clear()

    def add(self, key: bytes) -> None:
        self._ids[key] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)


VERIFIED = _VerifiedCache()


@dataclass(frozen=True)
class Transaction:
    kind: TxKind
    chain_id: str
    sender: bytes          # 33-byte compressed public key
    nonce: int
    fee: int
    amount: int
    recipient: bytes = ZERO_ADDRESS
    signature: bytes = ZERO_SIGNATURE

    # -- encoding --------------------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        return {"kind": int(self.kind), "chain_id": self.chain_id, "sender": self.sender,
                "nonce": self.nonce, "fee": self.fee, "amount": self.amount,
                "recipient": self.recipient, "signature": self.signature}

    @classmethod
    def from_wire(cls, c: Any) -> Transaction:
        try:
            kind = TxKind(c["kind"])
        except ValueError:
            raise DecodeError(f"unknown transaction kind {c['kind']}") from None
        tx = cls(kind, c["chain_id"], c["sender"], c["nonce"], c["fee"], c["amount"],
                 c["recipient"], c["signature"])
        return tx

    @classmethod
    def decode(cls, data: bytes) -> Transaction:
        tx = cls.from_wire(messages.TX.decode(data))
        tx.__dict__["encoded"] = bytes(data)
        return tx

    @cached_property
    def encoded(self) -> bytes:
        return messages.TX.encode(self.to_wire())

    @cached_property
    def id(self) -> bytes:
        return hashlib.sha256(self.encoded).digest()

    @property
    def size(self) -> int:
        return len(self.encoded)

    @cached_property
    def sender_address(self) -> bytes:
        return crypto.address_of(self.sender)

    def signing_payload(self) -> bytes:
        return self.encoded[:-crypto.SIGNATURE_SIZE]

    # -- signatures ------------------------------------------------------------------------------
    def signed(self, key: crypto.PrivateKey) -> Transaction:
        """This transaction with ``sender`` set to the key and signed by it."""
        unsigned = replace(self, sender=key.public_key, signature=ZERO_SIGNATURE)
        sig = key.sign(crypto.TAG_TX, self.chain_id, unsigned.signing_payload())
        return replace(unsigned, signature=sig)

    def verify_signature(self) -> None:
        """Raise InvalidSignature unless signed by ``sender`` (checked once per tx id)."""
        if self.id in VERIFIED:
            return
        if not crypto.verify(self.sender, crypto.TAG_TX, self.chain_id, self.signing_payload(),
                             self.signature):
            raise InvalidSignature("bad transaction signature")
        VERIFIED.add(self.id)

    @classmethod
    def create(cls, key: crypto.PrivateKey, kind: TxKind, chain_id: str, nonce: int, fee: int,
               amount: int, recipient: bytes = ZERO_ADDRESS) -> Transaction:
        return cls(kind, chain_id, key.public_key, nonce, fee, amount, recipient).signed(key)
