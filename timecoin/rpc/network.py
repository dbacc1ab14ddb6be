"""Network RPC methods (bitcoind's names where they fit): peers, connections, added nodes, bans, reputation.

Everything goes through ``node.p2p`` (the P2PService) and its PeerManager / PeerStore, so an operator's
ban here is the same ban reputation makes: persisted, honoured on reconnect, and its matching connections
are closed at once. Error codes follow bitcoind's ``net.cpp``: -23 already added/banned, -24 not added,
-29 not connected, -30 bad IP/subnet or nothing to unban, -8 anything else wrong with a parameter.
"""
from __future__ import annotations

import math
from typing import Any

from timecoin import __version__, crypto
from timecoin.errors import DecodeError, Reason
from timecoin.p2p import discovery, peers
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import (
    CLIENT_INVALID_IP_OR_SUBNET,
    CLIENT_NODE_ALREADY_ADDED,
    CLIENT_NODE_NOT_ADDED,
    CLIENT_NODE_NOT_CONNECTED,
    IN_WARMUP,
    INVALID_ADDRESS_OR_KEY,
    INVALID_PARAMETER,
    RPCError,
)
from timecoin.rpc.registry import TABLE, Param
from timecoin.rpc.render import amount as format_amount
from timecoin.wire import messages as m

# setban's bantime: relative seconds (0 = the configured ban_duration) or, with absolute, a Unix time.
MAX_BANTIME = 1 << 40


def _p2p(ctx: RPCContext) -> Any:
    """The running P2P service with its peer tables; -28 while the node starts or stops."""
    p2p = getattr(ctx.node, "p2p", None)
    if p2p is None or p2p.peers is None or p2p.peerstore is None:
        raise RPCError(IN_WARMUP, "Node is starting or stopping: the P2P service is not running")
    return p2p


def _peer_id(text: str) -> str:
    """``text`` if it is a PeerID; -8 otherwise."""
    try:
        crypto.pubkey_from_peer_id(text)
    except DecodeError as exc:
        raise RPCError(INVALID_PARAMETER, f"Invalid PeerID {text[:80]!r}: {exc}") from None
    return text


def _peer_json(p2p: Any, conn: Any, now: float) -> dict[str, Any]:
    """One connection as getpeerinfo shows it: bitcoind's keys where they mean the same, then ours."""
    info = conn.info()
    latency = conn.latency
    record = p2p.peers.peer_info(conn.peer_id, now)
    host = conn.ip or ""
    return {
        "id": conn.peer_id,
        "addr": info["addr"],
        "network": "ipv6" if ":" in host else "ipv4",
        "inbound": conn.inbound,
        "connection_type": "inbound" if conn.inbound else "outbound-full-relay",
        "conntime": None if conn.ready_at is None else int(conn.ready_at),
        "pingtime": None if latency is None else round(latency, 6),
        "subver": info["agent"],
        "synced_blocks": conn.height,
        "validator": conn.is_validator,
        "state": conn.state,
        "multiaddr": conn.dialed,
        "reputation": record.score,
        "inflight": record.inflight,
        "messages_in": conn.messages_in,
        "messages_out": conn.messages_out,
        "pauses": conn.pauses,
    }


@TABLE.method("getpeerinfo", summary="Every connected peer: address, direction, latency, height, reputation.",
              result="array of {id (PeerID), addr, network, inbound, connection_type, conntime, pingtime, subver, "
                     "synced_blocks, validator, state, multiaddr, reputation, inflight, messages_in, messages_out, "
                     "pauses}",
              group="Network")
def getpeerinfo(ctx: RPCContext) -> list[dict[str, Any]]:
    p2p = _p2p(ctx)
    now = ctx.now()
    return [_peer_json(p2p, conn, now) for _, conn in sorted(p2p.connections.items())]


@TABLE.method("getconnectioncount", summary="Number of connected peers (both directions).",
              result="int", group="Network")
def getconnectioncount(ctx: RPCContext) -> int:
    return len(_p2p(ctx).connections)


@TABLE.method("getnetworkinfo", summary="This node's P2P identity, protocol, connection counts and limits.",
              result="{version, subversion, protocolversion, peer_id, localaddresses, networkactive, connections, "
                     "connections_in, connections_out, validators, known_peers, banned_peers, banned_ips, limits, "
                     "relayfee, warnings}",
              group="Network")
def getnetworkinfo(ctx: RPCContext) -> dict[str, Any]:
    p2p = _p2p(ctx)
    snap = p2p.peers.snapshot(ctx.now())
    mempool = ctx.node.mempool
    relay_fee = format_amount(ctx.node.config.min_relay_fee if mempool is None else mempool.fee_floor)
    return {
        "version": _version_number(__version__),
        "subversion": f"/timecoin:{__version__}/",
        "protocolversion": m.PROTOCOL_VERSION,
        "peer_id": p2p.peer_id,
        "localaddresses": [p2p.advertised_addr] if p2p.advertised_addr else [],   # what peers are told to dial
        "networkactive": bool(p2p.running),
        "connections": len(p2p.connections),
        "connections_in": snap["inbound"],
        "connections_out": snap["outbound"],
        "validators": snap["validators"],
        "known_peers": len(p2p.peerstore),
        "banned_peers": snap["banned_peers"],
        "banned_ips": snap["banned_ips"],
        "limits": snap["limits"],
        "relayfee": relay_fee,
        "warnings": "",
    }


