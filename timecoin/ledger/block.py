"""Blocks, votes, evidence, proposals and commit certificates (SPEC §3–§4).

Signed bytes, each under its own domain tag and the chain id (``crypto.signing_digest``):
* Vote: the vote's encoding without its trailing signature (tag ``timecoin/vote/v1``).
* Proposal: ``ProposalSignBytes`` = height, round, pol_round, block hash, proposer
  (tag ``timecoin/proposal/v1``), so a re-proposed block is not re-signed in full.
* A commit certificate holds the precommits' (validator, signature) pairs; each vote is rebuilt from
  the certificate's height, round and block hash. ``verify_certificate`` checks finality of a stored
  block from the block and the validator set of its height alone.
A block hash is SHA-256 of the header encoding; the header commits to the txs (Merkle root of tx ids)
and evidence (Merkle root of evidence hashes).
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from timecoin import crypto
from timecoin.errors import DecodeError, InvalidSignature, Reason, ValidationError
from timecoin.ledger.merkle import merkle_root
from timecoin.ledger.tx import VERIFIED, ZERO_SIGNATURE, Transaction
from timecoin.ledger.validators import ValidatorSet
from timecoin.wire import messages

BLOCK_VERSION = 1
NIL_HASH = bytes(32)
BLOCK_TXS_AT = messages.Header.sizeof() + 4          # the first tx of an encoded block (after the header, count)
TX_FIXED_SIZE = len(messages.TX.encode({"kind": 0, "chain_id": "", "sender": bytes(33), "nonce": 0, "fee": 0,
                                        "amount": 0, "recipient": bytes(20), "signature": bytes(64)}))


class VoteType(enum.IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


@dataclass(frozen=True)
class Vote:
    type: VoteType
    height: int
    round: int
    block_hash: bytes          # NIL_HASH for a nil vote
    validator: bytes           # address
    signature: bytes = ZERO_SIGNATURE

    def to_wire(self) -> dict[str, Any]:
        return {"type": int(self.type), "height": self.height, "round": self.round,
                "block_hash": self.block_hash, "validator": self.validator, "signature": self.signature}

    @classmethod
    def from_wire(cls, c: Any) -> Vote:
        try:
            vtype = VoteType(c["type"])
        except ValueError:
            raise DecodeError(f"unknown vote type {c['type']}") from None
        return cls(vtype, c["height"], c["round"], c["block_hash"], c["validator"], c["signature"])

    @classmethod
    def decode(cls, data: bytes) -> Vote:
        return cls.from_wire(messages.VOTE.decode(data))

    @cached_property
    def encoded(self) -> bytes:
        return messages.VOTE.encode(self.to_wire())

    @cached_property
    def id(self) -> bytes:
        return hashlib.sha256(self.encoded).digest()

    @property
    def is_nil(self) -> bool:
        return self.block_hash == NIL_HASH

    def signing_payload(self) -> bytes:
        return self.encoded[:-crypto.SIGNATURE_SIZE]

    def signed(self, key: crypto.PrivateKey, chain_id: str) -> Vote:
        unsigned = replace(self, validator=key.address, signature=ZERO_SIGNATURE)
        return replace(unsigned, signature=key.sign(crypto.TAG_VOTE, chain_id, unsigned.signing_payload()))

    def verify_signature(self, pubkey: bytes, chain_id: str) -> None:
        key = self.id + pubkey + chain_id.encode()
        if key in VERIFIED:
            return
        if not crypto.verify(pubkey, crypto.TAG_VOTE, chain_id, self.signing_payload(), self.signature):
            raise InvalidSignature("bad vote signature")
        VERIFIED.add(key)


@dataclass(frozen=True)
class Evidence:
    """Duplicate-vote evidence: two signed votes of one validator for one (height, round, type)."""

    vote_a: Vote
    vote_b: Vote

    def to_wire(self) -> dict[str, Any]:
        return {"vote_a": self.vote_a.to_wire(), "vote_b": self.vote_b.to_wire()}

    @classmethod
    def from_wire(cls, c: Any) -> Evidence:
        return cls(Vote.from_wire(c["vote_a"]), Vote.from_wire(c["vote_b"]))

    @classmethod
    def decode(cls, data: bytes) -> Evidence:
        return cls.from_wire(messages.EVIDENCE.decode(data))

    @classmethod
    def of(cls, a: Vote, b: Vote) -> Evidence:
        """Canonical order: the vote with the smaller block hash first."""
        return cls(a, b) if a.block_hash < b.block_hash else cls(b, a)

    @cached_property
    def encoded(self) -> bytes:
        return messages.EVIDENCE.encode(self.to_wire())

    @cached_property
    def hash(self) -> bytes:
        return hashlib.sha256(self.encoded).digest()

    @property
    def validator(self) -> bytes:
        return self.vote_a.validator

    @property
    def height(self) -> int:
        return self.vote_a.height

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        """ValidationError(BAD_EVIDENCE) unless this proves an equivocation by a member of the set."""
        a, b = self.vote_a, self.vote_b
        if (a.type, a.height, a.round, a.validator) != (b.type, b.height, b.round, b.validator):
            raise ValidationError(Reason.BAD_EVIDENCE, "votes are not for the same height/round/type/validator")
        if not a.block_hash < b.block_hash:
            raise ValidationError(Reason.BAD_EVIDENCE, "votes must differ and be in canonical order")
        v = validators.by_address.get(a.validator)
        if v is None:
            raise ValidationError(Reason.BAD_EVIDENCE, "not a validator at that height")
        try:
            a.verify_signature(v.pubkey, chain_id)
            b.verify_signature(v.pubkey, chain_id)
        except InvalidSignature:
            raise ValidationError(Reason.BAD_EVIDENCE, "a vote's signature does not verify") from None


@dataclass(frozen=True)
class Header:
    height: int
    round: int
    prev_hash: bytes
    timestamp: int             # ms since the epoch
    proposer: bytes            # address
    tx_root: bytes
    state_root: bytes
    validators_hash: bytes
    evidence_root: bytes
    version: int = BLOCK_VERSION

    def to_wire(self) -> dict[str, Any]:
        return {"version": self.version, "height": self.height, "round": self.round,
                "prev_hash": self.prev_hash, "timestamp": self.timestamp, "proposer": self.proposer,
                "tx_root": self.tx_root, "state_root": self.state_root,
                "validators_hash": self.validators_hash, "evidence_root": self.evidence_root}

    @classmethod
    def from_wire(cls, c: Any) -> Header:
        return cls(c["height"], c["round"], c["prev_hash"], c["timestamp"], c["proposer"], c["tx_root"],
                   c["state_root"], c["validators_hash"], c["evidence_root"], c["version"])

    @cached_property
    def encoded(self) -> bytes:
        return messages.HEADER.encode(self.to_wire())

    @cached_property
    def hash(self) -> bytes:
        return hashlib.sha256(self.encoded).digest()


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[Transaction, ...] = ()
    evidence: tuple[Evidence, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"header": self.header.to_wire(), "txs": [t.to_wire() for t in self.txs],
                "evidence": [e.to_wire() for e in self.evidence]}

    @classmethod
    def from_wire(cls, c: Any) -> Block:
        return cls(Header.from_wire(c["header"]), tuple(Transaction.from_wire(t) for t in c["txs"]),
                   tuple(Evidence.from_wire(e) for e in c["evidence"]))

    @classmethod
    def decode(cls, data: bytes) -> Block:
        data = bytes(data)
        block = cls.from_wire(messages.BLOCK.decode(data))
        block.__dict__["encoded"] = data
        # Each tx's canonical encoding is its slice of the block's (the layout is a header, a u32 count, then
        # the txs back to back), so ids and sizes need no re-encoding.
        at = BLOCK_TXS_AT
        sizes: dict[str, int] = {}
        for tx in block.txs:
            size = sizes.get(tx.chain_id)
            if size is None:
                size = sizes[tx.chain_id] = TX_FIXED_SIZE + len(tx.chain_id.encode())
            tx.__dict__["encoded"] = data[at:at + size]
            at += size
        return block

    @cached_property
    def encoded(self) -> bytes:
        return messages.BLOCK.encode(self.to_wire())

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def size(self) -> int:
        return len(self.encoded)

    def check_roots(self) -> None:
        """The header's tx and evidence roots match the body."""
        if self.header.tx_root != tx_root(self.txs):
            raise ValidationError(Reason.BAD_BLOCK, "tx_root does not match the transactions")
        if self.header.evidence_root != evidence_root(self.evidence):
            raise ValidationError(Reason.BAD_BLOCK, "evidence_root does not match the evidence")


