"""Timecoin: a proof-of-stake blockchain node with BFT finality, on Twisted."""

__version__ = "0.1.0"
