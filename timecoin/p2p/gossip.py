"""Flood gossip bookkeeping (SPEC §5 "Gossip"): what was seen, and what each peer still lacks.

Two sans-I/O parts the P2P service combines:

* :class:`SeenCache` — ids of messages already processed (bounded, oldest forgotten first), so each
  transaction, proposal, vote, evidence or announcement is handled and relayed once. The same bounded
  set, :data:`MAX_SENT_IDS` long, is each connection's ``sent_ids``: ids of messages the peer has
  because we accepted them from it or sent them to it (never ids of what it sent that we did not
  accept, so junk cannot make it grow).
* :class:`HeightArchive` — the consensus messages of the current height (and, apart, the next one's),
  kept so they can be offered again to peers that were not connected (or lost a message) when they
  were first sent. The engine
  never re-sends; like CometBFT's gossip routines, the network layer offers a peer what it lacks for
  the height the peer is at, which is what liveness after network stabilisation needs.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Container

DEFAULT_SEEN_SIZE = 100_000
MAX_SENT_IDS = 16_384                 # per connection: a height's archive (10,000 + 2,000) plus relayed txs and quorums
MAX_ARCHIVED_PER_HEIGHT = 10_000      # proposals + votes of one height (bounded: rounds x validators x 2)
MAX_ARCHIVED_NEXT_HEIGHT = 2_000      # of the next height, received early (the engine keeps <= 24 per validator)


def message_id(msg_type: int, body: bytes) -> bytes:
    """The id of a gossiped message: its type and canonical body, never the request id."""
    return hashlib.sha256(bytes((msg_type,)) + body).digest()


class SeenCache:
    """An insertion-ordered set with a size bound."""

    __slots__ = ("size", "_ids")

    def __init__(self, size: int = DEFAULT_SEEN_SIZE) -> None:
        self.size = size
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, mid: object) -> bool:
        return mid in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, mid: bytes) -> bool:
        """Record ``mid``; False if it was already there (the caller drops the message)."""
        if mid in self._ids:
            return False
        self._ids[mid] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True

    def clear(self) -> None:
        self._ids.clear()


class HeightArchive:
    """Consensus messages (id -> framed bytes) of the height being decided, in arrival order, plus the next one's.

    ``height`` is the height consensus is deciding; its messages are what :meth:`missing` offers, until
    :meth:`reset` moves to the next height (we decided it). A message of ``height + 1`` (a validator one step
    ahead, which any validator may be at any time) is kept apart, bounded by ``MAX_ARCHIVED_NEXT_HEIGHT``,
    and carried over when the archive moves to that height: it never replaces the current height's
    messages, which peers that lost one still need. Anything further ahead or behind is not archived.
    """

    __slots__ = ("height", "_frames", "_next")

    def __init__(self) -> None:
        self.height = 0
        self._frames: dict[bytes, tuple[int, bytes]] = {}
        self._next: dict[bytes, tuple[int, bytes]] = {}

    def reset(self, height: int) -> None:
        """Move to ``height`` (decided the one before, or jumped): the next height's messages carry over."""
        if height == self.height:
            return
        carried = self._next if height == self.height + 1 else {}
        self.height = height
        self._frames, self._next = carried, {}

    def add(self, height: int, mid: bytes, msg_type: int, payload: bytes) -> None:
        """Archive a message of the current height or of the next (bounded); others are dropped."""
        if height == self.height:
            frames, bound = self._frames, MAX_ARCHIVED_PER_HEIGHT
        elif height == self.height + 1:
            frames, bound = self._next, MAX_ARCHIVED_NEXT_HEIGHT
        else:
            return
        if len(frames) < bound:
            frames.setdefault(mid, (msg_type, payload))

    def __contains__(self, mid: object) -> bool:
        """True if ``mid`` is archived, at the current height or the next."""
        return mid in self._frames or mid in self._next

    def missing(self, known: Container[bytes]) -> list[tuple[bytes, int, bytes]]:
        """(id, type, payload) of every archived message of the current height not in ``known``."""
        return [(mid, t, p) for mid, (t, p) in self._frames.items() if mid not in known]

    def __len__(self) -> int:
        return len(self._frames)
