"""The verdict of a chaos run: one chain on every node, and nothing a node reported finalized was lost.

Pure functions over what the runner read by JSON-RPC, so the checker itself is tested on crafted chains
(a diverging node, a vanished block) and can be seen to fail. Every stored block is final (SPEC §4: it is
stored with its commit certificate), so a height a node reported is a height it finalized.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO

MAX_LINES = 10        # problems printed in full; the rest are counted


@dataclass(frozen=True)
class Sighting:
    """A node said, at ``at`` seconds into the run, that ``height`` is finalized with ``hash``."""

    at: float
    node: str
    height: int
    hash: str


def check_chains(chains: Mapping[str, Mapping[int, str]], sightings: Iterable[Sighting]) -> list[str]:
    """Problems, empty if the run passed.

    ``chains`` is every node's final chain, height -> hash for 1..its tip. Agreement: at every height two
    or more nodes hold, they hold one hash. Durability: every sighting during the run is held, with the
    same hash, by every node at the end (a node below that height lost it, or never caught up).
    """
    problems: list[str] = []
    if not chains:
        return ["no node answered: nothing to check"]
    for name, chain in sorted(chains.items()):
        tip = max(chain, default=0)
        missing = [h for h in range(1, tip + 1) if h not in chain]
        if missing:
            problems.append(f"{name} has no hash for height(s) {missing[:5]} below its tip {tip}")
    top = max(max(c, default=0) for c in chains.values())
    for height in range(1, top + 1):
        held = {name: c[height] for name, c in sorted(chains.items()) if height in c}
        if len(set(held.values())) > 1:
            problems.append(f"chains diverge at height {height}: "
                            + ", ".join(f"{n} {h[:16]}" for n, h in held.items()))
    for s in sorted(set(sightings), key=lambda s: (s.height, s.at, s.node)):
        for name, chain in sorted(chains.items()):
            now = chain.get(s.height)
            if now is None:
                problems.append(f"finalized block lost: {s.node} reported height {s.height} ({s.hash[:16]}) "
                                f"at t={s.at:.2f}s; {name} ends at height {max(chain, default=0)}")
            elif now != s.hash:
                problems.append(f"finalized block lost: {s.node} reported height {s.height} = {s.hash[:16]} "
                                f"at t={s.at:.2f}s; {name} now holds {now[:16]}")
    return problems


def verdict(problems: list[str], common: int, nodes: int, sightings: int, out: IO[str]) -> int:
    """Print the result (one line, then the problems) and return the exit status: 0 passed, 1 failed."""
    if not problems:
        out.write(f"chaos: PASS: {nodes} nodes hold one chain through height {common}; all {sightings} "
                  "finalized tips read during the run are still there with the same hash\n")
        out.flush()
        return 0
    out.write(f"chaos: FAIL: {len(problems)} problem(s)\n")
    for line in problems[:MAX_LINES]:
        out.write(f"  {line}\n")
    if len(problems) > MAX_LINES:
        out.write(f"  ... and {len(problems) - MAX_LINES} more\n")
    out.flush()
    return 1
