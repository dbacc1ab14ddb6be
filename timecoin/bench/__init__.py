"""Measurement tools that drive real node processes from outside (issue 15): ``timecoin bench load``.

* :mod:`timecoin.bench.conn`: a blocking keep-alive JSON-RPC connection with batches (one per thread).
* :mod:`timecoin.bench.localnet`: a local testnet on free loopback ports, run as child processes.
* :mod:`timecoin.bench.load`: the load generator (funded senders, signed transfers, latency to finality).
"""
