"""Read the node's own numbers at scrape time (no counters threaded through the code).

prometheus_client's Twisted resource renders /metrics in a reactor thread-pool thread, while the node's
state belongs to the reactor thread: :meth:`NodeCollector.collect` therefore gathers on the reactor
thread (``callFromThread``) and waits a bounded time, so a scrape never reads a dict being changed.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.python import threadable

from timecoin import __version__
from timecoin.errors import TimecoinError
from timecoin.metrics.definitions import BY_NAME, REPUTATION_BUCKETS
from timecoin.wire import messages as m

GATHER_TIMEOUT = 5.0          # seconds a scrape waits for the reactor thread


def _gauge(name: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, BY_NAME[name].help, labels=list(labels or {}))
    fam.add_metric(list((labels or {}).values()), value)
    return fam


def _counter_by(name: str, label: str, counts: Iterable[tuple[str, float]]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, BY_NAME[name].help, labels=[label])
    for key, value in sorted(counts):
        fam.add_metric([key], value)
    return fam


def type_name(code: int) -> str:
    try:
        return m.MsgType(code).name.lower()
    except ValueError:
        return "unknown"


def histogram(name: str, values: list[float], buckets: tuple[float, ...]) -> HistogramMetricFamily:
    """A histogram of values known at scrape time (e.g. the connected peers' scores)."""
    cumulative = [(str(float(b)), float(sum(1 for v in values if v <= b))) for b in buckets]
    cumulative.append(("+Inf", float(len(values))))
    fam = HistogramMetricFamily(name, BY_NAME[name].help)
    fam.add_metric([], cumulative, sum_value=float(sum(values)))
    return fam


class NodeCollector(Collector):
    """The scrape-time metrics of one node (consensus, p2p, mempool, sync, store)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        reactor = self.node.reactor
        if threadable.isInIOThread() or reactor is None or not getattr(reactor, "running", False):
            return iter(self.gather())
        return iter(_on_reactor(reactor, self.gather, GATHER_TIMEOUT))

    def describe(self) -> list[Metric]:
        return []             # no describe-time scrape: the registry must not call collect() on register

    def gather(self) -> list[Metric]:
        out: list[Metric] = [self._info()]
        for part in (self._consensus, self._p2p, self._mempool, self._sync, self._store):
            try:
                out.extend(part())
            except TimecoinError:     # the store closed under us (the node stopping): skip that part
                continue
        return out

    def _info(self) -> Metric:
        node = self.node
        return _gauge("timecoin_node_info", 1, {"peer_id": node.peer_id, "chain_id": node.genesis.chain_id,
                                                "network": node.config.network, "version": __version__})

    def _consensus(self) -> list[Metric]:
        node, store = self.node, self.node.store
        if store is None:
            return []
        tip = store.tip_height()
        out: list[Metric] = [_gauge("timecoin_consensus_height", tip)]
        vs = store.validator_set(tip + 1)
        if vs is not None:
            out += [_gauge("timecoin_consensus_validators", len(vs)),
                    _gauge("timecoin_consensus_validators_power", vs.total_power),
                    _gauge("timecoin_consensus_validator_power", vs.power_of(node.key.address))]
        halted = getattr(node.consensus, "halted", None)
        out.append(_gauge("timecoin_consensus_halted", 1 if halted else 0))
        block, cert, last_vs = store.get_block(tip), store.get_certificate(tip), store.validator_set(tip)
        if block is None or tip == 0:
            return out
        out.append(_gauge("timecoin_consensus_rounds", block.header.round))
        if cert is not None and last_vs is not None:
            signed = {address for address, _ in cert.signatures}
            missing = [v for v in last_vs.validators if v.address not in signed]
            out += [_gauge("timecoin_consensus_missing_validators", len(missing)),
                    _gauge("timecoin_consensus_missing_validators_power", sum(v.power for v in missing))]
        if last_vs is not None:
            byzantine = {ev.validator for ev in block.evidence}
            out += [_gauge("timecoin_consensus_byzantine_validators", len(byzantine)),
                    _gauge("timecoin_consensus_byzantine_validators_power",
                           sum(last_vs.power_of(a) for a in byzantine))]
        return out

    def _p2p(self) -> list[Metric]:
        p2p = self.node.p2p
        if p2p is None:
            return []
        peers = GaugeMetricFamily("timecoin_p2p_peers", BY_NAME["timecoin_p2p_peers"].help,
                                  labels=["kind", "direction"])
        counts = {(k, d): 0 for k in ("validator", "observer") for d in ("inbound", "outbound")}
        for conn in p2p.connections.values():
            if conn.state == "ready":
                kind = "validator" if conn.is_validator else "observer"
                counts[(kind, "inbound" if conn.inbound else "outbound")] += 1
        for (kind, direction), n in counts.items():
            peers.add_metric([kind, direction], n)
        out: list[Metric] = [peers]
        for name, direction, table in (("timecoin_p2p_message_receive", "in", p2p.traffic),
                                       ("timecoin_p2p_message_receive_bytes", "in", p2p.traffic_bytes),
                                       ("timecoin_p2p_message_send", "out", p2p.traffic),
                                       ("timecoin_p2p_message_send_bytes", "out", p2p.traffic_bytes)):
            out.append(_counter_by(name, "message_type", _by_type(
                (code, n) for (d, code), n in table.items() if d == direction)))
        for name, table in (("timecoin_p2p_accepted_messages", p2p.accepted),
                            ("timecoin_p2p_duplicate_messages", p2p.duplicates),
                            ("timecoin_p2p_relayed_messages", p2p.relayed)):
            out.append(_counter_by(name, "message_type", _by_type((int(t), n) for t, n in table.items())))
        out.append(_counter_by("timecoin_p2p_rejected_messages", "reason", p2p.charged.items()))
        out.append(CounterMetricFamily("timecoin_p2p_bans", BY_NAME["timecoin_p2p_bans"].help, value=p2p.bans))
        if p2p.peers is not None:
            now = self.node.reactor.seconds()
            out.append(_gauge("timecoin_p2p_banned", len(p2p.peers.list_bans(now))))
            scores = [float(p2p.peers.score(pid)) for pid, c in p2p.connections.items() if c.state == "ready"]
            out.append(histogram("timecoin_p2p_peer_reputation", scores, REPUTATION_BUCKETS))
        return out

    def _mempool(self) -> list[Metric]:
        pool = self.node.mempool
        if pool is None:
            return []
        return [_gauge("timecoin_mempool_size", len(pool)), _gauge("timecoin_mempool_size_bytes", pool.size_bytes),
                _counter_by("timecoin_mempool_rejected_txs", "reason", pool.rejected.items())]

    def _sync(self) -> list[Metric]:
        sync = self.node.sync
        if sync is None or self.node.store is None:
            return []
        progress = sync.manager.progress
        return [_gauge("timecoin_sync_syncing", 1 if progress.running else 0),
                _gauge("timecoin_sync_blocks_per_second", progress.blocks_per_s),
                _gauge("timecoin_sync_target_height", progress.target)]

    def _store(self) -> list[Metric]:
        store = self.node.store
        if store is None:
            return []
        return [_gauge("timecoin_store_map_size_bytes", store.map_size),
                _gauge("timecoin_store_used_bytes", store.used_bytes)]


def _by_type(items: Iterable[tuple[int, float]]) -> list[tuple[str, float]]:
    out: dict[str, float] = {}
    for code, n in items:
        key = type_name(code)
        out[key] = out.get(key, 0) + n
    return list(out.items())


def _on_reactor(reactor: Any, fn: Callable[[], list[Metric]], timeout: float) -> list[Metric]:
    """Run ``fn`` on the reactor thread and wait at most ``timeout`` s (a stopping reactor: no metrics)."""
    done = threading.Event()
    box: list[list[Metric]] = []

    def run() -> None:
        try:
            box.append(fn())
        finally:
            done.set()

    reactor.callFromThread(run)
    if not done.wait(timeout) or not box:
        return []
    return box[0]
