"""A cluster of whole nodes in one process: ``timecoin.node.build_node`` on simulated reactors.

Every node is the production service tree (store, consensus with privval and WAL, P2P with the peer
manager and gossip, sync, RPC) on its own :class:`~timecoin.sim.cluster.reactor.NodeReactor`, its own
address (10.0.x.y: real-looking, so per-IP limits and bans apply as on the internet) and its own LMDB
in a temporary folder. Keys, stakes, link draws, skews and the nodes' own random streams all derive
from the cluster's seed. Node-level faults: :meth:`Cluster.crash` (the process dies: timers and
sockets gone, LMDB and WAL stay as last synced), :meth:`Cluster.restart` (a new incarnation on the same
datadir), :meth:`Cluster.pause`/``resume`` (SIGSTOP/SIGCONT), a per-incarnation clock skew, and
:meth:`Cluster.fill_disk` (the node's store refuses writes, as a full disk does).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lmdb
from twisted.application import service
from twisted.internet import defer

from timecoin import crypto
from timecoin.config import NodeConfig, build_config
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.ledger.params import ChainParams
from timecoin.node import Node, build_node
from timecoin.p2p import discovery
from timecoin.sim.cluster.network import LinkModel, SimNetwork
from timecoin.sim.cluster.reactor import NodeReactor, Scheduler

SIM_EPOCH_MS = 1_767_225_600_000          # 2026-01-01T00:00:00Z: the simulated clock starts here
P2P_PORT = 26_656
RPC_PORT = 26_657
STAKE_UNIT = 10_000 * crypto.UNITS_PER_TIME
USER_BALANCE = 1_000_000 * crypto.UNITS_PER_TIME

# Fast but realistic timing: rounds in tens of ms of simulated time, as CometBFT's test profile.
SIM_CONFIG = {"network": "testnet", "block_interval": "0", "timeout_propose": "0.3",
              "timeout_propose_delta": "0.1", "timeout_prevote": "0.1", "timeout_prevote_delta": "0.05",
              "timeout_precommit": "0.1", "timeout_precommit_delta": "0.05", "gossip_interval": "0.1",
              "ping_interval": "2", "sync_interval": "2", "precision": "0.05", "message_delay": "0.2",
              "lmdb_map_size": str(64 << 20)}


def derive_key(seed: int, label: str, index: int) -> crypto.PrivateKey:
    """A deterministic secp256k1 key for (seed, label, index)."""
    return crypto.PrivateKey(hashlib.sha256(f"timecoin-sim/{seed}/{label}/{index}".encode()).digest())


def stake_powers(n: int, dist: str) -> list[int]:
    """Stake multiples of :data:`STAKE_UNIT` per validator: all 1 (``equal``) or Zipf's 1/rank, scaled to >= 1."""
    if dist == "equal":
        return [1] * n
    if dist == "zipf":
        return [max(1, round(n / (rank + 1))) for rank in range(n)]
    raise ValueError(f"unknown stake distribution {dist!r} (equal or zipf)")


@dataclass
class SimNode:
    """One simulated host: its identity and datadir, and the current incarnation of its node (if up)."""

    index: int
    name: str
    ip: str
    key: crypto.PrivateKey
    datadir: str
    power: int
    byzantine: bool = False
    node: Node | None = None
    reactor: NodeReactor | None = None
    incarnation: int = 0
    state: str = "down"                 # down | up | crashed | paused | stopped (by itself, cleanly)
    skew: float = 0.0
    disk_full: bool = False
    behaviours: list[Any] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    @property
    def addr(self) -> str:
        return discovery.format_multiaddr(self.ip, P2P_PORT, self.peer_id)

    def height(self) -> int:
        return self.node.store.tip_height() if self.node is not None and self.node.store is not None else -1


