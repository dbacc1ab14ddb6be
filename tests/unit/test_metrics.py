"""The metrics package without a network: the definitions table, docs and alert rules against what a node
exports, the scrape-time collector over a node whose state the test sets, the per-node registries, the
testnet's metrics ports and the default host.
"""
from __future__ import annotations

import collections
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest

from tests.metricscrape import Samples, parse, value
from timecoin.config import build_config
from timecoin.crypto import PrivateKey
from timecoin.errors import StoreError
from timecoin.ledger.block import CommitCertificate
from timecoin.ledger.validators import Validator, ValidatorSet
from timecoin.metrics.definitions import METRICS, exported_names, markdown_table
from timecoin.metrics.service import make_registry
from timecoin.testnet import TestnetError, check_ports, metrics_port, write_testnet
from timecoin.wire import messages as m

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
ALERTS = ROOT / "etc" / "timecoin-alerts.yml"
PROMETHEUS = ROOT / "etc" / "prometheus.yml"
KEYS = [PrivateKey(bytes([7, i + 1]) + b"\x22" * 30) for i in range(4)]
NAME = re.compile(r"\b((?:timecoin|process)_[a-z0-9_]+)")


class FakeStore:
    """Height 1 of a 4-validator chain: validator 3 missed the certificate, validator 2 equivocated."""

    def __init__(self) -> None:
        self.vs = ValidatorSet(Validator(k.address, k.public_key, 10 * (i + 1)) for i, k in enumerate(KEYS))
        self.block = SimpleNamespace(header=SimpleNamespace(round=2, timestamp=1000), txs=[],
                                     evidence=[SimpleNamespace(validator=KEYS[2].address)])
        self.cert = CommitCertificate(1, 2, b"\x01" * 32, tuple((k.address, b"s" * 64) for k in KEYS[:3]))
        self.closed = False
        self.map_size, self.used_bytes = 1 << 26, 1 << 20

    def tip_height(self) -> int:
        if self.closed:
            raise StoreError("the store is closed")
        return 1

    def validator_set(self, height: int) -> ValidatorSet:
        return self.vs

    def get_block(self, height: int) -> Any:
        return self.block

    def get_certificate(self, height: int) -> CommitCertificate:
        return self.cert


def conn(validator: bool, inbound: bool, state: str = "ready") -> Any:
    return SimpleNamespace(is_validator=validator, inbound=inbound, state=state)


def fake_node(**over: Any) -> Any:
    p2p = SimpleNamespace(
        connections={"a": conn(True, True), "b": conn(False, False), "c": conn(True, False, "hello")},
        traffic=collections.Counter({("in", int(m.MsgType.VOTE)): 3, ("out", int(m.MsgType.VOTE)): 2, ("in", 250): 1}),
        traffic_bytes=collections.Counter({("in", int(m.MsgType.VOTE)): 300, ("out", int(m.MsgType.VOTE)): 200}),
        accepted=collections.Counter({m.MsgType.VOTE: 2}), duplicates=collections.Counter({m.MsgType.VOTE: 1}),
        relayed=collections.Counter({m.MsgType.TX: 4}), charged=collections.Counter({"malformed_frame": 1}),
        bans=1, peers=SimpleNamespace(list_bans=lambda now: ["x"], score=lambda pid: {"a": -60, "b": 30}[pid]))
    pool = SimpleNamespace(size_bytes=123, rejected=collections.Counter({"duplicate": 2}))
    node = SimpleNamespace(
        reactor=SimpleNamespace(running=False, seconds=lambda: 0.0), peer_id="peer", key=KEYS[0],
        genesis=SimpleNamespace(chain_id="chain"), config=SimpleNamespace(network="testnet"),
        store=FakeStore(), consensus=SimpleNamespace(halted="why", on_commit=[], on_step=[]), p2p=p2p,
        mempool=_Pool(pool), sync=SimpleNamespace(manager=SimpleNamespace(progress=SimpleNamespace(
            running=True, blocks_per_s=12.5, target=99))))
    for k, v in over.items():
        setattr(node, k, v)
    return node


