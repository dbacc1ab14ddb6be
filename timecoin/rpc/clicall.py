"""``timecoin rpc``: call a node's JSON-RPC from the shell, the way ``bitcoin-cli`` does.

* **Where**: ``--rpc-url`` (with ``--rpc-user``/``--rpc-password``), else the node's config (``--config``,
  ``--datadir``, ``--network``): ``http://rpc_host:rpc_port/`` with ``rpc_user``/``rpc_password`` if the
  config sets them, else the cookie ``<datadir>/.cookie`` the running node writes.
* **Arguments**: positional, or ``-named`` ``key=value`` pairs. Each value is typed by the method table
  when the method is known (a ``str``/``hex`` parameter stays a string; others are read as JSON, so
  ``5`` is a number and ``true`` a boolean); for a method this build does not know, JSON when it parses
  (but a number beyond 64 bits, such as a hash of digits only, stays a string), else a string.
* **Output**: a string result is printed as is, anything else as indented JSON, ``null`` as nothing.
* **Exit codes**: 0 on success; an RPC error prints ``error code: N`` and ``error message:`` with the
  message to stderr and exits with ``abs(N) % 256`` (never 0), as bitcoin-cli's exit status does; no
  connection, refused credentials or a reply that is not JSON-RPC print one ``error: ...`` line and exit 1.

It is a standalone synchronous client (``http.client``): a shell command needs no event loop.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from timecoin.client import ClientError as CallError  # no usable answer: exit 1 with its line
from timecoin.client import RPCError as RPCCallError  # the node's error reply: code and message
from timecoin.client import parse_reply
from timecoin.config import NodeConfig

COOKIE_FILE = ".cookie"
COOKIE_USER = "__cookie__"
TIMEOUT = 900.0                       # seconds: long polls (waitfornewblock) may take a while
EXIT_FAILURE = 1
CLI_REQUEST_ID = "timecoin-cli"
INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    password: str
    path: str = "/"


def endpoint_from(config: NodeConfig | None, url: str | None, user: str | None, password: str | None) -> Endpoint:
    """Where and as whom to call (see the module docstring); CallError if credentials cannot be found."""
    if url:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise CallError(f"--rpc-url must be http://HOST:PORT/, not {url!r}")
        try:
            port = parts.port or 80
        except ValueError:
            raise CallError(f"--rpc-url has a bad port: {url!r}") from None
        host, path = parts.hostname, parts.path or "/"
    else:
        if config is None:
            raise CallError("give --rpc-url, or --datadir/--config of the node")
        host, port, path = config.rpc_host, config.rpc_port, "/"
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
    config_user = getattr(config, "rpc_user", None) if config is not None else None
    if user is None and config_user:
        user, password = str(config_user), str(getattr(config, "rpc_password", "") or "")
    if user is None:
        if config is None:
            raise CallError("give --rpc-user and --rpc-password with --rpc-url (or --datadir for the cookie)")
        user, password = read_cookie(config.datadir)
    return Endpoint(host, port, user, password or "", path)


def read_cookie(datadir: str) -> tuple[str, str]:
    path = os.path.join(datadir, COOKIE_FILE)
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise CallError(f"no cookie file {path}: is the node running (or set rpc_user/rpc_password)?") from None
    except OSError as exc:
        raise CallError(f"cannot read {path}: {exc.strerror or exc}") from None
    user, sep, password = text.partition(":")
    if not sep or not password:
        raise CallError(f"{path} is not a cookie file (user:password)")
    return user, password


def convert_args(method: str, args: list[str], named: bool) -> list[Any] | dict[str, Any]:
    """Positional or ``key=value`` arguments, typed as the module docstring says."""
    from timecoin.rpc.methods import TABLE

    spec = TABLE.methods.get(method)
    types = {p.name: p.type for p in spec.params} if spec is not None else {}
    order = [p.name for p in spec.params] if spec is not None else []
    if named:
        out: dict[str, Any] = {}
        for arg in args:
            key, sep, value = arg.partition("=")
            if not sep or not key:
                raise CallError(f"-named arguments must be key=value, not {arg!r}")
            out[key] = _typed(value, types.get(key))
        return out
    return [_typed(value, types.get(order[i]) if i < len(order) else None) for i, value in enumerate(args)]


def _typed(value: str, kind: str | None) -> Any:
    if kind in ("str", "hex"):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        if kind is None or kind == "any":
            return value
        raise CallError(f"{value!r} is not valid JSON for a {kind} parameter") from None
    if kind in (None, "any") and isinstance(parsed, int) and not isinstance(parsed, bool) \
            and abs(parsed) > INT64_MAX:
        return value                  # no integer parameter is that large: a hash made only of digits
    return parsed


def call(endpoint: Endpoint, method: str, params: list[Any] | dict[str, Any], timeout: float = TIMEOUT) -> Any:
    """One JSON-RPC 1.0 call: the result, or RPCCallError for an error reply; CallError for anything else
    (the reply is read by ``timecoin.client.parse_reply``, the same rules as the library's)."""
    body = json.dumps({"jsonrpc": "1.0", "id": CLI_REQUEST_ID, "method": method, "params": params}).encode()
    token = base64.b64encode(f"{endpoint.user}:{endpoint.password}".encode()).decode()
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
    try:
        conn.request("POST", endpoint.path, body, {"Content-Type": "application/json",
                                                   "Authorization": f"Basic {token}"})
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise CallError(f"could not connect to the server {endpoint.host}:{endpoint.port} ({exc}): is the node "
                        "running, and is that its RPC port?") from None
    finally:
        conn.close()
    return parse_reply(response.status, data, CLI_REQUEST_ID)


def render(result: Any) -> str:
    if result is None:
        return ""
    if isinstance(result, str):
        return result
    return json.dumps(result, indent=2)


def run(endpoint: Endpoint, method: str, args: list[str], named: bool) -> int:
    """Call and print as bitcoin-cli does; returns the exit code."""
    try:
        result = call(endpoint, method, convert_args(method, args, named))
    except RPCCallError as exc:
        sys.stderr.write(f"error code: {exc.code}\nerror message:\n{exc.message}\n")
        return abs(exc.code) % 256 or EXIT_FAILURE
    except CallError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_FAILURE
    text = render(result)
    if text:
        print(text)
    return 0
