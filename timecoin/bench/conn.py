"""A blocking JSON-RPC connection that keeps its HTTP connection alive and sends batches.

The load generator and the heights poller each own one per thread: ``http.client`` on a persistent
connection costs one request line and one reply per batch, so the client side stays cheaper than the
node's work (the generator must never be what limits a measurement).
"""
from __future__ import annotations

import base64
import http.client
import json
from typing import Any

from timecoin.rpc.clicall import Endpoint


class RPCFailure(Exception):
    """A call that got no usable reply, or an error reply to a single call."""


class Conn:
    """One keep-alive HTTP connection to one node's JSON-RPC server (not thread-safe: one per thread)."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        token = base64.b64encode(f"{endpoint.user}:{endpoint.password}".encode()).decode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}",
                        "Connection": "keep-alive"}
        self._http: http.client.HTTPConnection | None = None

    def _post(self, body: bytes) -> Any:
        """POST ``body``; one reconnect if the kept-alive connection was closed under us."""
        for attempt in range(2):
            if self._http is None:
                self._http = http.client.HTTPConnection(self.endpoint.host, self.endpoint.port, timeout=self.timeout)
            try:
                self._http.request("POST", self.endpoint.path, body, self.headers)
                reply = self._http.getresponse()
                data = reply.read()
                if reply.status == 401:
                    raise RPCFailure(f"{self.endpoint.host}:{self.endpoint.port} refused the credentials (HTTP 401)")
                return json.loads(data)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.close()
                if attempt == 1:
                    raise RPCFailure(f"no reply from {self.endpoint.host}:{self.endpoint.port}: {exc}") from None
        raise AssertionError("unreachable")

    def call(self, method: str, *params: Any) -> Any:
        """One call's result; RPCFailure for an error reply."""
        reply = self._post(json.dumps({"jsonrpc": "1.0", "id": 0, "method": method, "params": list(params)}).encode())
        if not isinstance(reply, dict):
            raise RPCFailure(f"{method}: not a JSON-RPC reply: {str(reply)[:100]}")
        if reply.get("error") is not None:
            raise RPCFailure(f"{method}: {reply['error']}")
        return reply.get("result")

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
        """One HTTP request for many calls; the replies in the calls' order (each ``{result, error, id}``)."""
        if not calls:
            return []
        body = json.dumps([{"jsonrpc": "1.0", "id": i, "method": m, "params": p}
                           for i, (m, p) in enumerate(calls)]).encode()
        return self.batch_raw(body, len(calls))

    def batch_raw(self, body: bytes, count: int) -> list[dict[str, Any]]:
        """Send a pre-encoded batch of ``count`` calls with ids 0..count-1; the replies by id."""
        replies = self._post(body)
        if not isinstance(replies, list) or len(replies) != count:
            raise RPCFailure(f"batch of {count}: unexpected reply {str(replies)[:200]}")
        replies.sort(key=lambda r: r.get("id", 0) if isinstance(r, dict) else 0)
        return replies

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
