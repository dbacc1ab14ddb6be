"""An attacking peer for the network-namespace tests: ``python -m tests.netns_attacker`` inside a namespace.

Every connection uses a fresh libp2p TLS identity (a ban of an earlier key never explains a refusal: only an
IP ban or an address limit does) and a chosen source address of the namespace. It prints one JSON line:
``{"outcomes": {source: [outcome, ...]}}``, each outcome one of

    admitted       the target said hello and the connection was still open ``--hold`` s after ours
    dropped        the target said hello, then closed the connection (after garbage: the expected end)
    reject:<n>     the target sent reject (Reason n) instead of hello
    refused        closed before the TLS handshake ended (pre-TLS refusal: banned address, full address)
    tcp-failed     no TCP connection at all

Modes: ``probe`` (connect, hello, hold), ``garbage`` (connect, hello, then a frame that is no message: a
provable offence, MALFORMED_FRAME), ``hold`` (``--count`` connections one after another from the first
source, all held open until the end, then counted). Sources run concurrently in groups of ``--parallel``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, cast

from twisted.internet import defer, endpoints, task
from twisted.internet import reactor as _reactor

from timecoin import crypto
from timecoin.p2p.identity import HostIdentity
from timecoin.sim.loopnet import RawPeer
from timecoin.wire import messages as m

reactor: Any = cast(Any, _reactor)
HELLO_FIELDS = ("protocol_version", "chain_id", "genesis_hash", "best_height", "best_hash", "finalized_height",
                "finalized_hash", "protocols")
GARBAGE = b"\x00\x00\x00\x06" + b"\xff" * 6                  # a well-framed 6 bytes that decode to no message


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def wait(cond: Any, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05) + 1):              # bounded
        if cond():
            return True
        await sleep(0.05)
    return bool(cond())


async def attempt(args: argparse.Namespace, source: str, garbage: bool, held: list[RawPeer]) -> str:
    key = crypto.PrivateKey.generate()
    tcp = endpoints.TCP4ClientEndpoint(reactor, args.host, args.port, timeout=5, bindAddress=(source, 0))
    tls = endpoints.wrapClientTLS(cast(Any, HostIdentity(key).client_creator(args.peer_id)), cast(Any, tcp))
    peer = RawPeer()
    try:
        await endpoints.connectProtocol(tls, peer)
    except Exception:
        return "tcp-failed"
    try:
        await peer.handshake
    except Exception:
        return "refused"
    if not await wait(lambda: peer.messages or peer.lost.called, 5.0) or not peer.messages:
        return "refused"
    msg_type, body = peer.messages[0]
    if msg_type == m.MsgType.REJECT:
        return f"reject:{body.reason}"
    hello = {f: getattr(body, f) for f in HELLO_FIELDS} | {"listen_addrs": [], "agent": "netns-attacker"}
    hello["protocols"] = list(hello["protocols"])
    peer.send(m.MsgType.HELLO, hello)
    if garbage:
        await sleep(0.3)                                   # the target has taken our hello: we are "ready"
        if not peer.lost.called:
            cast(Any, peer.transport).write(GARBAGE)
        await wait(lambda: peer.lost.called, 5.0)
    else:
        await sleep(args.hold)
    if peer.lost.called:
        return "dropped"
    held.append(peer)
    return "admitted"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    sources = args.sources.split(",")
    outcomes: dict[str, list[str]] = {s: [] for s in sources}
    held: list[RawPeer] = []
    if args.mode == "hold":
        for _ in range(args.count):
            outcomes[sources[0]].append(await attempt(args, sources[0], False, held))
        still = sum(1 for p in held if not p.lost.called)
        for peer in held:
            cast(Any, peer.transport).loseConnection()
        await sleep(0.2)
        return {"outcomes": outcomes, "held_open": still}
    for start in range(0, len(sources), args.parallel):
        group = sources[start:start + args.parallel]
        results = await defer.gatherResults([defer.ensureDeferred(attempt(args, s, args.mode == "garbage", held))
                                             for s in group])
        for source, outcome in zip(group, results, strict=True):
            outcomes[source].append(outcome)
    for peer in held:
        cast(Any, peer.transport).loseConnection()
    await sleep(0.2)
    return {"outcomes": outcomes}


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="netns_attacker")
    p.add_argument("--target", required=True, help="IP:PORT of the node attacked")
    p.add_argument("--peer-id", required=True, help="its PeerID (TLS pins it)")
    p.add_argument("--sources", required=True, help="comma-separated source addresses of this namespace")
    p.add_argument("--mode", choices=("probe", "garbage", "hold"), required=True)
    p.add_argument("--count", type=int, default=1, help="hold: connections from the first source")
    p.add_argument("--hold", type=float, default=1.0, help="seconds a connection is held after hello")
    p.add_argument("--parallel", type=int, default=5, help="sources attacking at once")
    args = p.parse_args(argv)
    args.host, _, port = args.target.rpartition(":")
    args.port = int(port)
    result: dict[str, Any] = {}

    async def go() -> None:
        result.update(await main(args))

    def done(_: Any) -> None:
        reactor.stop()

    d = defer.ensureDeferred(go())
    d.addErrback(lambda f: result.update(error=f.getTraceback()))
    d.addBoth(done)
    reactor.run()
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
