"""Every wire layout of Timecoin, defined once with ``construct`` (SPEC §5).

Encodings are canonical: fixed-width big-endian integers, length-prefixed strings and arrays, no
optional fields and no trailing bytes, so each value has exactly one byte string and hashes and
signatures are stable. Signed objects carry their 64-byte signature as the last field; the bytes
that are signed are documented per type (``docs/protocol.md``).

Decoding untrusted bytes: construct's compiled parsers skip some checks, so :func:`decode` parses
with the compiled parser, rebuilds the result and requires the rebuilt bytes to equal the input.
Anything that is not the canonical encoding of a value (truncation, trailing bytes, non-canonical
flags, unknown message types, bad UTF-8) raises :class:`~timecoin.errors.DecodeError` and nothing
else. ``tests/fuzz`` proves this over random and mutated frames, and checks that compiled and
interpreted codecs agree on every message.
"""
from __future__ import annotations

import enum
from typing import Any, NamedTuple

from construct import (
    Bytes,
    Construct,
    Error,
    GreedyBytes,
    Int8ub,
    Int16ub,
    Int32sb,
    Int32ub,
    Int64ub,
    PascalString,
    Prefixed,
    PrefixedArray,
    Struct,
    Switch,
    Terminated,
    this,
)

from timecoin.errors import DecodeError

PROTOCOL_VERSION = 1

# -- primitives ------------------------------------------------------------------------------------


class ExactBytes(Bytes):
    """Fixed-size bytes whose *compiled* parser and builder check the length.

    construct's compiled ``Bytes`` is a bare ``io.read(n)``/``io.write(obj)``: a frame truncated inside
    a trailing fixed field would parse short and rebuild to the same short bytes, slipping past the
    rebuild-and-compare guard. This subclass makes both directions exact.
    """

    def _emitparse(self, code: Any) -> str:
        code.append("""
            def read_exact(io, n):
                data = io.read(n)
                if len(data) != n:
                    raise StreamError("stream read less than specified amount")
                return data
        """)
        return f"read_exact(io, {self.length})"

    def _emitbuild(self, code: Any) -> str:
        code.append("""
            def write_exact(obj, io, n):
                if not isinstance(obj, (bytes, bytearray)) or len(obj) != n:
                    raise StringError("expected %d bytes" % n)
                io.write(obj)
                return obj
        """)
        return f"write_exact(obj, io, {self.length})"


Hash = ExactBytes(32)
Address = ExactBytes(20)
PubKey = ExactBytes(33)
Signature = ExactBytes(64)
Height = Int64ub
Round = Int32ub
ShortString = PascalString(Int8ub, "utf8")
LongString = PascalString(Int16ub, "utf8")
Blob = Prefixed(Int16ub, GreedyBytes)

# -- ledger values ---------------------------------------------------------------------------------
# A transaction; signed bytes = encoding without the trailing signature.
Tx = Struct(
    "kind" / Int8ub,            # 0 transfer, 1 stake, 2 unstake
    "chain_id" / ShortString,
    "sender" / PubKey,          # compressed public key of the signer; address = sha256(sender)[:20]
    "nonce" / Int64ub,
    "fee" / Int64ub,
    "amount" / Int64ub,
    "recipient" / Address,      # all zero for stake and unstake
    "signature" / Signature,
)

# A consensus vote; signed bytes = encoding without the trailing signature.
Vote = Struct(
    "type" / Int8ub,            # 1 prevote, 2 precommit
    "height" / Height,
    "round" / Round,
    "block_hash" / Hash,        # all zero = nil
    "validator" / Address,
    "signature" / Signature,
)

# Two conflicting votes of one validator (same type, height, round; different block hashes).
Evidence = Struct(
    "vote_a" / Vote,
    "vote_b" / Vote,
)

Header = Struct(
    "version" / Int16ub,
    "height" / Height,
    "round" / Round,
    "prev_hash" / Hash,
    "timestamp" / Int64ub,      # milliseconds since the Unix epoch
    "proposer" / Address,
    "tx_root" / Hash,
    "state_root" / Hash,
    "validators_hash" / Hash,
    "evidence_root" / Hash,
)

Block = Struct(
    "header" / Header,
    "txs" / PrefixedArray(Int32ub, Tx),
    "evidence" / PrefixedArray(Int16ub, Evidence),
)

# One precommit signature of a commit certificate; the vote it signs is rebuilt from the
# certificate's height, round and block hash plus this validator address.
CommitSig = Struct(
    "validator" / Address,
    "signature" / Signature,
)

CommitCertificate = Struct(
    "height" / Height,
    "round" / Round,
    "block_hash" / Hash,
    "signatures" / PrefixedArray(Int16ub, CommitSig),
)

# Signed bytes of a proposal: ProposalSignBytes (the block enters by its hash).
ProposalSignBytes = Struct(
    "height" / Height,
    "round" / Round,
    "pol_round" / Int32sb,      # -1: no proof-of-lock round
    "block_hash" / Hash,
    "proposer" / Address,
)

