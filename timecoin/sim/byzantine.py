"""Byzantine validators that run a real engine but lie about its output, and a keyless relay.

A :class:`Behaviour` rewrites each message a Byzantine engine broadcasts into per-peer copies, signed
directly with the node's key (no guard): an equivocating proposer sends a second *real* block (built
with ``build_block``: another timestamp or tx set) to some peers; conflicting votes go to some peers
(nil for a value, a value for nil); junk-hash votes, replays of its older rounds and far-future rounds
are added; withholding drops copies (all of them: a silent validator).

:class:`KeylessRelay` owns no key: it takes a proposal in flight and delivers, ahead of it, the same
signed header with another body (a tx dropped, one added, or another block's body).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from timecoin.ledger.block import NIL_HASH, Proposal, Vote
from timecoin.ledger.state import build_block
from timecoin.sim.world import Node, candidates_for, tx_pool, with_body

if TYPE_CHECKING:
    from timecoin.sim.scheduler import World


@dataclass(frozen=True)
class Behaviour:
    equivocate: bool = False      # as proposer: a second real block to some peers
    conflicting: bool = False     # each vote: a conflicting vote to some peers
    junk: bool = False            # extra votes for hashes of no block
    withhold: float = 0.0         # probability each copy is not sent (1.0: silent)
    replay: bool = False          # re-sends messages of its older rounds of the height
    future: bool = False          # votes for round + 50..100

    @classmethod
    def draw(cls, rng: random.Random) -> Behaviour:
        return cls(equivocate=rng.random() < 0.6, conflicting=rng.random() < 0.6, junk=rng.random() < 0.3,
                   withhold=rng.choice((0.0, 0.0, 0.3, 1.0)), replay=rng.random() < 0.3,
                   future=rng.random() < 0.3)

    def names(self) -> list[str]:
        out = [k for k in ("equivocate", "conflicting", "junk", "replay", "future") if getattr(self, k)]
        if self.withhold:
            out.append("silent" if self.withhold >= 1.0 else "withhold")
        return out


def junk_hash(rng: random.Random) -> bytes:
    return hashlib.sha256(rng.randbytes(16)).digest()


class Byzantine:
    """The behaviours of the Byzantine nodes that run an engine (one adversary for all of them)."""

    def __init__(self, world: World, rng: random.Random, behaviours: dict[int, Behaviour]) -> None:
        self.world = world
        self.rng = rng
        self.behaviours = behaviours
        self.round_hashes: dict[tuple[int, int], list[bytes]] = {}     # real proposal hashes per (h, r)

    def byzantine_out(self, node: Node, msg: object) -> list[tuple[int, object]] | None:
        b = self.behaviours.get(node.index)
        if b is None or not isinstance(msg, Proposal | Vote):
            return None
        rng, key, chain_id = self.rng, node.key, self.world.chain_id
        peers = [n.index for n in self.world.nodes if n is not node]
        alt: Proposal | Vote | None = None
        if isinstance(msg, Proposal):
            self._note(msg)
            if b.equivocate and msg.pol_round == -1:
                alt = self._other_proposal(node, msg)
        elif b.conflicting:
            alt = self._conflicting(msg)
        split = set(rng.sample(peers, len(peers) // 2)) if alt is not None else set()
        out: list[tuple[int, object]] = []
        for dst in peers:
            if b.withhold and rng.random() < b.withhold:
                continue
            out.append((dst, alt if dst in split else msg))
        if isinstance(msg, Vote):
            if b.junk:
                junk = replace(msg, block_hash=junk_hash(rng)).signed(key, chain_id)
                out += [(dst, junk) for dst in rng.sample(peers, rng.randint(1, len(peers)))]
            if b.future:
                far = replace(msg, round=msg.round + rng.randint(50, 100)).signed(key, chain_id)
                out += [(dst, far) for dst in peers]
        if b.replay:
            older = [m for m in node.signed[-40:] if m.height == msg.height and m.round < msg.round]
            if older:
                old = rng.choice(older)
                out += [(dst, old) for dst in rng.sample(peers, rng.randint(1, len(peers)))]
        if isinstance(msg, Vote | Proposal):
            node.signed.append(msg)
        if alt is not None:
            node.signed.append(alt)
        return out

    def _note(self, p: Proposal) -> None:
        hashes = self.round_hashes.setdefault((p.height, p.round), [])
        if p.block.hash not in hashes and len(hashes) < 8:
            hashes.append(p.block.hash)

    def _other_proposal(self, node: Node, p: Proposal) -> Proposal | None:
        """A second real block for the same (height, round): another timestamp or another tx variant."""
        store, params = node.store, self.world.genesis.params
        if store.tip_height() != p.height - 1:
            return None
        ts = p.block.header.timestamp + self.rng.randint(1, 40)
        variant = node.index + self.rng.randint(0, 1)
        block, _ = build_block(store, params, p.height, p.round, store.tip_hash(), ts, node.address,
                               candidates_for(store, variant), max_txs=params.max_block_txs)
        alt = replace(p, block=block).signed(node.key, self.world.chain_id)
        self._note(alt)
        return alt

    def _conflicting(self, v: Vote) -> Vote:
        if v.block_hash != NIL_HASH:
            other = NIL_HASH
        else:
            real = self.round_hashes.get((v.height, v.round)) or [junk_hash(self.rng)]
            other = self.rng.choice(real)
        return replace(v, block_hash=other).signed(self.world.by_address[v.validator].key, self.world.chain_id)

    # the other seams: nothing to do
    def holds(self, dst: Node, msg: object) -> bool:
        return False

    def observe(self, node: Node) -> None:
        return None

    def intercept(self, src: Node, dst: Node, msg: object, delay: float) -> None:
        return None

    def signed(self, node: Node, msg: object) -> None:
        if isinstance(msg, Proposal):
            self._note(msg)


class KeylessRelay:
    """Delivers, to some nodes and ahead of the genuine copy, honest proposals with an altered body."""

    def __init__(self, world: World, rng: random.Random, rate: float) -> None:
        self.world = world
        self.rng = rng
        self.rate = rate
        self.bodies: dict[int, list[tuple[bytes, tuple, tuple]]] = {}   # height -> (hash, txs, evidence)

    def intercept(self, src: Node, dst: Node, msg: object, delay: float) -> None:
        if not isinstance(msg, Proposal) or src.byzantine or dst.byzantine:
            return
        bodies = self.bodies.setdefault(msg.height, [])
        if all(h != msg.block.hash for h, _, _ in bodies) and len(bodies) < 16:
            bodies.append((msg.block.hash, msg.block.txs, msg.block.evidence))
        if self.rng.random() >= self.rate:
            return
        forged = self._alter(msg, bodies)
        if forged is not None:
            self.world.stats["relay_forged"] += 1
            self.world.deliver_later(dst, forged, delay * self.rng.uniform(0.0, 0.9))

    def _alter(self, p: Proposal, bodies: list[tuple[bytes, tuple, tuple]]) -> Proposal | None:
        txs = p.block.txs
        others = [(t, e) for h, t, e in bodies if h != p.block.hash and (t, e) != (txs, p.block.evidence)]
        choice = self.rng.randint(0, 2)
        if choice == 0 and others:
            t, e = self.rng.choice(others)
            return with_body(p, t, e)
        if choice <= 1 and txs:
            drop = self.rng.randrange(len(txs))
            return with_body(p, txs[:drop] + txs[drop + 1:], p.block.evidence)
        extra = self.rng.choice(list(tx_pool().values()))[self.rng.randint(0, 1)]
        if extra in txs:
            return None
        return with_body(p, txs + (extra,), p.block.evidence)

    def byzantine_out(self, node: Node, msg: object) -> list[tuple[int, object]] | None:
        return None

    def holds(self, dst: Node, msg: object) -> bool:
        return False

    def observe(self, node: Node) -> None:
        return None

    def signed(self, node: Node, msg: object) -> None:
        return None
