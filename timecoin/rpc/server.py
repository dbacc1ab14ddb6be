"""The JSON-RPC HTTP server (``twisted.web``), answering as bitcoind v28 does so its clients work unchanged.

``POST /`` takes one request or a batch. The reply shapes and HTTP statuses follow bitcoind v28
(src/httprpc.cpp, the first release with JSON-RPC 2.0):

- JSON-RPC 1.0/1.1 (no ``jsonrpc`` key, or ``"1.0"``): the reply has ``result``, ``error`` and ``id``; an
  error is also an HTTP error: 400 for -32600, 404 for -32601, 500 otherwise (bitcoind's legacy mode).
- JSON-RPC 2.0 (``"jsonrpc": "2.0"``): ``jsonrpc``, ``result`` XOR ``error``, ``id``, always HTTP 200; a
  request without ``id`` is a notification: it runs, and the reply is HTTP 204 with no body.
- A batch is always HTTP 200 with one reply per non-notification; a batch of only notifications gets
  204; an empty batch ``[]`` (as bitcoind). A body that is not JSON is -32700 (HTTP 500, the version being
  unknown); a body or batch element that is neither an object nor an array is -32600 (JSON-RPC 2.0's rule;
  bitcoind says -32700 for a top-level scalar).

Caps, each a clear answer and never a crash: a request not received whole within ``REQUEST_DEADLINE``
seconds of its first byte (slowloris) gets HTTP 408 and is closed; connections beyond
:class:`timecoin.rpc.limits.ConnectionLimit`'s caps are closed at once; a body above ``rpc_max_body_bytes``
gets HTTP 413 as soon as its ``Content-Length`` (or, chunked, the bytes read so far) exceed the cap, before
the rest is read, and the connection is closed; a batch above ``rpc_max_batch`` is one -32600 error (HTTP
400) (its elements are never batches: an array inside a batch is one -32600 reply, so nothing nests); more
than ``rpc_max_concurrent`` requests in progress from one client IP get HTTP 429 (a JSON-RPC -32603 body,
and ``Retry-After: 1``) -- an HTTP status because the limit is about the client, not any one call.

``GET /health`` needs no credentials (load balancers and monitors): HTTP 200 or 503 with the JSON of
:func:`timecoin.rpc.core.health_report` -- only public chain state (height, tip hash and time, sync and halt
status, peer count), nothing a P2P peer does not learn: no key, address, path or setting. Every other path
is 404, every other HTTP method 405. A client outside ``rpc_allow_ip`` gets 403 on every path; missing or
wrong credentials get 401 with ``WWW-Authenticate: Basic realm="jsonrpc"`` after 250 ms (bitcoind's brute-
force brake, without blocking the reactor). Handlers may return Deferreds; when the client disconnects they
are cancelled. An exception in a handler is logged with its traceback and answered -32603 "Internal error"
only.
"""
from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from timecoin.rpc.auth import REALM, AllowList, Credentials
from timecoin.rpc.context import RPCContext
from timecoin.rpc.core import health_report
from timecoin.rpc.errors import INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, RPCError
from timecoin.rpc.registry import MethodTable

JSON = b"application/json"          # exactly this: python-bitcoinrpc refuses any other Content-Type
AUTH_FAILURE_DELAY = 0.25           # seconds before a 401 (bitcoind sleeps 250 ms)
IDLE_TIMEOUT = 120                  # seconds an idle keep-alive connection stays open
REQUEST_DEADLINE = 30.0             # seconds to send one whole request (bitcoind's rpcservertimeout is 30)
REQUEST_TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\n"
                         b"Connection: close\r\nContent-Length: 0\r\n\r\n")
_ABSENT = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is not a finite number")
    return value


