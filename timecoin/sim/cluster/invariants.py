"""Invariants of the whole-node simulator, checked continuously on a running :class:`Cluster`.

Each class implements :class:`~timecoin.sim.cluster.base.Invariant`: ``attach`` installs observers on
every honest node incarnation (``cluster.on_build``), ``check`` reads what the honest nodes did since
the last call and returns only violations not reported before. Work is incremental: per node a cursor
of the heights already read, so a check costs what happened since the previous one.

* :class:`Agreement`, :class:`Validity`, :class:`Integrity`: safety (Tendermint paper §4 Lemma/Theorem
  "Agreement", "Validity", SPEC §4 "Safety", "Never double-sign").
* :class:`Liveness`: progress after the last fault healed, with < 1/3 of the power faulty (Tendermint
  paper §4 "Termination", SPEC §4 "Liveness").
* :class:`Accountability`: provable Byzantine behaviour is punished (SPEC §4 "Evidence", §9 peer bans).
* :class:`Durability`: accepted transactions are finalized or dropped for a stated reason (SPEC §9
  mempool), with the :class:`~timecoin.sim.cluster.workload.Workload`.

Who is honest: ``SimNode.byzantine`` is False. A crashed honest node stays honest: what its store holds
(and what its commit listeners saw before it died) is still checked.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import lmdb

from timecoin.errors import InvalidSignature, StoreError, ValidationError
from timecoin.ledger.block import Block, CommitCertificate, Proposal, Vote, verify_certificate
from timecoin.ledger.state import validate_block
from timecoin.memstore import MemoryStore
from timecoin.sim.cluster.base import Invariant, Trace, Violation

if TYPE_CHECKING:
    from timecoin.sim.cluster.cluster import Cluster, SimNode
    from timecoin.sim.cluster.workload import Workload

READ_CHUNK = 256              # blocks read from a store per request


def _open_store(sn: SimNode) -> Any:
    """The running incarnation's store, or None (crashed, down, closed)."""
    node = sn.node
    store = None if node is None else node.store
    if store is None or getattr(store, "closed", False):
        return None
    return store


def _read_blocks(store: Any, start: int, end: int) -> list[tuple[Block, CommitCertificate]]:
    out: list[tuple[Block, CommitCertificate]] = []
    h = start
    while h <= end:
        chunk = store.get_blocks(h, min(READ_CHUNK, end - h + 1))
        if not chunk:
            break
        out.extend(chunk)
        h += len(chunk)
    return out


class _Reported:
    """Violations already handed out, so ``check`` never returns one twice."""

    def __init__(self) -> None:
        self._keys: set[Any] = set()

    def new(self, key: Any) -> bool:
        if key in self._keys:
            return False
        self._keys.add(key)
        return True


class _ChainReader:
    """Per honest node, the blocks committed since the last read (a cursor per node name).

    A node whose stored tip fell below its cursor (a rollback) is read again from its new tip; a block
    whose parent hash does not match what this reader saw at the height below is passed on too (the
    caller decides), so a replaced finalized block is never missed.
    """

    def __init__(self) -> None:
        self.cursor: dict[str, int] = {}

    def new_blocks(self, sn: SimNode) -> list[tuple[Block, CommitCertificate]]:
        store = _open_store(sn)
        if store is None:
            return []
        try:
            tip = store.tip_height()
            seen = self.cursor.get(sn.name, 0)
            if tip < seen:
                self.cursor[sn.name] = tip
                return []
            blocks = _read_blocks(store, seen + 1, tip)
        except (lmdb.Error, StoreError):
            return []
        if blocks:
            self.cursor[sn.name] = blocks[-1][0].height
        return blocks


