"""``timecoin testnet``: the files it writes, the arguments it refuses, and its process supervisor.

The CLI runs in-process (``timecoin.cli.main``); the supervisor tests start real (tiny Python) child
processes, since what is under test is how it signals, waits for and reports them.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from timecoin import crypto
from timecoin.cli import main
from timecoin.config import build_config
from timecoin.ledger.genesis import Genesis
from timecoin.testnet import (
    Supervisor,
    TestnetError,
    read_layout,
    run_layout,
    write_testnet,
)

BASE = 30000
MIN_VALIDATOR_STAKE = 1_000 * crypto.UNITS_PER_TIME


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``timecoin ARGS`` in-process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def four_plus_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    d = tmp_path / "tn"
    code, out, err = cli(capsys, "testnet", "--nodes", "4", "--observers", "1", "--dir", str(d),
                         "--base-port", str(BASE))
    assert code == 0, err
    return d, out


def test_genesis_has_the_four_validators_and_not_the_observer(four_plus_one: tuple[Path, str]) -> None:
    d, _ = four_plus_one
    genesis = Genesis.load(str(d / "genesis.json"))
    keys = [crypto.PrivateKey.load(str(d / f"node{i}" / "node.key")) for i in range(5)]
    validators = genesis.validators()
    assert len(validators) == 4
    assert {v.address for v in validators.validators} == {k.address for k in keys[:4]}
    for v in validators.validators:
        assert v.power >= MIN_VALIDATOR_STAKE
    accounts = {a.address: a for a in genesis.accounts}
    for k in keys[:4]:
        assert accounts[k.address].stake == 10_000 * crypto.UNITS_PER_TIME
        assert accounts[k.address].balance > 0 and accounts[k.address].pubkey == k.public_key
    assert keys[4].address not in accounts and keys[4].address not in validators
    assert re.fullmatch(r"timecoin-testnet-[0-9a-f]{8}", genesis.chain_id)


def test_bootstrap_lists_every_other_validator_with_its_own_key_and_port(four_plus_one: tuple[Path, str]) -> None:
    d, _ = four_plus_one
    configs = [build_config(config_file=str(d / f"node{i}" / "timecoin.conf")) for i in range(5)]
    keys = [crypto.PrivateKey.load(c.key_path) for c in configs]
    validator_addrs = {f"/ip4/127.0.0.1/tcp/{configs[i].p2p_port}/p2p/{keys[i].peer_id}" for i in range(4)}
    for i, cfg in enumerate(configs):
        own = f"/ip4/127.0.0.1/tcp/{cfg.p2p_port}/p2p/{keys[i].peer_id}"
        assert set(cfg.bootstrap) == validator_addrs - {own}
        assert len(cfg.bootstrap) == (3 if i < 4 else 4)
        for addr in cfg.bootstrap:
            m = re.fullmatch(r"/ip4/127\.0\.0\.1/tcp/(\d+)/p2p/(\w+)", addr)
            assert m is not None
            j = (int(m.group(1)) - BASE) // 2
            assert crypto.pubkey_from_peer_id(m.group(2)) == keys[j].public_key and j != i and j < 4


def test_ports_are_distinct_and_follow_the_base(four_plus_one: tuple[Path, str]) -> None:
    d, _ = four_plus_one
    configs = [build_config(config_file=str(d / f"node{i}" / "timecoin.conf")) for i in range(5)]
    ports = [p for c in configs for p in (c.p2p_port, c.rpc_port)]
    assert len(set(ports)) == 10
    assert [(c.p2p_port, c.rpc_port) for c in configs] == [(BASE + 2 * i, BASE + 2 * i + 1) for i in range(5)]


def test_each_config_loads_from_anywhere_with_paths_under_its_folder(
        four_plus_one: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d, _ = four_plus_one
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                       # relative paths must not follow the working directory
    for i in range(5):
        node_dir = (d / f"node{i}").resolve()
        cfg = build_config(config_file=str(node_dir / "timecoin.conf"))
        assert cfg.network == "testnet"
        assert cfg.datadir == str(node_dir / "data")
        assert cfg.key_path == str(node_dir / "node.key")
        assert cfg.genesis_path == str(d.resolve() / "genesis.json")
        assert cfg.p2p_host == "127.0.0.1" and cfg.block_interval == 0.5
        assert cfg.max_per_ip >= 2 * 4                 # a connection each way to each of the 4 others
        assert cfg.timeout_propose == 1.0 and cfg.timeout_prevote == 0.5     # loopback timeouts
        assert cfg.gossip_interval == 1.0              # everything else keeps the testnet default
        assert os.stat(cfg.key_path).st_mode & 0o777 == 0o600


def test_summary_names_every_node_and_how_to_start_it(four_plus_one: tuple[Path, str]) -> None:
    d, out = four_plus_one
    for i in range(5):
        key = crypto.PrivateKey.load(str(d / f"node{i}" / "node.key"))
        row = next(line for line in out.splitlines() if line.startswith(f"node{i} "))
        role = "validator" if i < 4 else "observer"
        assert row.split() == [f"node{i}", role, str(BASE + 2 * i), str(BASE + 2 * i + 1), key.peer_id,
                               str(d / f"node{i}")]
        assert f"cd {d / f'node{i}'} && twistd -n --pidfile= timecoin --config timecoin.conf" in out
    assert f"timecoin testnet --dir {d} --start" in out


def test_read_layout_gives_roles_ports_and_ids(four_plus_one: tuple[Path, str]) -> None:
    d, _ = four_plus_one
    layout = read_layout(str(d))
    assert [n.role for n in layout.nodes] == ["validator"] * 4 + ["observer"]
    assert [n.index for n in layout.nodes] == [0, 1, 2, 3, 4] and layout.validators == 4
    assert layout.genesis_hash == Genesis.load(str(d / "genesis.json")).hash.hex()
    assert layout.nodes[2].peer_id == crypto.PrivateKey.load(str(d / "node2" / "node.key")).peer_id


def test_two_testnets_get_different_chain_ids_and_options_are_written(tmp_path: Path) -> None:
    a = write_testnet(str(tmp_path / "a"), 1, base_port=BASE)
    b = write_testnet(str(tmp_path / "b"), 1, base_port=BASE)
    assert a.chain_id != b.chain_id and a.genesis_hash != b.genesis_hash
    c = write_testnet(str(tmp_path / "c"), 2, observers=40, base_port=BASE, block_interval=0.25, chain_id="my-net")
    assert c.chain_id == "my-net" and len(c.nodes) == 42
    cfg = build_config(config_file=c.nodes[41].config_file)
    assert cfg.block_interval == 0.25 and cfg.p2p_port == BASE + 82 and cfg.rpc_port == BASE + 83
    assert cfg.max_per_ip >= 2 * 41 and cfg.max_inbound >= 41   # 41 local peers fit
    assert len(cfg.bootstrap) == 2


def test_force_replaces_the_layout_and_keeps_other_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "tn"
    first = write_testnet(str(d), 3, base_port=BASE)
    (d / "notes.txt").write_text("mine")
    (d / "node1" / "data").mkdir()
    code, _, err = cli(capsys, "testnet", "--nodes", "2", "--dir", str(d), "--base-port", str(BASE))
    assert code == 2 and "not empty" in err
    assert read_layout(str(d)).genesis_hash == first.genesis_hash            # refused: nothing changed
    code, _, err = cli(capsys, "testnet", "--nodes", "2", "--dir", str(d), "--base-port", str(BASE), "--force")
    assert code == 0, err
    second = read_layout(str(d))
    assert second.genesis_hash != first.genesis_hash and len(second.nodes) == 2
    assert not (d / "node2").exists() and not (d / "node1" / "data").exists()
    assert (d / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("args", "message"), [
    (["--nodes", "0"], "--nodes must be at least 1, not 0"),
    (["--nodes", "-3"], "--nodes must be at least 1"),
    (["--nodes", "four"], "--nodes: 'four' is not an integer"),
    (["--nodes", "2", "--observers", "-1"], "--observers must be at least 0, not -1"),
    (["--nodes", "2", "--base-port", "0"], "--base-port must be at least 1"),
    (["--nodes", "4", "--observers", "1", "--base-port", "65530"], "need ports 65530..65539"),
    (["--nodes", "2", "--block-interval", "soon"], "--block-interval"),
    (["--nodes", "2", "--chain-id", "has space"], "--chain-id"),
    (["--nodes", "2", "--chain-id", "x" * 65], "--chain-id"),
    (["--start"], "no testnet in"),
    (["--observers", "1", "--start"], "--observers only apply when writing"),
    ([], "--nodes N is required"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               args: list[str], message: str) -> None:
    d = tmp_path / "tn"
    code, out, err = cli(capsys, "testnet", "--dir", str(d), *args)
    assert code == 2
    assert err.startswith("timecoin: error: ") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""
    assert not d.exists() or not os.listdir(d)                               # nothing written


def test_start_alone_refuses_a_layout_with_a_broken_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "tn"
    write_testnet(str(d), 2, base_port=BASE)
    (d / "node1" / "node.key").write_text("not a key\n")
    code, out, err = cli(capsys, "testnet", "--dir", str(d), "--start")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("timecoin: error: node1: ") and "not a PEM EC private key" in err
    conf = d / "node0" / "timecoin.conf"
    conf.write_text(conf.read_text() + "p2p_prot = 1\n")
    code, _, err = cli(capsys, "testnet", "--dir", str(d), "--start")
    assert code == 2 and f"{conf}: p2p_prot: unknown key" in err and "node0" in err


def test_a_file_as_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = cli(capsys, "testnet", "--nodes", "1", "--dir", str(f))
    assert code == 2 and "is not a folder" in err and f.read_text() == "x"


def test_write_testnet_raises_testnet_error_directly(tmp_path: Path) -> None:
    with pytest.raises(TestnetError, match="--observers"):
        write_testnet(str(tmp_path / "x"), 1, observers=-1)
    with pytest.raises(TestnetError, match="65535"):
        write_testnet(str(tmp_path / "x"), 1, base_port=65535)


# -- the supervisor, with real child processes ------------------------------------------------------------
PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(60)"]
STUBBORN = [PY, "-c", "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "pathlib.Path('ready').write_text('1'); time.sleep(60)"]
CRASHER = [PY, "-c", "import sys; print('boom'); sys.exit(3)"]


def wait_until(predicate, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def node_dirs(tmp_path: Path, n: int) -> list[Path]:
    dirs = [tmp_path / f"node{i}" for i in range(n)]
    for d in dirs:
        d.mkdir()
    return dirs


def test_supervisor_reports_a_crash_once_and_keeps_the_others(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    sup = Supervisor(out, err)
    d0, d1 = node_dirs(tmp_path, 2)
    try:
        a = sup.start("node0", str(d0), SLEEPER)
        b = sup.start("node1", str(d1), CRASHER)
        assert wait_until(lambda: b.proc.poll() is not None, 10)
        assert sup.check() == [b] and sup.check() == []                       # reported once
        assert sup.alive() == [a]
        assert f"node1 (pid {b.pid}) exited unexpectedly with exit code 3" in err.getvalue()
        assert (d1 / "node.log").read_text() == "boom\n"                       # output went to node.log
        assert f"started node0 pid {a.pid}" in out.getvalue()
    finally:
        codes = sup.stop(grace=5)
    assert codes == {"node0": -signal.SIGTERM, "node1": 3}
    assert f"node0 (pid {a.pid}) stopped: signal SIGTERM" in out.getvalue()


def test_supervisor_kills_a_child_that_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    sup = Supervisor(out, err)
    (d0,) = node_dirs(tmp_path, 1)
    child = sup.start("node0", str(d0), STUBBORN)
    try:
        assert wait_until(lambda: (d0 / "ready").exists(), 10)
    finally:
        t0 = time.monotonic()
        codes = sup.stop(grace=0.5)
    elapsed = time.monotonic() - t0
    assert codes == {"node0": -signal.SIGKILL} and child.proc.returncode == -signal.SIGKILL
    assert 0.5 <= elapsed < 5, elapsed
    assert "did not stop within 0.5 s: SIGKILL" in err.getvalue()


def test_run_layout_stops_every_child_on_sigterm_and_returns_0(tmp_path: Path) -> None:
    layout = write_testnet(str(tmp_path / "tn"), 2, observers=1, base_port=BASE)
    out, err = io.StringIO(), io.StringIO()
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        t0 = time.monotonic()
        code = run_layout(layout, out, err, argv=lambda node: SLEEPER, poll=0.05, grace=5)
    finally:
        timer.cancel()
    assert code == 0 and time.monotonic() - t0 < 8
    text = out.getvalue()
    pids = [int(p) for p in re.findall(r"started node\d pid (\d+)", text)]
    assert len(pids) == 3 and "received SIGTERM" in text
    assert text.count("stopped: signal SIGTERM") == 3 and err.getvalue() == ""
    for pid in pids:                                   # reaped: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert signal.getsignal(signal.SIGTERM) is before                        # handlers restored


def test_run_layout_returns_1_when_every_node_exits_on_its_own(tmp_path: Path) -> None:
    layout = write_testnet(str(tmp_path / "tn"), 2, base_port=BASE)
    out, err = io.StringIO(), io.StringIO()
    before = signal.getsignal(signal.SIGINT)
    code = run_layout(layout, out, err, argv=lambda node: CRASHER, poll=0.05, grace=1)
    assert code == 1
    assert err.getvalue().count("exited unexpectedly with exit code 3") == 2
    assert "every node has exited" in err.getvalue()
    assert signal.getsignal(signal.SIGINT) is before                         # handlers restored


def test_genesis_json_is_valid_for_the_node(four_plus_one: tuple[Path, str]) -> None:
    d, _ = four_plus_one
    raw = json.loads((d / "genesis.json").read_text())
    again = Genesis.from_obj(raw)
    assert again.hash == Genesis.load(str(d / "genesis.json")).hash and len(raw["accounts"]) == 4
