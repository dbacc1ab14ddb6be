"""A Byzantine peer process for soak runs: ``python -m timecoin.chaos.byzpeer --dir D --key K``.

It holds its own key (no stake) and keeps one connection to every node of the testnet in ``D``, over real
TLS with a correct hello, and misbehaves on it continuously:

* every ``--period`` seconds: a vote signed by its key for a height 1,000 and more ahead (a far-height vote
  by a non-validator: race-prone, charged at most once a minute), the last vote, proposal and tx the node
  sent it played back (replays: seen-cache hits, free), and every other period a request (``get_blocks``
  for heights nobody has, or a ping) -- 60 a minute at the default period, below ``rate_limit``;
* after ``--provable-after`` seconds: a frame that holds no message (provable: a malformed frame), which
  gets it banned; from then on it redials each node every ``--redial`` seconds and counts the refusals.

Everything it does is one line on stdout (at most one per connection event) and a JSON status file
(``--status``) rewritten every few seconds, so a soak run can tell how much misbehaviour was delivered.
It answers pings (a node drops a peer that does not), so each connection lasts until the ban. It is not
a validator, so the honest network needs nothing from it; it stops on SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import asdict, dataclass
from typing import Any, cast

from twisted.internet import endpoints, task
from twisted.internet import reactor as _reactor

from timecoin import crypto
from timecoin.errors import TimecoinError
from timecoin.ledger.block import Vote, VoteType
from timecoin.p2p.identity import HostIdentity
from timecoin.sim.loopnet import RawPeer
from timecoin.testnet import NodeInfo, read_layout
from timecoin.wire import messages as m

reactor: Any = cast(Any, _reactor)
JUNK_FRAME = b"\x00\x00\x00\x06" + b"\xff" * 6        # a well-framed 6 bytes that decode as no message
FAR = 1_000                                          # heights ahead of the node's hello for the far votes


@dataclass
class Counts:
    """What was delivered to one node (written to the status file)."""

    connects: int = 0
    ready: int = 0
    far_votes: int = 0
    replays: int = 0
    requests: int = 0
    junk_frames: int = 0
    refused: int = 0          # connections after the junk frame that ended without a hello from the node
    last: str = ""


class ByzantinePeer:
    """One connection per node, redialed when it drops (see the module doc)."""

    def __init__(self, nodes: list[NodeInfo], chain_id: str, genesis_hash: bytes, key: crypto.PrivateKey,
                 period: float, provable_after: float, redial: float, status: str | None) -> None:
        self.nodes = nodes
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.key = key
        self.period = period
        self.provable_after = provable_after
        self.redial = redial
        self.status = status
        self.rng = random.Random(int.from_bytes(key.address[:8], "big"))
        self.counts = {n.name: Counts() for n in nodes}
        self.peers: dict[str, RawPeer] = {}
        self.heights: dict[str, int] = {}
        self.last: dict[str, dict[int, Any]] = {n.name: {} for n in nodes}
        self.t0 = reactor.seconds()
        self.loops: list[task.LoopingCall] = []

    @property
    def provable(self) -> bool:
        return reactor.seconds() - self.t0 >= self.provable_after

    def say(self, text: str) -> None:
        sys.stdout.write(f"byzpeer [{reactor.seconds() - self.t0:7.1f}s] {text}\n")
        sys.stdout.flush()

    def start(self) -> None:
        self.say(f"peer id {self.key.peer_id}; {len(self.nodes)} target(s); provable offence after "
                 f"{self.provable_after:g} s")
        for node in self.nodes:
            self.dial(node)
        for fn, every in ((self.misbehave, self.period), (self.write_status, 2.0)):
            loop = task.LoopingCall(fn)
            loop.start(every, now=False)
            self.loops.append(loop)

    # -- connections ------------------------------------------------------------------------------
    def dial(self, node: NodeInfo) -> None:
        counts = self.counts[node.name]
        counts.connects += 1
        tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", node.p2p_port, timeout=5)
        endpoint = endpoints.wrapClientTLS(cast(Any, HostIdentity(self.key).client_creator(node.peer_id)),
                                           cast(Any, tcp))
        peer = RawPeer()
        peer.on_message = lambda t, rid, body: self.received(node, peer, t, rid, body)
        d = endpoints.connectProtocol(endpoint, peer)
        d.addCallback(lambda _: peer.handshake)
        d.addCallback(lambda _: self.connected(node, peer))
        d.addErrback(lambda f: self.dropped(node, peer, f.getErrorMessage()))
        peer.lost.addCallback(lambda _: self.dropped(node, peer, "connection lost"))

    def connected(self, node: NodeInfo, peer: RawPeer) -> None:
        peer.send(m.MsgType.HELLO, {"protocol_version": m.PROTOCOL_VERSION, "chain_id": self.chain_id,
                                    "genesis_hash": self.genesis_hash, "best_height": 0,
                                    "best_hash": self.genesis_hash, "finalized_height": 0,
                                    "finalized_hash": self.genesis_hash, "listen_addrs": [],
                                    "agent": "timecoin-byzpeer", "protocols": []})

    def received(self, node: NodeInfo, peer: RawPeer, msg_type: m.MsgType, rid: int, body: Any) -> None:
        counts = self.counts[node.name]
        if msg_type == m.MsgType.PING:              # answered, so the node keeps the connection (and the abuse)
            peer.send(m.MsgType.PONG, {"nonce": body.nonce, "payload": body.payload}, rid)
        elif msg_type == m.MsgType.HELLO:
            counts.ready += 1
            self.peers[node.name] = peer
            self.heights[node.name] = int(body.best_height)
            if counts.ready == 1 or counts.junk_frames:
                self.say(f"{node.name}: ready (hello at height {body.best_height}, connection {counts.connects})")
        elif msg_type in (m.MsgType.VOTE, m.MsgType.PROPOSAL, m.MsgType.TX):
            self.last[node.name][int(msg_type)] = body
        elif msg_type == m.MsgType.REJECT:
            counts.last = f"reject {body.reason}"
        peer.messages.clear()                       # the raw peer keeps a log; a long run must not

    def dropped(self, node: NodeInfo, peer: RawPeer, why: str) -> None:
        if self.peers.get(node.name) is peer:
            del self.peers[node.name]
        counts = self.counts[node.name]
        if getattr(peer, "_byz_dropped", False):
            return
        peer._byz_dropped = True                    # type: ignore[attr-defined]  # errback and lost both fire
        if counts.junk_frames:
            counts.refused += 1
            if counts.refused == 1:
                self.say(f"{node.name}: refused after the junk frame ({counts.last or why}); redialing every "
                         f"{self.redial:g} s")
        reactor.callLater(self.redial if counts.junk_frames else 1.0, self.dial, node)

    # -- misbehaviour ------------------------------------------------------------------------------
    def misbehave(self) -> None:
        provable = self.provable
        for name, peer in list(self.peers.items()):
            counts = self.counts[name]
            if provable and not counts.junk_frames:
                cast(Any, peer.transport).write(JUNK_FRAME)
                counts.junk_frames += 1
                self.say(f"{name}: sent a junk frame (a provable offence)")
                continue
            height = self.heights.get(name, 0) + FAR + self.rng.randrange(1000)
            vote = Vote(VoteType.PREVOTE, height, self.rng.randrange(4), self.rng.randbytes(32), self.key.address,
                        b"\x00" * crypto.SIGNATURE_SIZE).signed(self.key, self.chain_id)
            peer.send(m.MsgType.VOTE, vote.to_wire())
            counts.far_votes += 1
            for msg_type, body in list(self.last[name].items()):
                peer.send(m.MsgType(msg_type), body)
                counts.replays += 1
            # A request every other cycle, alternating get_blocks (for heights nobody has) and ping: at the
            # default period 60 a minute, below ``rate_limit`` (100/min): wasted work, never a provable flood.
            if counts.far_votes % 4 == 1:
                peer.send(m.MsgType.GET_BLOCKS, {"start": height, "count": 16},
                          request_id=self.rng.randrange(1, 2**31))
                counts.requests += 1
            elif counts.far_votes % 4 == 3:
                peer.send(m.MsgType.PING, {"nonce": self.rng.randrange(2**63), "payload": b""})
                counts.requests += 1

    def write_status(self) -> None:
        if not self.status:
            return
        tmp = self.status + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"peer_id": self.key.peer_id, "elapsed": round(reactor.seconds() - self.t0, 1),
                       "nodes": {k: asdict(v) for k, v in self.counts.items()}}, f)
        os.replace(tmp, self.status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m timecoin.chaos.byzpeer", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="the testnet folder (timecoin testnet --dir)")
    ap.add_argument("--key", required=True, help="this peer's key file (PEM); created if absent")
    ap.add_argument("--nodes", default="", help="comma-separated node indexes to attack (default: all)")
    ap.add_argument("--period", type=float, default=0.5, help="seconds between rounds of misbehaviour")
    ap.add_argument("--provable-after", type=float, default=60.0, help="seconds before the junk frame")
    ap.add_argument("--redial", type=float, default=5.0, help="seconds between dials once refused")
    ap.add_argument("--status", default=None, help="JSON status file, rewritten every 2 s")
    args = ap.parse_args(argv)
    try:
        layout = read_layout(args.dir)
        if os.path.exists(args.key):
            key = crypto.PrivateKey.load(args.key)
        else:
            key = crypto.PrivateKey.generate()
            key.save(args.key)
    except (TimecoinError, OSError) as exc:
        sys.stderr.write(f"byzpeer: {exc}\n")
        return 2
    wanted = {int(i) for i in args.nodes.split(",") if i.strip()} if args.nodes else None
    nodes = [n for n in layout.nodes if wanted is None or n.index in wanted]
    peer = ByzantinePeer(nodes, layout.chain_id, bytes.fromhex(layout.genesis_hash), key, args.period,
                         args.provable_after, args.redial, args.status)
    reactor.callWhenRunning(peer.start)
    reactor.run()
    peer.write_status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
