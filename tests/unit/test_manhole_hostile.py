"""The telnet manhole's password check against guessing: constant-time comparison of fixed-length digests
over every line of the passwd file, a wrong password answered only after a delay (on a task.Clock) and
logged. The real telnet login: tests/integration/test_manhole.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.cred import credentials, error
from twisted.internet import task
from twisted.logger import globalLogPublisher

import timecoin.manhole.auth as manhole_auth
from timecoin.manhole.auth import FAILED_LOGIN_DELAY, PasswdChecker, read_passwd

PASSWORD = b"s3cret-" + b"p" * 40


@pytest.fixture
def passwd(tmp_path: Path) -> str:
    path = tmp_path / "passwd"
    path.write_bytes(b"# admin:commented-out\nadmin:" + PASSWORD + b"\nops:other\n")
    return str(path)


def login(checker: PasswdChecker, user: bytes, password: bytes) -> list[Any]:
    out: list[Any] = []
    checker.requestAvatarId(credentials.UsernamePassword(user, password)).addBoth(out.append)
    return out


@pytest.mark.parametrize(("user", "password"), [
    (b"admin", b"x" + PASSWORD[1:]),                # wrong in the first byte
    (b"admin", PASSWORD[:-1] + b"x"),               # wrong in the last byte
    (b"admin", PASSWORD[:5]),                       # shorter
    (b"admin", PASSWORD * 3),                       # longer
    (b"nobody", PASSWORD),                          # unknown user: the same work, the same delay
    (b"# admin", b"commented-out"),                 # a comment is not an account
    (b"ops", PASSWORD),                             # another user's password
])
def test_a_wrong_login_is_compared_in_full_then_refused_after_the_delay_and_logged(
        passwd: str, user: bytes, password: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = manhole_auth.hmac.compare_digest
    monkeypatch.setattr(manhole_auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    clock = task.Clock()
    try:
        result = login(PasswdChecker(passwd, clock), user, password)
    finally:
        globalLogPublisher.removeObserver(events.append)
    # Every line (user and password) compared as 32-byte digests: no early return says which part was wrong.
    assert len(calls) == 2 * len(read_passwd(passwd)) == 4 and all(len(a) == len(b) == 32 for a, b in calls)
    assert result == [], "a wrong password was answered at once (guessing at full speed)"
    clock.advance(FAILED_LOGIN_DELAY - 0.01)
    assert result == []
    clock.advance(0.02)
    assert len(result) == 1 and result[0].check(error.UnauthorizedLogin)
    assert any("failed telnet login" in str(e.get("log_format", "")) for e in events)


def test_the_right_password_logs_in_at_once_and_edits_take_effect(passwd: str) -> None:
    clock = task.Clock()
    checker = PasswdChecker(passwd, clock)
    assert login(checker, b"admin", PASSWORD) == [b"admin"] and login(checker, b"ops", b"other") == [b"ops"]
    Path(passwd).write_bytes(b"ops:other\n")          # admin removed: refused without a restart
    result = login(checker, b"admin", PASSWORD)
    clock.advance(FAILED_LOGIN_DELAY)
    assert result[0].check(error.UnauthorizedLogin)
    Path(passwd).unlink()                             # unreadable: nobody gets in
    result = login(checker, b"ops", b"other")
    clock.advance(FAILED_LOGIN_DELAY)
    assert result[0].check(error.UnauthorizedLogin)


def test_the_datadir_and_every_secret_in_it_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Local users on the host: the datadir is 0700 and the node key, RPC cookie and manhole host key 0600,
    set explicitly (under umask 0 a file without an explicit mode would be world-readable)."""
    import os
    import stat

    from timecoin.config import build_config
    from timecoin.manhole.auth import HOST_KEY_FILE, host_key
    from timecoin.node import prepare_datadir
    from timecoin.rpc.auth import cookie_path, write_cookie

    datadir = tmp_path / "data"
    old = os.umask(0)
    try:
        config = build_config({"datadir": str(datadir)})
        prepare_datadir(config)
        write_cookie(str(datadir))
        host_key(str(datadir))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(datadir).st_mode) == 0o700
    for path in (config.key_path, cookie_path(str(datadir)), str(datadir / HOST_KEY_FILE)):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
