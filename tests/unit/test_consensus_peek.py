"""Reading a consensus message's height, round and signer at fixed offsets, before its body is decoded
(``messages.peek_consensus``; issue 11, finding 7): exactly the decoded values, or None."""
from __future__ import annotations

import pytest

from timecoin import crypto
from timecoin.ledger.block import Block, Header, Proposal, QuorumProof, Vote, VoteType
from timecoin.wire import messages as m

KEYS = [crypto.PrivateKey(bytes([9, i + 1]) + b"\x22" * 30) for i in range(3)]
CHAIN = "timecoin-peek"


def _messages() -> list[tuple[m.MsgType, Proposal | Vote | QuorumProof]]:
    block = Block(Header(7, 2, bytes(32), 1, KEYS[0].address, bytes(32), bytes(32), bytes(32), bytes(32)))
    votes = sorted((Vote(VoteType.PRECOMMIT, 2**40 + 3, 2**31 + 5, b"\x01" * 32, k.address).signed(k, CHAIN)
                    for k in KEYS), key=lambda v: v.validator)
    return [(m.MsgType.PROPOSAL, Proposal(7, 2**32 - 1, 1, KEYS[0].address, block).signed(KEYS[0], CHAIN)),
            (m.MsgType.VOTE, Vote(VoteType.PREVOTE, 2**63 - 1, 0, bytes(32), KEYS[1].address).signed(KEYS[1], CHAIN)),
            (m.MsgType.VOTE_QUORUM, QuorumProof.from_votes(votes))]


@pytest.mark.parametrize("request_id", [0, 77])
def test_peek_reads_what_decoding_reads(request_id: int) -> None:
    for msg_type, msg in _messages():
        payload = m.encode_message(msg_type, msg.to_wire(), request_id)
        fields = m.peek_consensus(payload)
        assert fields is not None
        decoded_type, _, body = m.decode_message(payload)
        signer = {m.MsgType.PROPOSAL: getattr(msg, "proposer", None),
                  m.MsgType.VOTE: getattr(msg, "validator", None)}.get(msg_type)
        assert fields == (decoded_type, body.height, body.round, signer)


def test_peek_says_nothing_of_other_types_or_short_payloads() -> None:
    assert m.peek_consensus(b"") is None
    assert m.peek_consensus(m.encode_message(m.MsgType.PING, {"nonce": 1, "payload": b"x" * 80})) is None
    for msg_type, msg in _messages():
        payload = m.encode_message(msg_type, msg.to_wire())
        need = {m.MsgType.PROPOSAL: 41, m.MsgType.VOTE: 70, m.MsgType.VOTE_QUORUM: 18}[msg_type]
        assert m.peek_consensus(payload[:need]) is not None
        for cut in range(need):
            assert m.peek_consensus(payload[:cut]) is None
