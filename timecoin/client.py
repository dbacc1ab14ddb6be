"""A JSON-RPC client for Timecoin nodes that runs under Twisted and under asyncio (txaio).

Pick the framework once, as txaio wants, then use the same code under either::

    import txaio
    txaio.use_asyncio()            # or txaio.use_twisted()
    from timecoin.client import Client

    client = Client.from_datadir("/var/lib/timecoin")          # the node's cookie, its rpc_port
    height = await client.getblockcount()                        # an asyncio Future / a Twisted Deferred

Every method returns a txaio future of the result. An error reply fails it with :class:`RPCError` (the
node's code and message); no answer, refused credentials or a reply that is not JSON-RPC fail it with
:class:`ClientError`. The HTTP transport is the framework's own: ``twisted.web.client.Agent`` under
Twisted, ``asyncio`` streams under asyncio (no other dependency). :meth:`Client.verified_finality` fetches a
finality proof and checks it locally (``timecoin.ledger.proof.verify_proof``), trusting only a genesis or
a block hash the caller already holds.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import os
from typing import Any
from urllib.parse import urlsplit

import txaio as _txaio

txaio: Any = _txaio                   # its API is bound at run time (use_twisted/use_asyncio): typed loosely
COOKIE_FILE = ".cookie"
DEFAULT_TIMEOUT = 60.0
MAX_REPLY_BYTES = 64 << 20            # a reply larger than this is refused (a confused or hostile server)


class ClientError(Exception):
    """The call got no usable JSON-RPC answer (connection, HTTP status, or a reply that is not JSON-RPC)."""


class RPCError(Exception):
    """The node answered with an error: ``code`` and ``message`` as it sent them."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Client:
    """Calls one node's JSON-RPC at ``url`` (``http://HOST:PORT/``) with HTTP Basic credentials."""

    def __init__(self, url: str, user: str, password: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url must be http://HOST:PORT/, not {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.timeout = timeout
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._ids = itertools.count(1)

    @classmethod
    def from_datadir(cls, datadir: str, host: str = "127.0.0.1", port: int | None = None,
                     timeout: float = DEFAULT_TIMEOUT) -> Client:
        """A client of the node whose datadir this is: its cookie, and its rpc_port (read from the config
        defaults of its network when ``port`` is not given)."""
        with open(os.path.join(datadir, COOKIE_FILE)) as f:
            user, _, password = f.read().strip().partition(":")
        if port is None:
            from timecoin.config import build_config
            port = build_config({"datadir": datadir}).rpc_port
        return cls(f"http://{host}:{port}/", user, password, timeout)

    # -- the call --------------------------------------------------------------------------------
    def call(self, method: str, *params: Any) -> Any:
        """A future of ``method``'s result (JSON-RPC 2.0, positional params)."""
        request_id = next(self._ids)
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}).encode()
        posted = self._post(body)
        return _chain(posted, lambda reply: _result(reply, request_id))

    def _post(self, body: bytes) -> Any:
        if txaio.using_twisted:
            return self._post_twisted(body)
        import asyncio
        return asyncio.ensure_future(asyncio.wait_for(self._post_asyncio(body), self.timeout))

    def _post_twisted(self, body: bytes) -> Any:
        from twisted.internet import reactor
        from twisted.web.client import Agent, FileBodyProducer, readBody
        from twisted.web.http_headers import Headers

        agent = Agent(reactor, connectTimeout=self.timeout)
        headers = Headers({b"Content-Type": [b"application/json"], b"Authorization": [self._auth.encode()]})
        producer: Any = FileBodyProducer(io.BytesIO(body))
        d = agent.request(b"POST", self.url.encode(), headers, producer)
        d.addTimeout(self.timeout, reactor)

        def got(response: Any) -> Any:
            return readBody(response).addCallback(lambda data: (response.code, data))

        def failed(f: Any) -> Any:
            raise ClientError(f"no answer from {self.url}: {f.getErrorMessage()}")

        return d.addCallback(got).addErrback(failed)

    async def _post_asyncio(self, body: bytes) -> tuple[int, bytes]:
        import asyncio
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise ClientError(f"no answer from {self.url}: {exc}") from None
        try:
            head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    f"Authorization: {self._auth}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head + body)
            await writer.drain()
            data = await reader.read(MAX_REPLY_BYTES + 1)
            while data and len(data) <= MAX_REPLY_BYTES:
                more = await reader.read(MAX_REPLY_BYTES + 1 - len(data))
                if not more:
                    break
                data += more
        except OSError as exc:
            raise ClientError(f"no answer from {self.url}: {exc}") from None
        finally:
            writer.close()
        return _parse_http(data, self.url)

    # -- typed helpers for the common calls ------------------------------------------------------
    def getblockcount(self) -> Any:
        return self.call("getblockcount")

    def getbestblockhash(self) -> Any:
        return self.call("getbestblockhash")

    def getblockhash(self, height: int) -> Any:
        return self.call("getblockhash", height)

    def getblock(self, blockhash: str, verbosity: int = 1) -> Any:
        return self.call("getblock", blockhash, verbosity)

    def getrawtransaction(self, txid: str, verbose: bool = False) -> Any:
        return self.call("getrawtransaction", txid, verbose)

    def sendrawtransaction(self, tx_hex: str) -> Any:
        return self.call("sendrawtransaction", tx_hex)

    def getbalance(self, address: str) -> Any:
        return self.call("getbalance", address)

    def getaccount(self, address: str) -> Any:
        return self.call("getaccount", address)

    def gettransactionfinality(self, txid: str) -> Any:
        return self.call("gettransactionfinality", txid)

    def getfinalityproof(self, target: int | str) -> Any:
        return self.call("getfinalityproof", target)

    def subscribe(self, requests: list[dict[str, Any]], on_message: Any) -> Any:
        """A future of a :class:`Subscriber` on this node's ``/ws`` feed (see :func:`subscribe`)."""
        return subscribe(self, requests, on_message)

    def verified_finality(self, target: int | str, trusted: Any) -> Any:
        """A future of the :class:`~timecoin.ledger.proof.VerifiedBlock` that ``target``'s finality proof
        establishes, checked here against ``trusted`` (``Trusted.from_genesis(genesis)`` or ``Trusted.at``):
        the node is not trusted; a proof that does not verify fails the future with ``ProofError``."""
        from timecoin.ledger.proof import verify_proof
        return _chain(self.getfinalityproof(target), lambda proof: verify_proof(proof, trusted))


