"""How much we queue for a peer that does not read: a bound on our send buffer per connection (SPEC §5).

``transport.write`` never blocks and never refuses: what the kernel cannot take waits in user space,
without limit. A peer that stops reading its socket (half-open, or on purpose) while it keeps sending
requests -- a ping echoes its payload, a ``get_blocks`` answer can be a whole frame -- would make us
buffer without end. :class:`SendBuffer` is registered as the transport's streaming producer: the
transport pauses it once its own buffer passes ``bufferSize`` (64 KiB for TCP), and resumes it when the
buffer has drained. The bytes we write while paused are counted; past the limit the connection is
dropped (a slow honest link drains before it gets there: the limit is two full frames or
:data:`MAX_SEND_BACKLOG`, whichever is more). Not a reputation charge: a slow link is not provable
misbehaviour, and a reconnect costs the peer a TLS handshake while we hold at most the limit.
"""
from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

MAX_SEND_BACKLOG = 16 << 20         # bytes written while the transport is full before we drop the peer
CLOSE_GRACE = 10.0                  # s a closing connection may take to flush before it is aborted


def send_limit(max_frame_bytes: int) -> int:
    """Bytes we may write to a peer while its transport is full: two frames, or MAX_SEND_BACKLOG."""
    return max(MAX_SEND_BACKLOG, 2 * max_frame_bytes)


@implementer(IPushProducer)
class SendBuffer:
    """The transport's producer for one connection: counts what we write while the transport is full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.blocked = False            # the transport said its buffer is full (pauseProducing)
        self.since_blocked = 0          # bytes written since then
        self.stalls = 0                 # times the transport filled up

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted API
        if not self.blocked:
            self.blocked = True
            self.since_blocked = 0
            self.stalls += 1

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted API
        self.blocked = False
        self.since_blocked = 0

    def stopProducing(self) -> None:  # noqa: N802 - Twisted API
        """The connection is going away: nothing more is written anyway."""

    def admit(self, size: int) -> bool:
        """Count ``size`` bytes about to be written; False if that passes the limit (drop the peer)."""
        if not self.blocked:
            return True
        self.since_blocked += size
        return self.since_blocked <= self.limit
