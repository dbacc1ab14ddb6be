"""Caps on the RPC port's open connections: in all, and from one client address.

The RPC site holds an object per open connection, and a WebSocket client keeps its connection for
hours; without a cap, one client (even one that never authenticates: the 401 comes after the request)
could open connections until the node runs out of file descriptors. Over a cap the connection is
closed at once, before a byte is read, so another client (another address) is still served. The
wrapper sees every connection to its end, WebSocket ones too (autobahn hands the transport over to
the wrapped protocol of a :class:`~twisted.protocols.policies.ProtocolWrapper`).
"""
from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

MAX_CONNECTIONS = 256               # open RPC + WebSocket connections in all
MAX_CONNECTIONS_PER_IP = 64         # ... and from one client address


class ConnectionLimit(WrappingFactory):
    """Wraps the RPC site: refuses a connection over ``max_total`` or ``max_per_ip`` (logged, sparsely)."""

    log = Logger()

    def __init__(self, wrapped: Any, max_total: int = MAX_CONNECTIONS,
                 max_per_ip: int = MAX_CONNECTIONS_PER_IP) -> None:
        super().__init__(wrapped)
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.per_ip: dict[str, int] = {}
        self.refused = 0

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted API
        host = str(getattr(addr, "host", ""))
        if sum(self.per_ip.values()) >= self.max_total or self.per_ip.get(host, 0) >= self.max_per_ip:
            self.refused += 1
            if self.refused & (self.refused - 1) == 0:      # 1st, 2nd, 4th, 8th...: a flood is not a log flood
                self.log.warn("RPC: refused a connection from {client}: {open} open, {mine} from it (caps: "
                              "{total} in all, {per_ip} per address); {n} refused so far", client=host,
                              open=sum(self.per_ip.values()), mine=self.per_ip.get(host, 0),
                              total=self.max_total, per_ip=self.max_per_ip, n=self.refused)
            return None                                     # Twisted closes the socket
        proto: Any = super().buildProtocol(addr)
        proto.cap_host = host
        self.per_ip[host] = self.per_ip.get(host, 0) + 1
        return proto

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:  # noqa: N802 - Twisted API
        super().unregisterProtocol(p)
        host = getattr(p, "cap_host", None)
        if host is None:
            return
        left = self.per_ip.get(host, 1) - 1
        if left > 0:
            self.per_ip[host] = left
        else:
            self.per_ip.pop(host, None)