Proposal = Struct(
    "height" / Height,
    "round" / Round,
    "pol_round" / Int32sb,
    "proposer" / Address,
    "block" / Block,
    "signature" / Signature,
)

# >2/3 of a round's votes of one kind for one value (nil included), sent by a node that holds them to
# peers at its height, so every honest node ends up with the quorum any honest node saw (SPEC §4, vote
# propagation). Each vote is rebuilt from the fields here plus one (validator, signature) pair.
VoteQuorum = Struct(
    "type" / Int8ub,            # 1 prevote, 2 precommit
    "height" / Height,
    "round" / Round,
    "block_hash" / Hash,        # all zero = nil
    "signatures" / PrefixedArray(Int16ub, CommitSig),
)

CertifiedBlock = Struct(
    "block" / Block,
    "certificate" / CommitCertificate,
)

# -- network messages ------------------------------------------------------------------------------


class MsgType(enum.IntEnum):
    HELLO = 1
    PING = 2
    PONG = 3
    GET_STATUS = 4
    STATUS = 5
    GET_PEERS = 6
    PEERS = 7
    GET_BLOCKS = 8
    BLOCKS = 9
    GET_BLOCK_HASHES = 10
    BLOCK_HASHES = 11
    TX = 12
    PROPOSAL = 13
    VOTE = 14
    EVIDENCE = 15
    NEW_BLOCK = 16
    REJECT = 17
    VOTE_QUORUM = 18


Hello = Struct(
    "protocol_version" / Int16ub,
    "chain_id" / ShortString,
    "genesis_hash" / Hash,
    "best_height" / Height,
    "best_hash" / Hash,
    "finalized_height" / Height,
    "finalized_hash" / Hash,
    "listen_addrs" / PrefixedArray(Int8ub, LongString),
    "agent" / ShortString,
    "protocols" / PrefixedArray(Int8ub, ShortString),
)

Ping = Struct(
    "nonce" / Int64ub,
    "payload" / Blob,
)

Empty = Struct()

Status = Struct(
    "height" / Height,
    "tip_hash" / Hash,
    "finalized_height" / Height,
    "finalized_hash" / Hash,
    "genesis_hash" / Hash,
)

Peers = Struct(
    "addrs" / PrefixedArray(Int16ub, LongString),
)

GetBlocks = Struct(
    "start" / Height,
    "count" / Int16ub,
)

Blocks = Struct(
    "blocks" / PrefixedArray(Int16ub, CertifiedBlock),
)

BlockHashes = Struct(
    "start" / Height,
    "hashes" / PrefixedArray(Int16ub, Hash),
)

NewBlock = Struct(
    "height" / Height,
    "hash" / Hash,
)

Reject = Struct(
    "reason" / Int16ub,         # timecoin.errors.Reason
    "message" / LongString,
)

BODIES: dict[MsgType, Construct] = {
    MsgType.HELLO: Hello,
    MsgType.PING: Ping,
    MsgType.PONG: Ping,
    MsgType.GET_STATUS: Empty,
    MsgType.STATUS: Status,
    MsgType.GET_PEERS: Empty,
    MsgType.PEERS: Peers,
    MsgType.GET_BLOCKS: GetBlocks,
    MsgType.BLOCKS: Blocks,
    MsgType.GET_BLOCK_HASHES: GetBlocks,
    MsgType.BLOCK_HASHES: BlockHashes,
    MsgType.TX: Tx,
    MsgType.PROPOSAL: Proposal,
    MsgType.VOTE: Vote,
    MsgType.EVIDENCE: Evidence,
    MsgType.NEW_BLOCK: NewBlock,
    MsgType.REJECT: Reject,
    MsgType.VOTE_QUORUM: VoteQuorum,
}

# Request messages count against the per-peer rate limit (SPEC §5).
REQUESTS = frozenset({MsgType.GET_STATUS, MsgType.GET_PEERS, MsgType.GET_BLOCKS,
                      MsgType.GET_BLOCK_HASHES, MsgType.TX})

Envelope = Struct(
    "type" / Int8ub,
    "request_id" / Int32ub,
    "body" / Switch(this.type, {int(k): v for k, v in BODIES.items()}, default=Error),
    Terminated,
)

# -- codecs ----------------------------------------------------------------------------------------