class Cluster:
    """N whole nodes of one genesis on one scheduler and network."""

    def __init__(self, nodes: int, seed: int, workdir: str | None = None, stake_dist: str = "equal",
                 byzantine: int = 0, link: LinkModel | None = None, config: dict[str, str] | None = None,
                 on_error: Callable[[str, BaseException], None] | None = None) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.seed = seed
        self.rng = random.Random(f"timecoin-sim/{seed}/world")
        self.scheduler = Scheduler(SIM_EPOCH_MS / 1000 + 1.0, on_error)
        self.network = SimNetwork(self.scheduler, random.Random(f"timecoin-sim/{seed}/links"), link)
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="timecoin-sim-", dir=_fast_tmp())
        self.config_extra = {**SIM_CONFIG, **(config or {})}
        powers = stake_powers(nodes, stake_dist)
        self.nodes: list[SimNode] = []
        for i in range(nodes):
            key = derive_key(seed, "validator", i)
            ip = f"10.0.{i // 250}.{i % 250 + 1}"
            self.nodes.append(SimNode(i, f"n{i}", ip, key, os.path.join(self.workdir, f"n{i}"), powers[i],
                                      byzantine=i >= nodes - byzantine))
        self.users = [derive_key(seed, "user", i) for i in range(4)]
        self.genesis = self._genesis()
        self.on_build: list[Callable[[SimNode], None]] = []     # behaviours and checkers hook new incarnations

    def _genesis(self) -> Genesis:
        accounts = tuple(GenesisAccount(n.key.address, USER_BALANCE, n.power * STAKE_UNIT, n.key.public_key)
                         for n in self.nodes)
        accounts += tuple(GenesisAccount(u.address, USER_BALANCE) for u in self.users)
        chain_id = f"timecoin-sim-{self.seed}"
        genesis = Genesis(chain_id, SIM_EPOCH_MS, ChainParams(chain_id), accounts)
        return Genesis.from_obj(genesis.to_json_obj())

    @property
    def total_power(self) -> int:
        return sum(n.power for n in self.nodes)

    @property
    def byzantine_power(self) -> int:
        return sum(n.power for n in self.nodes if n.byzantine)

    def honest(self) -> list[SimNode]:
        return [n for n in self.nodes if not n.byzantine]

    def now(self) -> float:
        return self.scheduler.now

    # -- lifecycle -----------------------------------------------------------------------------------
    def node_config(self, sn: SimNode) -> NodeConfig:
        os.makedirs(sn.datadir, exist_ok=True)
        bootstrap = ",".join(o.addr for o in self.nodes if o is not sn)
        return build_config({"datadir": sn.datadir, "p2p_host": sn.ip, "p2p_port": str(P2P_PORT),
                             "rpc_host": sn.ip, "rpc_port": str(RPC_PORT), "rpc_allow_ip": "10.0.0.0/8",
                             "bootstrap": bootstrap,
                             **self.config_extra})

    def start(self, sn: SimNode, skew: float | None = None) -> Node:
        """Build and start a new incarnation of ``sn``'s node on its datadir (first start or restart)."""
        if sn.state in ("up", "paused"):
            raise RuntimeError(f"{sn.name} is already running")
        if sn.reactor is not None and not sn.reactor.dead:
            sn.reactor.kill()          # what is left of a cleanly stopped incarnation (its timers, sockets)
        sn.incarnation += 1
        if skew is not None:
            sn.skew = skew
        sn.reactor = NodeReactor(self.scheduler, self.network, sn.name, sn.ip,
                                 f"timecoin-sim/{self.seed}/{sn.name}/{sn.incarnation}", sn.skew)
        sn.node = build_node(self.node_config(sn), sn.key, self.genesis, sn.reactor)
        sn.node.rpc.on_stop = sn.node.on_fatal = functools.partial(self._stopped, sn)
        for hook in self.on_build:
            hook(sn)
        sn.node.startService()
        sn.state = "up"
        if sn.disk_full:
            _refuse_writes(sn.node)
        return sn.node

    def _stopped(self, sn: SimNode) -> None:
        """The node stopped itself (RPC ``stop``, or a fatal error such as a full disk): a clean stop."""
        if sn.node is not None and sn.state in ("up", "paused"):
            sn.state = "stopped"
            sn.node.stopService()

    def start_all(self) -> None:
        for sn in self.nodes:
            self.start(sn)

    def crash(self, sn: SimNode) -> None:
        """The process dies (kill -9): no stopService, timers and sockets gone; LMDB and WAL keep what was synced."""
        if sn.state not in ("up", "paused") or sn.reactor is None or sn.node is None:
            return
        sn.reactor.kill()
        _release_files(sn.node)
        sn.node = None
        sn.state = "crashed"

    def restart(self, sn: SimNode, skew: float | None = None) -> Node:
        if sn.state in ("up", "paused"):
            self.crash(sn)
        return self.start(sn, skew)

    def pause(self, sn: SimNode) -> None:
        if sn.state == "up" and sn.reactor is not None:
            sn.reactor.pause()
            sn.state = "paused"

    def resume(self, sn: SimNode) -> None:
        if sn.state == "paused" and sn.reactor is not None:
            sn.reactor.resume()
            sn.state = "up"

    def fill_disk(self, sn: SimNode, full: bool = True) -> None:
        """The node's disk is full (or has room again): its store's writes fail with ENOSPC while full."""
        sn.disk_full = full
        if sn.node is not None and sn.state in ("up", "paused"):
            if full:
                _refuse_writes(sn.node)
            else:
                _allow_writes(sn.node)

    def stop_all(self) -> None:
        """Stop every running node cleanly (stopService), then close anything a crash left open."""
        for sn in self.nodes:
            if sn.state == "paused":
                self.resume(sn)
            if sn.state == "up" and sn.node is not None:
                stopped: defer.Deferred[Any] = defer.maybeDeferred(sn.node.stopService)
                self.scheduler.run_until(self.scheduler.now + 1.0, stop=_called(stopped))
                if sn.node.store is not None:
                    sn.node.store.close()
                sn.state = "down"

    def close(self) -> None:
        self.stop_all()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- running -------------------------------------------------------------------------------------
    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> None:
        self.scheduler.run_until(self.scheduler.now + seconds, stop)

    def heights(self) -> list[int]:
        return [sn.height() for sn in self.nodes]