def _version_number(text: str) -> int:
    """bitcoind's integer version (MAJOR * 10000 + MINOR * 100 + PATCH): 0.1.0 -> 100."""
    parts = [int(p) if p.isdecimal() else 0 for p in text.split(".")[:3]] + [0, 0, 0]
    return parts[0] * 10_000 + parts[1] * 100 + parts[2]


def _multiaddr(text: str) -> tuple[str, str]:
    """(canonical multiaddr, PeerID) of ``/ip4|ip6/H/tcp/P/p2p/ID``; -8 for anything else."""
    try:
        host, port, pid = discovery.parse_multiaddr(text)
    except ValueError as exc:
        raise RPCError(INVALID_PARAMETER, f"Invalid node address: {str(exc)[:200]}") from None
    if pid is None:
        raise RPCError(INVALID_PARAMETER, "Invalid node address: it must end in /p2p/<PeerID> (the peer's key)")
    return discovery.format_multiaddr(host, port, pid), pid


@TABLE.method("addnode", Param("node", "str", "the peer's multiaddr, /ip4/H/tcp/P/p2p/PeerID"),
              Param("command", "str", "add (keep dialing it), remove, or onetry (dial once now)",
                    choices=("add", "remove", "onetry")),
              summary="Add a peer to the ones this node keeps dialing, remove it, or dial it once.",
              result="null", group="Network",
              errors=("-8: not a multiaddr with a PeerID, or this node's own PeerID",
                      "-23: add of a node already added", "-24: remove of a node not added"))
def addnode(ctx: RPCContext, node: str, command: str) -> None:
    p2p = _p2p(ctx)
    addr, pid = _multiaddr(node)
    if pid == p2p.peer_id:
        raise RPCError(INVALID_PARAMETER, "Invalid node address: that is this node's own PeerID")
    store = p2p.peerstore
    entry = store.get(pid)
    added = entry is not None and entry.source is discovery.Source.BOOTSTRAP and addr in entry.addrs
    now = ctx.now()
    if command == "add":
        if added:
            raise RPCError(CLIENT_NODE_ALREADY_ADDED, "Error: Node already added")
        if not discovery.dialable(discovery.parse_multiaddr(addr)[0]):
            raise RPCError(INVALID_PARAMETER, f"Invalid node address: {addr} cannot be dialed")
        store.add(addr, discovery.Source.BOOTSTRAP, now)
        entry = store.get(pid)
        if entry is not None:                  # dial it at the next dial tick, whatever its backoff was
            entry.failures, entry.next_dial = 0, now
    elif command == "remove":
        if not added:
            raise RPCError(CLIENT_NODE_NOT_ADDED,
                           "Error: Node could not be removed. It has not been added previously.")
        store.forget(pid)
    else:
        if not discovery.dialable(discovery.parse_multiaddr(addr)[0]):
            raise RPCError(INVALID_PARAMETER, f"Invalid node address: {addr} cannot be dialed")
        p2p.dial(addr)
    return None


def _find_connection(p2p: Any, target: str) -> Any:
    """The connection ``target`` names: a PeerID, a multiaddr (its PeerID, or host and port), or ip:port."""
    if target in p2p.connections:
        return p2p.connections[target]
    host: str | None = None
    port: int | None = None
    if target.startswith("/"):
        try:
            host, port, pid = discovery.parse_multiaddr(target)
        except ValueError as exc:
            raise RPCError(INVALID_PARAMETER, f"Invalid node address: {str(exc)[:200]}") from None
        if pid is not None:
            return p2p.connections.get(pid)
    else:
        h, sep, p = target.rpartition(":")
        if sep and p.isdecimal() and len(p) <= 5:
            host, port = peers.normalize_ip(h.strip("[]")), int(p)
    if host is None:
        return None
    for conn in p2p.connections.values():
        if peers.normalize_ip(conn.ip) == peers.normalize_ip(host) and conn.port == port:
            return conn
    return None


@TABLE.method("disconnectnode", Param("node", "str", "PeerID, multiaddr or ip:port of a connected peer"),
              summary="Close the connection to one peer (it may reconnect: use setban to keep it out).",
              result="null", group="Network",
              errors=("-8: a malformed multiaddr", "-29: no connected peer matches"))
def disconnectnode(ctx: RPCContext, node: str) -> None:
    p2p = _p2p(ctx)
    conn = _find_connection(p2p, node)
    if conn is None:
        raise RPCError(CLIENT_NODE_NOT_CONNECTED, "Node not found in connected nodes")
    conn.close()
    return None


def _ban_json(ban: peers.Ban, now: float) -> dict[str, Any]:
    return {"address": ban.target, "kind": ban.kind, "ban_created": int(ban.since),
            "banned_until": int(ban.until), "ban_duration": int(ban.until - ban.since),
            "time_remaining": max(0, int(ban.until - now)), "reason": ban.reason}