def _decode(body: bytes) -> Any:
    """The JSON of a body; ValueError for anything that is not strict JSON (NaN, a number that overflows a
    float such as 1e999999, an integer of more than 4300 digits (Python's int-str limit, so no quadratic
    parse), bad UTF-8 (strictly: no surrogates, no UTF-16), deep nesting)."""
    try:
        text = body.decode("utf-8")            # strict: json.loads(bytes) would pass lone surrogates and UTF-16
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class Call:
    """One request object's envelope: its version, id and whether it is a notification."""

    __slots__ = ("v2", "id", "notification", "error_code")

    def __init__(self, obj: Any) -> None:
        is_obj = isinstance(obj, dict)
        self.v2 = is_obj and obj.get("jsonrpc") == "2.0"
        self.id = obj.get("id") if is_obj else None
        self.notification = bool(self.v2 and "id" not in obj)
        self.error_code: int | None = None       # set when the reply is an error (its HTTP status in 1.x)

    def reply(self, result: Any = None, error: RPCError | None = None) -> str:
        """The reply's JSON text (result pre-encoded so a value that is not JSON becomes -32603 here)."""
        try:
            ident = _dumps(self.id)
        except (TypeError, ValueError):
            ident = "null"
        if error is None:
            try:
                encoded = _dumps(result)
            except (TypeError, ValueError, RecursionError):
                Logger().failure("RPC result is not JSON")
                error = RPCError(INTERNAL_ERROR, "Internal error")
        if error is not None:
            self.error_code = error.code
            err = _dumps(error.to_json()) if _jsonable(error.data) else _dumps({"code": error.code,
                                                                                "message": error.message})
            if self.v2:
                return f'{{"jsonrpc":"2.0","error":{err},"id":{ident}}}'
            return f'{{"result":null,"error":{err},"id":{ident}}}'
        if self.v2:
            return f'{{"jsonrpc":"2.0","result":{encoded},"id":{ident}}}'
        return f'{{"result":{encoded},"error":null,"id":{ident}}}'


def _jsonable(value: Any) -> bool:
    try:
        _dumps(value)
        return True
    except (TypeError, ValueError, RecursionError):
        return False


def check_envelope(obj: Any) -> tuple[str, Any]:
    """(method, params) of a request object, or RPCError(-32600) saying what is wrong with it."""
    if not isinstance(obj, dict):
        raise RPCError(INVALID_REQUEST, "Invalid Request object: a request must be a JSON object")
    version = obj.get("jsonrpc", _ABSENT)
    if version is not _ABSENT and version is not None:
        if not isinstance(version, str):
            raise RPCError(INVALID_REQUEST, "jsonrpc field must be a string")
        if version not in ("1.0", "2.0"):
            raise RPCError(INVALID_REQUEST, "JSON-RPC version not supported")
    method = obj.get("method")
    if method is None:
        raise RPCError(INVALID_REQUEST, "Missing method")
    if not isinstance(method, str):
        raise RPCError(INVALID_REQUEST, "Method must be a string")
    params = obj.get("params")
    if params is not None and not isinstance(params, list | dict):
        raise RPCError(INVALID_REQUEST, "Params must be an array or object")
    return method, params


def legacy_status(code: int) -> int:
    """bitcoind's HTTP status for a JSON-RPC 1.x error reply."""
    return {INVALID_REQUEST: 400, METHOD_NOT_FOUND: 404}.get(code, 500)


class CappedRequest(server.Request):
    """A request whose body is refused (HTTP 413, connection closed) once it exceeds the site's cap.

    ``gotLength`` sees ``Content-Length`` before any body byte; a chunked body is counted as it
    arrives. A refused body is never buffered and the request is never processed.
    """

    refused = False
    _received = 0

    def _cap(self) -> int:
        return int(getattr(getattr(self.channel, "site", None), "max_body_bytes", 4 << 20))

    def gotLength(self, length: int | None) -> None:  # noqa: N802 - Twisted API
        if length is not None and length > self._cap():
            self._refuse(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        if self.refused:
            return
        self._received += len(data)
        if self._received > self._cap():
            self._refuse(None)
            return
        super().handleContentChunk(data)

    def _refuse(self, length: int | None) -> None:
        self.refused = True
        self.content = io.BytesIO()  # type: ignore[assignment]
        cap = self._cap()
        body = _dumps({"result": None, "id": None, "error": {
            "code": INVALID_REQUEST,
            "message": f"Request body too large: {'more than ' if length is None else ''}"
                       f"{length if length is not None else cap} bytes, the limit is {cap} (rpc_max_body_bytes)"}})
        raw = body.encode() + b"\n"
        channel: Any = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                                    b"Connection: close\r\nContent-Length: " + str(len(raw)).encode()
                                    + b"\r\n\r\n" + raw)
            channel.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802 - Twisted API
        if self.refused:
            return
        super().requestReceived(command, path, version)


