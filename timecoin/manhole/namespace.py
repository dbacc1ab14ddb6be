"""What a manhole session sees: the node's parts and helpers that print readable tables.

Each helper is a plain function of the node returning :class:`Text` (a ``str`` whose ``repr`` is itself,
so typing ``status()`` at the prompt shows the table, not a quoted string). Tests call them directly.
A namespace is built per connection (:func:`build_namespace`): one operator's variables never leak
into another's session.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

from timecoin import crypto
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.block import VoteType


class Text(str):
    """A table or message: shown as is at the prompt (its repr is the text)."""

    def __repr__(self) -> str:
        return str(self)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Text:
    """Left-aligned columns separated by two spaces; ``None`` shows as ``-``."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return Text("\n".join(lines))


def _now(node: Any) -> float:
    return float(node.reactor.seconds())


def status(node: Any) -> Text:
    """One line per fact: identity, chain, tip, consensus position, peers, mempool, sync."""
    store, engine = node.store, getattr(node.consensus, "engine", None)
    rows: list[tuple[str, Any]] = [("peer_id", node.peer_id), ("network", node.config.network),
                                   ("chain_id", node.genesis.chain_id)]
    if store is None:
        rows.append(("store", "closed (node starting or stopping)"))
    else:
        rows += [("height", store.tip_height()), ("tip", store.tip_hash().hex())]
    if engine is not None:
        rows.append(("consensus", f"height {engine.height} round {engine.round} step {engine.step.name.lower()}"))
    p2p = node.p2p
    rows.append(("peers", len(p2p.connections) if p2p is not None else 0))
    pool = node.mempool                 # an empty Mempool is falsy: compare with None
    rows.append(("mempool", "-" if pool is None else f"{len(pool)} txs, {pool.size_bytes} bytes"))
    sync = node.sync
    if sync is not None:
        rows.append(("syncing", bool(sync.progress.get("syncing"))))
    return table(("what", "value"), rows)


def peers(node: Any) -> Text:
    """Connected peers: id, address, direction, validator, height, latency, reputation."""
    p2p = node.p2p
    if p2p is None or p2p.peers is None:
        return Text("P2P is not running")
    now = _now(node)
    rows = []
    for pid, conn in sorted(p2p.connections.items()):
        info = conn.info()
        rows.append((pid, info["addr"], "in" if conn.inbound else "out", "yes" if conn.is_validator else "no",
                     conn.height, info["latency_ms"], p2p.peers.score(pid, now)))
    if not rows:
        return Text("no peers connected")
    return table(("peer_id", "addr", "dir", "validator", "height", "ping_ms", "score"), rows)


def validators(node: Any) -> Text:
    """The validator set of the next height: address, PeerID, power, share, and which one is this node."""
    if node.store is None:
        return Text("store closed (node starting or stopping)")
    height = node.next_height()
    vs = node.store.validator_set(height) or node.store.validator_set(height - 1)
    if vs is None:
        return Text(f"no validator set stored for height {height}")
    me = node.key.public_key
    rows = [(v.address.hex(), crypto.peer_id_of(v.pubkey), v.power, f"{100 * v.power / vs.total_power:.1f}%",
             "yes" if v.pubkey == me else "") for v in vs.validators]
    return Text(f"validators at height {height} (total power {vs.total_power})\n"
                + table(("address", "peer_id", "power", "share", "self"), rows))


def round_state(node: Any) -> Text:
    """Consensus position: height, round, step, proposer, lock, and the votes seen this height."""
    engine = getattr(node.consensus, "engine", None)
    if engine is None or engine.height < 1:
        return Text("consensus is not running yet")
    proposer: bytes | None = None
    with contextlib.suppress(ValidationError, ValueError):      # a height with no set yet: no proposer
        proposer = node.consensus.app.proposer(engine.height, engine.round)
    locked = getattr(engine, "locked_value", None)
    rows: list[tuple[str, Any]] = [
        ("height", engine.height), ("round", engine.round), ("step", engine.step.name.lower()),
        ("proposer", None if proposer is None else proposer.hex()),
        ("is_validator", engine.is_validator),
        ("locked", "-" if locked is None else f"round {engine.locked_round} block {locked.hash.hex()[:16]}"),
        ("halted", node.consensus.halted or "no")]
    votes = getattr(engine, "votes", None)
    vote_rows = []
    if votes is not None:
        for (round_, vtype), vset in sorted(votes.sets.items()):
            vote_rows.append((round_, _vote_type(vtype), len(vset.votes), vset.power))
    out = table(("what", "value"), rows)
    if vote_rows:
        out = Text(out + "\n\n" + table(("round", "type", "votes", "power"), vote_rows))
    return out