def _chain(posted: Any, then: Any) -> Any:
    """``then(result of posted)`` as a future, under either framework."""
    out = txaio.create_future()

    def ok(value: Any) -> None:
        try:
            txaio.resolve(out, then(value))
        except Exception as exc:  # noqa: BLE001 - handed to the caller's future
            txaio.reject(out, exc)

    def failed(error: Any) -> None:
        txaio.reject(out, getattr(error, "value", error))

    txaio.add_callbacks(posted, ok, failed)
    return out


def _parse_http(data: bytes, url: str) -> tuple[int, bytes]:
    """(status, body) of a raw HTTP/1.1 response read to EOF (Content-Length or close-delimited)."""
    if len(data) > MAX_REPLY_BYTES:
        raise ClientError(f"{url} sent a reply over {MAX_REPLY_BYTES} bytes")
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2) if lines else []
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ClientError(f"{url} did not answer HTTP")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = _dechunk(body, url)
    elif b"content-length" in headers and headers[b"content-length"].isdigit():
        body = body[:int(headers[b"content-length"])]
    return int(parts[1]), body


def _dechunk(body: bytes, url: str) -> bytes:
    out, pos = bytearray(), 0
    for _ in range(len(body) + 1):                 # bounded: each pass consumes a chunk
        end = body.find(b"\r\n", pos)
        if end < 0:
            break
        try:
            size = int(body[pos:end].split(b";")[0], 16)
        except ValueError:
            raise ClientError(f"{url} sent a malformed chunked reply") from None
        if size == 0:
            return bytes(out)
        out += body[end + 2:end + 2 + size]
        pos = end + 2 + size + 2
    raise ClientError(f"{url} sent a truncated chunked reply")


def _result(reply: tuple[int, bytes], request_id: int) -> Any:
    return parse_reply(reply[0], reply[1], request_id)


