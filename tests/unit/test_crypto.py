"""Keys, signatures, addresses, PeerIDs and key files (SPEC §1).

The PeerID vectors come from an independent libp2p implementation; signatures are checked against a
second, independent ECDSA implementation (the pure-Python ``ecdsa`` package) in both directions.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import base58
import ecdsa
import pytest
from ecdsa.util import sigdecode_string, sigencode_string
from hypothesis import given, settings
from hypothesis import strategies as st

from timecoin import crypto
from timecoin.crypto import PrivateKey
from timecoin.errors import DecodeError, InvalidSignature

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "peerid-secp256k1.json").read_text())["vectors"]
ORDER = ecdsa.SECP256k1.order
CHAIN = "timecoin-test"

# A fixed key so failures are reproducible.
KEY = PrivateKey(bytes.fromhex("48b3dc8d72f37f23ebd6e565cad3b67c6e749d3164541a4f0db84c41b783f7ad"))


def _split(sig: bytes) -> tuple[int, int]:
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def _join(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _ecdsa_verifying_key(pubkey: bytes) -> ecdsa.VerifyingKey:
    return ecdsa.VerifyingKey.from_string(pubkey, curve=ecdsa.SECP256k1)


# -- PeerIDs -----------------------------------------------------------------------------------------
def test_vector_file_is_not_empty() -> None:
    assert len(VECTORS) >= 4


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["peer_id"][:16])
def test_peer_id_equals_libp2p_vector(vec: dict[str, str]) -> None:
    key = PrivateKey(bytes.fromhex(vec["secret"]))
    assert key.public_key.hex() == vec["public_key"]
    assert crypto.libp2p_public_key_protobuf(key.public_key).hex() == vec["protobuf_public_key"]
    assert crypto.peer_id_of(key.public_key) == vec["peer_id"]
    assert key.peer_id == vec["peer_id"]
    assert vec["peer_id"].startswith("16Uiu2HA")


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["peer_id"][:16])
def test_pubkey_from_peer_id_inverts_vector(vec: dict[str, str]) -> None:
    assert crypto.pubkey_from_peer_id(vec["peer_id"]).hex() == vec["public_key"]


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_peer_id_round_trip(secret: bytes) -> None:
    try:
        key = PrivateKey(secret)
    except ValueError:
        return  # zero or >= group order
    assert crypto.pubkey_from_peer_id(key.peer_id) == key.public_key


def test_pubkey_from_peer_id_rejects_other_ids() -> None:
    good = base58.b58decode(VECTORS[0]["peer_id"])
    with pytest.raises(DecodeError, match="base58"):
        crypto.pubkey_from_peer_id("16Uiu2HA0OIl")  # 0, O, I, l are not base58
    with pytest.raises(DecodeError):
        crypto.pubkey_from_peer_id(base58.b58encode(good[:-1]).decode())  # truncated
    # An Ed25519 key (libp2p type 1) is not ours.
    ed = bytearray(good)
    ed[3] = 1
    with pytest.raises(DecodeError, match="secp256k1"):
        crypto.pubkey_from_peer_id(base58.b58encode(bytes(ed)).decode())
    # A sha2-256 multihash (0x12) instead of identity.
    sha = bytearray(good)
    sha[0] = 0x12
    with pytest.raises(DecodeError):
        crypto.pubkey_from_peer_id(base58.b58encode(bytes(sha)).decode())
    # A 33-byte "key" whose x coordinate is not on the curve (x = 5 has no square root mod p).
    bad_point = good[:6] + b"\x02" + (5).to_bytes(32, "big")
    assert not crypto.valid_pubkey(b"\x02" + (5).to_bytes(32, "big"))
    with pytest.raises(DecodeError, match="invalid public key"):
        crypto.pubkey_from_peer_id(base58.b58encode(bad_point).decode())


# -- private keys --------------------------------------------------------------------------------------
@pytest.mark.parametrize("secret", [bytes(32), ORDER.to_bytes(32, "big"), (ORDER + 1).to_bytes(32, "big"),
                                    b"\x01" * 31, b"\x01" * 33])
def test_invalid_secret_refused(secret: bytes) -> None:
    with pytest.raises(ValueError):
        PrivateKey(secret)


def test_generated_keys_differ_and_are_valid() -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    assert a.secret != b.secret
    assert crypto.valid_pubkey(a.public_key) and len(a.public_key) == crypto.PUBKEY_SIZE
    assert PrivateKey(a.secret).public_key == a.public_key


# -- signatures: two implementations agree -------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200))
def test_coincurve_signature_verifies_with_ecdsa(payload: bytes) -> None:
    """Our signature is a standard ECDSA signature over the domain-separated SHA-256 digest, low-S."""
    sig = KEY.sign(crypto.TAG_TX, CHAIN, payload)
    digest = crypto.signing_digest(crypto.TAG_TX, CHAIN, payload)
    assert len(sig) == crypto.SIGNATURE_SIZE
    assert _ecdsa_verifying_key(KEY.public_key).verify_digest(sig, digest, sigdecode=sigdecode_string)
    assert _split(sig)[1] <= ORDER // 2, "libsecp256k1 must emit low-S"
    assert crypto.verify(KEY.public_key, crypto.TAG_TX, CHAIN, payload, sig)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200))
def test_ecdsa_signature_low_s_accepted_high_s_rejected(payload: bytes) -> None:
    """A signature made by ``ecdsa``, normalized to low-S, verifies with our code; its high-S twin
    (equally valid to plain ECDSA) is refused: no malleability."""
    sk = ecdsa.SigningKey.from_string(KEY.secret, curve=ecdsa.SECP256k1)
    digest = crypto.signing_digest(crypto.TAG_VOTE, CHAIN, payload)
    r, s = _split(sk.sign_digest_deterministic(digest, hashfunc=hashlib.sha256, sigencode=sigencode_string))
    low, high = (s, ORDER - s) if s <= ORDER // 2 else (ORDER - s, s)
    low_sig, high_sig = _join(r, low), _join(r, high)
    vk = _ecdsa_verifying_key(KEY.public_key)
    assert vk.verify_digest(high_sig, digest, sigdecode=sigdecode_string)   # valid plain ECDSA
    assert vk.verify_digest(low_sig, digest, sigdecode=sigdecode_string)
    assert crypto.verify(KEY.public_key, crypto.TAG_VOTE, CHAIN, payload, low_sig)
    assert not crypto.verify(KEY.public_key, crypto.TAG_VOTE, CHAIN, payload, high_sig)
    assert crypto.verify_digest(KEY.public_key, digest, low_sig)
    assert not crypto.verify_digest(KEY.public_key, digest, high_sig)


def test_high_s_of_our_own_signature_rejected() -> None:
    payload = b"pay 5 TIME"
    sig = KEY.sign(crypto.TAG_TX, CHAIN, payload)
    r, s = _split(sig)
    malleated = _join(r, ORDER - s)
    digest = crypto.signing_digest(crypto.TAG_TX, CHAIN, payload)
    assert _ecdsa_verifying_key(KEY.public_key).verify_digest(malleated, digest, sigdecode=sigdecode_string)
    assert crypto.verify(KEY.public_key, crypto.TAG_TX, CHAIN, payload, sig)
    assert not crypto.verify(KEY.public_key, crypto.TAG_TX, CHAIN, payload, malleated)
    with pytest.raises(InvalidSignature):
        crypto.require_valid(KEY.public_key, crypto.TAG_TX, CHAIN, payload, malleated)


def test_signing_is_deterministic() -> None:
    """RFC 6979: same key and message, same signature (no nonce reuse risk from a bad RNG)."""
    assert KEY.sign(crypto.TAG_TX, CHAIN, b"x") == KEY.sign(crypto.TAG_TX, CHAIN, b"x")
    assert KEY.sign(crypto.TAG_TX, CHAIN, b"x") != KEY.sign(crypto.TAG_TX, CHAIN, b"y")


def test_verify_rejects_malformed_inputs() -> None:
    payload = b"hello"
    sig = KEY.sign(crypto.TAG_TX, CHAIN, payload)
    pk = KEY.public_key
    assert crypto.verify(pk, crypto.TAG_TX, CHAIN, payload, sig)
    assert not crypto.verify(pk, crypto.TAG_TX, CHAIN, payload, sig[:-1])
    assert not crypto.verify(pk, crypto.TAG_TX, CHAIN, payload, sig + b"\x00")
    assert not crypto.verify(pk, crypto.TAG_TX, CHAIN, payload, bytes(64))
    assert not crypto.verify(pk, crypto.TAG_TX, CHAIN, payload + b"!", sig)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not crypto.verify(pk, crypto.TAG_TX, CHAIN, payload, flipped)
    # r = 0 and r >= order are not signatures.
    assert not crypto.verify(pk, crypto.TAG_TX, CHAIN, payload, _join(0, 1))
    assert not crypto.verify(pk, crypto.TAG_TX, CHAIN, payload, _join(ORDER, _split(sig)[1]))
    # Another key's signature, an uncompressed key, a key off the curve.
    other = PrivateKey(bytes.fromhex(VECTORS[1]["secret"]))
    assert not crypto.verify(other.public_key, crypto.TAG_TX, CHAIN, payload, sig)
    uncompressed = ecdsa.VerifyingKey.from_string(pk, curve=ecdsa.SECP256k1).to_string("uncompressed")
    assert not crypto.verify(uncompressed, crypto.TAG_TX, CHAIN, payload, sig)
    assert not crypto.verify(b"\x04" + pk[1:], crypto.TAG_TX, CHAIN, payload, sig)
    assert not crypto.verify(b"\x02" + (5).to_bytes(32, "big"), crypto.TAG_TX, CHAIN, payload, sig)
    assert not crypto.verify_digest(pk, bytes(31), sig)


# -- domain separation ---------------------------------------------------------------------------------
def test_signature_for_one_purpose_or_chain_never_verifies_as_another() -> None:
    payload = b"\x00" * 40
    sig = KEY.sign(crypto.TAG_TX, CHAIN, payload)
    pk = KEY.public_key
    assert crypto.verify(pk, crypto.TAG_TX, CHAIN, payload, sig)
    assert not crypto.verify(pk, crypto.TAG_VOTE, CHAIN, payload, sig)
    assert not crypto.verify(pk, crypto.TAG_PROPOSAL, CHAIN, payload, sig)
    assert not crypto.verify(pk, crypto.TAG_TX, CHAIN + "-2", payload, sig)
    assert not crypto.verify(pk, crypto.TAG_TX, "", payload, sig)
    # Nor as a bare signature over SHA-256(payload) (what a naive signer would produce).
    assert not crypto.verify_digest(pk, hashlib.sha256(payload).digest(), sig)


def test_signing_digest_is_length_prefixed() -> None:
    """Moving bytes between tag, chain id and payload changes the digest (no concatenation ambiguity)."""
    d = crypto.signing_digest(b"ab", "c", b"d")
    assert d != crypto.signing_digest(b"a", "bc", b"d")
    assert d != crypto.signing_digest(b"ab", "", b"cd")
    assert d != crypto.signing_digest(b"abc", "", b"d")
    assert d == hashlib.sha256(b"\x02ab\x01cd").digest()
    with pytest.raises(ValueError):
        crypto.signing_digest(b"t" * 256, "c", b"")
    with pytest.raises(ValueError):
        crypto.signing_digest(b"t", "c" * 256, b"")


# -- addresses -----------------------------------------------------------------------------------------
def test_address_is_sha256_prefix_of_pubkey() -> None:
    assert KEY.address == hashlib.sha256(KEY.public_key).digest()[:20]
    assert len(KEY.address) == crypto.ADDRESS_SIZE


@pytest.mark.parametrize(("network", "prefix"), [("mainnet", "TIME1"), ("testnet", "TIME0"), ("devnet", "TIME0")])
def test_address_round_trip(network: str, prefix: str) -> None:
    for vec in VECTORS:
        addr = PrivateKey(bytes.fromhex(vec["secret"])).address
        text = crypto.encode_address(addr, network)
        assert text.startswith(prefix)
        assert crypto.decode_address(text) == addr
        assert crypto.address_network(text) == ("mainnet" if network == "mainnet" else "testnet")


def test_address_encoding_is_base58check_over_prefix() -> None:
    addr = KEY.address
    text = crypto.encode_address(addr, "mainnet")
    raw = base58.b58decode(text[5:])
    checksum = hashlib.sha256(hashlib.sha256(b"TIME1" + addr).digest()).digest()[:4]
    assert raw == addr + checksum


def test_address_checksum_errors() -> None:
    addr = KEY.address
    text = crypto.encode_address(addr, "mainnet")
    # Every single-character substitution in the body is caught.
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    caught = 0
    for i in range(5, len(text)):
        repl = alphabet[(alphabet.index(text[i]) + 1) % len(alphabet)]
        with pytest.raises(DecodeError):
            crypto.decode_address(text[:i] + repl + text[i + 1:])
        caught += 1
    assert caught == len(text) - 5
    # A mainnet address relabelled as testnet fails: the checksum covers the prefix.
    with pytest.raises(DecodeError, match="checksum"):
        crypto.decode_address("TIME0" + text[5:])
    with pytest.raises(DecodeError, match="TIME1"):
        crypto.decode_address("BTC1" + text[5:])
    with pytest.raises(DecodeError, match="base58"):
        crypto.decode_address("TIME1" + "0OIl" + text[9:])
    with pytest.raises(DecodeError, match="length"):
        crypto.decode_address("TIME1" + base58.b58encode(addr).decode())
    with pytest.raises(DecodeError):
        crypto.decode_address("")
    with pytest.raises(ValueError):
        crypto.encode_address(addr[:19])


# -- PEM key files -------------------------------------------------------------------------------------
def test_pem_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    KEY.save(str(path))
    loaded = PrivateKey.load(str(path))
    assert loaded.secret == KEY.secret
    assert loaded.public_key == KEY.public_key
    assert path.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")


def test_pem_file_mode_is_0600(tmp_path: Path) -> None:
    old = os.umask(0)   # even with a permissive umask the key is owner-only
    try:
        path = tmp_path / "node.key"
        KEY.save(str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_pem_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    KEY.save(str(path))
    before = path.read_bytes()
    other = PrivateKey(bytes.fromhex(VECTORS[1]["secret"]))
    with pytest.raises(FileExistsError):
        other.save(str(path))
    assert path.read_bytes() == before
    assert PrivateKey.load(str(path)).secret == KEY.secret


def test_pem_readable_by_ecdsa(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    KEY.save(str(path))
    sk = ecdsa.SigningKey.from_pem(path.read_bytes())
    assert sk.curve == ecdsa.SECP256k1
    assert sk.to_string() == KEY.secret
    assert sk.get_verifying_key().to_string("compressed") == KEY.public_key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed")
def test_pem_readable_by_openssl(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    KEY.save(str(path))
    out = subprocess.run(["openssl", "ec", "-in", str(path), "-noout", "-text"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    assert "secp256k1" in out
    m = re.search(r"priv:\s*([0-9a-f:\s]+?)\s*pub:\s*([0-9a-f:\s]+?)\s*ASN1", out, re.S)
    assert m, out
    priv = int(re.sub(r"[\s:]", "", m.group(1)), 16)
    pub = bytes.fromhex(re.sub(r"[\s:]", "", m.group(2)))
    assert priv == int.from_bytes(KEY.secret, "big")
    # openssl prints the point as written in the file (uncompressed by the ecdsa package).
    assert ecdsa.VerifyingKey.from_string(pub, curve=ecdsa.SECP256k1).to_string("compressed") == KEY.public_key


def test_from_pem_rejects_garbage_and_other_curves() -> None:
    with pytest.raises(DecodeError):
        PrivateKey.from_pem(b"not a key")
    p256 = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).to_pem()
    with pytest.raises(DecodeError, match="secp256k1"):
        PrivateKey.from_pem(p256)


def test_key_info() -> None:
    info = crypto.KeyInfo.of(KEY, "mainnet")
    assert info.peer_id == VECTORS[0]["peer_id"]
    assert info.public_key == VECTORS[0]["public_key"]
    assert crypto.decode_address(info.address) == KEY.address and info.address.startswith("TIME1")
