"""ChainApp: what the consensus engine needs from the chain (Tendermint's getValue/valid/commit).

It works over the LMDB ``Store`` in the node and over ``MemoryStore`` in tests and the simulator.
Blocks are executed once: the result of validating (or building) a block is cached by hash and
committed as is.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger

from timecoin.consensus import proposer as prio
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.block import Block, CommitCertificate, Evidence
from timecoin.ledger.params import ChainParams
from timecoin.ledger.result import BlockResult
from timecoin.ledger.state import build_block, check_block_body, validate_block
from timecoin.ledger.tx import Transaction
from timecoin.ledger.validators import ValidatorSet

PRIORITIES_DB = "priorities"
MAX_CACHED_PRIORITIES = 64        # heights whose proposer priorities are kept in memory (all dropped beyond)
MAX_PENDING_EVIDENCE = 1_024      # evidence held for proposals, over all validators (one each: see add_evidence)


class ChainApp:
    log = Logger()

    def __init__(self, chain: Any, params: ChainParams, address: bytes | None, genesis_time_ms: int,
                 candidates: Callable[[], Iterable[Transaction]] = lambda: (),
                 max_block_txs: int | None = None) -> None:
        self.chain = chain
        self.params = params
        self.chain_id = params.chain_id
        self.address = address
        self.genesis_time_ms = genesis_time_ms
        self.candidates = candidates
        self.max_block_txs = max_block_txs
        self.pending_evidence: dict[bytes, Evidence] = {}
        self._evidence_of: dict[bytes, bytes] = {}      # validator -> hash of its pending evidence (may be stale)
        self._evidence_full_logged = False
        self._results: dict[bytes, BlockResult] = {}
        self._prio_cache: dict[int, prio.Priorities] = {}
        self._tip_time: tuple[bytes, int] | None = None      # (tip hash, its timestamp): see prev_block_time_ms

    # -- validator sets and proposers ------------------------------------------------------------
    def validator_set(self, height: int) -> ValidatorSet:
        vs = self.chain.validator_set(height)
        if vs is None:
            raise ValidationError(Reason.WRONG_HEIGHT, f"no validator set for height {height}")
        return vs

    def priorities(self, height: int) -> prio.Priorities:
        """Proposer priorities at the start of ``height`` (stored; recomputed from the last stored)."""
        cached = self._prio_cache.get(height)
        if cached is not None:
            return cached
        raw = self.chain.get(PRIORITIES_DB, height.to_bytes(8, "big"))
        if raw is not None:
            p = prio.decode(raw)
        elif height <= 1:
            p = prio.initial(self.validator_set(1))
        else:
            start = height - 1
            while start > 1 and self.chain.get(PRIORITIES_DB, start.to_bytes(8, "big")) is None:
                start -= 1
            p = self.priorities(start)
            for h in range(start, height):
                p = prio.next_height(self.validator_set(h), p, self.validator_set(h + 1))
        self._cache_priorities(height, p)
        return p

    def _cache_priorities(self, height: int, p: prio.Priorities) -> None:
        """Keep ``p`` for ``height``: a bounded cache (one entry per committed height would grow forever)."""
        if len(self._prio_cache) >= MAX_CACHED_PRIORITIES:
            self._prio_cache.clear()
        self._prio_cache[height] = p

    def proposer(self, height: int, round_: int) -> bytes:
        return prio.proposer_for(self.validator_set(height), self.priorities(height), round_)

    # -- getValue / valid ------------------------------------------------------------------------
    def prev_block_time_ms(self) -> int:
        """The tip's timestamp (the genesis time at height 0).

        Asked for every proposal and every block validated, and the tip can hold 1,000 txs: decoding it
        each time cost ~2 % of a loaded node's CPU. The timestamp is remembered by the tip's *hash*, so any
        change of tip (a commit, sync, a rollback, another process writing the store) is seen at once.
        """
        tip_hash = bytes(self.chain.tip_hash())
        cached = self._tip_time
        if cached is not None and cached[0] == tip_hash:
            return cached[1]
        tip = self.chain.tip_height()
        stamp = self.genesis_time_ms if tip == 0 else self.chain.get_block(tip).header.timestamp
        self._tip_time = (tip_hash, stamp)
        return stamp

    def propose(self, height: int, round_: int, timestamp_ms: int) -> Block:
        assert self.address is not None
        evidence = [e for e in self.pending_evidence.values()
                    if self._admissible(e, height)][:16]
        block, result = build_block(self.chain, self.params, height, round_, self.chain.tip_hash(),
                                    max(timestamp_ms, self.prev_block_time_ms() + 1), self.address,
                                    self.candidates(), evidence, max_txs=self.max_block_txs)
        self._results[block.hash] = result
        return block

    def _admissible(self, ev: Evidence, height: int) -> bool:
        acct = self.chain.get_account(ev.validator)
        return (acct is not None and not acct.jailed and ev.height < height
                and height - ev.height <= self.params.evidence_max_age)

    def check_body(self, block: Block) -> None:
        """ValidationError unless the body matches the header's roots and the size caps (see
        :func:`~timecoin.ledger.state.check_block_body`)."""
        check_block_body(self.params, block)

    def validate(self, block: Block) -> bool:
        """Full validation. The execution result is cached by hash, but only for the body that was
        executed: a header we know never vouches for another body (the roots are checked every time)."""
        try:
            check_block_body(self.params, block)
        except ValidationError as exc:
            self.log.info("Block {hash} has a body its header does not commit to: {why}",
                          hash=block.hash.hex()[:16], why=str(exc))
            return False
        if block.hash in self._results:
            return True
        try:
            result = validate_block(self.chain, self.params, block, self.chain.tip_hash(), self.prev_block_time_ms())
        except ValidationError as exc:
            self.log.info("Invalid block {hash} at {height}: {why}", hash=block.hash.hex()[:16],
                          height=block.height, why=str(exc))
            return False
        self._results[block.hash] = result
        return True

    # -- commit ----------------------------------------------------------------------------------
    def synced(self, blocks: list[Block]) -> None:
        """Blocks committed by sync (not through :meth:`commit`): carry proposer priorities over them.

        Without this, the next ``proposer()`` call would walk priorities forward from the last height
        that stored them, which after a long sync is thousands of validator-set reads per call.
        """
        if not blocks:
            return
        first, last = blocks[0].height, blocks[-1].height
        p = self.priorities(first)
        vs = self.validator_set(first)
        for h in range(first, last + 1):
            vs_next = self.validator_set(h + 1)          # read once: it is the next height's current set
            p = prio.next_height(vs, p, vs_next)
            vs = vs_next
        self.chain.put(PRIORITIES_DB, (last + 1).to_bytes(8, "big"), prio.encode(p))
        self._cache_priorities(last + 1, p)
        self.prune_evidence(last + 1)
        self._results.clear()

    def commit(self, block: Block, cert: CommitCertificate) -> BlockResult:
        """Store a decided block with its certificate (executing it if this node never did)."""
        result = self._results.get(block.hash)
        if result is None:
            result = validate_block(self.chain, self.params, block, self.chain.tip_hash(),
                                    self.prev_block_time_ms())
        height = block.height
        next_prio = prio.next_height(self.validator_set(height), self.priorities(height),
                                     self.validator_set(height + 1))
        # The next height's proposer priorities in the block's own transaction: atomic, and one commit.
        self.chain.commit_block(block, cert, result,
                                also={(PRIORITIES_DB, (height + 1).to_bytes(8, "big")): prio.encode(next_prio)})
        self._tip_time = (block.hash, block.header.timestamp)
        self._cache_priorities(height + 1, next_prio)
        self._results.clear()
        for ev in block.evidence:
            self.pending_evidence.pop(ev.hash, None)
        self.prune_evidence(height + 1)
        return result

    def add_evidence(self, ev: Evidence) -> bool:
        """Queue evidence for the next proposal; False when it adds nothing (so it is not re-gossiped).

        One piece per validator is kept: a single one jails it, and an equivocating validator can sign
        any number of distinct pairs (a memory flood). A newer height replaces an older one (it stays
        admissible longer); at :data:`MAX_PENDING_EVIDENCE` validators a newcomer is refused.
        """
        if ev.hash in self.pending_evidence:
            return False
        held_hash = self._evidence_of.get(ev.validator)
        held = self.pending_evidence.get(held_hash) if held_hash is not None else None
        if held is not None:
            if ev.height <= held.height:
                return False
            del self.pending_evidence[held.hash]
        elif len(self.pending_evidence) >= MAX_PENDING_EVIDENCE:
            if not self._evidence_full_logged:
                self._evidence_full_logged = True
                self.log.warn("Evidence pool full ({n} validators): further evidence refused until it drains",
                              n=len(self.pending_evidence))
            return False
        self.pending_evidence[ev.hash] = ev
        self._evidence_of[ev.validator] = ev.hash
        return True

    def prune_evidence(self, next_height: int) -> None:
        """Forget evidence no block can take any more: its validator is gone or jailed, or it is too old."""
        for h, ev in list(self.pending_evidence.items()):
            acct = self.chain.get_account(ev.validator)
            if acct is None or acct.jailed or next_height - ev.height > self.params.evidence_max_age:
                del self.pending_evidence[h]
        self._evidence_of = {ev.validator: h for h, ev in self.pending_evidence.items()}
        if len(self.pending_evidence) < MAX_PENDING_EVIDENCE:
            self._evidence_full_logged = False
