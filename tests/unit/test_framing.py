"""Length-prefixed framing: limits before buffering, zero frames, chunking, speed (SPEC §5)."""
from __future__ import annotations

import random
import struct
import time

import pytest

from timecoin.errors import DecodeError, FrameTooLarge, Reason
from timecoin.wire import messages
from timecoin.wire.framing import DEFAULT_MAX_FRAME_BYTES, HEADER_SIZE, FrameDecoder, encode_frame


def _prefix(n: int) -> bytes:
    return struct.pack(">I", n)


def test_default_max_is_8_mib() -> None:
    assert DEFAULT_MAX_FRAME_BYTES == 8 * 1024 * 1024
    assert FrameDecoder().max_frame_bytes == 8 * 1024 * 1024


def test_encode_frame_layout() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(bytearray(b"\xff" * 300)) == b"\x00\x00\x01\x2c" + b"\xff" * 300


def test_encode_frame_refuses_empty_and_oversized_payloads() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_frame(b"")
    assert encode_frame(b"x" * 10, max_frame_bytes=10)[:4] == _prefix(10)
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(b"x" * 11, max_frame_bytes=10)


@pytest.mark.parametrize("bad", [0, -1, 2**32, 1.5, "8"])
def test_bad_max_frame_bytes_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_frame(b"x", bad)  # type: ignore[arg-type]


def test_frames_in_one_chunk_and_byte_by_byte() -> None:
    payloads = [b"a", b"bc" * 50, bytes(range(256)), b"\x00"]
    stream = b"".join(encode_frame(p) for p in payloads)
    assert FrameDecoder().feed(stream) == payloads

    dec = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += dec.feed(stream[i:i + 1])
        assert dec.buffered <= max(map(len, payloads)) + HEADER_SIZE
    assert out == payloads
    assert dec.buffered == 0
    assert dec.frames_decoded == len(payloads)


def test_random_chunking_gives_the_same_frames() -> None:
    rng = random.Random(1234)
    payloads = [rng.randbytes(rng.randint(1, 700)) for _ in range(200)]
    stream = b"".join(encode_frame(p) for p in payloads)
    for _ in range(20):
        dec = FrameDecoder(1000)
        out: list[bytes] = []
        pos = 0
        while pos < len(stream):
            n = rng.randint(0, 1500)
            chunk = stream[pos:pos + n]
            # every buffer type the transport might hand us
            out += dec.feed(rng.choice([bytes, bytearray, memoryview])(chunk))
            pos += n
            assert dec.buffered <= 1000 + HEADER_SIZE
        assert out == payloads
        assert all(type(p) is bytes for p in out)
        assert dec.buffered == 0


def test_empty_feed_is_harmless() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"") == []
    assert dec.feed(b"\x00\x00") == []
    assert dec.feed(b"") == []
    assert dec.feed(b"\x00\x02hi") == [b"hi"]


def test_frame_of_exactly_max_is_accepted_and_max_plus_one_refused() -> None:
    assert FrameDecoder(16).feed(encode_frame(b"y" * 16, 16)) == [b"y" * 16]
    dec = FrameDecoder(16)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(_prefix(17))
    assert info.value.reason is Reason.FRAME_TOO_LARGE
    assert "17" in str(info.value)


def test_too_large_refused_on_the_prefix_before_any_payload() -> None:
    max_bytes = 1024
    dec = FrameDecoder(max_bytes)
    # The prefix alone triggers the error; no payload byte has been sent yet.
    with pytest.raises(FrameTooLarge):
        dec.feed(_prefix(max_bytes + 1))
    assert dec.buffered == 0
    # Same when the prefix arrives split after a valid frame still being buffered.
    dec = FrameDecoder(max_bytes)
    assert dec.feed(_prefix(3) + b"ab") == []
    assert dec.feed(b"c" + _prefix(max_bytes + 1)[:3]) == [b"abc"]
    assert dec.buffered == 3
    with pytest.raises(FrameTooLarge):
        dec.feed(_prefix(max_bytes + 1)[3:] + b"z" * 100)
    assert dec.buffered == 0


def test_too_large_detected_from_a_partial_prefix() -> None:
    # A first byte of 1 means a length of at least 16 MiB, whatever follows.
    dec = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
    with pytest.raises(FrameTooLarge, match="at least 16777216"):
        dec.feed(b"\x01")
    # A prefix that can still turn out small is kept, and completes to 8 MiB - 1: allowed.
    dec = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
    assert dec.feed(b"\x00\x7f") == []
    assert dec.buffered == 2
    assert dec.feed(b"\xff\xff" + b"p" * 10) == []
    assert dec.buffered == 14


