"""Hostile RPC clients against a real in-process node over real sockets on 127.0.0.0/8.

Every registered method called without credentials and with wrong ones: 401 and nothing run (``stop``
does not stop); every other path 404, every other HTTP method 405, ``/ws`` 401, ``/health`` only the
public chain state it documents. Every method called with wrong-typed, huge, negative, missing and
extra parameters: an RPC error, never an internal error. Batches that nest. Slowloris clients lose
their connection at the request deadline while a well-behaved client is served; connections past the
per-address cap are closed at once. Each listener binds only where configured.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.python.failure import Failure

from tests.integration.test_manhole import reachable
from tests.integration.test_rpc_server import DevNode, basic, call_http
from tests.p2pnet import wait_for
from timecoin.rpc.auth import read_cookie
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import INTERNAL_ERROR, RPCError
from timecoin.rpc.methods import TABLE
from timecoin.rpc.registry import MAX_INT, MethodTable, Param
from timecoin.rpc.server import REQUEST_TIMEOUT_REPLY
from timecoin.sim.loopnet import reactor


def wrong_auths(dev: DevNode) -> list[str | None]:
    user, password = read_cookie(dev.datadir)
    return [None, basic(user, "x" + password[1:]), basic(user, password[:-1] + "x"), basic(user, password[:-1]),
            basic("alice", password), "Bearer " + password, "Basic !!!"]


@pytest_twisted.ensureDeferred
async def test_every_method_and_path_refuses_callers_without_the_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = DevNode(tmp_path)
    ran: list[Any] = []
    real_call = MethodTable.call
    monkeypatch.setattr(MethodTable, "call", lambda self, ctx, name, params: ran.append(name) or real_call(
        self, ctx, name, params))
    try:
        await dev.start()
        assert dev.node.rpc.resource is not None
        dev.node.rpc.resource.auth_failure_delay = 0.0     # the 250 ms brake has its own test (test_rpc_server)
        names = sorted(TABLE.methods)
        assert "stop" in names and len(names) > 30
        for auth in wrong_auths(dev):
            for name in names:
                status, headers, raw = await call_http(dev.port, {"method": name, "params": [], "id": 1}, auth)
                assert (status, raw) == (401, b""), (name, auth)
                assert headers["www-authenticate"] == 'Basic realm="jsonrpc"'
            everything = [{"jsonrpc": "2.0", "method": name, "id": i} for i, name in enumerate(names)]
            assert (await call_http(dev.port, everything, auth))[0] == 401
        assert ran == [], f"methods ran without credentials: {ran}"
        assert dev.node.running and dev.node.rpc.port, "the node stopped"

        # Paths and HTTP methods: only POST / (credentials) and GET/HEAD /health.
        good = dev.auth()
        for auth in (None, good):
            for path in ("/wallet", "/ws/x", "/health/x", "//", "/%2e%2e/", "/metrics", "/.cookie"):
                assert (await call_http(dev.port, "{}", auth, path=path))[0] == 404, path
            for verb in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
                assert (await call_http(dev.port, "{}", auth, method=verb))[0] == 405, verb
        assert ran == []
        # /ws: the WebSocket upgrade without credentials is refused before the handshake.
        reply = await threads.deferToThread(ws_upgrade, dev.port)
        assert reply.startswith(b"HTTP/1.1 401"), reply[:80]
        # /health needs no credentials and says only what a peer learns from the chain: no keys, no
        # addresses, no paths, no configuration.
        status, _, raw = await call_http(dev.port, "", None, method="GET", path="/health")
        report = json.loads(raw)
        assert status in (200, 503) and set(report) == {
            "healthy", "status", "reasons", "height", "bestblockhash", "last_block_time", "last_block_age_s",
            "stall_bound_s", "syncing", "halted", "peers", "single_validator"}
        assert dev.datadir.encode() not in raw and read_cookie(dev.datadir)[1].encode() not in raw
    finally:
        await dev.net.stop()


def ws_upgrade(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        return s.recv(4096)


# -- every method with hostile parameters ---------------------------------------------------------------
HOSTILE: list[Any] = [
    True, False, 0, -1, -(2**63), 2**63, MAX_INT, 10**30, -(10**30), int("9" * 4000), 1.5, 1e308, -1e308, 5e-324,
    "", "x", "\ud800", "zz", "-1", "ab" * 50_000, "9" * 4000, "0" * 64, "f" * 64,
    "TIME0" + "z" * 100_000, "TIME1" + "2" * 100_000,                  # base58 decoding is quadratic
    [], [1], [None], [[]], ["00"], ["zz"], ["ab" * 50_000], [0] * 10_000, {}, {"a": [1]}, [[[[[]]]]],
]


def baseline(p: Param) -> Any:
    """A value of the parameter's type (so each hostile value is tried with the others in place)."""
    return {"int": int(p.minimum or 0), "number": 0, "bool": False, "array": [], "object": {}, "any": 0,
            "hex": "00" * (p.hex_bytes or 1)}.get(p.type, (p.choices or ("x",))[0])