def parse_reply(status: int, data: bytes, request_id: Any) -> Any:
    """The result of a JSON-RPC reply over HTTP; RPCError for an error reply, ClientError for anything else."""
    if status == 401:
        raise ClientError("authorization failed: wrong credentials (or a stale cookie)")
    if status == 403:
        raise ClientError("the node refused this client address (rpc_allow_ip)")
    try:
        message = json.loads(data)
    except ValueError:
        raise ClientError(f"HTTP {status} without a JSON-RPC reply") from None
    if not isinstance(message, dict) or message.get("id") != request_id:
        raise ClientError(f"HTTP {status} with a reply that does not answer request {request_id}")
    error = message.get("error")
    if error:
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            raise RPCError(error["code"], str(error.get("message", "")))
        raise ClientError(f"an error reply that is not JSON-RPC: {error!r}")
    return message.get("result")


# -- push notifications (/ws, docs/notifications.md) -------------------------------------------------
class Subscriber:
    """A WebSocket connection to the node's ``/ws`` feed (same credentials as RPC).

    ``on_message`` gets every message the node sends, as a dict (``subscribed``, ``newblock``, ``tx``,
    ``address``, ``error``...). ``opened`` is a future that resolves once the handshake is done (fails
    with :class:`ClientError` if refused); ``closed`` resolves when the connection ends.
    """

    def __init__(self, client: Client, requests: list[dict[str, Any]], on_message: Any) -> None:
        self.client = client
        self.requests = requests
        self.on_message = on_message
        self.opened = txaio.create_future()
        self.closed = txaio.create_future()
        self.protocol: Any = None

    def send(self, message: dict[str, Any]) -> None:
        """Send one more request (a subscribe or unsubscribe) on the open connection."""
        if self.protocol is None:
            raise ClientError("the subscription is not connected")
        self.protocol.sendMessage(json.dumps(message).encode())

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.sendClose()

    def _protocol_class(self, base: Any) -> Any:
        owner = self

        class Proto(base):
            def onOpen(self) -> None:  # noqa: N802 - autobahn API
                owner.protocol = self
                for request in owner.requests:
                    self.sendMessage(json.dumps(request).encode())
                txaio.resolve(owner.opened, owner)

            def onMessage(self, payload: bytes, is_binary: bool) -> None:  # noqa: N802 - autobahn API
                try:
                    message = json.loads(payload)
                except ValueError:
                    return
                owner.on_message(message)

            def onClose(self, was_clean: bool, code: Any, reason: Any) -> None:  # noqa: N802 - autobahn API
                owner.protocol = None
                if not txaio.is_called(owner.opened):
                    txaio.reject(owner.opened, ClientError(f"the node refused the WebSocket: {reason}"))
                if not txaio.is_called(owner.closed):
                    txaio.resolve(owner.closed, reason)

        return Proto

    def connect(self) -> Any:
        url = f"ws://{self.client.host}:{self.client.port}/ws"
        headers = {"Authorization": self.client._auth}
        if txaio.using_twisted:
            from autobahn.twisted.websocket import WebSocketClientFactory as TxFactory
            from autobahn.twisted.websocket import WebSocketClientProtocol as TxProto
            from autobahn.twisted.websocket import connectWS
            factory: Any = TxFactory(url, headers=headers)
            factory.protocol = self._protocol_class(TxProto)
            connector = connectWS(factory, timeout=self.client.timeout)
            factory.clientConnectionFailed = lambda _c, reason: self._failed(reason.getErrorMessage())
            del connector
        else:
            import asyncio

            from autobahn.asyncio.websocket import WebSocketClientFactory as AioFactory
            from autobahn.asyncio.websocket import WebSocketClientProtocol as AioProto
            factory = AioFactory(url, headers=headers)
            factory.protocol = self._protocol_class(AioProto)
            made = asyncio.ensure_future(asyncio.get_running_loop().create_connection(
                factory, self.client.host, self.client.port))
            made.add_done_callback(lambda f: self._failed(str(f.exception())) if f.exception() else None)
        return self.opened

    def _failed(self, why: str) -> None:
        if not txaio.is_called(self.opened):
            txaio.reject(self.opened, ClientError(f"no WebSocket to {self.client.host}:{self.client.port}: {why}"))
        if not txaio.is_called(self.closed):
            txaio.resolve(self.closed, why)


def subscribe(client: Client, requests: list[dict[str, Any]], on_message: Any) -> Any:
    """Connect to ``client``'s node ``/ws`` and send ``requests`` (e.g. ``{"op": "subscribe", "topic":
    "address", "address": ..., "from_height": 120}``); a future of the open :class:`Subscriber`."""
    return Subscriber(client, requests, on_message).connect()
