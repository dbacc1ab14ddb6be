"""Import every handler module so that all RPC methods are in :data:`timecoin.rpc.registry.TABLE`."""
from __future__ import annotations

import timecoin.rpc.chain  # noqa: F401
import timecoin.rpc.core  # noqa: F401
import timecoin.rpc.mempool  # noqa: F401
import timecoin.rpc.network  # noqa: F401
import timecoin.rpc.proofs  # noqa: F401  (getfinalityproof)
import timecoin.rpc.state  # noqa: F401
from timecoin.rpc.registry import TABLE

__all__ = ["TABLE"]