class Agreement:
    """Tendermint paper §4 "Agreement" / SPEC §4 Safety: no two honest nodes finalize different blocks at
    one height, and no honest node replaces a block it finalized.

    Observed two ways: each honest incarnation's ``consensus.on_commit`` listeners (installed through
    ``cluster.on_build``, so a commit is recorded even if the node crashes before the next check) and each
    honest store, read incrementally (sync commits whole ranges and tells the listeners only the last).
    The first honest commit at a height is the reference; every other honest commit there must equal it.
    """

    name = "agreement"

    def __init__(self) -> None:
        self.first: dict[int, tuple[bytes, str]] = {}        # height -> (hash, first node)
        self.by_node: dict[tuple[str, int], bytes] = {}      # (node, height) -> hash it committed
        self._reader = _ChainReader()
        self._pending: list[tuple[float, str, int, bytes]] = []
        self._reported = _Reported()
        self._cluster: Cluster | None = None

    def attach(self, cluster: Cluster, trace: Trace) -> None:
        self._cluster = cluster
        cluster.on_build.append(self._hook)

    def _hook(self, sn: SimNode) -> None:
        if sn.byzantine or sn.node is None:
            return
        sn.node.consensus.on_commit.append(lambda block, sn=sn: self._seen(sn.name, block.height, block.hash))

    def _seen(self, node: str, height: int, block_hash: bytes) -> None:
        now = self._cluster.now() if self._cluster is not None else 0.0
        self._pending.append((now, node, height, block_hash))

    def check(self, cluster: Cluster, final: bool) -> list[Violation]:
        for sn in cluster.honest():
            for block, _ in self._reader.new_blocks(sn):
                self._pending.append((cluster.now(), sn.name, block.height, block.hash))
        out: list[Violation] = []
        pending, self._pending = self._pending, []
        for now, node, height, block_hash in pending:
            own = self.by_node.get((node, height))
            if own is not None and own != block_hash and self._reported.new(("replaced", node, height, block_hash)):
                out.append(Violation(self.name, now, node, f"height {height}: finalized {own.hex()[:16]}, "
                                                           f"later holds {block_hash.hex()[:16]}"))
            self.by_node.setdefault((node, height), block_hash)
            ref = self.first.setdefault(height, (block_hash, node))
            if ref[0] != block_hash and self._reported.new(("fork", node, height, block_hash)):
                out.append(Violation(self.name, now, node, f"height {height}: finalized {block_hash.hex()[:16]}, "
                                                           f"{ref[1]} finalized {ref[0].hex()[:16]}"))
        return out


