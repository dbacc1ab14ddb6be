"""Scrape a node's /metrics over real HTTP on 127.0.0.1 and read samples out of it (metrics tests)."""
from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, ResponseDone

from timecoin.sim.loopnet import reactor

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


async def fetch(node: Any, path: str = "/metrics") -> tuple[int, bytes, dict[bytes, list[bytes]]]:
    url = f"http://127.0.0.1:{node.metrics.port}{path}".encode()
    response = await Agent(reactor).request(b"GET", url)
    body = await _read(response)
    return response.code, body, dict(response.headers.getAllRawHeaders())


class _Body(Protocol):
    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.parts.append(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted API
        if reason is None or reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def _read(response: Any) -> defer.Deferred[bytes]:
    done: defer.Deferred[bytes] = defer.Deferred()
    response.deliverBody(_Body(done))
    return done


async def scrape(node: Any) -> Samples:
    code, body, _ = await fetch(node)
    assert code == 200, body[:200]
    return parse(body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none: a counter not yet moved)."""
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == x for k, x in labels.items()))
