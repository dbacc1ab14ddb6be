"""Per-IP limits and IP bans on real, non-loopback addresses: real ``twistd`` nodes in network namespaces.

On 127.0.0.1 both are exempt (timecoin.p2p.peers), so only here do they meet an address they apply to.
The attacker runs in its own namespace (tests/netns_attacker.py), every connection with a fresh key: a
refusal there comes from the address, never from a key banned earlier.
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


def banned_ips(net: NsNet, i: int) -> set[str]:
    return {b["address"] for b in net.rpc(i, "listbanned") if b["kind"] == "ip"}


def test_one_address_gets_max_per_ip_connections_and_the_validators_keep_finalizing(
        netns_lab: MakeLab, tmp_path: Path) -> None:
    lab = netns_lab(["node0", "node1", "attacker"])
    net = NsNet(lab, tmp_path / "net", 2)
    try:
        net.start(0, "--max-per-ip", "3")
        net.start(1)
        net.wait_height([0, 1], 2, 40.0)
        attacker = lab.address("attacker")
        result = net.attack("attacker", 0, "hold", [attacker], count=8, hold=0.5)
        outcomes = result["outcomes"][attacker]
        assert outcomes.count("admitted") == 3 and result["held_open"] == 3, outcomes
        assert all(o in ("refused", "reject:22", "dropped") for o in outcomes[3:]), outcomes
        # Both validators (two of two: each one is needed) went on finalizing through it.
        h = max(net.heights([0, 1]))
        net.wait_height([0, 1], h + 3, 30.0)
        assert net.rpc(0, "getpeerinfo")[0]["addr"].startswith(lab.address("node1") + ":")
        net.stop_all()
    finally:
        net.close()


def test_an_ip_ban_for_a_provable_offence_survives_the_restart_and_spares_other_addresses(
        netns_lab: MakeLab, tmp_path: Path) -> None:
    lab = netns_lab(["node0", "attacker"])
    net = NsNet(lab, tmp_path / "net", 1)
    offender, bystander = lab.address("attacker"), lab.add_addresses("attacker", 1)[0]
    try:
        net.start(0)
        net.wait_height([0], 2, 40.0)
        assert net.attack("attacker", 0, "garbage", [offender])["outcomes"][offender] == ["dropped"]
        assert offender in banned_ips(net, 0)
        probe = net.attack("attacker", 0, "probe", [offender, bystander], hold=0.5)["outcomes"]
        assert probe == {offender: ["refused"], bystander: ["admitted"]}

        assert net.stop(0) == 0
        net.start(0)
        h = net.height(0)
        net.wait_height([0], h + 2, 40.0)
        assert offender in banned_ips(net, 0)
        probe = net.attack("attacker", 0, "probe", [offender, bystander], hold=0.5)["outcomes"]
        assert probe == {offender: ["refused"], bystander: ["admitted"]}, "after the restart"
        net.stop_all()
    finally:
        net.close()


def test_twenty_attackers_from_twenty_addresses_each_end_banned_by_ip_and_finality_goes_on(
        netns_lab: MakeLab, tmp_path: Path) -> None:
    lab = netns_lab(["node0", "node1", "attacker"])
    net = NsNet(lab, tmp_path / "net", 2)
    sources = [lab.address("attacker"), *lab.add_addresses("attacker", 19)]
    try:
        net.start(0)
        net.start(1)
        net.wait_height([0, 1], 2, 40.0)
        h = max(net.heights([0, 1]))
        attacked = net.attack("attacker", 0, "garbage", sources, parallel=5)["outcomes"]
        assert attacked == {s: ["dropped"] for s in sources}
        assert banned_ips(net, 0) >= set(sources)
        probe = net.attack("attacker", 0, "probe", sources, parallel=5, hold=0.3)["outcomes"]
        assert probe == {s: ["refused"] for s in sources}
        net.wait_height([0, 1], h + 3, 30.0)
        assert lab.address("node1") not in banned_ips(net, 0)
        net.stop_all()
    finally:
        net.close()
