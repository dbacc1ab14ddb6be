"""The benchmark suite's common parts: a figure, the registry of parts, and how figures are printed.

A *part* is an async function ``run(quick: bool) -> list[Figure]`` registered under a name; ``python -m
benchmarks`` runs them all (or ``--only NAME``) on the real reactor and prints one line per figure::

    name: value unit (baseline: value unit, ratio: x)

or, with ``--json``, one JSON list of objects with ``name, value, unit, baseline, baseline_unit, ratio,
target, met``. Every baseline is measured in the same run as its figure, on the same machine, so the
ratio means something where the absolute figure would not (machines are noisy). ``target`` is a
human-readable bound on the ratio (or the value, when there is no baseline) and ``met`` says whether this
run met it (None: a figure without a target).
"""
from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

Part = Callable[[bool], Awaitable[list["Figure"]]]


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_unit: str | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None

    def line(self) -> str:
        text = f"{self.name}: {_num(self.value)} {self.unit}"
        if self.baseline is not None:
            text += f" (baseline: {_num(self.baseline)} {self.baseline_unit}, ratio: {_num(self.ratio)})"
        if self.target is not None:
            text += f" [target {self.target}: {'met' if self.met else 'NOT met'}]"
        return text

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ratio_figure(name: str, value: float, unit: str, baseline: float, baseline_unit: str,
                 max_ratio: float | None = None, min_ratio: float | None = None) -> Figure:
    """A figure with its baseline; the target is ``ratio <= max_ratio`` and/or ``ratio >= min_ratio``."""
    ratio = value / baseline if baseline else math.inf
    fig = Figure(name, value, unit, baseline, baseline_unit, round(ratio, 3))
    _bound(fig, ratio, "ratio", "", min_ratio, max_ratio)
    return fig


def value_figure(name: str, value: float, unit: str, at_least: float | None = None,
                 at_most: float | None = None) -> Figure:
    """A figure without a baseline whose target bounds the value itself (e.g. ``>= 70 heights/s``)."""
    fig = Figure(name, value, unit)
    _bound(fig, value, "", f" {unit}", at_least, at_most)
    return fig


def _bound(fig: Figure, x: float, label: str, unit: str, low: float | None, high: float | None) -> None:
    """Set ``fig``'s target text and whether ``x`` met it (both bounds when both are given)."""
    prefix = f"{label} " if label else ""
    bounds = [f"{prefix}{op} {limit:g}{unit}" for op, limit in ((">=", low), ("<=", high)) if limit is not None]
    if bounds:
        fig.target = " and ".join(bounds)
        fig.met = (low is None or x >= low) and (high is None or x <= high)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.3f}" if abs(x) < 100 else f"{x:,.1f}"
    return f"{int(x):,}"


PARTS: dict[str, str] = {
    # name -> "module:function" (imported only when run, so one part's imports never slow another)
    "admission": "benchmarks.admission:run",
    "apply": "benchmarks.apply:run",
    "baselines": "benchmarks.baselines:run",
    "bignode": "benchmarks.bignode:run",
    "codec": "benchmarks.codec:run",
    "hostile": "benchmarks.hostile:run",
    "ingest": "benchmarks.ingest:run",
    "load": "benchmarks.load:run",
    "p2p": "benchmarks.p2p:run",
    "rpc": "benchmarks.rpc:run",
    "sim": "benchmarks.sim:run",
    "sync": "benchmarks.sync:run",
    "testnet": "benchmarks.testnet:run",
    "tls": "benchmarks.baseline_tls:run",
}