class _Pool:
    def __init__(self, ns: Any) -> None:
        self.size_bytes, self.rejected = ns.size_bytes, ns.rejected

    def __len__(self) -> int:
        return 2


def scrape_fake(node: Any) -> Samples:
    registry, _ = make_registry(node)
    return parse(generate_latest(registry).decode())


def test_the_collector_reads_each_part_of_the_node() -> None:
    s = scrape_fake(fake_node())
    assert value(s, "timecoin_consensus_height") == 1 and value(s, "timecoin_consensus_rounds") == 2
    assert value(s, "timecoin_consensus_validators") == 4 and value(s, "timecoin_consensus_validators_power") == 100
    assert value(s, "timecoin_consensus_validator_power") == 10
    assert value(s, "timecoin_consensus_missing_validators") == 1
    assert value(s, "timecoin_consensus_missing_validators_power") == 40
    assert value(s, "timecoin_consensus_byzantine_validators") == 1
    assert value(s, "timecoin_consensus_byzantine_validators_power") == 30
    assert value(s, "timecoin_consensus_halted") == 1
    assert value(s, "timecoin_p2p_peers", kind="validator", direction="inbound") == 1      # "hello" not counted
    assert value(s, "timecoin_p2p_peers", kind="observer", direction="outbound") == 1
    assert value(s, "timecoin_p2p_peers") == 2
    assert value(s, "timecoin_p2p_message_receive_total", message_type="vote") == 3
    assert value(s, "timecoin_p2p_message_receive_total", message_type="unknown") == 1
    assert value(s, "timecoin_p2p_message_send_bytes_total", message_type="vote") == 200
    assert value(s, "timecoin_p2p_relayed_messages_total", message_type="tx") == 4
    assert value(s, "timecoin_p2p_rejected_messages_total", reason="malformed_frame") == 1
    assert value(s, "timecoin_p2p_bans_total") == 1 and value(s, "timecoin_p2p_banned") == 1
    assert value(s, "timecoin_p2p_peer_reputation_bucket", le="-50.0") == 1                # only ready peers
    assert value(s, "timecoin_p2p_peer_reputation_bucket", le="+Inf") == 2
    assert value(s, "timecoin_mempool_size") == 2 and value(s, "timecoin_mempool_size_bytes") == 123
    assert value(s, "timecoin_mempool_rejected_txs_total", reason="duplicate") == 2
    assert value(s, "timecoin_sync_syncing") == 1 and value(s, "timecoin_sync_blocks_per_second") == 12.5
    assert value(s, "timecoin_sync_target_height") == 99
    assert value(s, "timecoin_store_used_bytes") == 1 << 20


def test_a_node_not_started_or_stopping_still_scrapes() -> None:
    s = scrape_fake(fake_node(store=None, p2p=None, mempool=None, sync=None))
    assert value(s, "timecoin_node_info") == 1 and "timecoin_consensus_height" not in s
    node = fake_node()
    node.store.closed = True                      # closed under a scrape: those parts are skipped
    s = scrape_fake(node)
    assert "timecoin_consensus_height" not in s and value(s, "timecoin_p2p_bans_total") == 1


def test_registries_are_per_node() -> None:
    a, b = fake_node(), fake_node()
    ra, ea = make_registry(a)
    rb, _ = make_registry(b)
    ea.committed(SimpleNamespace(header=SimpleNamespace(round=1, timestamp=1000), txs=[1, 2]))
    assert ra.get_sample_value("timecoin_consensus_txs_total") == 2
    assert rb.get_sample_value("timecoin_consensus_txs_total") == 0
    assert ra.get_sample_value("process_open_fds") is not None         # the ProcessCollector, in each