def tx_root(txs: tuple[Transaction, ...] | list[Transaction]) -> bytes:
    return merkle_root([t.id for t in txs])


def evidence_root(evidence: tuple[Evidence, ...] | list[Evidence]) -> bytes:
    return merkle_root([e.hash for e in evidence])


@dataclass(frozen=True)
class CommitCertificate:
    height: int
    round: int
    block_hash: bytes
    signatures: tuple[tuple[bytes, bytes], ...] = field(default=())   # (validator address, signature)

    def to_wire(self) -> dict[str, Any]:
        return {"height": self.height, "round": self.round, "block_hash": self.block_hash,
                "signatures": [{"validator": a, "signature": s} for a, s in self.signatures]}

    @classmethod
    def from_wire(cls, c: Any) -> CommitCertificate:
        return cls(c["height"], c["round"], c["block_hash"],
                   tuple((s["validator"], s["signature"]) for s in c["signatures"]))

    @classmethod
    def decode(cls, data: bytes) -> CommitCertificate:
        return cls.from_wire(messages.COMMIT_CERTIFICATE.decode(data))

    @cached_property
    def encoded(self) -> bytes:
        return messages.COMMIT_CERTIFICATE.encode(self.to_wire())

    @classmethod
    def from_votes(cls, votes: list[Vote]) -> CommitCertificate:
        """Build from precommits for one block (sorted by validator address: canonical)."""
        first = votes[0]
        sigs = tuple(sorted((v.validator, v.signature) for v in votes))
        return cls(first.height, first.round, first.block_hash, sigs)

    def votes(self) -> list[Vote]:
        return [Vote(VoteType.PRECOMMIT, self.height, self.round, self.block_hash, a, s)
                for a, s in self.signatures]


