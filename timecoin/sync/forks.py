"""Fork detection and resolution (SPEC §7).

Three pieces, all talking to peers only through :class:`~timecoin.sync.peer.SyncPeer`:

* :func:`find_fork_point` -- the lowest height where a peer's block hash differs from ours. Block
  hashes chain (each header names its parent), so "differs at h" is monotone in h and a binary search
  finds the first difference. Each round trip asks for a *window* of up to ``batch`` consecutive hashes
  centred on the midpoint (one request of a range, never one hash per round trip); once the remaining
  span fits in one window it is fetched whole. Round trips: about ``log2(n / batch) + 1``.
* :func:`detect` -- compares each peer's status (tip and finalized hash at heights we hold, or its hash
  at our tip when it is ahead) with our chain and runs the search for every peer that disagrees.
* :class:`ForkResolver` -- decides one fork height. Choices made where the SPEC is silent:

  - Weight is each answering peer's voting ``power`` (observers 0). When the answering peers hold no
    power at all (an observer-only neighbourhood) every peer weighs 1, so a node is never stuck only
    because its peers are observers.
  - "Answering" means the peer returned a hash at the fork height. A peer whose offered certificate
    does not verify is charged ``FORGED_CERTIFICATE`` and drops out entirely (numerator and
    denominator): it is provably Byzantine. For each competing hash the backers are asked in turn
    (highest power first) until one serves a block whose certificate verifies, so every peer charged
    sent a forgery itself.
  - A certified block whose parent is not our block at ``fork_height - 1`` cannot be rolled back to
    from here (its fork is lower and :func:`detect` finds it); its backers are not charged. It still
    conflicts with a certified block of ours at the same height.
  - Two valid certificates for different blocks at one height (ours and a peer's) prove that >= 1/3 of
    the stake signed twice or broke its lock: evidence is built for every validator that precommitted
    both blocks in the same round, ``on_evidence`` gets each; for certificates of *different* rounds
    the validators that signed both are named as suspects (an "amnesia" conflict: some validators broke
    the locking rules, but an honest one may also precommit two blocks in two rounds [L36], and
    precommits alone cannot tell which -- the prevotes would). Both certificates and the names are
    appended to ``record_path`` (``CONFLICT_FILE`` in the datadir, beside ``HALTED``), ``on_halt`` stops
    finalization, and the store is never touched -- whatever the peer weights say.
  - Only a node whose *own* block at the fork height has no valid certificate rolls back, and only to
    a branch that has a valid certificate and >= 2/3 of the answering weight, and at most
    ``max_reorg_depth`` blocks; deeper it halts and leaves the store alone for the operator.
  - When our certificate is invalid but no branch wins (no valid competitor, or < 2/3 support) the
    outcome is ``UNDECIDED``: nothing changes, and the caller retries with more peers later.
"""
from __future__ import annotations

import enum
import json
import os
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger

from timecoin.errors import StoreError
from timecoin.ledger.block import Block, CommitCertificate, Evidence
from timecoin.p2p.peers import Event
from timecoin.store import MAX_REORG_DEPTH, Store
from timecoin.sync.apply import certificate_problem
from timecoin.sync.peer import MAX_HASHES_PER_REQUEST, BadResponse, PeerStatus, SyncPeer

T = TypeVar("T")

CONFLICT_FILE = "CONFLICTING-CERTIFICATES.json"   # in the datadir beside HALTED: the record for the operator
FORK_SEARCH_BATCH = 512          # hashes per request in the fork search (16 KiB of hashes per answer)
MAX_CONCURRENT_REQUESTS = 8      # peers asked at once while resolving or detecting

_log = Logger(namespace="timecoin.sync.forks")


class OutcomeKind(enum.Enum):
    OURS_KEPT = "ours_kept"                              # our branch is certified; nothing to do
    ROLLED_BACK = "rolled_back"                          # we were on an uncertified branch: rolled back
    HALTED = "halted"                                    # the losing branch is too deep to roll back
    CONFLICTING_CERTIFICATES = "conflicting_certificates"  # two valid certificates: >= 1/3 misbehaved
    UNDECIDED = "undecided"                              # ours uncertified, but no branch has >= 2/3


ForkOutcomeKind = OutcomeKind


@dataclass
class ForkOutcome:
    kind: OutcomeKind
    height: int
    new_tip: int | None = None
    evidence: list[Evidence] = field(default_factory=list)
    detail: str = ""
    amnesia: list[bytes] = field(default_factory=list)     # validators that signed both, in different rounds


