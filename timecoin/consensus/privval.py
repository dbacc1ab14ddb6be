"""The double-sign guard (SPEC §4 "Never double-sign"; CometBFT's ``privval`` FilePV).

Before a proposal or vote leaves the node, the (height, round, step) it signs, its sign bytes and the
signature are written to LMDB in a committed (fsync'd) transaction. Afterwards, and after any crash:
* a request for a lower (height, round, step) is refused;
* the same (height, round, step) with the same sign bytes returns the recorded signature (so a
  restarted node can re-broadcast what it already signed);
* the same (height, round, step) with different sign bytes is refused — that would be equivocation.
Step order within a round: proposal (1) < prevote (2) < precommit (3).
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

    def _sign(self, height: int, round_: int, step: int, tag: bytes, payload: bytes) -> bytes:
        last = self.last_signed()
        if last is not None:
            lh, lr, ls, lpayload, lsig = last
            if (height, round_, step) < (lh, lr, ls):
                raise DoubleSignRefused(f"already signed {lh}/{lr}/{ls}, asked for {height}/{round_}/{step}")
            if (height, round_, step) == (lh, lr, ls):
                if payload == lpayload:
                    return lsig
                raise DoubleSignRefused(f"conflicting message at {height}/{round_}/{step}")
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
