"""Re-exports :mod:`timecoin.sim.syncpeers` (SyncPeer implementations over stores, honest and hostile)."""
from timecoin.sim.syncpeers import StorePeer

__all__ = ["StorePeer"]
