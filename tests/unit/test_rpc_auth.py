"""Who may call RPC: Basic credentials, the cookie file, the allow list, the bind rule, and 403 by address."""
from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.test.requesthelper import DummyRequest

from timecoin.config import build_config
from timecoin.errors import ConfigError
from timecoin.rpc.auth import (
    COOKIE_USER,
    AllowList,
    Credentials,
    cookie_path,
    is_loopback_host,
    read_cookie,
    remove_cookie,
    write_cookie,
)
from timecoin.rpc.core import health_report, stall_bound
from timecoin.rpc.registry import MethodTable
from timecoin.rpc.server import RPCResource


def basic(text: bytes) -> bytes:
    return b"Basic " + base64.b64encode(text)


@pytest.mark.parametrize(("header", "ok"), [
    (basic(b"__cookie__:" + b"a" * 64), True),
    (b"basic " + base64.b64encode(b"alice:pw"), True),            # the scheme is case-insensitive
    (basic(b"__cookie__:" + b"a" * 63 + b"b"), False),
    (basic(b"__cookie__:" + b"a" * 65), False),
    (basic(b"__cookie__:"), False),
    (basic(b"alice:" + b"a" * 64), False),
    (basic(b"__cookie__" + b"a" * 64), False),
    (b"Bearer " + base64.b64encode(b"alice:pw"), False),
    (b"Basic !!!", False),
    (b"Basic", False),
    (b"", False),
    (None, False),
])
def test_credentials_accept_exactly_the_configured_pairs(header: bytes | None, ok: bool) -> None:
    creds = Credentials([("__cookie__", "a" * 64), ("alice", "pw")])
    assert creds.check(header) is ok


def test_cookie_is_fresh_0600_atomic_and_removed(tmp_path: Path) -> None:
    first = write_cookie(str(tmp_path))
    path = cookie_path(str(tmp_path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Path(path).read_text() == f"{COOKIE_USER}:{first}" and len(first) == 64 and int(first, 16) >= 0
    assert read_cookie(str(tmp_path)) == (COOKIE_USER, first)
    second = write_cookie(str(tmp_path))
    assert second != first and read_cookie(str(tmp_path))[1] == second
    assert sorted(os.listdir(tmp_path)) == [".cookie"]            # no temporary file left behind
    remove_cookie(str(tmp_path))
    remove_cookie(str(tmp_path))                                  # twice: no error
    assert not os.path.exists(path)
    with pytest.raises(OSError):
        read_cookie(str(tmp_path))


def test_cookie_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / ".cookie.tmp")
    write_cookie(str(tmp_path))
    assert victim.read_text() == "keep me"
    assert not os.path.islink(cookie_path(str(tmp_path)))


def test_malformed_cookie_is_a_clear_error(tmp_path: Path) -> None:
    Path(cookie_path(str(tmp_path))).write_text("no-colon-here")
    with pytest.raises(ValueError, match="not a user:password cookie"):
        read_cookie(str(tmp_path))


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True), ("LOCALHOST", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("example.com", False), ("", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(("address", "allowed"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),     # loopback: always
    ("10.1.2.3", True), ("10.255.255.255", True), ("11.0.0.1", False), ("192.168.1.7", True),
    ("192.168.2.7", False), ("::ffff:10.9.9.9", True), ("::ffff:8.8.8.8", False),
    ("fd00::1234", True), ("fe80::1", False), ("fe80::1%eth0", False),
    ("not-an-ip", False), ("", False), ("10.1.2.3.4", False),
])
def test_allow_list_by_address(address: str, allowed: bool) -> None:
    allow = AllowList(["10.0.0.0/8", "192.168.1.7", "fd00::/8"])
    assert allow.allows(address) is allowed


def test_empty_allow_list_allows_only_loopback() -> None:
    allow = AllowList([])
    assert allow.allows("127.0.0.1") and allow.allows("::1")
    assert not allow.allows("10.0.0.1") and not allow.allows("::ffff:10.0.0.1")


def test_binding_beyond_loopback_requires_an_allow_list(tmp_path: Path) -> None:
    flags = {"datadir": str(tmp_path)}
    with pytest.raises(ConfigError) as info:
        build_config({**flags, "rpc_host": "0.0.0.0"})
    assert info.value.key == "rpc_allow_ip" and "0.0.0.0 is not a loopback address" in str(info.value)
    assert "\n" not in str(info.value)
    cfg = build_config({**flags, "rpc_host": "0.0.0.0", "rpc_allow_ip": "10.0.0.0/8, 192.168.1.7 fd00::/8"})
    assert cfg.rpc_allow_ip == ("10.0.0.0/8", "192.168.1.7/32", "fd00::/8")
    assert build_config({**flags, "rpc_host": "::1"}).rpc_allow_ip == ()


@pytest.mark.parametrize(("flags", "key", "says"), [
    ({"rpc_allow_ip": "10.0.0.0/33"}, "rpc_allow_ip", "not an IP address or CIDR"),
    ({"rpc_allow_ip": "ten"}, "rpc_allow_ip", "not an IP address or CIDR"),
    ({"rpc_user": "alice"}, "rpc_password", "go together"),
    ({"rpc_password": "pw"}, "rpc_user", "go together"),
    ({"rpc_user": "al:ice", "rpc_password": "pw"}, "rpc_user", "must not contain ':'"),
    ({"rpc_max_body_bytes": "10"}, "rpc_max_body_bytes", "out of range"),
    ({"rpc_max_batch": "0"}, "rpc_max_batch", "out of range"),
    ({"rpc_max_concurrent": "0"}, "rpc_max_concurrent", "out of range"),
])
def test_bad_rpc_settings_name_the_key(tmp_path: Path, flags: dict[str, str], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"datadir": str(tmp_path), **flags})
    assert info.value.key == key and says in info.value.reason


