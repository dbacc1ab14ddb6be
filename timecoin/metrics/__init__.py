"""Prometheus metrics (issue 14): one registry per node, served on ``metrics_host:metrics_port`` at /metrics.

``definitions`` names every metric (CometBFT's names with the ``timecoin_`` prefix), ``collector`` reads
the node's own numbers at scrape time, ``events`` counts what only an event can tell (commit intervals,
step durations), and ``service`` is the listener in the node's service tree.
"""
