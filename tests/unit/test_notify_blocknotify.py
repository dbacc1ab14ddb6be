"""blocknotify: ``%s`` substituted after splitting (no shell, no injection), bounded concurrency and
backlog, failures logged; and a real child writing the hashes it is given."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import LogLevel, globalLogPublisher

from tests.p2pnet import wait_for
from timecoin.notify.blocknotify import BlockNotify, command_argv


def test_the_hash_is_substituted_after_splitting() -> None:
    evil = "ab; rm -rf / $(reboot) 'x"
    assert command_argv("notify --hash=%s 'two words' %s", evil) == ["notify", f"--hash={evil}", "two words", evil]


def test_an_unbalanced_command_line_is_refused_early() -> None:
    with pytest.raises(ValueError):
        BlockNotify(reactor, "notify 'unclosed %s")


class FakeReactor:
    def __init__(self, fail: bool = False) -> None:
        self.spawned: list[tuple[Any, list[str]]] = []
        self.fail = fail

    def spawnProcess(self, proto: Any, exe: str, argv: list[str], env: Any = None) -> None:  # noqa: N802
        if self.fail:
            raise OSError("No such file or directory")
        self.spawned.append((proto, argv))


def test_at_most_max_running_at_once_and_the_backlog_is_bounded() -> None:
    fake = FakeReactor()
    runner = BlockNotify(fake, "notify %s", max_running=2, max_queued=3)
    for i in range(7):
        runner.notify(f"h{i}")
    assert [argv[1] for _, argv in fake.spawned] == ["h0", "h1"]
    assert list(runner.waiting) == ["h4", "h5", "h6"]          # h2, h3: the oldest waiting, dropped
    runner.finished(fake.spawned[0][0])
    assert [argv[1] for _, argv in fake.spawned] == ["h0", "h1", "h4"] and len(runner.running) == 2


def test_a_command_that_cannot_start_is_logged_and_the_node_goes_on() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        runner = BlockNotify(FakeReactor(fail=True), "/no/such/notify %s")
        runner.notify("aa")
        runner.notify("bb")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert runner.failed_to_start == 2 and not runner.running
    assert [e for e in events if e.get("log_level") == LogLevel.error and "cannot run" in e.get("log_format", "")]


@pytest_twisted.ensureDeferred
async def test_a_real_command_gets_each_hash_and_a_failure_is_logged(tmp_path: Path) -> None:
    out = tmp_path / "hashes"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10)); sys.exit(sys.argv[2] == 'bad')"
    runner = BlockNotify(reactor, f"{sys.executable} -c \"{script}\" {out} %s", max_running=1)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for h in ("aa" * 32, "bad", "bb" * 32):
            runner.notify(h)
        await wait_for(lambda: out.exists() and len(out.read_text().split()) == 3 and not runner.running, 20.0,
                       "three runs")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert out.read_text().split() == ["aa" * 32, "bad", "bb" * 32]             # in order (one at a time)
    assert [e for e in events if "failed (exit" in e.get("log_format", "") and e.get("hash") == "bad"]