def _called(d: defer.Deferred[Any]) -> Callable[[], bool]:
    return lambda: bool(d.called)


def _fast_tmp() -> str | None:
    """Where the nodes' datadirs go: a RAM-backed folder when the host has one (fsync costs nothing there)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _release_files(node: Node) -> None:
    """What the kernel does for a killed process: close its files. Nothing is flushed that was not already."""
    if node.store is not None:
        with contextlib.suppress(lmdb.Error):
            node.store.close()
        node.store = None
    for svc in _walk(node):
        wal = getattr(getattr(svc, "wal", None), "_f", None)
        if wal is not None:
            with contextlib.suppress(OSError):
                os.close(wal.fileno())       # the buffered tail is lost, as in a real crash


def _walk(node: Node) -> list[Any]:
    out: list[Any] = []
    for svc in node:
        out.append(svc)
        if isinstance(svc, service.MultiService):
            out.extend(_walk(svc))  # type: ignore[arg-type]
    return out


class DiskFull(OSError):
    """ENOSPC from a simulated full disk."""

    def __init__(self) -> None:
        super().__init__(28, "No space left on device (simulated)")


def _refuse_writes(node: Node) -> None:
    store = node.store
    if store is None or getattr(store, "_sim_begin", None) is not None:
        return
    original = store._live_env().begin

    def begin(*args: Any, **kw: Any) -> Any:
        if kw.get("write"):
            raise lmdb.DiskError("No space left on device (simulated)")
        return original(*args, **kw)

    store._sim_begin = original  # type: ignore[attr-defined]
    store._env = _EnvProxy(store._env, begin)  # type: ignore[assignment]


def _allow_writes(node: Node) -> None:
    store = node.store
    if store is not None and getattr(store, "_sim_begin", None) is not None:
        store._env = store._env.inner  # type: ignore[union-attr]
        store._sim_begin = None  # type: ignore[attr-defined]


class _EnvProxy:
    """An LMDB environment whose write transactions fail (the disk is full); everything else passes through."""

    def __init__(self, inner: Any, begin: Callable[..., Any]) -> None:
        self.inner = inner
        self.begin = begin

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
