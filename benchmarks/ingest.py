"""The ``ingest`` part (issue 15 target 3): fresh, valid consensus votes ingested on one connection, per second.

A real node (the production service tree, ``timecoin.sim.loopnet.Net``, real LMDB and WAL) is an observer of
a genesis of ``V`` validators whose keys this part holds, waiting at height 1 (it never proposes or votes,
so its own signing is not counted). One peer attached with :mod:`timecoin.sim.feed` hands it, as TLS would
after decryption, the frames of distinct nil prevotes and precommits of every validator, round after round
(the f+1 round skip moves the engine along). Each goes the real path: ``FrameDecoder`` and its consensus
peek, the per-peer queue, the envelope codec, the seen-cache, the engine's checks and signature verify, the
vote set's count and the WAL record. Every vote must be accepted by the engine. Figure: votes/s of the
fastest batch of 200 (equal work each; a shared machine's noise only adds time), next to raw
libsecp256k1 verifies/s on one core (``baselines.secp_verifies_per_s``); target ratio >= 0.7.
"""
from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.baselines import secp_verifies_per_s
from benchmarks.suite import Figure, ratio_figure
from timecoin import crypto
from timecoin.ledger.block import NIL_HASH, Vote, VoteType
from timecoin.sim import chaingen
from timecoin.sim.feed import attach_peer, frame
from timecoin.sim.loopnet import Net, sleep, wait_for
from timecoin.wire import messages as m

MIN_RATIO = 0.7
BATCH = 200                # votes per timed batch
MAX_ROUNDS = 50            # a real height never sees more (and each new round costs the engine O(round) work)
HOUR = "3600"


def vote_frames(spec: chaingen.ChainSpec, height: int, count: int) -> list[bytes]:
    """``count`` frames of signed nil votes: per round, every validator's prevote, then every precommit."""
    chain_id = spec.genesis.chain_id
    out: list[bytes] = []
    round_ = 0
    while len(out) < count:
        for vtype in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            for key in spec.validators:
                vote = Vote(vtype, height, round_, NIL_HASH, key.address).signed(key, chain_id)
                out.append(frame(m.MsgType.VOTE, vote.to_wire()))
        round_ += 1
    return out[:count]


async def measure(base: Path, validators: int, count: int) -> tuple[float, int]:
    """(seconds per vote, votes accepted) for ``count`` fresh votes of a ``validators``-strong set fed to one
    node in batches of BATCH; the time is the fastest batch's (equal work each; noise only adds time)."""
    spec = chaingen.make_genesis(validators=validators, chain_id=f"timecoin-bench-ingest-{validators}")
    observer = crypto.PrivateKey(secrets.token_bytes(32))
    net = Net(base / f"v{validators}", 1, genesis=spec.genesis, keys=[observer], block_interval=HOUR,
              timeout_propose=HOUR, timeout_prevote=HOUR, timeout_precommit=HOUR, gossip_interval=HOUR,
              ping_interval=HOUR)
    await net.start(connect=False)
    try:
        node = net.nodes[0]
        await wait_for(lambda: node.consensus.engine is not None and node.consensus.engine.height == 1,
                       10.0, "node at height 1")
        await sleep(0.2)                               # its own start-up work is done before we measure
        frames = vote_frames(spec, 1, count)
        peer = attach_peer(node, crypto.PrivateKey(secrets.token_bytes(32)))
        before = node.p2p.accepted[m.MsgType.VOTE]
        best = float("inf")
        for start in range(0, len(frames), BATCH):
            data = b"".join(frames[start:start + BATCH])
            t0 = time.perf_counter()
            peer.feed(data)
            best = min(best, (time.perf_counter() - t0) / len(frames[start:start + BATCH]))
        accepted = node.p2p.accepted[m.MsgType.VOTE] - before
        peer.disconnect()
        return best, accepted
    finally:
        await net.stop()


async def run(quick: bool) -> list[Figure]:
    count = 2000 if quick else 20_000
    base = Path(tempfile.mkdtemp(prefix="timecoin-bench-ingest-"))
    figures = []
    try:
        baseline = secp_verifies_per_s(0.3 if quick else 1.0)
        for validators in (4, 100):
            votes = min(count, 2 * validators * MAX_ROUNDS)
            per_vote, accepted = await measure(base, validators, votes)
            if accepted != votes:
                raise AssertionError(f"{validators} validators: the engine accepted {accepted} of {votes} votes")
            figures.append(ratio_figure(f"ingest.votes_{validators}_validators", round(1 / per_vote, 1),
                                        "votes/s (frame, decode, check, verify, count)", round(baseline, 1),
                                        "raw libsecp256k1 verifies/s", min_ratio=MIN_RATIO))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return figures
