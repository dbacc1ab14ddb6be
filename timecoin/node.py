"""The service tree (ARCHITECTURE "The service tree"): ``makeService(config)`` builds the Node.

Start order is the child order, stop order the reverse: the store opens first and closes last.
Files are prepared in ``makeService`` (before twistd daemonizes or the reactor runs) so that a bad
key or genesis file is one clear line and a non-zero exit, never a traceback; LMDB itself is opened
in ``StoreService.startService`` (after any fork: an LMDB environment must not cross a fork).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from timecoin import crypto
from timecoin.config import NodeConfig
from timecoin.consensus.guardfile import GuardFileError
from timecoin.errors import DecodeError, StoreError, TimecoinError
from timecoin.ledger.genesis import Genesis, GenesisError
from timecoin.mempool import Mempool
from timecoin.store import Store

# What a datadir can be wrong with at start (besides a bad key or genesis, found in makeService): one clear line.
STARTUP_ERRORS = (TimecoinError, GuardFileError, OSError)


class StartupError(TimecoinError):
    """The node could not start on its datadir; the message is the one line the operator sees."""


class Node(service.MultiService):
    """The running node: its config, identity, genesis and the services that share them.

    Services reach each other through the node (``node.store``, ``node.mempool``...), which is what
    the manhole shows operators.
    """

    log = Logger()

    def __init__(self, config: NodeConfig, key: crypto.PrivateKey, genesis: Genesis, reactor: Any = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.key = key
        self.genesis = genesis
        self.store: Store | None = None
        self.mempool: Mempool | None = None
        self.consensus: Any = None
        self.p2p: Any = None
        self.sync: Any = None
        self.rpc: Any = None
        self.metrics: Any = None
        self.fatal_reason: str | None = None
        self.on_fatal: Callable[[], Any] = self._stop_services     # twistd: reactor.stop (makeService)
        self.start_error_exits = False          # twistd (makeService): a start-up error exits 1 with one line

    def startService(self) -> None:  # noqa: N802 - Twisted API
        """Start the children in order; a datadir that cannot be used (another chain or schema, read-only,
        a corrupt guard file...) stops the ones already started and raises :class:`StartupError`."""
        try:
            super().startService()
        except STARTUP_ERRORS as exc:
            for child in reversed(list(self)):
                if child.running:
                    child.stopService()
            self.running = False
            if not self.start_error_exits:
                raise StartupError(str(exc)) from None
            # twistd: the application starts after it may have daemonized, outside any handler of ours, so an
            # exception here would be a traceback. One line on stderr (twistd logs it) and exit status 1.
            sys.stderr.write(f"twistd timecoin: error: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None

    def fatal(self, reason: str) -> None:
        """The node cannot go on (e.g. its disk is full): say why in one line, then stop cleanly (once).

        The stop runs on the next reactor turn, after the failing call has unwound; what was committed
        stays committed (an LMDB write either commits whole or not at all), so a restart resumes there.
        """
        if self.fatal_reason is not None:
            return
        self.fatal_reason = reason
        self.log.critical("Stopping the node: {reason}. Fix the cause (free disk space, check the datadir), "
                          "then start it again.", reason=reason)
        if self.reactor is not None:
            self.reactor.callLater(0, self.on_fatal)

    def _stop_services(self) -> Any:
        return self.stopService() if self.running else None

    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    def next_height(self) -> int:
        return (self.store.tip_height() if self.store else 0) + 1


class StoreService(service.Service):
    """Opens the LMDB store (initialising it from genesis on first start) and closes it last."""

    name = "store"
    log = Logger()

    def __init__(self, node: Node) -> None:
        self.node = node

    def startService(self) -> None:  # noqa: N802 - Twisted API
        cfg, genesis = self.node.config, self.node.genesis
        store = Store(os.path.join(cfg.datadir, "chain"), map_size=cfg.lmdb_map_size,
                      max_map_size=cfg.lmdb_max_map_size)
        try:
            if not store.is_initialized:
                vs = genesis.validators()
                store.initialize(genesis.chain_id, genesis.hash, genesis.initial_accounts(), vs, vs,
                                 genesis.initial_lthash())
                self.log.info("Initialised the chain store for {chain_id} (genesis {genesis})",
                              chain_id=genesis.chain_id, genesis=genesis.hash.hex())
            store.check_chain(genesis.chain_id, genesis.hash)
        except BaseException:
            store.close()
            raise
        store.on_write_error = self.node.fatal
        self.node.store = store
        self.node.mempool = Mempool(genesis.params, store, max_txs=cfg.mempool_max_txs,
                                    max_bytes=cfg.mempool_max_bytes, min_relay_fee=cfg.min_relay_fee,
                                    height_fn=self.node.next_height)
        self.log.info("Store open at height {height}, tip {tip}", height=store.tip_height(),
                      tip=store.tip_hash().hex())
        super().startService()

    def stopService(self) -> None:  # noqa: N802 - Twisted API
        super().stopService()
        if self.node.store is not None:
            self.node.store.close()
            self.node.store = None
            self.log.info("Store closed")


def prepare_datadir(config: NodeConfig) -> tuple[crypto.PrivateKey, Genesis]:
    """Create the datadir, node key and (devnet only) genesis on first start; load them otherwise."""
    os.makedirs(config.datadir, mode=0o700, exist_ok=True)
    key_path = config.key_path
    if not os.path.exists(key_path):
        crypto.PrivateKey.generate().save(key_path)
        Node.log.info("Created node key {path}", path=key_path)
    try:
        key = crypto.PrivateKey.load(key_path)
    except (OSError, DecodeError) as exc:
        raise TimecoinError(f"cannot load node key {key_path}: {exc}") from None
    genesis_path = config.genesis_path
    if not os.path.exists(genesis_path):
        if config.network != "devnet":
            raise TimecoinError(f"no genesis file at {genesis_path}: {config.network} needs the network's "
                                "genesis.json (set genesis_file)")
        genesis = Genesis.single_validator(key, chain_id="timecoin-devnet")
        with open(genesis_path + ".tmp", "w") as f:
            f.write(genesis.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(genesis_path + ".tmp", genesis_path)
        Node.log.info("Created devnet genesis {path} with this node as the only validator", path=genesis_path)
    genesis = Genesis.load(genesis_path)
    return key, genesis


def makeService(config: NodeConfig) -> Node:  # noqa: N802 - twistd's name
    """Build the node's service tree. A bad datadir, key, genesis or manhole file exits with one line (code 1)."""
    from twisted.internet import reactor

    try:
        key, genesis = prepare_datadir(config)
        node = build_node(config, key, genesis, reactor)
    except (TimecoinError, GenesisError, StoreError, OSError) as exc:
        sys.stderr.write(f"twistd timecoin: error: {exc}\n")
        raise SystemExit(1) from None
    node.start_error_exits = True           # twistd starts it outside any handler of ours: one line, exit 1
    node.rpc.on_stop = reactor.stop         # RPC ``stop`` ends twistd as SIGTERM does
    node.on_fatal = reactor.stop            # ... and so does a fatal store error (after its one clear line)
    Node.log.info("Timecoin node {peer_id} on {network} ({chain_id}), datadir {datadir}",
                  peer_id=key.peer_id, network=config.network, chain_id=genesis.chain_id, datadir=config.datadir)
    reactor.addSystemEventTrigger("after", "shutdown", _exit_cleanly_after_signal, reactor, node)
    return node


