"""ConsensusService: drives the pure engine with the clock, the WAL, the store and the network.

Inputs are written to the WAL before the engine acts on them: timeouts as they fire, peers' messages
once the engine has checked them (its ``on_accept`` hook, called before the message changes any state),
so a message the engine refuses is never logged (a keyless peer cannot fill the disk). The engine's
actions are carried out here: broadcast (through ``self.broadcast``, which the P2P service sets),
schedule a timeout on the injected ``IReactorTime``, commit a decided block to the store (and clear
the mempool of its txs), record evidence. After a restart the WAL's records of the unfinished height
are replayed, so the validator resumes where it was.

Guard and WAL (SPEC §4 "Never double-sign", "Crash recovery"). The engine may sign several messages in
one call (a single validator signs its proposal, prevote and precommit in one ``_process``), and the guard
(``privval``) makes each signature durable before returning it. If our messages reached the WAL only when
the engine returned, a kill -9 in between left the guard ahead of the WAL by several messages; replay then
rebuilt none of them, every signature of the round was refused, and the node stalled. Now:

1. :class:`WalSigner` wraps the guard: the WAL is synced before every signature (the inputs behind it,
   and our previous signed message, become durable), and every signature it returns is appended to the
   WAL inside the sign call, before the engine continues. A proposal is first logged *unsigned*
   (``PROPOSAL_INTENT``, synced with the inputs), then signed, then logged signed. So at any crash at
   most the very last signed message is missing from the WAL, and if it is a proposal, its intent (with
   the block) is there. The guard's record is one ``fdatasync`` of a preallocated file (``guardfile``).
2. At startup, if the guard's last record is at the height being resumed and that message is not in the
   WAL, it is rebuilt (a vote from the record's sign bytes + signature; a proposal from its intent + the
   signature), appended to the WAL, replayed with the rest, and re-broadcast.
Inputs from peers are logged once accepted and before they are processed (and WalSigner syncs the WAL
before every signature), so replay re-derives the same state (round, lock) and the same signing
requests; the guard answers them with the recorded signatures. And should the guard still refuse
something (a lost WAL), the engine schedules the step's timeout itself and moves to the next round
(``Engine._refused``): no stall either way.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from timecoin.consensus import engine as eng
from timecoin.consensus.app import ChainApp
from timecoin.consensus.guardfile import GUARD_FILE, GuardFile, GuardFileError
from timecoin.consensus.privval import PrivValidator, proposal_from_record, vote_from_record
from timecoin.consensus.wal import WalError, WalKind, WalRecord, WriteAheadLog
from timecoin.errors import DecodeError, InvalidSignature, Reason, StoreError, ValidationError
from timecoin.ledger.block import (
    Block,
    CommitCertificate,
    Evidence,
    Proposal,
    QuorumProof,
    Vote,
    verify_certificate,
)

BroadcastFn = Callable[[Any], None]
FetchBlockFn = Callable[[int, bytes, tuple[bytes, ...]], None]     # (height, block hash, voter addresses)
HALT_FILE = "HALTED"            # in the datadir: why finalizing stopped; the operator removes it to resume
# A write the disk refused (full, I/O, read-only): the store, WAL or guard has told node.fatal (one line).
STORAGE_ERRORS = (StoreError, WalError, GuardFileError)


class WalSigner:
    """The double-sign guard, with every signature it hands out in the WAL before the engine sees it.

    ``sign_proposal``: the unsigned proposal (block included) is logged (``PROPOSAL_INTENT``; skipped when
    the guard would refuse anyway) and the WAL synced, then the guard signs (its record is synced), then
    the signed proposal is logged. ``sign_vote``: the WAL is synced, the guard signs, then the vote is
    logged. Signed messages are flushed, not synced: the next signature's sync makes them durable, and the
    guard's record rebuilds the last one. A crash can thus separate the guard from the WAL by at most the
    one message being signed, which the service rebuilds at startup (see the module docstring). Per
    height that is one WAL sync and one guard sync per signature (issue 15: the old order cost four syncs
    a vote, two of them an LMDB commit). A message already logged at this height (a replayed or
    re-requested signature) is not logged twice.
    """

    def __init__(self, guard: PrivValidator, wal: WriteAheadLog) -> None:
        self.guard = guard
        self.address = guard.address
        self.wal = wal
        self._height = -1
        self._logged: set[bytes] = set()      # kind byte + data of our records of ``_height``

    def note_logged(self, height: int, kind: WalKind, data: bytes) -> None:
        if height != self._height:
            self._height, self._logged = height, set()
        self._logged.add(bytes((kind,)) + data)

    def append(self, height: int, kind: WalKind, data: bytes, sync: bool = False) -> None:
        if height == self._height and bytes((kind,)) + data in self._logged:
            return
        self.wal.append(kind, data, sync=sync)
        self.note_logged(height, kind, data)

    def sign_vote(self, vote: Vote) -> Vote | None:
        # Peers' inputs are only flushed when logged; the guard's record is synced. Make the inputs that led
        # to this vote durable first, so a power cut can never leave a signed vote whose lock is not replayable.
        # The signed vote itself is only flushed: the guard's record rebuilds it, and the next signature's
        # sync makes it durable, so at most the last signed message is missing from the WAL after a crash.
        self.wal.sync()
        signed = self.guard.sign_vote(vote)
        if signed is not None:
            self.append(signed.height, WalKind.VOTE, signed.encoded)
        return signed

    def sign_proposal(self, proposal: Proposal) -> Proposal | None:
        unsigned = dataclasses.replace(proposal, proposer=self.address, signature=bytes(64))
        # One sync for both: the inputs behind a re-proposal (validValue) and the intent (with its block),
        # which must be durable before the guard signs (the guard's record holds only the block's hash).
        if self.guard.would_sign_proposal(unsigned):
            self.append(unsigned.height, WalKind.PROPOSAL_INTENT, unsigned.encoded)
        self.wal.sync()
        signed = self.guard.sign_proposal(unsigned)
        if signed is not None:
            self.append(signed.height, WalKind.PROPOSAL, signed.encoded)
        return signed


class ConsensusService(service.Service):
    name = "consensus"
    log = Logger()

    def __init__(self, node: Any, clock: IReactorTime) -> None:
        self.node = node
        self.clock = clock
        self.engine: eng.Engine | None = None
        self.app: ChainApp | None = None
        self.wal: WriteAheadLog | None = None
        self.broadcast: BroadcastFn = lambda msg: None
        # Set by the P2P service: get a decided block we lack from the validators that precommitted it
        # (it comes back through apply_certified_block, with those precommits as its certificate).
        self.fetch_block: FetchBlockFn = lambda height, block_hash, voters: None
        self.on_commit: list[Callable[[Any], None]] = []
        # Called with (step left, seconds spent in it) when the engine's (height, round, step) changes (metrics).
        self.on_step: list[Callable[[str, float], None]] = []
        self._step_since: tuple[tuple[int, int, int], float] | None = None
        self.signer: WalSigner | None = None
        self.guard_file: GuardFile | None = None
        self._timers: dict[tuple[int, int, int], IDelayedCall] = {}
        self._replaying = False
        self.committed_heights = 0
        self.halted: str | None = None          # why finalizing stopped (SPEC §7), until the operator acts
        self.halt_file = HALT_FILE

    # -- lifecycle -------------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802 - Twisted API
        super().startService()
        node, cfg = self.node, self.node.config
        store = node.store
        self.app = ChainApp(store, node.genesis.params, node.key.address, node.genesis.genesis_time,
                            candidates=lambda: node.mempool.iter_selected() if node.mempool else (),
                            max_block_txs=cfg.max_block_txs)
        fatal = getattr(node, "fatal", None)          # a refused write (disk full...) stops the node, one line
        self.wal = WriteAheadLog(os.path.join(cfg.datadir, "consensus.wal"), on_write_error=fatal)
        self.guard_file = GuardFile(os.path.join(cfg.datadir, GUARD_FILE), legacy=store, on_write_error=fatal)
        self.signer = WalSigner(PrivValidator(node.key, node.genesis.chain_id, self.guard_file), self.wal)
        timeouts = eng.Timeouts(cfg.timeout_propose, cfg.timeout_propose_delta, cfg.timeout_prevote,
                                cfg.timeout_prevote_delta, cfg.timeout_precommit, cfg.timeout_precommit_delta,
                                cfg.block_interval, cfg.precision, cfg.message_delay)
        self.engine = eng.Engine(self.app, self.signer, timeouts, on_accept=self._log_input)
        self.halt_file = os.path.join(cfg.datadir, HALT_FILE)
        if os.path.exists(self.halt_file):
            with open(self.halt_file, encoding="utf-8", errors="replace") as f:
                self.halted = f.read().strip() or "halted by an earlier run"
            self.log.critical("CONSENSUS HALTED (from {path}): {reason}. Remove the file and restart to resume.",
                              path=self.halt_file, reason=self.halted)
        height = store.tip_height() + 1
        self.log.info("Consensus starting at height {height} as {role}", height=height,
                      role="validator" if node.key.address in store.validator_set(height) else "observer")
        if self.halted is not None:
            return
        pending = [r for r in self.wal.pending() if _record_height(r) == height]
        for rec in pending:
            if rec.kind in (WalKind.PROPOSAL, WalKind.VOTE, WalKind.PROPOSAL_INTENT):
                self.signer.note_logged(height, rec.kind, rec.data)
        recovered = self._recover_last_signed(height, pending)
        if recovered is not None:
            pending.append(recovered[0])
        self._run(lambda: self.engine.start_height(height, self.clock.seconds(), self.app.prev_block_time_ms() / 1000))
        self._replay(height, pending)
        if recovered is not None:
            self.broadcast(recovered[1])           # it was signed, and may never have left the node

    def _recover_last_signed(self, height: int, pending: list[WalRecord]) -> tuple[WalRecord, Proposal | Vote] | None:
        """The guard's last signed message if it is of ``height`` and missing from the WAL: rebuilt, appended
        to the WAL (fsync'd) and returned (as the record to replay, and the message to re-broadcast)."""
        guard = self.signer.guard
        last = guard.last_signed()
        if last is None or last[0] != height:
            return None
        _, round_, step, payload, sig = last
        try:
            msg: Proposal | Vote | None = vote_from_record(step, payload, sig)
            if msg is None:
                intents = [Proposal.decode(r.data) for r in reversed(pending) if r.kind == WalKind.PROPOSAL_INTENT]
                msg = proposal_from_record(step, payload, sig, intents)
        except (DecodeError, ValueError) as exc:
            self.log.error("Guard record at {h}/{r}/{s} unreadable: {why}", h=height, r=round_, s=step, why=str(exc))
            return None
        if msg is None:
            # Not reachable with WalSigner (the intent is fsync'd before the guard signs); a lost or foreign
            # WAL. The engine still moves on: the round's propose timeout, then refused-vote timeouts.
            self.log.warn("Guard signed a proposal at {h}/{r} that the WAL cannot rebuild", h=height, r=round_)
            return None
        kind = WalKind.PROPOSAL if isinstance(msg, Proposal) else WalKind.VOTE
        if any(r.kind == kind and r.data == msg.encoded for r in pending):
            return None
        try:
            msg.verify_signature(self.node.key.public_key, self.app.chain_id)
        except InvalidSignature:
            self.log.error("Guard record at {h}/{r}/{s} does not verify", h=height, r=round_, s=step)
            return None
        self.log.info("Rebuilt our {kind} of {h}/{r} from the double-sign guard (not in the WAL)",
                      kind=kind.name.lower(), h=height, r=round_)
        self.signer.append(height, kind, msg.encoded)
        return WalRecord(kind, msg.encoded), msg

    def stopService(self) -> None:  # noqa: N802 - Twisted API
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        if self.wal is not None:
            self.wal.close()
        if self.guard_file is not None:
            self.guard_file.close()
        return super().stopService()

    def _replay(self, height: int, pending: list[WalRecord]) -> None:
        if not pending:
            return
        self.log.info("Replaying {n} WAL records of height {height}", n=len(pending), height=height)
        self._replaying = True
        try:
            for rec in pending:
                try:
                    if rec.kind == WalKind.PROPOSAL:        # judged timely when it first arrived
                        self.receive_proposal(Proposal.decode(rec.data), timely=True)
                    elif rec.kind == WalKind.VOTE:
                        self.receive_vote(Vote.decode(rec.data))
                    elif rec.kind == WalKind.QUORUM:
                        self.receive_quorum(QuorumProof.decode(rec.data))
                    elif rec.kind == WalKind.TIMEOUT:
                        h, r, k = _timeout_fields(rec.data)
                        self._on_timeout(h, r, eng.TimeoutKind(k))
                except (DecodeError, ValidationError):
                    continue
        finally:
            self._replaying = False

    # -- inputs ----------------------------------------------------------------------------------
    def receive_proposal(self, proposal: Proposal, timely: bool | None = None) -> None:
        """A proposal from a peer (or the WAL). Raises ValidationError if the engine refuses it (then nothing
        is logged); an accepted one is logged by :meth:`_log_input` before the engine acts on it."""
        self._check_not_halted()
        self._run(lambda: self.engine.on_proposal(proposal, self.clock.seconds(), timely))

    def receive_vote(self, vote: Vote) -> None:
        self._check_not_halted()
        self._run(lambda: self.engine.on_vote(vote, self.clock.seconds()))

    def receive_quorum(self, proof: QuorumProof) -> None:
        """A peer's QuorumProof (vote propagation). Logged like a vote: its votes may be what locks us."""
        self._check_not_halted()
        self._run(lambda: self.engine.on_quorum(proof, self.clock.seconds()))

    def _log_input(self, msg: Proposal | Vote | QuorumProof) -> None:
        """The engine's ``on_accept`` hook: a peer input it accepted, logged before it changes any state.

        Flushed, not fsync'd (peers can send it again); :class:`WalSigner` syncs before any signature that
        may rest on it. Not while replaying (the record is already there). A next-height message is logged
        here when its height starts and the engine takes it from its buffer, after the marker of the height
        before, which is where replay looks for it.
        """
        if self._replaying:
            return
        kind = (WalKind.PROPOSAL if isinstance(msg, Proposal) else WalKind.VOTE if isinstance(msg, Vote)
                else WalKind.QUORUM)
        self.wal.append(kind, msg.encoded)

    def apply_certified_block(self, block: Block, cert: CommitCertificate) -> None:
        """A decided block from a peer (catch-up): verify its certificate, commit it, move to the next height.

        Committing a block that carries a valid commit certificate is always safe, whatever this node's
        own round state (a certificate means > 2/3 of the height's power precommitted it). Raises
        ValidationError (WRONG_HEIGHT, BAD_CERTIFICATE, BAD_BLOCK...) and leaves everything unchanged.
        """
        self._check_not_halted()
        height = self.node.store.tip_height() + 1
        if block.height != height or cert.height != height:
            raise ValidationError(Reason.WRONG_HEIGHT, f"block {block.height} offered, we need {height}")
        verify_certificate(block, cert, self.app.validator_set(height), self.app.chain_id)
        self._run(lambda: self._commit(eng.CommitBlock(block, cert)))

    def blocks_synced(self, blocks: list[Block]) -> None:
        """Sync committed ``blocks`` (in order) behind the engine's back: start at the new tip.

        The engine's state for the heights they decided is dropped (they carry valid certificates, so
        whatever this node was doing at those heights is moot), its timers cancelled, the mempool
        cleared of their transactions, and commit listeners told about the last one. A write the disk
        refuses here (the WAL's marker, the priorities) stops the node like one in :meth:`_run`.
        """
        if not blocks or self.engine is None or self._stopping():
            return
        try:
            self._blocks_synced(blocks)
        except STORAGE_ERRORS:
            if not self._stopping():
                raise

    def _blocks_synced(self, blocks: list[Block]) -> None:
        store = self.node.store
        tip = store.tip_height()
        last = blocks[-1]
        for key in [k for k in self._timers if k[0] <= tip]:
            call = self._timers.pop(key)
            if call.active():
                call.cancel()
        self._end_height(tip)
        if self.node.mempool is not None:
            self.node.mempool.remove_committed([tx for b in blocks for tx in b.txs])
            slashed = [ev.validator for b in blocks for ev in b.evidence]
            if slashed:
                self.node.mempool.revalidate(slashed)
        for b in blocks:
            for ev in b.evidence:
                self.app.pending_evidence.pop(ev.hash, None)
        self.app.synced(blocks)
        for cb in self.on_commit:
            cb(last)
        if self.halted is None and self.engine.height <= tip:
            self._run(lambda: self.engine.start_height(tip + 1, self.clock.seconds(), last.header.timestamp / 1000))

    def restart_at_tip(self) -> None:
        """After a rollback: forget the engine's height and start again on the (new) stored tip."""
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        tip = self.node.store.tip_height()
        self._end_height(tip)
        if self.halted is None:
            self._run(lambda: self.engine.start_height(tip + 1, self.clock.seconds(),
                                                       self.app.prev_block_time_ms() / 1000))

    def halt(self, reason: str) -> None:
        """Stop finalizing (two valid conflicting certificates, a fork too deep): the operator must act."""
        if self.halted is None:
            self.log.critical("CONSENSUS HALTED: {reason}. After investigating, remove {path} and restart "
                              "the node to resume.", reason=reason, path=self.halt_file)
            try:
                with open(self.halt_file, "w", encoding="utf-8") as f:
                    f.write(reason + "\n")
            except OSError as exc:
                self.log.error("Cannot write {path}: {why}", path=self.halt_file, why=str(exc))
        self.halted = reason
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()

    def _end_height(self, height: int) -> None:
        """Write ``height``'s WAL marker (before the next height starts).

        The next height's messages the engine buffered are not in the log yet: ``start_height`` judges them
        again and :meth:`_log_input` logs the ones it takes, after this marker, where replay of the next
        height finds them.
        """
        self.wal.end_height(height)

    def _check_not_halted(self) -> None:
        if self.halted is not None:
            raise ValidationError(Reason.SHUTTING_DOWN, "consensus is halted")

    def _on_timeout(self, height: int, round_: int, kind: eng.TimeoutKind) -> None:
        call = self._timers.pop((height, round_, int(kind)), None)
        if call is not None and call.active():      # a replayed timeout: the live timer must not fire it again
            call.cancel()
        if not self._replaying:
            self.wal.append(WalKind.TIMEOUT, height.to_bytes(8, "big") + round_.to_bytes(4, "big") + bytes((kind,)))
        self._run(lambda: self.engine.on_timeout(height, round_, kind, self.clock.seconds()))

    # -- actions ---------------------------------------------------------------------------------
    def _stopping(self) -> bool:
        """The node is stopping on a fatal storage error: consensus takes no further input."""
        return getattr(self.node, "fatal_reason", None) is not None

    def _run(self, step: Callable[[], list[eng.Action]]) -> None:
        """Carry out the engine's actions. A storage write the disk refused stops the node (``node.fatal``
        said why in one line); from then on nothing is processed -- the engine may be mid-height, and a
        node that cannot record what it signs or commits must not go on (no traceback for each timer)."""
        if self._stopping():
            return
        try:
            queue = list(step())
            while queue:
                action = queue.pop(0)
                queue.extend(self._perform(action))
        except STORAGE_ERRORS:
            if not self._stopping():
                raise               # not a refused write (e.g. a store consistency refusal): a bug, loudly
            return
        self._note_step()

    def _note_step(self) -> None:
        """Time each engine step (propose, prevote, precommit, committed) for the ``on_step`` listeners."""
        if self.engine is None:
            return
        key = (self.engine.height, self.engine.round, int(self.engine.step))
        now = self.clock.seconds()
        if self._step_since is None or self._step_since[0] != key:
            if self._step_since is not None:
                (_, _, step), since = self._step_since
                for cb in self.on_step:
                    cb(eng.Step(step).name.lower(), now - since)
            self._step_since = (key, now)

    def _perform(self, action: eng.Action) -> list[eng.Action]:
        if isinstance(action, eng.BroadcastVote):          # already in the WAL: WalSigner logged it
            self.broadcast(action.vote)
        elif isinstance(action, eng.BroadcastProposal):
            self.broadcast(action.proposal)
        elif isinstance(action, eng.ScheduleTimeout):
            key = (action.height, action.round, int(action.kind))
            old = self._timers.pop(key, None)
            if old is not None and old.active():
                old.cancel()
            self._timers[key] = self.clock.callLater(action.delay, self._fire, action.height, action.round,
                                                     action.kind)
        elif isinstance(action, eng.EvidenceFound):
            self.record_evidence(action.evidence)
        elif isinstance(action, eng.FetchBlock):
            self.log.info("Holding +2/3 precommits for block {h} {hash} we never received: fetching it",
                          h=action.height, hash=action.block_hash.hex()[:16])
            self.fetch_block(action.height, action.block_hash, action.voters)
        elif isinstance(action, eng.CommitBlock):
            return self._commit(action)
        return []

    def _fire(self, height: int, round_: int, kind: eng.TimeoutKind) -> None:
        if self._stopping():
            return
        try:
            self._on_timeout(height, round_, kind)
        except STORAGE_ERRORS:
            if not self._stopping():
                self.log.failure("Consensus timeout handling failed")
        except Exception:
            self.log.failure("Consensus timeout handling failed")

    def record_evidence(self, ev: Evidence) -> None:
        if not self.app.add_evidence(ev):
            return
        self.log.warn("Equivocation by validator {v} at height {h} round {r}", v=ev.validator.hex(),
                      h=ev.height, r=ev.vote_a.round)
        self.broadcast(ev)

    def _commit(self, action: eng.CommitBlock) -> list[eng.Action]:
        block = action.block
        self.app.commit(block, action.certificate)
        self._end_height(block.height)
        if self.node.mempool is not None:
            self.node.mempool.remove_committed(block.txs)
            if block.evidence:      # slashed validators' pending txs may no longer be affordable
                self.node.mempool.revalidate([ev.validator for ev in block.evidence])
        self.committed_heights += 1
        self.log.info("Committed block {height} {hash} ({ntx} txs, round {round})", height=block.height,
                      hash=block.hash.hex(), ntx=len(block.txs), round=block.header.round)
        for cb in self.on_commit:
            cb(block)
        for key in [k for k in self._timers if k[0] <= block.height]:
            call = self._timers.pop(key)
            if call.active():
                call.cancel()
        return self.engine.start_height(block.height + 1, self.clock.seconds(), block.header.timestamp / 1000)


def _record_height(rec: WalRecord) -> int | None:
    try:
        if rec.kind == WalKind.TIMEOUT:
            return _timeout_fields(rec.data)[0]
        if rec.kind in (WalKind.PROPOSAL, WalKind.PROPOSAL_INTENT):
            return int.from_bytes(rec.data[0:8], "big")
        if rec.kind in (WalKind.VOTE, WalKind.QUORUM):      # both start: type (1 byte), height (8)
            return int.from_bytes(rec.data[1:9], "big")
    except (IndexError, ValueError):
        return None
    return None


def _timeout_fields(data: bytes) -> tuple[int, int, int]:
    if len(data) != 13:
        raise DecodeError("bad WAL timeout record")
    return int.from_bytes(data[0:8], "big"), int.from_bytes(data[8:12], "big"), data[12]
