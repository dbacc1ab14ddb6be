"""The simulated world (SPEC §9): real consensus engines, a simulated clock, an adversarial network.

N validators run in one process, each a real stack: ``MemoryStore`` + ``ChainApp`` + ``Engine``, honest
ones signing through the ``PrivValidator`` guard, Byzantine ones with their bare key. Time is a
priority queue (``world.Clock``): nothing sleeps and nothing reads the wall clock, and every random
choice comes from one ``random.Random(seed)``, so a seed *is* a test case: the same seed replays the
same run, message for message.

The network (``network``) is asynchronous until a global stabilization time (GST): random delays,
reordering, duplication, loss and partitions that heal. After GST every copy arrives within ``delta``
and honest nodes gossip what they hold and sync blocks they missed (``scheduler``). Adversaries
(``byzantine``: equivocating, conflicting, junk, replayed, far-future, withheld messages and a keyless
relay that alters bodies; ``splitter``: a coalition that splits locks by controlling who sees which
polka) plug into the scheduler's seams. ``invariants`` checks agreement, validity, one body per hash,
no honest double signature and liveness after GST; ``adversary`` runs seeds and is the command line.
See docs/simulation.md.
"""