class Validity:
    """Tendermint paper §4 "Validity" / SPEC §4: every finalized block is valid against its parent state, and
    honest nodes hold equal state at equal heights.

    One replay of the finalized chain from genesis on a :class:`MemoryStore`, extended incrementally: at
    the next height every distinct block honest nodes hold there is checked against the replay's state
    (``Block.check_roots``, ``ledger.state.validate_block`` -- which recomputes the state root -- and
    ``verify_certificate`` against that height's validator set, as ``timecoin.sim.invariants.check_validity``);
    the first valid one extends the replay. A different *valid* block at one height is Agreement's to
    report. Each honest running node's stored state (``sha256(store.lthash())``) must equal the state root
    of the block at its tip; a node whose stored hash at a height differs from the replay's is reported
    for that height too if its block fails validation there.
    """

    name = "validity"

    def __init__(self) -> None:
        self._replay: MemoryStore | None = None
        self._prev_ts = 0
        self._chain_id = ""
        self._params: Any = None
        self._roots: dict[int, bytes] = {}                     # height -> state root of the replayed block
        self._hashes: dict[int, bytes] = {}                    # height -> replayed block hash
        self._candidates: dict[int, list[tuple[str, Block, CommitCertificate]]] = {}
        self._reader = _ChainReader()
        self._reported = _Reported()

    def attach(self, cluster: Cluster, trace: Trace) -> None:
        genesis = cluster.genesis
        self._replay = MemoryStore(genesis)
        self._prev_ts = genesis.genesis_time
        self._chain_id = genesis.chain_id
        self._params = genesis.params

    def check(self, cluster: Cluster, final: bool) -> list[Violation]:
        assert self._replay is not None, "attach first"
        now = cluster.now()
        out: list[Violation] = []
        for sn in cluster.honest():
            for block, cert in self._reader.new_blocks(sn):
                self._candidates.setdefault(block.height, []).append((sn.name, block, cert))
        for height in [h for h in self._candidates if h <= self._replay.tip_height()]:
            del self._candidates[height]        # a late reader's copy: a different hash is Agreement's to report
        while self._replay.tip_height() + 1 in self._candidates:
            height = self._replay.tip_height() + 1
            valid: list[tuple[Block, CommitCertificate]] = []
            done: set[bytes] = set()
            for node, block, cert in self._candidates.pop(height):
                if block.hash in done:
                    continue
                done.add(block.hash)
                why = self._validate(block, cert)
                if why is None:
                    valid.append((block, cert))
                elif self._reported.new(("invalid", block.hash)):
                    out.append(Violation(self.name, now, node, f"height {height} block {block.hash.hex()[:16]}: {why}"))
            if not valid:
                break                                   # wait for a valid block at this height from someone
            self._extend(*valid[0])
        out += self._check_state(cluster, now)
        return out

    def _validate(self, block: Block, cert: CommitCertificate) -> str | None:
        assert self._replay is not None
        try:
            block.check_roots()
            validate_block(self._replay, self._params, block, self._replay.tip_hash(), self._prev_ts)
            validators = self._replay.validator_set(block.height)
            assert validators is not None
            verify_certificate(block, cert, validators, self._chain_id)
        except (ValidationError, InvalidSignature, StoreError) as exc:
            return str(exc)
        return None

    def _extend(self, block: Block, cert: CommitCertificate) -> None:
        assert self._replay is not None
        result = validate_block(self._replay, self._params, block, self._replay.tip_hash(), self._prev_ts)
        self._replay.commit_block(block, cert, result)
        self._prev_ts = block.header.timestamp
        self._roots[block.height] = block.header.state_root
        self._hashes[block.height] = block.hash

    def _check_state(self, cluster: Cluster, now: float) -> list[Violation]:
        out: list[Violation] = []
        for sn in cluster.honest():
            store = _open_store(sn)
            if store is None:
                continue
            try:
                tip = store.tip_height()
                tip_hash = store.tip_hash()
                root = hashlib.sha256(store.lthash()).digest()
            except (lmdb.Error, StoreError):
                continue
            if tip <= 0 or self._hashes.get(tip) != tip_hash:
                continue
            if root != self._roots[tip] and self._reported.new(("state", sn.name, tip, root)):
                out.append(Violation(self.name, now, sn.name, f"stored state at height {tip} hashes to "
                                                              f"{root.hex()[:16]}, the block's state root is "
                                                              f"{self._roots[tip].hex()[:16]}"))
        return out



