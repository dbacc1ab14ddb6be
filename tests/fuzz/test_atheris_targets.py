"""A bounded coverage-guided fuzz run of every wire decoder target (tests/fuzz/atheris_targets.py) in CI.

Each target runs in its own process (libFuzzer owns the process) for RUNS inputs, starting from the corpus
kept in the repository; new inputs go to a temporary folder, never into the repository (``tox -e fuzz``
runs for minutes and keeps what it finds). A planted fault shows the harness finds and reports a crash.
Where atheris does not install, the hypothesis fuzzers (test_wire_fuzz.py, test_codec_fast.py) still run.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.atheris_targets import CORPUS, TARGETS

pytest.importorskip("atheris", reason="atheris does not install here; the hypothesis fuzzers cover the decoders")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = 50_000


def _fuzz(target: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "new"
    out.mkdir()
    corpus = [os.path.join(CORPUS, target)] if os.path.isdir(os.path.join(CORPUS, target)) else []
    return subprocess.run([sys.executable, "-m", "tests.fuzz.fuzz", target, str(out), *corpus,
                           f"-artifact_prefix={tmp_path}/", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_target_survives_a_bounded_coverage_guided_run(target: str, tmp_path: Path) -> None:
    assert os.listdir(os.path.join(CORPUS, target)), f"no seed corpus for {target}"
    proc = _fuzz(target, tmp_path, f"-runs={RUNS}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DONE" in proc.stderr and "cov:" in proc.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_a_planted_fault_is_found_and_reported(tmp_path: Path) -> None:
    proc = _fuzz("canary", tmp_path, "-runs=500000")
    assert proc.returncode != 0 and "canary found" in proc.stdout + proc.stderr
    crashes = list(tmp_path.glob("crash-*"))
    assert crashes and crashes[0].read_bytes()[:3] == b"\xde\xad\x01"
