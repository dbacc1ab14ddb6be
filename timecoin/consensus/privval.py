"""The double-sign guard (SPEC §4 "Never double-sign"; CometBFT's ``privval`` FilePV).

Before a proposal or vote leaves the node, the (height, round, step) it signs, its sign bytes and the
signature are written to LMDB in a committed (fsync'd) transaction. Afterwards, and after any crash:
* a request for a lower (height, round, step) is refused;
* the same (height, round, step) with the same sign bytes returns the recorded signature (so a
  restarted node can re-broadcast what it already signed);
* the same (height, round, step) with different sign bytes is refused — that would be equivocation.
Step order within a round: proposal (1) < prevote (2) < precommit (3).

The record is enough to rebuild a signed *vote* (a vote's sign bytes are its encoding minus the
signature: :func:`vote_from_record`), not a signed *proposal*: a proposal's sign bytes carry only the
block's hash. The service therefore logs the unsigned proposal (with its block) in the WAL before it
asks the guard to sign it (see ``ConsensusService`` and :func:`proposal_from_record`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from twisted.logger import Logger

from timecoin import crypto
from timecoin.ledger.block import Proposal, Vote, VoteType

STEP_PROPOSAL = 1
_STEP_OF_VOTE = {VoteType.PREVOTE: 2, VoteType.PRECOMMIT: 3}
_KEY = b"last_signed"


class KeyValue(Protocol):
    """Durable single-key storage: the Store's generic get/put on its ``privval`` database."""

    def get(self, db_name: str, key: bytes) -> bytes | None: ...

    def put(self, db_name: str, key: bytes, value: bytes) -> None: ...


class DoubleSignRefused(Exception):
    """The guard refused to sign: it would conflict with something already signed."""


class PrivValidator:
    """Signs proposals and votes for one key, never twice in conflict."""

    log = Logger()

    def __init__(self, key: crypto.PrivateKey, chain_id: str, kv: KeyValue) -> None:
        self.key = key
        self.address = key.address
        self.chain_id = chain_id
        self.kv = kv

    def last_signed(self) -> tuple[int, int, int, bytes, bytes] | None:
        """(height, round, step, sign bytes, signature) of the last signature, if any."""
        raw = self.kv.get("privval", _KEY)
        if raw is None:
            return None
        h, r, s = int.from_bytes(raw[0:8], "big"), int.from_bytes(raw[8:12], "big"), raw[12]
        sig = raw[13:77]
        return h, r, s, raw[77:], sig

    def _check(self, height: int, round_: int, step: int, payload: bytes) -> bytes | None:
        """The recorded signature if this exact message was the last signed, None if it may be signed;
        raises DoubleSignRefused if it conflicts."""
        last = self.last_signed()
        if last is not None:
            lh, lr, ls, lpayload, lsig = last
            if (height, round_, step) < (lh, lr, ls):
                raise DoubleSignRefused(f"already signed {lh}/{lr}/{ls}, asked for {height}/{round_}/{step}")
            if (height, round_, step) == (lh, lr, ls):
                if payload == lpayload:
                    return lsig
                raise DoubleSignRefused(f"conflicting message at {height}/{round_}/{step}")
        return None

    def would_sign_proposal(self, proposal: Proposal) -> bool:
        """True unless :meth:`sign_proposal` would refuse (read-only)."""
        unsigned = replace(proposal, proposer=self.address, signature=bytes(64))
        try:
            self._check(proposal.height, proposal.round, STEP_PROPOSAL, unsigned.signing_payload())
        except DoubleSignRefused:
            return False
        return True

    def _sign(self, height: int, round_: int, step: int, tag: bytes, payload: bytes) -> bytes:
        recorded = self._check(height, round_, step, payload)
        if recorded is not None:
            return recorded
        sig = self.key.sign(tag, self.chain_id, payload)
        record = height.to_bytes(8, "big") + round_.to_bytes(4, "big") + bytes((step,)) + sig + payload
        self.kv.put("privval", _KEY, record)      # durable before the signature is returned
        return sig

    def sign_vote(self, vote: Vote) -> Vote | None:
        unsigned = replace(vote, validator=self.address, signature=bytes(64))
        try:
            sig = self._sign(vote.height, vote.round, _STEP_OF_VOTE[vote.type], crypto.TAG_VOTE,
                             unsigned.signing_payload())
        except DoubleSignRefused as exc:
            self.log.warn("Refused to sign a vote: {why}", why=str(exc))
            return None
        return replace(unsigned, signature=sig)

    def sign_proposal(self, proposal: Proposal) -> Proposal | None:
        unsigned = replace(proposal, proposer=self.address, signature=bytes(64))
        try:
            sig = self._sign(proposal.height, proposal.round, STEP_PROPOSAL, crypto.TAG_PROPOSAL,
                             unsigned.signing_payload())
        except DoubleSignRefused as exc:
            self.log.warn("Refused to sign a proposal: {why}", why=str(exc))
            return None
        return replace(unsigned, signature=sig)


def vote_from_record(step: int, payload: bytes, signature: bytes) -> Vote | None:
    """The signed vote a guard record (a prevote or precommit step) stands for; None for a proposal step."""
    if step not in _STEP_OF_VOTE.values():
        return None
    vote = Vote.decode(payload + signature)          # sign bytes = the encoding without its signature
    if vote.signing_payload() != payload or _STEP_OF_VOTE.get(vote.type) != step:
        raise ValueError("guard record is not a vote's sign bytes")
    return vote


def proposal_from_record(step: int, payload: bytes, signature: bytes, unsigned: list[Proposal]) -> Proposal | None:
    """The signed proposal a guard record (proposal step) stands for, rebuilt from the unsigned proposal
    among ``unsigned`` whose sign bytes are the record's (the record alone holds only the block hash)."""
    if step != STEP_PROPOSAL:
        return None
    for p in unsigned:
        candidate = replace(p, signature=bytes(64))
        if candidate.signing_payload() == payload:
            return replace(candidate, signature=signature)
    return None
