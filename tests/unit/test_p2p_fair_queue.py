"""The P2P input queue: fair between peers, and no reactor turn for a lone frame (issue 15)."""
from __future__ import annotations

import collections

from twisted.internet.task import Clock

from timecoin.p2p.service import P2PService


class FakeConn:
    def __init__(self, name: str, frames: int, log: list[str]) -> None:
        self.name, self.frames, self.log = name, frames, log
        self.inbox = [None] * frames
        self.peer_id = name

    def process_one(self) -> bool:
        self.inbox.pop()
        self.log.append(self.name)
        return bool(self.inbox)


def _service() -> tuple[P2PService, Clock]:
    svc = P2PService.__new__(P2PService)
    clock = Clock()
    svc.reactor = clock
    svc._queued, svc._ready = set(), collections.deque()
    svc._drain_call, svc._draining = None, False
    return svc, clock


def test_a_lone_frame_at_an_idle_node_is_handled_at_once() -> None:
    svc, clock = _service()
    log: list[str] = []
    svc.schedule(FakeConn("a", 1, log))
    assert log == ["a"] and not clock.getDelayedCalls()


def test_only_one_frame_is_handled_at_once_and_the_rest_wait_their_turn() -> None:
    svc, clock = _service()
    log: list[str] = []
    svc.schedule(FakeConn("a", 3, log))
    assert log == ["a"] and len(clock.getDelayedCalls()) == 1
    svc.schedule(FakeConn("b", 2, log))                 # another peer's frames: queued, not handled now
    assert log == ["a"]
    clock.advance(0)
    assert log == ["a", "a", "b", "a", "b"]             # round robin in the next turn


def test_a_frame_queued_while_handling_waits_for_the_next_turn() -> None:
    svc, clock = _service()
    log: list[str] = []
    late = FakeConn("late", 1, log)

    class Handler(FakeConn):
        def process_one(self) -> bool:
            svc.schedule(late)                          # e.g. a reply arriving from inside a handler
            return super().process_one()

    svc.schedule(Handler("h", 1, log))
    assert log == ["h"] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert log == ["h", "late"]
