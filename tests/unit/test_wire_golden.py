"""Golden bytes for every message type and layout, and compiled/interpreted codec agreement (SPEC §5).

Each value is deterministic (keys from fixed secrets, RFC 6979 signatures, fixed fields) and its
encoding is pinned as hex written here: any change to a layout in messages.py changes the bytes on
the wire and must fail this test on purpose. A wire change needs a protocol version bump and new
golden hex (print the current bytes with ``python -m tests.unit.test_wire_golden``).
"""
from __future__ import annotations

import hashlib
from typing import Any

import pytest
from construct import Terminated

from timecoin import crypto
from timecoin.errors import DecodeError, Reason
from timecoin.ledger.block import Block, CommitCertificate, Proposal, Vote, VoteType
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.wire import messages
from timecoin.wire.messages import MsgType

CHAIN_ID = "timecoin-golden"


def _h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


KEY_A = crypto.PrivateKey(_h("golden key a"))
KEY_B = crypto.PrivateKey(_h("golden key b"))
SIG = crypto.SIGNATURE_SIZE


def _signed(codec: messages.Codec, value: dict[str, Any], key: crypto.PrivateKey, tag: bytes) -> dict[str, Any]:
    """Sign the encoding without its trailing signature, as txs and votes are signed."""
    unsigned = dict(value, signature=bytes(SIG))
    payload = codec.encode(unsigned)[:-SIG]
    return dict(value, signature=key.sign(tag, CHAIN_ID, payload))


def make_tx() -> dict[str, Any]:
    return _signed(messages.TX, {
        "kind": 0, "chain_id": CHAIN_ID, "sender": KEY_A.public_key, "nonce": 7, "fee": 1_000,
        "amount": 5 * crypto.UNITS_PER_TIME, "recipient": KEY_B.address}, KEY_A, crypto.TAG_TX)


def make_vote(key: crypto.PrivateKey, vtype: int, block_hash: bytes, height: int = 42, round_: int = 1) -> dict:
    return _signed(messages.VOTE, {"type": vtype, "height": height, "round": round_, "block_hash": block_hash,
                                   "validator": key.address}, key, crypto.TAG_VOTE)


def make_evidence() -> dict[str, Any]:
    a, b = sorted([make_vote(KEY_B, 1, _h("fork one")), make_vote(KEY_B, 1, _h("fork two"))],
                  key=lambda v: v["block_hash"])
    return {"vote_a": a, "vote_b": b}


def make_header() -> dict[str, Any]:
    return {"version": 1, "height": 42, "round": 1, "prev_hash": _h("block 41"), "timestamp": 1_700_000_000_000,
            "proposer": KEY_A.address, "tx_root": _h("tx root"), "state_root": _h("state root"),
            "validators_hash": _h("validators"), "evidence_root": _h("evidence root")}


def make_block() -> dict[str, Any]:
    return {"header": make_header(), "txs": [make_tx()], "evidence": [make_evidence()]}


def block_hash() -> bytes:
    return hashlib.sha256(messages.HEADER.encode(make_header())).digest()


def make_commit_sig(key: crypto.PrivateKey) -> dict[str, Any]:
    vote = make_vote(key, 2, block_hash())
    return {"validator": vote["validator"], "signature": vote["signature"]}


def make_certificate() -> dict[str, Any]:
    sigs = sorted([make_commit_sig(KEY_A), make_commit_sig(KEY_B)], key=lambda s: s["validator"])
    return {"height": 42, "round": 1, "block_hash": block_hash(), "signatures": sigs}


def make_vote_quorum() -> dict[str, Any]:
    return {"type": 2, **make_certificate()}


def make_proposal_sign_bytes() -> dict[str, Any]:
    return {"height": 42, "round": 1, "pol_round": -1, "block_hash": block_hash(), "proposer": KEY_A.address}


def make_proposal() -> dict[str, Any]:
    sign_bytes = messages.PROPOSAL_SIGN_BYTES.encode(make_proposal_sign_bytes())
    return {"height": 42, "round": 1, "pol_round": -1, "proposer": KEY_A.address, "block": make_block(),
            "signature": KEY_A.sign(crypto.TAG_PROPOSAL, CHAIN_ID, sign_bytes)}


