"""Catching up with the network: peers, the sync manager and batch application of certified blocks."""
