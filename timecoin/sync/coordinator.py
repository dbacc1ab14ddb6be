"""SyncCoordinator: the service that decides when to sync, and checks the network agrees with us (SPEC §6).

Every ``sync_interval`` seconds (30 by default), and at once when a peer announces a height above ours:

1. ask every connected peer for its status (StateSyncManager.query_peers);
2. **genesis consensus** — at least 2/3 of the responding peers must share our genesis hash; otherwise
   refuse to sync and alert (we may be pointed at the wrong network, or it at us);
3. **state consistency / forks** — a peer whose hash differs from ours at a height we hold starts a
   search for the fork point and its resolution (``forks.py``: certificates plus 2/3 stake-weighted
   agreement; rollback bounded by ``max_reorg_depth``; halt on conflicting certificates);
4. **catch-up** — while behind, run the StateSyncManager; consensus, which keeps running, picks up at
   the new tip (``ConsensusService.blocks_synced``).

Progress is kept in :attr:`SyncCoordinator.progress` and written to ``<datadir>/sync-status.json`` so
``timecoin status`` (another process) can show it.
"""
from __future__ import annotations

import json
import os
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from timecoin.errors import Reason, StoreError
from timecoin.ledger.block import Block, CommitCertificate, Evidence
from timecoin.sync import forks
from timecoin.sync.apply import apply_batch
from timecoin.sync.manager import StateSyncManager, SyncResult
from timecoin.sync.peer import ConnectionPeer, PeerStatus, SyncPeer

STATUS_FILE = "sync-status.json"


