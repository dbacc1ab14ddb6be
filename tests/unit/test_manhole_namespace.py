"""The manhole's helpers on real in-process nodes (two validators over TLS on 127.0.0.1, LMDB in tmp_path).

The helpers are plain functions of the node returning text, so they are checked here without SSH;
tests/integration/test_manhole.py checks the same namespace through a real SSH client.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.p2pnet import Net, wait_for
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.manhole import namespace as ns
from timecoin.manhole.namespace import Text, build_namespace, table


async def started(tmp_path: Path) -> Net:
    net = Net(tmp_path, 2, chain_id="timecoin-manhole-test")
    await net.start()
    await wait_for(lambda: min(net.heights()) >= 2, 20.0, "two committed heights")
    await wait_for(lambda: all(len(n.p2p.connections) == 1 for n in net.nodes), 10.0, "connected")
    return net


def test_text_shows_as_is_and_table_aligns() -> None:
    out = table(("a", "long_header"), [(1, None), ("wide cell", 22)])
    assert repr(out) == str(out)
    lines = out.splitlines()
    assert lines[0] == "a          long_header"
    assert lines[1] == "---------  -----------"
    assert lines[2] == "1          -"
    assert lines[3] == "wide cell  22"


@pytest_twisted.ensureDeferred
async def test_helpers_read_the_live_node(tmp_path: Path) -> None:
    net = await started(tmp_path)
    try:
        node, other = net.nodes
        text = ns.status(node)
        assert isinstance(text, Text)
        assert node.peer_id in text and "timecoin-manhole-test" in text
        height_line = next(line for line in text.splitlines() if line.startswith("height"))
        assert int(height_line.split()[1]) >= 2
        assert "peers      1" in text
        assert "mempool    0 txs, 0 bytes" in text

        text = ns.peers(node)
        assert other.peer_id in text and "127.0.0.1:" in text and "yes" in text     # a validator

        text = ns.validators(node)
        assert node.peer_id in text and other.peer_id in text
        mine = next(line for line in text.splitlines() if node.peer_id in line)
        assert mine.rstrip().endswith("yes") and "50.0%" in mine
        theirs = next(line for line in text.splitlines() if other.peer_id in line)
        assert not theirs.rstrip().endswith("yes")

        text = ns.round_state(node)
        rows = dict(line.split(None, 1) for line in text.split("\n\n")[0].splitlines()[2:])
        assert int(rows["height"]) == node.consensus.engine.height
        assert rows["step"] in ("propose", "prevote", "precommit", "committed")
        assert rows["is_validator"] == "True" and rows["halted"] == "no"
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_mempool_top_orders_by_fee(tmp_path: Path) -> None:
    net = await started(tmp_path)
    try:
        node = net.nodes[0]
        assert ns.mempool_top(node) == "mempool is empty"
        chain = node.genesis.chain_id
        a, b = net.keys
        na, nb = node.mempool.pending_nonce(a.address), node.mempool.pending_nonce(b.address)
        txs = [Transaction.create(a, TxKind.TRANSFER, chain, na, 1_000, 5, b.address),
               Transaction.create(a, TxKind.TRANSFER, chain, na + 1, 5_000, 5, b.address),
               Transaction.create(b, TxKind.TRANSFER, chain, nb, 3_000, 5, a.address)]
        for tx in txs:
            node.mempool.add(tx)
        text = ns.mempool_top(node, 2)               # same reactor turn: no block can take them meanwhile
        lines = text.splitlines()
        assert lines[0].startswith("3 txs") and "top 2 by fee" in lines[0]
        assert lines[3].startswith(txs[1].id.hex()) and "5000" in lines[3]
        assert lines[4].startswith(txs[2].id.hex()) and "3000" in lines[4]
        assert txs[0].id.hex() not in text
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_ban_closes_the_connection_and_unban_lifts_it(tmp_path: Path) -> None:
    net = await started(tmp_path)
    try:
        node, other = net.nodes
        assert ns.ban(node, node.peer_id, 1).startswith("refused")
        assert ns.ban(node, "not-a-peer", 1).startswith("refused")
        assert ns.ban(node, "127.0.0.1", 1).startswith("refused")        # loopback is never banned by IP
        text = ns.ban(node, other.peer_id, 2)
        assert text == f"banned peer {other.peer_id} for 2 h; closed 1 connection(s)"
        bans = node.p2p.peers.list_bans(node.reactor.seconds())
        assert [(b.target, round(b.until - b.since)) for b in bans] == [(other.peer_id, 7200)]
        await wait_for(lambda: other.peer_id not in node.p2p.connections, 5.0, "banned peer disconnected")
        assert ns.unban(node, other.peer_id) == f"unbanned {other.peer_id}"
        assert node.p2p.peers.list_bans(node.reactor.seconds()) == []
        assert ns.unban(node, other.peer_id) == f"{other.peer_id} was not banned"
        assert ns.unban(node, "junk").startswith("refused")
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_namespace_is_fresh_per_session(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, chain_id="timecoin-manhole-test")
    net.nodes[0].startService()
    try:
        node = net.nodes[0]
        one, two = build_namespace(node), build_namespace(node)
        for name in ("node", "store", "mempool", "consensus", "p2p", "sync", "status", "peers", "validators",
                     "round_state", "ban", "unban", "mempool_top"):
            assert name in one, name
        assert one["node"] is node and one["store"] is node.store and one["p2p"] is node.p2p
        one["mine"] = 1
        assert "mine" not in two
        shown: Any = one["status"]()
        assert node.peer_id in shown
        assert "mempool_top(n=10)" in one["helpers"]()
        assert ns.peers(node) == "no peers connected"
    finally:
        await node.stopService()


def test_the_telnet_realm_serves_telnet_terminals_only() -> None:
    """A login asking the realm for anything else (e.g. a conch SSH avatar) fails instead of getting a shell."""
    from twisted.conch.interfaces import IConchUser

    from timecoin.manhole.service import UnsupportedAvatar, _TelnetRealm

    with pytest.raises(UnsupportedAvatar):
        _TelnetRealm(None).requestAvatar("operator", None, IConchUser)
