"""The JSON-RPC server over real HTTP on 127.0.0.1, against real in-process nodes (LMDB in tmp_path).

An unmodified bitcoind client library (python-bitcoinrpc's AuthServiceProxy, synchronous, so it runs in
a thread) reads the chain with the cookie; raw HTTP checks what the library cannot show: 401s, reply
shapes of JSON-RPC 1.0 and 2.0, notifications, batches and their cap, the 413 body cap (refused before
the body is read), the per-client concurrency cap, Deferred handlers cancelled on disconnect, health.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException
from twisted.internet import defer, threads

from tests.p2pnet import Net, sleep, wait_for
from tests.ports import TWISTD, free_port_block
from timecoin.rpc.auth import AllowList, Credentials, read_cookie
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import IN_WARMUP, INVALID_PARAMETER, INVALID_PARAMS, METHOD_NOT_FOUND, MISC_ERROR, RPCError
from timecoin.rpc.methods import TABLE
from timecoin.rpc.registry import MethodTable, Param
from timecoin.rpc.server import RPCResource, RPCSite
from timecoin.sim.loopnet import reactor

ROOT = str(Path(__file__).resolve().parents[2])        # this checkout's timecoin, in the twistd child too

# Short consensus timeouts: the stall bound (timecoin.rpc.core.stall_bound) is then about 3 s.
QUICK = {"timeout_propose": "0.1", "timeout_propose_delta": "0.01", "timeout_prevote": "0.1",
         "timeout_prevote_delta": "0.01", "timeout_precommit": "0.1", "timeout_precommit_delta": "0.01",
         "message_delay": "0.1", "precision": "0.05"}


# -- HTTP helpers (blocking; run in a thread) -------------------------------------------------------
def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def post(port: int, body: bytes | str, auth: str | None, method: str = "POST", path: str = "/",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if auth is not None:
            hdrs["Authorization"] = auth
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=hdrs)
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


async def call_http(port: int, body: Any, auth: str | None, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    raw = body if isinstance(body, bytes | str) else json.dumps(body)
    return await threads.deferToThread(post, port, raw, auth, **kw)


class DevNode:
    """One validator (a devnet of one) in this process, its RPC port and cookie."""

    def __init__(self, tmp_path: Path, validators: int = 1, **extra: str) -> None:
        self.net = Net(tmp_path, validators, chain_id="timecoin-rpc-test", **{**QUICK, **extra})
        self.net.nodes = self.net.nodes[:1]          # the others (if any) never start: no quorum
        self.node = self.net.nodes[0]

    async def start(self) -> None:
        await self.net.start(connect=False)
        assert self.node.rpc.port, "RPC is not listening"

    @property
    def port(self) -> int:
        return int(self.node.rpc.port)

    @property
    def datadir(self) -> str:
        return str(self.node.config.datadir)

    def auth(self) -> str:
        return basic(*read_cookie(self.datadir))


# -- the acceptance item: an unmodified bitcoind client ---------------------------------------------
def bitcoind_client_reads(url: str) -> dict[str, Any]:
    proxy = AuthServiceProxy(url, timeout=10)
    out: dict[str, Any] = {}
    out["count"] = proxy.getblockcount()
    out["best"] = proxy.getbestblockhash()
    out["hash1"] = proxy.getblockhash(1)
    out["info"] = proxy.getblockchaininfo()
    out["block"] = proxy.getblock(out["hash1"])
    try:
        proxy.nosuchmethod()
    except JSONRPCException as exc:
        out["unknown"] = exc.error
    return out


def bitcoind_client_error(url: str) -> dict[str, Any]:
    try:
        AuthServiceProxy(url, timeout=10).getblockcount()
    except JSONRPCException as exc:
        return dict(exc.error)
    raise AssertionError("the call succeeded without the right credentials")


@pytest_twisted.ensureDeferred
async def test_bitcoind_client_library_reads_the_chain_with_the_cookie(tmp_path: Path) -> None:
    dev = DevNode(tmp_path)
    try:
        await dev.start()
        await wait_for(lambda: dev.node.store.tip_height() >= 3, 20.0, "height 3")
        user, password = read_cookie(dev.datadir)
        assert user == "__cookie__" and len(password) == 64 and int(password, 16) >= 0
        got = await threads.deferToThread(bitcoind_client_reads, f"http://{user}:{password}@127.0.0.1:{dev.port}")
        store = dev.node.store
        assert got["count"] >= 3
        assert got["hash1"] == store.block_hash_at(1).hex()
        assert store.height_of(bytes.fromhex(got["best"])) >= got["count"]
        info = got["info"]
        assert info["chain"] == "testnet" and info["chain_id"] == "timecoin-rpc-test"
        assert info["blocks"] >= got["count"] and info["headers"] >= info["blocks"]
        assert info["initialblockdownload"] is False and info["verificationprogress"] == 1
        assert info["size_on_disk"] > 0 and info["warnings"] == []
        assert info["mediantime"] <= info["time"] <= time.time() + 1
        assert got["block"]["hash"] == got["hash1"] and got["block"]["height"] == 1
        assert got["block"]["tx"] == [] and got["block"]["confirmations"] >= 1
        assert got["unknown"]["code"] == METHOD_NOT_FOUND

        wrong = await threads.deferToThread(bitcoind_client_error, f"http://{user}:{'0' * 64}@127.0.0.1:{dev.port}")
        assert wrong["code"] == -342 and "401" in wrong["message"]          # the library's "non-JSON reply"
        status, headers, _ = await call_http(dev.port, {"method": "getblockcount", "id": 1}, None)
        assert status == 401 and headers["www-authenticate"] == 'Basic realm="jsonrpc"'
        status, _, body = await call_http(dev.port, b'{"method": "getblockcount", "id": 1', dev.auth())
        assert status == 500 and json.loads(body) == {"result": None, "error": {"code": -32700,
                                                                                "message": "Parse error"}, "id": None}
    finally:
        await dev.net.stop()


# -- auth and the cookie ---------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_credentials_cookie_file_and_stop(tmp_path: Path) -> None:
    dev = DevNode(tmp_path)
    try:
        await dev.start()
        cookie = os.path.join(dev.datadir, ".cookie")
        assert stat.S_IMODE(os.stat(cookie).st_mode) == 0o600
        first = read_cookie(dev.datadir)[1]
        req = {"method": "uptime", "params": [], "id": "u"}
        for auth in (None, basic("__cookie__", "0" * 64), basic("__cookie__", first[:-1]), "Bearer x",
                     "Basic !!!notbase64", basic("someone", first)):
            status, headers, body = await call_http(dev.port, req, auth)
            assert (status, body) == (401, b""), auth
            assert headers["www-authenticate"] == 'Basic realm="jsonrpc"'
        status, _, body = await call_http(dev.port, req, dev.auth())
        assert status == 200 and json.loads(body) == {"result": json.loads(body)["result"], "error": None, "id": "u"}
        assert isinstance(json.loads(body)["result"], int)

        # ``stop`` answers first, then the node stops cleanly and removes its cookie.
        status, _, body = await call_http(dev.port, {"method": "stop", "id": 9}, dev.auth())
        assert status == 200 and json.loads(body)["result"] == "Timecoin server stopping"
        await wait_for(lambda: not dev.node.running and dev.node.store is None, 10.0, "the node stopped")
        assert not os.path.exists(cookie)

        # A restart writes a fresh cookie; the old secret no longer works.
        dev.node = dev.net.nodes[0] = dev.net.make(0)
        dev.node.startService()
        assert read_cookie(dev.datadir)[1] != first
        status, _, _ = await call_http(dev.port, req, basic("__cookie__", first))
        assert status == 401
        status, _, _ = await call_http(dev.port, req, dev.auth())
        assert status == 200
    finally:
        await dev.net.stop()
    assert not os.path.exists(os.path.join(dev.datadir, ".cookie"))


@pytest_twisted.ensureDeferred
async def test_configured_user_and_password_replace_the_cookie(tmp_path: Path) -> None:
    dev = DevNode(tmp_path, rpc_user="alice", rpc_password="s3cret-pass")
    try:
        await dev.start()
        assert not os.path.exists(os.path.join(dev.datadir, ".cookie"))
        status, _, body = await call_http(dev.port, {"method": "getblockcount", "id": 1}, basic("alice", "s3cret-pass"))
        assert status == 200 and json.loads(body)["error"] is None
        status, _, _ = await call_http(dev.port, {"method": "getblockcount", "id": 1}, basic("alice", "s3cret-pasS"))
        assert status == 401
    finally:
        await dev.net.stop()


# -- reply shapes, errors, batches ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_reply_shapes_statuses_notifications_and_batches(tmp_path: Path) -> None:
    dev = DevNode(tmp_path)
    try:
        await dev.start()
        auth = dev.auth()

        async def rpc(body: Any) -> tuple[int, Any]:
            status, headers, raw = await call_http(dev.port, body, auth)
            if status != 204:
                assert headers["content-type"] == "application/json"
            return status, (json.loads(raw) if raw else None)

        # JSON-RPC 1.0/1.1: result, error and id; errors are HTTP errors (bitcoind's legacy mode).
        status, reply = await rpc({"version": "1.1", "method": "getblockcount", "id": 7})
        assert status == 200 and set(reply) == {"result", "error", "id"} and reply["id"] == 7
        status, reply = await rpc({"jsonrpc": "1.0", "method": "nope", "id": [1]})
        not_found = {"code": -32601, "message": "Method not found: nope"}
        assert status == 404 and reply == {"result": None, "error": not_found, "id": [1]}
        status, reply = await rpc({"method": "getblockhash", "params": ["x"], "id": 1})
        assert status == 500 and reply["error"]["code"] == INVALID_PARAMS
        status, reply = await rpc({"method": "getblockhash", "params": [10**9], "id": 1})
        assert status == 500 and reply["error"] == {"code": INVALID_PARAMETER, "message": "Block height out of range"}
        status, reply = await rpc({"method": "getblockcount", "params": "x", "id": 1})
        assert status == 400 and reply["error"]["code"] == -32600
        status, reply = await rpc({"id": 1})
        assert status == 400 and reply["error"] == {"code": -32600, "message": "Missing method"}
        status, reply = await rpc({"jsonrpc": "3.0", "method": "getblockcount", "id": 1})
        assert status == 400 and reply["error"]["message"] == "JSON-RPC version not supported"
        # The same request without an id in 1.x still gets a reply (only 2.0 has notifications).
        status, reply = await rpc({"method": "getblockcount"})
        assert status == 200 and reply["id"] is None and isinstance(reply["result"], int)

        # JSON-RPC 2.0: result XOR error, always HTTP 200; no id = notification = no reply.
        status, reply = await rpc({"jsonrpc": "2.0", "method": "getbestblockhash", "id": "a"})
        assert status == 200 and set(reply) == {"jsonrpc", "result", "id"} and len(reply["result"]) == 64
        status, reply = await rpc({"jsonrpc": "2.0", "method": "nope", "id": None})
        assert status == 200 and set(reply) == {"jsonrpc", "error", "id"} and reply["error"]["code"] == -32601
        status, reply = await rpc({"jsonrpc": "2.0", "method": "getblockcount"})
        assert (status, reply) == (204, None)
        status, reply = await rpc({"jsonrpc": "2.0", "method": "nope"})         # even a failing one
        assert (status, reply) == (204, None)

        # Not a request object: -32600 (JSON-RPC 2.0's rule), HTTP 400; malformed JSON: -32700.
        for body in ("5", '"getblockcount"', "null", "true"):
            status, reply = await rpc(body)
            assert status == 400 and reply["error"]["code"] == -32600, body
        for body in (b"", b"{", b"\xff\xfe", b'{"method": NaN}', b"[" * 100_000):
            status, reply = await rpc(body)
            assert status == 500 and reply["error"]["code"] == -32700, body[:10]

        # Batches: HTTP 200, replies in order, notifications left out, element errors in place.
        status, reply = await rpc([{"jsonrpc": "2.0", "method": "getblockcount", "id": 1},
                                   {"jsonrpc": "2.0", "method": "getblockcount"},
                                   {"method": "nope", "id": 2}, 5,
                                   {"jsonrpc": "2.0", "method": "getblockhash", "params": [0], "id": 3}])
        assert status == 200 and [r.get("id") for r in reply] == [1, 2, None, 3]
        assert "error" not in reply[0] and reply[1]["error"]["code"] == -32601 and reply[1]["result"] is None
        assert reply[2]["error"]["code"] == -32600 and reply[3]["result"] == dev.node.genesis.hash.hex()
        status, reply = await rpc([{"jsonrpc": "2.0", "method": "uptime"}] * 3)
        assert (status, reply) == (204, None)
        status, reply = await rpc([])
        assert (status, reply) == (200, [])
        status, reply = await rpc([{"jsonrpc": "2.0", "method": "getblockcount", "id": i} for i in range(1000)])
        assert status == 200 and len(reply) == 1000
        status, reply = await rpc([{"jsonrpc": "2.0", "method": "getblockcount", "id": i} for i in range(1001)])
        assert status == 400 and reply["error"]["code"] == -32600 and "1001" in reply["error"]["message"]

        # Paths and HTTP methods.
        assert (await call_http(dev.port, "", auth, method="GET"))[0] == 405
        assert (await call_http(dev.port, "{}", auth, path="/wallet"))[0] == 404
        assert (await call_http(dev.port, "{}", None, path="/health"))[0] == 405
    finally:
        await dev.net.stop()


# -- the body cap ----------------------------------------------------------------------------------
def oversized_with_length(port: int, length: int) -> tuple[bytes, float]:
    """Headers announcing ``length`` body bytes, none sent: the server answers without waiting for them."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(length).encode() + b"\r\n\r\n")
        t0 = time.monotonic()
        data = b""
        for _ in range(100):                       # bounded: the reply is short, then the server closes
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data, time.monotonic() - t0


