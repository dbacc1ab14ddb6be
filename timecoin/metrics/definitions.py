"""Every metric the node exports: (name, type, labels, help), the one table docs and alert rules are checked against.

Names follow CometBFT's (consensus_height, p2p_peers, mempool_size ...) with the ``timecoin_`` prefix.
Counters are listed without their ``_total`` suffix, as prometheus_client names them; the exposition adds it.
"""
from __future__ import annotations

from typing import NamedTuple


class MetricDef(NamedTuple):
    name: str
    type: str                  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


NS = "timecoin"

METRICS: tuple[MetricDef, ...] = (
    MetricDef("timecoin_node_info", "gauge", ("peer_id", "chain_id", "network", "version"),
              "Always 1: who this node is, in labels."),
    # consensus
    MetricDef("timecoin_consensus_height", "gauge", (), "Height of the last committed block."),
    MetricDef("timecoin_consensus_rounds", "gauge", (), "Round at which the last committed block was decided."),
    MetricDef("timecoin_consensus_extra_rounds", "counter", (),
              "Rounds beyond round 0 needed by the blocks this node committed since it started."),
    MetricDef("timecoin_consensus_validators", "gauge", (), "Number of validators in the next height's set."),
    MetricDef("timecoin_consensus_validators_power", "gauge", (), "Total voting power of the next height's set."),
    MetricDef("timecoin_consensus_validator_power", "gauge", (),
              "This node's voting power in the next height's set (0: not a validator)."),
    MetricDef("timecoin_consensus_missing_validators", "gauge", (),
              "Validators whose precommit is absent from the last block's commit certificate."),
    MetricDef("timecoin_consensus_missing_validators_power", "gauge", (),
              "Voting power of the validators missing from the last commit certificate."),
    MetricDef("timecoin_consensus_byzantine_validators", "gauge", (),
              "Validators with equivocation evidence committed in the last block."),
    MetricDef("timecoin_consensus_byzantine_validators_power", "gauge", (),
              "Voting power of the validators with evidence in the last block."),
    MetricDef("timecoin_consensus_halted", "gauge", (), "1 while finalizing is halted for the operator (SPEC §7)."),
    MetricDef("timecoin_consensus_block_interval_seconds", "histogram", (),
              "Time between the last two committed blocks (their header timestamps)."),
    MetricDef("timecoin_consensus_step_duration_seconds", "histogram", ("step",),
              "Time the consensus engine spent in each step (propose, prevote, precommit; committed while "
              "a decided block is fetched)."),
    MetricDef("timecoin_consensus_txs", "counter", (),
              "Transactions in the blocks consensus committed since the node started."),
    # p2p
    MetricDef("timecoin_p2p_peers", "gauge", ("kind", "direction"),
              "Ready peer connections by kind (validator, observer) and direction (inbound, outbound)."),
    MetricDef("timecoin_p2p_message_receive", "counter", ("message_type",),
              "Messages received from peers and handled, by type."),
    MetricDef("timecoin_p2p_message_receive_bytes", "counter", ("message_type",),
              "Payload bytes of the messages received from peers and handled, by type."),
    MetricDef("timecoin_p2p_message_send", "counter", ("message_type",), "Messages sent to peers, by type."),
    MetricDef("timecoin_p2p_message_send_bytes", "counter", ("message_type",),
              "Payload bytes of the messages sent to peers, by type."),
    MetricDef("timecoin_p2p_accepted_messages", "counter", ("message_type",),
              "New valid gossip messages first received from peers, by type."),
    MetricDef("timecoin_p2p_duplicate_messages", "counter", ("message_type",),
              "Gossip messages received again (seen before), by type."),
    MetricDef("timecoin_p2p_relayed_messages", "counter", ("message_type",),
              "Gossip frames flooded to peers, by type."),
    MetricDef("timecoin_p2p_rejected_messages", "counter", ("reason",),
              "Misbehaviour charged to peers' reputation, by reason (malformed_frame, invalid_signature ...)."),
    MetricDef("timecoin_p2p_bans", "counter", (), "Peers this node banned since it started."),
    MetricDef("timecoin_p2p_banned", "gauge", (), "Bans in force (PeerIDs and addresses)."),
    MetricDef("timecoin_p2p_peer_reputation", "histogram", (), "Reputation scores of the connected peers."),
    # mempool
    MetricDef("timecoin_mempool_size", "gauge", (), "Transactions in the mempool."),
    MetricDef("timecoin_mempool_size_bytes", "gauge", (), "Encoded bytes of the transactions in the mempool."),
    MetricDef("timecoin_mempool_rejected_txs", "counter", ("reason",), "Transactions the mempool refused, by reason."),
    # sync
    MetricDef("timecoin_sync_syncing", "gauge", (), "1 while the node is catching up from peers."),
    MetricDef("timecoin_sync_blocks_per_second", "gauge", (), "Blocks applied per second by the current sync."),
    MetricDef("timecoin_sync_target_height", "gauge", (), "Height the current (or last) sync aims for."),
    # store
    MetricDef("timecoin_store_map_size_bytes", "gauge", (), "Size of the LMDB memory map (grows on demand)."),
    MetricDef("timecoin_store_used_bytes", "gauge", (), "Bytes of the LMDB map in use."),
)

BY_NAME: dict[str, MetricDef] = {d.name: d for d in METRICS}

# Reputation histogram buckets: the ban threshold is -50, scores live in [-100, 100].
REPUTATION_BUCKETS: tuple[float, ...] = (-100, -50, -20, 0, 20, 50, 100)
BLOCK_INTERVAL_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 60)
STEP_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
BUCKETS: dict[str, tuple[float, ...]] = {
    "timecoin_p2p_peer_reputation": REPUTATION_BUCKETS,
    "timecoin_consensus_block_interval_seconds": BLOCK_INTERVAL_BUCKETS,
    "timecoin_consensus_step_duration_seconds": STEP_BUCKETS,
}


def exported_names(d: MetricDef) -> tuple[str, ...]:
    """The sample names a definition appears as in /metrics (what PromQL and alert rules use)."""
    if d.type == "counter":
        return (d.name + "_total",)
    if d.type == "histogram" and BUCKETS[d.name][0] < 0:
        return (d.name + "_bucket",)      # negative buckets: no _sum/_count (the +Inf bucket is the count)
    if d.type == "histogram":
        return (d.name + "_bucket", d.name + "_sum", d.name + "_count")
    return (d.name,)


def markdown_table() -> str:
    """The metric list of docs/metrics.md (a test keeps the two equal)."""
    rows = ["| Name | Type | Labels | Help |", "|---|---|---|---|"]
    for d in METRICS:
        names = ", ".join(f"`{n}`" for n in exported_names(d))
        labels = ", ".join(f"`{label}`" for label in d.labels) or "—"
        rows.append(f"| {names} | {d.type} | {labels} | {d.help} |")
    return "\n".join(rows) + "\n"
