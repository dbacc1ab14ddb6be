"""The load generator behind ``timecoin bench load`` and the ``load`` benchmark part (issue 15 target 2).

What it does, in order (every step bounded in time):

1. **Senders.** ``senders`` fresh keys are funded from keys funded at genesis (a testnet's validators, or
   the node key of ``--config``) in a tree: each funded key sends up to ``FAN_OUT`` transfers (below the
   mempool's 64-tx chain per sender) in one round, the new accounts give in the next round, until every
   sender holds enough for its share of the run. A round ends when every giver's committed nonce shows
   its transfers final (``getaccount``).
2. **Pre-signing.** ``rate x duration`` 1-unit transfers, sender ``k % senders`` with consecutive
   nonces, are signed and encoded into JSON-RPC batch bodies *before* the clock starts, so the run
   costs the generator only HTTP. The senders are split into *lanes*, ``connections`` per node: sender
   ``s`` always goes through lane ``s % lanes`` to node ``lane % nodes``, so its nonces arrive at one
   node in order on one connection (the other nodes get them by gossip), spread over every node.
3. **Submission.** One thread per lane, one keep-alive connection each, sends batch ``j`` at
   ``t0 + j x batch x lanes / rate`` (open loop: a late batch goes at once, and the lag is reported;
   several connections per node keep a slow reply from holding the others back). A lane that falls
   ``late`` (5 s) behind its schedule stops: an overloaded network then ends the run in bounded time,
   and the txs never sent are reported as ``unsent``.
   A reply with an error counts the tx rejected, by its reason.
4. **Finality.** A tracker thread polls node 0's ``getblockcount`` every ``POLL_S`` and reads each new
   block's txids (``getblock`` verbosity 1); a tx's latency is from just before its batch was sent to
   when its block was seen final. It stops when every accepted tx is final or ``drain`` seconds after
   the last batch.

Figures: submitted, accepted, rejected (by reason), finalized; finalized tx/s (finalized txs over the
time from the first submission to the last finality); latency p50/p90/p99/max; blocks, largest block.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from timecoin import crypto
from timecoin.bench.conn import Conn, RPCFailure
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.rpc.clicall import Endpoint
from timecoin.rpc.render import parse_amount

FAN_OUT = 60                  # transfers one giver sends per funding round (the mempool holds 64 per sender)
MAX_ROUNDS = 4                # funding rounds: 4 funders x 60^4 senders is far more than any run needs
ROUND_TIMEOUT = 60.0
POLL_S = 0.02                 # tracker: getblockcount period
MAX_SENDERS = 20_000
MAX_TXS = 2_000_000           # pre-signed txs: bounds memory (about 300 bytes each, encoded and as hex)
AMOUNT = 1                    # units per load transfer


class LoadError(Exception):
    """A run that cannot be set up (no funds, a node refusing the funding txs, bad arguments)."""


@dataclass
class LoadSettings:
    rate: float                           # txs per second, over all nodes
    duration: float                       # seconds of submission
    senders: int = 0                      # 0: rate / 4, within 16..MAX_SENDERS
    batch: int = 0                        # txs per JSON-RPC batch; 0: about 10 batches/s per connection
    drain: float = 10.0                   # seconds to wait for finality after the last batch
    late: float = 5.0                     # a lane stops sending once this many seconds behind its schedule
    fee: int = 0                          # units per tx; 0: the node's fee floor (getmempoolinfo)
    connections: int = 2                  # keep-alive connections per node (each its own senders)

    def check(self) -> None:
        if not self.rate > 0:
            raise LoadError(f"--rate must be positive, not {self.rate:g}")
        if not self.duration > 0:
            raise LoadError(f"--duration must be positive, not {self.duration:g}")
        if self.rate * self.duration > MAX_TXS:
            raise LoadError(f"--rate x --duration is {self.rate * self.duration:,.0f} txs; at most {MAX_TXS:,}")
        if not 0 <= self.senders <= MAX_SENDERS:
            raise LoadError(f"--senders must be between 1 and {MAX_SENDERS}, not {self.senders}")
        if self.batch < 0 or self.batch > 1000:
            raise LoadError(f"--batch must be between 1 and 1000 (rpc_max_batch), not {self.batch}")
        if not 1 <= self.connections <= 64:
            raise LoadError(f"--connections must be between 1 and 64, not {self.connections}")
        if self.drain < 0:
            raise LoadError(f"--drain must not be negative, not {self.drain:g}")

    def sender_count(self) -> int:
        return self.senders or max(16, min(MAX_SENDERS, int(self.rate // 4)))

    def batch_size(self, nodes: int) -> int:
        """Default: about 10 batches a second on each connection (a profile of a node fed one tx per HTTP
        request showed HTTP and Deferred overhead near the cost of admitting the tx itself)."""
        return self.batch or max(1, min(1000, int(self.rate / (nodes * self.connections) / 10)))


@dataclass
class LoadReport:
    rate: float
    duration: float
    nodes: int
    senders: int
    batch: int
    connections: int = 1
    submitted: int = 0
    unsent: int = 0                       # planned txs never sent: the nodes' replies fell ``late`` s behind
    accepted: int = 0
    rejected: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    finalized: int = 0
    finalized_tx_per_s: float = 0.0
    submit_tx_per_s: float = 0.0          # what the generator achieved (should equal --rate)
    max_lag_s: float = 0.0                # the latest batch's delay behind its schedule
    latency_ms: dict[str, float] = field(default_factory=dict)
    blocks: int = 0
    largest_block_txs: int = 0
    setup_s: float = 0.0                  # funding and signing, before the clock starts

    def lines(self) -> list[str]:
        lat = self.latency_ms
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.reject_reasons.items())) or "none"
        return [
            f"load: {self.rate:g} tx/s for {self.duration:g} s to {self.nodes} node(s), {self.senders} senders, "
            f"batches of {self.batch} on {self.connections} connection(s) per node (setup {self.setup_s:.1f} s)",
            f"submitted {self.submitted} (unsent {self.unsent}), accepted {self.accepted}, "
            f"rejected {self.rejected} ({reasons}), finalized {self.finalized}",
            f"finalized {self.finalized_tx_per_s:,.1f} tx/s; submitted {self.submit_tx_per_s:,.1f} tx/s "
            f"(max lag {self.max_lag_s * 1000:.0f} ms)",
            "latency submit->final ms: " + " ".join(f"{k} {v:,.0f}" for k, v in lat.items()),
            f"blocks {self.blocks}, largest {self.largest_block_txs} txs",
        ]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1), nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))])


# -- funding ---------------------------------------------------------------------------------------
def _chain_info(conn: Conn) -> tuple[str, str, int]:
    info = conn.call("getblockchaininfo")
    floor = parse_amount(str(conn.call("getmempoolinfo")["mempoolminfee"]))
    return str(info["chain_id"]), str(info["chain"]), floor


def _submit_all(conn: Conn, txs: Sequence[Transaction], what: str) -> None:
    for lo in range(0, len(txs), 500):
        chunk = txs[lo:lo + 500]
        for tx, reply in zip(chunk, conn.batch([("sendrawtransaction", [t.encoded.hex()]) for t in chunk]),
                             strict=True):
            if reply.get("error") is not None:
                raise LoadError(f"{what}: the node refused tx {tx.id.hex()[:16]}: {reply['error'].get('message')}")


def _nonces(conn: Conn, keys: Sequence[crypto.PrivateKey], network: str) -> list[int]:
    replies = conn.batch([("getaccount", [crypto.encode_address(k.address, network)]) for k in keys])
    out = []
    for key, reply in zip(keys, replies, strict=True):
        if reply.get("error") is not None:
            raise LoadError(f"getaccount {crypto.encode_address(key.address, network)}: {reply['error']}")
        out.append(int(reply["result"]["nonce"]))
    return out


def fund(conn: Conn, funders: Sequence[crypto.PrivateKey], count: int, keep: int, fee: int, chain_id: str,
         network: str) -> tuple[list[crypto.PrivateKey], list[int]]:
    """``count`` new funded keys, each left with at least ``keep`` units; (keys, their next nonces)."""
    if not funders:
        raise LoadError("no funded key to pay the senders from")
    rounds, capacity = 0, len(funders)
    while capacity < count + len(funders):
        rounds += 1
        capacity *= FAN_OUT + 1
        if rounds > MAX_ROUNDS:
            raise LoadError(f"{count} senders need more than {MAX_ROUNDS} funding rounds")
    # What an account funded in round r must get: its own share, plus FAN_OUT children of round r+1.
    amounts = [0] * (rounds + 2)
    amounts[rounds] = keep
    for r in range(rounds - 1, 0, -1):
        amounts[r] = keep + FAN_OUT * (amounts[r + 1] + fee)
    givers, nonces = list(funders), _nonces(conn, funders, network)
    made: list[crypto.PrivateKey] = []
    made_nonces: dict[bytes, int] = {}
    for r in range(1, rounds + 1):
        txs: list[Transaction] = []
        children: list[crypto.PrivateKey] = []
        expect: list[int] = []
        for i, giver in enumerate(givers):
            sent = 0
            while sent < FAN_OUT and len(made) + len(children) < count:
                child = crypto.PrivateKey.generate()
                txs.append(Transaction.create(giver, TxKind.TRANSFER, chain_id, nonces[i] + sent, fee, amounts[r],
                                              child.address))
                children.append(child)
                sent += 1
            expect.append(nonces[i] + sent)
        if not txs:
            break
        _submit_all(conn, txs, f"funding round {r}")
        deadline = time.monotonic() + ROUND_TIMEOUT
        while any(a < b for a, b in zip(_nonces(conn, givers, network), expect, strict=True)):
            if time.monotonic() > deadline:
                raise LoadError(f"funding round {r}: not final within {ROUND_TIMEOUT:g} s")
            time.sleep(0.05)
        for giver, n in zip(givers, expect, strict=True):
            if giver.address in made_nonces:
                made_nonces[giver.address] = n
        made.extend(children)
        made_nonces.update({c.address: 0 for c in children})
        givers, nonces = children, [0] * len(children)
    return made, [made_nonces[k.address] for k in made]


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class _Batch:
    body: bytes
    txids: list[str]
    sent_at: float = 0.0


def presign(keys: Sequence[crypto.PrivateKey], nonces: Sequence[int], total: int, fee: int, chain_id: str,
            lanes: int, batch: int) -> list[list[_Batch]]:
    """``total`` transfers, sender ``k % len(keys)``, in batches per lane (sender s in lane s % lanes)."""
    per_node: list[list[tuple[str, str]]] = [[] for _ in range(lanes)]
    n = len(keys)
    for k in range(total):
        s = k % n
        tx = Transaction.create(keys[s], TxKind.TRANSFER, chain_id, nonces[s] + k // n, fee, AMOUNT,
                                keys[(s + 1) % n].address)
        per_node[s % lanes].append((tx.id.hex(), tx.encoded.hex()))
    out: list[list[_Batch]] = []
    for items in per_node:
        batches = []
        for lo in range(0, len(items), batch):
            chunk = items[lo:lo + batch]
            body = "[" + ",".join(f'{{"jsonrpc":"1.0","id":{i},"method":"sendrawtransaction","params":["{raw}"]}}'
                                  for i, (_, raw) in enumerate(chunk)) + "]"
            batches.append(_Batch(body.encode(), [txid for txid, _ in chunk]))
        out.append(batches)
    return out


class _Tracker(threading.Thread):
    """Polls node 0 for new final blocks and records when each txid was first seen final."""

    def __init__(self, endpoint: Endpoint, start_height: int) -> None:
        super().__init__(daemon=True, name="load-tracker")
        self.conn = Conn(endpoint)
        self.height = start_height
        self.seen: dict[str, float] = {}
        self.block_sizes: list[int] = []
        self.stop_at = float("inf")            # monotonic deadline, set by the runner
        self.want = -1                         # stop early once this many tracked txids are final
        self.tracked: set[str] = set()
        self.error: str | None = None

    def run(self) -> None:
        try:
            while time.monotonic() < self.stop_at:
                if self.want >= 0 and len(self.seen) >= self.want:
                    return
                tip = int(self.conn.call("getblockcount"))
                if tip > self.height:
                    self._read(self.height + 1, tip)
                else:
                    time.sleep(POLL_S)
        except RPCFailure as exc:
            self.error = str(exc)
        finally:
            self.conn.close()

    def _read(self, first: int, last: int) -> None:
        last = min(last, first + 199)
        hashes = [r["result"] for r in self.conn.batch([("getblockhash", [h]) for h in range(first, last + 1)])]
        blocks = self.conn.batch([("getblock", [h, 1]) for h in hashes])
        now = time.monotonic()
        for reply in blocks:
            txids = reply["result"]["tx"]
            self.block_sizes.append(len(txids))
            for txid in txids:
                if txid in self.tracked and txid not in self.seen:
                    self.seen[txid] = now
        self.height = last


def _submit(endpoint: Endpoint, batches: list[_Batch], t0: float, interval: float, out: dict[str, Any],
            late: float = float("inf")) -> None:
    """Send ``batches`` on one connection, batch j at t0 + j x interval, until one is ``late`` seconds
    behind (the rest stay unsent: their ``sent_at`` is 0); collect rejections in ``out``."""
    conn = Conn(endpoint)
    reasons: Counter[str] = Counter()
    rejected: set[str] = set()
    lag = 0.0
    try:
        for j, b in enumerate(batches):
            due = t0 + j * interval
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
                now = time.monotonic()
            if now - due > late:
                break
            lag = max(lag, now - due)
            b.sent_at = now
            for txid, reply in zip(b.txids, conn.batch_raw(b.body, len(b.txids)), strict=True):
                err = reply.get("error")
                if err is not None:
                    rejected.add(txid)
                    reasons[str(err.get("message", "")).split(":", 1)[0] or str(err.get("code"))] += 1
    except RPCFailure as exc:
        out["error"] = str(exc)
    finally:
        conn.close()
    out.update(reasons=reasons, rejected=rejected, lag=lag, end=time.monotonic())


def run_load(endpoints: Sequence[Endpoint], funders: Sequence[crypto.PrivateKey], settings: LoadSettings) -> LoadReport:
    """Fund senders, pre-sign, submit at ``settings.rate`` to every node, wait for finality; the report."""
    settings.check()
    setup_start = time.monotonic()
    nodes = len(endpoints)
    senders, batch = settings.sender_count(), settings.batch_size(nodes)
    total = int(settings.rate * settings.duration)
    conn = Conn(endpoints[0])
    try:
        chain_id, network, floor = _chain_info(conn)
        fee = settings.fee or floor
        per_sender = -(-total // senders)
        keys, nonces = fund(conn, funders, senders, (per_sender + 1) * (fee + AMOUNT), fee, chain_id, network)
        start_height = int(conn.call("getblockcount"))
    finally:
        conn.close()
    lanes = nodes * settings.connections
    plan = presign(keys, nonces, total, fee, chain_id, lanes, batch)
    report = LoadReport(settings.rate, settings.duration, nodes, senders, batch, settings.connections,
                        setup_s=time.monotonic() - setup_start)
    tracker = _Tracker(endpoints[0], start_height)
    tracker.tracked = {txid for batches in plan for b in batches for txid in b.txids}
    tracker.start()
    interval = batch * lanes / settings.rate
    t0 = time.monotonic() + 0.05
    outs: list[dict[str, Any]] = [{} for _ in plan]
    threads = [threading.Thread(target=_submit, args=(endpoints[i % nodes], batches, t0, interval, outs[i],
                                                      settings.late), daemon=True) for i, batches in enumerate(plan)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(settings.duration + 120.0)
    errors = [o["error"] for o in outs if "error" in o]
    end = max((o.get("end", time.monotonic()) for o in outs), default=time.monotonic())
    rejected = set().union(*(o.get("rejected", set()) for o in outs))
    sent_at = {txid: b.sent_at for batches in plan for b in batches if b.sent_at for txid in b.txids}
    tracker.want = len(sent_at) - len(rejected)
    tracker.stop_at = time.monotonic() + settings.drain
    tracker.join(settings.drain + 30.0)
    if errors or tracker.error:
        raise LoadError("; ".join(errors + ([tracker.error] if tracker.error else [])))
    latencies = [(seen - sent_at[txid]) * 1000 for txid, seen in tracker.seen.items()]
    report.submitted = len(sent_at)
    report.unsent = len(tracker.tracked) - len(sent_at)
    report.rejected = len(rejected)
    report.accepted = report.submitted - report.rejected
    report.reject_reasons = dict(sum((o.get("reasons", Counter()) for o in outs), Counter()))
    report.finalized = len(tracker.seen)
    last_final = max(tracker.seen.values(), default=t0)
    report.finalized_tx_per_s = round(report.finalized / (last_final - t0), 1) if last_final > t0 else 0.0
    report.submit_tx_per_s = round(report.submitted / (end - t0), 1) if end > t0 else 0.0
    report.max_lag_s = round(max((o.get("lag", 0.0) for o in outs), default=0.0), 3)
    report.latency_ms = {f"p{int(q * 100)}": round(percentile(latencies, q), 1) for q in (0.5, 0.9, 0.99)}
    report.latency_ms["max"] = round(max(latencies, default=0.0), 1)
    report.blocks = len(tracker.block_sizes)
    report.largest_block_txs = max(tracker.block_sizes, default=0)
    return report


def report_json(report: LoadReport) -> str:
    return json.dumps(report.to_json(), indent=2)


def generator_max_rate(endpoint: Endpoint, count: int, batch: int, connections: int = 4) -> float:
    """The generator's own ceiling: ``count`` pre-signed txs sent unpaced on ``connections`` connections to
    ``endpoint`` (a stub that answers at once), in tx/s. Signing is not timed (it happens before a run)."""
    keys = [crypto.PrivateKey.generate() for _ in range(8)]
    plan = presign(keys, [0] * len(keys), count, 1_000, "timecoin-bench-stub", connections, batch)
    outs: list[dict[str, Any]] = [{} for _ in plan]
    t0 = time.monotonic()
    threads = [threading.Thread(target=_submit, args=(endpoint, batches, t0, 0.0, outs[i]), daemon=True)
               for i, batches in enumerate(plan)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120.0)
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        raise LoadError("; ".join(errors))
    end = max(o.get("end", t0) for o in outs)
    return count / (end - t0) if end > t0 else 0.0
