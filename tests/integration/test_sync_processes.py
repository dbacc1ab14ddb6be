"""Issue 5 acceptance with real ``twistd`` processes on 127.0.0.1 (SPEC §6): late joiners sync, strangers don't.

(a) ``timecoin testnet --nodes 4 --observers 1``: validators 0-2 run alone to height 60, then the late
    validator (node3) and the observer (node4) start with empty stores; both must catch up with the
    moving tip and hold the same hashes as node0 at heights 1, 30 and 60.
(b) Two single-validator testnets of their own genesis -- one with another chain id, one with the
    network's chain id but another genesis -- are pointed at node0 while the network runs. Neither may
    take the network's blocks: their genesis and block hashes stay their own, node0's chain is unchanged,
    and both sides log the refusal.

Speed: blocks every 0.2 s (``--block-interval``); ``timecoin testnet`` writes loopback consensus timeouts,
so the heights whose round-0 proposer is the absent node3 cost about a second. Heights and hashes are read
straight from each node's LMDB store, read-only, as ``timecoin status`` does.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import TWISTD, free_port_block
from timecoin.crypto import PrivateKey
from timecoin.errors import StoreError
from timecoin.store import Store

pytestmark = pytest.mark.slow

BLOCK_INTERVAL = "0.2"
TARGET = 60


def write_testnet(root: Path, nodes: int, observers: int, base_port: int, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "timecoin", "testnet", "--nodes", str(nodes), "--observers", str(observers),
                    "--dir", str(root), "--base-port", str(base_port), "--block-interval", BLOCK_INTERVAL, *extra],
                   check=True, capture_output=True, timeout=60)


def read_chain(node_dir: Path, at: tuple[int, ...] = ()) -> tuple[int, str | None, dict[int, str | None]]:
    """(height, genesis hash, {h: hash}) from the node's store, read-only; (0, None, {}) before it exists."""
    try:
        store = Store.open_readonly(str(node_dir / "data" / "chain"))
    except StoreError:
        return 0, None, {}
    try:
        if not store.is_initialized:
            return 0, None, {}
        hashes = {}
        for h in at:
            bh = store.block_hash_at(h)
            hashes[h] = bh.hex() if bh is not None else None
        return store.tip_height(), store.genesis_hash().hex(), hashes
    finally:
        store.close()


