"""Import every handler module so that all RPC methods are in :data:`timecoin.rpc.registry.TABLE`."""
from __future__ import annotations

from timecoin.rpc import core  # noqa: F401 - registers help, uptime, stop, the chain tip, health
from timecoin.rpc.registry import TABLE

__all__ = ["TABLE"]