@dataclass(frozen=True)
class QuorumProof:
    """More than 2/3 of a round's votes of one kind for one value (nil included), as (validator, signature).

    A node that holds such a quorum sends it to peers at its height (vote propagation, SPEC §4): the proof
    carries its own justification, so a receiver needs to trust nobody -- it checks every signature and the
    power itself, and may then count votes it had refused for want of room (an equivocator's vote for the
    value). Same shape as a :class:`CommitCertificate` plus the vote type.
    """

    type: VoteType
    height: int
    round: int
    block_hash: bytes
    signatures: tuple[tuple[bytes, bytes], ...] = field(default=())   # (validator address, signature)

    def to_wire(self) -> dict[str, Any]:
        return {"type": int(self.type), "height": self.height, "round": self.round, "block_hash": self.block_hash,
                "signatures": [{"validator": a, "signature": s} for a, s in self.signatures]}

    @classmethod
    def from_wire(cls, c: Any) -> QuorumProof:
        try:
            vtype = VoteType(c["type"])
        except ValueError:
            raise DecodeError(f"unknown vote type {c['type']}") from None
        return cls(vtype, c["height"], c["round"], c["block_hash"],
                   tuple((s["validator"], s["signature"]) for s in c["signatures"]))

    @classmethod
    def decode(cls, data: bytes) -> QuorumProof:
        return cls.from_wire(messages.VOTE_QUORUM.decode(data))

    @cached_property
    def encoded(self) -> bytes:
        return messages.VOTE_QUORUM.encode(self.to_wire())

    @classmethod
    def from_votes(cls, votes: list[Vote]) -> QuorumProof:
        """From votes of one (height, round, type, value), in canonical (ascending validator) order."""
        first = votes[0]
        return cls(first.type, first.height, first.round, first.block_hash,
                   tuple(sorted((v.validator, v.signature) for v in votes)))

    def votes(self) -> list[Vote]:
        return [Vote(self.type, self.height, self.round, self.block_hash, a, s) for a, s in self.signatures]


