"""Issue 12 acceptance items over real HTTP against real in-process nodes (TLS on 127.0.0.1, LMDB in tmp_path).

* ``GET /health`` of a 4-node network turns 503 ("stalled") when 2 nodes go down and 200 again once they
  return. The stall bound is :func:`timecoin.rpc.core.stall_bound` of the node's own timeouts: with
  loopnet's FAST config on testnet defaults (message_delay 2 s, precision 0.5 s) it is about 10.6 s.
* ``timecoin stake`` (the real CLI, a child process, talking to a node's RPC with rpc_user/rpc_password)
  makes the observer a validator: a stake in block H changes the set of H + 2 (timecoin/ledger/state.py:
  "Set changes from block h take effect at h + 2"; ``next_validator_set``, and timecoin/store.py writes
  it under ``height + 2`` when block h is committed), which ``getvalidators`` shows, and the running
  observer node -- not restarted -- signs from H + 2 on. Its stake (20,000 TIME against 4 x 10,000) is
  large enough that no block from H + 2 on can be final without its precommit, so its signature is in
  every later commit.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import threads

from tests.p2pnet import Net, make_keys, wait_for
from timecoin import crypto
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.rpc.core import stall_bound

ROOT = str(Path(__file__).resolve().parents[2])        # this checkout's timecoin, in the CLI child too
USER, PASSWORD = "acceptance", "s3cret-pass"
CLI = "from timecoin.cli import main; main()"


# -- HTTP (blocking; run in a thread so the reactor keeps running the nodes) --------------------------
def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        conn.request(method, path, body=body, headers=headers)
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


async def get_health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await threads.deferToThread(http_request, port, "GET", "/health")
    return status, json.loads(body)


async def rpc(port: int, method: str, params: list[Any]) -> Any:
    body = json.dumps({"jsonrpc": "1.0", "id": "t", "method": method, "params": params}).encode()
    status, raw = await threads.deferToThread(http_request, port, "POST", "/", body, (USER, PASSWORD))
    reply = json.loads(raw)
    assert status == 200 and reply["error"] is None, f"{method}{params}: HTTP {status} {reply}"
    return reply["result"]


async def poll_health(port: int, want: int, timeout: float, what: str,
                      check: Any = None) -> dict[str, Any]:
    """GET /health every 0.25 s until it answers ``want`` (and ``check(body)``); bounded in time."""
    deadline = time.monotonic() + timeout
    last: tuple[int, dict[str, Any]] | None = None
    for _ in range(int(timeout / 0.25) + 2):
        last = await get_health(port)
        if last[0] == want and (check is None or check(last[1])):
            return last[1]
        if time.monotonic() > deadline:
            break
        await threads.deferToThread(time.sleep, 0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last /health: {last}")


# -- 1. health: 200 -> 503 stalled (2 of 4 down) -> 200 ---------------------------------------------
@pytest_twisted.ensureDeferred
async def test_health_turns_503_stalled_when_two_of_four_stop_and_200_when_they_return(tmp_path: Path) -> None:
    net = Net(tmp_path, 4, chain_id="timecoin-rpc-health")
    node0 = net.nodes[0]
    try:
        await net.start()
        assert node0.rpc.port, "node0's RPC is not listening"
        port = int(node0.rpc.port)
        await wait_for(lambda: min(net.heights()) >= 3, 30.0, "4 nodes at height 3")
        body = await poll_health(port, 200, 20.0, "node0 healthy")
        assert body["healthy"] is True and body["status"] == "ok" and body["reasons"] == []
        bound = stall_bound(node0.config)
        assert body["stall_bound_s"] == round(bound, 3)
        assert bound < 15.0, f"stall bound {bound} s is too long for FAST timeouts"

        # Two of four down: 2/4 of the power is not > 2/3, nothing is finalized; node0 still has a peer.
        for i in (2, 3):
            await net.nodes[i].stopService()
        stopped_at = time.monotonic()
        body = await poll_health(port, 503, bound + 20.0, "node0 reports stalled",
                                 check=lambda b: any(r.startswith("stalled since height") for r in b["reasons"]))
        waited = time.monotonic() - stopped_at
        assert body["healthy"] is False and body["status"] == "unhealthy"
        assert body["peers"] >= 1 and not any(r == "no peers" for r in body["reasons"])
        assert f"stalled since height {body['height']} " in body["reasons"][0] + " "
        assert body["last_block_age_s"] > bound
        assert waited < bound + 15.0
        stuck = body["height"]

        # The two return on their stores (as test_p2p_network does): finalizing resumes, 200 again.
        await net.restart([2, 3])
        body = await poll_health(port, 200, 45.0, "node0 healthy again", check=lambda b: b["height"] > stuck)
        assert body["healthy"] is True and body["reasons"] == [] and body["height"] > stuck
    finally:
        await net.stop()


# -- 2. timecoin stake -> getvalidators(H + 2) -> the new validator signs ---------------------------
UNITS = crypto.UNITS_PER_TIME
STAKE_TIME = 20_000            # 4 x 10,000 genesis stake + 20,000: no quorum (> 40,000) without the newcomer


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})


@pytest_twisted.ensureDeferred
async def test_timecoin_stake_makes_a_validator_two_heights_later_that_signs(tmp_path: Path) -> None:
    keys = make_keys(5, seed=12)
    newcomer = keys[4]
    genesis = Genesis.for_validators([k.public_key for k in keys[:4]], "timecoin-rpc-stake",
                                     extra=(GenesisAccount(newcomer.address, 25_000 * UNITS),))
    net = Net(tmp_path, 4, observers=1, genesis=genesis, keys=keys, rpc_user=USER, rpc_password=PASSWORD)
    observer = net.nodes[4]
    try:
        await net.start()
        await wait_for(lambda: min(net.heights()) >= 2, 30.0, "all five at height 2")
        port0, port1 = int(net.nodes[0].rpc.port or 0), int(net.nodes[1].rpc.port or 0)
        assert port0 and port1
        addr = crypto.encode_address(newcomer.address, "testnet")
        before = await rpc(port0, "getvalidators", [])
        assert addr not in [v["address"] for v in before["validators"]]
        assert len(before["validators"]) == 4

        key_file = str(tmp_path / "newcomer.key")
        newcomer.save(key_file)
        done = await threads.deferToThread(
            run_cli, "stake", "--rpc-url", f"http://127.0.0.1:{port1}/", "--rpc-user", USER,
            "--rpc-password", PASSWORD, "--key", key_file, "--amount", str(STAKE_TIME), "--wait",
            "--wait-timeout", "60")
        assert done.returncode == 0, f"timecoin stake failed: {done.stdout}{done.stderr}"
        lines = done.stdout.split()
        txid = lines[0]
        assert len(txid) == 64 and "final at height" in done.stdout

        # Another node says where it is final.
        await wait_for(lambda: net.nodes[0].store.tx_location(bytes.fromhex(txid)) is not None, 20.0, "tx on node0")
        fin = await rpc(port0, "gettransactionfinality", [txid])
        assert fin["final"] is True
        h = int(fin["height"])
        assert f"final at height {h} in block {fin['blockhash']}" in done.stdout

        # Set changes from block h take effect at h + 2 (ledger/state.py): not in set(h + 1), in set(h + 2).
        at_next = await rpc(port0, "getvalidators", [h + 1])
        assert addr not in [v["address"] for v in at_next["validators"]]
        at_two = await rpc(port0, "getvalidators", [h + 2])
        [entry] = [v for v in at_two["validators"] if v["address"] == addr]
        assert entry["power"] == STAKE_TIME * UNITS and entry["peer_id"] == observer.p2p.peer_id
        assert entry["jailed"] is False
        assert at_two["total_power"] == 4 * 10_000 * UNITS + STAKE_TIME * UNITS
        account = await rpc(port0, "getaccount", [addr])
        assert account is not None

        # The running observer (not restarted) signs: its precommit is in every commit from h + 2 on
        # (without it, 40,000 of 60,000 is not > 2/3), and in none before.
        top = h + 5
        await wait_for(lambda: min(net.heights()) >= top, 40.0, f"all five at height {top} (needs the newcomer)")
        for height in range(max(1, h - 1), top + 1):
            block_hash = await rpc(port0, "getblockhash", [height])
            block = await rpc(port0, "getblock", [block_hash, 1])
            signers = [s["validator"] for s in block["commit"]["signatures"]]
            if height >= h + 2:
                assert addr in signers, f"the new validator did not sign block {height}: {signers}"
            else:
                assert addr not in signers, f"signed block {height} before it was a validator"
        again = await rpc(port0, "getvalidators", [])
        assert addr in [v["address"] for v in again["validators"]]
    finally:
        await net.stop()


# -- 3. timecoin.client under asyncio and Twisted reads a real node ----------------------------------
CLIENT_SCRIPT = '''
import json, sys, txaio
FRAMEWORK, DATADIR, PORT, GENESIS = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
getattr(txaio, "use_" + FRAMEWORK)()
from timecoin.client import Client, RPCError
from timecoin.ledger.genesis import Genesis
from timecoin.ledger.proof import ProofError, Trusted

async def main():
    client = Client.from_datadir(DATADIR, port=PORT, timeout=10)      # the node's cookie
    count = await client.getblockcount()
    best = await client.getbestblockhash()
    block = await client.getblock(best, 1)
    one = await client.getblock(await client.getblockhash(1), 1)
    try:
        await client.getblock("00" * 32, 1)
        missing = None
    except RPCError as exc:
        missing = exc.code
    genesis = Genesis.load(GENESIS)
    verified = await client.verified_finality(1, Trusted.from_genesis(genesis))
    other = Genesis.for_validators([genesis.validators().validators[0].pubkey], "another-chain")
    try:
        await client.verified_finality(1, Trusted.from_genesis(other))
        refused = None
    except ProofError as exc:
        refused = str(exc)
    print(json.dumps({"count": count, "best": best, "block_height": block["height"], "block_hash": block["hash"],
                      "one": one["height"], "commit": len(one["commit"]["signatures"]), "missing": missing,
                      "verified": [verified.height, verified.block_hash.hex()], "refused": refused}))

if FRAMEWORK == "asyncio":
    import asyncio
    asyncio.run(main())
else:
    from twisted.internet import defer, task
    task.react(lambda reactor: defer.ensureDeferred(main()))
'''


def run_client(framework: str, datadir: str, port: int, genesis: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, framework, datadir, str(port), genesis],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})


@pytest_twisted.ensureDeferred
async def test_client_library_reads_a_real_node_under_asyncio_and_twisted(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, chain_id="timecoin-rpc-client")
    node = net.nodes[0]
    try:
        await net.start(connect=False)
        await wait_for(lambda: node.store.tip_height() >= 2, 20.0, "a single validator at height 2")
        port, datadir = int(node.rpc.port or 0), str(node.config.datadir)
        genesis_file = str(tmp_path / "genesis.json")
        Path(genesis_file).write_text(net.genesis.to_json())
        assert port
        for framework in ("asyncio", "twisted"):
            done = await threads.deferToThread(run_client, framework, datadir, port, genesis_file)
            assert done.returncode == 0, f"{framework}: {done.stderr}"
            out = json.loads(done.stdout)
            assert out["count"] >= 2 and out["block_height"] >= out["count"], (framework, out)
            # The tip may move between calls; the block read by hash is that hash, and stored on the node.
            assert out["block_hash"] == out["best"]
            assert node.store.block_hash_at(out["block_height"]).hex() == out["best"]
            assert out["one"] == 1 and out["commit"] == 1
            assert out["missing"] == -5, (framework, out)
            # The proof is checked by the client against the genesis it holds: the node is not trusted.
            assert out["verified"] == [1, node.store.block_hash_at(1).hex()], (framework, out)
            assert out["refused"], (framework, out)
    finally:
        await net.stop()