def make_certified_block() -> dict[str, Any]:
    return {"block": make_block(), "certificate": make_certificate()}


def make_hello() -> dict[str, Any]:
    return {"protocol_version": messages.PROTOCOL_VERSION, "chain_id": CHAIN_ID, "genesis_hash": _h("genesis"),
            "best_height": 42, "best_hash": block_hash(), "finalized_height": 41, "finalized_hash": _h("block 41"),
            "listen_addrs": ["/ip4/127.0.0.1/tcp/7400", "/dns4/node.example/tcp/7400"],
            "agent": "timecoin/0.1.0 (golden)", "protocols": ["/timecoin/sync/1.0.0", "/timecoin/consensus/1.0.0"]}


def make_status() -> dict[str, Any]:
    return {"height": 42, "tip_hash": block_hash(), "finalized_height": 41, "finalized_hash": _h("block 41"),
            "genesis_hash": _h("genesis")}


def _hex(*parts: str) -> str:
    return "".join(parts)


# One body per message type; request ids differ so the envelope field is pinned too.
MESSAGE_VALUES: dict[MsgType, tuple[Any, int]] = {
    MsgType.HELLO: (make_hello(), 0),
    MsgType.PING: ({"nonce": 0x0123456789ABCDEF, "payload": b"ping"}, 1),
    MsgType.PONG: ({"nonce": 0x0123456789ABCDEF, "payload": b"ping"}, 1),
    MsgType.GET_STATUS: ({}, 2),
    MsgType.STATUS: (make_status(), 2),
    MsgType.GET_PEERS: ({}, 3),
    MsgType.PEERS: ({"addrs": ["/ip4/10.0.0.1/tcp/7400/p2p/" + KEY_A.peer_id, "/ip6/::1/tcp/7401"]}, 3),
    MsgType.GET_BLOCKS: ({"start": 40, "count": 3}, 4),
    MsgType.BLOCKS: ({"blocks": [make_certified_block()]}, 4),
    MsgType.GET_BLOCK_HASHES: ({"start": 40, "count": 2}, 5),
    MsgType.BLOCK_HASHES: ({"start": 40, "hashes": [_h("block 40"), _h("block 41")]}, 5),
    MsgType.TX: (make_tx(), 6),
    MsgType.PROPOSAL: (make_proposal(), 0),
    MsgType.VOTE: (make_vote(KEY_A, 1, block_hash()), 0),
    MsgType.EVIDENCE: (make_evidence(), 0),
    MsgType.NEW_BLOCK: ({"height": 42, "hash": block_hash()}, 0),
    MsgType.REJECT: ({"reason": int(Reason.RATE_LIMITED), "message": "rate limited: 100/min ✓"}, 0xFFFFFFFF),
    MsgType.VOTE_QUORUM: (make_vote_quorum(), 0),
}

# Layouts that are not a message body of their own (the others are checked against the envelopes).
LAYOUT_VALUES: dict[str, Any] = {
    "Header": make_header(),
    "Block": make_block(),
    "CommitSig": make_commit_sig(KEY_A),
    "CommitCertificate": make_certificate(),
    "ProposalSignBytes": make_proposal_sign_bytes(),
    "CertifiedBlock": make_certified_block(),
}

