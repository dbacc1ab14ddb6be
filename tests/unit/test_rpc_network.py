"""Network RPC methods on one real node without peers: every method's answer and every bad call's error.

Peers, bans of connected peers and dialing over real TLS are in tests/integration/test_rpc_network.py.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted

from tests.p2pnet import Net, make_keys, sleep
from timecoin import __version__
from timecoin.node import Node
from timecoin.p2p import peers
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import (
    CLIENT_INVALID_IP_OR_SUBNET,
    CLIENT_NODE_ALREADY_ADDED,
    CLIENT_NODE_NOT_ADDED,
    CLIENT_NODE_NOT_CONNECTED,
    IN_WARMUP,
    INVALID_ADDRESS_OR_KEY,
    INVALID_PARAMETER,
    INVALID_PARAMS,
    RPCError,
)
from timecoin.rpc.methods import TABLE
from timecoin.rpc.network import _version_number
from timecoin.sim.loopnet import reactor
from timecoin.wire import messages as m

OTHER = make_keys(3, seed=9)[2]
OTHER_ADDR = f"/ip4/127.0.0.1/tcp/1/p2p/{OTHER.peer_id}"


def call(node: Any, name: str, params: Any = None) -> Any:
    return TABLE.call(RPCContext(node, reactor, 0.0), name, params if params is not None else [])


def error(node: Any, name: str, params: Any) -> RPCError:
    with pytest.raises(RPCError) as info:
        call(node, name, params)
    return info.value


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    net = Net(tmp_path, 1, chain_id="timecoin-rpc-net")
    await net.start(connect=False)
    try:
        yield net.nodes[0]
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_without_peers(node: Node) -> None:
    assert call(node, "getpeerinfo") == []
    assert call(node, "getconnectioncount") == 0
    info = call(node, "getnetworkinfo")
    assert info["version"] == _version_number(__version__) and info["subversion"] == f"/timecoin:{__version__}/"
    assert info["protocolversion"] == m.PROTOCOL_VERSION and info["peer_id"] == node.peer_id
    assert info["localaddresses"] == [node.p2p.listen_addr] and info["networkactive"] is True
    # What peers are told to dial (external_address, as bitcoind's localaddresses), not the bound address.
    node.p2p.advertised_addr = f"/ip4/198.51.100.7/tcp/9333/p2p/{node.peer_id}"
    assert call(node, "getnetworkinfo")["localaddresses"] == [node.p2p.advertised_addr]
    node.p2p.advertised_addr = ""
    assert call(node, "getnetworkinfo")["localaddresses"] == []
    assert (info["connections"], info["connections_in"], info["connections_out"]) == (0, 0, 0)
    assert info["limits"]["max_outbound"] == node.config.max_outbound
    assert info["relayfee"] == "0.00001000"                  # min_relay_fee 1000 units
    for name in ("getpeerinfo", "getconnectioncount", "getnetworkinfo", "listbanned", "clearbanned"):
        assert error(node, name, [1]).code == INVALID_PARAMS


def test_version_is_an_integer_as_bitcoind_shows_it() -> None:
    assert _version_number("0.1.0") == 100 and _version_number("1.2.3") == 10203
    assert _version_number("2.0.0rc1") == 20000 and _version_number("3") == 30000


def test_network_methods_while_starting() -> None:
    starting = SimpleNamespace(p2p=SimpleNamespace(peers=None, peerstore=None))
    for name, params in (("getpeerinfo", []), ("getnetworkinfo", []), ("listbanned", []),
                         ("setban", ["1.2.3.4", "add"]), ("getreputation", []), ("addnode", [OTHER_ADDR, "add"])):
        assert error(starting, name, params).code == IN_WARMUP


@pytest_twisted.ensureDeferred
async def test_addnode_add_remove_and_their_errors(node: Node) -> None:
    store = node.p2p.peerstore
    assert call(node, "addnode", [OTHER_ADDR, "add"]) is None
    entry = store.get(OTHER.peer_id)
    assert entry is not None and OTHER_ADDR in entry.addrs
    err = error(node, "addnode", [OTHER_ADDR, "add"])
    assert err.code == CLIENT_NODE_ALREADY_ADDED and "already added" in err.message
    assert call(node, "addnode", {"node": OTHER_ADDR, "command": "remove"}) is None
    assert store.get(OTHER.peer_id) is None
    err = error(node, "addnode", [OTHER_ADDR, "remove"])
    assert err.code == CLIENT_NODE_NOT_ADDED and "not been added" in err.message
    # A peer only heard of through exchange is not an added node.
    store.add(OTHER_ADDR, "exchange", reactor.seconds())
    assert error(node, "addnode", [OTHER_ADDR, "remove"]).code == CLIENT_NODE_NOT_ADDED


@pytest.mark.parametrize(("params", "code", "says"), [
    (["/ip4/127.0.0.1/tcp/1", "add"], INVALID_PARAMETER, "/p2p/<PeerID>"),
    (["127.0.0.1:9333", "add"], INVALID_PARAMETER, "Invalid node address"),
    (["/ip4/300.1.1.1/tcp/1/p2p/x", "onetry"], INVALID_PARAMETER, "Invalid node address"),
    (["/ip4/127.0.0.1/tcp/99999/p2p/" + OTHER.peer_id, "add"], INVALID_PARAMETER, "port"),
    (["/ip4/127.0.0.1/tcp/1/p2p/16Uiu2HAbad", "add"], INVALID_PARAMETER, "PeerID"),
    (["/ip4/0.0.0.0/tcp/1/p2p/" + OTHER.peer_id, "add"], INVALID_PARAMETER, "cannot be dialed"),
    (["/ip4/127.0.0.1/tcp/1/p2p/" + OTHER.peer_id, "connect"], INVALID_PARAMS, "command must be one of"),
    ([OTHER_ADDR], INVALID_PARAMS, "missing parameter command"),
    ([5, "add"], INVALID_PARAMS, "node must be a string"),
    (["/" * 10_000, "add"], INVALID_PARAMETER, "at most"),
])
@pytest_twisted.ensureDeferred
async def test_addnode_bad_params(node: Node, params: list[Any], code: int, says: str) -> None:
    err = error(node, "addnode", params)
    assert err.code == code and says in err.message, err.message


@pytest_twisted.ensureDeferred
async def test_addnode_refuses_our_own_peer_id_and_onetry_to_nowhere_fails_quietly(node: Node) -> None:
    err = error(node, "addnode", [node.p2p.listen_addr, "add"])
    assert err.code == INVALID_PARAMETER and "own PeerID" in err.message
    assert call(node, "addnode", [OTHER_ADDR, "onetry"]) is None    # port 1: refused; no error, no entry
    await sleep(0.3)
    assert call(node, "getconnectioncount") == 0 and node.p2p.peerstore.get(OTHER.peer_id) is None


@pytest.mark.parametrize(("params", "code"), [
    ([OTHER.peer_id], CLIENT_NODE_NOT_CONNECTED), (["127.0.0.1:1"], CLIENT_NODE_NOT_CONNECTED),
    ([OTHER_ADDR], CLIENT_NODE_NOT_CONNECTED), (["/ip4/127.0.0.1/tcp/1"], CLIENT_NODE_NOT_CONNECTED),
    (["nonsense"], CLIENT_NODE_NOT_CONNECTED), (["/ip4/x/tcp/1"], INVALID_PARAMETER),
    ([], INVALID_PARAMS), ([1], INVALID_PARAMS),
])
@pytest_twisted.ensureDeferred
async def test_disconnectnode_of_no_connected_peer(node: Node, params: list[Any], code: int) -> None:
    assert error(node, "disconnectnode", params).code == code


@pytest_twisted.ensureDeferred
async def test_setban_listbanned_and_clearbanned(node: Node) -> None:
    now = reactor.seconds()
    assert call(node, "setban", ["203.0.113.7", "add"]) is None
    assert call(node, "setban", [OTHER.peer_id, "add", 600]) is None
    assert call(node, "setban", ["2001:db8:1:2::99", "add", int(now) + 7200, True]) is None
    bans = {b["address"]: b for b in call(node, "listbanned")}
    assert set(bans) == {"203.0.113.7", OTHER.peer_id, "2001:db8:1:2::/64"}
    ip = bans["203.0.113.7"]
    assert ip["kind"] == "ip" and ip["ban_duration"] == int(node.config.ban_duration)
    assert ip["banned_until"] - ip["ban_created"] == ip["ban_duration"] and ip["time_remaining"] > 0
    assert bans[OTHER.peer_id]["kind"] == "peer" and bans[OTHER.peer_id]["ban_duration"] == 600
    assert abs(bans["2001:db8:1:2::/64"]["banned_until"] - (int(now) + 7200)) <= 1
    assert node.p2p.peers.is_banned(None, "2001:db8:1:2::5", reactor.seconds())
    assert call(node, "getnetworkinfo")["banned_ips"] == 2

    err = error(node, "setban", ["203.0.113.7", "add"])
    assert err.code == CLIENT_NODE_ALREADY_ADDED and "already banned" in err.message
    assert call(node, "setban", ["2001:db8:1:2::/64", "remove"]) is None
    err = error(node, "setban", ["2001:db8:1:2::/64", "remove"])
    assert err.code == CLIENT_INVALID_IP_OR_SUBNET and "Unban failed" in err.message
    assert call(node, "clearbanned") is None
    assert call(node, "listbanned") == []
    # While banned, a peer is known to getreputation; an operator ban of a neutral peer leaves no score behind.
    assert call(node, "setban", [OTHER.peer_id, "add"]) is None
    assert call(node, "getreputation", [OTHER.peer_id])["banned_until"] > now
    assert call(node, "setban", [OTHER.peer_id, "remove"]) is None
    assert error(node, "getreputation", [OTHER.peer_id]).code == INVALID_ADDRESS_OR_KEY


@pytest.mark.parametrize(("params", "code", "says"), [
    (["not-an-ip", "add"], CLIENT_INVALID_IP_OR_SUBNET, "Invalid IP/Subnet"),
    (["10.0.0.0/8", "add"], CLIENT_INVALID_IP_OR_SUBNET, "Invalid IP/Subnet"),
    (["2001:db8::/48", "add"], CLIENT_INVALID_IP_OR_SUBNET, "Invalid IP/Subnet"),
    (["999.1.1.1", "remove"], CLIENT_INVALID_IP_OR_SUBNET, "Invalid IP/Subnet"),
    (["127.0.0.1", "add"], CLIENT_INVALID_IP_OR_SUBNET, "loopback"),
    (["::1", "add"], CLIENT_INVALID_IP_OR_SUBNET, "loopback"),
    (["1.2.3.4", "add", -1], INVALID_PARAMS, "bantime out of range"),
    (["1.2.3.4", "add", 1 << 41], INVALID_PARAMS, "bantime out of range"),
    (["1.2.3.4", "add", 11 * 365 * 86400], INVALID_PARAMETER, "must end in the future"),
    (["1.2.3.4", "add", 1000, True], INVALID_PARAMETER, "must end in the future"),
    (["1.2.3.4", "add", 1.5], INVALID_PARAMS, "bantime must be an integer"),
    (["1.2.3.4", "add", 10, "yes"], INVALID_PARAMS, "absolute must be true or false"),
    (["1.2.3.4", "ban"], INVALID_PARAMS, "command must be one of"),
    (["1.2.3.4"], INVALID_PARAMS, "missing parameter command"),
    ([None, "add"], INVALID_PARAMS, "missing parameter target"),
])
@pytest_twisted.ensureDeferred
async def test_setban_bad_params(node: Node, params: list[Any], code: int, says: str) -> None:
    err = error(node, "setban", params)
    assert err.code == code and says in err.message, err.message
    assert call(node, "listbanned") == []


@pytest_twisted.ensureDeferred
async def test_setban_refuses_our_own_peer_id(node: Node) -> None:
    assert error(node, "setban", [node.peer_id, "add"]).code == INVALID_PARAMETER


@pytest_twisted.ensureDeferred
async def test_getreputation(node: Node) -> None:
    out = call(node, "getreputation")
    assert out["peers"] == [] and out["deltas"]["invalid_signature"] == -50
    assert out["limits"]["rate_limit"] == node.config.rate_limit
    err = error(node, "getreputation", [OTHER.peer_id])
    assert err.code == INVALID_ADDRESS_OR_KEY and "not known" in err.message
    node.p2p.peers.record(OTHER.peer_id, peers.Event.TIMEOUT, reactor.seconds())
    info = call(node, "getreputation", {"peer": OTHER.peer_id})
    assert info == {"peer_id": OTHER.peer_id, "score": -5, "banned_until": None, "connected": False,
                    "inbound": None, "validator": False, "ip": None, "inflight": 0}
    for bad in (["16Uiu2HAnope"], ["1.2.3.4"], [""]):
        assert error(node, "getreputation", bad).code == INVALID_PARAMETER
    assert error(node, "getreputation", [7]).code == INVALID_PARAMS
