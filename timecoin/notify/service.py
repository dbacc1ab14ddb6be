"""The notifications service: starts the hub on the open store, feeds it and ``blocknotify`` from commits.

It sits after sync and before RPC in the service tree: the RPC service mounts ``/ws`` on its site with
:attr:`hub` (``node.namedServices["notify"]``). Stopping it ends every subscription.
"""
from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.logger import Logger

from timecoin.notify.blocknotify import BlockNotify
from timecoin.notify.hub import Hub


class NotifyService(service.Service):
    name = "notify"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, node: Any, reactor: Any) -> None:
        self.node = node
        self.reactor = reactor
        self.hub = Hub(node, reactor)
        self.blocknotify: BlockNotify | None = None
        self._listening = False

    def startService(self) -> None:  # noqa: N802 - Twisted API
        super().startService()
        self.hub.start()
        command = getattr(self.node.config, "blocknotify", "")
        if command:
            try:
                self.blocknotify = BlockNotify(self.reactor, command)
            except ValueError as exc:
                self.log.error("blocknotify {cmd!r} is not a command line ({why}); not running it",
                               cmd=command, why=str(exc))
        listeners = self.node.consensus.on_commit if self.node.consensus is not None else None
        if listeners is not None:
            listeners.append(self.on_commit)
            self._listening = True

    def stopService(self) -> None:  # noqa: N802 - Twisted API
        super().stopService()
        if self._listening and self.on_commit in self.node.consensus.on_commit:
            self.node.consensus.on_commit.remove(self.on_commit)
        self._listening = False
        self.hub.stop()

    def on_commit(self, block: Any) -> None:
        before = self.hub.height
        self.hub.on_commit(block)
        if self.blocknotify is not None and before is not None and self.hub.height is not None:
            for height in range(before + 1, self.hub.height + 1):
                h = block.hash if block.height == height else self.node.store.block_hash_at(height)
                if h is not None:
                    self.blocknotify.notify(h.hex())
