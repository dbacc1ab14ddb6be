"""Length-prefixed framing of the P2P stream (SPEC §5).

A frame is a 4-byte big-endian payload length followed by that many payload bytes; the payload is
one envelope (:func:`timecoin.wire.messages.decode_message`).

* The length limit is enforced on the prefix, before any of the payload is buffered: a peer cannot
  make us hold more than ``max_frame_bytes + 4`` bytes of an unfinished frame.
* Zero-length frames are refused with :class:`~timecoin.errors.DecodeError`: an envelope is never
  empty (it has at least a type byte and a request id), so a zero prefix is malformed input and
  would otherwise be a free way to keep a connection busy.
* After any error the stream is out of sync; the decoder stays failed (every later ``feed``
  raises the same error) and the caller must drop the connection.

The decoder is Twisted-free so it can be tested alone; the P2P protocol calls :meth:`FrameDecoder.feed`
from ``dataReceived``. It never re-copies its buffer per frame: complete frames are sliced straight
out of the incoming chunk, and only the unfinished tail (at most one frame) is kept.
"""
from __future__ import annotations

import struct

from timecoin.errors import DecodeError, FrameTooLarge

DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
HEADER_SIZE = 4
MAX_LENGTH_PREFIX = 2**32 - 1

_LENGTH = struct.Struct(">I")


def _check_max(max_frame_bytes: int) -> int:
    if not isinstance(max_frame_bytes, int) or not 1 <= max_frame_bytes <= MAX_LENGTH_PREFIX:
        raise ValueError(f"max_frame_bytes must be an int in 1..{MAX_LENGTH_PREFIX}, not {max_frame_bytes!r}")
    return max_frame_bytes


