"""Re-exports :mod:`timecoin.sim.syncpeers` (SyncPeer implementations over stores, honest and hostile)."""
from timecoin.sim.syncpeers import (
    PacedPeer,
    SimSyncer,
    SlowLiar,
    StorePeer,
    SybilPeer,
    TimedPeer,
    Withholder,
    liar_sync_ratio,
    made_up_hash,
)

__all__ = ["PacedPeer", "SimSyncer", "SlowLiar", "StorePeer", "SybilPeer", "TimedPeer", "Withholder", "liar_sync_ratio",
           "made_up_hash"]