def outcome(ctx: RPCContext, name: str, params: Any) -> str | None:
    """None when the call ended in a result (JSON) or an RPC error; else what went wrong."""
    try:
        result = TABLE.call(ctx, name, params)
    except RPCError as exc:
        return f"internal error {exc.message}" if exc.code == INTERNAL_ERROR else None
    except Exception as exc:                # noqa: BLE001 - the point: nothing else may escape
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if isinstance(result, defer.Deferred):
        got: list[Any] = []
        result.addBoth(got.append)
        if not got:
            result.cancel()                 # a long poll (waitfornewblock): cancelled as on a disconnect
        value = got[0]
        if isinstance(value, Failure):
            if value.check(defer.CancelledError) or (value.check(RPCError) and value.value.code != INTERNAL_ERROR):
                return None
            return f"{value.type.__name__}: {str(value.value)[:200]}"
        result = value
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"result is not JSON: {exc}"
    return None


@pytest_twisted.ensureDeferred
async def test_every_method_answers_hostile_parameters_with_an_rpc_error(tmp_path: Path) -> None:
    dev = DevNode(tmp_path)
    try:
        await dev.start()
        await wait_for(lambda: dev.node.store.tip_height() >= 1, 20.0, "height 1")
        dev.node.rpc.on_stop = lambda: pytest.fail("a hostile call stopped the node")
        ctx = RPCContext(dev.node, reactor, reactor.seconds(), "127.0.0.1")
        bad: list[str] = []
        calls = 0
        for name, method in sorted(TABLE.methods.items()):
            base = [baseline(p) for p in method.params]
            tries: list[Any] = [[None] * len(base) + [1], {"nosuch": 1}, [0] * 100]
            if any(p.required for p in method.params):
                tries += [[], {}, None]
            for i, p in enumerate(method.params):
                for value in HOSTILE:
                    tries.append(base[:i] + [value] + base[i + 1:])
                    tries.append({p.name: value})
            if "command" in (p.name for p in method.params):           # addnode, setban: each real command
                tries += [[value, command] for value in HOSTILE if isinstance(value, str)
                          for command in ("add", "remove", "onetry")]
            for params in tries:
                calls += 1
                t0 = time.monotonic()
                why = outcome(ctx, name, params)
                if why is None and time.monotonic() - t0 > 1.0:     # generous: each call takes milliseconds
                    why = f"took {time.monotonic() - t0:.1f} s (a CPU burn)"
                if why is not None:
                    bad.append(f"{name}({json.dumps(params)[:80]}): {why}")
        assert calls > 2000 and bad == [], "\n".join(bad[:30])
        assert dev.node.running
    finally:
        await dev.net.stop()


@pytest_twisted.ensureDeferred
async def test_batches_never_nest_and_an_empty_or_oversized_one_is_one_answer(tmp_path: Path) -> None:
    dev = DevNode(tmp_path, rpc_max_batch="10")
    try:
        await dev.start()
        auth = dev.auth()
        one = {"jsonrpc": "2.0", "method": "getblockcount", "id": 1}
        status, _, raw = await call_http(dev.port, [[one], [], [[[[one]]]], one], auth)
        replies = json.loads(raw)
        assert status == 200 and [r.get("error", {}).get("code") for r in replies] == [-32600, -32600, -32600, None]
        assert isinstance(replies[3]["result"], int)
        status, _, raw = await call_http(dev.port, "[" + ",".join(["[" * 100 + "]" * 100] * 10) + "]", auth)
        assert status == 200 and [r["error"]["code"] for r in json.loads(raw)] == [-32600] * 10
        status, _, raw = await call_http(dev.port, [[one] * 10] * 11, auth)            # 11 batches of 10
        assert status == 400 and "rpc_max_batch" in json.loads(raw)["error"]["message"]
        assert (await call_http(dev.port, [], auth))[2] == b"[]\n"
    finally:
        await dev.net.stop()


