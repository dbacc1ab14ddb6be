"""Hostile RPC input without a network: JSON that is not strict, credentials compared without leaking
their bytes or length, slowloris clients against the per-request deadline (on a task.Clock), and the
connection caps. The same attacks over real sockets: tests/integration/test_rpc_hostile.py."""
from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web import resource

import timecoin.rpc.auth as rpc_auth
from timecoin.rpc.auth import AllowList, Credentials
from timecoin.rpc.limits import ConnectionLimit
from timecoin.rpc.registry import MethodTable
from timecoin.rpc.server import REQUEST_DEADLINE, RPCResource, RPCSite, _decode

DEEP = 100_000


# -- JSON that is not strict JSON: one ValueError (a -32700 reply), never a traceback or a CPU burn ---------
@pytest.mark.parametrize("body", [
    b"[" * DEEP + b"]" * DEEP,                      # well-formed but deeper than the parser's recursion limit
    b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    b"1e999999", b"-1e999999", b'{"method": "getblockhash", "params": [1e400], "id": 1}',
    b"9" * 100_000,                                 # an integer past Python's 4300-digit int-str limit
    b'{"id": ' + b"1" * 50_000 + b"}",
    b"NaN", b"-Infinity", b'[Infinity]',
    b'{"method": "getblockcount"', b"\xff\xfe{}", b'"\xed\xa0\x80"',
])
def test_non_strict_json_is_a_value_error_quickly(body: bytes) -> None:
    t0 = time.monotonic()
    with pytest.raises(ValueError):
        _decode(body)
    assert time.monotonic() - t0 < 2.0, "decoding hostile JSON took seconds"


def test_big_but_finite_numbers_still_decode() -> None:
    assert _decode(b"[1e308, -1e308, 1.5, " + b"9" * 4000 + b"]")[:3] == [1e308, -1e308, 1.5]


# -- credentials: fixed-length digests through compare_digest, for every accepted pair ---------------------
def basic(text: bytes) -> bytes:
    return b"Basic " + base64.b64encode(text)


SECRET = b"a" * 64