def test_rpc_defaults(tmp_path: Path) -> None:
    cfg = build_config({"datadir": str(tmp_path)})
    assert (cfg.rpc_host, cfg.rpc_user, cfg.rpc_password, cfg.rpc_allow_ip) == ("127.0.0.1", "", "", ())
    assert (cfg.rpc_max_body_bytes, cfg.rpc_max_batch, cfg.rpc_max_concurrent) == (4 << 20, 1000, 16)


# -- 403 by client address, before anything else is looked at ----------------------------------------
def resource(allow: list[str]) -> RPCResource:
    return RPCResource(None, None, MethodTable(), Credentials([("u", "p")]), AllowList(allow), 0.0, 1000, 4,
                       health=lambda node: {"healthy": True})


@pytest.mark.parametrize(("client", "path", "status"), [
    (IPv4Address("TCP", "10.1.2.3", 5555), b"/", 403),
    (IPv4Address("TCP", "10.1.2.3", 5555), b"/health", 403),
    (IPv6Address("TCP", "2001:db8::1", 5555), b"/health", 403),
    (IPv4Address("TCP", "192.168.5.5", 5555), b"/health", 200),
    (IPv4Address("TCP", "127.0.0.1", 5555), b"/health", 200),
    (IPv4Address("TCP", "192.168.5.5", 5555), b"/", 401),        # allowed, but no credentials
])
def test_clients_outside_the_allow_list_get_403(client: Any, path: bytes, status: int) -> None:
    res = resource(["192.168.0.0/16"])
    res.auth_failure_delay = 0.0
    request = DummyRequest([b""])
    request.client = client
    request.path = path
    request.method = b"GET" if path == b"/health" else b"POST"
    res.render(request)
    assert request.responseCode == status


# -- health without a running node --------------------------------------------------------------------
def test_health_of_a_starting_node_and_the_stall_bound(tmp_path: Path) -> None:
    report = health_report(SimpleNamespace(store=None))
    assert report["healthy"] is False and report["status"] == "starting"
    devnet = build_config({"datadir": str(tmp_path)})
    # 2 block intervals + 5 rounds of (propose + prevote + precommit, each + r * delta) + delay + precision + 1 s
    expected = 2 * 1.0 + sum(0.04 + 0.01 + 0.01 + 3 * r * 0.001 for r in range(5)) + 0.2 + 0.05 + 1.0
    assert stall_bound(devnet) == pytest.approx(expected)
    mainnet = build_config({"datadir": str(tmp_path), "network": "mainnet"})
    assert stall_bound(mainnet) > 2 * 600


def test_a_failing_health_check_is_503_without_a_traceback() -> None:
    def broken(node: Any) -> dict[str, Any]:
        raise RuntimeError("store closed under us")
    res = RPCResource(None, None, MethodTable(), Credentials([]), AllowList([]), 0.0, 1000, 4, health=broken)
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", "127.0.0.1", 5555)
    request.path, request.method = b"/health", b"GET"
    body = res.render(request)
    assert request.responseCode == 503 and b"store closed" not in body and b"internal error" in body
