"""The /ws protocol's rules without a network: the RPC's auth in onConnect, errors for bad messages, and
the outgoing buffer cap (a slow client is dropped)."""
from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

import pytest
from autobahn.websocket.types import ConnectionDeny

from timecoin.notify.hub import SubscribeError
from timecoin.notify.ws import NotifyProtocol
from timecoin.rpc.auth import AllowList, Credentials


class FakeHub:
    height = 5

    def __init__(self) -> None:
        self.removed: list[Any] = []

    def subscribe(self, msg: dict[str, Any], send: Any, owned: int, paused: Any) -> Any:
        if msg.get("topic") != "newblock":
            raise SubscribeError("unknown topic")
        return SimpleNamespace(sid=owned + 1, topic="newblock", next=6)

    def begin(self, sub: Any) -> None:
        pass

    def remove(self, sub: Any) -> None:
        self.removed.append(sub)


def make_proto(host: str = "127.0.0.1", cap: int = 1000) -> tuple[NotifyProtocol, list[bytes], list[bool]]:
    proto = NotifyProtocol()
    proto.factory = SimpleNamespace(hub=FakeHub(), credentials=Credentials([("u", "p")]),  # type: ignore[assignment]
                                    allow=AllowList([]), max_buffer_bytes=cap, connections=set())
    proto.transport = SimpleNamespace(getPeer=lambda: SimpleNamespace(host=host))  # type: ignore[assignment]
    proto.state = proto.STATE_OPEN
    sent: list[bytes] = []
    dropped: list[bool] = []
    proto.sendMessage = lambda data, *a, **k: sent.append(data)  # type: ignore[method-assign]
    proto.dropConnection = lambda abort=False: dropped.append(abort)  # type: ignore[method-assign]
    return proto, sent, dropped


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_on_connect_accepts_the_rpc_credentials() -> None:
    proto, _, _ = make_proto()
    proto.onConnect(SimpleNamespace(headers={"authorization": basic("u", "p")}))


@pytest.mark.parametrize("headers", [{}, {"authorization": basic("u", "wrong")}, {"authorization": "Bearer x"}])
def test_on_connect_refuses_missing_or_wrong_credentials_with_401(headers: dict[str, str]) -> None:
    proto, _, _ = make_proto()
    with pytest.raises(ConnectionDeny) as err:
        proto.onConnect(SimpleNamespace(headers=headers))
    assert err.value.code == 401


def test_on_connect_refuses_an_address_outside_rpc_allow_ip_with_403() -> None:
    proto, _, _ = make_proto(host="10.1.2.3")
    with pytest.raises(ConnectionDeny) as err:
        proto.onConnect(SimpleNamespace(headers={"authorization": basic("u", "p")}))
    assert err.value.code == 403


@pytest.mark.parametrize("payload, why", [(b"{nope", "not JSON"), (b"[]", "JSON object"), (b"\xff", "not JSON"),
                                          (b'{"op": "x"}', "unknown op"),
                                          (b'{"op": "subscribe", "topic": "t", "id": 7}', "unknown topic"),
                                          (b'{"op": "unsubscribe", "sub": 3}', "no such subscription")])
def test_bad_messages_get_an_error_message(payload: bytes, why: str) -> None:
    proto, sent, dropped = make_proto()
    proto.onMessage(payload, False)
    [reply] = [json.loads(s) for s in sent]
    assert reply["type"] == "error" and why in reply["message"] and not dropped


def test_subscribe_and_unsubscribe_are_answered() -> None:
    proto, sent, _ = make_proto()
    proto.onMessage(b'{"op": "subscribe", "topic": "newblock", "id": "a"}', False)
    proto.onMessage(b'{"op": "unsubscribe", "sub": 1, "id": "b"}', False)
    replies = [json.loads(s) for s in sent]
    assert replies[0] == {"type": "subscribed", "id": "a", "sub": 1, "topic": "newblock", "from_height": 6, "tip": 5}
    assert replies[1] == {"type": "unsubscribed", "id": "b", "sub": 1}
    assert proto.subs == {}


def test_a_paused_client_is_queued_in_order_then_flushed() -> None:
    proto, sent, dropped = make_proto()
    proto.pauseProducing()
    for i in range(5):
        proto.send({"n": i})
    assert sent == [] and proto.queued > 0
    proto.resumeProducing()
    assert [json.loads(s)["n"] for s in sent] == list(range(5)) and proto.queued == 0 and not dropped


def test_a_slow_client_past_the_buffer_cap_is_dropped() -> None:
    proto, sent, dropped = make_proto(cap=100)
    proto.onMessage(b'{"op": "subscribe", "topic": "newblock"}', False)
    proto.pauseProducing()
    for i in range(20):
        proto.send({"n": i, "pad": "x" * 10})
    assert dropped == [True] and proto.dropped
    assert proto.factory.hub.removed, "its subscriptions were not released"  # type: ignore[attr-defined]
    before = len(sent)
    proto.send({"n": "after"})
    assert len(sent) == before and proto.queued == 0