class ProcessNet:
    """The nodes of one testnet folder as twistd child processes."""

    def __init__(self, root: Path, base_port: int) -> None:
        self.root = root
        self.base_port = base_port
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: set[int] = set()

    def dir(self, i: int) -> Path:
        return self.root / f"node{i}"

    def start(self, i: int) -> None:
        d = self.dir(i)
        with open(d / "node.log", "ab") as log:
            self.procs[i] = subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "timecoin",
                                              "--config", "timecoin.conf"], cwd=d, stdout=log, stderr=log)
        self.started.add(i)

    def height(self, i: int) -> int:
        return read_chain(self.dir(i))[0]

    def hashes(self, i: int, heights: tuple[int, ...]) -> dict[int, str | None]:
        return read_chain(self.dir(i), heights)[2]

    def genesis(self, i: int) -> str | None:
        return read_chain(self.dir(i))[1]

    def log(self, i: int) -> str:
        path = self.dir(i) / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, tail: int = 2500) -> str:
        return "\n".join(f"--- {self.root.name}/node{i}\n{self.log(i)[-tail:]}" for i in sorted(self.started))

    def check_alive(self) -> None:
        dead = {i: p.returncode for i, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"nodes exited: {dead}\n{self.logs()}"

    def wait_height(self, nodes: list[int], height: int, seconds: float) -> list[int]:
        deadline = time.monotonic() + seconds
        hs: list[int] = []
        for _ in range(int(seconds / 0.25) + 2):                    # bounded in count and time
            hs = [self.height(i) for i in nodes]
            if min(hs) >= height:
                return hs
            if time.monotonic() > deadline:
                break
            self.check_alive()
            time.sleep(0.25)
        raise AssertionError(f"nodes {nodes} at {hs} after {seconds} s, wanted {height}\n{self.logs()}")

    def stop(self, nodes: list[int] | None = None) -> None:
        """SIGTERM, then each must exit 0 within 15 s."""
        chosen = sorted(self.procs) if nodes is None else nodes
        for i in chosen:
            self.procs[i].send_signal(signal.SIGTERM)
        codes = {}
        for i in chosen:
            proc = self.procs.pop(i)
            try:
                codes[i] = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                codes[i] = "no exit after SIGTERM"
        assert all(c == 0 for c in codes.values()), f"exit codes {codes}"

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.procs.clear()


def conf_multiaddr(conf: Path, port: int) -> str:
    """The multiaddr of the node listening on ``port``, from another node's bootstrap list."""
    found = re.findall(r"(/ip4/127\.0\.0\.1/tcp/(\d+)/p2p/\w+)", conf.read_text())
    for addr, p in found:
        if int(p) == port:
            return addr
    raise AssertionError(f"no bootstrap address with port {port} in {conf}")


def point_at(conf: Path, addr: str) -> None:
    """Replace the (possibly multi-line) ``bootstrap =`` entry of ``conf`` with one address."""
    text = conf.read_text()
    text, n = re.subn(r"^bootstrap =.*(?:\n[ \t]+\S.*)*", f"bootstrap = {addr}", text, flags=re.M)
    assert n == 1, text
    conf.write_text(text)


def chain_id_of(conf: Path) -> str:
    """The chain id ``timecoin testnet`` wrote into the config's first comment line."""
    match = re.search(r"local testnet (\S+): node", conf.read_text())
    assert match, conf.read_text()
    return match.group(1)


def peer_id_of(node_dir: Path) -> str:
    return PrivateKey.load(str(node_dir / "node.key")).peer_id


@pytest.fixture
def nets() -> Iterator[list[ProcessNet]]:
    """Every ProcessNet a test starts; their processes are killed at the end whatever happened."""
    started: list[ProcessNet] = []
    try:
        yield started
    finally:
        for net in started:
            net.kill_all()
        if os.environ.get("TIMECOIN_KEEP_TESTNET"):
            print("\n".join(net.logs(100_000) for net in started))


def test_late_validator_and_observer_catch_up_and_strangers_are_refused(tmp_path: Path,
                                                                        nets: list[ProcessNet]) -> None:
    base = free_port_block(14)                      # 5 nodes here + 2 strangers, 2 ports each
    write_testnet(tmp_path / "net", 4, 1, base)
    net = ProcessNet(tmp_path / "net", base)
    nets.append(net)
    for i in (0, 1, 2):
        net.start(i)
    net.wait_height([0, 1, 2], TARGET, 90.0)

    # (a) The late validator and the observer start from nothing while the chain keeps growing.
    start_height = net.height(0)
    t0 = time.monotonic()
    net.start(3)
    net.start(4)
    net.wait_height([3, 4], start_height + 5, 40.0)
    caught_up_s = time.monotonic() - t0
    check = (1, TARGET // 2, TARGET)
    reference = net.hashes(0, check)
    assert None not in reference.values(), reference
    for i in (1, 2, 3, 4):
        assert net.hashes(i, check) == reference, f"node{i} disagrees with node0 at {check}"
    # Both follow the live tip from here on (the validator by consensus, the observer by gossip/sync).
    tip = net.height(0)
    net.wait_height([3, 4], tip, 20.0)

    # (b) Strangers: own genesis + other chain id, and own genesis under the network's chain id.
    node0_addr = conf_multiaddr(net.dir(1) / "timecoin.conf", base)
    chain_id = chain_id_of(net.dir(0) / "timecoin.conf")
    strangers = []
    for j, extra in enumerate(((), ("--chain-id", chain_id))):
        other = ProcessNet(tmp_path / f"stranger{j}", base + 10 + 2 * j)
        write_testnet(other.root, 1, 0, other.base_port, *extra)
        point_at(other.dir(0) / "timecoin.conf", node0_addr)
        nets.append(other)
        strangers.append(other)
    assert chain_id_of(strangers[0].dir(0) / "timecoin.conf") != chain_id
    assert chain_id_of(strangers[1].dir(0) / "timecoin.conf") == chain_id
    before = net.hashes(0, check)
    network_height = net.height(0)
    for other in strangers:
        other.start(0)
    # Each stranger dials node0 (and node0 answers) several times within the window.
    time.sleep(10.0)
    for other in strangers:
        other.check_alive()
    net.check_alive()

    ours_genesis = net.genesis(0)
    for j, other in enumerate(strangers):
        height, genesis, _ = read_chain(other.dir(0))
        assert genesis is not None and genesis != ours_genesis, f"stranger{j} has our genesis"
        assert height > 0, f"stranger{j} produced no blocks of its own\n{other.logs()}"
        heights = tuple(range(1, min(height, network_height) + 1))
        theirs, ours = other.hashes(0, heights), net.hashes(0, heights)
        shared = [h for h in heights if theirs[h] == ours[h]]
        assert not shared, f"stranger{j} took the network's blocks at {shared[:5]}"
    assert net.hashes(0, check) == before, "node0's chain changed"
    assert net.genesis(0) == ours_genesis
    assert net.height(0) > network_height, "the network stopped while strangers knocked"

    # Both sides say why: the stranger with another chain id is refused on its chain, the other on its genesis.
    log0 = net.log(0)
    for j, (other, why) in enumerate(zip(strangers, ("chain", "genesis"), strict=True)):
        peer_id = peer_id_of(other.dir(0))
        refused = [line for line in log0.splitlines() if peer_id in line and "is not ours" in line]
        assert refused and all(why in line for line in refused), \
            f"node0 logged no {why} refusal of stranger{j} ({peer_id}):\n{log0[-3000:]}"
        slog = other.log(0)
        assert "refused us" in slog or "is not ours" in slog, f"stranger{j} logged no refusal:\n{slog[-3000:]}"

    for other in strangers:
        other.stop()
    net.stop()
    for other in (net, *strangers):
        assert "Traceback" not in other.logs(10**7), other.logs()
    print(f"late validator and observer caught up {start_height}+5 blocks in {caught_up_s:.1f} s")
