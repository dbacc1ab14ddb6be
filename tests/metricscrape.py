"""Scrape a node's /metrics over real HTTP on 127.0.0.1 and read samples out of it (metrics tests)."""
from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.web.client import Agent, readBody

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
    body = await readBody(response)
    return response.code, body, dict(response.headers.getAllRawHeaders())


async def scrape(node: Any) -> Samples:
    code, body, _ = await fetch(node)
    assert code == 200, body[:200]
    return parse(body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none: a counter not yet moved)."""
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == x for k, x in labels.items()))