class Integrity:
    """SPEC §4 "Never double-sign" (Tendermint paper §4: a correct process sends at most one proposal per
    (height, round) and one vote per (height, round, step)): no honest validator broadcasts two different
    proposals for one (height, round) or two different votes for one (height, round, type).

    Everything an honest incarnation broadcasts is observed by wrapping ``node.consensus.broadcast`` (set
    by the P2P service inside ``build_node``, so the ``on_build`` hook sees it); the record is kept per
    validator across incarnations, so a restart that forgot what it signed is caught.
    """

    name = "integrity"

    def __init__(self) -> None:
        self.proposals: dict[tuple[str, int, int], bytes] = {}      # (node, height, round) -> signing payload
        self.votes: dict[tuple[str, int, int, int], bytes] = {}     # (node, height, round, type) -> block hash
        self.seen = 0
        self._pending: list[Violation] = []
        self._reported = _Reported()
        self._cluster: Cluster | None = None

    def attach(self, cluster: Cluster, trace: Trace) -> None:
        self._cluster = cluster
        cluster.on_build.append(self._hook)

    def _hook(self, sn: SimNode) -> None:
        if sn.byzantine or sn.node is None:
            return
        consensus = sn.node.consensus
        inner = consensus.broadcast

        def observed(msg: Any, sn: SimNode = sn) -> None:
            self._record(sn.name, msg)
            inner(msg)

        consensus.broadcast = observed

    def _record(self, node: str, msg: Any) -> None:
        now = self._cluster.now() if self._cluster is not None else 0.0
        if isinstance(msg, Vote):
            self.seen += 1
            vkey = (node, msg.height, msg.round, int(msg.type))
            old = self.votes.setdefault(vkey, msg.block_hash)
            if old != msg.block_hash and self._reported.new(("vote", vkey, msg.block_hash)):
                self._pending.append(Violation(self.name, now, node, (
                    f"two {msg.type.name} votes at height {msg.height} round {msg.round}: "
                    f"{old.hex()[:16]} and {msg.block_hash.hex()[:16]}")))
        elif isinstance(msg, Proposal):
            self.seen += 1
            pkey = (node, msg.height, msg.round)
            payload = msg.signing_payload()
            old = self.proposals.setdefault(pkey, payload)
            if old != payload and self._reported.new(("proposal", pkey, payload)):
                self._pending.append(Violation(self.name, now, node, (
                    f"two proposals at height {msg.height} round {msg.round} (block {msg.block.hash.hex()[:16]})")))

    def check(self, cluster: Cluster, final: bool) -> list[Violation]:
        out, self._pending = self._pending, []
        return out


def _round_bound(config: Any, rounds: int) -> float:
    """Seconds rounds 0..rounds-1 take at most when every step times out (the engine's schedule)."""
    return sum(config.timeout_propose + r * config.timeout_propose_delta
               + config.timeout_prevote + r * config.timeout_prevote_delta
               + config.timeout_precommit + r * config.timeout_precommit_delta for r in range(rounds))


class Liveness:
    """Tendermint paper §4 "Termination" / SPEC §4 Liveness: after the last fault healed, with < 1/3 of the
    power faulty, every honest running node finalizes a new height within a bound.

    The bound, for ``bound_rounds`` = R and the node's config::

        bound = sum(r = 0 .. R-1) of (timeout_propose + r*timeout_propose_delta
                                      + timeout_prevote + r*timeout_prevote_delta
                                      + timeout_precommit + r*timeout_precommit_delta)
                + sync_interval + slack

    (R rounds in which every step may time out, then one sync round for a node that fell behind, plus
    ``slack`` seconds for message delays and catch-up). It is measured from the latest of: the heal time
    (``cluster.healed_at``, set by the runner; None means faults are still active, so nothing is checked --
    a run without faults sets it to its start), the start of the node's current incarnation, and its last
    finalized height. Faulty power = Byzantine nodes + honest nodes not running or with a full disk; at
    >= 1/3 nothing is expected. One violation per node and stall (each stalled node is reported once).
    """

    name = "liveness"

    def __init__(self, bound_rounds: int = 5, slack: float = 1.0) -> None:
        self.bound_rounds = bound_rounds
        self.slack = slack
        self.started: dict[str, float] = {}
        self.progress: dict[str, tuple[int, float]] = {}      # node -> (height, when it was first seen)
        self._reported = _Reported()
        self._cluster: Cluster | None = None

    def bound(self, config: Any) -> float:
        return _round_bound(config, self.bound_rounds) + config.sync_interval + self.slack

    def attach(self, cluster: Cluster, trace: Trace) -> None:
        self._cluster = cluster
        cluster.on_build.append(self._hook)

    def _hook(self, sn: SimNode) -> None:
        if sn.byzantine or sn.node is None or self._cluster is None:
            return
        self.started[sn.name] = self._cluster.now()
        sn.node.consensus.on_commit.append(lambda block, sn=sn: self._moved(sn.name, block.height))

    def _moved(self, node: str, height: int) -> None:
        if self._cluster is not None and height > self.progress.get(node, (-1, 0.0))[0]:
            self.progress[node] = (height, self._cluster.now())

    def check(self, cluster: Cluster, final: bool) -> list[Violation]:
        now = cluster.now()
        for sn in cluster.honest():
            if sn.state == "up":
                self._moved(sn.name, sn.height())
        healed = getattr(cluster, "healed_at", None)
        if healed is None or now < healed:
            return []
        faulty = sum(sn.power for sn in cluster.nodes if sn.byzantine or sn.state != "up" or sn.disk_full)
        if 3 * faulty >= cluster.total_power:
            return []
        out: list[Violation] = []
        for sn in cluster.honest():
            if sn.state != "up" or sn.node is None:
                continue
            height, moved_at = self.progress.get(sn.name, (-1, 0.0))
            since = max(healed, self.started.get(sn.name, 0.0), moved_at)
            bound = self.bound(sn.node.config)
            if now - since > bound and self._reported.new((sn.name, since)):
                out.append(Violation(self.name, now, sn.name, (
                    f"no new height for {now - since:.3f}s (at height {height}) since {since - healed:.3f}s after "
                    f"the heal; bound {bound:.3f}s = {self.bound_rounds} rounds of timeouts + sync_interval "
                    f"{sn.node.config.sync_interval}s + slack {self.slack}s")))
        return out


