"""What only an event can tell: a commit's interval and txs, how long each consensus step took.

Hooked on the narrowest existing seams: ``ConsensusService.on_commit`` (the committed block) and
``ConsensusService.on_step`` (the step left and the seconds spent in it). Everything else is read at
scrape time by :mod:`timecoin.metrics.collector`.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from timecoin.metrics.definitions import BLOCK_INTERVAL_BUCKETS, BY_NAME, STEP_BUCKETS


def _help(name: str) -> str:
    return BY_NAME[name].help


class ConsensusEvents:
    """The event-driven consensus metrics of one node, in that node's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.block_interval = Histogram("timecoin_consensus_block_interval_seconds",
                                        _help("timecoin_consensus_block_interval_seconds"),
                                        buckets=BLOCK_INTERVAL_BUCKETS, registry=registry)
        self.step_duration = Histogram("timecoin_consensus_step_duration_seconds",
                                       _help("timecoin_consensus_step_duration_seconds"), ["step"],
                                       buckets=STEP_BUCKETS, registry=registry)
        self.txs = Counter("timecoin_consensus_txs", _help("timecoin_consensus_txs"), registry=registry)
        self.extra_rounds = Counter("timecoin_consensus_extra_rounds", _help("timecoin_consensus_extra_rounds"),
                                    registry=registry)
        self._last_timestamp_ms: int | None = None

    def hook(self, consensus: Any) -> None:
        consensus.on_commit.append(self.committed)
        consensus.on_step.append(self.stepped)

    def committed(self, block: Any) -> None:
        """A block consensus committed (or the last of a synced batch): its txs, rounds and interval."""
        header = block.header
        self.txs.inc(len(block.txs))
        self.extra_rounds.inc(max(header.round, 0))
        if self._last_timestamp_ms is not None and header.timestamp >= self._last_timestamp_ms:
            self.block_interval.observe((header.timestamp - self._last_timestamp_ms) / 1000)
        self._last_timestamp_ms = header.timestamp

    def stepped(self, step: str, seconds: float) -> None:
        self.step_duration.labels(step=step).observe(max(seconds, 0.0))