class Codec:
    """A compiled layout with a guarded decoder (parse, rebuild, compare)."""

    __slots__ = ("name", "layout", "compiled")

    def __init__(self, name: str, layout: Construct) -> None:
        self.name = name
        self.layout = layout
        self.compiled = (layout + Terminated).compile() if name != "Envelope" else layout.compile()

    def encode(self, value: Any) -> bytes:
        try:
            return self.compiled.build(value)
        except Exception as exc:
            raise ValueError(f"cannot encode {self.name}: {exc}") from None

    def decode(self, data: bytes) -> Any:
        """Parse canonical bytes; DecodeError for anything else, never another exception."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"{self.name}: expected bytes")
        data = bytes(data)
        try:
            value = self.compiled.parse(data)
            rebuilt = self.compiled.build(value)
        except Exception as exc:
            raise DecodeError(f"{self.name}: {type(exc).__name__}: {exc}".splitlines()[0][:200]) from None
        if rebuilt != data:
            raise DecodeError(f"{self.name}: not the canonical encoding")
        return value


def _codec(name: str) -> Codec:
    return Codec(name, globals()[name])


TX = _codec("Tx")
VOTE = _codec("Vote")
EVIDENCE = _codec("Evidence")
HEADER = _codec("Header")
BLOCK = _codec("Block")
COMMIT_CERTIFICATE = _codec("CommitCertificate")
PROPOSAL_SIGN_BYTES = _codec("ProposalSignBytes")
PROPOSAL = _codec("Proposal")
VOTE_QUORUM = _codec("VoteQuorum")
CERTIFIED_BLOCK = _codec("CertifiedBlock")
ENVELOPE = _codec("Envelope")

# Every layout by name, for docs/protocol.md and the codec tests.
LAYOUTS: dict[str, Construct] = {
    "Tx": Tx, "Vote": Vote, "Evidence": Evidence, "Header": Header, "Block": Block,
    "CommitSig": CommitSig, "CommitCertificate": CommitCertificate,
    "ProposalSignBytes": ProposalSignBytes, "Proposal": Proposal, "VoteQuorum": VoteQuorum,
    "CertifiedBlock": CertifiedBlock,
    "Hello": Hello, "Ping": Ping, "Empty": Empty, "Status": Status, "Peers": Peers,
    "GetBlocks": GetBlocks, "Blocks": Blocks, "BlockHashes": BlockHashes, "NewBlock": NewBlock,
    "Reject": Reject, "Envelope": Envelope,
}


def encode_message(msg_type: MsgType, body: Any, request_id: int = 0) -> bytes:
    """Encode one envelope (the payload of a frame)."""
    return ENVELOPE.encode({"type": int(msg_type), "request_id": request_id, "body": body})


def decode_message(payload: bytes) -> tuple[MsgType, int, Any]:
    """Decode one envelope: (type, request id, body). DecodeError on anything not canonical."""
    env = ENVELOPE.decode(payload)
    return MsgType(env.type), env.request_id, env.body


# -- reading a consensus message's height before decoding it ---------------------------------------
class ConsensusFields(NamedTuple):
    """The fixed-offset fields of a consensus envelope, read without decoding its body."""

    msg_type: MsgType
    height: int
    round: int
    signer: bytes | None       # the proposer or the voter; None for a VOTE_QUORUM (its signers are a list)


def _offset(layout: Struct, name: str) -> int:
    """Where field ``name`` starts in ``layout`` (every field before it has a fixed size)."""
    off = 0
    for sub in layout.subcons:
        if sub.name == name:
            return off
        off += sub.sizeof()
    raise KeyError(name)


_ENVELOPE_HEAD = Int8ub.sizeof() + Int32ub.sizeof()           # type + request id, then the body
_PEEK: dict[int, tuple[MsgType, int, int, int | None]] = {     # type byte -> (type, height, round, signer offsets)
    int(t): (t, _ENVELOPE_HEAD + _offset(layout, "height"), _ENVELOPE_HEAD + _offset(layout, "round"),
             None if signer is None else _ENVELOPE_HEAD + _offset(layout, signer))
    for t, layout, signer in ((MsgType.PROPOSAL, Proposal, "proposer"), (MsgType.VOTE, Vote, "validator"),
                              (MsgType.VOTE_QUORUM, VoteQuorum, None))
}


# type byte -> offset of the 8-byte big-endian height in the envelope (FrameDecoder's window filter)
HEIGHT_AT: dict[int, int] = {t: fields[1] for t, fields in _PEEK.items()}
# type byte -> offset of the 20-byte signer address (proposals and votes; FrameDecoder's signer filter)
SIGNER_AT: dict[int, int] = {t: fields[3] for t, fields in _PEEK.items() if fields[3] is not None}


def peek_consensus(payload: bytes) -> ConsensusFields | None:
    """The height, round and signer of a PROPOSAL, VOTE or VOTE_QUORUM envelope, read at their fixed offsets.

    Costs the same whatever the size of the body, which is neither decoded nor checked (it may still be
    malformed): the P2P layer drops a message for a height or from a signer it could never accept before
    paying for a decode. None for any other type, or a payload too short to hold these fields.
    """
    fields = _PEEK.get(payload[0]) if payload else None
    if fields is None:
        return None
    msg_type, height_at, round_at, signer_at = fields
    if len(payload) < (round_at + 4 if signer_at is None else signer_at + 20):
        return None
    return ConsensusFields(msg_type, int.from_bytes(payload[height_at:height_at + 8], "big"),
                           int.from_bytes(payload[round_at:round_at + 4], "big"),
                           None if signer_at is None else bytes(payload[signer_at:signer_at + 20]))
