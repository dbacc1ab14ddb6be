"""timecoin.client under asyncio and under Twisted, against a real HTTP server on 127.0.0.1.

txaio picks its framework once per process, so each framework runs in its own subprocess (the same
script, ``use_asyncio`` or ``use_twisted``); the server answers as a JSON-RPC node would (JSON-RPC 2.0
replies; one 401 for wrong credentials).
"""
from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from tests.rpcstub import StubHandler, serve

GOOD = "Basic " + base64.b64encode(b"__cookie__:secret").decode()


class FakeNode(StubHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        request = self.read_json()
        if self.headers.get("Authorization") != GOOD:
            self.send_json(401, None)
            return
        if request["method"] == "getblockcount":
            reply: dict[str, Any] = {"jsonrpc": "2.0", "result": 42, "id": request["id"]}
        elif request["method"] == "getblockhash":
            reply = {"jsonrpc": "2.0", "result": f"hash-of-{request['params'][0]}", "id": request["id"]}
        else:
            reply = {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": request["id"]}
        self.send_json(200, reply)


@pytest.fixture()
def port() -> Iterator[int]:
    with serve(FakeNode) as bound:
        yield bound


SCRIPT = textwrap.dedent('''
    import sys, txaio
    FRAMEWORK, PORT = sys.argv[1], int(sys.argv[2])
    getattr(txaio, "use_" + FRAMEWORK)()
    from timecoin.client import Client, ClientError, RPCError

    async def main():
        good = Client(f"http://127.0.0.1:{PORT}/", "__cookie__", "secret", timeout=10)
        out = [await good.getblockcount(), await good.getblockhash(7)]
        try:
            await good.call("nosuch")
        except RPCError as exc:
            out.append(exc.code)
        for client in (Client(f"http://127.0.0.1:{PORT}/", "__cookie__", "wrong", timeout=10),
                       Client("http://127.0.0.1:1/", "u", "p", timeout=10)):
            try:
                await client.getblockcount()
            except ClientError as exc:
                out.append(str(exc).split(":")[0])
        print(out)

    if FRAMEWORK == "asyncio":
        import asyncio
        asyncio.run(main())
    else:
        from twisted.internet import defer, task
        task.react(lambda reactor: defer.ensureDeferred(main()))
''')


@pytest.mark.parametrize("framework", ["asyncio", "twisted"])
def test_the_same_client_code_runs_under_asyncio_and_twisted(framework: str, port: int) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, framework, str(port)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([42, "hash-of-7", -32601, "authorization failed", "no answer from http"])


def test_raw_http_replies_are_parsed_strictly() -> None:
    from timecoin.client import ClientError, _parse_http
    assert _parse_http(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk", "u") == (200, b"{}")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert _parse_http(chunked + b"2\r\n{}\r\n0\r\n\r\n", "u") == (200, b"{}")
    for bad in (b"", b"garbage", b"HTTP/1.1 abc\r\n\r\n", chunked + b"zz\r\n", chunked + b"5\r\n{}"):
        with pytest.raises(ClientError):
            _parse_http(bad, "u")


def test_a_reply_for_another_request_or_not_json_rpc_is_refused() -> None:
    from timecoin.client import ClientError, RPCError, _result
    assert _result((200, b'{"result": 5, "error": null, "id": 3}'), 3) == 5
    with pytest.raises(RPCError) as err:
        _result((500, b'{"result": null, "error": {"code": -5, "message": "Block not found"}, "id": 3}'), 3)
    assert err.value.code == -5 and err.value.message == "Block not found"
    for status, body in ((200, b'{"result": 5, "id": 4}'), (200, b"[1]"), (502, b"<html>"),
                         (200, b'{"error": "x", "id": 3}')):
        with pytest.raises(ClientError):
            _result((status, body), 3)
