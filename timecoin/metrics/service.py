"""The metrics listener in the node's service tree: ``/metrics`` on ``metrics_host:metrics_port``.

One ``CollectorRegistry`` per node (many nodes share a test process, so never the global default), with
the library's ProcessCollector (RSS, open fds, CPU), the event metrics and the scrape-time collector.
The page is prometheus_client's own Twisted resource (``MetricsResource``). A port that cannot be bound
is one error line and the node runs on without metrics, as it does without RPC. Loopback by default
(``metrics_host = 127.0.0.1``): there is no authentication, so exposing it is the operator's choice.
"""
from __future__ import annotations

from typing import Any, cast

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from timecoin.metrics.collector import NodeCollector
from timecoin.metrics.events import ConsensusEvents


class _Root(Resource):
    """Only /metrics: anything else is a plain 404."""

    def getChild(self, path: bytes, request: Any) -> Any:  # noqa: N802 - Twisted API
        return notFound()


class _QuietSite(Site):
    """No access-log line per scrape (Prometheus scrapes every few seconds)."""

    def log(self, request: Any) -> None:
        return None


def make_registry(node: Any) -> tuple[CollectorRegistry, ConsensusEvents]:
    """A fresh registry holding every metric of ``node`` (process, events, scrape-time)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    events = ConsensusEvents(registry)
    registry.register(NodeCollector(node))
    return registry, events


class MetricsService(service.Service):
    name = "metrics"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, node: Any, reactor: Any) -> None:
        self.node = node
        self.reactor = reactor
        self.registry, self.events = make_registry(node)
        if node.consensus is not None:
            self.events.hook(node.consensus)
        self.port: int | None = None            # the bound TCP port once listening
        self.host: str | None = None            # ... and the bound address
        self._listener: Any = None

    def startService(self) -> None:  # noqa: N802 - Twisted API
        super().startService()
        cfg = self.node.config
        root = _Root()
        root.putChild(b"metrics", cast(IResource, MetricsResource(registry=self.registry)))  # WSGIResource
        site = _QuietSite(root)
        site.displayTracebacks = False
        try:
            self._listener = self.reactor.listenTCP(cfg.metrics_port, site, interface=cfg.metrics_host)
        except CannotListenError as exc:
            self.log.error("Cannot listen for metrics on {host}:{port}: {why}; running without metrics",
                           host=cfg.metrics_host, port=cfg.metrics_port, why=str(exc.socketError))
            return
        self.host, self.port = self._listener.getHost().host, self._listener.getHost().port
        self.log.info("Prometheus metrics on http://{host}:{port}/metrics", host=cfg.metrics_host, port=self.port)

    def stopService(self) -> defer.Deferred[None] | None:  # noqa: N802 - Twisted API
        super().stopService()
        listener, self._listener = self._listener, None
        self.host = self.port = None
        if listener is None:
            return None
        return defer.maybeDeferred(listener.stopListening)
