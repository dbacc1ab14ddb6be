"""A whole network restarted while a commit was half-propagated must not wait for the sync loop.

Found by the issue-15 benchmarks: 4 validator processes stopped while two had committed height h and two
had not came back with the two at h+1 unable to form a quorum and the two at h never told of block h+1
(nodes at h+1 no longer gossip h's votes); the chain stood still until the SyncCoordinator's 30 s loop.
A peer seen one height ahead for longer than a propagation delay now triggers sync at once.
"""
from __future__ import annotations

from timecoin.sim.cluster.cluster import Cluster


def _split(c: Cluster) -> bool:
    hs = sorted(c.heights())
    return hs[0] == hs[1] and hs[2] == hs[3] == hs[1] + 1 and hs[0] > 3


def test_a_network_restarted_mid_commit_resumes_within_seconds_not_a_sync_interval() -> None:
    c = Cluster(4, seed=5, config={"sync_interval": "30"})
    try:
        c.start_all()
        c.run_for(6.0, stop=lambda: _split(c))
        assert _split(c), f"no half-propagated commit reached: {c.heights()}"
        at_split = max(c.heights())
        for sn in c.nodes:
            c.crash(sn)
        c.run_for(0.5)
        for sn in c.nodes:
            c.start(sn)
        c.run_for(5.0)                    # well under sync_interval (30 s)
        assert min(c.heights()) >= at_split + 5, c.heights()
    finally:
        c.close()
