"""Broadcast envelopes are built from the message's own bytes (no re-encode): they must be exactly what the
codec would encode, for every type broadcast takes, or peers would refuse them as malformed."""
from __future__ import annotations

import hashlib

from timecoin import crypto
from timecoin.ledger.block import Block, Evidence, Header, Proposal, Vote, VoteType, evidence_root, tx_root
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.p2p.gossip import message_id
from timecoin.p2p.service import ENVELOPE_HEADER
from timecoin.wire import messages as m

CHAIN = "envelope-test"
KEY = crypto.PrivateKey(hashlib.sha256(b"envelope").digest())


def _samples() -> list[tuple[m.MsgType, object]]:
    tx = Transaction.create(KEY, TxKind.TRANSFER, CHAIN, 7, 1000, 5, b"\x11" * 20)
    va = Vote(VoteType.PREVOTE, 3, 0, b"\x01" * 32, KEY.address).signed(KEY, CHAIN)
    vb = Vote(VoteType.PREVOTE, 3, 0, b"\x02" * 32, KEY.address).signed(KEY, CHAIN)
    header = Header(3, 0, b"\x33" * 32, 1_700_000_000_000, KEY.address, tx_root([tx]), b"\x44" * 32,
                    b"\x55" * 32, evidence_root(()))
    proposal = Proposal(3, 0, -1, KEY.address, Block(header, (tx,)))
    evidence = Evidence(*sorted((va, vb), key=lambda v: v.id))
    return [(m.MsgType.TX, tx), (m.MsgType.VOTE, va), (m.MsgType.PROPOSAL, proposal), (m.MsgType.EVIDENCE, evidence)]


def test_an_envelope_of_the_message_bytes_is_the_codec_s_own_encoding() -> None:
    for msg_type, msg in _samples():
        built = bytes((msg_type,)) + bytes(4) + msg.encoded
        assert built == m.encode_message(msg_type, msg.to_wire()), msg_type
        assert len(built) - len(msg.encoded) == ENVELOPE_HEADER
        assert message_id(msg_type, msg.encoded) == message_id(msg_type, built[ENVELOPE_HEADER:])
        assert m.decode_message(built)[0] == msg_type
