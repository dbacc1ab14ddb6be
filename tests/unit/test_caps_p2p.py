"""Caps on the P2P tables a remote party can grow that had no test pushing past them (issue 16, resource bounds).

Every PeerID costs an attacker only a key and a handshake, so each per-peer table must stay bounded however
many identities come and go, and a flood must not reset what an honest, connected peer has spent:

* ``PeerManager`` token buckets (requests and tx gossip), race-prone charge windows and good-credit windows:
  soft caps at ``peers.MAX_BUCKETS`` -- at the cap, entries that no longer matter (refilled buckets of
  disconnected peers, windows that ended) are dropped, never a connected peer's drained bucket.
* ``P2PService`` get_blocks byte budgets (``MAX_RESPONSE_BUDGETS``: full ones dropped first, else the oldest),
  addresses validator peers connected from (``MAX_VALIDATOR_IPS``: oldest forgotten, re-seen ones kept) and
  next-height messages refused for a per-sender cap (``MAX_CAPPED``: oldest forgotten, all at a new height).
* ``PeerConnection`` relayed-tx backlog for a peer that does not keep up (``MAX_TX_BACKLOG``: newest dropped),
  and our unanswered pings (a peer silent for ``PING_MISSES_BEFORE_DROP`` intervals is charged and dropped).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport

from timecoin.config import build_config
from timecoin.crypto import PrivateKey
from timecoin.p2p import peers, protocol, service
from timecoin.p2p.peers import Event, PeerManager
from timecoin.p2p.protocol import PeerConnection
from timecoin.p2p.service import PING_MISSES_BEFORE_DROP, P2PService
from timecoin.store import Store

T0 = 1_700_000_000.0
CAP = 4
HONEST = PrivateKey(b"\x11" * 32).peer_id
PUBLIC_IP = "203.0.113.7"


def flooder(i: int) -> str:
    return f"16Uiu2Hflooder{i:06d}"          # the tables key by PeerID text; these never connect


def make_service() -> tuple[P2PService, task.Clock]:
    clock = task.Clock()
    clock.advance(T0)
    node = SimpleNamespace(config=build_config(), key=PrivateKey(b"\x05" * 32), consensus=None, store=None)
    return P2PService(node, clock), clock


# -- PeerManager ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["request", "tx"])
def test_a_flood_of_identities_keeps_the_bucket_table_bounded_and_a_drained_honest_bucket_drained(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "MAX_BUCKETS", CAP)
    mgr = PeerManager(None, build_config({"rate_limit": 100, "rate_limit_burst": 20}))
    take = mgr.allow_request if kind == "request" else mgr.allow_tx
    table = mgr._buckets if kind == "request" else mgr._tx_buckets
    rate, burst = (100, 20) if kind == "request" else (mgr.tx_rate, mgr.tx_burst)
    mgr.connected(HONEST, PUBLIC_IP, True, False)
    assert sum(take(HONEST, T0) for _ in range(burst + 5)) == burst          # drained
    drained = table[HONEST]
    interval = 60.0 / rate
    step = 1.1 * interval                             # each flooder's single token has refilled by the next one
    n = int(burst / 1.1) - 1                          # ... all while the honest bucket is still refilling
    assert n > 3 * CAP
    for i in range(n):
        assert take(flooder(i), T0 + (i + 1) * step)
        assert len(table) <= CAP, f"{len(table)} buckets after {i + 1} identities"
    assert table[HONEST] == drained                   # the flood did not hand it a fresh burst


def test_race_prone_and_good_credit_windows_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "MAX_BUCKETS", CAP)
    mgr = PeerManager(None, build_config())
    for i in range(10 * CAP):                          # a window apart each: the older windows have ended
        now = T0 + i * (peers.RACE_WINDOW + peers.GOOD_WINDOW)
        mgr.record(flooder(i), Event.RATE_LIMITED, now)
        mgr.record(flooder(i), Event.VALID_BLOCK, now)
        assert len(mgr._race_charged) <= CAP and len(mgr._good) <= CAP
    # within a window nothing is forgotten: a peer cannot wipe its own charge by bringing friends
    now = T0 + 100 * (peers.RACE_WINDOW + peers.GOOD_WINDOW)
    assert mgr.record(HONEST, Event.RATE_LIMITED, now).delta == peers.DELTAS[Event.RATE_LIMITED] < 0
    for i in range(2 * CAP):
        mgr.record(flooder(1000 + i), Event.RATE_LIMITED, now + 1)
    assert mgr.record(HONEST, Event.RATE_LIMITED, now + 2).delta == 0


# -- P2PService -----------------------------------------------------------------------------------------
def test_the_get_blocks_byte_budget_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "MAX_RESPONSE_BUDGETS", CAP)
    svc, clock = make_service()
    for i in range(10 * CAP):                          # each identity draws most of its burst (as _on_get_blocks)
        now = clock.seconds()
        allowance = svc._response_allowance(flooder(i), now)
        svc._response_budgets[flooder(i)] = (allowance - 0.9 * service.RESPONSE_BYTES_BURST, now)
        assert len(svc._response_budgets) <= CAP
        clock.advance(0.1)


def test_the_remembered_validator_addresses_are_bounded_and_a_returning_one_is_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "MAX_VALIDATOR_IPS", CAP)
    svc, _ = make_service()
    svc._remember_validator_ip("198.51.100.1")        # an honest validator's address
    for i in range(10 * CAP):
        svc._remember_validator_ip("198.51.100.1")    # the honest one is seen again now and then ...
        svc._remember_validator_ip(f"192.0.2.{i + 1}")   # ... among a validator peer's ever new addresses
        assert len(svc._validator_seen) <= CAP
        assert "198.51.100.1" in svc._validator_seen


def test_next_height_ids_refused_for_a_cap_are_bounded_and_dropped_at_a_new_height(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "MAX_CAPPED", CAP)
    svc, _ = make_service()
    for i in range(10 * CAP):
        svc._remember_capped(b"%032d" % i, 7)
        assert len(svc._capped) <= CAP
    assert b"%032d" % (10 * CAP - 1) in svc._capped   # the newest kept
    svc._remember_capped(b"x" * 32, 8)
    assert list(svc._capped) == [b"x" * 32]


# -- PeerConnection -------------------------------------------------------------------------------------
def test_a_peer_that_does_not_keep_up_has_a_bounded_relay_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_TX_BACKLOG", 50)
    svc, clock = make_service()
    conn = PeerConnection(svc, clock, inbound=False)
    conn.transport, conn.state = StringTransport(), "ready"
    for i in range(5_000):                             # far more than its tx gossip burst lets out at once
        conn.send_tx(b"tx%d" % i)
    assert conn.tx_backlog <= 50 and conn.txs_dropped > 0
    sent = len(conn.transport.value())
    clock.advance(3_600.0)                             # the backlog still drains at the peer's pace
    assert conn.tx_backlog == 0 and len(conn.transport.value()) > sent


def test_a_peer_that_never_answers_pings_holds_a_bounded_number_and_is_dropped() -> None:
    svc, clock = make_service()
    svc.peers = PeerManager(None, svc.config)
    conn = PeerConnection(svc, clock, inbound=False)
    conn.transport, conn.state, conn.peer_id = StringTransport(), "ready", HONEST
    svc.connections[HONEST] = conn
    svc.peers.connected(HONEST, PUBLIC_IP, False, False)
    for _ in range(5 * PING_MISSES_BEFORE_DROP):
        svc._ping_all()
        assert len(conn.ping_sent) <= PING_MISSES_BEFORE_DROP + 1
        clock.advance(svc.config.ping_interval)
    assert conn.state in ("closing", "closed") and svc.peers.score(HONEST) < 0


def test_a_flood_of_banned_identities_and_addresses_keeps_both_ban_tables_bounded(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each provable offence from a new PeerID and a new address adds a ban of each: at ``MAX_BANS`` a table
    forgets the automatic ban that ends soonest (the oldest), never an operator's ban nor the newest, and
    the stored records follow the tables (a restart loads no more than the cap)."""
    monkeypatch.setattr(peers, "MAX_BANS", CAP)
    with Store(str(tmp_path / "chain")) as store:
        mgr = PeerManager(store, build_config())
        mgr.set_ban("198.51.100.250", 3600, T0, reason="operator")
        for i in range(3 * CAP):
            ip = f"198.51.100.{i + 1}"
            mgr.connected(flooder(i), ip, True, False)
            assert mgr.record(flooder(i), Event.MALFORMED_FRAME, T0 + i).newly_banned
            mgr.disconnected(flooder(i))
            assert len(mgr._peer_bans) <= CAP and len(mgr._ip_bans) <= CAP
        last = 3 * CAP - 1
        assert mgr.is_banned(flooder(last), None, T0 + last)
        assert mgr.is_banned(None, f"198.51.100.{last + 1}", T0 + last)
        assert mgr.is_banned(None, "198.51.100.250", T0 + last), "an operator's ban was evicted by a flood"
        assert not mgr.is_banned(flooder(0), "198.51.100.1", T0 + last), "the oldest automatic ban is still held"
        assert len(list(store.items(peers.BANS))) == len(mgr._peer_bans) + len(mgr._ip_bans)
        again = PeerManager(store, build_config())
        assert len(again._peer_bans) <= CAP and len(again._ip_bans) <= CAP
