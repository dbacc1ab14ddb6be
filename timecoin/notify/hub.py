"""The hub: subscriptions to finalized events, fed by consensus ``on_commit``, resumable from a height.

Events are made from blocks read back from the store, so a replay and a live delivery say the same
thing. ``height`` is the last height the hub has dispatched; each subscription has ``next``, the next
height it is owed. A live block ``h`` goes only to subscriptions whose ``next == h``; one still behind
(replaying from ``from_height``) reads the store a chunk per reactor turn up to the hub's ``height``
and then joins the live feed: every event once, none missing, however commits and replay interleave.
``on_commit`` may name only the last of a batch of synced blocks: the hub dispatches every height
between its ``height`` and the store's tip.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from timecoin import crypto
from timecoin.errors import DecodeError
from timecoin.ledger.block import Block
from timecoin.ledger.tx import ZERO_ADDRESS
from timecoin.rpc import render

TOPICS = ("newblock", "tx", "address")
REPLAY_CHUNK = 50               # blocks read per reactor turn while a subscription catches up
REPLAY_RETRY = 0.05             # s before a replay step retries while the client's connection is paused


class SubscribeError(ValueError):
    """A subscribe request that cannot be honoured; the message says why (sent to the client)."""


class Subscription:
    """One client's interest in a topic; ``send`` gets each event dict, in height order."""

    def __init__(self, sid: int, topic: str, send: Callable[[dict[str, Any]], None], next_height: int,
                 address: bytes | None = None, txid: bytes | None = None) -> None:
        self.sid = sid
        self.topic = topic
        self.send = send
        self.next = next_height
        self.address = address
        self.txid = txid
        self.closed = False
        self.paused: Callable[[], bool] = lambda: False
        self._replaying: Any = None

    def events(self, block: Block, network: str) -> list[dict[str, Any]]:
        """This subscription's events in ``block`` (empty if none)."""
        base = {"sub": self.sid, "height": block.height, "blockhash": block.hash.hex()}
        if self.topic == "newblock":
            return [{"type": "newblock", **base, "hash": block.hash.hex(), "time_ms": block.header.timestamp,
                     "txs": [tx.id.hex() for tx in block.txs]}]
        if self.topic == "tx":
            return [{"type": "tx", **base, "txid": tx.id.hex(), "final": True}
                    for tx in block.txs if tx.id == self.txid]
        out = []
        for tx in block.txs:
            recipient = tx.recipient if tx.recipient != ZERO_ADDRESS else None
            if self.address in (tx.sender_address, recipient):
                out.append({"type": "address", **base, "address": render.address(self.address or b"", network),
                            "txid": tx.id.hex(), "tx": render.tx_json(tx, network)})
        return out


