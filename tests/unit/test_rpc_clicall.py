"""``timecoin rpc`` against a real HTTP server on 127.0.0.1: cookie auth, typed arguments, output, exit codes.

The server here is the standard library's, answering as a JSON-RPC node would (the node's own server is
tested in tests/integration); each test runs the real console entry point as a subprocess.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.rpcstub import StubHandler, serve

COOKIE_PASSWORD = "ab" * 32


class FakeNode(StubHandler):
    seen: list[dict[str, Any]] = []
    replies: dict[str, Any] = {}

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        expected = "Basic " + base64.b64encode(f"__cookie__:{COOKIE_PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="jsonrpc"')
            self.end_headers()
            return
        request = self.read_json()
        self.seen.append(request)
        result, error = self.replies.get(request["method"], (None, {"code": -32601, "message": "Method not found"}))
        self.send_json(200 if error is None else 500, {"result": result, "error": error, "id": request["id"]})


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    datadir = tmp_path / "data"
    datadir.mkdir()
    (datadir / ".cookie").write_text(f"__cookie__:{COOKIE_PASSWORD}")
    FakeNode.seen = []
    FakeNode.replies = {
        "getblockcount": (42, None),
        "getblockhash": ("cd" * 32, None),
        "getblock": ({"height": 3, "tx": []}, None),
        "getmempoolinfo": (None, None),
        "getbalance": (None, {"code": -5, "message": "Invalid address"}),
    }
    with serve(FakeNode) as port:
        yield datadir, port


def rpc(datadir: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timecoin", "rpc", "--rpc-url", f"http://127.0.0.1:{port}/",
                           "--datadir", str(datadir), *args], capture_output=True, text=True, timeout=60)


def test_the_cookie_is_read_and_results_print_like_bitcoin_cli(node: tuple[Path, int]) -> None:
    datadir, port = node
    done = rpc(datadir, port, "getblockcount")
    assert done.returncode == 0 and done.stdout == "42\n", done.stderr
    done = rpc(datadir, port, "getblock", "cd" * 32, "2")
    assert done.returncode == 0 and json.loads(done.stdout) == {"height": 3, "tx": []}
    done = rpc(datadir, port, "getmempoolinfo")
    assert done.returncode == 0 and done.stdout == ""            # null prints nothing
    assert FakeNode.seen[0] == {"jsonrpc": "1.0", "id": "timecoin-cli", "method": "getblockcount", "params": []}


def test_arguments_are_typed_by_the_method_table_or_as_json(node: tuple[Path, int]) -> None:
    datadir, port = node
    rpc(datadir, port, "getblockhash", "7")
    rpc(datadir, port, "-named", "getblock", "blockhash=" + "12" * 32, "verbosity=0")
    rpc(datadir, port, "nosuch", "true", "x", "[1, 2]")
    assert FakeNode.seen[0]["params"] == [7]
    assert FakeNode.seen[1]["params"] == {"blockhash": "12" * 32, "verbosity": 0}
    assert FakeNode.seen[2]["params"] == [True, "x", [1, 2]]


def test_an_rpc_error_prints_code_and_message_and_sets_the_exit_status(node: tuple[Path, int]) -> None:
    datadir, port = node
    done = rpc(datadir, port, "getbalance", "nope")
    assert done.returncode == 5
    assert done.stderr == "error code: -5\nerror message:\nInvalid address\n"
    done = rpc(datadir, port, "nosuchmethod")
    assert done.returncode == 32601 % 256 and "error code: -32601" in done.stderr


def test_wrong_credentials_no_server_and_no_cookie_are_one_line_and_exit_1(node: tuple[Path, int],
                                                                             tmp_path: Path) -> None:
    datadir, port = node
    (datadir / ".cookie").write_text("__cookie__:" + "00" * 32)
    done = rpc(datadir, port, "getblockcount")
    assert done.returncode == 1 and done.stderr.startswith("error: authorization failed"), done.stderr
    done = subprocess.run([sys.executable, "-m", "timecoin", "rpc", "--rpc-url", "http://127.0.0.1:1/",
                           "--rpc-user", "u", "--rpc-password", "p", "getblockcount"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("error: could not connect"), done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = rpc(empty, port, "getblockcount")
    assert done.returncode == 1 and "no cookie file" in done.stderr and "Traceback" not in done.stderr
