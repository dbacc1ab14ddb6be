"""Re-exports :mod:`timecoin.sim.chaingen` (the certified-chain builder tests and benchmarks share)."""
from timecoin.sim.chaingen import (
    BLOCK_INTERVAL_MS,
    DAY_MS,
    FUNDED_BALANCE,
    ChainBuilder,
    ChainSpec,
    build_chain,
    certify,
    initialize,
    make_genesis,
    make_keys,
)

__all__ = ["BLOCK_INTERVAL_MS", "DAY_MS", "FUNDED_BALANCE", "ChainBuilder", "ChainSpec", "build_chain", "certify",
           "initialize", "make_genesis", "make_keys"]
