"""Coverage-guided fuzzing of the wire decoders (atheris, libFuzzer): ``python -m tests.fuzz.fuzz TARGET``.

Each target takes raw bytes and must either refuse them with ``DecodeError`` or accept them consistently;
any other exception, or an inconsistency, is a crash that libFuzzer reports with the input that caused it:

* ``envelope``: ``decode_message`` (every message type) -- accepted bytes re-encode to themselves.
* ``fast``: the struct fast decoders of Tx, Vote, Header, Block and Envelope (issue 15) against the guarded
  decoder they shortcut: a fast accept must be a guarded accept of an equal value, and the public
  ``decode`` must accept and refuse exactly what the guarded decoder does. The first byte picks the codec.
* ``layouts``: the guarded codec of every layout (the first byte picks it): accepted bytes re-encode.
* ``account``: ``Account.decode`` (struct fast path, then the guarded codec) -- re-encodes to itself.
* ``framing``: the frame decoder fed the input in chunks whose sizes the input's first byte chooses: only
  DecodeError, and the frames it returns are exactly the input's complete frames.
* ``certificate``: the libp2p TLS certificate check a peer's certificate meets before anything else
  (``public_key_from_certificate``): only PeerAuthError. (A random input seldom parses as X.509; the seed
  is a real certificate, so mutations reach the extension and signature checks.)
* ``signedkey``: the certificate extension's DER ``SignedKey``: only PeerAuthError; accepted re-encodes.
* ``rpcjson``: the JSON-RPC body decoder: only ValueError; what it accepts serializes back (no NaN or
  infinity gets through).

The corpus is kept in the repository (``tests/fuzz/corpus/<target>/``, seeded from valid encodings by
``--seed-corpus``); ``tox -e fuzz`` runs every target for minutes and adds what it finds there, and CI runs
each target for a bounded number of inputs (``tests/fuzz/test_atheris_targets.py``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable

from timecoin import crypto
from timecoin.errors import DecodeError
from timecoin.ledger import account as account_codec
from timecoin.ledger.account import Account
from timecoin.p2p import identity
from timecoin.rpc import server as rpc_server
from timecoin.wire import messages
from timecoin.wire.framing import FrameDecoder, encode_frame

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
FAST_CODECS = [(name, getattr(messages, const)) for name, const in
               (("Tx", "TX"), ("Vote", "VOTE"), ("Header", "HEADER"), ("Block", "BLOCK"), ("Envelope", "ENVELOPE"))]
LAYOUT_CODECS = [messages.Codec(name, layout) for name, layout in sorted(messages.LAYOUTS.items())]
MAX_FRAME = 1 << 16


def _guarded(codec: messages.Codec, data: bytes) -> tuple[bool, object]:
    try:
        return True, codec.decode_guarded(data)
    except DecodeError:
        return False, None


def envelope(data: bytes) -> None:
    try:
        msg_type, rid, body = messages.decode_message(data)
    except DecodeError:
        return
    again = messages.encode_message(msg_type, body, rid)
    if again != data:
        raise AssertionError(f"decode_message accepted non-canonical bytes {data.hex()}")


def fast(data: bytes) -> None:
    if not data:
        return
    name, codec = FAST_CODECS[data[0] % len(FAST_CODECS)]
    body = data[1:]
    quick = messages.FAST_DECODERS[name](body)
    ok, value = _guarded(codec, body)
    if quick is not None and (not ok or quick != value):
        raise AssertionError(f"fast {name} decoder disagrees with the guarded one on {body.hex()}")
    try:
        public = codec.decode(body)
    except DecodeError:
        if ok:
            raise AssertionError(f"{name}.decode refused what the guarded decoder accepts: {body.hex()}") from None
        return
    if not ok or public != value:
        raise AssertionError(f"{name}.decode accepted what the guarded decoder refuses: {body.hex()}")


def layouts(data: bytes) -> None:
    if not data:
        return
    codec = LAYOUT_CODECS[data[0] % len(LAYOUT_CODECS)]
    try:
        value = codec.decode(data[1:])
    except DecodeError:
        return
    if codec.encode(value) != data[1:]:
        raise AssertionError(f"{codec.name} accepted non-canonical bytes {data[1:].hex()}")


def account(data: bytes) -> None:
    quick = account_codec._fast_decode(data)
    try:
        c = account_codec.ACCOUNT.decode_guarded(data)
        pubkey = c.pubkey.encode("latin-1")
        guarded: Account | None = None
        if len(pubkey) in (0, 33):
            guarded = Account(c.balance, c.nonce, c.stake, tuple((u.amount, u.release_height) for u in c.unbonding),
                              pubkey, c.jailed)
    except DecodeError:
        guarded = None
    if quick is not None and quick != guarded:
        raise AssertionError(f"fast Account decoder disagrees with the guarded one on {data.hex()}")
    if guarded is not None and Account(*dataclasses.astuple(guarded)).encoded != data:
        raise AssertionError(f"Account accepted non-canonical bytes {data.hex()}")


def framing(data: bytes) -> None:
    if not data:
        return
    step, stream = data[0] % 17 + 1, data[1:]
    decoder = FrameDecoder(MAX_FRAME)
    frames: list[bytes] = []
    try:
        for i in range(0, len(stream), step):
            frames.extend(decoder.feed(stream[i:i + step]))
    except DecodeError:
        return
    joined = b"".join(encode_frame(f) for f in frames)
    if not stream.startswith(joined):
        raise AssertionError(f"frames returned are not the input's frames: {stream.hex()}")


RPC_SEEDS: list[object] = [
    {"jsonrpc": "2.0", "id": 1, "method": "getblockcount", "params": []},
    [{"id": "a", "method": "getblock", "params": ["00" * 32, 2]}, {"method": "getbalance", "params": {"address": "x"}}],
    {"id": None, "method": "sendrawtransaction", "params": ["ab" * 40, 1.5e-8, -1, True, None]},
]
CERT_NOW = 1_900_000_000.0        # a fixed "now" inside the seed certificate's validity: runs are repeatable


def certificate(data: bytes) -> None:
    try:
        key = identity.public_key_from_certificate(data, now=CERT_NOW)
    except identity.PeerAuthError:
        return
    if not crypto.valid_pubkey(key):
        raise AssertionError(f"a certificate proved an invalid host key: {data.hex()}")


def signedkey(data: bytes) -> None:
    try:
        proto, signature = identity.decode_signed_key(data)
    except identity.PeerAuthError:
        return
    if identity.encode_signed_key(proto, signature) != data:
        raise AssertionError(f"decode_signed_key accepted non-canonical DER {data.hex()}")


def rpcjson(data: bytes) -> None:
    try:
        value = rpc_server._decode(data)
    except ValueError:
        return
    rpc_server._dumps(value)            # ValueError here (NaN, infinity) is a crash: the decoder let it in


def canary(data: bytes) -> None:
    """A planted fault (not in the corpus, not in ``tox -e fuzz``): proves a run finds and reports a crash."""
    if data[:3] == b"\xde\xad\x01":
        raise AssertionError("canary found")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "envelope": envelope, "fast": fast, "layouts": layouts, "account": account, "framing": framing,
    "certificate": certificate, "signedkey": signedkey, "rpcjson": rpcjson}
HARNESS_CHECK = {"canary": canary}


def _samples() -> tuple[list[tuple[messages.MsgType, object]], list[tuple[str, bytes]]]:
    """A few valid values: (message type, wire body) for envelopes, and (layout name, encoding)."""
    from timecoin import crypto
    from timecoin.ledger.block import (
        Block,
        CommitCertificate,
        Evidence,
        Header,
        Proposal,
        Vote,
        VoteType,
        evidence_root,
        tx_root,
    )
    from timecoin.ledger.tx import Transaction, TxKind
    key = crypto.PrivateKey(hashlib.sha256(b"fuzz corpus").digest())
    txs = [Transaction.create(key, kind, "fuzz", i, 1000, 5 + i, b"\x11" * 20 if kind == TxKind.TRANSFER
                              else bytes(20)) for i, kind in enumerate(TxKind)]
    votes = [Vote(t, 7, r, h, key.address).signed(key, "fuzz") for t in VoteType for r, h in ((0, b"\x01" * 32),
                                                                                          (1, bytes(32)))]
    header = Header(7, 0, b"\x33" * 32, 1_700_000_000_000, key.address, tx_root(txs), b"\x44" * 32,
                    b"\x55" * 32, evidence_root(()))
    block = Block(header, tuple(txs))
    proposal = Proposal(7, 0, -1, key.address, block).signed(key, "fuzz")
    evidence = Evidence(*sorted(votes[:2], key=lambda v: v.id))
    cert = CommitCertificate.from_votes([v for v in votes if v.type == VoteType.PRECOMMIT and v.round == 0])
    accounts = [Account(), Account(10, 2, 5, ((3, 9),), key.public_key, True), Account(1 << 60, 1)]
    msgs = ([(messages.MsgType.TX, tx.to_wire()) for tx in txs] + [(messages.MsgType.VOTE, v.to_wire()) for v in votes]
            + [(messages.MsgType.PROPOSAL, proposal.to_wire()), (messages.MsgType.EVIDENCE, evidence.to_wire())])
    encoded = ([("Tx", tx.encoded) for tx in txs] + [("Vote", v.encoded) for v in votes]
               + [("Header", header.encoded), ("Block", block.encoded), ("Proposal", proposal.encoded),
                  ("Evidence", evidence.encoded), ("CommitCertificate", cert.encoded)]
               + [("Envelope", messages.encode_message(t, w)) for t, w in msgs]
               + [("Account", a.encoded) for a in accounts])
    return msgs, encoded


def seed_corpus() -> None:
    """Write valid encodings of every target's input kind into the repository corpus (small and fixed)."""
    msgs, encoded = _samples()
    seeds: dict[str, list[bytes]] = {name: [] for name in TARGETS}
    for msg_type, wire in msgs:
        payload = messages.encode_message(msg_type, wire)
        seeds["envelope"].append(payload)
        seeds["framing"].append(bytes([3]) + encode_frame(payload) + encode_frame(payload))
    for i, (name, _codec) in enumerate(FAST_CODECS):
        seeds["fast"] += [bytes([i]) + data for kind, data in encoded if kind == name]
    for i, codec in enumerate(LAYOUT_CODECS):
        seeds["layouts"] += [bytes([i]) + data for kind, data in encoded if kind == codec.name]
    seeds["account"] += [data for kind, data in encoded if kind == "Account"]
    for i in (1, 2):
        host = identity.HostIdentity(crypto.PrivateKey(bytes([i]) * 32), now=CERT_NOW)
        seeds["certificate"].append(host.certificate_der)
        ext = host.certificate.extensions.get_extension_for_oid(identity.EXTENSION_OID).value
        seeds["signedkey"].append(ext.value)
    seeds["rpcjson"] += [json.dumps(r).encode() for r in RPC_SEEDS]
    for name, items in seeds.items():
        folder = os.path.join(CORPUS, name)
        os.makedirs(folder, exist_ok=True)
        for data in items:
            with open(os.path.join(folder, hashlib.sha1(data).hexdigest()), "wb") as f:
                f.write(data)


def main(argv: list[str]) -> None:
    """``--seed-corpus``, or run one target under libFuzzer (through tests/fuzz/fuzz.py, which instruments)."""
    if len(argv) > 1 and argv[1] == "--seed-corpus":
        seed_corpus()
        return
    known = {**TARGETS, **HARNESS_CHECK}
    if len(argv) < 2 or argv[1] not in known:
        sys.exit(f"usage: python -m tests.fuzz.fuzz ({'|'.join(TARGETS)}) [libFuzzer arguments and corpus "
                 "folders]; python -m tests.fuzz.atheris_targets --seed-corpus")
    import atheris
    atheris.Setup([argv[0], *argv[2:]], known[argv[1]])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
