"""Heights per second of a real single-validator devnet (``twistd -n timecoin``) with block_interval 0.

Starts a real node process in a temporary datadir, reads its height with ``timecoin status`` after a
warm-up and again after the measuring window, and prints heights/s. Baseline in the same run: the
store's own commit rate for empty blocks is not separable from fsync cost, so we also print the raw
fsync rate of this disk (every height costs a few fsyncs: privval, WAL, block commit).

The node is stopped with SIGTERM and must exit 0 (SPEC §8: a clean stop); its exit code is printed and a
non-zero one fails the benchmark (with the node's log tail). It listens on ports chosen by the OS
(``--p2p-port 0 --rpc-port 0``), so it never collides with another node on the default ports.
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
        log_path = os.path.join(tmp, "node.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["twistd", "-n", "--pidfile=", "timecoin", "--datadir", datadir,
                                     "--block-interval", "0", "--p2p-port", "0", "--rpc-port", "0"],
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 30
            while status_height(datadir) < 5 and time.time() < deadline and proc.poll() is None:
                time.sleep(0.5)
            h0, t0 = status_height(datadir), time.time()
            time.sleep(WINDOW)
            h1, t1 = status_height(datadir), time.time()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        rate = (h1 - h0) / (t1 - t0)
        fs = fsyncs_per_second(tmp)
        print(f"devnet block_interval=0: {h1 - h0} heights in {t1 - t0:.1f} s = {rate:.1f} heights/s")
        print(f"baseline: raw fsync rate of this disk = {fs:.0f}/s; heights/s per fsync/s = {rate / fs:.4f}")
        print(f"node exit code after SIGTERM: {code}")
        if code != 0 or h1 <= h0:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-3000:]
            sys.exit(f"FAILED: exit code {code} (want 0), heights {h0} -> {h1}\n--- node log tail ---\n{tail}")


if __name__ == "__main__":
    main()
