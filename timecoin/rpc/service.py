"""The RPC service in the node's service tree: listens on ``rpc_host:rpc_port``, owns the cookie file.

Started after the store (handlers read it) and stopped before it. ``port`` is the bound port (tests
run with ``rpc_port = 0``). A port that cannot be bound is logged and the node runs without RPC, as the
P2P listener does: a second devnet on one machine must not stop the first's tests. ``stop`` (the RPC
method) calls :meth:`request_stop`, which runs ``on_stop`` on the next reactor turn, after the reply is
written: the node's own services by default, ``reactor.stop`` under twistd (set by ``makeService``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from timecoin.rpc.auth import COOKIE_USER, AllowList, Credentials, cookie_path, remove_cookie, write_cookie
from timecoin.rpc.limits import ConnectionLimit
from timecoin.rpc.methods import TABLE
from timecoin.rpc.server import RPCResource, RPCSite


class RPCService(service.Service):
    name = "rpc"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, node: Any, reactor: Any) -> None:
        self.node = node
        self.reactor = reactor
        self.port: int | None = None            # the bound TCP port once listening
        self.site: RPCSite | None = None
        self.resource: RPCResource | None = None
        self.limit: ConnectionLimit | None = None   # the connection caps around the site
        self.on_stop: Callable[[], Any] = self._stop_node
        self._listener: Any = None
        self._cookie = False
        self.ws_factory: Any = None             # /ws (timecoin.notify) when the node has a notify service

    def _mount_ws(self, rpc: RPCResource) -> Any:
        """The site's root: ``/ws`` to the notifications WebSocket (same credentials and allow list), the
        rest to the JSON-RPC resource."""
        notify = self.node.namedServices.get("notify") if hasattr(self.node, "namedServices") else None
        if notify is None:
            return rpc
        from timecoin.notify.ws import WSRoot, ws_resource
        ws, self.ws_factory = ws_resource(notify.hub, rpc.credentials, rpc.allow)
        return WSRoot(rpc, ws)

    def startService(self) -> None:  # noqa: N802 - Twisted API
        super().startService()
        cfg = self.node.config
        if cfg.rpc_user:
            pairs = [(cfg.rpc_user, cfg.rpc_password)]
            how = f"user {cfg.rpc_user}"
        else:
            pairs = [(COOKIE_USER, write_cookie(cfg.datadir))]
            self._cookie = True
            how = f"cookie {cookie_path(cfg.datadir)}"
        self.resource = RPCResource(self.node, self.reactor, TABLE, Credentials(pairs), AllowList(cfg.rpc_allow_ip),
                                    self.reactor.seconds(), cfg.rpc_max_batch, cfg.rpc_max_concurrent)
        self.site = RPCSite(self._mount_ws(self.resource), cfg.rpc_max_body_bytes)
        try:
            self.limit = ConnectionLimit(self.site)
            self._listener = self.reactor.listenTCP(cfg.rpc_port, self.limit, interface=cfg.rpc_host)
        except CannotListenError as exc:
            self.log.error("Cannot listen for JSON-RPC on {host}:{port}: {why}; running without RPC",
                           host=cfg.rpc_host, port=cfg.rpc_port, why=str(exc.socketError))
            self._drop_cookie()
            return
        self.port = self._listener.getHost().port
        self.log.info("JSON-RPC on http://{host}:{port}/ (auth: {how})", host=cfg.rpc_host, port=self.port, how=how)

    def stopService(self) -> defer.Deferred[None] | None:  # noqa: N802 - Twisted API
        super().stopService()
        self._drop_cookie()
        listener, self._listener = self._listener, None
        if self.site is not None:
            self.site.close_all()
        if self.ws_factory is not None:
            self.ws_factory.close_all()
        if listener is None:
            return None
        return defer.maybeDeferred(listener.stopListening)

    def _drop_cookie(self) -> None:
        if self._cookie:
            remove_cookie(self.node.config.datadir)
            self._cookie = False

    def request_stop(self, client: str) -> None:
        """Stop the node once the ``stop`` reply is on its way."""
        self.log.warn("Timecoin server stopping (RPC stop from {client})", client=client or "?")
        self.reactor.callLater(0, self.on_stop)

    def _stop_node(self) -> Any:
        if self.node.running:
            return self.node.stopService()
        return None