def test_partial_prefix_boundaries() -> None:
    assert int.from_bytes(b"\x00\x7f\xff\xff", "big") == DEFAULT_MAX_FRAME_BYTES - 1
    dec = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
    assert dec.feed(b"\x00\x80") == []          # at least exactly 8 MiB: still allowed
    assert dec.feed(b"\x00\x00") == []          # exactly 8 MiB announced, payload pending
    assert dec.buffered == 4
    with pytest.raises(FrameTooLarge):
        FrameDecoder(DEFAULT_MAX_FRAME_BYTES).feed(b"\x00\x80\x00\x01")
    with pytest.raises(FrameTooLarge):
        FrameDecoder(DEFAULT_MAX_FRAME_BYTES).feed(b"\x00\x81")


def test_buffer_never_exceeds_max_plus_header() -> None:
    max_bytes = 64 * 1024
    payload = bytes(range(256)) * (max_bytes // 256)
    stream = encode_frame(payload, max_bytes) * 3
    dec = FrameDecoder(max_bytes)
    out: list[bytes] = []
    peak = 0
    for pos in range(0, len(stream), 1000):
        out += dec.feed(stream[pos:pos + 1000])
        peak = max(peak, dec.buffered)
    assert out == [payload] * 3
    assert max_bytes - 1000 < peak < max_bytes + HEADER_SIZE


def test_zero_length_frame_is_a_decode_error() -> None:
    dec = FrameDecoder()
    with pytest.raises(DecodeError, match="zero-length") as info:
        dec.feed(_prefix(0))
    assert not isinstance(info.value, FrameTooLarge)
    assert info.value.reason is Reason.MALFORMED
    # also when the zero prefix follows buffered bytes
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00") == []
    with pytest.raises(DecodeError, match="zero-length"):
        dec.feed(b"\x00\x00")


def test_decoder_stays_failed_and_keeps_frames_before_the_error() -> None:
    dec = FrameDecoder(100)
    stream = encode_frame(b"one") + encode_frame(b"two") + _prefix(101) + b"z" * 101 + encode_frame(b"three")
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(stream)
    assert info.value.frames == [b"one", b"two"]  # type: ignore[attr-defined]
    assert dec.failed
    with pytest.raises(FrameTooLarge):
        dec.feed(encode_frame(b"four"))
    assert dec.buffered == 0


def test_envelopes_through_frames() -> None:
    msgs = [
        (messages.MsgType.PING, {"nonce": 7, "payload": b"hi"}, 1),
        (messages.MsgType.GET_STATUS, {}, 2),
        (messages.MsgType.NEW_BLOCK, {"height": 9, "hash": b"\x11" * 32}, 0),
    ]
    stream = b"".join(encode_frame(messages.encode_message(t, b, r)) for t, b, r in msgs)
    decoded = [messages.decode_message(p) for p in FrameDecoder().feed(stream)]
    assert [(t, r) for t, r, _ in decoded] == [(t, r) for t, _, r in msgs]
    assert decoded[0][2].payload == b"hi"
    assert decoded[2][2].height == 9


def test_speed_100k_small_frames_in_one_chunk() -> None:
    """Slicing out of the chunk keeps this linear; a re-copying buffer would be quadratic."""
    n = 100_000
    frame = encode_frame(messages.encode_message(messages.MsgType.PING, {"nonce": 1, "payload": b""}))
    stream = frame * n
    dec = FrameDecoder()
    t0 = time.perf_counter()
    out = dec.feed(stream)
    elapsed = time.perf_counter() - t0
    assert len(out) == n and out[-1] == frame[HEADER_SIZE:]
    print(f"\nframing: {n} frames of {len(frame)} bytes in one chunk: {elapsed * 1000:.1f} ms "
          f"({n / elapsed / 1e6:.2f} M frames/s)")
    assert elapsed < 2.0

    # the same stream split into 4 KiB chunks (frames straddle chunk boundaries)
    dec = FrameDecoder()
    t0 = time.perf_counter()
    count = 0
    for pos in range(0, len(stream), 4096):
        count += len(dec.feed(stream[pos:pos + 4096]))
    elapsed = time.perf_counter() - t0
    assert count == n
    print(f"framing: same stream in 4 KiB chunks: {elapsed * 1000:.1f} ms")
    assert elapsed < 2.0


# -- the height window (issue 11 finding 7: junk for far heights costs about what cutting its frame does) ----
def _vote_payload(height: int) -> bytes:
    from timecoin.ledger.block import Vote, VoteType
    from timecoin.wire import messages as msgs
    vote = Vote(VoteType.PREVOTE, height, 0, b"\x01" * 32, b"\x02" * 20, b"\x03" * 64)
    return msgs.encode_message(msgs.MsgType.VOTE, vote.to_wire())


def test_a_window_skips_consensus_frames_for_other_heights_and_keeps_everything_else_in_order() -> None:
    from timecoin.wire import messages as msgs
    ping = msgs.encode_message(msgs.MsgType.PING, {"nonce": 1, "payload": b""})
    payloads = [_vote_payload(9), ping, _vote_payload(10), _vote_payload(11), _vote_payload(500), _vote_payload(12)]
    decoder = FrameDecoder(1 << 20, msgs.HEIGHT_AT)
    got = decoder.feed(b"".join(encode_frame(p) for p in payloads), (10, 11))
    assert got == [ping, payloads[2], payloads[3]]
    assert decoder.frames_dropped == 3 and decoder.dropped_above == 500
    # Without a window (or without offsets) every frame is returned, as before.
    assert FrameDecoder(1 << 20, msgs.HEIGHT_AT).feed(b"".join(encode_frame(p) for p in payloads)) == payloads
    assert FrameDecoder(1 << 20).feed(b"".join(encode_frame(p) for p in payloads), (10, 11)) == payloads


def test_a_frame_too_short_to_hold_a_height_is_kept_for_the_decoder_to_refuse() -> None:
    from timecoin.wire import messages as msgs
    short = bytes((int(msgs.MsgType.VOTE),)) + b"\x00" * 6
    decoder = FrameDecoder(1 << 20, msgs.HEIGHT_AT)
    assert decoder.feed(encode_frame(short), (10, 11)) == [short]


def test_with_signers_a_vote_or_proposal_signed_outside_them_is_skipped_and_counted() -> None:
    from timecoin.wire import messages as msgs
    good = _vote_payload(10)                           # signed by b"\x02" * 20 (see _vote_payload)
    from timecoin.ledger.block import Vote, VoteType
    stranger = msgs.encode_message(msgs.MsgType.VOTE, Vote(VoteType.PREVOTE, 10, 0, b"\x01" * 32, b"\x09" * 20,
                                                            b"\x03" * 64).to_wire())
    quorum_like = bytes((int(msgs.MsgType.VOTE_QUORUM),)) + b"\0" * 4 + b"\x01" + (10).to_bytes(8, "big") + b"\0" * 40
    decoder = FrameDecoder(1 << 20, msgs.HEIGHT_AT, msgs.SIGNER_AT)
    data = b"".join(encode_frame(p) for p in (good, stranger, quorum_like))
    assert decoder.feed(data, (10, 11), frozenset({b"\x02" * 20})) == [good, quorum_like]
    assert decoder.frames_foreign == 1 and decoder.frames_dropped == 0
    # Without signers, signers are not judged here (the engine's precheck still does).
    assert FrameDecoder(1 << 20, msgs.HEIGHT_AT, msgs.SIGNER_AT).feed(data, (10, 11)) == [good, stranger, quorum_like]


def test_muted_types_drop_unnumbered_frames_only() -> None:
    from timecoin.wire import messages as msgs
    notice = msgs.encode_message(msgs.MsgType.NEW_BLOCK, {"height": 5, "hash": b"\x07" * 32})
    unnumbered = msgs.encode_message(msgs.MsgType.REJECT, {"reason": 1, "message": "x"})
    answer = msgs.encode_message(msgs.MsgType.REJECT, {"reason": 1, "message": "x"}, 42)
    ping = msgs.encode_message(msgs.MsgType.PING, {"nonce": 1, "payload": b""})
    data = b"".join(encode_frame(p) for p in (notice, unnumbered, answer, ping))
    muted = frozenset({int(msgs.MsgType.NEW_BLOCK), int(msgs.MsgType.REJECT)})
    decoder = FrameDecoder(1 << 20, msgs.HEIGHT_AT)
    assert decoder.feed(data, None, None, muted) == [answer, ping]      # an answer to our request is never muted
    assert decoder.frames_muted == 2
    assert FrameDecoder(1 << 20, msgs.HEIGHT_AT).feed(data) == [notice, unnumbered, answer, ping]


def test_a_frame_completed_across_chunks_is_judged_like_the_others() -> None:
    from timecoin.wire import messages as msgs
    far, near = _vote_payload(500), _vote_payload(10)
    data = encode_frame(far) + encode_frame(near) + encode_frame(far)
    decoder = FrameDecoder(1 << 20, msgs.HEIGHT_AT)
    got = []
    for cut in range(0, len(data), 7):                  # every frame straddles chunks
        got += decoder.feed(data[cut:cut + 7], (10, 11))
    assert got == [near] and decoder.frames_dropped == 2 and decoder.dropped_above == 500
