"""JSON-RPC throughput: ``getblockcount`` and ``sendrawtransaction`` requests/s over HTTP (issue 12).

The node is the production service tree (one validator on a generated genesis with funded accounts, real
LMDB, its RPC server on 127.0.0.1, ``rpc_user``/``rpc_password`` auth), its consensus idle (a block an
hour) so the mempool keeps what it is sent. The client is ``http.client`` on one persistent connection in
a thread of the same process, one request at a time, as a wallet or an exchange's poller does.

Baseline, measured in the same run the same way: a ``twisted.web`` resource on the same reactor that
answers every POST with a constant JSON-RPC reply -- what HTTP, Twisted and the client cost by themselves.
The ratio is our requests/s over the baseline's. ``sendrawtransaction`` sends distinct pre-signed
transfers (64 senders x up to 64 nonces, the mempool's per-sender chain), so each is decoded, verified
and admitted.
"""
from __future__ import annotations

import base64
import http.client
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.web import resource, server

from benchmarks.suite import Figure, ratio_figure
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.sim import chaingen
from timecoin.sim.loopnet import Net, wait_for

USER, PASSWORD = "bench", "bench-password"
SENDERS = 64
WINDOW_S = 2.0


class _Constant(resource.Resource):
    """The baseline: any POST gets the same small JSON-RPC reply."""

    isLeaf = True
    body = json.dumps({"result": 1, "error": None, "id": 1}).encode()

    def render_POST(self, request: Any) -> bytes:  # noqa: N802 - twisted.web API
        request.setHeader(b"content-type", b"application/json")
        return self.body


def _loop(port: int, bodies: list[bytes], seconds: float | None) -> tuple[int, float, int]:
    """Send ``bodies`` in turn on one connection (for ``seconds``, or each once): (requests, elapsed, errors)."""
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": auth}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    done = errors = 0
    t0 = time.perf_counter()
    try:
        limit = len(bodies) if seconds is None else 10_000_000
        for i in range(limit):
            if seconds is not None and time.perf_counter() - t0 >= seconds:
                break
            conn.request("POST", "/", bodies[i % len(bodies)], headers)
            reply = json.loads(conn.getresponse().read())
            errors += reply.get("error") is not None
            done += 1
    finally:
        conn.close()
    return done, time.perf_counter() - t0, errors


def _body(method: str, params: list[Any]) -> bytes:
    return json.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}).encode()


def _signed_transfers(spec: chaingen.ChainSpec, count: int) -> list[bytes]:
    keys = list(spec.funded)
    out = []
    for i in range(count):
        key = keys[i % len(keys)]
        tx = Transaction.create(key, TxKind.TRANSFER, spec.genesis.chain_id, i // len(keys), 1_000, 1,
                                keys[(i + 1) % len(keys)].address)
        out.append(_body("sendrawtransaction", [tx.encoded.hex()]))
    return out


async def run(quick: bool) -> list[Figure]:
    base = Path(tempfile.mkdtemp(prefix="timecoin-bench-rpc-"))
    spec = chaingen.make_genesis(validators=1, chain_id="timecoin-bench-rpc", funded=SENDERS)
    net = Net(base, 1, genesis=spec.genesis, keys=list(spec.keys), block_interval="3600",
              timeout_propose="3600", rpc_user=USER, rpc_password=PASSWORD)
    baseline_port: Any = None
    try:
        await net.start(connect=False)
        node = net.nodes[0]
        await wait_for(lambda: getattr(node.rpc, "port", None), 10.0, "the RPC server listening")
        baseline_port = reactor.listenTCP(0, server.Site(_Constant()), interface="127.0.0.1")
        seconds = 0.5 if quick else WINDOW_S
        count_body = [_body("getblockcount", [])]
        base_n, base_s, _ = await threads.deferToThread(_loop, baseline_port.getHost().port, count_body, seconds)
        n, s, errors = await threads.deferToThread(_loop, node.rpc.port, count_body, seconds)
        if errors:
            raise RuntimeError(f"getblockcount failed {errors} times")
        baseline_rate = base_n / base_s
        figures = [ratio_figure("rpc.getblockcount", round(n / s), "requests/s", round(baseline_rate),
                                "requests/s, constant twisted.web reply")]
        txs = _signed_transfers(spec, 256 if quick else SENDERS * 64)
        n, s, errors = await threads.deferToThread(_loop, node.rpc.port, txs, None)
        if errors:
            raise RuntimeError(f"sendrawtransaction refused {errors} of {n} distinct valid txs")
        figures.append(ratio_figure("rpc.sendrawtransaction", round(n / s), "requests/s", round(baseline_rate),
                                    "requests/s, constant twisted.web reply"))
        return figures
    finally:
        if baseline_port is not None:
            await baseline_port.stopListening()
        await net.stop()
        shutil.rmtree(base, ignore_errors=True)