GOLDEN_MESSAGES: dict[MsgType, str] = {
    MsgType.HELLO: _hex(
        "010000000000010f74696d65636f696e2d676f6c64656eaeebad4a796fcc2e15dc4c6061b45ed9b373f26adfc798ca7d",
        "2d8cc58182718e000000000000002a5f744c7af3e51ddf8a594790a6f3717a1c885feac92ab98df450ed43086082fe00",
        "00000000000029c3defb9dfc74041662b2fd7c40982da3006aac285cf74d4b1c37549f38c205350200172f6970342f31",
        "32372e302e302e312f7463702f37343030001b2f646e73342f6e6f64652e6578616d706c652f7463702f373430301774",
        "696d65636f696e2f302e312e302028676f6c64656e2902142f74696d65636f696e2f73796e632f312e302e30192f7469",
        "6d65636f696e2f636f6e73656e7375732f312e302e30",
    ),
    MsgType.PING: _hex(
        "02000000010123456789abcdef000470696e67",
    ),
    MsgType.PONG: _hex(
        "03000000010123456789abcdef000470696e67",
    ),
    MsgType.GET_STATUS: _hex(
        "0400000002",
    ),
    MsgType.STATUS: _hex(
        "0500000002000000000000002a5f744c7af3e51ddf8a594790a6f3717a1c885feac92ab98df450ed43086082fe000000",
        "0000000029c3defb9dfc74041662b2fd7c40982da3006aac285cf74d4b1c37549f38c20535aeebad4a796fcc2e15dc4c",
        "6061b45ed9b373f26adfc798ca7d2d8cc58182718e",
    ),
    MsgType.GET_PEERS: _hex(
        "0600000003",
    ),
    MsgType.PEERS: _hex(
        "0700000003000200502f6970342f31302e302e302e312f7463702f373430302f7032702f31365569753248416d487743",
        "62796177767959656d48686e70327761455576643571487575505369753448787453487341554b777100112f6970362f",
        "3a3a312f7463702f37343031",
    ),
    MsgType.GET_BLOCKS: _hex(
        "080000000400000000000000280003",
    ),
    MsgType.BLOCKS: _hex(
        "090000000400010001000000000000002a00000001c3defb9dfc74041662b2fd7c40982da3006aac285cf74d4b1c3754",
        "9f38c205350000018bcfe568003dd807f5cd073f457f359652fe4862220236708eb9190277e74b95290472930fb73c9d",
        "7fd130e0ac614c0180bec3080a80694873f9455f876a093ff1423c289592ebbb643b9668c2f7632b549ca6f20765b3cc",
        "1c66d18af4cf3d736390761abbea054bcedb18191b65128c2b057cdef5071a169890a7510f4b4e4f7777540e58ca9d14",
        "320cba7a8073ad7ae9730a4eee5c79a81c00000001000f74696d65636f696e2d676f6c64656e034e719513c45a63eecf",
        "6e9e7d54d3180b70f1152b1067bb0722087cb4e524157c000000000000000700000000000003e8000000001dcd6500c3",
        "dc7973823ce8c1e361d4be96aab85fde4f552b6f985eccc570b54decbd62d15c8b64ca9bfc49536b14738dfc85d618fc",
        "9c5b77321eb104cfa6434a38329eeec73733378751d91d5b9ba82012b0d39491116475000101000000000000002a0000",
        "0001b763b6ee362728e99e9b49c9e9e198c1528a21060ed250f0d7a78cacd4f6eed2c3dc7973823ce8c1e361d4be96aa",
        "b85fde4f552b053e84ac7f58e22279877b9a848e507e673eb13aadb266ceb5e89a0dcef998d11ca26c795cac0e79a385",
        "2ef99c2ea35d7cf2bf904e35a1f0c7c5ef4e18eafe2201000000000000002a00000001f63bf69b8ba81ca669467917e0",
        "90e4770b3389c2d148d1e9be1de9e5e90c08e9c3dc7973823ce8c1e361d4be96aab85fde4f552b59e3e24b6d1305b1ea",
        "7f5e046295632a1421ef6dcf49359363cf1c16662c006a42c25c0949aa07ca5f13d0291610806e7f0517e567b1ba9810",
        "f18c393d9845a1000000000000002a000000015f744c7af3e51ddf8a594790a6f3717a1c885feac92ab98df450ed4308",
        "6082fe00023dd807f5cd073f457f359652fe4862220236708e9578828c5722406f57319a6dab1fea4f099edb8b9d7af5",
        "e9b47ec2c28f5cd76c1e67e0a281052a4427b4e7b3a1cec3b6cd2c480c1b91b77ebc8313f6c59f1da9c3dc7973823ce8",
        "c1e361d4be96aab85fde4f552b123c4433279d681a37789422d0255d07d44f6ecda857110e3c712d06afdac5ad3c6175",
        "a02a6694e1a47889ded7a1db23456dcb2ebc7b1209308add230c54bbf0",
    ),
    MsgType.GET_BLOCK_HASHES: _hex(
        "0a0000000500000000000000280002",
    ),
    MsgType.BLOCK_HASHES: _hex(
        "0b00000005000000000000002800024e10d0c11919ce133a522c3d8939b575c42dd113fd0a977523ea1baef8d3b579c3",
        "defb9dfc74041662b2fd7c40982da3006aac285cf74d4b1c37549f38c20535",
    ),
    MsgType.TX: _hex(
        "0c00000006000f74696d65636f696e2d676f6c64656e034e719513c45a63eecf6e9e7d54d3180b70f1152b1067bb0722",
        "087cb4e524157c000000000000000700000000000003e8000000001dcd6500c3dc7973823ce8c1e361d4be96aab85fde",
        "4f552b6f985eccc570b54decbd62d15c8b64ca9bfc49536b14738dfc85d618fc9c5b77321eb104cfa6434a38329eeec7",
        "3733378751d91d5b9ba82012b0d39491116475",
    ),
    MsgType.PROPOSAL: _hex(
        "0d00000000000000000000002a00000001ffffffff3dd807f5cd073f457f359652fe4862220236708e00010000000000",
        "00002a00000001c3defb9dfc74041662b2fd7c40982da3006aac285cf74d4b1c37549f38c205350000018bcfe568003d",
        "d807f5cd073f457f359652fe4862220236708eb9190277e74b95290472930fb73c9d7fd130e0ac614c0180bec3080a80",
        "694873f9455f876a093ff1423c289592ebbb643b9668c2f7632b549ca6f20765b3cc1c66d18af4cf3d736390761abbea",
        "054bcedb18191b65128c2b057cdef5071a169890a7510f4b4e4f7777540e58ca9d14320cba7a8073ad7ae9730a4eee5c",
        "79a81c00000001000f74696d65636f696e2d676f6c64656e034e719513c45a63eecf6e9e7d54d3180b70f1152b1067bb",
        "0722087cb4e524157c000000000000000700000000000003e8000000001dcd6500c3dc7973823ce8c1e361d4be96aab8",
        "5fde4f552b6f985eccc570b54decbd62d15c8b64ca9bfc49536b14738dfc85d618fc9c5b77321eb104cfa6434a38329e",
        "eec73733378751d91d5b9ba82012b0d39491116475000101000000000000002a00000001b763b6ee362728e99e9b49c9",
        "e9e198c1528a21060ed250f0d7a78cacd4f6eed2c3dc7973823ce8c1e361d4be96aab85fde4f552b053e84ac7f58e222",
        "79877b9a848e507e673eb13aadb266ceb5e89a0dcef998d11ca26c795cac0e79a3852ef99c2ea35d7cf2bf904e35a1f0",
        "c7c5ef4e18eafe2201000000000000002a00000001f63bf69b8ba81ca669467917e090e4770b3389c2d148d1e9be1de9",
        "e5e90c08e9c3dc7973823ce8c1e361d4be96aab85fde4f552b59e3e24b6d1305b1ea7f5e046295632a1421ef6dcf4935",
        "9363cf1c16662c006a42c25c0949aa07ca5f13d0291610806e7f0517e567b1ba9810f18c393d9845a174f09c883ad0f8",
        "e89f65bcf5b66ef5afddd5a17e16a760ad1ff1a1583bd141040eac45b84d1d6f1c2954d63772aafeadb0673f3ac504c9",
        "3aeda8cd5dedb20c1c",
    ),
    MsgType.VOTE: _hex(
        "0e0000000001000000000000002a000000015f744c7af3e51ddf8a594790a6f3717a1c885feac92ab98df450ed430860",
        "82fe3dd807f5cd073f457f359652fe4862220236708e9e6a01048e55a3315ba2555cec2cd6c86fbb07c7b6b52195d85c",
        "ead8216b525d54236c87c16cf3965a57847f286ede86dc163c1f31aa2839442a714ec1ccc653",
    ),
    MsgType.EVIDENCE: _hex(
        "0f0000000001000000000000002a00000001b763b6ee362728e99e9b49c9e9e198c1528a21060ed250f0d7a78cacd4f6",
        "eed2c3dc7973823ce8c1e361d4be96aab85fde4f552b053e84ac7f58e22279877b9a848e507e673eb13aadb266ceb5e8",
        "9a0dcef998d11ca26c795cac0e79a3852ef99c2ea35d7cf2bf904e35a1f0c7c5ef4e18eafe2201000000000000002a00",
        "000001f63bf69b8ba81ca669467917e090e4770b3389c2d148d1e9be1de9e5e90c08e9c3dc7973823ce8c1e361d4be96",
        "aab85fde4f552b59e3e24b6d1305b1ea7f5e046295632a1421ef6dcf49359363cf1c16662c006a42c25c0949aa07ca5f",
        "13d0291610806e7f0517e567b1ba9810f18c393d9845a1",
    ),
    MsgType.NEW_BLOCK: _hex(
        "1000000000000000000000002a5f744c7af3e51ddf8a594790a6f3717a1c885feac92ab98df450ed43086082fe",
    ),
    MsgType.REJECT: _hex(
        "11ffffffff0014001972617465206c696d697465643a203130302f6d696e20e29c93",
    ),
    MsgType.VOTE_QUORUM: _hex(
        "120000000002000000000000002a000000015f744c7af3e51ddf8a594790a6f3717a1c885feac92ab98df450ed430860",
        "82fe00023dd807f5cd073f457f359652fe4862220236708e9578828c5722406f57319a6dab1fea4f099edb8b9d7af5e9",
        "b47ec2c28f5cd76c1e67e0a281052a4427b4e7b3a1cec3b6cd2c480c1b91b77ebc8313f6c59f1da9c3dc7973823ce8c1",
        "e361d4be96aab85fde4f552b123c4433279d681a37789422d0255d07d44f6ecda857110e3c712d06afdac5ad3c6175a0",
        "2a6694e1a47889ded7a1db23456dcb2ebc7b1209308add230c54bbf0",
    ),
}
GOLDEN_LAYOUTS: dict[str, str] = {
    "Header": _hex(
        "0001000000000000002a00000001c3defb9dfc74041662b2fd7c40982da3006aac285cf74d4b1c37549f38c205350000",
        "018bcfe568003dd807f5cd073f457f359652fe4862220236708eb9190277e74b95290472930fb73c9d7fd130e0ac614c",
        "0180bec3080a80694873f9455f876a093ff1423c289592ebbb643b9668c2f7632b549ca6f20765b3cc1c66d18af4cf3d",
        "736390761abbea054bcedb18191b65128c2b057cdef5071a169890a7510f4b4e4f7777540e58ca9d14320cba7a8073ad",
        "7ae9730a4eee5c79a81c",
    ),
    "Block": _hex(
        "0001000000000000002a00000001c3defb9dfc74041662b2fd7c40982da3006aac285cf74d4b1c37549f38c205350000",
        "018bcfe568003dd807f5cd073f457f359652fe4862220236708eb9190277e74b95290472930fb73c9d7fd130e0ac614c",
        "0180bec3080a80694873f9455f876a093ff1423c289592ebbb643b9668c2f7632b549ca6f20765b3cc1c66d18af4cf3d",
        "736390761abbea054bcedb18191b65128c2b057cdef5071a169890a7510f4b4e4f7777540e58ca9d14320cba7a8073ad",
        "7ae9730a4eee5c79a81c00000001000f74696d65636f696e2d676f6c64656e034e719513c45a63eecf6e9e7d54d3180b",
        "70f1152b1067bb0722087cb4e524157c000000000000000700000000000003e8000000001dcd6500c3dc7973823ce8c1",
        "e361d4be96aab85fde4f552b6f985eccc570b54decbd62d15c8b64ca9bfc49536b14738dfc85d618fc9c5b77321eb104",
        "cfa6434a38329eeec73733378751d91d5b9ba82012b0d39491116475000101000000000000002a00000001b763b6ee36",
        "2728e99e9b49c9e9e198c1528a21060ed250f0d7a78cacd4f6eed2c3dc7973823ce8c1e361d4be96aab85fde4f552b05",
        "3e84ac7f58e22279877b9a848e507e673eb13aadb266ceb5e89a0dcef998d11ca26c795cac0e79a3852ef99c2ea35d7c",
        "f2bf904e35a1f0c7c5ef4e18eafe2201000000000000002a00000001f63bf69b8ba81ca669467917e090e4770b3389c2",
        "d148d1e9be1de9e5e90c08e9c3dc7973823ce8c1e361d4be96aab85fde4f552b59e3e24b6d1305b1ea7f5e046295632a",
        "1421ef6dcf49359363cf1c16662c006a42c25c0949aa07ca5f13d0291610806e7f0517e567b1ba9810f18c393d9845a1",
    ),
    "CommitSig": _hex(
        "3dd807f5cd073f457f359652fe4862220236708e9578828c5722406f57319a6dab1fea4f099edb8b9d7af5e9b47ec2c2",
        "8f5cd76c1e67e0a281052a4427b4e7b3a1cec3b6cd2c480c1b91b77ebc8313f6c59f1da9",
    ),
    "CommitCertificate": _hex(
        "000000000000002a000000015f744c7af3e51ddf8a594790a6f3717a1c885feac92ab98df450ed43086082fe00023dd8",
        "07f5cd073f457f359652fe4862220236708e9578828c5722406f57319a6dab1fea4f099edb8b9d7af5e9b47ec2c28f5c",
        "d76c1e67e0a281052a4427b4e7b3a1cec3b6cd2c480c1b91b77ebc8313f6c59f1da9c3dc7973823ce8c1e361d4be96aa",
        "b85fde4f552b123c4433279d681a37789422d0255d07d44f6ecda857110e3c712d06afdac5ad3c6175a02a6694e1a478",
        "89ded7a1db23456dcb2ebc7b1209308add230c54bbf0",
    ),
    "ProposalSignBytes": _hex(
        "000000000000002a00000001ffffffff5f744c7af3e51ddf8a594790a6f3717a1c885feac92ab98df450ed43086082fe",
        "3dd807f5cd073f457f359652fe4862220236708e",
    ),
    "CertifiedBlock": _hex(
        "0001000000000000002a00000001c3defb9dfc74041662b2fd7c40982da3006aac285cf74d4b1c37549f38c205350000",
        "018bcfe568003dd807f5cd073f457f359652fe4862220236708eb9190277e74b95290472930fb73c9d7fd130e0ac614c",
        "0180bec3080a80694873f9455f876a093ff1423c289592ebbb643b9668c2f7632b549ca6f20765b3cc1c66d18af4cf3d",
        "736390761abbea054bcedb18191b65128c2b057cdef5071a169890a7510f4b4e4f7777540e58ca9d14320cba7a8073ad",
        "7ae9730a4eee5c79a81c00000001000f74696d65636f696e2d676f6c64656e034e719513c45a63eecf6e9e7d54d3180b",
        "70f1152b1067bb0722087cb4e524157c000000000000000700000000000003e8000000001dcd6500c3dc7973823ce8c1",
        "e361d4be96aab85fde4f552b6f985eccc570b54decbd62d15c8b64ca9bfc49536b14738dfc85d618fc9c5b77321eb104",
        "cfa6434a38329eeec73733378751d91d5b9ba82012b0d39491116475000101000000000000002a00000001b763b6ee36",
        "2728e99e9b49c9e9e198c1528a21060ed250f0d7a78cacd4f6eed2c3dc7973823ce8c1e361d4be96aab85fde4f552b05",
        "3e84ac7f58e22279877b9a848e507e673eb13aadb266ceb5e89a0dcef998d11ca26c795cac0e79a3852ef99c2ea35d7c",
        "f2bf904e35a1f0c7c5ef4e18eafe2201000000000000002a00000001f63bf69b8ba81ca669467917e090e4770b3389c2",
        "d148d1e9be1de9e5e90c08e9c3dc7973823ce8c1e361d4be96aab85fde4f552b59e3e24b6d1305b1ea7f5e046295632a",
        "1421ef6dcf49359363cf1c16662c006a42c25c0949aa07ca5f13d0291610806e7f0517e567b1ba9810f18c393d9845a1",
        "000000000000002a000000015f744c7af3e51ddf8a594790a6f3717a1c885feac92ab98df450ed43086082fe00023dd8",
        "07f5cd073f457f359652fe4862220236708e9578828c5722406f57319a6dab1fea4f099edb8b9d7af5e9b47ec2c28f5c",
        "d76c1e67e0a281052a4427b4e7b3a1cec3b6cd2c480c1b91b77ebc8313f6c59f1da9c3dc7973823ce8c1e361d4be96aa",
        "b85fde4f552b123c4433279d681a37789422d0255d07d44f6ecda857110e3c712d06afdac5ad3c6175a02a6694e1a478",
        "89ded7a1db23456dcb2ebc7b1209308add230c54bbf0",
    ),
}


