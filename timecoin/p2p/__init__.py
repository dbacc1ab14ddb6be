"""Peer-to-peer networking: TLS identity, framing, handshake, peers and gossip (SPEC §5)."""
