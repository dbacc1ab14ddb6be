"""Hostile WebSocket clients of ``/ws`` against a real in-process node: subscribe messages of every wrong
shape get an error and the connection stays; a message over the size cap closes the connection;
connections past the RPC port's per-address cap are refused and a slot frees when one closes. (The
subscription cap: tests/integration/test_notify.py::test_wrong_credentials_refused_and_bad_messages_get_errors;
the slow reader: tests/unit/test_notify_ws.py::test_a_slow_client_past_the_buffer_cap_is_dropped.)"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
import txaio

from tests.integration.test_notify import NET, ws_client
from tests.p2pnet import Net, wait_for
from timecoin.client import ClientError, subscribe
from timecoin.notify.ws import MAX_MESSAGE_BYTES

txaio.use_twisted()

MALFORMED: list[Any] = [
    {"op": ["subscribe"]}, {"op": {"a": 1}}, {"op": None}, {"op": "subscribe" * 400},
    {"op": "subscribe", "topic": ["newblock"]}, {"op": "subscribe", "topic": {"newblock": 1}},
    {"op": "subscribe", "topic": 5}, {"op": "subscribe", "topic": None},
    {"op": "subscribe", "topic": "address", "address": ["TIME0x"]},
    {"op": "subscribe", "topic": "address", "address": "TIME0" + "z" * 3000},
    {"op": "subscribe", "topic": "address", "address": 10**30},
    {"op": "subscribe", "topic": "tx", "txid": ["00" * 32]}, {"op": "subscribe", "topic": "tx", "txid": "0" * 63},
    {"op": "subscribe", "topic": "tx", "txid": "\ud800" * 32},
    {"op": "subscribe", "topic": "newblock", "from_height": "1"},
    {"op": "subscribe", "topic": "newblock", "from_height": 1.5},
    {"op": "subscribe", "topic": "newblock", "from_height": -1},
    {"op": "subscribe", "topic": "newblock", "from_height": 2**70},
    {"op": "subscribe", "topic": "newblock", "from_height": True},
    {"op": "unsubscribe", "sub": "1"}, {"op": "unsubscribe", "sub": [1]}, {"op": "unsubscribe", "sub": 2**70},
    {"op": "unsubscribe"},
]
RAW = [b"[" * 2000 + b"]" * 2000, b"1e999999", b'{"op": NaN}', b"\xff\xfe", b'"x"', b"null"]


@pytest_twisted.ensureDeferred
async def test_malformed_subscribe_messages_get_errors_and_oversized_ones_close(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, chain_id="timecoin-ws-hostile", **NET)
    node = net.nodes[0]
    try:
        await net.start(connect=False)
        await wait_for(lambda: node.store.tip_height() >= 1, 20.0, "height 1")
        got: list[dict[str, Any]] = []
        sub = await subscribe(ws_client(node), [], got.append)
        texts = [json.dumps(m).encode() for m in MALFORMED] + RAW
        assert all(len(t) <= MAX_MESSAGE_BYTES for t in texts)
        for text in texts:
            sub.protocol.sendMessage(text, isBinary=text.startswith(b"\xff"))   # a text frame must be UTF-8
        await wait_for(lambda: len(got) >= len(texts), 10.0, "an answer to each malformed message")
        assert [m["type"] for m in got] == ["error"] * len(texts), got
        assert len(node.rpc.ws_factory.connections) == 1, "a malformed message dropped the connection"
        sub.send({"op": "subscribe", "topic": "newblock", "id": "ok"})
        await wait_for(lambda: any(m.get("id") == "ok" for m in got), 10.0, "a good subscription still answered")

        # One byte over the cap: autobahn fails the connection (1009, dropped) before the JSON is read.
        answered = len(got)
        sub.protocol.sendMessage(b" " * (MAX_MESSAGE_BYTES + 1))
        await wait_for(lambda: sub.protocol is None, 10.0, "the oversized message to close the connection")
        assert len(got) == answered, "the oversized message was read"
        await wait_for(lambda: not node.rpc.ws_factory.connections, 10.0, "the connection closed")
        hub = node.namedServices["notify"].hub
        assert not hub.subs, "the closed connection's subscriptions are still held"
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_websocket_connections_past_the_per_address_cap_are_refused(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, chain_id="timecoin-ws-cap", **NET)
    node = net.nodes[0]
    try:
        await net.start(connect=False)
        node.rpc.limit.max_per_ip = 3
        subs = [await subscribe(ws_client(node), [], lambda m: None) for _ in range(3)]
        refused = None
        try:
            await subscribe(ws_client(node), [], lambda m: None)
        except ClientError as exc:
            refused = str(exc)
        assert refused is not None, "a 4th WebSocket from one address was accepted"
        subs[0].close()
        await subs[0].closed
        await wait_for(lambda: node.rpc.limit.per_ip.get("127.0.0.1") == 2, 10.0, "the slot freed")
        subs.append(await subscribe(ws_client(node), [], lambda m: None))
        assert len(node.rpc.ws_factory.connections) == 3
        for sub in subs[1:]:
            sub.close()
            await sub.closed
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_http_channels_handed_to_websockets_are_not_kept_by_the_site(tmp_path: Path) -> None:
    """autobahn takes the transport from the HTTP channel, whose connectionLost then never runs: without
    the hand-over hook every WebSocket ever opened would leave its channel in the site's table."""
    net = Net(tmp_path, 1, chain_id="timecoin-ws-channels", **NET)
    node = net.nodes[0]
    try:
        await net.start(connect=False)
        site = node.rpc.site
        before = len(site.channels)
        for _ in range(20):
            sub = await subscribe(ws_client(node), [], lambda m: None)
            sub.close()
            await wait_for(lambda: not node.rpc.ws_factory.connections, 10.0, "the WebSocket closed")
        await wait_for(lambda: len(site.channels) <= before, 10.0, "the site to forget the handed-over channels")
    finally:
        await net.stop()