def _body_layout_name(msg_type: MsgType) -> str:
    return next(n for n, layout in messages.LAYOUTS.items() if layout is messages.BODIES[msg_type])


def all_layout_cases() -> list[tuple[str, Any, bytes]]:
    """(layout name, value, golden bytes) for every layout in LAYOUTS."""
    cases: dict[str, tuple[Any, bytes]] = {}
    for name, value in LAYOUT_VALUES.items():
        cases[name] = (value, bytes.fromhex(GOLDEN_LAYOUTS[name]))
    for msg_type, (body, request_id) in MESSAGE_VALUES.items():
        frame = bytes.fromhex(GOLDEN_MESSAGES[msg_type])
        cases.setdefault(_body_layout_name(msg_type), (body, frame[5:]))
        cases.setdefault("Envelope", ({"type": int(msg_type), "request_id": request_id, "body": body}, frame))
    return [(name, *cases[name]) for name in messages.LAYOUTS]


# -- tests -----------------------------------------------------------------------------------------


def test_every_message_type_and_layout_has_a_golden_value() -> None:
    assert set(MESSAGE_VALUES) == set(MsgType) == set(GOLDEN_MESSAGES)
    assert set(messages.BODIES) == set(MsgType)
    assert [name for name, _, _ in all_layout_cases()] == list(messages.LAYOUTS)


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_message_golden_bytes(msg_type: MsgType) -> None:
    body, request_id = MESSAGE_VALUES[msg_type]
    golden = bytes.fromhex(GOLDEN_MESSAGES[msg_type])
    encoded = messages.encode_message(msg_type, body, request_id)
    assert encoded.hex() == golden.hex()
    assert encoded[0] == int(msg_type)
    assert int.from_bytes(encoded[1:5], "big") == request_id
    decoded_type, decoded_id, decoded_body = messages.decode_message(golden)
    assert (decoded_type, decoded_id) == (msg_type, request_id)
    assert decoded_body == body
    assert messages.encode_message(decoded_type, decoded_body, decoded_id) == golden