class RPCChannel(http.HTTPChannel):
    """An HTTP connection that must send each request whole within the site's ``request_deadline``.

    Twisted's idle timeout restarts at every byte received, so a client sending its headers or body
    one byte at a time (slowloris) would hold the connection forever. The deadline starts when the
    connection opens and at the first byte of each later request; it stops once the request is whole
    (the handler may then take as long as it needs: ``waitfornewblock``). On expiry: HTTP 408, closed.
    """

    log = Logger()
    _deadline: Any = None

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        super().connectionMade()
        self._arm()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        if self._deadline is None and not self._handlingRequest:
            self._arm()
        super().dataReceived(data)

    def allContentReceived(self) -> None:  # noqa: N802 - Twisted API
        self._disarm()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802 - Twisted API
        self._disarm()
        super().connectionLost(reason)

    def _arm(self) -> None:
        deadline = float(getattr(getattr(self, "site", None), "request_deadline", REQUEST_DEADLINE))
        call_later: Any = self.callLater
        self._deadline = call_later(deadline, self._too_slow, deadline)

    def _disarm(self) -> None:
        call, self._deadline = self._deadline, None
        if call is not None and call.active():
            call.cancel()

    def _too_slow(self, deadline: float) -> None:
        self._deadline = None
        transport: Any = self.transport
        if transport is None:                    # handed over (a WebSocket)
            return
        self.log.info("RPC: dropping {peer}: no whole request within {s} s", peer=str(transport.getPeer()),
                      s=deadline)
        transport.write(REQUEST_TIMEOUT_REPLY)
        self.timeoutConnection()                 # close, and abort if the client does not let go