class SyncCoordinator(service.Service):
    name = "sync"
    log = Logger()

    def __init__(self, node: Any, reactor: Any) -> None:
        self.node = node
        self.reactor = reactor
        cfg = node.config
        self.manager = StateSyncManager(lambda: self.node.store.tip_height(), node.genesis.hash, reactor,
                                        self._apply, batch=cfg.sync_batch, redundancy=cfg.sync_redundancy)
        self.resolver: forks.ForkResolver | None = None
        self.last_result: SyncResult | None = None
        self.genesis_alert: str | None = None
        self._loop: task.LoopingCall | None = None
        self._busy = False
        self._again = False
        self._status_path = os.path.join(cfg.datadir, STATUS_FILE)

    # -- lifecycle -------------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802 - Twisted API
        super().startService()
        node = self.node
        self.resolver = forks.ForkResolver(node.store, node.genesis.chain_id, node.config.max_reorg_depth,
                                           on_rollback=self._rolled_back, on_halt=self._halt,
                                           on_evidence=self._evidence)
        self._loop = task.LoopingCall(self.trigger)
        self._loop.clock = self.reactor
        self._loop.start(max(node.config.sync_interval, 0.1), now=False)

    def stopService(self) -> None:  # noqa: N802 - Twisted API
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        super().stopService()

    @property
    def progress(self) -> dict[str, Any]:
        out = self.manager.progress.to_json()
        out["genesis_alert"] = self.genesis_alert
        out["halted"] = getattr(self.node.consensus, "halted", None)
        return out

    def trigger(self) -> None:
        """Run a cycle now (or right after the one running)."""
        if not self.running:
            return
        if self._busy:
            self._again = True
            return
        self._busy = True
        d = defer.Deferred.fromCoroutine(self.run_once())
        d.addErrback(self._failed)
        d.addBoth(self._done)

    def _failed(self, failure: Failure) -> None:
        self.log.failure("Sync cycle failed", failure)

    def _done(self, _: Any) -> None:
        self._busy = False
        if self._again and self.running:
            self._again = False
            self.reactor.callLater(0, self.trigger)

    # -- one cycle -------------------------------------------------------------------------------
    def peers(self) -> list[SyncPeer]:
        p2p = self.node.p2p
        if p2p is None:
            return []
        return [ConnectionPeer(c, p2p) for c in list(p2p.connections.values()) if c.state == "ready"]

    async def run_once(self) -> SyncResult | None:
        if getattr(self.node.consensus, "halted", None):
            return None
        peers = self.peers()
        if not peers:
            return None
        statuses = await self.manager.query_peers(peers)
        if not statuses or not self.running:
            return None
        if not self._genesis_consensus(statuses):
            return None
        if await self._check_forks(peers, statuses):
            return None
        tip = self.node.store.tip_height()
        if max(s.height for s in statuses.values()) <= tip:
            self._write_status()
            return None
        result = await self.manager.sync(peers, statuses, more_peers=self.peers)
        self.last_result = result
        self._write_status()
        return result

    def _genesis_consensus(self, statuses: dict[str, PeerStatus]) -> bool:
        ours = self.node.genesis.hash
        same = sum(1 for s in statuses.values() if s.genesis_hash == ours)
        if 3 * same >= 2 * len(statuses):
            if self.genesis_alert is not None:
                self.log.info("Genesis consensus restored ({same} of {n} peers share ours)", same=same,
                              n=len(statuses))
            self.genesis_alert = None
            return True
        alert = (f"only {same} of {len(statuses)} responding peers share our genesis {ours.hex()[:16]}; "
                 "refusing to sync (is this node pointed at the right network?)")
        if alert != self.genesis_alert:
            self.log.critical("GENESIS ALERT: {alert}", alert=alert)
        self.genesis_alert = alert
        return False

    async def _check_forks(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus]) -> bool:
        """Detect and resolve forks; True if something was done that ends this cycle."""
        ours = self.node.genesis.hash
        same = [p for p in peers if p.peer_id in statuses and statuses[p.peer_id].genesis_hash == ours]
        found = await forks.detect(self.node.store, same, statuses)
        if not found:
            return False
        fork_height = min(h for _, h in found)
        self.log.warn("Fork detected at height {h} (peers {peers})", h=fork_height,
                      peers=", ".join(p.peer_id for p, _ in found))
        outcome = await self.resolver.resolve(same, fork_height)
        self.log.warn("Fork at {h}: {kind} {detail}", h=fork_height, kind=outcome.kind.name, detail=outcome.detail)
        return outcome.kind != forks.OutcomeKind.OURS_KEPT

    # -- effects ---------------------------------------------------------------------------------
    def _apply(self, items: list[tuple[Block, CommitCertificate]]) -> tuple[int, Reason | None]:
        consensus = self.node.consensus
        if consensus is not None and consensus.halted:
            return 0, Reason.SHUTTING_DOWN
        node = self.node
        try:
            count, error = apply_batch(node.store, node.genesis.params, node.genesis.chain_id, items,
                                       now_ms=int(self.reactor.seconds() * 1000),
                                       genesis_time_ms=node.genesis.genesis_time)
        except StoreError as exc:            # consensus committed a height meanwhile: the run re-plans
            self.log.info("Sync batch not applied: {why}", why=str(exc))
            return 0, Reason.WRONG_HEIGHT
        if count and consensus is not None:
            consensus.blocks_synced([b for b, _ in items[:count]])
        self._write_status()
        return count, (error.reason if error is not None else None)

    def _rolled_back(self, new_tip: int) -> None:
        node = self.node
        self.log.warn("Rolled back to height {h}; re-syncing", h=new_tip)
        if node.mempool is not None:
            node.mempool.revalidate()
        if node.consensus is not None:
            node.consensus.restart_at_tip()
        self._again = True

    def _halt(self, reason: str) -> None:
        if self.node.consensus is not None:
            self.node.consensus.halt(reason)
        else:
            self.log.critical("HALTED: {reason}", reason=reason)

    def _evidence(self, ev: Evidence) -> None:
        if self.node.consensus is not None and self.node.consensus.app is not None:
            self.node.consensus.record_evidence(ev)

    def _write_status(self) -> None:
        data = self.progress | {"tip": self.node.store.tip_height() if self.node.store else None,
                                "updated": self.reactor.seconds()}
        tmp = self._status_path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, self._status_path)
        except OSError as exc:
            self.log.warn("Cannot write {path}: {why}", path=self._status_path, why=str(exc))
