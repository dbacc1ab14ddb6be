"""``/ws`` on the RPC port: the WebSocket protocol (autobahn) speaking the hub's JSON messages.

Auth is the RPC's: the client address must pass ``rpc_allow_ip`` (else 403) and the upgrade request
must carry the RPC credentials as HTTP Basic (``Authorization`` header; else 401), checked in
``onConnect`` before the handshake completes. Bounds: ``max_subscriptions`` per connection (the hub
refuses more), and an outgoing buffer: the protocol is the transport's push producer, so while the
kernel buffer is full it queues messages itself, and a client whose queue passes ``max_buffer_bytes``
is slow and is dropped. Bad JSON, an unknown op or topic, a bad address or txid: an ``error`` message,
the connection stays open.
"""
from __future__ import annotations

import collections
import json
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from twisted.web.resource import Resource

from timecoin.notify.hub import Hub, SubscribeError, Subscription
from timecoin.rpc.auth import AllowList, Credentials

MAX_MESSAGE_BYTES = 4096        # a client message larger than this is refused by autobahn (close 1009)
MAX_BUFFER_BYTES = 4 << 20      # queued outgoing bytes before a slow client is dropped


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class NotifyProtocol(WebSocketServerProtocol):
    """One client connection: its subscriptions, its outgoing queue."""

    log = Logger()
    factory: NotifyFactory

    def __init__(self) -> None:
        super().__init__()
        self.subs: dict[int, Subscription] = {}
        self.paused = False
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued = 0
        self.dropped = False

    # -- handshake: the RPC's auth -------------------------------------------------------------------
    def onConnect(self, request: Any) -> None:  # noqa: N802 - autobahn API
        transport: Any = self.transport
        host = str(getattr(transport.getPeer(), "host", "")) if transport is not None else ""
        if not self.factory.allow.allows(host):
            self.log.warn("WebSocket refused for {client}: not in rpc_allow_ip", client=host)
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "client address not allowed (rpc_allow_ip)")
        header = request.headers.get("authorization")
        if not self.factory.credentials.check(header.encode() if isinstance(header, str) else None):
            self.log.info("WebSocket: bad or missing credentials from {client}", client=host)
            raise ConnectionDeny(401, "Unauthorized: the RPC credentials are required (HTTP Basic)")

    def onOpen(self) -> None:  # noqa: N802 - autobahn API
        self.factory.connections.add(self)
        transport: Any = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()      # twisted.web's channel, which handed the transport over
        transport.registerProducer(self, True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        self.factory.connections.discard(self)
        for sub in list(self.subs.values()):
            self.factory.hub.remove(sub)
        self.subs.clear()
        self.queue.clear()
        self.queued = 0

    # -- incoming ------------------------------------------------------------------------------------
    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803 - autobahn API
        try:
            msg = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            self.send({"type": "error", "message": "not JSON"})
            return
        if not isinstance(msg, dict):
            self.send({"type": "error", "message": "a message is a JSON object"})
            return
        ident = msg.get("id") if isinstance(msg.get("id"), int | str) else None
        op = msg.get("op")
        try:
            if op == "subscribe":
                self._subscribe(msg, ident)
            elif op == "unsubscribe":
                self._unsubscribe(msg, ident)
            else:
                raise SubscribeError(f"unknown op {str(op)[:40]!r}: subscribe or unsubscribe")
        except SubscribeError as exc:
            self.send({"type": "error", "id": ident, "message": str(exc)})

    def _subscribe(self, msg: dict[str, Any], ident: Any) -> None:
        hub: Hub = self.factory.hub
        sub = hub.subscribe(msg, self.send, len(self.subs), lambda: self.paused)
        self.subs[sub.sid] = sub
        self.send({"type": "subscribed", "id": ident, "sub": sub.sid, "topic": sub.topic,
                   "from_height": sub.next, "tip": hub.height})
        hub.begin(sub)

    def _unsubscribe(self, msg: dict[str, Any], ident: Any) -> None:
        sid = msg.get("sub")
        sub = self.subs.pop(sid, None) if isinstance(sid, int) else None
        if sub is None:
            raise SubscribeError("unsubscribe: no such subscription on this connection")
        self.factory.hub.remove(sub)
        self.send({"type": "unsubscribed", "id": ident, "sub": sub.sid})

    # -- outgoing, bounded ---------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        if self.dropped or self.state != self.STATE_OPEN:
            return
        data = _dumps(message)
        if not self.paused and not self.queue:
            self.sendMessage(data)
            return
        self.queue.append(data)
        self.queued += len(data)
        if self.queued > self.factory.max_buffer_bytes:
            self.log.warn("Dropping a slow WebSocket client {client}: {n} bytes queued",
                          client=self.peer, n=self.queued)
            self.dropped = True
            for sub in list(self.subs.values()):
                self.factory.hub.remove(sub)
            self.queue.clear()
            self.queued = 0
            self.dropConnection(abort=True)

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = False
        for _ in range(len(self.queue)):       # bounded: at most what was queued
            if self.paused or not self.queue or self.state != self.STATE_OPEN:
                break
            data = self.queue.popleft()
            self.queued -= len(data)
            self.sendMessage(data)

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = True


class NotifyFactory(WebSocketServerFactory):
    protocol = NotifyProtocol  # type: ignore[assignment]

    def __init__(self, hub: Hub, credentials: Credentials, allow: AllowList,
                 max_buffer_bytes: int = MAX_BUFFER_BYTES) -> None:
        super().__init__()
        self.hub = hub
        self.credentials = credentials
        self.allow = allow
        self.max_buffer_bytes = max_buffer_bytes
        self.connections: set[NotifyProtocol] = set()
        self.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE_BYTES, maxFramePayloadSize=MAX_MESSAGE_BYTES,
                                autoPingInterval=30, autoPingTimeout=30)

    def close_all(self) -> None:
        for proto in list(self.connections):
            proto.dropConnection(abort=False)


class HandoverResource(WebSocketResource):
    """autobahn's resource, that also tells the RPC site when an HTTP channel became a WebSocket.

    autobahn takes the transport from the channel, so the channel's ``connectionLost`` never runs and the
    site (which keeps its open channels to close them at stop) would hold every channel ever upgraded.
    The WebSocket itself is closed at stop through :meth:`NotifyFactory.close_all`.
    """

    def render(self, request: Any) -> Any:
        channel = request.channel
        result = super().render(request)
        if getattr(channel, "transport", None) is None:          # handed over
            channels = getattr(getattr(request, "site", None), "channels", None)
            if channels is not None:
                channels.discard(channel)
        return result


def ws_resource(hub: Hub, credentials: Credentials, allow: AllowList) -> tuple[WebSocketResource, NotifyFactory]:
    factory = NotifyFactory(hub, credentials, allow)
    return HandoverResource(factory), factory


class WSRoot(Resource):
    """The RPC site's root: ``/ws`` is the WebSocket, every other path the (leaf) JSON-RPC resource."""

    def __init__(self, rpc: Any, ws: WebSocketResource) -> None:
        super().__init__()
        self.rpc = rpc
        self.ws = ws

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:  # noqa: N802 - Twisted API
        if path == b"ws" and not request.postpath:
            return self.ws
        return self.rpc

    def render(self, request: Any) -> Any:
        return self.rpc.render(request)