@pytest.mark.parametrize("name", list(messages.LAYOUTS))
def test_layout_golden_bytes_and_roundtrip(name: str) -> None:
    _, value, golden = next(c for c in all_layout_cases() if c[0] == name)
    codec = messages.Codec(name, messages.LAYOUTS[name])
    assert codec.encode(value).hex() == golden.hex()
    assert codec.decode(golden) == value
    size = None if name == "Envelope" else _sizeof(messages.LAYOUTS[name])
    if size is not None:
        assert len(golden) == size


def _sizeof(layout: Any) -> int | None:
    try:
        return layout.sizeof()
    except Exception:
        return None


@pytest.mark.parametrize("name", list(messages.LAYOUTS))
def test_compiled_and_interpreted_codecs_agree(name: str) -> None:
    """SPEC §5: the compiled codec builds and parses exactly as construct's interpreter does."""
    _, value, golden = next(c for c in all_layout_cases() if c[0] == name)
    layout = messages.LAYOUTS[name]
    interpreted = layout if name == "Envelope" else layout + Terminated
    compiled = messages.Codec(name, layout).compiled
    assert interpreted.build(value) == compiled.build(value) == golden
    assert interpreted.parse(golden) == compiled.parse(golden) == value
    # and on every message envelope, not only the one kept per layout
    if name == "Envelope":
        for msg_type, (body, request_id) in MESSAGE_VALUES.items():
            env = {"type": int(msg_type), "request_id": request_id, "body": body}
            wire = bytes.fromhex(GOLDEN_MESSAGES[msg_type])
            assert layout.build(env) == compiled.build(env) == wire
            assert layout.parse(wire) == compiled.parse(wire)


