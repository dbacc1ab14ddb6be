"""A transaction workload for the whole-node simulator: wallets sending signed transfers through the real RPC.

:class:`Workload` is a world-owned repeating event (``cluster.scheduler.at(..., owner=None)``): at rate
``rate`` per simulated second it picks one of the cluster's funded user keys (``cluster.users``) with no
transfer in flight, builds a signed transfer with the sender's next nonce and a fee >= the node's
``min_relay_fee``, and submits it to a random honest running node through the node's own RPC handler
(``sendrawtransaction`` in ``timecoin.rpc.registry.TABLE``), as a wallet does. It records every accepted
txid (with the node, its incarnation and the time) and every refusal with its error, for
:class:`~timecoin.sim.cluster.invariants.Durability`.

A wallet has at most one transfer in flight per sender (so refusals for nonce gaps do not depend on
gossip timing). The transfer is settled when an honest node's chain holds it or a conflicting tx of the
same nonce. If the node that accepted it crashed and no honest running node holds it (chain or mempool),
it is recorded as lost with that reason (a mempool does not survive a crash) and the sender moves on with
the same nonce (a new tx, so the two conflict).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

import timecoin.rpc.methods  # noqa: F401  (registers the RPC methods in TABLE)
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import RPCError
from timecoin.rpc.registry import TABLE
from timecoin.sim.cluster.base import Trace

if TYPE_CHECKING:
    from timecoin import crypto
    from timecoin.sim.cluster.cluster import Cluster, SimNode


@dataclass(frozen=True)
class Submission:
    """A transfer an honest node's RPC accepted."""

    txid: bytes
    tx: Transaction
    node: str
    incarnation: int
    time: float


@dataclass(frozen=True)
class Refusal:
    tx: Transaction
    node: str
    time: float
    error: str


class Workload:
    """Signed transfers from ``cluster.users`` at ``rate`` per simulated second until ``stop_at`` (world time)."""

    def __init__(self, cluster: Cluster, rng: random.Random, rate: float, trace: Trace,
                 stop_at: float | None = None, start_at: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.cluster = cluster
        self.rng = rng
        self.rate = rate
        self.trace = trace
        self.stop_at = stop_at
        self.accepted: list[Submission] = []
        self.refused: list[Refusal] = []
        self.excused: dict[bytes, str] = {}                 # txid -> why it may never be finalized
        self.inflight: dict[bytes, Submission] = {}          # sender address -> its unsettled transfer
        self.nonces: dict[bytes, int] = {u.address: 0 for u in cluster.users}
        self.busy = 0                                        # ticks with every sender in flight
        self._counter = 0
        first = cluster.now() + 1.0 if start_at is None else start_at    # the first second is spent dialing
        cluster.scheduler.at(first, None, self._tick)

    # -- the repeating event -------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.cluster.now()
        if self.stop_at is not None and now >= self.stop_at:
            return
        self._settle()
        self.submit_one()
        self.cluster.scheduler.at(now + self.rng.expovariate(self.rate), None, self._tick)

    def _running(self) -> list[SimNode]:
        return [sn for sn in self.cluster.honest()
                if sn.state == "up" and sn.node is not None and sn.node.store is not None]

    def _settle(self) -> None:
        """Free the senders whose transfer is final (or conflicts with a final nonce) or was lost in a crash."""
        by_name = {sn.name: sn for sn in self.cluster.nodes}
        running = self._running()
        for sender, sub in sorted(self.inflight.items()):
            final_nonce = max((_account_nonce(sn, sender) for sn in running), default=0)
            if any(sn.node.store.tx_location(sub.txid) is not None for sn in running):  # type: ignore[union-attr]
                self.nonces[sender] = max(self.nonces[sender], sub.tx.nonce + 1)
                del self.inflight[sender]
            elif final_nonce > sub.tx.nonce:
                self.nonces[sender] = max(self.nonces[sender], final_nonce)
                del self.inflight[sender]
            else:
                origin = by_name[sub.node]
                alive = origin.incarnation == sub.incarnation and origin.state in ("up", "paused")
                held = any(sub.txid in sn.node.mempool for sn in running)  # type: ignore[union-attr,operator]
                if not alive and not held:
                    why = f"{sub.node} (incarnation {sub.incarnation}) crashed and no honest running node holds it"
                    self.excused[sub.txid] = why
                    self.trace.emit(self.cluster.now(), "tx_lost", txid=sub.txid.hex(), node=sub.node, why=why)
                    del self.inflight[sender]

    def submit_one(self) -> Submission | Refusal | None:
        """Build one transfer from a free sender and submit it to a random honest running node."""
        running = self._running()
        free = [u for u in self.cluster.users if u.address not in self.inflight]
        if not running or not free:
            self.busy += 1
            return None
        key = free[self.rng.randrange(len(free))]
        sn = running[self.rng.randrange(len(running))]
        assert sn.node is not None
        nonce = max(self.nonces[key.address], _account_nonce(sn, key.address))
        tx = self.build(key, nonce, sn)
        return self.submit(sn, tx)

    def build(self, key: crypto.PrivateKey, nonce: int, sn: SimNode) -> Transaction:
        assert sn.node is not None
        self._counter += 1
        recipients = [u.address for u in self.cluster.users if u.address != key.address]
        to = recipients[self.rng.randrange(len(recipients))]
        fee = max(sn.node.config.min_relay_fee, self.cluster.genesis.params.min_fee) + self.rng.randrange(100)
        return Transaction.create(key, TxKind.TRANSFER, self.cluster.genesis.chain_id, nonce, fee,
                                  1 + self._counter % 1000, to)

    def submit(self, sn: SimNode, tx: Transaction) -> Submission | Refusal:
        """``sendrawtransaction`` on ``sn``'s RPC handler; the outcome is recorded."""
        assert sn.node is not None and sn.reactor is not None
        now = self.cluster.now()
        ctx = RPCContext(sn.node, sn.reactor, 0.0, "10.0.255.1")
        error: str | None = None
        try:
            result: Any = TABLE.call(ctx, "sendrawtransaction", [tx.encoded.hex()])
            if isinstance(result, defer.Deferred):
                box: list[Any] = []
                result.addBoth(box.append)
                result = box[0] if box else None
                if isinstance(result, BaseException) or hasattr(result, "value"):
                    raise getattr(result, "value", result)
        except RPCError as exc:
            error = f"{exc.code}: {exc.message}"
        if error is not None or result != tx.id.hex():
            refusal = Refusal(tx, sn.name, now, error or f"unexpected reply {result!r}")
            self.refused.append(refusal)
            self.trace.emit(now, "tx_refused", txid=tx.id.hex(), node=sn.name, nonce=tx.nonce, error=refusal.error)
            return refusal
        sub = Submission(tx.id, tx, sn.name, sn.incarnation, now)
        self.accepted.append(sub)
        self.inflight[tx.sender_address] = sub
        self.trace.emit(now, "tx_accepted", txid=tx.id.hex(), node=sn.name, nonce=tx.nonce)
        return sub


def _account_nonce(sn: SimNode, address: bytes) -> int:
    if sn.node is None or sn.node.store is None:
        return 0
    account = sn.node.store.get_account(address)
    return 0 if account is None else int(account.nonce)
