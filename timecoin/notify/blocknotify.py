"""``blocknotify``: run a command for each new block with ``%s`` replaced by its hash (bitcoind's option).

The command line is split with :func:`shlex.split` first and ``%s`` substituted in each argument after,
so a hash can never become shell syntax; there is no shell unless the operator writes one. Each run is
a child via ``reactor.spawnProcess`` (the reactor never waits for it); at most ``max_running`` run at
once and at most ``max_queued`` hashes wait behind them (the oldest waiting are dropped, with a
warning, if a command is slower than the chain). A command that cannot start, fails or is killed is
logged with its status and stderr's last line.
"""
from __future__ import annotations

import collections
import os
import shlex
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger

MAX_RUNNING = 4
MAX_QUEUED = 100
MAX_STDERR = 4096               # bytes of a command's stderr kept for the log line


def command_argv(command: str, block_hash: str) -> list[str]:
    """The argv for one block: the split command with ``%s`` replaced in each argument."""
    return [arg.replace("%s", block_hash) for arg in shlex.split(command)]


class _Child(protocol.ProcessProtocol):
    def __init__(self, runner: BlockNotify, block_hash: str) -> None:
        self.runner = runner
        self.block_hash = block_hash
        self.stderr = b""

    def errReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.stderr = (self.stderr + data)[-MAX_STDERR:]

    def processEnded(self, reason: Any) -> None:  # noqa: N802 - Twisted API
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        if code or signal:
            last = self.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            self.runner.log.warn("blocknotify for {hash} failed (exit {code}, signal {signal}): {err}",
                                 hash=self.block_hash, code=code, signal=signal, err=last[0][:200])
        self.runner.finished(self)


class BlockNotify:
    """Runs ``command`` for each hash given to :meth:`notify`, bounded in concurrency and backlog."""

    log = Logger()

    def __init__(self, reactor: Any, command: str, max_running: int = MAX_RUNNING,
                 max_queued: int = MAX_QUEUED) -> None:
        self.reactor = reactor
        self.command = command
        shlex.split(command)                    # a bad command line (unbalanced quotes) fails here, early
        self.max_running = max_running
        self.waiting: collections.deque[str] = collections.deque(maxlen=max_queued)
        self.running: set[_Child] = set()
        self.started = 0
        self.failed_to_start = 0

    def notify(self, block_hash: str) -> None:
        if len(self.running) < self.max_running:
            self._spawn(block_hash)
            return
        if len(self.waiting) == self.waiting.maxlen:
            self.log.warn("blocknotify is behind: skipping block {hash}", hash=self.waiting[0])
        self.waiting.append(block_hash)

    def finished(self, child: _Child) -> None:
        self.running.discard(child)
        if self.waiting and len(self.running) < self.max_running:
            self._spawn(self.waiting.popleft())

    def _spawn(self, block_hash: str) -> None:
        argv = command_argv(self.command, block_hash)
        child = _Child(self, block_hash)
        try:
            self.reactor.spawnProcess(child, argv[0], argv, env=dict(os.environ))
        except (OSError, IndexError) as exc:
            self.failed_to_start += 1
            self.log.error("blocknotify cannot run {cmd!r}: {why}", cmd=self.command, why=str(exc))
            return
        self.started += 1
        self.running.add(child)
