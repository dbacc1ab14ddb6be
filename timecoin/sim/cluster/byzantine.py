"""Byzantine behaviours for whole simulated nodes: the real node with one behaviour swapped in.

Each behaviour implements :class:`timecoin.sim.cluster.base.Behaviour`: ``install(sn, cluster, rng, trace)``
runs for every incarnation of a Byzantine :class:`~timecoin.sim.cluster.cluster.SimNode` (from
``Cluster.on_build``: built, not started) and changes the node through its own objects -- the consensus
service's ``broadcast`` (set by the P2P service to ``P2PService.broadcast``), the P2P service's ``handle``,
``hello_body``, ``status_body`` and connections, ``LoopingCall``s on the node's reactor. Everything else
runs the real code: a Byzantine node follows consensus honestly where its behaviour does not change it.
Every lie told is a trace event ``lie`` (``node``, ``behaviour``, ``what`` and details).

Messages meant for some peers only are written straight to those connections (``conn.send_payload``),
their ids marked as sent so the node's own gossip does not mend the split. Signatures that the node's
double-sign guard would refuse are made with the raw key (``Proposal.signed``/``Vote.signed``).

What the honest nodes can prove (``provable``) follows what the node implements: conflicting *votes* are
evidence (SPEC §4) and ban the signer's PeerID; conflicting *proposals* are not evidence (the engine keeps
the first and at most a couple of others), so ``equivocate`` is provable through its coalition's split
votes; invalid signatures, garbage
frames, request floods and forged certificates ban by reputation (peers.py: -50 each).
"""
from __future__ import annotations

import glob
import os
import random
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet import task

from timecoin.consensus.guardfile import GUARD_FILE
from timecoin.ledger.block import NIL_HASH, Block, CommitCertificate, Proposal, Vote, VoteType
from timecoin.ledger.state import build_block
from timecoin.p2p.gossip import message_id
from timecoin.wire import messages as m
from timecoin.wire.framing import encode_frame

if TYPE_CHECKING:
    from timecoin.p2p.protocol import PeerConnection
    from timecoin.p2p.service import P2PService
    from timecoin.sim.cluster.base import Trace
    from timecoin.sim.cluster.cluster import Cluster, SimNode

ENVELOPE_HEADER = 5                       # type (1) + request id (4), as in p2p.service


class _Base(ABC):
    """What every behaviour shares: the trace of lies and per-peer sends."""

    name: ClassVar[str] = ""
    provable: ClassVar[bool] = False
    proof: ClassVar[str] = "ban"      # what punishes it: "ban" (by each victim) or "evidence" (on chain)

    def __init__(self) -> None:
        self.lies = 0
        self.victims: set[str] = set()     # PeerIDs that received a provable offence (who must punish it)

    @abstractmethod
    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        """Swap the behaviour into this incarnation of ``sn.node`` (each behaviour says how)."""

    def lie(self, sn: SimNode, cluster: Cluster, trace: Trace, what: str, **fields: Any) -> None:
        self.lies += 1
        if self.provable and isinstance(fields.get("peer"), str):
            self.victims.add(fields["peer"])
        trace.emit(cluster.now(), "lie", node=sn.name, behaviour=self.name, what=what, **fields)

    @staticmethod
    def p2p(sn: SimNode) -> P2PService:
        assert sn.node is not None and sn.node.p2p is not None
        return sn.node.p2p

    @staticmethod
    def ready(p2p: P2PService) -> list[PeerConnection]:
        return [p2p.connections[pid] for pid in sorted(p2p.connections) if p2p.connections[pid].state == "ready"]

    @staticmethod
    def loop(sn: SimNode, interval: float, fn: Any) -> task.LoopingCall:
        """Run ``fn`` every ``interval`` simulated seconds on this incarnation (dies with it)."""
        assert sn.reactor is not None
        call = task.LoopingCall(fn)
        call.clock = sn.reactor  # type: ignore[assignment]  # IReactorTime, by zope's declaration
        call.start(interval, now=False)
        return call


