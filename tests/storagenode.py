"""Real ``twistd -n timecoin`` processes on a datadir, and what the storage tests check of the datadir after them.

* :func:`start` / :func:`run_to_exit`: a single-validator devnet node in a child process (this worktree's code:
  the child inherits ``PYTHONPATH``), its output in a log file.
* :func:`prepare`: a datadir made in-process as a first start makes it (key, genesis, initialised store), so a
  test can damage it before any node runs.
* :class:`ChainChecker`: every stored block and certificate verifies, heights are contiguous, and replaying
  the blocks from genesis gives the stored state (accounts, LtHash = the tip's state root); incremental, so a
  loop of restarts re-executes each block once.
* :func:`signatures`: every proposal and vote a validator signed that its datadir shows (its WAL records,
  the guard's last record, its precommits in the stored certificates), by (height, round, step).
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from timecoin import crypto
from timecoin.consensus.guardfile import GUARD_FILE, GuardFile
from timecoin.consensus.privval import STEP_PROPOSAL, PrivValidator
from timecoin.consensus.wal import _HEADER, WalKind, _check_records
from timecoin.ledger.block import Proposal, Vote, VoteType, verify_certificate
from timecoin.ledger.genesis import Genesis
from timecoin.ledger.state import MemoryState, validate_block
from timecoin.store import ACCOUNTS, Store

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
ERROR_PREFIX = "twistd timecoin: error: "
_STEP_OF_VOTE = {VoteType.PREVOTE: 2, VoteType.PRECOMMIT: 3}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def node_argv(datadir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "timecoin", "--datadir", str(datadir),
            "--p2p-port", "0", "--rpc-port", "0", "--metrics-port", "0", *extra]


def start(datadir: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A devnet node on ``datadir`` (its own validator), stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(node_argv(datadir, *extra), cwd=datadir.parent, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_default_sigint)


def run_to_exit(datadir: Path, *extra: str, timeout: float = 30.0) -> tuple[int, str]:
    """Run a node that is expected to stop by itself; (exit status, everything it printed)."""
    res = subprocess.run(node_argv(datadir, *extra), cwd=datadir.parent, capture_output=True, text=True,
                         timeout=timeout, preexec_fn=_default_sigint)
    return res.returncode, res.stdout + res.stderr


def wait_for_line(log: Path, text: str, seconds: float, proc: subprocess.Popen[bytes] | None = None,
                  start_at: int = 0) -> bool:
    """True once ``text`` appears in ``log`` after byte ``start_at`` (bounded; False if the process ends first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace")[start_at:]:
            return True
        if proc is not None and proc.poll() is not None:
            return text in log.read_text(errors="replace")[start_at:]
        time.sleep(0.02)
    return False


def prepare(datadir: Path, chain_id: str = "timecoin-devnet", key: crypto.PrivateKey | None = None,
            ) -> tuple[crypto.PrivateKey, Genesis]:
    """What a first start writes: node key, single-validator genesis, the initialised chain store."""
    datadir.mkdir(parents=True, exist_ok=True)
    key = key or crypto.PrivateKey.generate()
    key.save(str(datadir / "node.key"))
    genesis = Genesis.single_validator(key, chain_id=chain_id)
    (datadir / "genesis.json").write_text(genesis.to_json())
    with Store(str(datadir / "chain")) as store:
        vs = genesis.validators()
        store.initialize(genesis.chain_id, genesis.hash, genesis.initial_accounts(), vs, vs, genesis.initial_lthash())
    return key, genesis


def one_error_line(output: str) -> str:
    """The single ``twistd timecoin: error:`` line of a failed start (asserting there is exactly one, no traceback)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if ERROR_PREFIX in line]
    assert len(lines) == 1, output
    return lines[0].split(ERROR_PREFIX, 1)[1]


@dataclass
class ChainChecker:
    """Checks a store against a replay from genesis; remembers the replay, so each check runs the new blocks only."""

    genesis: Genesis
    state: MemoryState = field(init=False)
    hashes: list[bytes] = field(init=False)          # hashes[h] = hash of block h (hashes[0]: genesis)
    prev_ts: int = field(init=False)

    def __post_init__(self) -> None:
        vs = self.genesis.validators()
        self.state = MemoryState(self.genesis.initial_accounts(), {1: vs, 2: vs}, self.genesis.initial_lthash())
        self.hashes = [self.genesis.hash]
        self.prev_ts = self.genesis.genesis_time

    @property
    def height(self) -> int:
        return len(self.hashes) - 1

    def check(self, store: Store) -> int:
        """Assert the store is one consistent chain that extends what was checked before; its tip height."""
        tip = store.tip_height()
        assert tip >= self.height, f"the tip went back from {self.height} to {tip}"
        for height in range(1, self.height + 1):      # finalized blocks never change
            assert store.block_hash_at(height) == self.hashes[height], f"block {height} changed"
        for height in range(self.height + 1, tip + 1):
            block, cert = store.get_block(height), store.get_certificate(height)
            assert block is not None and cert is not None, f"block or certificate {height} missing (tip {tip})"
            assert block.height == height and block.header.prev_hash == self.hashes[-1]
            vs = self.state.validator_set(height)
            assert vs is not None and vs == store.validator_set(height)
            verify_certificate(block, cert, vs, self.genesis.chain_id)
            self.state.commit(validate_block(self.state, self.genesis.params, block, self.hashes[-1], self.prev_ts))
            self.hashes.append(block.hash)
            self.prev_ts = block.header.timestamp
        assert store.tip_hash() == self.hashes[-1]
        assert store.lthash() == self.state.lthash()          # the tip's state root, recomputed
        stored = dict(store.items(ACCOUNTS))
        assert stored == {a: acct.encoded for a, acct in self.state.accounts.items() if not acct.is_empty}
        return tip


Signed = tuple[int, int, int]       # (height, round, step): proposal 1, prevote 2, precommit 3


def signatures(datadir: Path, key: crypto.PrivateKey, chain_id: str, store: Store | None = None,
               into: dict[Signed, dict[bytes, tuple[bytes, bytes]]] | None = None,
               ) -> dict[Signed, dict[bytes, tuple[bytes, bytes]]]:
    """Every message ``key`` signed that ``datadir`` shows: (h, r, step) -> sign bytes -> (signature, tag).

    Read from what a kill -9 leaves: the WAL (every signature is appended, flushed, inside the sign call,
    before the engine may send it), the guard's record (the last signature), and our precommits in the
    stored certificates. Added to ``into`` (a loop of restarts collects across runs). Signatures are checked
    by :func:`double_signs`, for the (h, r, step) that show more than one message.
    """
    out = {} if into is None else into

    def add(at: Signed, payload: bytes, signature: bytes, tag: bytes) -> None:
        out.setdefault(at, {}).setdefault(payload, (signature, tag))

    wal_path = datadir / "consensus.wal"
    if wal_path.exists():
        records = _all_records(wal_path)        # read-only: opening a WriteAheadLog would repair the file
        for kind, data in records:
            if kind == WalKind.PROPOSAL:
                p = Proposal.decode(data)
                if p.proposer == key.address:
                    add((p.height, p.round, STEP_PROPOSAL), p.signing_payload(), p.signature, crypto.TAG_PROPOSAL)
            elif kind == WalKind.VOTE:
                v = Vote.decode(data)
                if v.validator == key.address:
                    add((v.height, v.round, _STEP_OF_VOTE[v.type]), v.signing_payload(), v.signature, crypto.TAG_VOTE)
    guard_path = datadir / GUARD_FILE
    if guard_path.exists():
        guard = GuardFile(str(guard_path))
        try:
            last = PrivValidator(key, chain_id, guard).last_signed()
        finally:
            guard.close()
        if last is not None:
            h, r, s, payload, sig = last
            add((h, r, s), payload, sig, crypto.TAG_PROPOSAL if s == STEP_PROPOSAL else crypto.TAG_VOTE)
    if store is not None:
        for height in range(1, store.tip_height() + 1):
            cert = store.get_certificate(height)
            assert cert is not None
            for v in cert.votes():
                if v.validator == key.address:
                    add((v.height, v.round, 3), v.signing_payload(), v.signature, crypto.TAG_VOTE)
    return out


def double_signs(signed: dict[Signed, dict[bytes, tuple[bytes, bytes]]], key: crypto.PrivateKey,
                 chain_id: str) -> list[Signed]:
    """The (height, round, step) at which ``key`` made two valid signatures over different sign bytes."""
    found = []
    for at, messages in signed.items():
        valid = [p for p, (sig, tag) in messages.items() if crypto.verify(key.public_key, tag, chain_id, p, sig)]
        if len(valid) > 1:
            found.append(at)
    return sorted(found)


def _all_records(path: Path) -> list[tuple[WalKind, bytes]]:
    """Every record of a WAL file in order (markers included), up to its first bad one."""
    with open(path, "rb") as f:
        good, _, _ = _check_records(f, os.fstat(f.fileno()).st_size)
        f.seek(0)
        out, off = [], 0
        while off < good:
            length, _ = _HEADER.unpack(f.read(_HEADER.size))
            body = f.read(length)
            out.append((WalKind(body[0]), body[1:]))
            off += _HEADER.size + length
    return out


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``8m``) of our own at ``where`` (root only: skips the test with the reason
    otherwise), unmounted however the test ends."""
    where.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem refuses (ENOSPC), the last partial pages too.
    Bounded: at most 64 GiB of 64 KiB writes, far past any tmpfs a test mounts."""
    with open(path, "ab", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                for _ in range(1 << 20):
                    f.write(bytes(size))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
            else:
                raise AssertionError(f"the filesystem of {path} never filled")
