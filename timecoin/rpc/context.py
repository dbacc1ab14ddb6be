"""What an RPC handler is given: the node, the reactor, when the RPC service started, and who is asking."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from timecoin.rpc.errors import IN_WARMUP, RPCError


@dataclass
class RPCContext:
    node: Any                    # timecoin.node.Node
    reactor: Any                 # IReactorTime (and more): long polls schedule on it
    started_at: float            # reactor seconds when the RPC service started (uptime)
    client: str = ""             # the caller's address (logs, per-client caps)

    @property
    def store(self) -> Any:
        """The open store; RPCError(-28 warming up) while the node is starting or stopping."""
        store = self.node.store
        if store is None:
            raise RPCError(IN_WARMUP, "Node is starting or stopping: the store is not open")
        return store

    def now(self) -> float:
        return float(self.reactor.seconds())
