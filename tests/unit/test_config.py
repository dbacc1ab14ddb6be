"""Config: defaults < file < flags, per-network defaults, one-line errors, the example file in step."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from timecoin.config import KEYS, NETWORKS, build_config, render_example
from timecoin.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_defaults_are_a_devnet_in_timecoin_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = build_config()
    assert cfg.network == "devnet"
    assert cfg.datadir == str(tmp_path / "timecoin-data")
    assert cfg.key_path == str(tmp_path / "timecoin-data" / "node.key")
    assert cfg.genesis_path == str(tmp_path / "timecoin-data" / "genesis.json")
    assert cfg.block_interval == 1.0
    assert (cfg.timeout_propose, cfg.timeout_prevote, cfg.timeout_precommit) == (0.04, 0.01, 0.01)
    assert cfg.timeout_propose_delta == 0.001


@pytest.mark.parametrize(("network", "interval", "propose", "delta", "p2p", "rpc"), [
    ("devnet", 1.0, 0.04, 0.001, 29333, 29332),
    ("testnet", 60.0, 3.0, 0.5, 19333, 19332),
    ("mainnet", 600.0, 30.0, 5.0, 9333, 9332),
])
def test_network_defaults(network: str, interval: float, propose: float, delta: float, p2p: int,
                          rpc: int) -> None:
    cfg = build_config({"network": network})
    assert (cfg.block_interval, cfg.timeout_propose, cfg.timeout_propose_delta) == (interval, propose, delta)
    assert (cfg.p2p_port, cfg.rpc_port) == (p2p, rpc)
    if network == "mainnet":
        assert cfg.timeout_prevote == cfg.timeout_precommit == 30.0


def test_file_overrides_defaults_and_flags_override_file(tmp_path: Path) -> None:
    conf = write(tmp_path / "a.conf", "[timecoin]\nnetwork = testnet\nrpc_port = 7000\np2p_port = 7001\n"
                                      "block_interval = 500ms\nmempool_max_bytes = 2MiB  # inline comment\n")
    cfg = build_config({}, conf)
    assert (cfg.network, cfg.rpc_port, cfg.p2p_port) == ("testnet", 7000, 7001)
    assert cfg.block_interval == 0.5 and cfg.mempool_max_bytes == 2 << 20
    assert cfg.timeout_propose == 3.0                      # testnet default, chosen by the file's network
    cfg2 = build_config({"rpc_port": "9340", "network": "mainnet"}, conf)
    assert cfg2.rpc_port == 9340 and cfg2.p2p_port == 7001
    assert cfg2.network == "mainnet" and cfg2.timeout_propose == 30.0


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "node1").mkdir()
    conf = write(tmp_path / "node1" / "timecoin.conf", "[timecoin]\ndatadir = data\nkey_file = keys/n.key\n")
    monkeypatch.chdir("/")
    cfg = build_config({}, conf)
    assert cfg.datadir == str(tmp_path / "node1" / "data")
    assert cfg.key_path == str(tmp_path / "node1" / "keys" / "n.key")
    # No datadir in the file: the default is next to the file, not in the working directory.
    conf2 = write(tmp_path / "node1" / "b.conf", "[timecoin]\n")
    assert build_config({}, conf2).datadir == str(tmp_path / "node1" / "timecoin-data")
    # A flag's relative path is relative to the working directory.
    monkeypatch.chdir(tmp_path)
    assert build_config({"datadir": "x"}, conf).datadir == str(tmp_path / "x")


@pytest.mark.parametrize(("flags", "text", "key", "reason"), [
    ({"rpc_port": "99999"}, None, "rpc_port", "out of range"),
    ({"rpc_port": "abc"}, None, "rpc_port", "not an integer"),
    ({"network": "moon"}, None, "network", "not one of"),
    ({"block_interval": "soon"}, None, "block_interval", "not a duration"),
    ({"max_frame_bytes": "12"}, None, "max_frame_bytes", "out of range"),
    ({"bootstrap": "127.0.0.1:9333"}, None, "bootstrap", "not a multiaddr"),
    ({"p2p_port": "7000", "rpc_port": "7000"}, None, "rpc_port", "equals p2p_port"),
    ({}, "[timecoin]\nrpc_prot = 1\n", "rpc_prot", "unknown key"),
    ({}, "[node]\nrpc_port = 1\n", "config", "unknown section"),
    ({}, "rpc_port = 1\n", "config", "not a valid config file"),
    ({}, "[timecoin]\nmin_relay_fee = -1\n", "min_relay_fee", "out of range"),
    ({"datadir": ""}, None, "datadir", "must not be empty"),
    ({"datadir": "  "}, None, "datadir", "must not be empty"),
    ({}, "[timecoin]\ndatadir =\n", "datadir", "must not be empty"),
    ({"timeout_propose": "0"}, None, "timeout_propose", "longer than 0"),
    ({"timeout_prevote": "0ms"}, None, "timeout_prevote", "longer than 0"),
    ({}, "[timecoin]\ntimeout_precommit = 0s\n", "timeout_precommit", "longer than 0"),
    ({"timeout_propose_delta": "0"}, None, "timeout_propose_delta", "longer than 0"),
    ({"timeout_prevote_delta": "0"}, None, "timeout_prevote_delta", "longer than 0"),
    ({"timeout_precommit_delta": "0.0"}, None, "timeout_precommit_delta", "longer than 0"),
])
def test_bad_values_name_the_key_and_the_reason(tmp_path: Path, flags: dict, text: str | None, key: str,
                                                reason: str) -> None:
    conf = write(tmp_path / "bad.conf", text) if text is not None else None
    with pytest.raises(ConfigError) as info:
        build_config(flags, conf)
    assert info.value.key == key
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_block_interval_zero_and_small_timeouts_are_allowed() -> None:
    cfg = build_config({"block_interval": "0", "timeout_propose": "1ms", "timeout_prevote_delta": "0.5ms"})
    assert (cfg.block_interval, cfg.timeout_propose, cfg.timeout_prevote_delta) == (0.0, 0.001, 0.0005)


def test_example_documents_the_timeout_and_datadir_rules() -> None:
    text = render_example()
    for name in ("timeout_propose", "timeout_prevote", "timeout_precommit"):
        assert re.search(rf"^# .*\(> 0\)\.\n(# .*\n)?#{name} =", text, re.M), name
    assert "(0 allowed)" in text and "must not be empty" in text


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        build_config({}, str(tmp_path / "absent.conf"))


def test_config_is_frozen() -> None:
    cfg = build_config()
    with pytest.raises(AttributeError):
        cfg.rpc_port = 1  # type: ignore[misc]


def test_example_file_documents_every_key_and_matches_the_code() -> None:
    text = (ROOT / "etc" / "timecoin.conf.example").read_text()
    assert text == render_example(), "regenerate with: timecoin config --example > etc/timecoin.conf.example"
    for key in KEYS:
        assert f"#{key.name} =" in text


def test_example_file_with_every_line_uncommented_gives_the_defaults(tmp_path: Path) -> None:
    """The example's values are real defaults: uncommenting all of them changes nothing."""
    uncommented = re.sub(r"^#(\w+ =)", r"\1", render_example(), flags=re.M)
    full = build_config({}, write(tmp_path / "all.conf", uncommented))
    base = build_config({}, write(tmp_path / "empty.conf", ""))
    for key in KEYS:
        assert getattr(full, key.name) == getattr(base, key.name), key.name


def test_every_network_has_every_per_network_default() -> None:
    for key in KEYS:
        if isinstance(key.default, dict):
            assert set(key.default) == set(NETWORKS), key.name