class Accountability:
    """SPEC §4 "Evidence" and §9 (peer reputation and bans): provable Byzantine behaviour is punished.

    Checked at the end (``final=True``): for every Byzantine node the runner declares provable
    (``cluster.provable``: a set of node names, or a dict name -> ``"evidence"`` | ``"ban"`` | ``"either"``),
    every honest running node must have

    * ``"evidence"``: evidence against its validator address committed in its chain -- what a double
      vote (two signed votes for one (height, round, type)) requires: the proof is self-contained, so
      it is slashed on chain, not only banned by the peers that saw it;
    * ``"ban"``: its peer id banned (``p2p.peers.is_banned``) -- what offences only the receiving peer can
      see require (invalid signatures, malformed or invalid messages and blocks, floods);
    * ``"either"`` (the default for a set): one of the two.

    Only the nodes that met the offence can punish it: when the runner names the victims
    (``cluster.victims``: name -> PeerIDs that received a provable offence), a ban is owed by the honest
    victims only, and nothing is owed for an offence no one received (a block forger nobody asked). Evidence,
    once committed, is in every honest chain, so it is owed everywhere as soon as anyone was a victim.
    """

    name = "accountability"

    def __init__(self) -> None:
        self._reader = _ChainReader()
        self.evidenced: dict[str, set[bytes]] = {}             # node -> validator addresses with evidence on chain
        self._reported = _Reported()

    def attach(self, cluster: Cluster, trace: Trace) -> None:
        pass

    def check(self, cluster: Cluster, final: bool) -> list[Violation]:
        for sn in cluster.honest():
            for block, _ in self._reader.new_blocks(sn):
                self.evidenced.setdefault(sn.name, set()).update(ev.validator for ev in block.evidence)
        if not final:
            return []
        provable = getattr(cluster, "provable", None) or set()
        need = dict(provable) if isinstance(provable, dict) else dict.fromkeys(provable, "either")
        by_name = {sn.name: sn for sn in cluster.nodes}
        victims: dict[str, set[str]] | None = getattr(cluster, "victims", None)
        now = cluster.now()
        out: list[Violation] = []
        for bad_name, kind in sorted(need.items()):
            bad = by_name[bad_name]
            met = None if victims is None else victims.get(bad_name, set())
            if met is not None and not met:
                continue                          # no honest node received a provable offence
            for sn in cluster.honest():
                if sn.state != "up" or sn.node is None or sn.reactor is None:
                    continue
                if met is not None and kind == "ban" and sn.peer_id not in met:
                    continue
                banned = sn.node.p2p.peers.is_banned(bad.peer_id, None, sn.reactor.seconds())
                evidenced = bad.key.address in self.evidenced.get(sn.name, set())
                ok = {"ban": banned, "evidence": evidenced}.get(kind, banned or evidenced)
                if not ok and self._reported.new((bad_name, sn.name)):
                    out.append(Violation(self.name, now, sn.name, (
                        f"provable Byzantine {bad_name} ({kind}) not punished: banned={banned}, "
                        f"evidence on chain={evidenced}")))
        return out


