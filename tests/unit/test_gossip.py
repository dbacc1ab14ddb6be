"""Gossip bookkeeping: each message id is processed once; the archive offers a peer only what it lacks."""
from __future__ import annotations

from timecoin.p2p import gossip
from timecoin.p2p.gossip import MAX_ARCHIVED_PER_HEIGHT, MAX_SENT_IDS, HeightArchive, SeenCache, message_id
from timecoin.p2p.logonce import LogOnce


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
    arch.reset(7)
    assert len(arch) == 0 and arch.height == 7


def test_a_next_height_message_does_not_wipe_the_current_height() -> None:
    # Hole 6: any validator may send a vote of h+1 at any time; the node must keep offering height h's
    # messages until it decides h (peers that lost one still need it), then carry h+1's over.
    arch = HeightArchive()
    arch.reset(5)
    arch.add(5, b"p", 13, b"proposal")
    arch.add(6, b"v-next", 14, b"next")                  # a validator one height ahead
    assert arch.height == 5
    assert arch.missing(set()) == [(b"p", 13, b"proposal")]     # h's messages still offered, h+1's not yet
    arch.add(5, b"v", 14, b"vote")                       # and h keeps growing
    arch.add(9, b"far", 14, b"far")                      # further ahead: not archived
    assert arch.missing({b"p"}) == [(b"v", 14, b"vote")]
    arch.reset(6)                                        # h decided: h+1's messages carry over
    assert arch.height == 6 and arch.missing(set()) == [(b"v-next", 14, b"next")]
    arch.reset(8)                                        # a jump (sync): nothing of 7 to carry
    assert arch.height == 8 and len(arch) == 0


def test_next_height_messages_are_bounded_separately() -> None:
    arch = HeightArchive()
    arch.reset(1)
    arch.add(1, b"cur", 14, b"x")
    bound = gossip.MAX_ARCHIVED_NEXT_HEIGHT
    for i in range(bound + 10):
        arch.add(2, i.to_bytes(4, "big"), 14, b"x")
    assert len(arch) == 1                                # the current height is what is counted and offered
    arch.reset(2)
    assert len(arch) == bound


def test_archive_is_bounded() -> None:
    arch = HeightArchive()
    arch.reset(1)
    for i in range(MAX_ARCHIVED_PER_HEIGHT + 10):
        arch.add(1, i.to_bytes(4, "big"), 14, b"x")
    assert len(arch) == MAX_ARCHIVED_PER_HEIGHT


def test_a_connections_sent_ids_is_capped_and_clears() -> None:
    # PeerConnection.sent_ids is a SeenCache of MAX_SENT_IDS: a peer can never make it hold more.
    sent = SeenCache(MAX_SENT_IDS)
    for i in range(MAX_SENT_IDS + 500):
        sent.add(i.to_bytes(32, "big"))
    assert len(sent) == MAX_SENT_IDS and (MAX_SENT_IDS + 499).to_bytes(32, "big") in sent
    assert (0).to_bytes(32, "big") not in sent                     # the oldest went first
    sent.clear()
    assert len(sent) == 0


def test_archive_membership_covers_the_current_and_next_height() -> None:
    archive = HeightArchive()
    archive.reset(5)
    archive.add(5, b"now", 2, b"p")
    archive.add(6, b"next", 2, b"q")
    archive.add(9, b"far", 2, b"r")
    assert b"now" in archive and b"next" in archive and b"far" not in archive
    assert [mid for mid, _, _ in archive.missing(SeenCache(4))] == [b"now"]


def test_log_once_lets_one_line_per_key_and_window_through_and_counts_the_rest() -> None:
    log = LogOnce(window=60.0, max_keys=3)
    assert log.allow(("p", "fork"), 0.0) == 0
    assert [log.allow(("p", "fork"), t) for t in (1.0, 30.0, 59.9)] == [None, None, None]
    assert log.allow(("q", "fork"), 1.0) == 0                        # another peer has its own line
    assert log.allow(("p", "fork"), 60.0) == 3                       # next window: the quiet ones counted
    for i in range(10):
        log.allow((f"x{i}", "fork"), 61.0)
    assert len(log) == 3                                             # bounded: the oldest keys forgotten
