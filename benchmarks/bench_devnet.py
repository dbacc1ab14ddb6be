"""Heights per second of a real single-validator devnet (``twistd -n timecoin``) with block_interval 0.

Starts a real node process in a temporary datadir, reads its height with ``timecoin status`` after a
warm-up and again after the measuring window, and prints heights/s. Baseline in the same run: the
store's own commit rate for empty blocks is not separable from fsync cost, so we also print the raw
fsync rate of this disk (every height costs a few fsyncs: privval, WAL, block commit).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

WINDOW = float(os.environ.get("BENCH_WINDOW", "10"))


def status_height(datadir: str) -> int:
    out = subprocess.run([sys.executable, "-m", "timecoin", "status", "--datadir", datadir, "--json"],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)["height"] if out.returncode == 0 else 0


def fsyncs_per_second(folder: str, seconds: float = 2.0) -> float:
    path = os.path.join(folder, "fsync.bin")
    n, t0 = 0, time.perf_counter()
    with open(path, "wb") as f:
        while time.perf_counter() - t0 < seconds:
            f.write(b"x" * 128)
            f.flush()
            os.fsync(f.fileno())
            n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        datadir = os.path.join(tmp, "data")
        proc = subprocess.Popen(["twistd", "-n", "--pidfile=", "timecoin", "--datadir", datadir,
                                 "--block-interval", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 30
            while status_height(datadir) < 5 and time.time() < deadline:
                time.sleep(0.5)
            h0, t0 = status_height(datadir), time.time()
            time.sleep(WINDOW)
            h1, t1 = status_height(datadir), time.time()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        rate = (h1 - h0) / (t1 - t0)
        fs = fsyncs_per_second(tmp)
        print(f"devnet block_interval=0: {h1 - h0} heights in {t1 - t0:.1f} s = {rate:.1f} heights/s")
        print(f"baseline: raw fsync rate of this disk = {fs:.0f}/s; heights/s per fsync/s = {rate / fs:.4f}")


if __name__ == "__main__":
    main()
