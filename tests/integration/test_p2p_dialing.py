"""Dialing over real TLS on 127.0.0.1 (LMDB in tmp_path): refused dials back off; limits before TLS."""
from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from tests.p2pnet import Net, wait_for
from timecoin.p2p.discovery import Source


@pytest_twisted.ensureDeferred
async def test_a_peer_that_refuses_us_in_the_handshake_is_redialled_with_backoff(tmp_path: Path) -> None:
    # node0 (validator) accepts validator peers only: it refuses the observer node1 after TLS, in hello.
    net = Net(tmp_path, 1, observers=1, require_stake="true")
    try:
        await net.start(connect=False)
        validator, observer = net.nodes
        observer.p2p.peerstore.add(validator.p2p.listen_addr, Source.EXCHANGE, reactor.seconds())
        store = observer.p2p.peerstore
        pid = validator.p2p.peer_id
        await wait_for(lambda: store.get(pid) is not None and store.get(pid).failures >= 1, 10.0,
                       "the refused dial counted as a failure")
        entry = store.get(pid)
        assert entry is not None and entry.next_dial > reactor.seconds()       # backing off, not held 30 s
        assert pid not in observer.p2p.connections and observer.p2p.peer_id not in validator.p2p.connections
        # It is redialled (with a growing wait) and each refusal counts again: in time it is forgotten.
        await wait_for(lambda: store.get(pid) is None or store.get(pid).failures >= 2, 10.0, "a second refusal")
    finally:
        await net.stop()
