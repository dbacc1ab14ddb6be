"""Interop with an independent libp2p TLS implementation (js-libp2p), and certificate builders for tests."""