def _consensus_payload(msg: Proposal | Vote) -> tuple[m.MsgType, bytes, bytes]:
    msg_type = m.MsgType.PROPOSAL if isinstance(msg, Proposal) else m.MsgType.VOTE
    payload = m.encode_message(msg_type, msg.to_wire())
    return msg_type, payload, message_id(msg_type, payload[ENVELOPE_HEADER:])


def split_send(p2p: P2PService, msg: Proposal | Vote, alt: Proposal | Vote | None, rng: random.Random) -> int:
    """Send ``msg`` to some ready peers and ``alt`` to the others (half each, drawn from ``rng``); ``msg`` is
    archived for gossip as the node's own. Both ids are marked sent to every peer, so gossip keeps the split.
    Returns how many peers got ``alt``."""
    msg_type, payload, mid = _consensus_payload(msg)
    p2p.seen.add(mid)
    p2p._archive(msg.height, mid, msg_type, payload)
    conns = _Base.ready(p2p)
    if alt is None:
        chosen: set[str] = set()
    else:
        chosen = {c.peer_id for c in rng.sample(conns, len(conns) // 2 or min(1, len(conns)))}
        _, alt_payload, alt_mid = _consensus_payload(alt)
        p2p.seen.add(alt_mid)
    for conn in conns:
        conn.sent_ids.add(mid)
        if alt is not None:
            conn.sent_ids.add(alt_mid)
        conn.send_payload(alt_payload if conn.peer_id in chosen else payload)
    return len(chosen)


def coalition_plan(cluster: Cluster) -> dict[tuple[int, int], tuple[bytes, bytes]]:
    """(height, round) -> (block A, block B) the equivocating coalition split the honest nodes over."""
    plan = getattr(cluster, "_equivocation_plan", None)
    if plan is None:
        plan = {}
        cluster._equivocation_plan = plan  # type: ignore[attr-defined]
    return plan


def coalition_members(cluster: Cluster) -> set[str]:
    """PeerIDs of the equivocating coalition (never counted among the honest groups)."""
    members = getattr(cluster, "_equivocators", None)
    if members is None:
        members = set()
        cluster._equivocators = members  # type: ignore[attr-defined]
    return members


def corrupt(sig: bytes, rng: random.Random) -> bytes:
    """A signature with one byte changed (never the same bytes)."""
    i = rng.randrange(len(sig))
    return sig[:i] + bytes(((sig[i] + rng.randint(1, 255)) % 256,)) + sig[i + 1:]


class Equivocate(_Base):
    """As proposer, a second real block (another timestamp) signed with the raw key, to half the peers.

    Equivocators act as one coalition (the classic attack the 1/3 bound is about): the honest nodes are
    split into two groups by sorted PeerID, the same for every member; a member proposing sends block A
    to one group and block B to the other, and every member then prevotes and precommits A to the first
    group and B to the second at that (height, round). Below 1/3 of the power this cannot gather a quorum
    for either block on its own; at or above 1/3 it forks the honest nodes.
    """

    name = "equivocate"
    proof = "evidence"
    provable = True         # two proposals are no evidence (SPEC §4), but the split votes are: evidence, bans

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        node = sn.node
        assert node is not None and node.consensus is not None
        original = node.consensus.broadcast
        p2p = self.p2p(sn)
        plan = coalition_plan(cluster)
        members = coalition_members(cluster)
        members.add(sn.peer_id)

        def groups() -> tuple[list[PeerConnection], list[PeerConnection]]:
            honest = [c for c in self.ready(p2p) if c.peer_id not in members]
            return honest[0::2], honest[1::2]

        def send_split(msg: Proposal | Vote, alt: Proposal | Vote) -> None:
            first, second = groups()
            _, payload, mid = _consensus_payload(msg)
            _, alt_payload, alt_mid = _consensus_payload(alt)
            p2p.seen.add(mid)
            p2p.seen.add(alt_mid)
            msg_type = m.MsgType.PROPOSAL if isinstance(msg, Proposal) else m.MsgType.VOTE
            p2p._archive(msg.height, mid, msg_type, payload)
            other = {c.peer_id for c in second}
            for conn in self.ready(p2p):
                conn.sent_ids.add(mid)
                conn.sent_ids.add(alt_mid)
                conn.send_payload(alt_payload if conn.peer_id in other else payload)

        def broadcast(msg: Any) -> None:
            if not p2p.running:
                original(msg)
                return
            if isinstance(msg, Proposal) and msg.pol_round == -1:
                alt = self.other_proposal(sn, msg, rng)
                if alt is None:
                    original(msg)
                    return
                plan[(msg.height, msg.round)] = (msg.block.hash, alt.block.hash)
                send_split(msg, alt)
                self.lie(sn, cluster, trace, "two_proposals", height=msg.height, round=msg.round,
                         hashes=[msg.block.hash.hex()[:16], alt.block.hash.hex()[:16]])
                return
            split = plan.get((msg.height, msg.round)) if isinstance(msg, Vote) else None
            if split is None:
                original(msg)
                return
            chain_id = node.genesis.chain_id
            first = replace(msg, block_hash=split[0]).signed(sn.key, chain_id)
            second = replace(msg, block_hash=split[1]).signed(sn.key, chain_id)
            send_split(first, second)
            self.victims.update(c.peer_id for c in self.ready(p2p) if c.peer_id not in members)
            self.lie(sn, cluster, trace, "split_votes", height=msg.height, round=msg.round, type=int(msg.type))

        node.consensus.broadcast = broadcast

    @staticmethod
    def other_proposal(sn: SimNode, p: Proposal, rng: random.Random) -> Proposal | None:
        node = sn.node
        assert node is not None
        store, params = node.store, node.genesis.params
        if store is None or store.tip_height() != p.height - 1:
            return None
        ts = p.block.header.timestamp + rng.randint(1, 40)
        block, _ = build_block(store, params, p.height, p.round, store.tip_hash(), ts, sn.key.address, (),
                               max_txs=params.max_block_txs)
        if block.hash == p.block.hash:
            return None
        return replace(p, block=block).signed(sn.key, node.genesis.chain_id)


class DoubleVote(_Base):
    """Every vote has a conflicting twin (nil for a value, a value for nil) sent to half the peers."""

    name = "double_vote"
    proof = "evidence"
    provable = True         # DuplicateVoteEvidence: gossiped, committed, the signer's PeerID banned

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        node = sn.node
        assert node is not None and node.consensus is not None
        original = node.consensus.broadcast
        p2p = self.p2p(sn)
        seen_hashes: dict[tuple[int, int], bytes] = {}       # (height, round) -> a real proposal's block hash

        def broadcast(msg: Any) -> None:
            if isinstance(msg, Proposal):
                seen_hashes[(msg.height, msg.round)] = msg.block.hash
            if not isinstance(msg, Vote) or not p2p.running:
                original(msg)
                return
            if msg.block_hash != NIL_HASH:
                other = NIL_HASH
            else:
                other = seen_hashes.get((msg.height, msg.round)) or rng.randbytes(32)
            alt = replace(msg, block_hash=other).signed(sn.key, node.genesis.chain_id)
            peers = split_send(p2p, msg, alt, rng)
            self.victims.update(c.peer_id for c in self.ready(p2p))
            self.lie(sn, cluster, trace, "two_votes", height=msg.height, round=msg.round, type=int(msg.type),
                     alt_peers=peers)

        node.consensus.broadcast = broadcast


class Withhold(_Base):
    """A silent validator: its proposals and votes never leave it (it still syncs and answers requests)."""

    name = "withhold"
    provable = False

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        node = sn.node
        assert node is not None and node.consensus is not None
        original = node.consensus.broadcast

        def broadcast(msg: Any) -> None:
            if isinstance(msg, Proposal | Vote):
                self.lie(sn, cluster, trace, "withheld", height=msg.height, round=msg.round,
                         message=type(msg).__name__.lower())
                return
            original(msg)

        node.consensus.broadcast = broadcast


class BadSignatures(_Base):
    """Its proposals and votes go out with a corrupted signature (and only so)."""

    name = "bad_signatures"
    provable = True         # INVALID_SIGNATURE: -50, a ban

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        node = sn.node
        assert node is not None and node.consensus is not None
        original = node.consensus.broadcast
        p2p = self.p2p(sn)

        def broadcast(msg: Any) -> None:
            if not isinstance(msg, Proposal | Vote) or not p2p.running:
                original(msg)
                return
            bad = replace(msg, signature=corrupt(msg.signature, rng))
            split_send(p2p, bad, None, rng)
            self.victims.update(c.peer_id for c in self.ready(p2p))
            self.lie(sn, cluster, trace, "bad_signature", height=msg.height, round=msg.round,
                     message=type(msg).__name__.lower())

        node.consensus.broadcast = broadcast


class FarVotes(_Base):
    """Besides each honest vote, correctly signed copies for a far round and a far height."""

    name = "far_votes"
    provable = False

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        node = sn.node
        assert node is not None and node.consensus is not None
        original = node.consensus.broadcast
        p2p = self.p2p(sn)
        chain_id = node.genesis.chain_id

        def broadcast(msg: Any) -> None:
            original(msg)
            if not isinstance(msg, Vote) or not p2p.running:
                return
            far_round = replace(msg, round=msg.round + rng.randint(2, 300)).signed(sn.key, chain_id)
            far_height = replace(msg, height=msg.height + rng.randint(2, 1_000)).signed(sn.key, chain_id)
            for far in (far_round, far_height):
                _, payload, _ = _consensus_payload(far)
                for conn in self.ready(p2p):
                    conn.send_payload(payload)
                self.lie(sn, cluster, trace, "far_vote", height=far.height, round=far.round, real_height=msg.height,
                         real_round=msg.round)

        node.consensus.broadcast = broadcast


class Amnesia(_Base):
    """After every restart the node has forgotten what it signed: its WAL and double-sign guard are wiped
    before it starts, so it may sign messages that conflict with its earlier incarnation's.

    The runner restarts it every :attr:`restart_every` simulated seconds. Everything it broadcasts is kept
    here, across incarnations, by (height, round, kind); a conflicting one is traced as ``double_sign``.
    ``provable`` is False: its conflicts are evidence only if an honest engine still at that height sees
    both, and a restarted node needs a dial interval to reach its peers, by when they have decided the
    height and drop its late messages. Tests read :attr:`double_signs` to tell what happened.
    """

    name = "amnesia"
    provable = False
    restart_every: ClassVar[float] = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.signed: dict[tuple[str, int, int, int], bytes] = {}     # (node, h, r, kind) -> block hash
        self.double_signs: list[tuple[str, int, int, int]] = []
        self.wiped = 0

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        node = sn.node
        assert node is not None and node.consensus is not None
        consensus = node.consensus
        if sn.incarnation > 1:
            start = consensus.startService

            def forget_then_start() -> None:
                # The store opens first (it is the first service): wipe the guard's records (the guard file,
                # and an older node's record in the store), then the WAL.
                assert node.store is not None
                guard = node.store.delete("privval", b"last_signed")
                guard_path = os.path.join(node.config.datadir, GUARD_FILE)
                if os.path.isfile(guard_path):
                    os.remove(guard_path)
                    guard = True
                removed = [p for p in sorted(glob.glob(os.path.join(node.config.datadir, "consensus.wal*")))
                           if os.path.isfile(p)]
                for path in removed:
                    os.remove(path)
                self.wiped += 1
                self.lie(sn, cluster, trace, "forgot", incarnation=sn.incarnation, wal_files=len(removed),
                         guard_record=guard)
                start()

            consensus.startService = forget_then_start
        original = node.consensus.broadcast

        def broadcast(msg: Any) -> None:
            if isinstance(msg, Proposal | Vote):
                kind = 0 if isinstance(msg, Proposal) else int(msg.type)
                value = msg.block.hash if isinstance(msg, Proposal) else msg.block_hash
                key = (sn.name, msg.height, msg.round, kind)
                before = self.signed.setdefault(key, value)
                if before != value:
                    self.double_signs.append(key)
                    self.lie(sn, cluster, trace, "double_sign", height=msg.height, round=msg.round, step=kind)
            original(msg)

        node.consensus.broadcast = broadcast


GARBAGE_TYPES = tuple(t for t in range(256) if t not in {int(x) for x in m.MsgType})


class Garbage(_Base):
    """Every ``interval`` s, to each peer: a well-framed payload whose body decodes as nothing."""

    name = "garbage"
    provable = True         # MALFORMED_FRAME: -50, a ban
    interval = 0.2

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        p2p = self.p2p(sn)

        def send() -> None:
            if not p2p.running:
                return
            for conn in self.ready(p2p):
                body = bytes((rng.choice(GARBAGE_TYPES),)) + rng.randbytes(rng.randint(4, 200))
                transport: Any = conn.transport
                if transport is not None:
                    transport.write(encode_frame(body))
                    self.lie(sn, cluster, trace, "garbage", peer=conn.peer_id, size=len(body))

        self.loop(sn, self.interval, send)


class Flood(_Base):
    """Requests far beyond the rate limit: bursts of get_status (and pings) to every peer."""

    name = "flood"
    provable = True         # REQUEST_FLOOD once refusals pass 2 x max_inflight_requests in a window
    interval = 0.1
    burst = 40

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        p2p = self.p2p(sn)
        p2p.record = lambda conn, event: None      # type: ignore[method-assign]  # a flooder keeps no score

        def flood() -> None:
            if not p2p.running:
                return
            for conn in self.ready(p2p):
                for _ in range(self.burst):
                    if rng.random() < 0.5:
                        conn.send(m.MsgType.GET_STATUS, {}, rng.randint(1, 2**31))
                    else:
                        conn.send(m.MsgType.PING, {"nonce": rng.getrandbits(64), "payload": b""})
                self.lie(sn, cluster, trace, "flood", peer=conn.peer_id, requests=self.burst)

        self.loop(sn, self.interval, flood)


class LieHeight(_Base):
    """Claims a height far above its tip in its hello and status answers."""

    name = "lie_height"
    provable = False
    extra = 1_000

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        p2p = self.p2p(sn)
        hello, status = p2p.hello_body, p2p.status_body

        def hello_body() -> dict[str, Any]:
            body = dict(hello())
            body["best_height"] += self.extra
            body["finalized_height"] += self.extra
            self.lie(sn, cluster, trace, "hello_height", claimed=body["best_height"])
            return body

        def status_body() -> dict[str, Any]:
            body = dict(status())
            body["height"] += self.extra
            body["finalized_height"] += self.extra
            self.lie(sn, cluster, trace, "status_height", claimed=body["height"])
            return body

        p2p.hello_body = hello_body        # type: ignore[method-assign]
        p2p.status_body = status_body      # type: ignore[method-assign]


class _ServesBlocks(_Base):
    """Answers get_blocks (and get_block_hashes) with blocks of its own making."""

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        p2p = self.p2p(sn)
        handle = p2p.handle

        def intercept(conn: PeerConnection, msg_type: m.MsgType, request_id: int, body: Any, payload: bytes) -> None:
            if conn.state == "ready" and msg_type == m.MsgType.GET_BLOCKS and p2p.running:
                if p2p.peers is not None and not p2p.peers.allow_request(conn.peer_id, p2p.reactor.seconds()):
                    return
                items = self.serve(sn, body.start, min(body.count, 100), rng)
                if items:
                    conn.send(m.MsgType.BLOCKS, {"blocks": [{"block": b.to_wire(), "certificate": c.to_wire()}
                                                            for b, c in items]}, request_id)
                    self.lie(sn, cluster, trace, self.what, peer=conn.peer_id, start=body.start, count=len(items))
                    return
            if conn.state == "ready" and msg_type == m.MsgType.GET_BLOCK_HASHES and p2p.running:
                hashes = self.hashes(sn, body.start, min(body.count, 10_000), rng)
                if hashes is not None:
                    if p2p.peers is not None and not p2p.peers.allow_request(conn.peer_id, p2p.reactor.seconds()):
                        return
                    conn.send(m.MsgType.BLOCK_HASHES, {"start": body.start, "hashes": hashes}, request_id)
                    self.lie(sn, cluster, trace, "block_hashes", peer=conn.peer_id, start=body.start,
                             count=len(hashes))
                    return
            handle(conn, msg_type, request_id, body, payload)

        p2p.handle = intercept             # type: ignore[method-assign]

    what = "blocks"

    @abstractmethod
    def serve(self, sn: SimNode, start: int, count: int, rng: random.Random) -> list[tuple[Block, CommitCertificate]]:
        """The (block, certificate) pairs this server answers a get_blocks for [start, start + count) with."""

    def hashes(self, sn: SimNode, start: int, count: int, rng: random.Random) -> list[bytes] | None:
        return None


class ForgedCerts(_ServesBlocks):
    """Serves its real blocks with forged certificates: signatures corrupted, or cut below the quorum."""

    name = "forged_certs"
    provable = True         # FORGED_CERTIFICATE: -50, a ban
    what = "forged_certificates"

    def serve(self, sn: SimNode, start: int, count: int, rng: random.Random) -> list[tuple[Block, CommitCertificate]]:
        assert sn.node is not None and sn.node.store is not None
        out = []
        for block, cert in sn.node.store.get_blocks(start, count):
            sigs = cert.signatures
            if rng.random() < 0.5 and len(sigs) > 1:
                forged = replace(cert, signatures=sigs[:1])                 # short of quorum
            else:
                i = rng.randrange(len(sigs))
                forged = replace(cert, signatures=sigs[:i] + ((sigs[i][0], corrupt(sigs[i][1], rng)),) + sigs[i + 1:])
            out.append((block, forged))
        return out


class ForkedBranch(_ServesBlocks):
    """Serves another branch from the height asked: its blocks a few ms later (other hashes), each
    certified by its own precommit alone (the Byzantine keys cannot make a quorum)."""

    name = "forked_branch"
    provable = False        # a block off the agreed hashes is refused before its certificate is read:
                            # an honest peer on another branch serves the same shape, so nothing is proven
    what = "forked_blocks"

    def _branch(self, sn: SimNode, start: int, count: int) -> list[tuple[Block, CommitCertificate]]:
        assert sn.node is not None and sn.node.store is not None
        store, chain_id = sn.node.store, sn.node.genesis.chain_id
        prev = store.block_hash_at(start - 1) if start > 0 else None
        out: list[tuple[Block, CommitCertificate]] = []
        for block, _ in store.get_blocks(start, count):
            header = replace(block.header, timestamp=block.header.timestamp + 1,
                             prev_hash=prev if prev is not None else block.header.prev_hash)
            fork = Block(header, block.txs, block.evidence)
            vote = Vote(VoteType.PRECOMMIT, fork.height, header.round, fork.hash, sn.key.address).signed(sn.key,
                                                                                                       chain_id)
            out.append((fork, CommitCertificate.from_votes([vote])))
            prev = fork.hash
        return out

    def serve(self, sn: SimNode, start: int, count: int, rng: random.Random) -> list[tuple[Block, CommitCertificate]]:
        return self._branch(sn, start, count)

    def hashes(self, sn: SimNode, start: int, count: int, rng: random.Random) -> list[bytes] | None:
        return [b.hash for b, _ in self._branch(sn, start, min(count, 200))]


BEHAVIOURS: dict[str, type[_Base]] = {cls.name: cls for cls in (
    Equivocate, DoubleVote, Withhold, BadSignatures, FarVotes, Amnesia, Garbage, Flood, LieHeight, ForgedCerts,
    ForkedBranch)}


def make_behaviour(name: str) -> _Base:
    """A new behaviour by its registry name; ValueError naming the known ones otherwise."""
    cls = BEHAVIOURS.get(name)
    if cls is None:
        raise ValueError(f"unknown Byzantine behaviour {name!r}; known: {', '.join(sorted(BEHAVIOURS))}")
    return cls()
