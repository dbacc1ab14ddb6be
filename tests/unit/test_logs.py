"""log_format: JSON lines (one event per line, structured fields kept) for log shippers; text unchanged.

The last test runs a real ``twistd -n timecoin`` devnet with ``--log-format json --logfile F`` and
parses every line of F.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.logger import Logger

from tests.ports import TWISTD, free_port_block
from timecoin.logs import install_twistd_logger, json_observer, twistd_json_factory

ROOT = str(Path(__file__).resolve().parents[2])


def test_each_event_is_one_line_of_json_with_its_fields() -> None:
    out = io.StringIO()
    log = Logger(namespace="timecoin.test", observer=json_observer(out))
    log.info("Committed block {height} {hash}", height=7, hash="ab" * 32)
    log.warn("multi\nline {x}", x=object())             # not JSON-able: still one line, still JSON
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and not out.getvalue().startswith("\x1e")
    first = json.loads(lines[0])
    assert first["height"] == 7 and first["hash"] == "ab" * 32 and first["log_namespace"] == "timecoin.test"
    assert first["log_format"] == "Committed block {height} {hash}" and first["log_level"]["name"] == "info"
    assert json.loads(lines[1])["log_level"]["name"] == "warn"


def test_install_only_for_json_and_never_over_an_explicit_logger() -> None:
    text: dict[str, object] = {"logfile": "x.log", "logger": None}
    assert install_twistd_logger(text, "text") is False and text["logger"] is None
    mine = object()
    explicit: dict[str, object] = {"logger": mine}
    assert install_twistd_logger(explicit, "json") is False and explicit["logger"] is mine
    opts: dict[str, object] = {"logfile": None, "nodaemon": True, "logger": None}
    assert install_twistd_logger(opts, "json") is True and opts["logger"] == "timecoin.logs.twistd_json_logger"
    assert install_twistd_logger(None, "json") is False


def test_the_factory_writes_to_the_logfile_twistd_would_use(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    observer = twistd_json_factory(str(path), nodaemon=True)()
    Logger(observer=observer).info("hello {who}", who="ops")
    observer._outFile.close()  # noqa: SLF001 - the LogFile the factory opened
    [line] = path.read_text().splitlines()
    assert json.loads(line)["who"] == "ops"


def test_a_real_twistd_node_with_log_format_json_writes_json_lines(tmp_path: Path) -> None:
    base = free_port_block(3)
    logfile = tmp_path / "node.log"
    args = ["-n", "--pidfile=", f"--logfile={logfile}", "timecoin", "--datadir", str(tmp_path / "d"),
            "--log-format", "json", "--p2p-port", str(base), "--rpc-port", str(base + 1),
            "--metrics-port", str(base + 2)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-c", TWISTD, *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:     # bounded: until a block is committed
            if logfile.exists() and "Committed block" in logfile.read_text():
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=10)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, stderr
    lines = logfile.read_text().splitlines()
    events = [json.loads(line) for line in lines]             # every line parses
    assert len(events) >= 3
    committed = [e for e in events if e.get("log_format", "").startswith("Committed block")]
    assert committed and isinstance(committed[0]["height"], int) and len(committed[0]["hash"]) == 64
