"""Issue 14's push notifications against real in-process nodes (TLS on 127.0.0.1, LMDB in tmp_path).

A 2-validator network; a client of ``/ws`` (``timecoin.client.subscribe``: the Twisted flavour in this
process, the asyncio one in a child process) subscribed to a recipient's address receives the finalized
transfer; after a disconnect, more transfers, then a reconnect with ``from_height``, it receives exactly
what it missed. Wrong credentials are refused; bad messages get errors; ``blocknotify`` runs a command
per block with the hash as an argument.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
import txaio
from twisted.internet import threads

from tests.integration.test_rpc_acceptance import PASSWORD, ROOT, USER, rpc, run_cli
from tests.p2pnet import Net, make_keys, wait_for
from timecoin import crypto
from timecoin.client import Client, ClientError, subscribe
from timecoin.ledger.tx import Transaction, TxKind

txaio.use_twisted()
UNITS = crypto.UNITS_PER_TIME
NET = {"rpc_user": USER, "rpc_password": PASSWORD}


def ws_client(node: Any, password: str = PASSWORD) -> Client:
    return Client(f"http://127.0.0.1:{node.rpc.port}/", USER, password, timeout=10)


async def send_transfer(net: Net, port: int, nonce: int, recipient: bytes, amount: int) -> str:
    tx = Transaction.create(net.keys[0], TxKind.TRANSFER, net.genesis.chain_id, nonce, 1_000, amount, recipient)
    txid = await rpc(port, "sendrawtransaction", [tx.encoded.hex()])
    assert txid == tx.id.hex()
    return str(txid)


def final_on(net: Net, txid: str) -> bool:
    return all(n.store.tx_location(bytes.fromhex(txid)) is not None for n in net.nodes)


@pytest_twisted.ensureDeferred
async def test_address_feed_gets_the_transfer_and_resumes_from_a_height(tmp_path: Path) -> None:
    net = Net(tmp_path, 2, chain_id="timecoin-notify", **NET)
    node = net.nodes[0]
    recipient = make_keys(1, seed=99)[0].address
    addr = crypto.encode_address(recipient, "testnet")
    try:
        await net.start()
        await wait_for(lambda: min(net.heights()) >= 2, 30.0, "both at height 2")
        port = int(node.rpc.port or 0)
        got: list[dict[str, Any]] = []
        sub = await subscribe(ws_client(node), [{"op": "subscribe", "id": 1, "topic": "address", "address": addr},
                                                {"op": "subscribe", "id": 2, "topic": "newblock"}], got.append)
        first = await send_transfer(net, port, 0, recipient, 5 * UNITS)
        await wait_for(lambda: any(m.get("type") == "address" for m in got), 30.0, "the address event")
        [event] = [m for m in got if m.get("type") == "address"]
        assert event["txid"] == first and event["address"] == addr
        assert event["tx"]["to"] == addr and event["tx"]["amount"] == "5.00000000"
        assert node.store.tx_location(bytes.fromhex(first))[0] == event["height"]
        subscribed = [m for m in got if m.get("type") == "subscribed"]
        assert [m["id"] for m in subscribed] == [1, 2]
        blocks = [m for m in got if m.get("type") == "newblock"]
        assert [b["height"] for b in blocks] == list(range(blocks[0]["height"], blocks[-1]["height"] + 1))
        assert first in [t for b in blocks for t in b["txs"]]
        for b in blocks:
            assert node.store.block_hash_at(b["height"]).hex() == b["hash"]
        sub.close()
        await sub.closed

        # Missed while away: two more transfers, then more blocks.
        seen = event["height"]
        missed = [await send_transfer(net, port, 1, recipient, 1 * UNITS)]
        await wait_for(lambda: final_on(net, missed[0]), 30.0, "transfer 2 final")
        missed.append(await send_transfer(net, port, 2, recipient, 2 * UNITS))
        await wait_for(lambda: final_on(net, missed[1]), 30.0, "transfer 3 final")
        tip = node.store.tip_height()

        again: list[dict[str, Any]] = []
        sub = await subscribe(ws_client(node), [{"op": "subscribe", "topic": "address", "address": addr,
                                                 "from_height": seen + 1},
                                                {"op": "subscribe", "topic": "newblock", "from_height": seen}],
                              again.append)
        await wait_for(lambda: len([m for m in again if m.get("type") == "address"]) >= 2, 20.0, "the missed txs")
        await wait_for(lambda: any(m.get("type") == "newblock" and m["height"] >= tip + 2 for m in again), 20.0,
                       "live blocks after the replay")
        assert [m["txid"] for m in again if m.get("type") == "address"] == missed
        heights = [m["height"] for m in again if m.get("type") == "newblock"]
        assert heights == list(range(seen, heights[-1] + 1)), "a gap or a duplicate between replay and live"
        sub.close()
        await sub.closed
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_refused_and_bad_messages_get_errors(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, chain_id="timecoin-notify-auth", **NET)
    node = net.nodes[0]
    try:
        await net.start(connect=False)
        await wait_for(lambda: node.store.tip_height() >= 2, 20.0, "height 2")
        refused = None
        try:
            await subscribe(ws_client(node, password="wrong"), [], lambda m: None)
        except ClientError as exc:
            refused = str(exc)
        assert refused is not None and "401" in refused

        got: list[dict[str, Any]] = []
        sub = await subscribe(ws_client(node), [], got.append)
        tip = node.store.tip_height()
        bad = ['not json', '[1]', '{"op": "dance"}', '{"op": "subscribe", "topic": "weather"}',
               '{"op": "subscribe", "topic": "address", "address": "TIME0nope"}',
               '{"op": "subscribe", "topic": "tx", "txid": "zz"}',
               '{"op": "subscribe", "topic": "newblock", "from_height": 0}',
               f'{{"op": "subscribe", "topic": "newblock", "from_height": {tip + 1000}}}',
               '{"op": "unsubscribe", "sub": 12345}']
        for text in bad:
            sub.protocol.sendMessage(text.encode())
        await wait_for(lambda: len(got) >= len(bad), 10.0, "an answer to each bad message")
        assert [m["type"] for m in got] == ["error"] * len(bad), got
        assert "unknown topic" in got[3]["message"] and "invalid address" in got[4]["message"]
        assert "txid" in got[5]["message"] and "from_height" in got[6]["message"]

        # Still serving: a tx already final is sent at once, then the subscription ends.
        block = node.store.get_block(1)
        assert block is not None
        sub.send({"op": "subscribe", "topic": "newblock", "from_height": 1, "id": "n"})
        await wait_for(lambda: any(m.get("type") == "newblock" and m["height"] == 2 for m in got), 10.0, "replay")
        assert node.rpc.ws_factory.connections, "the connection was dropped"
        # The cap: the hub refuses a subscription past max_subscriptions on one connection.
        hub = node.namedServices["notify"].hub
        hub.max_subscriptions = 2
        sub.send({"op": "subscribe", "topic": "newblock"})
        sub.send({"op": "subscribe", "topic": "newblock", "id": "third"})
        await wait_for(lambda: any(m.get("id") == "third" for m in got), 10.0, "the third answer")
        [third] = [m for m in got if m.get("id") == "third"]
        assert third["type"] == "error" and "too many subscriptions" in third["message"]
        sub.close()
        await sub.closed
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_blocknotify_runs_the_command_with_each_hash(tmp_path: Path) -> None:
    out = tmp_path / "hashes.txt"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
    command = f"{sys.executable} -c \"{script}\" {out} %s"
    net = Net(tmp_path, 1, chain_id="timecoin-notify-bn", blocknotify=command)
    node = net.nodes[0]
    try:
        await net.start(connect=False)
        await wait_for(lambda: out.exists() and len(out.read_text().split()) >= 4, 30.0, "four hashes written")
        for line in out.read_text().split()[:4]:
            height = node.store.height_of(bytes.fromhex(line))
            assert height is not None and height >= 1, line
    finally:
        await net.stop()


ASYNCIO_SCRIPT = '''
import asyncio, json, sys, txaio
txaio.use_asyncio()
from timecoin.client import Client, subscribe
PORT, USER, PASSWORD, ADDR, FROM, WANT = sys.argv[1:7]

async def main():
    got = []
    done = asyncio.get_running_loop().create_future()
    def on(m):
        if m.get("type") == "subscribed":
            print("subscribed", flush=True)         # the parent sends the transfer once this is read
        if m.get("type") == "address":
            got.append([m["txid"], m["height"]])
            if len(got) >= int(WANT) and not done.done():
                done.set_result(None)
    client = Client(f"http://127.0.0.1:{PORT}/", USER, PASSWORD, timeout=10)
    request = {"op": "subscribe", "topic": "address", "address": ADDR}
    if int(FROM):
        request["from_height"] = int(FROM)
    sub = await subscribe(client, [request], on)
    await asyncio.wait_for(done, 40)
    sub.close()
    await asyncio.wait_for(sub.closed, 10)
    print(json.dumps(got), flush=True)

asyncio.run(main())
'''


def start_asyncio_client(port: int, addr: str, from_height: int, want: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", ASYNCIO_SCRIPT, str(port), USER, PASSWORD, addr,
                             str(from_height), str(want)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": ROOT})


def read_result(proc: subprocess.Popen[str]) -> list[list[Any]]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return list(json.loads(out.splitlines()[-1]))


def timecoin_send(port: int, key_file: str, to: str, amount: str) -> str:
    done = run_cli("send", "--rpc-url", f"http://127.0.0.1:{port}/", "--rpc-user", USER, "--rpc-password",
                   PASSWORD, "--key", key_file, "--to", to, "--amount", amount, "--wait", "--wait-timeout", "60")
    assert done.returncode == 0, f"timecoin send failed: {done.stdout}{done.stderr}"
    return done.stdout.split()[0]


@pytest_twisted.ensureDeferred
async def test_asyncio_client_gets_a_timecoin_send_transfer_and_what_it_missed(tmp_path: Path) -> None:
    """The issue's acceptance: an autobahn asyncio client subscribed to an address receives the finalized
    transfer sent by ``timecoin send``; after a reconnect with ``from_height`` it receives what it missed."""
    net = Net(tmp_path, 2, chain_id="timecoin-notify-aio", **NET)
    node = net.nodes[0]
    recipient = make_keys(1, seed=98)[0].address
    addr = crypto.encode_address(recipient, "testnet")
    key_file = str(tmp_path / "sender.key")
    net.keys[1].save(key_file)
    procs: list[subprocess.Popen[str]] = []
    try:
        await net.start()
        await wait_for(lambda: min(net.heights()) >= 2, 30.0, "both at height 2")
        port = int(node.rpc.port or 0)
        live = start_asyncio_client(port, addr, 0, 1)
        procs.append(live)
        line = await threads.deferToThread(live.stdout.readline) if live.stdout else ""
        assert line.strip() == "subscribed", line
        first = await threads.deferToThread(timecoin_send, port, key_file, addr, "3.5")
        [[txid, height]] = await threads.deferToThread(read_result, live)
        assert txid == first and node.store.tx_location(bytes.fromhex(first))[0] == height

        missed = []                                         # while no client is connected
        for amount in ("1", "2"):
            missed.append(await threads.deferToThread(timecoin_send, port, key_file, addr, amount))
        back = start_asyncio_client(port, addr, height + 1, 2)
        procs.append(back)
        got = await threads.deferToThread(read_result, back)
        assert [t for t, _ in got] == missed
        assert [h for _, h in got] == [node.store.tx_location(bytes.fromhex(t))[0] for t in missed]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        await net.stop()