class Hub:
    """Every subscription of every connection; :meth:`on_commit` is the consensus listener."""

    log = Logger()

    def __init__(self, node: Any, reactor: Any, max_subscriptions: int = 64) -> None:
        self.node = node
        self.reactor = reactor
        self.max_subscriptions = max_subscriptions
        self.height: int | None = None          # last dispatched height (None until the store is open)
        self.subs: dict[int, Subscription] = {}
        self._ids = itertools.count(1)

    @property
    def network(self) -> str:
        return str(self.node.config.network)

    def start(self) -> None:
        """Begin at the store's tip: what is already stored is replayed on request, never pushed."""
        self.height = self.node.store.tip_height()

    def stop(self) -> None:
        for sub in list(self.subs.values()):
            self.remove(sub)
        self.height = None

    # -- subscribing ---------------------------------------------------------------------------------
    def parse(self, msg: dict[str, Any]) -> tuple[str, bytes | None, bytes | None, int | None]:
        """(topic, address, txid, from_height) of a subscribe message; SubscribeError if any is wrong."""
        topic = msg.get("topic")
        if topic not in TOPICS:
            raise SubscribeError(f"unknown topic {str(topic)[:40]!r}: one of {', '.join(TOPICS)}")
        address = txid = None
        if topic == "address":
            text = msg.get("address")
            if not isinstance(text, str):
                raise SubscribeError("address: a TIME0…/TIME1… address string is required")
            try:
                address = crypto.decode_address(text.strip())
            except DecodeError as exc:
                raise SubscribeError(f"invalid address: {exc}") from None
            ours = "mainnet" if self.network == "mainnet" else "testnet"
            if crypto.address_network(text.strip()) != ours:
                raise SubscribeError(f"invalid address: not an address of {self.network}")
        if topic == "tx":
            text = msg.get("txid")
            try:
                txid = bytes.fromhex(text) if isinstance(text, str) else b""
            except ValueError:
                txid = b""
            if len(txid) != 32:
                raise SubscribeError("txid: 64 hex characters are required")
        start = msg.get("from_height")
        if start is not None:
            tip = self.height if self.height is not None else 0
            if not isinstance(start, int) or isinstance(start, bool) or not 1 <= start <= tip + 1:
                raise SubscribeError(f"from_height must be an integer from 1 to {tip + 1} (the next block)")
            if topic == "tx":
                raise SubscribeError("from_height is for newblock and address: a tx subscription looks the tx up")
        return topic, address, txid, start

    def subscribe(self, msg: dict[str, Any], send: Callable[[dict[str, Any]], None], owned: int,
                  paused: Callable[[], bool] | None = None) -> Subscription:
        """A new subscription (``owned``: how many its connection holds); its replay starts at once."""
        if self.height is None:
            raise SubscribeError("the node is not running")
        if owned >= self.max_subscriptions:
            raise SubscribeError(f"too many subscriptions on this connection (at most {self.max_subscriptions})")
        topic, address, txid, start = self.parse(msg)
        sub = Subscription(next(self._ids), topic, send, start or self.height + 1, address, txid)
        if paused is not None:
            sub.paused = paused
        self.subs[sub.sid] = sub
        return sub

    def begin(self, sub: Subscription) -> None:
        """Send what is already stored (replay; a tx already final), then the subscription is live."""
        if sub.topic == "tx" and sub.txid is not None:
            where = self.node.store.tx_location(sub.txid)
            if where is not None and self.height is not None and where[0] <= self.height:
                block = self.node.store.get_block(where[0])
                if block is not None:
                    self._deliver(sub, block)
            return
        self._replay(sub)

    def remove(self, sub: Subscription) -> None:
        sub.closed = True
        self.subs.pop(sub.sid, None)
        if sub._replaying is not None and sub._replaying.active():
            sub._replaying.cancel()
        sub._replaying = None

    def _replay(self, sub: Subscription) -> None:
        """Catch ``sub`` up a chunk at a time (waiting while its connection is paused), then it is live."""
        sub._replaying = None
        if sub.closed or self.height is None:
            return
        if sub.paused():
            sub._replaying = self.reactor.callLater(REPLAY_RETRY, self._replay, sub)
            return
        store = self.node.store
        for _ in range(REPLAY_CHUNK):
            if sub.closed or sub.next > self.height:
                return
            block = store.get_block(sub.next)
            if block is None:                   # not stored (pruned or rolled back): say so and stop
                sub.send({"type": "error", "sub": sub.sid, "message": f"block {sub.next} is not stored"})
                self.remove(sub)
                return
            self._deliver(sub, block)
        if not sub.closed and sub.next <= self.height:
            sub._replaying = self.reactor.callLater(0, self._replay, sub)

    def _deliver(self, sub: Subscription, block: Block) -> None:
        sub.next = block.height + 1
        for event in sub.events(block, self.network):
            if sub.closed:
                return
            sub.send(event)
            if sub.topic == "tx":
                self.remove(sub)                # a tx is final once: the subscription is done

    # -- the consensus listener ----------------------------------------------------------------------
    def on_commit(self, block: Block) -> None:
        """Dispatch every newly stored height (a sync batch names only its last block)."""
        store = self.node.store
        if self.height is None or store is None:
            return
        tip = store.tip_height()
        for height in range(self.height + 1, tip + 1):
            subs = [s for s in self.subs.values() if s.next == height]
            stored = block
            if subs and block.height != height:     # read (decode) a stored block only for a subscriber
                found = store.get_block(height)
                if found is None:
                    break
                stored = found
            self.height = height
            for sub in subs:
                try:
                    self._deliver(sub, stored)
                except Exception:           # one broken client never stops the others or consensus
                    self.log.failure("Notification to subscription {sid} failed", sid=sub.sid)
                    self.remove(sub)
