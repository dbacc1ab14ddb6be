"""The hub's resumption (replay then live: no gap, no duplicate, however commits interleave), its topics
and checks, on a real certified chain in LMDB (tests/chaingen.py) and a fake clock."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import task

from tests.chaingen import build_chain, make_genesis
from timecoin import crypto
from timecoin.notify import hub as hubmod
from timecoin.notify.hub import Hub, SubscribeError


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Any:
    spec = make_genesis(validators=2, funded=2, chain_id="timecoin-notify-unit")
    builder = build_chain(str(Path(tmp_path_factory.mktemp("hub")) / "chain"), spec, 12, txs_per_block=2)
    yield SimpleNamespace(store=builder.store, spec=spec)
    builder.store.close()


def make_hub(chain: Any, height: int) -> tuple[Hub, task.Clock]:
    clock = task.Clock()
    node = SimpleNamespace(config=SimpleNamespace(network="testnet"), store=chain.store)
    hub = Hub(node, clock, max_subscriptions=3)
    hub.start()
    hub.height = height                 # as if the node had dispatched up to here when the client came
    return hub, clock


def drain(clock: task.Clock, turns: int = 50) -> None:
    for _ in range(turns):
        clock.advance(0.05)


def test_replay_then_live_has_no_gap_and_no_duplicate_when_commits_arrive_mid_replay(chain: Any,
                                                                                   monkeypatch: Any) -> None:
    monkeypatch.setattr(hubmod, "REPLAY_CHUNK", 2)
    hub, clock = make_hub(chain, 6)
    got: list[dict[str, Any]] = []
    sub = hub.subscribe({"topic": "newblock", "from_height": 1}, got.append, 0)
    hub.begin(sub)
    assert [e["height"] for e in got] == [1, 2]             # one chunk now, the rest on later turns
    hub.on_commit(chain.store.get_block(12))                # a sync batch: 7..12 stored, only 12 named
    assert hub.height == 12
    drain(clock)
    assert [e["height"] for e in got] == list(range(1, 13))
    for e in got:
        assert e["hash"] == chain.store.block_hash_at(e["height"]).hex()
        assert e["txs"] == [tx.id.hex() for tx in chain.store.get_block(e["height"]).txs]


def test_a_live_subscription_gets_only_new_blocks(chain: Any) -> None:
    hub, _ = make_hub(chain, 9)
    got: list[dict[str, Any]] = []
    hub.begin(hub.subscribe({"topic": "newblock"}, got.append, 0))
    assert got == []
    hub.on_commit(chain.store.get_block(10))
    hub.on_commit(chain.store.get_block(10))                # told twice: sent once
    assert [e["height"] for e in got] == list(range(10, 13))


def test_address_events_are_every_tx_sent_or_received(chain: Any) -> None:
    hub, clock = make_hub(chain, 12)
    key = chain.spec.keys[0]
    text = crypto.encode_address(key.address, "testnet")
    got: list[dict[str, Any]] = []
    hub.begin(hub.subscribe({"topic": "address", "address": text, "from_height": 1}, got.append, 0))
    drain(clock)
    want = [tx.id.hex() for h in range(1, 13) for tx in chain.store.get_block(h).txs
            if key.address in (tx.sender_address, tx.recipient)]
    assert want and [e["txid"] for e in got] == want
    assert all(e["address"] == text and e["type"] == "address" for e in got)


def test_a_final_tx_is_sent_at_once_and_a_pending_one_when_final(chain: Any) -> None:
    tx = chain.store.get_block(11).txs[0]
    hub, _ = make_hub(chain, 12)
    got: list[dict[str, Any]] = []
    sub = hub.subscribe({"topic": "tx", "txid": tx.id.hex()}, got.append, 0)
    hub.begin(sub)
    assert got == [dict(got[0], type="tx", txid=tx.id.hex(), height=11, final=True)]
    assert sub.sid not in hub.subs                          # done once sent

    hub, _ = make_hub(chain, 10)                            # not yet dispatched: sent when it is
    got = []
    hub.begin(hub.subscribe({"topic": "tx", "txid": tx.id.hex()}, got.append, 0))
    assert got == []
    hub.on_commit(chain.store.get_block(12))
    assert [(e["txid"], e["height"]) for e in got] == [(tx.id.hex(), 11)]


@pytest.mark.parametrize("msg, why", [
    ({"topic": "weather"}, "unknown topic"),
    ({"topic": "address"}, "address"),
    ({"topic": "address", "address": "TIME0xyz"}, "invalid address"),
    ({"topic": "address", "address": crypto.encode_address(b"\x01" * 20, "mainnet")}, "not an address of testnet"),
    ({"topic": "tx", "txid": "ab"}, "txid"),
    ({"topic": "tx", "txid": "zz" * 32}, "txid"),
    ({"topic": "newblock", "from_height": 0}, "from_height"),
    ({"topic": "newblock", "from_height": 14}, "from_height"),
    ({"topic": "newblock", "from_height": True}, "from_height"),
    ({"topic": "newblock", "from_height": "3"}, "from_height"),
])
def test_bad_subscriptions_are_refused_with_a_reason(chain: Any, msg: dict[str, Any], why: str) -> None:
    hub, _ = make_hub(chain, 12)
    with pytest.raises(SubscribeError, match=why):
        hub.subscribe(msg, lambda e: None, 0)
    assert hub.subs == {}


def test_the_per_connection_cap(chain: Any) -> None:
    hub, _ = make_hub(chain, 12)
    hub.subscribe({"topic": "newblock"}, lambda e: None, 2)
    with pytest.raises(SubscribeError, match="too many subscriptions"):
        hub.subscribe({"topic": "newblock"}, lambda e: None, 3)


def test_a_paused_connection_holds_its_replay_until_it_drains(chain: Any) -> None:
    hub, clock = make_hub(chain, 12)
    paused = [True]
    got: list[dict[str, Any]] = []
    hub.begin(hub.subscribe({"topic": "newblock", "from_height": 1}, got.append, 0, lambda: paused[0]))
    drain(clock, 5)
    assert got == []
    paused[0] = False
    drain(clock)
    assert [e["height"] for e in got] == list(range(1, 13))


def test_removing_a_subscription_stops_its_replay(chain: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(hubmod, "REPLAY_CHUNK", 1)
    hub, clock = make_hub(chain, 12)
    got: list[dict[str, Any]] = []
    sub = hub.subscribe({"topic": "newblock", "from_height": 1}, got.append, 0)
    hub.begin(sub)
    hub.remove(sub)
    drain(clock)
    assert [e["height"] for e in got] == [1] and not clock.getDelayedCalls()