class RPCSite(server.Site):
    """The HTTP site: capped requests, a deadline per request, quiet access log, and the open channels
    (closed at stop)."""

    requestFactory = CappedRequest
    protocol = RPCChannel  # type: ignore[assignment]

    def __init__(self, root: resource.Resource, max_body_bytes: int, reactor: Any = None,
                 request_deadline: float = REQUEST_DEADLINE) -> None:
        super().__init__(root, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.max_body_bytes = max_body_bytes
        self.request_deadline = request_deadline
        self.channels: set[Any] = set()

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted API
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> None:
            self.channels.discard(channel)
            lost(reason)

        channel.connectionLost = connection_lost
        return channel

    def log(self, request: Any) -> None:
        """No access-log line per request (a busy client would flood the node's log)."""

    def close_all(self) -> None:
        for channel in list(self.channels):
            transport = getattr(channel, "transport", None)
            if transport is not None:
                transport.loseConnection()      # writes what is pending (a ``stop`` reply) first


class RPCResource(resource.Resource):
    """``POST /`` (JSON-RPC) and ``GET /health``; see the module docstring for every status."""

    isLeaf = True
    log = Logger()

    def __init__(self, node: Any, reactor: Any, table: MethodTable, credentials: Credentials, allow: AllowList,
                 started_at: float, max_batch: int, max_concurrent: int,
                 health: Callable[[Any], dict[str, Any]] = health_report) -> None:
        super().__init__()
        self.node = node
        self.reactor = reactor
        self.table = table
        self.credentials = credentials
        self.allow = allow
        self.started_at = started_at
        self.max_batch = max_batch
        self.max_concurrent = max_concurrent
        self.health = health
        self.in_flight: dict[str, int] = {}
        self.auth_failure_delay = AUTH_FAILURE_DELAY

    # -- routing ---------------------------------------------------------------------------------
    def render(self, request: server.Request) -> Any:
        client = _client(request)
        if not self.allow.allows(client):
            self.log.warn("RPC refused for {client}: not in rpc_allow_ip", client=client)
            return _plain(request, 403)
        path = request.path
        if path == b"/health":
            if request.method not in (b"GET", b"HEAD"):
                return _plain(request, 405, allow=b"GET, HEAD")
            try:
                report = self.health(self.node)
            except Exception:           # a store closing under us: unhealthy, logged, never a traceback out
                self.log.failure("Health check failed")
                report = {"healthy": False, "status": "unhealthy", "reasons": ["internal error (see the node log)"]}
            return _json(request, 200 if report.get("healthy") else 503, _dumps(report))
        if path != b"/":
            return _plain(request, 404)
        if request.method != b"POST":
            return _plain(request, 405, allow=b"POST")
        if not self.credentials.check(request.getHeader(b"authorization")):
            self.log.info("RPC: bad or missing credentials from {client}", client=client)
            request.setHeader(b"www-authenticate", REALM)
            if self.auth_failure_delay <= 0:
                return _plain(request, 401)
            call = self.reactor.callLater(self.auth_failure_delay, _finish_plain, request, 401)
            request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
            return server.NOT_DONE_YET
        if self.in_flight.get(client, 0) >= self.max_concurrent:
            request.setHeader(b"retry-after", b"1")
            error = RPCError(INTERNAL_ERROR, f"Too many concurrent requests from {client} "
                                             f"(rpc_max_concurrent = {self.max_concurrent})")
            return _json(request, 429, Call(None).reply(error=error))
        self._track(request, client)
        self._post(request, client)
        return server.NOT_DONE_YET

    def _track(self, request: server.Request, client: str) -> None:
        self.in_flight[client] = self.in_flight.get(client, 0) + 1

        def done(_: Any) -> None:
            left = self.in_flight.get(client, 1) - 1
            if left > 0:
                self.in_flight[client] = left
            else:
                self.in_flight.pop(client, None)

        request.notifyFinish().addBoth(done)

    # -- JSON-RPC --------------------------------------------------------------------------------
    def _post(self, request: server.Request, client: str) -> None:
        assert request.content is not None
        try:
            data = _decode(request.content.read())
        except ValueError:
            _write(request, 500, Call(None).reply(error=RPCError(PARSE_ERROR, "Parse error")))
            return
        ctx = RPCContext(self.node, self.reactor, self.started_at, client)
        pending: list[defer.Deferred[str]] = []
        request.notifyFinish().addErrback(lambda _: [d.cancel() for d in pending])
        if isinstance(data, list):
            if len(data) > self.max_batch:
                error = RPCError(INVALID_REQUEST, f"Batch too large: {len(data)} requests, the limit is "
                                                  f"{self.max_batch} (rpc_max_batch)")
                _write(request, 400, Call(None).reply(error=error))
                return
            calls = [Call(obj) for obj in data]
            pending.extend(self._run(ctx, obj, call) for obj, call in zip(data, calls, strict=True))
            gathered = defer.gatherResults(pending, consumeErrors=True)
            gathered.addCallback(lambda texts: self._batch_done(request, calls, texts, bool(data)))
            gathered.addErrback(self._unexpected, request)
            return
        call = Call(data)
        d = self._run(ctx, data, call)
        pending.append(d)
        d.addCallback(lambda text: self._single_done(request, call, text))
        d.addErrback(self._unexpected, request)

    def _run(self, ctx: RPCContext, obj: Any, call: Call) -> defer.Deferred[str]:
        """One request -> a Deferred of its reply text (never fails; errors become error replies)."""
        try:
            method, params = check_envelope(obj)
        except RPCError as error:
            return defer.succeed(call.reply(error=error))
        d = defer.maybeDeferred(self.table.call, ctx, method, params)

        def failed(failure: Failure) -> str:
            if failure.check(RPCError):
                error = failure.value
            else:
                if not failure.check(defer.CancelledError):
                    self.log.failure("RPC {method} failed", failure, method=method[:100])
                error = RPCError(INTERNAL_ERROR, "Internal error")
            return call.reply(error=error)

        d.addCallbacks(lambda result: call.reply(result=result), failed)
        return d

    def _single_done(self, request: server.Request, call: Call, text: str) -> None:
        if call.notification:
            _write(request, 204, None)
            return
        code = call.error_code
        status = 200 if code is None or call.v2 else legacy_status(code)
        _write(request, status, text)

    def _batch_done(self, request: server.Request, calls: list[Call], texts: list[str], nonempty: bool) -> None:
        replies = [text for call, text in zip(calls, texts, strict=True) if not call.notification]
        if not replies and nonempty:
            _write(request, 204, None)
            return
        _write(request, 200, "[" + ",".join(replies) + "]")

    def _unexpected(self, failure: Failure, request: server.Request) -> None:
        self.log.failure("RPC reply failed", failure)
        _write(request, 500, Call(None).reply(error=RPCError(INTERNAL_ERROR, "Internal error")))


# -- HTTP helpers ----------------------------------------------------------------------------------
def _client(request: server.Request) -> str:
    host = getattr(request.getClientAddress(), "host", None)
    return str(host) if host is not None else ""


def _gone(request: server.Request) -> bool:
    return bool(getattr(request, "_disconnected", False) or request.finished)


def _write(request: server.Request, status: int, text: str | None) -> None:
    """Send a reply unless the client has gone."""
    if _gone(request):
        return
    request.setResponseCode(status)
    if text is not None:
        body = text.encode() + b"\n"
        request.setHeader(b"content-type", JSON)
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
    request.finish()


def _json(request: server.Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    return text.encode() + b"\n"


def _plain(request: server.Request, status: int, allow: bytes | None = None) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain")
    if allow is not None:
        request.setHeader(b"allow", allow)
    return b""


def _finish_plain(request: server.Request, status: int) -> None:
    if not _gone(request):
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain")
        request.finish()
