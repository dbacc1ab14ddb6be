"""Network RPC methods between two real nodes (TLS on 127.0.0.1, LMDB): peers, bans, disconnects, addnode.

setban of a connected peer closes its connection on both ends and the peer, which keeps dialing, is refused
until the ban is lifted; addnode makes the node dial a peer (kept, or once).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.p2pnet import Net, sleep, wait_for
from timecoin.errors import Reason
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import CLIENT_NODE_NOT_ADDED, RPCError
from timecoin.rpc.methods import TABLE
from timecoin.sim.loopnet import reactor


def call(node: Any, name: str, params: Any = None) -> Any:
    return TABLE.call(RPCContext(node, reactor, 0.0), name, params if params is not None else [])


@pytest_twisted.ensureDeferred
async def test_setban_disconnects_and_refuses_a_peer_until_lifted(tmp_path: Path) -> None:
    net = Net(tmp_path, 2, chain_id="timecoin-rpc-ban")
    a, b = net.nodes
    try:
        await net.start()
        await wait_for(lambda: call(a, "getconnectioncount") == 1 and call(b, "getconnectioncount") == 1, 10.0,
                       "connected")
        await wait_for(lambda: all(p["state"] == "ready" for p in call(a, "getpeerinfo")), 5.0, "ready")
        [peer] = call(a, "getpeerinfo")
        assert peer["id"] == b.peer_id and peer["validator"] is True and peer["network"] == "ipv4"
        assert peer["addr"].startswith("127.0.0.1:") and peer["subver"].startswith("timecoin/")
        assert isinstance(peer["reputation"], int) and peer["conntime"] is not None
        assert call(a, "getreputation", [b.peer_id])["connected"] is True
        assert [p["peer_id"] for p in call(a, "getreputation")["peers"]] == [b.peer_id]

        refusals: list[Reason] = []
        admit = a.p2p.admit

        def watched(conn: Any) -> Reason:
            reason = admit(conn)
            if conn.peer_id == b.peer_id:
                refusals.append(reason)
            return reason

        a.p2p.admit = watched
        assert call(a, "setban", [b.peer_id, "add", 3600]) is None
        await wait_for(lambda: not a.p2p.connections and not b.p2p.connections, 5.0, "both ends disconnected")
        assert [x["address"] for x in call(a, "listbanned")] == [b.peer_id]
        # b keeps dialing a (a is in its peer store); a refuses it every time, and does not dial b.
        deadline = time.monotonic() + 3.0
        for _ in range(100):
            assert b.peer_id not in a.p2p.connections, "banned peer admitted"
            if time.monotonic() > deadline:
                break
            await sleep(0.05)
        assert call(a, "getconnectioncount") == 0
        await wait_for(lambda: Reason.BANNED in refusals, 10.0, "b's redial refused as banned")
        assert Reason.OK not in refusals

        assert call(a, "setban", [b.peer_id, "remove"]) is None
        await wait_for(lambda: b.peer_id in a.p2p.connections, 30.0, "reconnected after the ban is lifted")
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_disconnectnode_by_peer_id_and_by_address(tmp_path: Path) -> None:
    net = Net(tmp_path, 2, chain_id="timecoin-rpc-disc")
    a, b = net.nodes
    try:
        await net.start()
        await wait_for(lambda: b.peer_id in a.p2p.connections, 10.0, "connected")
        conn = a.p2p.connections[b.peer_id]
        assert call(a, "disconnectnode", [b.peer_id]) is None
        await wait_for(lambda: conn.state == "closed", 5.0, "closed by PeerID")
        await wait_for(lambda: b.peer_id in a.p2p.connections, 60.0, "reconnected (disconnect is not a ban)")
        conn = a.p2p.connections[b.peer_id]
        assert call(a, "disconnectnode", [f"{conn.ip}:{conn.port}"]) is None
        await wait_for(lambda: conn.state == "closed", 5.0, "closed by ip:port")
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_addnode_add_and_onetry_dial_the_peer(tmp_path: Path) -> None:
    net = Net(tmp_path, 2, chain_id="timecoin-rpc-add")
    a, b = net.nodes
    try:
        await net.start(connect=False)
        assert call(a, "getconnectioncount") == 0
        assert call(a, "addnode", [b.p2p.listen_addr, "add"]) is None
        await wait_for(lambda: b.peer_id in a.p2p.connections, 10.0, "connected through addnode add")
        assert call(a, "addnode", [b.p2p.listen_addr, "remove"]) is None
        conn = a.p2p.connections[b.peer_id]
        call(a, "disconnectnode", [b.peer_id])
        await wait_for(lambda: conn.state == "closed", 5.0, "closed")
        await wait_for(lambda: not a.p2p.connections and not b.p2p.connections, 5.0, "both ends closed")
        assert call(a, "addnode", [b.p2p.listen_addr, "onetry"]) is None
        await wait_for(lambda: b.peer_id in a.p2p.connections, 10.0, "connected through addnode onetry")
        # onetry dials once: the peer is not an added node afterwards.
        with pytest.raises(RPCError) as info:
            call(a, "addnode", [b.p2p.listen_addr, "remove"])
        assert info.value.code == CLIENT_NODE_NOT_ADDED
    finally:
        await net.stop()
