"""What must hold in every run, checked on a :class:`History` (what the honest nodes did and stored).

Each checker is a plain function of the history, so a test can hand it a crafted bad history and see
it fail. Kinds: ``agreement`` (two hashes committed at one height), ``validity`` (a committed block
whose body does not match its header, that does not re-validate from genesis, or whose certificate
does not verify), ``one_body`` (one hash, two bodies), ``double_sign`` (an honest validator signed two
different votes for one (height, round, type) or two different proposals for one (height, round)),
``liveness`` (after GST an honest node did not reach the target height within the bound).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from timecoin.errors import InvalidSignature, StoreError, ValidationError
from timecoin.ledger.block import Block, CommitCertificate, Proposal, Vote, verify_certificate
from timecoin.ledger.genesis import Genesis
from timecoin.ledger.state import validate_block
from timecoin.memstore import MemoryStore


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


@dataclass
class History:
    """The honest side of a run: each honest node's committed chain and everything it broadcast."""

    genesis: Genesis
    chains: dict[int, list[tuple[Block, CommitCertificate]]] = field(default_factory=dict)
    signed: dict[int, list[Proposal | Vote]] = field(default_factory=dict)
    heights: dict[int, int] = field(default_factory=dict)        # node -> height reached by the deadline


def check_agreement(history: History) -> list[Violation]:
    by_height: dict[int, dict[bytes, list[int]]] = {}
    for node, chain in sorted(history.chains.items()):
        for block, _ in chain:
            by_height.setdefault(block.height, {}).setdefault(block.hash, []).append(node)
    return [Violation("agreement", f"height {h}: " + "; ".join(
                f"{bh.hex()[:12]} by nodes {nodes}" for bh, nodes in sorted(hashes.items())))
            for h, hashes in sorted(by_height.items()) if len(hashes) > 1]


def check_one_body(history: History) -> list[Violation]:
    bodies: dict[bytes, set[bytes]] = {}
    for chain in history.chains.values():
        for block, _ in chain:
            bodies.setdefault(block.hash, set()).add(block.encoded)
    return [Violation("one_body", f"block {h.hex()[:12]} stored with {len(b)} different bodies")
            for h, b in sorted(bodies.items()) if len(b) > 1]


def check_validity(history: History) -> list[Violation]:
    """Every committed block matches its header, re-validates on a fresh replay from genesis, and carries
    a certificate of > 2/3 of its height's validator set (each distinct chain replayed once)."""
    out: list[Violation] = []
    done: set[tuple[bytes, ...]] = set()
    genesis = history.genesis
    for node, chain in sorted(history.chains.items()):
        ident = tuple(b.encoded + c.encoded for b, c in chain)     # bodies too: one hash may hide two
        if ident in done:
            continue
        done.add(ident)
        store = MemoryStore(genesis)
        prev_ts = genesis.genesis_time
        for block, cert in chain:
            try:
                block.check_roots()
                result = validate_block(store, genesis.params, block, store.tip_hash(), prev_ts)
                validators = store.validator_set(block.height)
                assert validators is not None              # validate_block refuses a height without a set
                verify_certificate(block, cert, validators, genesis.chain_id)
                store.commit_block(block, cert, result)
                prev_ts = block.header.timestamp           # timestamps must strictly increase along the chain
            except (ValidationError, InvalidSignature, StoreError) as exc:
                out.append(Violation("validity", f"node {node} height {block.height} "
                                                 f"{block.hash.hex()[:12]}: {exc}"))
                break
            prev_ts = block.header.timestamp
    return out


def check_double_sign(history: History) -> list[Violation]:
    out: list[Violation] = []
    for node, msgs in sorted(history.signed.items()):
        votes: dict[tuple[bytes, int, int, int], set[bytes]] = {}
        proposals: dict[tuple[bytes, int, int], set[bytes]] = {}
        for m in msgs:
            if isinstance(m, Vote):
                votes.setdefault((m.validator, m.height, m.round, int(m.type)), set()).add(m.block_hash)
            else:
                proposals.setdefault((m.proposer, m.height, m.round), set()).add(m.signing_payload())
        out += [Violation("double_sign", f"node {node} signed {len(s)} votes for height {h} round {r} type {t}")
                for (_, h, r, t), s in sorted(votes.items()) if len(s) > 1]
        out += [Violation("double_sign", f"node {node} signed {len(s)} proposals for height {h} round {r}")
                for (_, h, r), s in sorted(proposals.items()) if len(s) > 1]
    return out


def check_liveness(history: History, target: int, bound: str) -> list[Violation]:
    late = {n: h for n, h in sorted(history.heights.items()) if h < target}
    if not late:
        return []
    return [Violation("liveness", f"nodes at heights {late}, target {target} within {bound}")]


def check_safety(history: History) -> list[Violation]:
    return check_agreement(history) + check_one_body(history) + check_validity(history) + check_double_sign(history)