class Durability:
    """SPEC §9 (mempool): a transaction accepted into an honest mempool is finalized or dropped for a stated
    reason, never silently lost.

    With the :class:`~timecoin.sim.cluster.workload.Workload`, at the end (``final=True``) every tx it saw
    accepted at least ``grace`` seconds before the end must be

    * in the chain of every honest running node whose tip reached the height where it was included; or
    * excused: another accepted tx of the same sender and nonce was finalized (a conflict with a finalized
      nonce), or the workload recorded a reason (the node that accepted it crashed before anyone else
      held it: a mempool does not survive a crash, SPEC §9).

    A tx still pending in an honest mempool is reported only when the run healed (``cluster.healed_at``)
    at least ``grace`` seconds before the end; a tx in no honest chain or mempool with no reason is lost.
    """

    name = "durability"

    def __init__(self, workload: Workload, grace: float = 2.0) -> None:
        self.workload = workload
        self.grace = grace
        self._reported = _Reported()

    def attach(self, cluster: Cluster, trace: Trace) -> None:
        pass

    def check(self, cluster: Cluster, final: bool) -> list[Violation]:
        if not final:
            return []
        now = cluster.now()
        healed = getattr(cluster, "healed_at", None)
        settled = healed is not None and healed + self.grace <= now
        running = [sn for sn in cluster.honest() if sn.state == "up" and _open_store(sn) is not None]
        final_nonces: set[tuple[bytes, int]] = set()
        where: dict[bytes, tuple[str, int]] = {}
        for sub in self.workload.accepted:
            for sn in running:
                loc = sn.node.store.tx_location(sub.txid)  # type: ignore[union-attr]
                if loc is not None:
                    where[sub.txid] = (sn.name, loc[0])
                    final_nonces.add((sub.tx.sender, sub.tx.nonce))
                    break
        out: list[Violation] = []
        for sub in self.workload.accepted:
            if sub.time > now - self.grace:
                continue
            detail: str | None = None
            if sub.txid in where:
                first, height = where[sub.txid]
                missing = [sn.name for sn in running if sn.height() >= height
                           and sn.node.store.tx_location(sub.txid) is None]  # type: ignore[union-attr]
                if missing:
                    detail = f"in {first}'s block {height} but not in the chain of {', '.join(missing)}"
            elif (sub.tx.sender, sub.tx.nonce) in final_nonces or sub.txid in self.workload.excused:
                continue
            elif any(sub.txid in sn.node.mempool for sn in running):  # type: ignore[union-attr,operator]
                if settled:
                    detail = f"still pending {now - sub.time:.3f}s after it was accepted (healed at {healed})"
            else:
                detail = "silently lost: in no honest chain or mempool and no reason recorded"
            if detail is not None and self._reported.new((sub.txid, sub.node)):
                out.append(Violation(self.name, now, sub.node, (
                    f"tx {sub.txid.hex()[:16]} (nonce {sub.tx.nonce}) accepted at {sub.time:.3f}: {detail}")))
        return out


def all_invariants(workload: Workload | None = None, bound_rounds: int = 5, grace: float = 2.0) -> list[Invariant]:
    """One of each invariant (Durability only with a workload), ready for ``attach``."""
    out: list[Invariant] = [Agreement(), Validity(), Integrity(), Liveness(bound_rounds), Accountability()]
    if workload is not None:
        out.append(Durability(workload, grace))
    return out
