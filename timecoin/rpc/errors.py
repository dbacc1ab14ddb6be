"""JSON-RPC error codes: the protocol's own and bitcoind's application codes, with one exception type.

Handlers raise :class:`RPCError`; the server turns it into the reply's ``error`` object. Anything else a
handler raises is an internal error (-32603): logged with its traceback on the node, never sent.
"""
from __future__ import annotations

from typing import Any

# JSON-RPC 2.0
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# bitcoind's application codes (src/rpc/protocol.h) where they fit
MISC_ERROR = -1
TYPE_ERROR = -3
INVALID_ADDRESS_OR_KEY = -5          # not found: block, tx, account
INVALID_PARAMETER = -8
DESERIALIZATION_ERROR = -22          # a raw tx or block that does not decode
VERIFY_ERROR = -25                   # tx rejected by the chain's rules
VERIFY_REJECTED = -26                # tx rejected by the mempool's policy
VERIFY_ALREADY_IN_CHAIN = -27
IN_WARMUP = -28
CLIENT_NODE_ALREADY_ADDED = -23
CLIENT_NODE_NOT_ADDED = -24
CLIENT_NODE_NOT_CONNECTED = -29
CLIENT_INVALID_IP_OR_SUBNET = -30


class RPCError(Exception):
    """An error reply: ``code`` and ``message`` as JSON-RPC sends them, ``data`` optional."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out
