"""``external_address``: what it accepts (one clear error otherwise) and what the hello advertises with it."""
from __future__ import annotations

from pathlib import Path

import pytest

from timecoin import crypto
from timecoin.config import build_config, external_host_port
from timecoin.errors import ConfigError
from timecoin.ledger.genesis import Genesis
from timecoin.node import build_node
from timecoin.sim.loopnet import node_config, reactor


@pytest.mark.parametrize(("text", "want"), [
    ("203.0.113.7", ("203.0.113.7", None)),
    ("203.0.113.7:9333", ("203.0.113.7", 9333)),
    ("/ip4/203.0.113.7/tcp/9333", ("203.0.113.7", 9333)),
    ("[2001:db8::1]:9333", ("2001:db8::1", 9333)),
    ("2001:db8::1", ("2001:db8::1", None)),
    ("/ip6/2001:db8::1/tcp/1", ("2001:db8::1", 1)),
])
def test_accepted_forms(text: str, want: tuple[str, int | None]) -> None:
    assert external_host_port(text) == want
    assert build_config({"external_address": text}).external_address == text


@pytest.mark.parametrize(("text", "why"), [
    ("0.0.0.0", "cannot be dialed"), ("[::]:9333", "cannot be dialed"), ("224.0.0.1:1", "cannot be dialed"),
    ("node.example.com:9333", "not an IP address"), ("203.0.113.7:0", "out of range"),
    ("203.0.113.7:x", "not an integer"), ("/ip4/203.0.113.7/tcp/9333/p2p/16Uiu2", "not a multiaddr"),
    ("/ip6/203.0.113.7/tcp/9333", "/ip6 with an IPv4"), ("[2001:db8::1]x", "not [IPv6]:PORT"),
])
def test_refused_with_one_clear_line(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"external_address": text})
    assert "external_address" in str(err.value) and why in str(err.value) and "\n" not in str(err.value)


def _p2p(tmp_path: Path, **extra: str):  # noqa: ANN202 - the node's P2P service
    key = crypto.PrivateKey(b"\x07" * 32)
    genesis = Genesis.for_validators([key.public_key], "timecoin-ext-test")
    return build_node(node_config(tmp_path, "n", **extra), key, genesis, reactor).p2p


def test_the_hello_advertises_the_external_address_never_an_unspecified_one(tmp_path: Path) -> None:
    p2p = _p2p(tmp_path, external_address="198.18.7.9")
    assert p2p.advertised("0.0.0.0", 4000) == f"/ip4/198.18.7.9/tcp/4000/p2p/{p2p.peer_id}"
    p2p = _p2p(tmp_path, external_address="/ip4/198.18.7.9/tcp/5000")
    assert p2p.advertised("127.0.0.1", 4000) == f"/ip4/198.18.7.9/tcp/5000/p2p/{p2p.peer_id}"
    p2p = _p2p(tmp_path)
    assert p2p.advertised("0.0.0.0", 4000) == "" and p2p.advertised("::", 4000) == ""
    assert p2p.advertised("127.0.0.1", 4000) == f"/ip4/127.0.0.1/tcp/4000/p2p/{p2p.peer_id}"
