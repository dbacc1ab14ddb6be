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
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from construct import (
    Bytes,
    Construct,
    Container,
    Error,
    GreedyBytes,
    Int8ub,
    Int16ub,
    Int32sb,
    Int32ub,
    Int64ub,
    ListContainer,
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
    """A compiled layout with a guarded decoder (parse, rebuild, compare).

    The hottest layouts (Tx, Vote, Header, Block and the envelope of a TX or VOTE) also have a *fast path*
    (:data:`FAST_DECODERS`, :data:`FAST_ENCODERS`): ``struct`` reads and writes of exactly the canonical
    bytes, 5-10x cheaper than construct. A fast decoder returns a value only for input the guarded decoder
    would accept with an equal value (each field is a fixed-size integer or byte string, or strict UTF-8 that
    re-encodes to the same bytes, and the lengths add up to the input's), and None for anything else, which
    then takes the guarded path, so errors and their messages are the guarded decoder's. A fast encoder
    likewise returns None unless every field has the exact type and size it writes. ``tests/unit/
    test_codec_fast.py`` checks both against construct on valid, mutated and random input.
    """

    __slots__ = ("name", "layout", "compiled", "fast_decode", "fast_encode")

    def __init__(self, name: str, layout: Construct) -> None:
        self.name = name
        self.layout = layout
        self.compiled = (layout + Terminated).compile() if name != "Envelope" else layout.compile()
        self.fast_decode: Callable[[bytes], Any] | None = None
        self.fast_encode: Callable[[Any], bytes | None] | None = None

    def encode(self, value: Any) -> bytes:
        if self.fast_encode is not None:
            try:
                data = self.fast_encode(value)
            except Exception:       # a value the fast path cannot write: construct says why (below)
                data = None
            if data is not None:
                return data
        try:
            return self.compiled.build(value)
        except Exception as exc:
            raise ValueError(f"cannot encode {self.name}: {exc}") from None

    def decode(self, data: bytes) -> Any:
        """Parse canonical bytes; DecodeError for anything else, never another exception."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"{self.name}: expected bytes")
        data = bytes(data)
        if self.fast_decode is not None:
            value = self.fast_decode(data)
            if value is not None:
                return value
        return self.decode_guarded(data)

    def decode_guarded(self, data: bytes) -> Any:
        """The reference decoder: construct's compiled parse, rebuilt and compared with the input."""
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


# -- fast paths of the hot layouts (see Codec) -----------------------------------------------------------
_VOTE_S = struct.Struct(">BQI32s20s64s")             # Vote: every field fixed-size and unconstrained
_TX_TAIL_S = struct.Struct(">33sQQQ20s64s")          # Tx after kind and chain_id: sender .. signature
_HEADER_S = struct.Struct(">HQI32sQ20s32s32s32s32s")
_ENV_HEAD_S = struct.Struct(">BI")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_VOTE_FIELDS = ("type", "height", "round", "block_hash", "validator", "signature")
_TX_TAIL_FIELDS = ("sender", "nonce", "fee", "amount", "recipient", "signature")
_HEADER_FIELDS = ("version", "height", "round", "prev_hash", "timestamp", "proposer", "tx_root", "state_root",
                  "validators_hash", "evidence_root")


def _vote_at(data: bytes, at: int) -> Container:
    return Container(zip(_VOTE_FIELDS, _VOTE_S.unpack_from(data, at), strict=True))


def _fast_vote(data: bytes) -> Container | None:
    return _vote_at(data, 0) if len(data) == _VOTE_S.size else None


def _tx_at(data: bytes, at: int) -> tuple[Container, int] | None:
    """The Tx starting at ``at`` and where it ends; None if it cannot be one (too short, bad UTF-8)."""
    if len(data) < at + 2:
        return None
    size = data[at + 1]
    end = at + 2 + size + _TX_TAIL_S.size
    if len(data) < end:
        return None
    try:
        chain_id = data[at + 2:at + 2 + size].decode("utf-8")
    except UnicodeDecodeError:
        return None
    tx = Container(kind=data[at], chain_id=chain_id)
    for name, value in zip(_TX_TAIL_FIELDS, _TX_TAIL_S.unpack_from(data, at + 2 + size), strict=True):
        tx[name] = value
    return tx, end


def _fast_tx(data: bytes) -> Container | None:
    found = _tx_at(data, 0)
    return found[0] if found is not None and found[1] == len(data) else None


def _fast_header(data: bytes) -> Container | None:
    if len(data) != _HEADER_S.size:
        return None
    return Container(zip(_HEADER_FIELDS, _HEADER_S.unpack(data), strict=True))


def _fast_block(data: bytes) -> Container | None:
    end = len(data)
    at = _HEADER_S.size
    if end < at + 4:
        return None
    header = Container(zip(_HEADER_FIELDS, _HEADER_S.unpack_from(data, 0), strict=True))
    (count,) = _U32.unpack_from(data, at)
    at += 4
    if count > (end - at) // (2 + _TX_TAIL_S.size):       # cannot hold that many: no huge loop on junk
        return None
    txs = ListContainer()
    for _ in range(count):
        found = _tx_at(data, at)
        if found is None:
            return None
        txs.append(found[0])
        at = found[1]
    if end < at + 2:
        return None
    (count,) = _U16.unpack_from(data, at)
    at += 2
    if end != at + count * 2 * _VOTE_S.size:
        return None
    evidence = ListContainer()
    for _ in range(count):
        evidence.append(Container(vote_a=_vote_at(data, at), vote_b=_vote_at(data, at + _VOTE_S.size)))
        at += 2 * _VOTE_S.size
    return Container(header=header, txs=txs, evidence=evidence)


def _fast_envelope(data: bytes) -> Container | None:
    if len(data) < _ENV_HEAD_S.size:
        return None
    kind, request_id = _ENV_HEAD_S.unpack_from(data)
    if kind == _VOTE_TYPE:
        body = _vote_at(data, _ENV_HEAD_S.size) if len(data) == _ENV_HEAD_S.size + _VOTE_S.size else None
    elif kind == _TX_TYPE:
        found = _tx_at(data, _ENV_HEAD_S.size)
        body = found[0] if found is not None and found[1] == len(data) else None
    else:
        return None
    return None if body is None else Container(type=kind, request_id=request_id, body=body)


def _exact(value: Any, size: int) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise ValueError("not the exact bytes")
    return value


def _ints(*values: Any) -> None:
    for value in values:
        if not isinstance(value, int):
            raise ValueError("not an int")


def _fast_vote_out(v: Any) -> bytes:
    _ints(v["type"], v["height"], v["round"])
    return _VOTE_S.pack(v["type"], v["height"], v["round"], _exact(v["block_hash"], 32),
                        _exact(v["validator"], 20), _exact(v["signature"], 64))


def _fast_tx_out(t: Any) -> bytes:
    chain = t["chain_id"]
    if type(chain) is not str:
        raise ValueError("not a str")
    raw = chain.encode("utf-8")
    _ints(t["kind"], t["nonce"], t["fee"], t["amount"])
    return b"".join((bytes((t["kind"], len(raw))), raw, _TX_TAIL_S.pack(
        _exact(t["sender"], 33), t["nonce"], t["fee"], t["amount"], _exact(t["recipient"], 20),
        _exact(t["signature"], 64))))


def _fast_envelope_out(e: Any) -> bytes | None:
    kind = e["type"]
    if kind == _VOTE_TYPE:
        body = _fast_vote_out(e["body"])
    elif kind == _TX_TYPE:
        body = _fast_tx_out(e["body"])
    else:
        return None
    _ints(kind)
    return _ENV_HEAD_S.pack(kind, e["request_id"]) + body


_VOTE_TYPE = int(MsgType.VOTE)
_TX_TYPE = int(MsgType.TX)
# Codec name -> fast decoder / encoder (also for tests/unit/test_codec_fast.py, which compares them with construct).
FAST_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "Vote": _fast_vote, "Tx": _fast_tx, "Header": _fast_header, "Block": _fast_block, "Envelope": _fast_envelope}
FAST_ENCODERS: dict[str, Callable[[Any], bytes | None]] = {
    "Vote": _fast_vote_out, "Tx": _fast_tx_out, "Envelope": _fast_envelope_out}
for _c in (TX, VOTE, HEADER, BLOCK, ENVELOPE):
    _c.fast_decode = FAST_DECODERS[_c.name]
    _c.fast_encode = FAST_ENCODERS.get(_c.name)

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
