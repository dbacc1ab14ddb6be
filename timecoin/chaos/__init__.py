"""Real processes under faults (issue 13): a fault-injecting TCP proxy, a seeded fault plan and a runner.

``timecoin testnet --start --chaos SEED`` runs a local testnet whose every P2P link goes through a
:class:`~timecoin.chaos.proxy.FaultProxy`, plays a :func:`~timecoin.chaos.schedule.plan` against the
proxies and the node processes, then checks that every node holds one chain and nothing finalized was lost.
"""
