"""Import every handler module so that all RPC methods are in :data:`timecoin.rpc.registry.TABLE`."""
from __future__ import annotations

from timecoin.rpc import network, state  # noqa: F401 - registers their methods
from timecoin.rpc.registry import TABLE

__all__ = ["TABLE"]