def test_module_codecs_are_the_layouts_compiled() -> None:
    """The ready-made codecs (TX, VOTE, ...) encode like a fresh Codec of the same layout."""
    codecs = {"Tx": messages.TX, "Vote": messages.VOTE, "Evidence": messages.EVIDENCE, "Header": messages.HEADER,
              "Block": messages.BLOCK, "CommitCertificate": messages.COMMIT_CERTIFICATE,
              "ProposalSignBytes": messages.PROPOSAL_SIGN_BYTES, "Proposal": messages.PROPOSAL,
              "CertifiedBlock": messages.CERTIFIED_BLOCK, "Envelope": messages.ENVELOPE}
    cases = {name: (value, golden) for name, value, golden in all_layout_cases()}
    for name, codec in codecs.items():
        value, golden = cases[name]
        assert codec.layout is messages.LAYOUTS[name]
        assert codec.encode(value) == golden
        assert codec.decode(golden) == value


def test_golden_signatures_verify_with_the_documented_domains() -> None:
    """The signed bytes described in docs/protocol.md are the ones the ledger verifies."""
    tx = Transaction.decode(bytes.fromhex(GOLDEN_MESSAGES[MsgType.TX])[5:])
    tx.verify_signature()
    assert tx == Transaction.create(KEY_A, TxKind.TRANSFER, CHAIN_ID, 7, 1_000, 5 * crypto.UNITS_PER_TIME,
                                    KEY_B.address)
    vote = Vote.decode(bytes.fromhex(GOLDEN_MESSAGES[MsgType.VOTE])[5:])
    vote.verify_signature(KEY_A.public_key, CHAIN_ID)
    assert vote == Vote(VoteType.PREVOTE, 42, 1, block_hash(), KEY_A.address).signed(KEY_A, CHAIN_ID)
    proposal = Proposal.decode(bytes.fromhex(GOLDEN_MESSAGES[MsgType.PROPOSAL])[5:])
    proposal.verify_signature(KEY_A.public_key, CHAIN_ID)
    assert proposal.block.hash == block_hash()
    block = Block.decode(bytes.fromhex(GOLDEN_LAYOUTS["Block"]))
    assert block.encoded == bytes.fromhex(GOLDEN_LAYOUTS["Block"])
    cert = CommitCertificate.decode(bytes.fromhex(GOLDEN_LAYOUTS["CommitCertificate"]))
    keys = {KEY_A.address: KEY_A.public_key, KEY_B.address: KEY_B.public_key}
    for precommit in cert.votes():
        precommit.verify_signature(keys[precommit.validator], CHAIN_ID)
    # another chain id or domain tag does not verify
    assert not crypto.verify(KEY_A.public_key, crypto.TAG_TX, "other-chain", tx.signing_payload(), tx.signature)
    assert not crypto.verify(KEY_A.public_key, crypto.TAG_VOTE, CHAIN_ID, tx.signing_payload(), tx.signature)