# -- helpers ------------------------------------------------------------------------------------------
async def _gather(calls: Iterable[Callable[[], defer.Deferred[T]]],
                  limit: int = MAX_CONCURRENT_REQUESTS) -> list[tuple[bool, Any]]:
    """Run the calls at most ``limit`` at a time; (True, result) or (False, Failure) for each, in order."""
    sem = defer.DeferredSemaphore(max(1, limit))
    deferreds = [sem.run(call) for call in calls]
    if not deferreds:
        return []
    return list(await defer.DeferredList(deferreds, consumeErrors=True))


def _charge(peer: SyncPeer, failure: Any, what: str, log: Logger) -> None:
    """A failed request: charge a peer that sent wrong data (timeouts are charged by the connection)."""
    exc = getattr(failure, "value", failure)
    if isinstance(exc, BadResponse):
        peer.penalize(exc.event)
    log.info("fork handling: {peer} failed {what}: {error}", peer=peer.peer_id, what=what, error=exc)


def _start(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> defer.Deferred[T]:
    return defer.Deferred.fromCoroutine(fn(*args))


def _short(h: bytes | None) -> str:
    return h.hex()[:16] if h else "none"


# -- the search ---------------------------------------------------------------------------------------
async def find_fork_point(store: Store, peer: SyncPeer, low: int, high: int,
                          batch: int = FORK_SEARCH_BATCH) -> int | None:
    """Lowest height in [low, high] where ``peer``'s block hash differs from ours, or None.

    Assumes agreement at ``low - 1`` (the genesis at 0 always agrees: peers of another genesis never
    get this far). ``high`` is clamped to our tip. A peer that answers fewer hashes than asked (it
    claimed the heights) is charged ``STALE_DATA`` once and the search stops below its gap.
    Request failures propagate to the caller.
    """
    batch = max(1, min(batch, MAX_HASHES_PER_REQUEST))
    lo, hi = max(low, 1), min(high, store.tip_height())
    found: int | None = None
    charged = False
    while lo <= hi:
        span = hi - lo + 1
        if span <= batch:
            start, count = lo, span
        else:
            start, count = (lo + hi) // 2 - batch // 2, batch
        theirs = list(await peer.get_block_hashes(start, count))[:count]
        ours = store.block_hashes(start, count)
        n = min(len(theirs), len(ours))
        diff = next((i for i in range(n) if theirs[i] != ours[i]), None)
        if diff is not None:
            if diff > 0 or start == lo:
                return start + diff            # agreement just below it is known
            found, hi = start, start - 1       # differs from the window start on: look lower
            continue
        if n < count:
            if len(theirs) < count and not charged:
                peer.penalize(Event.STALE_DATA)
                charged = True
            hi = min(hi, start + n - 1)
        lo = start + n
    return found


async def detect(store: Store, peers: list[SyncPeer], statuses: dict[str, PeerStatus],
                 batch: int = FORK_SEARCH_BATCH, log: Logger | None = None) -> list[tuple[SyncPeer, int]]:
    """Peers whose chain differs from ours at a height we hold, with the fork height for each.

    A peer is searched when its status tip or finalized hash differs from ours at that height, or,
    when it is ahead of us, when its hash at our tip differs from ours. Peers of another genesis are
    skipped (that is the coordinator's genesis check, not a fork); unusable peers too.
    """
    log = log or _log
    tip = store.tip_height()
    genesis = store.genesis_hash()

    async def check(peer: SyncPeer, status: PeerStatus) -> int | None:
        suspicious = False
        for height, their_hash in ((status.height, status.tip_hash),
                                   (status.finalized_height, status.finalized_hash)):
            if 0 < height <= tip and store.block_hash_at(height) != their_hash:
                suspicious = True
        if not suspicious and status.height > tip > 0:
            theirs = await peer.get_block_hashes(tip, 1)
            suspicious = bool(theirs) and theirs[0] != store.block_hash_at(tip)
        if not suspicious:
            return None
        fork = await find_fork_point(store, peer, 1, min(status.height, tip), batch)
        if fork is None:
            log.info("fork check: {peer}'s status disagreed with our chain but its hashes agree (stale status)",
                     peer=peer.peer_id)
        return fork

    candidates = [(p, statuses[p.peer_id]) for p in peers
                  if p.peer_id in statuses and p.usable() and statuses[p.peer_id].genesis_hash == genesis]
    results = await _gather([partial(_start, check, p, s) for p, s in candidates])
    found: list[tuple[SyncPeer, int]] = []
    for (peer, _), (ok, value) in zip(candidates, results, strict=True):
        if not ok:
            _charge(peer, value, "the fork search", log)
        elif value is not None:
            log.warn("fork: {peer} differs from our chain from height {height}", peer=peer.peer_id, height=value)
            found.append((peer, value))
    return found


# -- the decision -------------------------------------------------------------------------------------
class ForkResolver:
    """Decides a fork at one height: keep ours, roll back, halt, or prove equivocation (module docstring)."""

    def __init__(self, store: Store, chain_id: str, max_reorg_depth: int = MAX_REORG_DEPTH,
                 on_rollback: Callable[[int], None] = lambda tip: None,
                 on_halt: Callable[[str], None] = lambda reason: None,
                 on_evidence: Callable[[Evidence], None] = lambda ev: None,
                 log: Logger | None = None, max_concurrent: int = MAX_CONCURRENT_REQUESTS,
                 record_path: str | None = None) -> None:
        if max_reorg_depth < 0:
            raise ValueError(f"max_reorg_depth must be >= 0, not {max_reorg_depth}")
        self.store = store
        self.chain_id = chain_id
        self.max_reorg_depth = max_reorg_depth
        self.on_rollback = on_rollback
        self.on_halt = on_halt
        self.on_evidence = on_evidence
        self.log = log or _log
        self.max_concurrent = max_concurrent
        self.record_path = record_path        # where conflicting certificates are recorded (None: nowhere)

    def _verifies(self, block: Block, cert: CommitCertificate) -> str | None:
        """None if ``cert`` finalizes ``block`` under our validator set of its height, else why not."""
        return certificate_problem(self.store, self.chain_id, block, cert)

    async def resolve(self, peers: list[SyncPeer], fork_height: int) -> ForkOutcome:
        store, log = self.store, self.log
        tip = store.tip_height()
        if not 1 <= fork_height <= tip:
            raise ValueError(f"fork height {fork_height} is not a block we hold (tip {tip})")
        our_block, our_cert = store.get_block(fork_height), store.get_certificate(fork_height)
        if our_block is None or our_cert is None:
            raise StoreError(f"block or certificate {fork_height} missing below the tip {tip}")
        our_hash = our_block.hash
        ours_invalid = self._verifies(our_block, our_cert)

        # 1. every usable peer's hash at the fork height
        usable = [p for p in peers if p.usable()]
        answers = await _gather([partial(p.get_block_hashes, fork_height, 1) for p in usable], self.max_concurrent)
        by_id = {p.peer_id: p for p in usable}
        votes: dict[str, bytes] = {}            # peer id -> the hash it backs at fork_height
        for peer, (ok, value) in zip(usable, answers, strict=True):
            if not ok:
                _charge(peer, value, f"the hash at fork height {fork_height}", log)
            elif value:
                votes[peer.peer_id] = bytes(value[0])

        # 2. one certified block per competing hash; backers that forge are charged and dropped
        valid: dict[bytes, tuple[Block, CommitCertificate]] = {}
        dropped: list[str] = []                 # "peer: why" for every vote dropped (forged, stale, failed)
        for their_hash in sorted({h for h in votes.values() if h != our_hash}):
            backers = sorted((by_id[i] for i, h in votes.items() if h == their_hash), key=lambda p: -p.power)
            for peer in backers:
                got = await self._fetch_branch(peer, fork_height, their_hash, dropped)
                if got is None:
                    votes.pop(peer.peer_id, None)
                else:
                    valid[their_hash] = got
                    break

        # 3. two valid certificates at one height: equivocation, never roll back
        if ours_invalid is None and valid:
            return self._conflict(fork_height, our_block, our_cert, valid)

        weights = _weights({i: by_id[i].power for i in votes})
        total = sum(weights.values())
        support: dict[bytes, int] = {}
        for peer_id, h in votes.items():
            support[h] = support.get(h, 0) + weights[peer_id]
        if ours_invalid is None:
            losers = sorted(i for i, h in votes.items() if h != our_hash)
            detail = (f"our block {fork_height} ({_short(our_hash)}) is certified; no peer offered a valid "
                      f"competing certificate" + (f"; dropped: {', '.join(dropped)}" if dropped else "")
                      + (f"; other peers on other branches: {', '.join(losers)}" if losers else ""))
            log.info("fork at {height}: {detail}", height=fork_height, detail=detail)
            return ForkOutcome(OutcomeKind.OURS_KEPT, fork_height, None, [], detail)

        # 4. ours is uncertified: roll back to a certified branch with >= 2/3 of the answering weight
        parent = store.block_hash_at(fork_height - 1)
        lower = sorted(_short(h) for h, (b, _) in valid.items() if b.header.prev_hash != parent)
        if lower:
            log.info("fork at {height}: certified block(s) {hashes} build on another parent; that fork is lower",
                     height=fork_height, hashes=", ".join(lower))
        winner = next((h for h in sorted(valid, key=lambda h: -support.get(h, 0))
                       if valid[h][0].header.prev_hash == parent
                       and total > 0 and 3 * support.get(h, 0) >= 2 * total), None)
        if winner is None:
            minority = sorted(i for i, h in votes.items() if h in valid)
            detail = (f"our block {fork_height} ({_short(our_hash)}) has no valid certificate ({ours_invalid}), "
                      f"but no certified branch has >= 2/3 of the {total} answering weight "
                      f"(certified branches: {', '.join(f'{_short(h)}={support.get(h, 0)}' for h in valid) or 'none'}"
                      f"; backed by {', '.join(minority) or 'nobody'}, not charged); nothing changed, retry with "
                      f"more peers")
            log.warn("fork at {height}: {detail}", height=fork_height, detail=detail)
            return ForkOutcome(OutcomeKind.UNDECIDED, fork_height, None, [], detail)
        return self._roll_back(fork_height, tip, our_hash, ours_invalid, winner, support[winner], total,
                               len(valid[winner][1].signatures))

    async def _fetch_branch(self, peer: SyncPeer, height: int, claimed: bytes,
                            dropped: list[str]) -> tuple[Block, CommitCertificate] | None:
        """The peer's certified block at ``height`` if it is ``claimed`` and its certificate verifies.

        Otherwise the peer is charged as it deserves and a line is added to ``dropped``.
        """
        try:
            got = await peer.get_blocks(height, 1)
        except Exception as exc:  # any request failure only drops this peer's vote
            _charge(peer, exc, f"the block at fork height {height}", self.log)
            dropped.append(f"{peer.peer_id} (request failed)")
            return None
        if not got or got[0][0].height != height or got[0][0].hash != claimed:
            peer.penalize(Event.STALE_DATA)
            dropped.append(f"{peer.peer_id} (did not serve its block)")
            self.log.info("fork at {height}: {peer} did not serve the block {hash} it named",
                          height=height, peer=peer.peer_id, hash=_short(claimed))
            return None
        block, cert = got[0]
        why = self._verifies(block, cert)
        if why is not None:
            peer.penalize(Event.FORGED_CERTIFICATE)
            dropped.append(f"{peer.peer_id} (forged certificate: {why})")
            self.log.warn("fork at {height}: {peer} offered block {hash} with a forged certificate ({why})",
                          height=height, peer=peer.peer_id, hash=_short(claimed), why=why)
            return None
        return block, cert

    def _conflict(self, height: int, our_block: Block, our_cert: CommitCertificate,
                  valid: dict[bytes, tuple[Block, CommitCertificate]]) -> ForkOutcome:
        """Two valid certificates at ``height``: evidence or names, a persisted record, an alert, a halt.

        Same round: every validator that precommitted both blocks signed two votes of one (height,
        round, type) -- duplicate-vote :class:`Evidence`, handed to ``on_evidence``. Different rounds:
        someone broke the locking rules (an *amnesia* fault) but precommits cannot prove who (an honest
        validator may precommit two blocks in two rounds, paper L36); those that signed both are named as
        suspects in the alert and in the record for the operator, and no Evidence is built.
        """
        evidence: list[Evidence] = []
        amnesia: set[bytes] = set()
        parts = []
        theirs_record = []
        ours_by_validator = {v.validator: v for v in our_cert.votes()}
        for their_hash, (_block, cert) in sorted(valid.items()):
            both = [v for v in cert.votes() if v.validator in ours_by_validator]
            names = [v.validator.hex() for v in both]
            if cert.round == our_cert.round:
                evidence.extend(Evidence.of(ours_by_validator[v.validator], v) for v in both)
                kind = "equivocation"
                parts.append(f"block {_short(their_hash)} (round {cert.round}) double-signed by "
                             f"{', '.join(names) or 'none'}")
            else:
                amnesia.update(v.validator for v in both)
                kind = "amnesia"
                parts.append(f"block {_short(their_hash)} certified in round {cert.round}, ours in round "
                             f"{our_cert.round}: signed in both rounds (amnesia suspects) by "
                             f"{', '.join(names) or 'none'}")
            theirs_record.append({"block_hash": their_hash.hex(), "round": cert.round, "kind": kind,
                                  "validators": names, "certificate": cert.encoded.hex()})
        for ev in evidence:
            self.on_evidence(ev)
        reason = (f"conflicting commit certificates at height {height}: ours for block {_short(our_block.hash)} "
                  f"(round {our_cert.round}) and a peer's {'; '.join(parts)}; {len(evidence)} double-signing "
                  f"validators recorded as evidence"
                  + (f", {len(amnesia)} validators signed conflicting blocks in different rounds (amnesia suspects)"
                     if amnesia else "")
                  + "; >= 1/3 of the stake misbehaved, finalization stopped, operator action needed"
                  + (f" (record in {self.record_path})" if self.record_path else ""))
        self._persist({"height": height, "reason": reason,
                       "ours": {"block_hash": our_block.hash.hex(), "round": our_cert.round,
                                "certificate": our_cert.encoded.hex()},
                       "theirs": theirs_record,
                       "equivocators": sorted({ev.validator.hex() for ev in evidence}),
                       "amnesia": sorted(v.hex() for v in amnesia)})
        self.log.critical("{reason}", reason=reason)
        self.on_halt(reason)
        return ForkOutcome(OutcomeKind.CONFLICTING_CERTIFICATES, height, None, evidence, reason, sorted(amnesia))

    def _persist(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the JSON list at ``record_path`` (atomically; it survives restarts)."""
        path = self.record_path
        if path is None:
            return
        records = read_conflict_records(path)
        records.append(record)
        tmp = path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(records, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            self.log.error("Cannot write the conflicting-certificate record {path}: {why}", path=path, why=str(exc))

    def _roll_back(self, height: int, tip: int, our_hash: bytes, why: str, winner: bytes, weight: int,
                   total: int, signers: int) -> ForkOutcome:
        target = height - 1
        depth = tip - target
        about = (f"our block {height} ({_short(our_hash)}) has no valid certificate ({why}); peers with {weight} "
                 f"of {total} weight back block {_short(winner)}, certified by {signers} validators")
        if depth > self.max_reorg_depth:
            reason = (f"fork at {height} is {depth} blocks deep, above max_reorg_depth={self.max_reorg_depth}; "
                      f"block application halted, operator action needed: {about}. Stop the node, then re-sync "
                      f"this datadir from genesis or restore it from a trusted copy of the certified chain")
            self.log.critical("{reason}", reason=reason)
            self.on_halt(reason)
            return ForkOutcome(OutcomeKind.HALTED, height, None, [], reason)
        try:
            self.store.rollback_to(target, max_depth=self.max_reorg_depth)
        except StoreError as exc:
            reason = (f"fork at {height}: rolling back {depth} blocks failed ({exc}); block application halted, "
                      f"operator action needed: {about}")
            self.log.critical("{reason}", reason=reason)
            self.on_halt(reason)
            return ForkOutcome(OutcomeKind.HALTED, height, None, [], reason)
        new_tip = self.store.tip_height()
        detail = f"rolled back {depth} blocks to height {new_tip}: {about}"
        self.log.warn("fork at {height}: {detail}", height=height, detail=detail)
        self.on_rollback(new_tip)
        return ForkOutcome(OutcomeKind.ROLLED_BACK, height, new_tip, [], detail)


def read_conflict_records(path: str) -> list[dict[str, Any]]:
    """The conflicting-certificate records at ``path`` (an empty list if none or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def _weights(powers: dict[str, int]) -> dict[str, int]:
    """Voting power per peer id; 1 each when the answering peers hold no power at all (module docstring)."""
    clamped = {i: max(p, 0) for i, p in powers.items()}
    if sum(clamped.values()) == 0:
        return dict.fromkeys(clamped, 1)
    return clamped


__all__ = ["CONFLICT_FILE", "FORK_SEARCH_BATCH", "ForkOutcome", "ForkOutcomeKind", "ForkResolver", "OutcomeKind",
           "detect", "find_fork_point", "read_conflict_records"]