def oversized_chunked(port: int, chunk: int, total: int) -> tuple[bytes, int]:
    """A chunked body of ``total`` bytes sent until the server answers or closes; (reply, bytes sent)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    try:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n" % chunk + b" " * chunk + b"\r\n"
        try:
            while sent < total:                    # bounded by total
                s.sendall(piece)
                sent += chunk
        except OSError:                            # the server closed: broken pipe or reset
            pass
        data = b""
        try:
            for _ in range(100):
                part = s.recv(65536)
                if not part:
                    break
                data += part
        except OSError:
            pass
        return data, sent
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_oversized_bodies_get_413_before_they_are_read(tmp_path: Path) -> None:
    cap = 64 * 1024
    dev = DevNode(tmp_path, rpc_max_body_bytes=str(cap))
    try:
        await dev.start()
        data, took = await threads.deferToThread(oversized_with_length, dev.port, 1 << 30)
        assert data.startswith(b"HTTP/1.1 413 ") and b"rpc_max_body_bytes" in data and took < 5
        total = 256 << 20                          # far beyond any socket buffers: the server must stop reading
        data, sent = await threads.deferToThread(oversized_chunked, dev.port, 16 * 1024, total)
        assert sent < total, "the server read the whole oversized chunked body"
        assert not data or data.startswith(b"HTTP/1.1 413 ")
        # A body at the cap is served; the node is fine after both refusals.
        body = json.dumps({"method": "getblockcount", "id": "x" * (cap - 100)})
        assert len(body) <= cap
        status, _, raw = await call_http(dev.port, body, dev.auth())
        assert status == 200 and json.loads(raw)["error"] is None
    finally:
        await dev.net.stop()


# -- Deferred handlers, the concurrency cap, disconnects --------------------------------------------
class SlowWorld:
    """An RPC site over a table with one Deferred method the test completes by hand."""

    def __init__(self, max_concurrent: int) -> None:
        self.table = MethodTable()
        self.waiting: list[defer.Deferred[str]] = []
        self.tags: list[str] = []                 # the tag of each waiting call (requests may arrive in any order)
        self.cancelled = 0

        @self.table.method("slow", Param("tag", "str", "echoed"), summary="wait", result="tag", group="Test")
        def slow(ctx: Any, tag: str) -> defer.Deferred[str]:
            def cancel(_: Any) -> None:
                self.cancelled += 1
            d: defer.Deferred[str] = defer.Deferred(cancel)
            self.waiting.append(d)
            self.tags.append(tag)
            return d

        @self.table.method("boom", summary="fail", result="nothing", group="Test")
        def boom(ctx: Any) -> None:
            raise KeyError("a secret traceback line")

        @self.table.method("notjson", summary="bad result", result="nothing", group="Test")
        def notjson(ctx: Any) -> Any:
            return {"x": object()}

        @self.table.method("refuse", summary="RPCError", result="nothing", group="Test")
        def refuse(ctx: Any) -> Any:
            return defer.fail(RPCError(-5, "Block not found"))

        self.resource = RPCResource(None, reactor, self.table, Credentials([("u", "p")]), AllowList([]),
                                    reactor.seconds(), 1000, max_concurrent)
        self.resource.auth_failure_delay = 0.0
        self.port = reactor.listenTCP(0, RPCSite(self.resource, 1 << 20), interface="127.0.0.1")

    @property
    def number(self) -> int:
        return int(self.port.getHost().port)


def hang_up_after_request(port: int, body: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic("u", "p").encode()
                  + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.2)


@pytest_twisted.ensureDeferred
async def test_deferred_handlers_concurrency_cap_cancel_and_internal_errors() -> None:
    world = SlowWorld(max_concurrent=2)
    try:
        auth = basic("u", "p")
        one = {"jsonrpc": "2.0", "method": "slow", "params": ["a"], "id": 1}
        batch = [{"jsonrpc": "2.0", "method": "slow", "params": {"tag": "b"}, "id": 2},
                 {"jsonrpc": "2.0", "method": "slow", "params": ["c"], "id": 3}]
        first = defer.ensureDeferred(call_http(world.number, one, auth))
        second = defer.ensureDeferred(call_http(world.number, batch, auth))
        await wait_for(lambda: len(world.waiting) == 3, 10.0, "three calls waiting")
        status, headers, raw = await call_http(world.number, {"method": "slow", "params": ["d"], "id": 4}, auth)
        assert status == 429 and headers["retry-after"] == "1" and "rpc_max_concurrent" in raw.decode()
        assert sorted(world.tags) == ["a", "b", "c"]
        for d, tag in zip(world.waiting, world.tags, strict=True):   # the two requests race: either is first
            d.callback(tag)
        status, _, raw = await first
        assert status == 200 and json.loads(raw) == {"jsonrpc": "2.0", "result": "a", "id": 1}
        status, _, raw = await second
        assert status == 200 and [r["result"] for r in json.loads(raw)] == ["b", "c"]
        assert world.resource.in_flight == {}

        # A client that hangs up: its pending call is cancelled, and its slot is freed.
        await threads.deferToThread(hang_up_after_request, world.number,
                                    json.dumps({"method": "slow", "params": ["z"], "id": 5}).encode())
        await wait_for(lambda: world.cancelled == 1 and world.resource.in_flight == {}, 5.0, "the call cancelled")

        # An exception is -32603 "Internal error" and nothing else (the traceback stays in the node's log).
        status, _, raw = await call_http(world.number, {"method": "boom", "id": 6}, auth)
        assert status == 500 and json.loads(raw)["error"] == {"code": -32603, "message": "Internal error"}
        assert b"secret" not in raw and b"Traceback" not in raw
        status, _, raw = await call_http(world.number, {"jsonrpc": "2.0", "method": "notjson", "id": 7}, auth)
        assert status == 200 and json.loads(raw)["error"]["code"] == -32603
        status, _, raw = await call_http(world.number, {"method": "refuse", "id": 8}, auth)
        assert status == 500 and json.loads(raw)["error"] == {"code": -5, "message": "Block not found"}
    finally:
        for d in world.waiting:
            if not d.called:
                d.cancel()
        await world.port.stopListening()


# -- health ----------------------------------------------------------------------------------------
async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, headers, raw = await call_http(port, "", None, method="GET", path="/health")
    assert headers["content-type"] == "application/json"
    return status, json.loads(raw)


@pytest_twisted.ensureDeferred
async def test_health_is_200_on_a_running_devnet_and_503_when_halted(tmp_path: Path) -> None:
    dev = DevNode(tmp_path)
    try:
        await dev.start()
        await wait_for(lambda: dev.node.store.tip_height() >= 2, 20.0, "height 2")
        status, report = await health(dev.port)
        assert status == 200 and report["healthy"] and report["reasons"] == [] and report["single_validator"]
        assert report["height"] >= 2 and report["last_block_age_s"] <= report["stall_bound_s"]
        status, _, raw = await call_http(dev.port, {"method": "health", "id": 1}, dev.auth())
        assert status == 200 and json.loads(raw)["result"]["healthy"] is True
        dev.node.consensus.halt("operator test")
        status, report = await health(dev.port)
        assert status == 503 and "halted: operator test" in report["reasons"]
    finally:
        await dev.net.stop()


@pytest_twisted.ensureDeferred
async def test_health_is_503_when_consensus_cannot_progress(tmp_path: Path) -> None:
    dev = DevNode(tmp_path, validators=2)              # one of two validators: no quorum, no peers
    try:
        await dev.start()
        status, report = await health(dev.port)
        assert status == 503 and "no peers" in report["reasons"] and not report["single_validator"]
        bound = report["stall_bound_s"]
        assert bound < 5

        async def stalled() -> bool:
            status, report = await health(dev.port)
            return status == 503 and any(r.startswith("stalled since height 0 at ") for r in report["reasons"])

        deadline = time.monotonic() + bound + 5
        seen = False
        for _ in range(100):                            # bounded in count and time
            if await stalled():
                seen = True
                break
            if time.monotonic() > deadline:
                break
            await sleep(0.2)
        assert seen, "health never reported the stall"
        assert dev.node.store.tip_height() == 0
    finally:
        await dev.net.stop()


# -- the core handlers, called through the method table on a real node --------------------------------
def rpc_error(ctx: RPCContext, name: str, params: Any) -> RPCError:
    with pytest.raises(RPCError) as info:
        TABLE.call(ctx, name, params)
    return info.value


@pytest_twisted.ensureDeferred
async def test_core_methods_answer_and_refuse_bad_params(tmp_path: Path) -> None:
    dev = DevNode(tmp_path)
    try:
        await dev.start()
        await wait_for(lambda: dev.node.store.tip_height() >= 2, 20.0, "height 2")
        ctx = RPCContext(dev.node, reactor, reactor.seconds() - 5, "127.0.0.1")
        store = dev.node.store
        tip = TABLE.call(ctx, "getblockcount", [])
        assert isinstance(tip, int) and tip >= 2
        assert TABLE.call(ctx, "getblockhash", [0]) == dev.node.genesis.hash.hex()
        assert TABLE.call(ctx, "getblockhash", {"height": 1}) == store.block_hash_at(1).hex()
        assert store.height_of(bytes.fromhex(TABLE.call(ctx, "getbestblockhash", []))) >= tip
        assert 5 <= TABLE.call(ctx, "uptime", []) <= 60
        info = TABLE.call(ctx, "getblockchaininfo", [])
        assert set(info) >= {"chain", "blocks", "headers", "bestblockhash", "time", "mediantime",
                             "verificationprogress", "initialblockdownload", "size_on_disk", "warnings"}
        everything = TABLE.call(ctx, "help", [])
        assert "== Blockchain ==" in everything and "getblockhash height" in everything and "stop" in everything
        one = TABLE.call(ctx, "help", ["getblockhash"])
        assert one.startswith("getblockhash height") and "-8: height above the tip" in one
        assert TABLE.call(ctx, "help", ["nosuch"]) == "help: unknown command: nosuch"

        for params, code, says in [([10**6], INVALID_PARAMETER, "Block height out of range"),
                                   ([-1], INVALID_PARAMS, "height out of range"),
                                   ([1 << 80], INVALID_PARAMS, "height out of range"),
                                   (["1"], INVALID_PARAMS, "height must be an integer"),
                                   ([True], INVALID_PARAMS, "height must be an integer"),
                                   ([1.5], INVALID_PARAMS, "height must be an integer"),
                                   ([], INVALID_PARAMS, "missing parameter height"),
                                   ([1, 2], INVALID_PARAMS, "at most 1")]:
            err = rpc_error(ctx, "getblockhash", params)
            assert (err.code, says in err.message) == (code, True), (params, err.message)
        for name in ("getblockcount", "uptime", "getblockchaininfo", "stop"):
            assert rpc_error(ctx, name, [1]).code == INVALID_PARAMS
        assert rpc_error(ctx, "help", [5]).code == INVALID_PARAMS

        # While the store is closed (starting or stopping): -28, and health says why.
        closed = RPCContext(SimpleNamespace(store=None, rpc=None), reactor, 0.0)
        for name, params in (("getblockcount", []), ("getbestblockhash", []), ("getblockhash", [0]),
                             ("getblockchaininfo", [])):
            assert rpc_error(closed, name, params).code == IN_WARMUP
        assert rpc_error(closed, "stop", []).code == MISC_ERROR
        assert TABLE.call(closed, "health", [])["status"] == "starting"
    finally:
        await dev.net.stop()


# -- a real twistd process: the library reads it, ``stop`` ends it cleanly ---------------------------
@pytest.mark.slow
def test_rpc_stop_ends_a_twistd_devnet_cleanly(tmp_path: Path) -> None:
    base = free_port_block(2)
    datadir = tmp_path / "data"
    log = open(tmp_path / "node.log", "wb")  # noqa: SIM115 - the child writes it for its lifetime
    proc = subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "timecoin", "--datadir", str(datadir),
                             "--p2p-port", str(base), "--rpc-port", str(base + 1)], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        deadline, count = time.monotonic() + 20, -1
        while time.monotonic() < deadline and count < 2:       # bounded in time
            time.sleep(0.2)
            try:
                user, password = read_cookie(str(datadir))
                count = AuthServiceProxy(f"http://{user}:{password}@127.0.0.1:{base + 1}", timeout=5).getblockcount()
            except (OSError, ValueError, JSONRPCException):
                continue
        assert count >= 2, (tmp_path / "node.log").read_text()[-2000:]
        proxy = AuthServiceProxy(f"http://{user}:{password}@127.0.0.1:{base + 1}", timeout=5)
        assert proxy.stop() == "Timecoin server stopping"
        assert proc.wait(timeout=20) == 0
        assert not (datadir / ".cookie").exists()
        text = (tmp_path / "node.log").read_text()
        assert "Timecoin server stopping (RPC stop from 127.0.0.1)" in text and "Store closed" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