def verify_certificate(block: Block, cert: CommitCertificate, validators: ValidatorSet,
                       chain_id: str) -> None:
    """Check that ``cert`` finalizes ``block`` under ``validators`` (the set of its height).

    Raises ValidationError(BAD_CERTIFICATE) unless: the certificate names this block's height and hash,
    every signer is a distinct member of the set with a valid precommit signature, signers are in
    canonical (ascending address) order, and their power is strictly more than 2/3 of the total.
    """
    if cert.height != block.height or cert.block_hash != block.hash:
        raise ValidationError(Reason.BAD_CERTIFICATE, "certificate is for another block")
    if block.header.validators_hash != validators.hash:
        raise ValidationError(Reason.BAD_CERTIFICATE, "block names another validator set")
    power = 0
    prev = b""
    for vote in cert.votes():
        if vote.validator <= prev:
            raise ValidationError(Reason.BAD_CERTIFICATE, "signers not in strictly ascending order")
        prev = vote.validator
        v = validators.by_address.get(vote.validator)
        if v is None:
            raise ValidationError(Reason.BAD_CERTIFICATE, "a signer is not a validator at this height")
        try:
            vote.verify_signature(v.pubkey, chain_id)
        except InvalidSignature:
            raise ValidationError(Reason.BAD_CERTIFICATE, "a precommit signature does not verify") from None
        power += v.power
    if not validators.quorum(power):
        raise ValidationError(Reason.BAD_CERTIFICATE,
                              f"signers hold {power} of {validators.total_power} power, not > 2/3")


@dataclass(frozen=True)
class Proposal:
    height: int
    round: int
    pol_round: int             # -1 when there is no proof-of-lock round
    proposer: bytes
    block: Block
    signature: bytes = ZERO_SIGNATURE

    def to_wire(self) -> dict[str, Any]:
        return {"height": self.height, "round": self.round, "pol_round": self.pol_round,
                "proposer": self.proposer, "block": self.block.to_wire(), "signature": self.signature}

    @classmethod
    def from_wire(cls, c: Any) -> Proposal:
        return cls(c["height"], c["round"], c["pol_round"], c["proposer"], Block.from_wire(c["block"]),
                   c["signature"])

    @classmethod
    def decode(cls, data: bytes) -> Proposal:
        return cls.from_wire(messages.PROPOSAL.decode(data))

    @cached_property
    def encoded(self) -> bytes:
        return messages.PROPOSAL.encode(self.to_wire())

    def signing_payload(self) -> bytes:
        return messages.PROPOSAL_SIGN_BYTES.encode({
            "height": self.height, "round": self.round, "pol_round": self.pol_round,
            "block_hash": self.block.hash, "proposer": self.proposer})

    def signed(self, key: crypto.PrivateKey, chain_id: str) -> Proposal:
        unsigned = replace(self, proposer=key.address, signature=ZERO_SIGNATURE)
        return replace(unsigned, signature=key.sign(crypto.TAG_PROPOSAL, chain_id, unsigned.signing_payload()))

    def verify_signature(self, pubkey: bytes, chain_id: str) -> None:
        if not crypto.verify(pubkey, crypto.TAG_PROPOSAL, chain_id, self.signing_payload(), self.signature):
            raise InvalidSignature("bad proposal signature")