def _vote_type(vtype: Any) -> str:
    try:
        return VoteType(vtype).name.lower()
    except ValueError:
        return str(vtype)


def ban(node: Any, peer: str, hours: float = 24.0) -> Text:
    """Ban a PeerID or IP for ``hours`` and close its connections (as RPC ``setban add``)."""
    p2p = node.p2p
    if p2p is None or p2p.peers is None:
        return Text("P2P is not running")
    if peer == p2p.peer_id:
        return Text("refused: that is this node's own PeerID")
    try:
        b = p2p.peers.set_ban(peer, float(hours) * 3600.0, _now(node), reason="operator (manhole)")
    except ValueError as exc:
        return Text(f"refused: {exc}")
    closed = 0
    for pid in p2p.peers.connections_of(b.target):
        conn = p2p.connections.get(pid)
        if conn is not None:
            conn.reject(Reason.BANNED, "banned by the operator")
            conn.close()
            closed += 1
    return Text(f"banned {b.kind} {b.target} for {hours:g} h; closed {closed} connection(s)")


def unban(node: Any, peer: str) -> Text:
    """Lift the ban of a PeerID or IP."""
    p2p = node.p2p
    if p2p is None or p2p.peers is None:
        return Text("P2P is not running")
    try:
        lifted = p2p.peers.unban(peer)
    except ValueError as exc:
        return Text(f"refused: {exc}")
    return Text(f"unbanned {peer}" if lifted else f"{peer} was not banned")


def mempool_top(node: Any, n: int = 10) -> Text:
    """The ``n`` highest-fee pending transactions (fee, then arrival order)."""
    pool = node.mempool
    if pool is None:
        return Text("mempool not open (node starting or stopping)")
    txs = [tx for tx in (pool.get(t) for t in pool.txids()) if tx is not None]
    order = sorted(range(len(txs)), key=lambda i: (-txs[i].fee, i))[:max(0, int(n))]
    if not order:
        return Text("mempool is empty")
    rows = [(txs[i].id.hex(), txs[i].kind.name.lower(), crypto.address_of(txs[i].sender).hex(), txs[i].nonce,
             txs[i].fee, txs[i].amount) for i in order]
    return Text(f"{len(txs)} txs, {pool.size_bytes} bytes; top {len(rows)} by fee\n"
                + table(("txid", "kind", "from", "nonce", "fee", "amount"), rows))


HELPERS: dict[str, Callable[..., Text]] = {
    "status": status, "peers": peers, "validators": validators, "round_state": round_state,
    "ban": ban, "unban": unban, "mempool_top": mempool_top}


def build_namespace(node: Any) -> dict[str, Any]:
    """A fresh namespace for one session: the node, its parts (read when the session starts) and the helpers.

    The parts are looked up again through ``node`` by the helpers, so they stay right after a restart of a
    service; ``help()`` lists the helpers.
    """
    ns: dict[str, Any] = {"node": node, "store": node.store, "mempool": node.mempool, "consensus": node.consensus,
                          "p2p": node.p2p, "sync": node.sync}
    for name, fn in HELPERS.items():
        ns[name] = functools.update_wrapper(functools.partial(fn, node), fn)
    ns["helpers"] = lambda: Text("\n".join(f"{name}{_sig(name)}: {(fn.__doc__ or '').splitlines()[0]}"
                                           for name, fn in HELPERS.items()))
    return ns


def _sig(name: str) -> str:
    return {"ban": "(peer, hours=24)", "unban": "(peer)", "mempool_top": "(n=10)"}.get(name, "()")