# -- slowloris and connection floods over real sockets ---------------------------------------------------
def slow_sender(port: int, data: bytes, interval: float, limit: float) -> tuple[float, bytes]:
    """Send ``data`` a byte per ``interval`` until the server hangs up (or ``limit`` s); (seconds, reply)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit, source_address=("127.0.0.2", 0)) as s:
        s.settimeout(interval)
        reply = b""
        for i in range(int(limit / interval)):          # bounded
            try:
                s.sendall(data[i % len(data):i % len(data) + 1])
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            except TimeoutError:
                continue
            except OSError:
                break
        return time.monotonic() - t0, reply


def idle_flood(port: int, count: int) -> list[tuple[float, bytes]]:
    """``count`` idle connections from 127.0.0.3: for each, (seconds until the server spoke or hung up, what it
    sent)."""
    t0 = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.3", 0))
             for _ in range(count)]
    try:
        out = []
        for s in reversed(socks):                       # the refused (last) ones first: they answer at once
            s.settimeout(max(0.1, t0 + 10 - time.monotonic()))
            try:
                data = s.recv(4096)
            except OSError:
                data = b"<still open>"
            out.append((time.monotonic() - t0, data))
        return out
    finally:
        for s in socks:
            s.close()


@pytest_twisted.ensureDeferred
async def test_slowloris_and_idle_floods_lose_their_connections_while_others_are_served(tmp_path: Path) -> None:
    dev = DevNode(tmp_path)
    try:
        await dev.start()
        site, limit = dev.node.rpc.site, dev.node.rpc.limit
        assert site is not None and limit is not None
        site.request_deadline = 1.0
        limit.max_per_ip = 6
        auth = dev.auth()
        head = (b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        slow_headers = threads.deferToThread(slow_sender, dev.port, head, 0.05, 15.0)
        slow_body = threads.deferToThread(slow_sender, dev.port, head + b" " * 2000, 0.002, 15.0)
        flood = threads.deferToThread(idle_flood, dev.port, 10)
        # Meanwhile a well-behaved client (another address) is served.
        status, _, raw = await call_http(dev.port, {"method": "getblockcount", "id": 1}, auth)
        assert status == 200 and json.loads(raw)["error"] is None
        for took, reply in (await slow_headers, await slow_body):
            # Dropped at the deadline (the 408 may be lost: a byte sent after the close makes a reset).
            assert took < 8.0 and reply in (b"", REQUEST_TIMEOUT_REPLY), (took, reply[:60])
        flood_replies = await flood
        refused = [took for took, data in flood_replies if data == b""]
        timed_out = [took for took, data in flood_replies if data.startswith(b"HTTP/1.1 408 Request Timeout")]
        assert (len(refused), len(timed_out)) == (4, 6), flood_replies    # 6 per address, each dropped at 1 s
        assert max(refused) < 0.9 <= min(timed_out) and max(timed_out) < 8.0, flood_replies
        await wait_for(lambda: limit.per_ip == {}, 10.0, "every connection gone")
        status, _, _ = await call_http(dev.port, {"method": "getblockcount", "id": 2}, auth)
        assert status == 200
    finally:
        await dev.net.stop()


# -- listeners bind only where configured ----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_rpc_and_metrics_listen_only_on_their_configured_addresses(tmp_path: Path) -> None:
    dev = DevNode(tmp_path, rpc_host="127.0.0.2", metrics_host="127.0.0.3", metrics_port="0")
    try:
        await dev.start()
        metrics = dev.node.metrics
        assert metrics is not None and metrics.port
        for host, port, where in (("127.0.0.2", dev.port, "rpc"), ("127.0.0.3", metrics.port, "metrics")):
            assert await threads.deferToThread(reachable, host, port), where
            for other in ("127.0.0.1", "127.0.0.4"):
                assert not await threads.deferToThread(reachable, other, port), (where, other)
    finally:
        await dev.net.stop()
