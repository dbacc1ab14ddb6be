"""Fuzzing the wire decoders: untrusted bytes only ever raise DecodeError (SPEC §5).

Random bytes and mutated valid encodings (bit flips, truncation, extension, insertion, deletion,
overwritten bytes) go to ``decode_message``, to a guarded codec of every layout and to the frame
decoder. Beyond "no other exception", the guarded compiled decoder is compared with a reference
built on construct's interpreter (parse, rebuild, compare): both must accept exactly the same
inputs with the same values, so the compiled parser's skipped checks cannot let anything through.
Valid values for every layout are generated from the construct definitions themselves.
"""
from __future__ import annotations

from typing import Any

import pytest
from construct import (
    Construct,
    FocusedSeq,
    FormatField,
    GreedyBytes,
    Prefixed,
    Rebuild,
    StringEncoded,
    Struct,
    Terminated,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timecoin.errors import DecodeError
from timecoin.wire import messages
from timecoin.wire.framing import HEADER_SIZE, FrameDecoder, encode_frame
from timecoin.wire.messages import MsgType

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
ROUNDTRIP = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.data_too_large])

NAMES = list(messages.LAYOUTS)
CODECS = {name: messages.Codec(name, layout) for name, layout in messages.LAYOUTS.items()}
INTERPRETED = {name: layout if name == "Envelope" else layout + Terminated
               for name, layout in messages.LAYOUTS.items()}

_INT_RANGES = {">B": (0, 2**8 - 1), ">H": (0, 2**16 - 1), ">I": (0, 2**32 - 1), ">L": (0, 2**32 - 1),
               ">Q": (0, 2**64 - 1), ">l": (-(2**31), 2**31 - 1), ">i": (-(2**31), 2**31 - 1)}


# -- valid values from the layouts -----------------------------------------------------------------


def strategy_for(con: Construct) -> st.SearchStrategy[Any]:
    """Values that the construct can build (small arrays and strings, to keep examples fast)."""
    if con is messages.Envelope:
        return st.one_of([
            st.fixed_dictionaries({"type": st.just(int(t)), "request_id": st.integers(0, 2**32 - 1),
                                   "body": strategy_for(messages.BODIES[t])})
            for t in MsgType])
    if isinstance(con, Struct):
        return st.fixed_dictionaries({sub.name: strategy_for(sub.subcon) for sub in con.subcons if sub.name})
    if isinstance(con, FormatField):
        lo, hi = _INT_RANGES[con.fmtstr]
        return st.integers(lo, hi)
    if isinstance(con, messages.ExactBytes):
        return st.binary(min_size=con.length, max_size=con.length)
    if isinstance(con, StringEncoded):
        return st.text(max_size=12)
    if isinstance(con, Prefixed) and con.subcon is GreedyBytes:
        return st.binary(max_size=40)
    if isinstance(con, FocusedSeq) and isinstance(con.subcons[0].subcon, Rebuild):   # PrefixedArray
        return st.lists(strategy_for(con.subcons[1].subcon.subcon), max_size=2)
    raise AssertionError(f"no strategy for {con!r}: extend tests/fuzz/test_wire_fuzz.py")


VALUES = {name: strategy_for(layout) for name, layout in messages.LAYOUTS.items()}


@st.composite
def layout_and_encoding(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(NAMES))
    return name, CODECS[name].encode(draw(VALUES[name]))


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """One to three mutations of the kinds a broken or hostile peer produces."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "overwrite", "length"]))
        if kind == "flip" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate" and buf:
            del buf[draw(st.integers(0, len(buf) - 1)):]
        elif kind == "extend":
            buf += draw(st.binary(min_size=1, max_size=8))
        elif kind == "insert":
            i = draw(st.integers(0, len(buf)))
            buf[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            del buf[i:i + draw(st.integers(1, 4))]
        elif kind == "overwrite" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif kind == "length" and len(buf) >= 2:
            # large counts/lengths: the classic way to make a parser allocate or loop
            i = draw(st.integers(0, len(buf) - 2))
            buf[i:i + 2] = b"\xff\xff"
    return bytes(buf)


# -- oracles ---------------------------------------------------------------------------------------


def reference_decode(name: str, data: bytes) -> tuple[bool, Any]:
    """construct's interpreter with the same canonical rule: parse, rebuild, compare."""
    try:
        value = INTERPRETED[name].parse(data)
        rebuilt = INTERPRETED[name].build(value)
    except Exception:
        return False, None
    return rebuilt == data, value