def test_events_time_intervals_and_steps() -> None:
    node = fake_node()
    registry, events = make_registry(node)
    events.hook(node.consensus)
    for ts in (1000, 2500, 2400):                  # a timestamp going back is not an interval
        node.consensus.on_commit[0](SimpleNamespace(header=SimpleNamespace(round=0, timestamp=ts), txs=[]))
    node.consensus.on_step[0]("prevote", 0.25)
    assert registry.get_sample_value("timecoin_consensus_block_interval_seconds_count") == 1
    assert registry.get_sample_value("timecoin_consensus_block_interval_seconds_sum") == 1.5
    assert registry.get_sample_value("timecoin_consensus_step_duration_seconds_sum", {"step": "prevote"}) == 0.25


def exported(samples: Samples) -> set[str]:
    return set(samples)


def test_every_definition_is_exported_and_every_export_is_defined() -> None:
    s = scrape_fake(fake_node())
    registry, events = make_registry(fake_node())
    events.stepped("propose", 0.1)          # a labelled histogram shows once it has a label
    s.update(parse(generate_latest(registry).decode()))
    wanted = {n for d in METRICS for n in exported_names(d)}
    assert wanted <= exported(s), wanted - exported(s)
    ours = {n for n in exported(s) if n.startswith("timecoin_") and not n.endswith("_created")}
    assert ours <= wanted, ours - wanted


def test_docs_list_every_metric_as_the_registry_defines_it() -> None:
    doc = DOC.read_text()
    assert markdown_table() in doc


def test_docs_show_the_alert_rules_as_shipped() -> None:
    assert "```yaml\n" + ALERTS.read_text() + "```" in DOC.read_text()


@pytest.mark.parametrize("path", [DOC, ALERTS], ids=["docs", "alerts"])
def test_every_metric_named_in_docs_and_alerts_is_exported(path: Path) -> None:
    s = scrape_fake(fake_node())
    registry, events = make_registry(fake_node())
    events.stepped("propose", 0.1)
    s.update(parse(generate_latest(registry).decode()))
    family_names = {d.name for d in METRICS}
    named = set(NAME.findall(path.read_text()))
    assert named, "no metric names found"
    if path == ALERTS:
        assert named <= exported(s), named - exported(s)          # PromQL sees the exported sample names
    else:
        assert named <= exported(s) | family_names, named - exported(s) - family_names


def test_alert_rules_cover_the_required_conditions() -> None:
    text = ALERTS.read_text()
    for alert, metric in (("TimecoinNodeDown", "up{"), ("TimecoinHeightStalled", "timecoin_consensus_height"),
                          ("TimecoinValidatorMissing", "timecoin_consensus_missing_validators"),
                          ("TimecoinBansSpike", "timecoin_p2p_bans_total")):
        block = text[text.index(f"alert: {alert}"):]
        block = block[:block.index("- alert:")] if "- alert:" in block else block
        assert metric in block, alert


def test_prometheus_config_scrapes_a_four_node_testnet(tmp_path: Path) -> None:
    layout = write_testnet(str(tmp_path / "tn"), 4)
    targets = re.findall(r'"127\.0\.0\.1:(\d+)"', PROMETHEUS.read_text())
    assert [int(t) for t in targets] == [n.metrics_port for n in layout.nodes]
    assert "timecoin-alerts.yml" in PROMETHEUS.read_text()


def test_testnet_nodes_get_distinct_metrics_ports(tmp_path: Path) -> None:
    layout = write_testnet(str(tmp_path / "tn"), 3, observers=1, base_port=30000)
    ports = [p for n in layout.nodes for p in (n.p2p_port, n.rpc_port, n.metrics_port)]
    assert len(set(ports)) == len(ports) == 12
    assert [n.metrics_port for n in layout.nodes] == [30008, 30009, 30010, 30011]
    assert metrics_port(30000, 4, 3) == 30011
    check_ports(65530, 2)                                        # 65530..65533, metrics 65534..65535
    with pytest.raises(TestnetError, match="need metrics ports 65536..65538"):
        check_ports(65530, 3)


def test_the_metrics_endpoint_is_loopback_by_default() -> None:
    for network in ("devnet", "testnet", "mainnet"):
        assert build_config({"network": network}).metrics_host == "127.0.0.1"
    assert [build_config({"network": n}).metrics_port for n in ("devnet", "testnet", "mainnet")] == [
        29334, 19334, 9334]
