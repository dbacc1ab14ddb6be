"""4 validator processes under load: finalized tx/s and submit-to-final latency (issue 15 target 2).

The network is the ``testnet`` part's (``timecoin.bench.localnet.LocalNet``: 4 ``twistd`` processes on
free loopback ports, ``block_interval`` 0, ``max_block_txs`` 1,000 as genesis sets it). The load is
``timecoin bench load``'s generator (:mod:`timecoin.bench.load`): fresh senders funded from the validators'
genesis balances, 1-unit transfers pre-signed and sent in JSON-RPC batches over keep-alive connections to
all four nodes at a fixed rate (3,000 tx/s for 10 s; ``--quick`` 200 tx/s for 3 s), latency from just
before a tx's batch is sent until node 0 shows it in a finalized block (polled every 20 ms).

Baselines: raw libsecp256k1 verifies/s on one core for the tx/s figure (every node verifies every tx),
and the generator's own ceiling, measured against a stub ``twisted.web`` resource on this reactor that
answers every batch at once with a canonical reply (the generator must not be what limits the run).
"""
from __future__ import annotations

import tempfile
from typing import Any

from twisted.internet import reactor, threads
from twisted.web import resource, server

from benchmarks.baselines import secp_verifies_per_s
from benchmarks.suite import Figure, value_figure
from timecoin.bench.load import LoadReport, LoadSettings, generator_max_rate, run_load
from timecoin.bench.localnet import LocalNet
from timecoin.rpc.clicall import Endpoint

NODES = 4


class _StubRPC(resource.Resource):
    """Answers a batch of n sendrawtransaction calls with n results (replies cached by n)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[int, bytes] = {}

    def render_POST(self, request: Any) -> bytes:  # noqa: N802 - twisted.web API
        n = request.content.read().count(b'"method"')
        reply = self.replies.get(n)
        if reply is None:
            reply = ("[" + ",".join(f'{{"result":"{"0" * 64}","error":null,"id":{i}}}' for i in range(n))
                     + "]").encode()
            self.replies[n] = reply
        request.setHeader(b"content-type", b"application/json")
        return reply


def _run_network(rate: float, duration: float) -> LoadReport:
    with tempfile.TemporaryDirectory(prefix="tc-bench-load-") as folder:
        net = LocalNet(folder, NODES)
        try:
            net.start()
            net.wait_height(3, 60.0)
            return run_load(net.endpoints, net.validator_keys(), LoadSettings(rate=rate, duration=duration))
        finally:
            codes = net.stop()
            bad = {k: v for k, v in codes.items() if v != 0}
            if bad:
                raise RuntimeError(f"nodes did not stop cleanly after SIGTERM: {bad}")


async def run(quick: bool) -> list[Figure]:
    rate, duration = (200.0, 3.0) if quick else (3000.0, 10.0)
    port = reactor.listenTCP(0, server.Site(_StubRPC()), interface="127.0.0.1")
    try:
        stub = Endpoint("127.0.0.1", port.getHost().port, "stub", "stub")
        batch = LoadSettings(rate=rate, duration=duration).batch_size(NODES)
        ceiling = await threads.deferToThread(generator_max_rate, stub, 4_000 if quick else 20_000,
                                              max(batch, 50), NODES)
    finally:
        await port.stopListening()
    report = await threads.deferToThread(_run_network, rate, duration)
    verifies = secp_verifies_per_s(0.3 if quick else 1.0)
    tx_s = value_figure("load.finalized_tx_per_s", report.finalized_tx_per_s, "tx/s", at_least=3000)
    tx_s.baseline, tx_s.baseline_unit = round(verifies, 1), "raw secp256k1 verifies/s (one core)"
    tx_s.ratio = round(report.finalized_tx_per_s / verifies, 4)
    sub = value_figure("load.submitted_tx_per_s", report.submit_tx_per_s, "tx/s")
    sub.baseline, sub.baseline_unit = round(ceiling, 1), "tx/s the generator sends to a stub"
    sub.ratio = round(report.submit_tx_per_s / ceiling, 4) if ceiling else None
    return [
        tx_s,
        value_figure("load.latency_p50", report.latency_ms["p50"], "ms", at_most=1000),
        value_figure("load.latency_p99", report.latency_ms["p99"], "ms"),
        sub,
        value_figure("load.finalized_fraction", round(report.finalized / max(1, report.submitted), 4), "of submitted"),
        value_figure("load.generator_max_tx_per_s", round(ceiling, 1), "tx/s", at_least=3 * rate),
    ]
