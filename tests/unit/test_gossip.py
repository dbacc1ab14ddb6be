"""Gossip bookkeeping: each message id is processed once; the archive offers a peer only what it lacks."""
from __future__ import annotations

from timecoin.p2p.gossip import MAX_ARCHIVED_PER_HEIGHT, HeightArchive, SeenCache, message_id


def test_message_ids_depend_on_type_and_body_only() -> None:
    assert message_id(14, b"vote") == message_id(14, b"vote")
    assert message_id(14, b"vote") != message_id(13, b"vote")
    assert message_id(14, b"vote") != message_id(14, b"vote2")


def test_seen_cache_reports_repeats_and_forgets_the_oldest_beyond_its_size() -> None:
    seen = SeenCache(size=3)
    assert seen.add(b"a") and not seen.add(b"a")
    for mid in (b"b", b"c", b"d"):
        assert seen.add(mid)
    assert len(seen) == 3 and b"a" not in seen and b"d" in seen
    assert seen.add(b"a")                                # forgotten, so new again


def test_archive_keeps_one_height_and_offers_what_is_missing() -> None:
    arch = HeightArchive()
    arch.reset(5)
    arch.add(5, b"p", 13, b"proposal")
    arch.add(5, b"v1", 14, b"vote1")
    arch.add(5, b"v1", 14, b"vote1-again")               # same id: kept once, first copy
    arch.add(4, b"v-old", 14, b"ignored")                # an older height is not archived
    assert len(arch) == 2
    assert arch.missing({b"p"}) == [(b"v1", 14, b"vote1")]
    assert arch.missing({b"p", b"v1"}) == []
    arch.add(6, b"v-next", 14, b"next")                  # a newer height starts a new archive
    assert arch.height == 6 and arch.missing(set()) == [(b"v-next", 14, b"next")]
    arch.reset(7)
    assert len(arch) == 0 and arch.height == 7


def test_archive_is_bounded() -> None:
    arch = HeightArchive()
    arch.reset(1)
    for i in range(MAX_ARCHIVED_PER_HEIGHT + 10):
        arch.add(1, i.to_bytes(4, "big"), 14, b"x")
    assert len(arch) == MAX_ARCHIVED_PER_HEIGHT
