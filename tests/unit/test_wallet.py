"""Wallet commands: amounts as exact decimals, a tx signed locally with the node's chain id and pending nonce,
``--wait`` until final, and every failure one line with a non-zero exit. The node is a real HTTP server on
127.0.0.1 that checks each submitted tx as a node would (decode, signature, nonce, chain id)."""
from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.rpcstub import StubHandler, serve
from timecoin import crypto
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.rpc.render import amount as format_amount
from timecoin.wallet import WalletError, parse_amount

CHAIN = "timecoin-wallet-test"


@pytest.mark.parametrize(("text", "units"), [("1", 100_000_000), ("1.5", 150_000_000), ("0.00000001", 1),
                                             ("12.50000000", 1_250_000_000), ("007.1", 710_000_000)])
def test_amounts_are_exact_decimals(text: str, units: int) -> None:
    assert parse_amount(text) == units
    assert parse_amount(format_amount(units)) == units


@pytest.mark.parametrize("text", ["", ".", "1.000000001", "-1", "1e3", "0", "0.0", "1,5", "nan", "inf",
                                  "1..2", "99999999999999999999"])
def test_bad_amounts_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(WalletError):
        parse_amount(text)


class FakeNode(StubHandler):
    state: dict[str, Any] = {}

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        request = self.read_json()
        assert self.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
        st, method, params = self.state, request["method"], request["params"]
        result: Any = None
        error = None
        if method == "getblockchaininfo":
            result = {"chain": "devnet", "chain_id": CHAIN}
        elif method == "getaccount":
            result = {"nonce": 0, "next_nonce": st["nonce"]}
        elif method == "sendrawtransaction":
            tx = Transaction.decode(bytes.fromhex(params[0]))
            tx.verify_signature()
            assert tx.chain_id == CHAIN and tx.nonce == st["nonce"], (tx.chain_id, tx.nonce)
            if tx.amount > st["balance"]:
                error = {"code": -25, "message": "insufficient-funds"}
            else:
                st["nonce"] += 1
                st["sent"].append(tx)
                result = tx.id.hex()
        elif method == "gettransactionfinality":
            st["polls"] += 1
            result = ({"final": True, "height": 9, "blockhash": "ee" * 32} if st["polls"] > 2
                      else {"final": False, "where": "mempool"})
        elif method == "waitfornewblock":
            result = {"height": 9, "hash": "ee" * 32}
        self.send_json(200 if error is None else 500, {"result": result, "error": error, "id": request["id"]})


@pytest.fixture()
def node() -> Iterator[str]:
    FakeNode.state = {"nonce": 3, "balance": 10 * crypto.UNITS_PER_TIME, "sent": [], "polls": 0}
    with serve(FakeNode) as port:
        yield f"http://127.0.0.1:{port}/"


def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timecoin", args[0], "--rpc-url", url, "--rpc-user", "u",
                           "--rpc-password", "p", *args[1:]], capture_output=True, text=True, timeout=60)


@pytest.fixture()
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.pem"
    crypto.PrivateKey.generate().save(str(path))
    return path


def test_two_sends_in_a_row_sign_locally_with_the_nodes_chain_id_and_pending_nonces(node: str,
                                                                                   key_file: Path) -> None:
    to = crypto.encode_address(b"\x07" * 20, "devnet")
    first = run(node, "send", "--key", str(key_file), "--to", to, "--amount", "1.25", "--fee", "0.0001")
    second = run(node, "send", "--key", str(key_file), "--to", to, "--amount", "0.00000001")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = FakeNode.state["sent"]
    assert (a.nonce, b.nonce) == (3, 4)
    assert (a.kind, a.amount, a.fee, a.recipient) == (TxKind.TRANSFER, 125_000_000, 10_000, b"\x07" * 20)
    assert first.stdout.strip() == a.id.hex()


def test_wait_follows_the_tx_until_final_and_stake_has_no_recipient(node: str, key_file: Path) -> None:
    done = run(node, "stake", "--key", str(key_file), "--amount", "2", "--wait", "--wait-timeout", "30")
    assert done.returncode == 0, done.stderr
    tx = FakeNode.state["sent"][0]
    assert tx.kind == TxKind.STAKE and tx.amount == 2 * crypto.UNITS_PER_TIME
    assert done.stdout.splitlines() == [tx.id.hex(), f"final at height 9 in block {'ee' * 32}"]


@pytest.mark.parametrize(("args", "says"), [
    (("--to", "TIME0notanaddress", "--amount", "1"), "bad address"),
    (("--to", "TIME0x", "--amount", "1.000000001"), "more than 8 decimals"),
    (("--amount", "100"), "insufficient-funds"),
])
def test_every_failure_is_one_line_and_a_non_zero_exit(node: str, key_file: Path, args: tuple[str, ...],
                                                        says: str) -> None:
    if "--to" not in args:
        args = ("--to", crypto.encode_address(b"\x01" * 20, "devnet"), *args)
    done = run(node, "send", "--key", str(key_file), *args)
    assert done.returncode != 0 and says in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_an_unreachable_node_and_a_missing_key_are_one_line(key_file: Path, tmp_path: Path) -> None:
    to = crypto.encode_address(b"\x01" * 20, "devnet")
    done = run("http://127.0.0.1:1/", "send", "--key", str(key_file), "--to", to, "--amount", "1")
    assert done.returncode != 0 and "could not connect" in done.stderr and len(done.stderr.splitlines()) == 1
    done = run("http://127.0.0.1:1/", "send", "--key", str(tmp_path / "nope.pem"), "--to", to, "--amount", "1")
    assert done.returncode != 0 and "cannot read key file" in done.stderr
