"""Log a repeated line once per key per window, so a peer cannot write our log for us (issue 11).

A peer can make us note the same thing thousands of times a second (a fork announcement, a reject it
sends without a request id). :class:`LogOnce` lets the first occurrence per key -- typically (PeerID,
kind) -- through in each window and counts the rest; the count rides on the next line let through. The
table is bounded: at most ``max_keys`` keys, the one whose window started first forgotten first (the worst
that does is let one more line through early).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

LOG_WINDOW = 60.0            # seconds: one line per key per window
MAX_LOG_KEYS = 4_096


class LogOnce:
    """``allow(key, now)``: None to stay quiet, else how many occurrences were kept quiet since the last line."""

    __slots__ = ("window", "max_keys", "_keys")

    def __init__(self, window: float = LOG_WINDOW, max_keys: int = MAX_LOG_KEYS) -> None:
        self.window = window
        self.max_keys = max_keys
        self._keys: OrderedDict[Hashable, list[float]] = OrderedDict()    # key -> [window start, quiet count]

    def allow(self, key: Hashable, now: float) -> int | None:
        entry = self._keys.get(key)
        if entry is not None and 0 <= now - entry[0] < self.window:
            entry[1] += 1
            return None
        quiet = 0 if entry is None else int(entry[1])
        self._keys[key] = [now, 0]
        self._keys.move_to_end(key)
        if len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return quiet

    def __len__(self) -> int:
        return len(self._keys)
