"""The peer store (timecoin/p2p/discovery.py): multiaddr parsing, persistence in a real LMDB store next to
the reputation records, exponential backoff with injected jitter, dial scheduling and peer-exchange bounds."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task

from timecoin.config import build_config
from timecoin.crypto import PrivateKey
from timecoin.p2p import discovery
from timecoin.p2p.discovery import (
    BACKOFF_MAX,
    DIAL_HOLD,
    JITTER,
    MAX_ADDRS_PER_PEER,
    MAX_EXCHANGE_ADDED,
    MAX_EXCHANGE_ADDRS,
    MAX_FAILURES,
    PeerStore,
    Source,
    format_multiaddr,
    parse_multiaddr,
)
from timecoin.p2p.peers import ADDR_PREFIX, SCORE_PREFIX, Event, PeerManager
from timecoin.store import PEERS, Store

PIDS = [PrivateKey(i.to_bytes(32, "big")).peer_id for i in range(1, 160)]
SELF, A, B, C, D = PIDS[:5]
T0 = 1_700_000_000.0


def addr(i: int, pid: str | None = None, port: int = 9333) -> str:
    host = f"192.0.2.{i % 250 + 1}" if i < 250 else f"198.51.100.{i % 250 + 1}"
    return format_multiaddr(host, port, pid)


def open_store(tmp_path: Path) -> Store:
    return Store(os.path.join(str(tmp_path), "chain"))


def new_store(store: Store | None = None, seed: int = 1, **kw: object) -> PeerStore:
    return PeerStore(store, rng=random.Random(seed), self_id=SELF, **kw)  # type: ignore[arg-type]


# -- multiaddrs ---------------------------------------------------------------------------------------
def test_parse_and_format_multiaddrs() -> None:
    assert parse_multiaddr(f"/ip4/127.0.0.1/tcp/9333/p2p/{A}") == ("127.0.0.1", 9333, A)
    assert parse_multiaddr("/ip4/10.1.2.3/tcp/1") == ("10.1.2.3", 1, None)
    assert parse_multiaddr(f"/ip6/0:0:0:0:0:0:0:1/tcp/65535/p2p/{B}") == ("::1", 65535, B)
    assert parse_multiaddr("/ip6/2001:DB8::7/tcp/80") == ("2001:db8::7", 80, None)
    assert format_multiaddr("::1", 9333, A) == f"/ip6/::1/tcp/9333/p2p/{A}"
    assert format_multiaddr("192.0.2.1", 29333) == "/ip4/192.0.2.1/tcp/29333"
    for text in (f"/ip4/192.0.2.1/tcp/9333/p2p/{A}", "/ip6/2001:db8::7/tcp/80"):
        assert format_multiaddr(*parse_multiaddr(text)) == text
    assert discovery.canonical(f"/ip6/0:0::1/tcp/7/p2p/{A}") == f"/ip6/::1/tcp/7/p2p/{A}"


BAD_ADDRS = [
    ("", "must start with '/'"),
    ("ip4/1.2.3.4/tcp/1", "must start with '/'"),
    ("/ip4/1.2.3.4", "not a multiaddr like"),
    ("/ip4/1.2.3.4/tcp/1/", "not a multiaddr like"),
    ("/ip4/1.2.3.4/tcp/1/p2p", "not a multiaddr like"),
    ("/ip4/256.1.1.1/tcp/1", "not an IPv4 address"),
    ("/ip4/01.2.3.4/tcp/1", "not an IPv4 address"),
    ("/ip4/::1/tcp/1", "not an IPv4 address"),
    ("/ip6/1.2.3.4/tcp/1", "not an IPv6 address"),
    ("/ip6/fe80::1%eth0/tcp/1", "zone"),
    ("/dns4/example.com/tcp/1", "only /ip4 and /ip6"),
    ("/ip4/1.2.3.4/udp/1", "must be /tcp"),
    ("/ip4/1.2.3.4/tcp/0", "out of range"),
    ("/ip4/1.2.3.4/tcp/65536", "out of range"),
    ("/ip4/1.2.3.4/tcp/+1", "not a TCP port"),
    ("/ip4/1.2.3.4/tcp/080", "not a TCP port"),
    ("/ip4/1.2.3.4/tcp/\u0661\u0662", "not a TCP port"),
    ("/ip4/1.2.3.4/tcp/1/p2p/notapeerid", "not a valid PeerID"),
    ("/ip4/1.2.3.4/tcp/1/p2p/" + "1" * 40, "not a valid PeerID"),
    ("/ip4/1.2.3.4/tcp/1/ipfs/16Uiu2HAm", "expected /p2p/"),
    ("/ip4/1.2.3.4/tcp/1/" + "x" * 300, "at most 256"),
]


@pytest.mark.parametrize(("text", "why"), BAD_ADDRS, ids=[t[:40] or "empty" for t, _ in BAD_ADDRS])
def test_parse_errors_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_multiaddr(text)


def test_parse_and_format_refuse_non_text() -> None:
    with pytest.raises(ValueError, match="is text"):
        parse_multiaddr(b"/ip4/1.2.3.4/tcp/1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an IP address"):
        format_multiaddr("example.com", 1)
    with pytest.raises(ValueError, match="out of range"):
        format_multiaddr("1.2.3.4", 0)
    with pytest.raises(ValueError, match="PeerID"):
        format_multiaddr("1.2.3.4", 1, "nope")


_PIECES = st.sampled_from(["", "/", "ip4", "ip6", "tcp", "p2p", "1.2.3.4", "::1", "0", "9333", "65536", A, "x"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_PIECES, max_size=8).map("/".join)))
def test_parse_raises_only_value_error_and_round_trips(text: str) -> None:
    try:
        host, port, pid = parse_multiaddr(text)
    except ValueError:
        return
    again = format_multiaddr(host, port, pid)
    assert parse_multiaddr(again) == (host, port, pid)


# -- learning and persistence -------------------------------------------------------------------------
def test_peer_store_persists_beside_the_scores(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        ps = new_store(store)
        assert ps.add(addr(1, A), "bootstrap", T0)
        assert ps.add(addr(2, B), Source.IDENTIFY, T0)
        assert ps.add(addr(3, C), "peer-exchange", T0)
        assert ps.add(addr(30, C), Source.EXCHANGE, T0)          # a second address of C
        assert ps.add("/ip4/192.0.2.99/tcp/1", Source.BOOTSTRAP, T0)    # ID-less: memory only
        ps.dial_failed(addr(2, B), T0)
        ps.dial_succeeded(addr(1, A), T0 + 1)
        mgr = PeerManager(store, build_config({}))
        mgr.record(A, Event.TIMEOUT, T0)
        assert len(store.items(PEERS, ADDR_PREFIX)) == 3
        assert len(store.items(PEERS, SCORE_PREFIX)) == 1
        before = {e.key: e for e in ps.entries()}
    with open_store(tmp_path) as store:
        again = new_store(store)
        assert sorted(e.key for e in again.entries()) == sorted([A, B, C])
        for pid in (A, B, C):
            got, want = again.get(pid), before[pid]
            assert got is not None
            assert (got.addrs, got.source, got.added, got.last_seen, got.failures, got.next_dial) == \
                (want.addrs, want.source, want.added, want.last_seen, want.failures, want.next_dial)
        assert again.get(B).failures == 1 and again.get(A).last_seen == T0 + 1   # type: ignore[union-attr]
        assert again.get(C).addrs == [addr(3, C), addr(30, C)]                     # type: ignore[union-attr]
        assert PeerManager(store, build_config({})).score(A, T0) == -5             # scores untouched


def test_add_rules() -> None:
    ps = new_store()
    assert not ps.add(addr(1, SELF), Source.BOOTSTRAP, T0)                  # never ourselves
    assert not ps.add(f"/ip4/0.0.0.0/tcp/9333/p2p/{A}", Source.IDENTIFY, T0)   # undialable
    assert not ps.add(f"/ip4/224.0.0.1/tcp/9333/p2p/{A}", Source.IDENTIFY, T0)
    with pytest.raises(ValueError, match="only bootstrap"):
        ps.add("/ip4/192.0.2.1/tcp/1", Source.EXCHANGE, T0)
    with pytest.raises(ValueError, match="must start"):
        ps.add("nonsense", Source.BOOTSTRAP, T0)
    assert len(ps) == 0
    # The peer's own addresses go first; hearsay is appended, never displacing them; sources only rise.
    assert ps.add(addr(1, A), Source.EXCHANGE, T0)
    assert ps.add(addr(2, A), Source.IDENTIFY, T0)
    assert not ps.add(addr(1, A), Source.EXCHANGE, T0)
    entry = ps.get(A)
    assert entry is not None and entry.addrs == [addr(2, A), addr(1, A)] and entry.source is Source.IDENTIFY
    assert not ps.add(addr(2, A), Source.EXCHANGE, T0) and entry.source is Source.IDENTIFY
    for i in range(3, 20):
        ps.add(addr(i, A), Source.EXCHANGE, T0)
    assert len(entry.addrs) == MAX_ADDRS_PER_PEER and entry.addrs[0] == addr(2, A)
    for i in range(20, 30):
        ps.add(addr(i, A), Source.IDENTIFY, T0)
    assert entry.addrs[0] == addr(29, A) and len(entry.addrs) == MAX_ADDRS_PER_PEER
    assert ps.add_bootstrap([addr(40, B), addr(41, C)], T0) == 2


def test_peer_exchange_is_bounded() -> None:
    ps = new_store()
    assert ps.add_from_exchange([addr(i, PIDS[i % len(PIDS)]) for i in range(MAX_EXCHANGE_ADDRS + 1)], A, T0) == 0
    assert ps.add_from_exchange("not a list", A, T0) == 0
    assert ps.add_from_exchange(None, A, T0) == 0
    assert len(ps) == 0
    mixed = [addr(1, B), "garbage", 42, b"/ip4/1.2.3.4/tcp/1", "/ip4/192.0.2.8/tcp/1", addr(2, SELF),
             f"/ip4/0.0.0.0/tcp/1/p2p/{C}", "/ip4/1.2.3.4/tcp/1/" + "x" * 1000, addr(3, C), addr(3, C)]
    assert ps.add_from_exchange(mixed, A, T0) == 2
    assert sorted(e.key for e in ps.entries()) == sorted([B, C])
    assert all(e.source is Source.EXCHANGE for e in ps.entries())
    many = [addr(i, PIDS[i]) for i in range(5, 5 + MAX_EXCHANGE_ADDED + 20)]
    assert ps.add_from_exchange(many, A, T0) == MAX_EXCHANGE_ADDED
    assert len(ps) == 2 + MAX_EXCHANGE_ADDED


def test_store_is_capped_and_evicts_the_worst(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        ps = new_store(store, max_peers=4)
        ps.add(addr(1, PIDS[10]), Source.BOOTSTRAP, T0)
        ps.add(addr(2, PIDS[11]), Source.EXCHANGE, T0)
        ps.dial_succeeded(addr(2, PIDS[11]), T0)              # reached once: worth more than hearsay
        ps.add(addr(3, PIDS[12]), Source.IDENTIFY, T0)
        ps.add(addr(4, PIDS[13]), Source.EXCHANGE, T0)
        assert ps.add(addr(5, PIDS[14]), Source.EXCHANGE, T0 + 1)      # evicts PIDS[13] (older hearsay)
        assert PIDS[13] not in ps and len(ps) == 4
        ps.dial_failed(addr(5, PIDS[14]), T0 + 2)
        assert ps.add(addr(6, PIDS[15]), Source.EXCHANGE, T0 + 3)      # evicts PIDS[14] (a failure)
        assert PIDS[14] not in ps
        assert not ps.add(addr(7, PIDS[16]), Source.EXCHANGE, T0 - 5)  # older than anything: itself the worst
        for i in range(20, 30):
            ps.add(addr(i, PIDS[i]), Source.BOOTSTRAP, T0)              # bootstrap peers are never evicted...
        assert PIDS[10] in ps and all(PIDS[i] in ps for i in range(20, 30))
        assert PIDS[11] not in ps and PIDS[12] not in ps               # ... but evict everyone else
        assert {k[len(ADDR_PREFIX):].decode() for k, _ in store.items(PEERS, ADDR_PREFIX)} == \
            {e.key for e in ps.entries()}


# -- backoff and scheduling -----------------------------------------------------------------------------
def test_backoff_grows_exponentially_with_jitter_and_success_resets() -> None:
    ps = new_store(seed=7)
    ps.add(addr(1, A), Source.BOOTSTRAP, T0)
    now, waits = T0, []
    for n in range(1, 16):
        nxt = ps.dial_failed(addr(1, A), now)
        assert nxt is not None
        cap = min(2.0 ** (n - 1), BACKOFF_MAX)
        assert cap * (1 - JITTER) <= nxt - now <= cap, n
        waits.append(nxt - now)
        assert ps.due(nxt - 0.001, set(), 5) == []
        assert ps.due(nxt, set(), 5) == [addr(1, A)]
        now = nxt
    assert waits[9] > 300 * (1 - JITTER) and max(waits) <= BACKOFF_MAX
    assert len({round(w / min(2.0 ** i, BACKOFF_MAX), 6) for i, w in enumerate(waits)}) > 1   # jittered
    ps.dial_succeeded(addr(1, A), now + 1)
    entry = ps.get(A)
    assert entry is not None and entry.failures == 0 and entry.last_seen == now + 1
    assert ps.dial_failed(addr(1, A), now + 2) <= now + 2 + 1.0       # type: ignore[operator]
    # The same seed gives the same schedule.
    twin = new_store(seed=7)
    twin.add(addr(1, A), Source.BOOTSTRAP, T0)
    assert twin.dial_failed(addr(1, A), T0) == T0 + waits[0]


def test_a_peer_that_accepts_then_drops_us_is_redialled_with_backoff_not_every_second() -> None:
    clock = task.Clock()
    clock.advance(T0)
    ps = new_store()
    ps.add(addr(1, A), Source.EXCHANGE, clock.seconds())
    waits = []
    for n in range(1, 8):
        assert ps.due(clock.seconds(), set(), 5) == [addr(1, A)]
        ps.dial_succeeded(addr(1, A), clock.seconds())          # reached ready...
        clock.advance(0.5)                                         # ...and was dropped half a second later
        nxt = ps.connection_closed(addr(1, A), clock.seconds(), lasted=0.5)
        assert nxt is not None
        cap = min(2.0 ** (n - 1), BACKOFF_MAX)
        assert cap * (1 - JITTER) <= nxt - clock.seconds() <= cap, n
        waits.append(nxt - clock.seconds())
        assert ps.due(nxt - 0.001, set(), 5) == []
        clock.advance(nxt - clock.seconds())
    assert waits[-1] > 30 and A in ps                           # backing off, but not forgotten: it is reachable
    # A session that lasts resets the count: the next dial may come at once.
    ps.dial_succeeded(addr(1, A), clock.seconds())
    clock.advance(discovery.MIN_SESSION)
    assert ps.connection_closed(addr(1, A), clock.seconds(), lasted=discovery.MIN_SESSION) == clock.seconds()
    assert ps.get(A).short_sessions == 0                        # type: ignore[union-attr]


def test_non_bootstrap_peers_are_forgotten_after_repeated_failures() -> None:
    ps = new_store()
    ps.add(addr(1, A), Source.EXCHANGE, T0)
    ps.add(addr(2, B), Source.BOOTSTRAP, T0)
    for _ in range(MAX_FAILURES - 1):
        assert ps.dial_failed(addr(1, A), T0) is not None
        ps.dial_failed(addr(2, B), T0)
    assert ps.dial_failed(addr(1, A), T0) is None and A not in ps
    assert ps.dial_failed(addr(2, B), T0) is not None and B in ps
    assert ps.dial_failed(addr(3, C), T0) is None                    # unknown: ignored


def test_due_orders_and_filters() -> None:
    ps = new_store()
    ps.add(addr(1, A), Source.EXCHANGE, T0)
    ps.add(addr(2, B), Source.IDENTIFY, T0)
    ps.add(addr(3, C), Source.BOOTSTRAP, T0)
    ps.add(addr(4, D), Source.EXCHANGE, T0)
    ps.add(addr(5, PIDS[5]), Source.EXCHANGE, T0)
    ps.add(format_multiaddr("192.0.2.6", 9333, SELF), Source.BOOTSTRAP, T0)   # ignored: ourselves
    assert ps.due(T0, set(), 0) == []
    got = ps.due(T0, {D}, 10, is_banned=lambda pid: pid == PIDS[5])
    assert got == [addr(3, C), addr(2, B), addr(1, A)]                # bootstrap first; not D, not banned
    assert ps.due(T0 + 1, set(), 10, is_banned=lambda pid: pid == PIDS[5]) == [addr(4, D)]   # others held
    assert ps.due(T0 + DIAL_HOLD, set(), 2) == [addr(3, C), addr(2, B)]                     # the hold ends
    # A failed peer with several addresses is tried at the next one.
    ps.add(addr(7, A), Source.IDENTIFY, T0)
    first = ps.get(A).addrs[0]                                        # type: ignore[union-attr]
    nxt = ps.dial_failed(first, T0 + 100)
    assert nxt is not None
    got = ps.due(nxt, set(), 10)
    assert ps.get(A).addrs[1] in got and first not in got             # type: ignore[union-attr]


def test_idless_bootstrap_address() -> None:
    ps = new_store()
    boot = "/ip4/192.0.2.50/tcp/9333"
    assert ps.add(boot, Source.BOOTSTRAP, T0) and not ps.add(boot, Source.BOOTSTRAP, T0)
    assert ps.due(T0, set(), 5) == [boot]
    ps.dial_succeeded(boot, T0 + 1, peer_id=A)
    assert ps.due(T0 + 2, {A}, 5) == []                   # its peer is connected
    assert ps.due(T0 + 2, set(), 5) == [boot]
    other = "/ip4/192.0.2.51/tcp/9333"
    ps.add(other, Source.BOOTSTRAP, T0)
    ps.due(T0, set(), 5)
    ps.dial_succeeded(other, T0 + 1)                      # PeerID unknown: wait the longest backoff
    assert other not in ps.due(T0 + BACKOFF_MAX, set(), 5)
    assert other in ps.due(T0 + 1 + BACKOFF_MAX, set(), 5)
    assert ps.sample(10) == []                            # ID-less addresses are not shared


def test_sample_prefers_reached_peers() -> None:
    ps = new_store()
    for i in range(1, 9):
        ps.add(addr(i, PIDS[i]), Source.EXCHANGE, T0)
    for i in (2, 4):
        ps.dial_succeeded(addr(i, PIDS[i]), T0)
    got = ps.sample(3, random.Random(3))
    assert len(got) == 3 and set(got[:2]) == {addr(2, PIDS[2]), addr(4, PIDS[4])}
    assert sorted(ps.sample(100)) == sorted(addr(i, PIDS[i]) for i in range(1, 9))
    ps.set_latency(PIDS[6], 0.01)
    assert ps.get(PIDS[6]).latency == 0.01                # type: ignore[union-attr]


def test_corrupt_address_records_are_dropped(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.put(PEERS, ADDR_PREFIX + A.encode(), b"{broken")
        store.put(PEERS, ADDR_PREFIX + B.encode(), new_entry_bytes(addr(1, C)))   # addresses of another peer
        store.put(PEERS, ADDR_PREFIX + C.encode(), new_entry_bytes(addr(1, C)))
        ps = new_store(store)
        assert [e.key for e in ps.entries()] == [C]
        assert [k for k, _ in store.items(PEERS, ADDR_PREFIX)] == [ADDR_PREFIX + C.encode()]


def new_entry_bytes(text: str) -> bytes:
    pid = parse_multiaddr(text)[2]
    assert pid is not None
    return discovery.PeerEntry(pid, pid, [text], Source.EXCHANGE, T0).encode()


def test_a_flood_of_new_identities_evicts_only_entries_never_reached_and_not_validators() -> None:
    # Issue 11 finding 6c: peers we reached by dialing, validators and bootstrap peers are evicted last;
    # a peer that merely connected to us (mark_seen) has proved nothing about its address.
    ps = new_store(max_peers=8)
    ps.add(addr(1, PIDS[10]), Source.BOOTSTRAP, T0)
    for i in (11, 12, 13):
        ps.add(addr(i, PIDS[i]), Source.EXCHANGE, T0)
        ps.dial_succeeded(addr(i, PIDS[i]), T0)                    # reached: hearsay that proved true
    ps.add(addr(14, PIDS[14]), Source.IDENTIFY, T0)
    ps.mark_validator(PIDS[14])                                     # a validator that connected to us
    ps.add(addr(15, PIDS[15]), Source.EXCHANGE, T0)
    ps.mark_seen(PIDS[15], T0 + 1)                                  # connected to us: not "reached"
    ps.add(addr(16, PIDS[16]), Source.IDENTIFY, T0)
    ps.add(addr(17, PIDS[17]), Source.EXCHANGE, T0)
    kept = {PIDS[i] for i in (10, 11, 12, 13, 14)}
    for i in range(40, 100):                                        # 60 throwaway identities' own addresses
        ps.add(addr(i, PIDS[i]), Source.IDENTIFY, T0 + i)
    assert kept <= {e.key for e in ps.entries()} and len(ps) == 8
    assert PIDS[15] not in ps and PIDS[17] not in ps                # never reached: hearsay went first
    entry = ps.get(PIDS[11])
    assert entry is not None and entry.last_seen == T0
    ps.mark_seen(PIDS[11], T0 + 5)
    assert entry.last_seen == T0                                    # an inbound hello is not a dial


def test_a_strangers_claimed_address_is_memory_only_unshared_and_evicted_first(tmp_path: Path) -> None:
    # The listen address an inbound observer's hello gives is a claim until its connection has lasted.
    with open_store(tmp_path) as store:
        ps = new_store(store, max_peers=4)
        ps.add(addr(1, PIDS[10]), Source.EXCHANGE, T0)                   # hearsay, never reached
        ps.add(addr(2, PIDS[11]), Source.EXCHANGE, T0)
        assert ps.add(addr(3, PIDS[12]), Source.IDENTIFY, T0 + 1, claimed=True)
        for i in range(40, 100):                                         # throwaway identities' claims
            ps.add(addr(i, PIDS[i]), Source.IDENTIFY, T0 + i, claimed=True)
        assert PIDS[10] in ps and PIDS[11] in ps and len(ps) == 4         # claims evicted one another only
        claims = {e.key for e in ps.entries() if e.claimed}
        assert len(claims) == 2
        stored = {k[len(ADDR_PREFIX):].decode() for k, _ in store.items(PEERS, ADDR_PREFIX)}
        assert stored == {PIDS[10], PIDS[11]}                           # nothing of the claims written
        assert not claims & {a.rsplit("/", 1)[1] for a in ps.sample(10)}  # nor shared in peer exchange
        # Its connection lasted: the same address added unclaimed is an ordinary entry, written.
        last = max(claims, key=lambda k: ps.get(k).added)                # type: ignore[union-attr]
        entry = ps.get(last)
        assert entry is not None
        ps.add(entry.addrs[0], Source.IDENTIFY, T0 + 200)
        assert not entry.claimed and last in {k[len(ADDR_PREFIX):].decode() for k, _ in store.items(PEERS, ADDR_PREFIX)}
        # A claimed entry a dial reaches is no claim either.
        other = next(iter(claims - {last}))
        ps.dial_succeeded(ps.get(other).addrs[0], T0 + 201)             # type: ignore[union-attr]
        assert not ps.get(other).claimed                                # type: ignore[union-attr]
