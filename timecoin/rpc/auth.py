"""Who may call RPC: HTTP Basic credentials (cookie file or configured user) and the client-address allow list.

As bitcoind: with no ``rpc_user``/``rpc_password`` the node writes ``<datadir>/.cookie`` holding
``__cookie__:<64 hex chars>`` at each start (a fresh secret, mode 0600, written atomically) and removes
it at a clean stop; local tools read it to authenticate. Credentials are compared in constant time
(:func:`hmac.compare_digest` over SHA-256 digests, so neither a password's bytes nor its length leak
through timing: ``compare_digest`` itself returns early on a length mismatch). Loopback clients are
always allowed; others only from a network in ``rpc_allow_ip``.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable

COOKIE_FILE = ".cookie"
COOKIE_USER = "__cookie__"
REALM = b'Basic realm="jsonrpc"'


def cookie_path(datadir: str) -> str:
    return os.path.join(datadir, COOKIE_FILE)


def write_cookie(datadir: str) -> str:
    """Write a fresh cookie (0600, atomically: a reader never sees half of one); returns its password."""
    password = secrets.token_hex(32)
    path = cookie_path(datadir)
    tmp = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)                 # O_EXCL below: never write through a planted file or link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, f"{COOKIE_USER}:{password}".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return password


def remove_cookie(datadir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(cookie_path(datadir))


def read_cookie(datadir: str) -> tuple[str, str]:
    """(user, password) from the cookie file (OSError if absent, ValueError if malformed)."""
    with open(cookie_path(datadir), encoding="ascii") as f:
        user, sep, password = f.read().strip().partition(":")
    if not sep or not password:
        raise ValueError(f"{cookie_path(datadir)} is not a user:password cookie")
    return user, password


class Credentials:
    """The accepted ``user:password`` pairs; :meth:`check` reads an ``Authorization`` header."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._accepted = [digest(f"{u}:{p}".encode()) for u, p in pairs]

    def check(self, header: bytes | None) -> bool:
        """True if ``header`` is ``Basic <base64 user:password>`` of an accepted pair (constant time)."""
        if not header:
            return False
        scheme, _, encoded = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        given_digest = digest(given)
        ok = False
        for accepted in self._accepted:         # every pair compared: the time does not say which matched
            ok |= hmac.compare_digest(given_digest, accepted)
        return ok


def digest(secret: bytes) -> bytes:
    """The fixed-length (32-byte) form in which secrets are compared, so a comparison's time says nothing
    about the length of either side."""
    return hashlib.sha256(secret).digest()


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AllowList:
    """Client addresses allowed to call RPC: loopback always, plus the configured networks."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped                 # ::ffff:10.0.0.1 is 10.0.0.1 (dual-stack listeners)
        if ip.is_loopback:
            return True
        return any(ip.version == net.version and ip in net for net in self.networks)