def build_node(config: NodeConfig, key: crypto.PrivateKey, genesis: Genesis, reactor: Any) -> Node:
    """The service tree on ``reactor``: store, consensus, P2P, sync, RPC, metrics (in start order). Tests build here."""
    from timecoin.consensus.service import ConsensusService
    from timecoin.p2p.service import P2PService
    from timecoin.rpc.service import RPCService
    from timecoin.sync.coordinator import SyncCoordinator

    node = Node(config, key, genesis, reactor)
    StoreService(node).setServiceParent(node)
    node.consensus = ConsensusService(node, reactor)
    node.consensus.setServiceParent(node)
    node.p2p = P2PService(node, reactor)
    node.p2p.setServiceParent(node)
    node.sync = SyncCoordinator(node, reactor)
    node.sync.setServiceParent(node)
    from timecoin.notify.service import NotifyService  # push notifications, blocknotify (/ws on RPC)
    NotifyService(node, reactor).setServiceParent(node)
    node.rpc = RPCService(node, reactor)
    node.rpc.setServiceParent(node)
    from timecoin.metrics.service import MetricsService
    node.metrics = MetricsService(node, reactor)     # Prometheus /metrics (issue 14)
    node.metrics.setServiceParent(node)
    if config.manhole_ssh_port or config.manhole_telnet_port:      # 0 and 0: no manhole at all
        from timecoin.manhole.service import ManholeService
        ManholeService(node, reactor).setServiceParent(node)        # a bad credentials file: TimecoinError
    return node


def _exit_cleanly_after_signal(reactor: Any, node: Node) -> None:
    """SIGTERM/SIGINT are the normal way to stop a node: exit 0 when the services stopped cleanly.

    twistd re-raises the stopping signal after shutdown (so the exit status says "killed by
    SIGTERM"); supervisors and the SPEC (§8) treat a clean stop as success, so once the store is
    closed we clear the reactor's record of the signal (``_ISupportsExitSignalCapturing``).
    """
    if node.store is None and not node.running and hasattr(reactor, "_exitSignal"):
        reactor._exitSignal = None
