"""Credentials of the manhole: the SSH host key in the datadir, the authorized keys, the telnet passwd file.

Every file is checked when the service is built (before twistd daemonizes), so a missing or unreadable
file is one :class:`TimecoinError` line and exit code 1, never a traceback or a manhole that silently
lets nobody in.
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.checkers import IAuthorizedKeysDB, readAuthorizedKeyFile
from twisted.conch.ssh import keys
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from timecoin.errors import TimecoinError
from timecoin.rpc.auth import digest

HOST_KEY_FILE = "manhole_host_key"
FAILED_LOGIN_DELAY = 1.0        # seconds before a wrong telnet password is answered (a brake on guessing)
log = Logger()


def host_key(datadir: str) -> keys.Key:
    """The node's SSH host key: made once (Ed25519, mode 0600) and reused, so its fingerprint is stable."""
    path = os.path.join(datadir, HOST_KEY_FILE)
    if not os.path.exists(path):
        key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.toString("openssh"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        log.info("Created the manhole SSH host key {path} (SHA256:{fp})", path=path, fp=fingerprint(key))
    try:
        with open(path, "rb") as f:
            key = keys.Key.fromString(f.read())
    except (OSError, keys.BadKeyError, ValueError) as exc:
        raise TimecoinError(f"bad manhole host key {path}: {exc} (delete it to make a new one)") from None
    if key.isPublic():
        raise TimecoinError(f"bad manhole host key {path}: it holds a public key, not a private one")
    return key


def fingerprint(key: keys.Key) -> str:
    """The SHA256 fingerprint as ``ssh-keygen -lf`` and ssh's prompts show it (without "SHA256:")."""
    return str(key.fingerprint(format=keys.FingerprintFormats.SHA256_BASE64)).rstrip("=")


def read_authorized_keys(path: str) -> list[keys.Key]:
    """The keys of an OpenSSH authorized_keys file; TimecoinError if it cannot be read or lists none."""
    try:
        with open(path, "rb") as f:
            found = list(readAuthorizedKeyFile(f))
    except OSError as exc:
        raise TimecoinError(f"cannot read manhole_authorized_keys {path}: {exc.strerror or exc}") from None
    if not found:
        raise TimecoinError(f"manhole_authorized_keys {path} lists no usable key (OpenSSH format, one a line)")
    return found


@implementer(IAuthorizedKeysDB)
class AnyUserKeyDB:
    """``IAuthorizedKeysDatabase`` for the manhole: every listed key logs in under any user name.

    The file is read again at each login, so removing a line revokes that key without a restart; a file
    that became unreadable lets nobody in (and says so in the log).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        read_authorized_keys(path)                  # fail now, with one line, if it is unusable

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:  # noqa: N802 - Twisted API
        try:
            return read_authorized_keys(self.path)
        except TimecoinError as exc:
            log.error("Manhole login refused: {why}", why=str(exc))
            return []


def _passwd_lines(path: str) -> list[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read().splitlines()
    except OSError as exc:
        raise TimecoinError(f"cannot read manhole_passwd {path}: {exc.strerror or exc}") from None


def _passwd_pairs(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(user, password) of each ``user:password`` line (``#`` comments and lines without a user skipped)."""
    pairs = []
    for line in lines:
        parts = line.rstrip().split(b":")
        if len(parts) >= 2 and parts[0] and not line.startswith(b"#"):
            pairs.append((parts[0], parts[1]))
    return pairs


def check_passwd(path: str) -> None:
    """The telnet passwd file must be readable and hold at least one ``user:password`` line."""
    if not _passwd_pairs(_passwd_lines(path)):
        raise TimecoinError(f"manhole_passwd {path} has no user:password line")


def read_passwd(path: str) -> list[tuple[bytes, bytes]]:
    """The (user, password) pairs of a passwd file (``user:password`` a line, ``#`` comments); [] if unreadable."""
    try:
        return _passwd_pairs(_passwd_lines(path))
    except TimecoinError as exc:
        log.error("Manhole login refused: {why}", why=str(exc))
        return []


@implementer(ICredentialsChecker)
class PasswdChecker:
    """The telnet manhole's user:password check, in constant time and slowed when wrong.

    Twisted's ``FilePasswordDB`` compares with ``==`` (its time depends on how many leading bytes match)
    and answers an unknown user at once. Here every line of the file (read at each login, so an edit
    takes effect without a restart) is compared as fixed-length digests of user and password with
    :func:`hmac.compare_digest`, and a failure is logged and answered only after ``delay`` seconds,
    without blocking the reactor, so guessing runs at one try a second per connection.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, path: str, reactor: Any, delay: float = FAILED_LOGIN_DELAY) -> None:
        self.path = path
        self.reactor = reactor
        self.delay = delay

    def requestAvatarId(self, creds: Any) -> defer.Deferred[bytes]:  # noqa: N802 - Twisted API
        user, password = digest(creds.username), digest(creds.password)
        ok = False
        for name, secret in read_passwd(self.path):     # every line compared: the time says nothing
            ok |= hmac.compare_digest(user, digest(name)) & hmac.compare_digest(password, digest(secret))
        if ok:
            return defer.succeed(creds.username)
        log.warn("Manhole: failed telnet login as {user!r}", user=creds.username[:64])
        return task.deferLater(self.reactor, self.delay, _refuse)


def _refuse() -> bytes:
    raise error.UnauthorizedLogin()
