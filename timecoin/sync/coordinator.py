"""SyncCoordinator: the service that decides when to sync, and checks the network agrees with us (SPEC §6).

Every ``sync_interval`` seconds (30 by default), and at once when a peer announces a height above ours:

1. ask every connected peer for its status (StateSyncManager.query_peers);
2. **genesis consensus** -- at least 2/3 of the responding peers must share our genesis hash; otherwise
   refuse to sync and alert (we may be pointed at the wrong network, or it at us);
3. **forks** -- a peer whose hash differs from ours at a height we hold starts a search for the fork
   point and its resolution (``forks.py``: certificates plus 2/3 stake-weighted agreement; rollback
   bounded by ``max_reorg_depth``; halt on conflicting certificates);
4. **catch-up** -- while behind, run the StateSyncManager; consensus, which keeps running, picks up at
   the new tip (``ConsensusService.blocks_synced``);
5. **state consistency** (when not behind) -- our stored LtHash accumulator must match our tip header's
   ``state_root``, and our header's ``state_root`` at a recent height ``h`` (held by >= 2/3 of the
   peers, a few blocks below the tip) must match the certified block at ``h`` of up to 3 peers. When
   the majority of the peers that served a certified block disagrees: ``STATE ALERT`` (log and
   ``timecoin status``) and fork resolution from the first height where our chains differ.

Fork checks also run at once, outside the loop, when :meth:`SyncCoordinator.fork_suspected` is called
(a NEW_BLOCK announcement whose hash differs from ours at a height we hold, or a synced block whose
parent is not our tip). Cycles and fork checks never run concurrently; repeated suspicions coalesce.

Progress is kept in :attr:`SyncCoordinator.progress` and written to ``<datadir>/sync-status.json`` after
every applied batch and every cycle, so ``timecoin status`` (another process) can show it, and tell a
stale file (a node that stopped) from a running sync by its ``updated`` time.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from timecoin.errors import Reason, StoreError
from timecoin.ledger.block import Block, CommitCertificate, Evidence
from timecoin.p2p.peers import Event
from timecoin.sync import forks
from timecoin.sync.apply import apply_batch, certificate_problem
from timecoin.sync.manager import StateSyncManager, SyncResult
from timecoin.sync.peer import ConnectionPeer, PeerStatus, SyncPeer
from timecoin.sync.verify import Preverifier

STATUS_FILE = "sync-status.json"
Served = tuple[SyncPeer, Block]
STATE_CHECK_MARGIN = 2             # blocks below the height most peers hold (the newest may still spread)
STATE_CHECK_PEERS = 3              # peers asked for their certified block at the checked height
FORK_SUSPECT_INTERVAL = 10.0       # seconds: at most one fork check per suspecting peer in this window
MAX_SUSPECT_TIMES = 4_096          # peers whose last suspicion time is kept (beyond: those outside the window go)
MAX_SUSPECTS = 1_024               # suspicions waiting for a check (beyond: gone peers' go, else newcomers wait)


class SyncStopped(Exception):
    """The node stopped while a sync cycle was waiting: the cycle ends here, quietly."""


class SyncCoordinator(service.Service):
    name = "sync"
    log = Logger()

    def __init__(self, node: Any, reactor: Any, peers: Callable[[], list[SyncPeer]] | None = None) -> None:
        self.node = node
        self.reactor = reactor
        cfg = node.config
        self.manager = StateSyncManager(self._tip_height, node.genesis.hash, reactor,
                                        self._apply, batch=cfg.sync_batch, redundancy=cfg.sync_redundancy,
                                        verify=self._verify, on_fork=self.fork_suspected,
                                        on_progress=self._write_status)
        self.resolver: forks.ForkResolver | None = None
        self.last_result: SyncResult | None = None
        self.genesis_alert: str | None = None
        self.state_alert: str | None = None
        self.last_fork: forks.ForkOutcome | None = None
        self._peer_source = peers
        self._loop: task.LoopingCall | None = None
        self._busy = False
        self._again = False
        self._suspects: dict[str, tuple[int, bytes]] = {}     # peer id -> (height, its hash there)
        self._suspected_at: dict[str, float] = {}              # peer id -> when its last suspicion was taken
        self._fork_scheduled = False
        self._status_path = os.path.join(cfg.datadir, STATUS_FILE)
        self.preverifier: Preverifier | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802 - Twisted API
        super().startService()
        node = self.node
        self.resolver = forks.ForkResolver(node.store, node.genesis.chain_id, node.config.max_reorg_depth,
                                           on_rollback=self._rolled_back, on_halt=self._halt,
                                           on_evidence=self._evidence,
                                           record_path=os.path.join(node.config.datadir, forks.CONFLICT_FILE))
        # Signatures of arriving ranges are checked on worker threads while earlier ranges apply (verify.py);
        # a reactor without threads (a test's task.Clock) leaves every check to the apply.
        if IReactorThreads.providedBy(self.reactor):
            self.preverifier = Preverifier(self.reactor, node.store, node.genesis.chain_id)
            self.manager.preverify = self.preverifier.warm
        self._loop = task.LoopingCall(self.trigger)
        self._loop.clock = self.reactor
        self._loop.start(max(node.config.sync_interval, 0.1), now=False)

    def stopService(self) -> None:  # noqa: N802 - Twisted API
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.manager.preverify = None
        if self.preverifier is not None:
            self.preverifier.stop()
            self.preverifier = None
        super().stopService()

    @property
    def progress(self) -> dict[str, Any]:
        out = self.manager.progress.to_json()
        out["genesis_alert"] = self.genesis_alert
        out["state_alert"] = self.state_alert
        out["halted"] = getattr(self.node.consensus, "halted", None)
        return out

    def trigger(self) -> None:
        """Run a cycle now (or right after the one running)."""
        if not self.running:
            return
        if self._busy:
            self._again = True
            return
        self._start(self.run_once(), "Sync cycle failed")

    def fork_suspected(self, peer_id: str, height: int, block_hash: bytes) -> None:
        """``peer_id`` holds ``block_hash`` at ``height``, which we hold too: check for a fork at once.

        Called by the P2P service for a NEW_BLOCK announcement whose hash differs from ours, and by
        the sync run for a block whose parent is not our tip. The check runs on the next reactor turn,
        or right after the cycle or check in progress; two checks never run at once. Suspicions are
        rate-limited per peer: one is taken per ``FORK_SUSPECT_INTERVAL`` seconds, later ones within
        that window are ignored. A peer whose hashes turn out to equal ours (no fork) is charged
        ``stale_data``: a false suspicion is not free.
        """
        if not self.running:
            return
        store = self.node.store
        ours = store.block_hash_at(height) if store is not None and 0 < height <= store.tip_height() else None
        if ours is None or ours == bytes(block_hash):
            return                   # above our tip or agreeing: nothing to check, and no window spent on it
        now = self.reactor.seconds()
        last = self._suspected_at.get(peer_id)
        if last is not None and now - last < FORK_SUSPECT_INTERVAL:
            return
        self._suspected_at[peer_id] = now
        if len(self._suspected_at) > MAX_SUSPECT_TIMES:     # bounded: forget the peers outside the window
            self._suspected_at = {p: t for p, t in self._suspected_at.items() if now - t < FORK_SUSPECT_INTERVAL}
        if peer_id not in self._suspects and len(self._suspects) >= MAX_SUSPECTS:
            # Identities churned during a long cycle: their suspicions are skipped by the check anyway.
            connected = {p.peer_id for p in self.peers()}
            self._suspects = {p: s for p, s in self._suspects.items() if p in connected}
            if len(self._suspects) >= MAX_SUSPECTS:
                return                               # all of connected peers: one of them is checked soon
        self._suspects[peer_id] = (height, bytes(block_hash))
        if self._busy or self._fork_scheduled:
            return                                   # _done schedules it when the running work ends
        self._fork_scheduled = True
        self.reactor.callLater(0, self._start_fork_check)

    def _start_fork_check(self) -> None:
        self._fork_scheduled = False
        if not self.running or self._busy or not self._suspects:
            return
        self._start(self._check_suspects(), "Fork check failed")

    def _tip_height(self) -> int:
        store = self.node.store
        if store is None:                 # the node stopped while a cycle waited on its peers
            raise SyncStopped("the node stopped during the sync cycle")
        return int(store.tip_height())

    def _start(self, coro: Any, what: str) -> None:
        self._busy = True
        d = defer.Deferred.fromCoroutine(coro)
        d.addErrback(self._failed, what)
        d.addBoth(self._done)

    def _failed(self, failure: Failure, what: str) -> None:
        """A cycle that fails is logged, unless the node stopped under it (its store is closed: nothing to do)."""
        if failure.check(SyncStopped) or (not self.running and self.node.store is None):
            self.log.debug("{what}: the node stopped", what=what)
            return
        self.log.failure(what, failure)

    def _done(self, _: Any) -> None:
        self._busy = False
        if not self.running:
            return
        self._write_status()
        if self._suspects and not self._fork_scheduled:
            self._fork_scheduled = True
            self.reactor.callLater(0, self._start_fork_check)
        elif self._again:
            self._again = False
            self.reactor.callLater(0, self.trigger)

    # -- one cycle -------------------------------------------------------------------------------
    def peers(self) -> list[SyncPeer]:
        if self._peer_source is not None:
            return self._peer_source()
        p2p = self.node.p2p
        if p2p is None:
            return []
        return [ConnectionPeer(c, p2p) for c in list(p2p.connections.values()) if c.state == "ready"]

    async def run_once(self) -> SyncResult | None:
        if self._halted():
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
            await self.check_state(peers, statuses)
            return None
        result = await self.manager.sync(peers, statuses, more_peers=self.peers)
        self.last_result = result
        return result

    def _halted(self) -> bool:
        return bool(getattr(self.node.consensus, "halted", None))

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
        return await self._resolve(same, fork_height)

    async def _resolve(self, peers: list[SyncPeer], fork_height: int) -> bool:
        assert self.resolver is not None
        outcome = await self.resolver.resolve(peers, fork_height)
        self.last_fork = outcome
        self.log.warn("Fork at {h}: {kind} {detail}", h=fork_height, kind=outcome.kind.name, detail=outcome.detail)
        return outcome.kind != forks.OutcomeKind.OURS_KEPT

    async def _check_suspects(self) -> None:
        """Search the fork point with every peer whose claimed hash differs from ours; resolve the lowest."""
        suspects, self._suspects = self._suspects, {}
        store = self.node.store
        if self._halted() or store is None:
            return
        peers = {p.peer_id: p for p in self.peers()}
        found: list[int] = []
        for peer_id, (height, their_hash) in sorted(suspects.items()):
            ours = store.block_hash_at(height) if 0 < height <= store.tip_height() else None
            peer = peers.get(peer_id)
            if ours is None or ours == their_hash or peer is None or not peer.usable():
                continue                             # above our tip, agreeing by now, or gone
            try:
                fork = await forks.find_fork_point(store, peer, 1, height)
            except Exception as exc:
                forks._charge(peer, exc, "the fork search", self.log)
                continue
            if fork is not None:
                self.log.warn("Fork: {peer} differs from our chain from height {h}", peer=peer_id, h=fork)
                found.append(fork)
            else:                                    # it claimed another block at ``height``; serves ours
                self.manager._charge(peer, Event.STALE_DATA,
                                     f"announced {their_hash.hex()[:16]} at height {height}, but its chain is ours")
        if found and not self._halted():
            await self._resolve(list(peers.values()), min(found))

    # -- state consistency (SPEC §6 b) -----------------------------------------------------------
    async def check_state(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus]) -> bool:
        """Our state at a recent height against the peers' certified blocks; True if a fork was handled."""
        store = self.node.store
        tip = store.tip_height()
        if tip < 1:
            return False
        alerts = []
        tip_block = store.get_block(tip)
        accumulator = hashlib.sha256(store.lthash()).digest()
        if tip_block is not None and accumulator != tip_block.header.state_root:
            alerts.append(f"our state accumulator ({accumulator.hex()[:16]}) is not the state_root "
                          f"({tip_block.header.state_root.hex()[:16]}) of our tip block {tip}: the store is "
                          "inconsistent, restore it or re-sync from genesis")
        handled = False
        ours_genesis = self.node.genesis.hash
        same = [p for p in peers if p.peer_id in statuses and statuses[p.peer_id].genesis_hash == ours_genesis
                and p.usable()]
        heights = sorted((statuses[p.peer_id].height for p in same), reverse=True)
        height = 0
        if heights:
            held_by_most = heights[(2 * len(heights) + 2) // 3 - 1]       # >= 2/3 of the peers hold it
            height = min(tip, held_by_most) - STATE_CHECK_MARGIN
        our_block = store.get_block(height) if height >= 1 else None
        if our_block is not None:
            agree, disagree = await self._certified_blocks_at(same, statuses, height, our_block)
            answered = len(agree) + len(disagree)
            if disagree and 2 * len(disagree) > answered:
                theirs = {b.header.state_root.hex()[:16] for _, b in disagree}
                alerts.append(f"our state root at height {height} ({our_block.header.state_root.hex()[:16]}) "
                              f"differs from the certified blocks of {len(disagree)} of {answered} peers "
                              f"({', '.join(sorted(theirs))}); handing over to fork resolution")
            if disagree:                             # certified and different: a fork (or two certificates)
                handled = await self._resolve_from(same, height, disagree[0][0])
        alert = "; ".join(alerts) or None
        if alert is not None and alert != self.state_alert:
            self.log.critical("STATE ALERT: {alert}", alert=alert)
        elif alert is None and self.state_alert is not None:
            self.log.info("State consistency restored")
        self.state_alert = alert
        self._write_status()
        return handled

    async def _certified_blocks_at(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus], height: int,
                                   our_block: Block) -> tuple[list[Served], list[Served]]:
        """(agreeing, disagreeing) peers among up to STATE_CHECK_PEERS that serve a certified block at ``height``.

        A peer serving a block whose certificate does not verify is charged ``forged_certificate``, one
        serving none (or another height) ``stale_data``; neither counts.
        """
        holders = self.manager.ranked(peers, statuses, height)[:STATE_CHECK_PEERS]
        results = await defer.DeferredList([self.manager._timed(p, p.get_blocks(height, 1)) for p in holders],
                                           consumeErrors=True)
        agree: list[Served] = []
        disagree: list[Served] = []
        for peer, (ok, got) in zip(holders, results, strict=True):
            if not ok:
                continue                             # timeouts and bad responses were charged by _timed
            if not got or got[0][0].height != height:
                self.manager._charge(peer, Event.STALE_DATA, f"served no block {height} for the state check")
                continue
            block, cert = got[0]
            why = self._verify(block, cert)
            if why is not None:
                self.manager._charge(peer, Event.FORGED_CERTIFICATE, f"block {height} for the state check: {why}")
                continue
            same = block.hash == our_block.hash and block.header.state_root == our_block.header.state_root
            (agree if same else disagree).append((peer, block))
        return agree, disagree

    async def _resolve_from(self, peers: list[SyncPeer], height: int, peer: SyncPeer) -> bool:
        """Fork resolution from the first height at or below ``height`` where ``peer``'s chain differs."""
        store = self.node.store
        try:
            fork = await forks.find_fork_point(store, peer, 1, height)
        except Exception as exc:
            forks._charge(peer, exc, "the fork search", self.log)
            fork = None
        return await self._resolve(peers, fork if fork is not None else height)

    # -- effects ---------------------------------------------------------------------------------
    def _verify(self, block: Block, cert: CommitCertificate) -> str | None:
        return certificate_problem(self.node.store, self.node.genesis.chain_id, block, cert)

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
                                "updated": self.reactor.seconds(), "interval": self.node.config.sync_interval}
        tmp = self._status_path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, self._status_path)
        except OSError as exc:
            self.log.warn("Cannot write {path}: {why}", path=self._status_path, why=str(exc))