def test_golden_bytes_refuse_truncation_and_trailing_bytes() -> None:
    for msg_type in MsgType:
        golden = bytes.fromhex(GOLDEN_MESSAGES[msg_type])
        with pytest.raises(DecodeError):
            messages.decode_message(golden + b"\x00")
        with pytest.raises(DecodeError):
            messages.decode_message(golden[:-1])


def main() -> None:
    """Print the current encodings as Python source (to refresh the golden hex after a wire change)."""
    def chunks(hexstr: str) -> str:
        parts = [hexstr[i:i + 96] for i in range(0, len(hexstr), 96)] or [""]
        return "_hex(\n" + "".join(f'        "{p}",\n' for p in parts) + "    )"
    print("GOLDEN_MESSAGES: dict[MsgType, str] = {")
    for msg_type, (body, request_id) in MESSAGE_VALUES.items():
        print(f"    MsgType.{msg_type.name}: {chunks(messages.encode_message(msg_type, body, request_id).hex())},")
    print("}")
    print("GOLDEN_LAYOUTS: dict[str, str] = {")
    for name, value in LAYOUT_VALUES.items():
        print(f'    "{name}": {chunks(messages.Codec(name, messages.LAYOUTS[name]).encode(value).hex())},')
    print("}")


if __name__ == "__main__":
    main()