def encode_frame(payload: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Prefix ``payload`` with its length.

    An empty or too-large payload is a bug of the sender (the peer would refuse the frame and
    penalise us), so it raises ValueError instead of being sent; callers that build large
    responses (BLOCKS) must cut them to fit ``max_frame_bytes`` first.
    """
    _check_max(max_frame_bytes)
    size = len(payload)
    if size == 0:
        raise ValueError("refusing to frame an empty payload")
    if size > max_frame_bytes:
        raise ValueError(f"payload of {size} bytes exceeds max_frame_bytes={max_frame_bytes}")
    return _LENGTH.pack(size) + bytes(payload)


_HEIGHT = struct.Struct(">Q")    # the 8-byte big-endian height of a consensus message
_NO_OFFSETS = (0,) * 256
_NO_HEIGHT_LIMIT = (1 << 64) - 1
_NO_REQUEST = b"\0\0\0\0"


class FrameDecoder:
    """Incremental decoder: feed stream chunks, get back the complete frame payloads."""

    __slots__ = ("max_frame_bytes", "_buf", "_need", "_error", "frames_decoded", "height_at", "_offsets",
                 "_signer_offsets", "frames_dropped", "dropped_above", "frames_foreign", "frames_muted")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 height_at: dict[int, int] | None = None, signer_at: dict[int, int] | None = None) -> None:
        self.max_frame_bytes = _check_max(max_frame_bytes)
        self._buf = bytearray()      # unfinished frame: header bytes, or header + part of the payload
        self._need = 0               # payload length of the frame in _buf once its header is complete
        self._error: DecodeError | None = None
        self.frames_decoded = 0
        # Payloads whose first byte is a key here carry an 8-byte big-endian height at that offset: with a
        # ``window``, feed() leaves out those outside it without copying them (see feed).
        self.height_at = height_at or {}
        self._offsets = tuple(self.height_at.get(t, 0) for t in range(256))     # type byte -> offset (0: none)
        self._signer_offsets = tuple((signer_at or {}).get(t, 0) for t in range(256))
        self.frames_foreign = 0      # frames dropped because their signer may not sign in the window
        self.frames_muted = 0        # unnumbered frames of a muted type dropped (see feed)
        self.frames_dropped = 0
        self.dropped_above = 0       # the highest height among frames dropped above a window

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held right now (never above ``max_frame_bytes + 4``)."""
        return len(self._buf)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def _fail(self, error: DecodeError, frames: list[bytes]) -> DecodeError:
        # Frames completed earlier in the same chunk ride on the error: the caller may still handle
        # them (they were well-framed) before it drops the connection.
        error.frames = frames  # type: ignore[attr-defined]
        self._error = error
        self._buf = bytearray()
        return error

    def _check_length(self, length: int, frames: list[bytes]) -> None:
        if length > self.max_frame_bytes:
            raise self._fail(FrameTooLarge(
                f"frame of {length} bytes exceeds max_frame_bytes={self.max_frame_bytes}"), frames)
        if length == 0:
            raise self._fail(DecodeError("zero-length frame"), frames)

    def _check_partial_header(self, head: bytes | bytearray, frames: list[bytes]) -> None:
        """Refuse a prefix that is already too large from its first bytes (the rest can only add)."""
        least = int.from_bytes(head, "big") << (8 * (HEADER_SIZE - len(head)))
        if least > self.max_frame_bytes:
            raise self._fail(FrameTooLarge(
                f"frame of at least {least} bytes exceeds max_frame_bytes={self.max_frame_bytes}"), frames)

    def _keep(self, payload: bytes, window: tuple[int, int] | None, signers: frozenset[bytes] | None,
              muted: frozenset[int] | None) -> bool:
        """The filter of feed()'s loop for one payload (a frame completed across chunks); False: skipped."""
        kind = payload[0]
        if muted and kind in muted and payload[1:5] == _NO_REQUEST:
            self.frames_muted += 1
            return False
        at = self._offsets[kind]
        if window is None or not at or len(payload) < at + 8:
            return True
        (h,) = _HEIGHT.unpack_from(payload, at)
        if h < window[0] or h > window[1]:
            self.frames_dropped += 1
            self.dropped_above = max(self.dropped_above, h)
            return False
        sa = self._signer_offsets[kind]
        if signers is not None and sa and len(payload) >= sa + 20 and payload[sa:sa + 20] not in signers:
            self.frames_foreign += 1
            return False
        return True

    def feed(self, data: bytes | bytearray | memoryview, window: tuple[int, int] | None = None,
             signers: frozenset[bytes] | None = None, muted: frozenset[int] | None = None) -> list[bytes]:
        """Consume a chunk; return the payloads of every frame it completes, in order.

        With ``window`` = (low, high), a complete frame whose type has a height offset in ``height_at`` and
        whose height lies outside [low, high] is skipped while it is cut out (never copied, counted in
        ``frames_dropped``): the cheapest possible look at junk for heights the caller cannot use. With
        ``signers`` too, a frame in the window whose type has a signer offset in ``signer_at`` and whose
        20-byte signer is not in ``signers`` is skipped the same way (counted in ``frames_foreign``). A frame
        whose type byte is in ``muted`` and whose request id (the 4 bytes after it) is 0 is skipped too
        (``frames_muted``): the caller mutes a peer's unnumbered notices while their budget is spent.

        Raises FrameTooLarge for a length prefix above the maximum (before buffering its payload)
        and DecodeError for a zero-length frame; either leaves the decoder failed for good.
        """
        if self._error is not None:
            raise self._error
        if not isinstance(data, bytes):
            data = bytes(data)
        frames: list[bytes] = []
        pos = 0
        end = len(data)
        buf = self._buf
        if buf:
            # Finish the frame left over from earlier chunks, copying only what it still lacks.
            if len(buf) < HEADER_SIZE:
                take = min(HEADER_SIZE - len(buf), end)
                buf += data[:take]
                pos = take
                if len(buf) < HEADER_SIZE:
                    self._check_partial_header(buf, frames)
                    return frames
                self._need = _LENGTH.unpack_from(buf)[0]
                self._check_length(self._need, frames)
            missing = HEADER_SIZE + self._need - len(buf)
            take = min(missing, end - pos)
            buf += data[pos:pos + take]
            pos += take
            if take < missing:
                return frames
            payload = bytes(memoryview(buf)[HEADER_SIZE:])
            self._buf = bytearray()
            if (window is None and not muted) or self._keep(payload, window, signers, muted):
                frames.append(payload)
        unpack = _LENGTH.unpack_from
        limit = self.max_frame_bytes
        # Two copies of the cutting loop on purpose: the plain one (no window) pays nothing for the filter,
        # and the filtering one stays a single pass over the chunk (a per-frame call would cost more than it).
        if (window is None or not self.height_at) and not muted:
            while end - pos >= HEADER_SIZE:
                (length,) = unpack(data, pos)
                if length > limit or length == 0:
                    self._check_length(length, frames)
                start = pos + HEADER_SIZE
                stop = start + length
                if stop > end:
                    break
                frames.append(data[start:stop])
                pos = stop
        else:
            low, high = window if window is not None else (0, _NO_HEIGHT_LIMIT)
            at_of = self._offsets
            mute = muted or frozenset()
            signer_of = self._signer_offsets if signers is not None else _NO_OFFSETS
            allowed = signers if signers is not None else frozenset()
            height_of = _HEIGHT.unpack_from
            dropped, above, foreign, silenced = 0, 0, 0, 0
            while end - pos >= HEADER_SIZE:
                (length,) = unpack(data, pos)
                if length > limit or length == 0:
                    self._check_length(length, frames)
                start = pos + HEADER_SIZE
                stop = start + length
                if stop > end:
                    break
                if mute and data[start] in mute and data[start + 1:start + 5] == _NO_REQUEST:
                    silenced += 1
                    pos = stop
                    continue
                at = at_of[data[start]]
                if at and length >= at + 8:
                    (h,) = height_of(data, start + at)
                    if h < low or h > high:
                        dropped += 1
                        if h > above:
                            above = h
                        pos = stop
                        continue
                    sa = signer_of[data[start]]
                    if sa and length >= sa + 20 and data[start + sa:start + sa + 20] not in allowed:
                        foreign += 1
                        pos = stop
                        continue
                frames.append(data[start:stop])
                pos = stop
            self.frames_foreign += foreign
            self.frames_muted += silenced
            if dropped:
                self.frames_dropped += dropped
                self.dropped_above = max(self.dropped_above, above)
        if pos < end:
            tail = data[pos:]
            if len(tail) < HEADER_SIZE:
                self._check_partial_header(tail, frames)
            else:
                self._need = unpack(tail)[0]
            self._buf = bytearray(tail)
        self.frames_decoded += len(frames)
        return frames
