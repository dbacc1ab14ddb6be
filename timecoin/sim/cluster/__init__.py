"""Whole nodes in a simulated world (SPEC §9, docs/simulation.md): the production service tree of every
node on a simulated reactor and network, every run replayable from one seed.

``reactor`` (time and the per-node reactor), ``network`` (links, partitions, TCP-like connections),
``channel`` (the peer identity beside the stream, in place of TLS), ``cluster`` (nodes: start, crash,
restart, pause, skew, full disk).
"""