@TABLE.method("listbanned", summary="Every ban in force (PeerIDs and IPs; an IPv6 ban covers its /64).",
              result="array of {address, kind (peer|ip), ban_created, banned_until, ban_duration, time_remaining, "
                     "reason}",
              group="Network")
def listbanned(ctx: RPCContext) -> list[dict[str, Any]]:
    p2p = _p2p(ctx)
    now = ctx.now()
    return [_ban_json(ban, now) for ban in p2p.peers.list_bans(now)]


def _ban_target(target: str) -> tuple[str, str]:
    """(kind, key) of a ban target; -30 for anything that is neither an IP (IPv6: /64) nor a PeerID."""
    key = peers.ban_ip_key(target)
    if key is not None:
        return "ip", key
    try:
        crypto.pubkey_from_peer_id(target)
    except DecodeError:
        raise RPCError(CLIENT_INVALID_IP_OR_SUBNET,
                       f"Error: Invalid IP/Subnet or PeerID: {target[:100]!r}") from None
    return "peer", target


@TABLE.method("setban", Param("target", "str", "a PeerID, an IP address, or an IPv6 /64"),
              Param("command", "str", "add or remove", choices=("add", "remove")),
              Param("bantime", "int", "seconds (0: the node's ban_duration), or a Unix time with absolute",
                    required=False, default=0, minimum=0, maximum=MAX_BANTIME),
              Param("absolute", "bool", "bantime is a Unix time", required=False, default=False),
              summary="Ban a peer or IP (its connections are closed and it is refused until the ban ends), "
                      "or lift a ban.",
              result="null", group="Network",
              errors=("-30: not an IP/PeerID, a loopback IP, or remove of a target not banned",
                      "-23: add of a target already banned",
                      "-8: a ban that ends in the past or more than 10 years from now, or this node's own PeerID"))
def setban(ctx: RPCContext, target: str, command: str, bantime: int, absolute: bool) -> None:
    p2p = _p2p(ctx)
    pm = p2p.peers
    kind, key = _ban_target(target)
    now = ctx.now()
    if command == "remove":
        if not pm.unban(key):
            raise RPCError(CLIENT_INVALID_IP_OR_SUBNET,
                           "Error: Unban failed. Requested address/subnet was not previously manually banned.")
        return None
    if kind == "peer" and key == p2p.peer_id:
        raise RPCError(INVALID_PARAMETER, "Cannot ban this node's own PeerID")
    if kind == "ip" and peers.is_loopback(key):
        raise RPCError(CLIENT_INVALID_IP_OR_SUBNET,
                       f"Error: {key} is a loopback address: loopback is never banned by IP (ban the PeerID)")
    if any(b.target == key and b.kind == kind for b in pm.list_bans(now)):
        raise RPCError(CLIENT_NODE_ALREADY_ADDED, "Error: IP/Subnet already banned")
    relative = float(bantime) if bantime else float(ctx.node.config.ban_duration)
    seconds = float(bantime) - now if absolute else relative
    if not (math.isfinite(seconds) and 0 < seconds <= peers.MAX_BAN_SECONDS):
        raise RPCError(INVALID_PARAMETER, f"Error: the ban must end in the future and within "
                                          f"{int(peers.MAX_BAN_SECONDS)} s of now (got {seconds:.0f} s)")
    try:
        pm.set_ban(key, seconds, now, reason="operator (setban)")
    except ValueError as exc:
        raise RPCError(CLIENT_INVALID_IP_OR_SUBNET, f"Error: {exc}") from None
    for pid in pm.connections_of(key):
        conn = p2p.connections.get(pid)
        if conn is not None:
            conn.reject(Reason.BANNED, "banned by the operator")
            conn.close()
    return None


@TABLE.method("clearbanned", summary="Lift every ban (banned peers' scores start again on probation).",
              result="null", group="Network")
def clearbanned(ctx: RPCContext) -> None:
    _p2p(ctx).peers.clear_bans()
    return None


@TABLE.method("getreputation", Param("peer", "str", "a PeerID (default: all connected peers)", required=False),
              summary="Reputation of one peer, or of all connected peers with the limits and the delta table.",
              result="with peer: {peer_id, score, banned_until, connected, inbound, validator, ip, inflight}; "
                     "without: {inbound, outbound, validators, limits, banned_peers, banned_ips, known_scores, "
                     "peers: [...], deltas: {event: delta}}",
              group="Network",
              errors=("-8: not a PeerID", "-5: a PeerID this node knows nothing about"))
def getreputation(ctx: RPCContext, peer: str | None) -> dict[str, Any]:
    p2p = _p2p(ctx)
    now = ctx.now()
    if peer is None:
        snap = p2p.peers.snapshot(now)
        snap["deltas"] = {e.value: d for e, d in peers.DELTAS.items()}
        return snap
    pid = _peer_id(peer)
    info = p2p.peers.peer_info(pid, now)
    if not info.connected and info.score == 0 and info.banned_until is None and pid not in p2p.peerstore:
        raise RPCError(INVALID_ADDRESS_OR_KEY, f"Peer {pid} is not known to this node")
    return info.to_json()