@pytest.mark.parametrize("given", [
    b"__cookie__:" + SECRET,                        # right
    b"__cookie__:" + b"b" + SECRET[1:],             # wrong in the first byte
    b"__cookie__:" + SECRET[:-1] + b"b",            # wrong in the last byte
    b"__cookie__:" + SECRET[:10],                   # shorter
    b"__cookie__:" + SECRET * 4,                    # longer
    b"x:",                                          # wrong user, empty password
])
def test_every_credential_check_compares_fixed_length_digests(given: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = rpc_auth.hmac.compare_digest

    def record(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(rpc_auth.hmac, "compare_digest", record)
    creds = Credentials([("__cookie__", SECRET.decode()), ("alice", "pw")])
    assert creds.check(basic(given)) is (given == b"__cookie__:" + SECRET)
    # Both accepted pairs compared (the time does not say which matched), each as two 32-byte digests:
    # compare_digest returns at once on a length mismatch, so raw secrets would leak their length.
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)
    assert all(given not in (a, b) and SECRET not in a + b for a, b in calls)


# -- slowloris against the per-request deadline -----------------------------------------------------------
class World:
    """An RPC site on a task.Clock with one method, and a way to open a connection to it."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        table = MethodTable()

        @table.method("ping", summary="pong", result="pong", group="Test")
        def ping(ctx: Any) -> str:
            return "pong"

        self.resource = RPCResource(None, self.clock, table, Credentials([("u", "p")]), AllowList([]), 0.0, 100, 4)
        self.site = RPCSite(self.resource, 1 << 16, reactor=self.clock)

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        return proto, transport


BODY = json.dumps({"method": "ping", "id": 1}).encode()
REQUEST = (b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic(b"u:p") + b"\r\nContent-Type: application/json"
           b"\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


def dribble(world: World, proto: Any, transport: StringTransport, data: bytes, seconds: float) -> float:
    """Send ``data`` one byte a second until the server hangs up; the seconds it took (or ``seconds``)."""
    for i in range(int(seconds)):                   # bounded
        if transport.disconnecting:
            return float(i)
        proto.dataReceived(data[i % len(data):i % len(data) + 1])
        world.clock.advance(1.0)
    return seconds


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_request_sent_one_byte_a_second_is_dropped_at_the_deadline(part: str) -> None:
    world = World()
    proto, transport = world.connect()
    head, _, _ = REQUEST.partition(b"\r\n\r\n")
    if part == "body":                              # whole headers announcing a large body, then a trickle
        big = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n"
        proto.dataReceived(big)
        took = dribble(world, proto, transport, b" ", 4 * REQUEST_DEADLINE)
    else:
        took = dribble(world, proto, transport, head, 4 * REQUEST_DEADLINE)
    # Twisted's own idle timeout (120 s) restarts at every byte: only the deadline ends this.
    assert took <= REQUEST_DEADLINE + 1, f"a slow {part} sender kept its connection for {took} s"
    assert transport.value().endswith(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\n"
                                      b"Connection: close\r\nContent-Length: 0\r\n\r\n")


def test_a_slow_second_request_on_a_kept_alive_connection_gets_its_own_deadline() -> None:
    """A client that is prompt once, then dribbles its next request on the same connection: the deadline
    is armed again at the next request's first byte (else only Twisted's idle timeout, reset by every
    byte, would apply, and a slowloris would only need to be polite once)."""
    world = World()
    proto, transport = world.connect()
    proto.dataReceived(REQUEST)
    assert b"200 OK" in transport.value()
    transport.clear()
    head, _, _ = REQUEST.partition(b"\r\n\r\n")
    took = dribble(world, proto, transport, head, 4 * REQUEST_DEADLINE)
    assert took <= REQUEST_DEADLINE + 1, f"a slow second request kept its connection for {took} s"
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout")


def test_a_silent_connection_is_dropped_at_the_deadline_a_prompt_one_is_served_and_kept() -> None:
    world = World()
    silent, silent_t = world.connect()
    prompt, prompt_t = world.connect()
    prompt.dataReceived(REQUEST)
    assert b"200 OK" in prompt_t.value() and b'"pong"' in prompt_t.value()
    world.clock.advance(REQUEST_DEADLINE + 1)
    assert silent_t.disconnecting and b"408" in silent_t.value()
    silent.connectionLost(None)                     # what the reactor does once the socket is closed
    assert not prompt_t.disconnecting              # a kept-alive idle client: Twisted's idle timeout applies
    prompt_t.clear()
    for _ in range(3):                              # later requests on it each get a fresh deadline
        prompt.dataReceived(REQUEST[:20])
        world.clock.advance(REQUEST_DEADLINE / 2)
        prompt.dataReceived(REQUEST[20:])
        world.clock.advance(REQUEST_DEADLINE / 2 + 1)
    assert not prompt_t.disconnecting and prompt_t.value().count(b"200 OK") == 3
    prompt.dataReceived(REQUEST[:20])
    prompt.connectionLost(None)
    assert all(c.func.__name__ != "_too_slow" for c in world.clock.getDelayedCalls()), "a deadline outlived its client"


# -- connection caps ---------------------------------------------------------------------------------------
def test_connection_caps_per_address_and_in_all() -> None:
    limit = ConnectionLimit(RPCSite(resource.Resource(), 1024), max_total=5, max_per_ip=3)
    mine = [limit.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1000 + i)) for i in range(4)]
    assert [p is not None for p in mine] == [True, True, True, False]
    others = [limit.buildProtocol(IPv4Address("TCP", f"127.0.0.{3 + i}", 1)) for i in range(3)]
    assert [p is not None for p in others] == [True, True, False]          # 5 in all
    for p in mine[:3] + others[:2]:
        p.makeConnection(StringTransport())
    mine[0].connectionLost(None)
    assert limit.buildProtocol(IPv4Address("TCP", "127.0.0.2", 2000)) is not None
    assert limit.per_ip == {"127.0.0.2": 3, "127.0.0.3": 1, "127.0.0.4": 1} and limit.refused == 2
