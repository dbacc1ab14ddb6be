"""``external_address`` on real addresses: a node bound to 0.0.0.0 tells its peers the address to dial.

node0 (a validator) binds 0.0.0.0 and advertises an address of its namespace that no configuration
names; it dials only node2 (an observer). node1 knows only node2 too: it can reach node0 only by
learning that address from node2's peer exchange and dialing it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests import netnsfixture
from tests.netnsfixture import NsNet
from timecoin.sim.netns import Lab

pytestmark = pytest.mark.slow

MakeLab = Callable[[Sequence[str]], Lab]
netns_lab = netnsfixture.netns_lab                        # the fixture, for this module's tests


def test_a_node_bound_to_0_0_0_0_advertises_its_external_address_and_a_peer_dials_it(
        netns_lab: MakeLab, tmp_path: Path) -> None:
    lab = netns_lab(["node0", "node1", "node2"])
    net = NsNet(lab, tmp_path / "net", 2, observers=1, bootstrap={0: [2], 1: [2], 2: []})
    external = lab.add_addresses("node0", 1)[0]
    node0 = net.node(0)
    want = f"/ip4/{external}/tcp/{node0.p2p_port}/p2p/{node0.peer_id}"
    try:
        net.start(2)
        net.start(0, "--p2p-host", "0.0.0.0", "--external-address", external)
        net.wait_until(lambda: any(p["id"] == node0.peer_id for p in net.rpc(2, "getpeerinfo")), 30.0,
                       "node0 connected to node2")
        net.start(1)

        def dialed_node0() -> bool:
            return any(p["id"] == node0.peer_id and not p["inbound"] and p["multiaddr"] == want
                       for p in net.rpc(1, "getpeerinfo"))

        net.wait_until(dialed_node0, 40.0, f"node1 dialing node0 at {want}")
        log = Path(node0.dir, "node.log").read_text()
        assert f"listening on /ip4/0.0.0.0/tcp/{node0.p2p_port}" in log and f"advertising {want}" in log
        net.wait_height([0, 1, 2], 3, 30.0)
        net.stop_all()
    finally:
        net.close()
