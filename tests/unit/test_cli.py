"""The ``timecoin`` console script and the twistd plugin, run as real processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ecdsa
import pytest

from timecoin import crypto

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: str | Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timecoin", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


BIN = Path(sys.executable).parent          # the environment's console scripts (venv or tox env)


def script(name: str, *args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run an installed console script (``twistd``, ``twist``, ``timecoin``) as an operator would.

    The executable itself, never ``python -c``: ``-c`` puts the working directory on sys.path and would
    find ``twisted/plugins/`` in a checkout even when the install does not ship the plugin. The
    repository's folder is kept off sys.path (cwd elsewhere, no PYTHONPATH), so the plugin must come
    from the installed distribution.
    """
    exe = BIN / name
    assert exe.exists(), f"{exe} is not installed: the package's console scripts are missing"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd or BIN, env=env,
                          timeout=60)


def twistd(*args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    return script("twistd", *args, cwd=cwd)


def test_keygen_writes_a_pem_key_and_prints_its_identity(tmp_path: Path) -> None:
    out = tmp_path / "node.key"
    res = run("keygen", "--out", str(out))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert set(info) == {"peer_id", "address", "public_key"}
    key = crypto.PrivateKey.load(str(out))
    assert info["public_key"] == key.public_key.hex()
    assert info["peer_id"] == crypto.peer_id_of(key.public_key) and info["peer_id"].startswith("16Uiu2HA")
    assert info["address"].startswith("TIME0") and crypto.decode_address(info["address"]) == key.address
    assert os.stat(out).st_mode & 0o777 == 0o600
    # The ecdsa package reads the same file and finds the same public key.
    vk = ecdsa.SigningKey.from_pem(out.read_bytes()).get_verifying_key()
    assert vk.to_string("compressed") == key.public_key
    # keyinfo prints the same identity; mainnet addresses are TIME1.
    again = run("keyinfo", str(out))
    assert again.returncode == 0 and json.loads(again.stdout) == info
    main = json.loads(run("keyinfo", str(out), "--network", "mainnet").stdout)
    assert main["address"].startswith("TIME1") and main["peer_id"] == info["peer_id"]


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "node.key"
    assert run("keygen", "--out", str(out)).returncode == 0
    before = out.read_bytes()
    res = run("keygen", "--out", str(out))
    assert res.returncode == 2 and "refusing to overwrite" in res.stderr
    assert "Traceback" not in res.stderr and out.read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"not a key", b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n"])
def test_keyinfo_of_a_bad_file_is_one_line(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.key"
    bad.write_bytes(content)
    res = run("keyinfo", str(bad))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("timecoin: error:")


def test_config_json_prints_the_effective_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "t.conf"
    conf.write_text("[timecoin]\nnetwork = testnet\np2p_port = 4000\n")
    res = run("config", "--config", str(conf), "--rpc-port", "9334", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    values = json.loads(res.stdout)
    assert values["rpc_port"] == 9334 and values["p2p_port"] == 4000 and values["network"] == "testnet"
    assert values["datadir"] == str(tmp_path / "timecoin-data-testnet")
    res = run("config", "--datadir", "d", "--json", cwd=tmp_path)
    assert json.loads(res.stdout)["datadir"] == str(tmp_path / "d")


def test_bad_config_value_is_one_line_exit_2(tmp_path: Path) -> None:
    res = run("config", "--rpc-port", "70000", "--json")
    assert res.returncode == 2
    assert res.stderr.strip() == "timecoin: error: rpc_port: 70000 is out of range [0, 65535]"


def test_empty_datadir_is_one_line_exit_2(tmp_path: Path) -> None:
    res = run("config", "--datadir", "", "--json", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == "timecoin: error: datadir: must not be empty (omit the key for the default)"


def test_status_without_a_store_is_one_line(tmp_path: Path) -> None:
    res = run("status", "--datadir", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "no chain store" in res.stderr and "Traceback" not in res.stderr


def test_twistd_lists_the_plugin_and_its_flags(tmp_path: Path) -> None:
    res = twistd("--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "timecoin" in res.stdout.split("Commands:")[-1], "the installed twistd does not find the plugin"
    res = twistd("timecoin", "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for flag in ("--rpc-port", "--datadir", "--network", "--block-interval", "--config"):
        assert flag in res.stdout


def test_twist_runs_the_plugin_help(tmp_path: Path) -> None:
    res = script("twist", "timecoin", "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "--rpc-port" in res.stdout


def test_timecoin_console_script_version(tmp_path: Path) -> None:
    from timecoin import __version__

    res = script("timecoin", "--version", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"timecoin {__version__}"


def test_twistd_bad_flag_is_one_line_exit_2(tmp_path: Path) -> None:
    res = twistd("-n", "--pidfile=", "timecoin", "--rpc-port", "abc", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == "twistd timecoin: error: rpc_port: 'abc' is not an integer"
    assert not (tmp_path / "timecoin-data").exists()


def test_plugin_is_discovered() -> None:
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    import twisted.plugins

    makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
    assert "timecoin" in makers
    assert makers["timecoin"].module == "timecoin.tap"
    assert callable(makers["timecoin"].options)


def test_systemd_unit_runs_twistd_in_the_foreground_as_the_timecoin_user() -> None:
    unit = (ROOT / "etc" / "timecoin.service").read_text()
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in unit.splitlines()
             if "=" in line and not line.startswith("#")}
    assert lines["ExecStart"].endswith("twistd -n --pidfile= timecoin --config /etc/timecoin/timecoin.conf")
    assert (lines["User"], lines["Restart"], lines["KillSignal"]) == ("timecoin", "on-failure", "SIGTERM")
    assert "[Install]" in unit and lines["WantedBy"] == "multi-user.target"
