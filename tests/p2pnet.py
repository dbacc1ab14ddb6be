"""Re-exports :mod:`timecoin.sim.loopnet` (the in-process loopback world tests and benchmarks share)."""
from timecoin.sim.loopnet import (
    FAST,
    Net,
    RawPeer,
    banned,
    connect,
    connect_ready,
    make_keys,
    node_config,
    score,
    sleep,
    wait_for,
)

__all__ = ["FAST", "Net", "RawPeer", "banned", "connect", "connect_ready", "make_keys", "node_config", "score",
           "sleep", "wait_for"]