def check_decoder(name: str, data: bytes) -> None:
    """Codec.decode raises only DecodeError and accepts exactly what the reference accepts."""
    try:
        value = CODECS[name].decode(data)
    except DecodeError:
        accepted, value = False, None
    else:
        accepted = True
    ref_accepted, ref_value = reference_decode(name, data)
    assert accepted == ref_accepted, f"{name}: compiled accepted={accepted}, interpreted={ref_accepted}"
    if accepted:
        assert value == ref_value
        assert CODECS[name].encode(value) == data   # canonical: exactly one encoding per value


def check_message(data: bytes) -> None:
    try:
        msg_type, request_id, body = messages.decode_message(data)
    except DecodeError:
        return
    assert isinstance(msg_type, MsgType)
    assert messages.encode_message(msg_type, body, request_id) == data


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_random_valid_values_roundtrip(name: str) -> None:
    """Every layout: encode/decode round trip, compiled and interpreted agree, on generated values."""

    @ROUNDTRIP
    @given(VALUES[name])
    def run(value: Any) -> None:
        encoded = CODECS[name].encode(value)
        assert INTERPRETED[name].build(value) == encoded
        assert CODECS[name].decode(encoded) == value
        assert INTERPRETED[name].parse(encoded) == CODECS[name].compiled.parse(encoded)
        if name == "Envelope":
            assert messages.decode_message(encoded) == (MsgType(value["type"]), value["request_id"],
                                                        value["body"])

    run()


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    # a known type byte first, so the body parsers are reached
    st.builds(lambda t, rest: bytes([t]) + rest, st.sampled_from([int(t) for t in MsgType]),
              st.binary(max_size=300)),
))
def test_random_bytes_to_decode_message(data: bytes) -> None:
    check_message(data)
    check_decoder("Envelope", data)


@FUZZ
@given(st.sampled_from(NAMES), st.binary(max_size=400))
def test_random_bytes_to_every_codec(name: str, data: bytes) -> None:
    check_decoder(name, data)


@FUZZ
@given(st.data())
def test_mutated_valid_encodings(data: st.DataObject) -> None:
    name, encoded = data.draw(layout_and_encoding())
    broken = data.draw(mutated(encoded))
    check_decoder(name, broken)
    if name == "Envelope":
        check_message(broken)


@FUZZ
@given(st.sampled_from(list(MsgType)), st.data())
def test_mutated_messages(msg_type: MsgType, data: st.DataObject) -> None:
    body = data.draw(strategy_for(messages.BODIES[msg_type]))
    encoded = messages.encode_message(msg_type, body, data.draw(st.integers(0, 2**32 - 1)))
    broken = data.draw(mutated(encoded))
    check_message(broken)
    check_decoder("Envelope", broken)


def _feed_all(dec: FrameDecoder, stream: bytes, cuts: list[int]) -> list[bytes]:
    """Feed ``stream`` cut at ``cuts``; DecodeError ends it (the caller would drop the peer)."""
    frames: list[bytes] = []
    pos = 0
    for cut in [*sorted(cuts), len(stream)]:
        try:
            frames += dec.feed(stream[pos:cut])
        except DecodeError as exc:
            frames += exc.frames  # type: ignore[attr-defined]
            assert dec.failed
            return frames
        assert dec.buffered <= dec.max_frame_bytes + HEADER_SIZE
        pos = cut
    return frames


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6), st.integers(1, 300))
def test_random_bytes_to_frame_decoder(stream: bytes, cuts: list[int], max_frame: int) -> None:
    dec = FrameDecoder(max_frame)
    for payload in _feed_all(dec, stream, [c for c in cuts if c <= len(stream)]):
        assert 0 < len(payload) <= max_frame
        check_message(payload)


@FUZZ
@given(st.lists(st.binary(max_size=100), min_size=1, max_size=4), st.data())
def test_mutated_frame_streams(payloads: list[bytes], data: st.DataObject) -> None:
    """Valid frames of valid envelopes, then the stream is damaged: still only DecodeError."""
    envelopes = [messages.encode_message(MsgType.PING, {"nonce": i, "payload": p}, i)
                 for i, p in enumerate(payloads)]
    stream = b"".join(encode_frame(e) for e in envelopes)
    intact = data.draw(st.booleans())
    if not intact:
        stream = data.draw(mutated(stream))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    dec = FrameDecoder(256)
    frames = _feed_all(dec, stream, cuts)
    if intact:
        assert frames == envelopes and not dec.failed
    for payload in frames:
        check_message(payload)
