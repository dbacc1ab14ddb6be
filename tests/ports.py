"""Free loopback ports for tests that start real processes (which must be told their ports)."""
from __future__ import annotations

import socket

TWISTD = "from twisted.scripts.twistd import run; run()"    # `python -c` this: twistd of this interpreter


def free_port_block(size: int) -> int:
    """A base port P with P .. P+size-1 free now (bounded tries)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + size > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise AssertionError("no free block of ports")
