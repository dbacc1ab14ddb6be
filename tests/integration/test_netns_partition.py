"""A partition made by unplugging a host's cable: 4 validators in 4 namespaces, one link taken down.

The 3 still connected are more than 2/3 of the stake and keep finalizing; the cut one cannot; plugged
back in, it catches up to the others' height (sync) and agrees with them.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests import netnsfixture
from tests.netnsfixture import NsNet
from timecoin.sim.netns import Lab

pytestmark = pytest.mark.slow

MakeLab = Callable[[Sequence[str]], Lab]
netns_lab = netnsfixture.netns_lab                        # the fixture, for this module's tests


def test_a_host_cut_off_stalls_alone_and_catches_up_when_its_link_is_back(
        netns_lab: MakeLab, tmp_path: Path) -> None:
    lab = netns_lab([f"node{i}" for i in range(4)])
    net = NsNet(lab, tmp_path / "net", 4)
    try:
        for i in range(4):
            net.start(i)
        net.wait_height(range(4), 3, 40.0)

        lab.link_down("node3")
        time.sleep(1.0)                                   # a height already in flight may still land
        cut = net.height(3)
        top = max(net.heights([0, 1, 2]))
        net.wait_height([0, 1, 2], top + 5, 30.0)
        assert net.height(3) == cut, "the cut-off validator finalized alone"

        lab.link_up("node3")
        target = max(net.heights([0, 1, 2]))
        net.wait_height([3], target, 45.0)
        h = min(net.heights(range(4)))
        hashes = {net.rpc(i, "getblockhash", h) for i in range(4)}
        assert len(hashes) == 1, f"disagreement at {h}: {hashes}"
        net.stop_all()
    finally:
        net.close()
