"""Keys, signatures, hashes, addresses and PeerIDs (SPEC §1).

* Signing and verification go through libsecp256k1 (coincurve). Signatures are 64-byte compact
  ``r||s`` and must be low-S: libsecp256k1's verify rejects high-S, so malleated copies are invalid.
* Every signature is domain-separated: the signed digest is
  ``SHA-256(len(tag) || tag || len(chain_id) || chain_id || payload)`` (lengths one byte each),
  so a signature made for one purpose or chain never verifies as another.
* Key files are SEC1 PEM (``EC PRIVATE KEY``) written by the ``ecdsa`` package; ``openssl ec`` reads them.
* PeerIDs follow libp2p's peer-id spec for secp256k1 keys: identity multihash of the protobuf
  ``PublicKey{Type=Secp256k1, Data=<33 bytes>}``, base58btc (``16Uiu2HA…``).
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

import base58
import coincurve
import ecdsa
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

from timecoin.errors import DecodeError, InvalidSignature

UNITS_PER_TIME = 10**8
PUBKEY_SIZE = 33
SIGNATURE_SIZE = 64
ADDRESS_SIZE = 20
HASH_SIZE = 32

TAG_TX = b"timecoin/tx/v1"
TAG_VOTE = b"timecoin/vote/v1"
TAG_PROPOSAL = b"timecoin/proposal/v1"

MAINNET_PREFIX = "TIME1"
TESTNET_PREFIX = "TIME0"

_CTX = GLOBAL_CONTEXT.ctx


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def signing_digest(tag: bytes, chain_id: str, payload: bytes) -> bytes:
    """The 32-byte digest a signature covers: tag and chain id length-prefixed, then the payload."""
    chain = chain_id.encode()
    if len(tag) > 255 or len(chain) > 255:
        raise ValueError("tag and chain id must be at most 255 bytes")
    return hashlib.sha256(bytes((len(tag),)) + tag + bytes((len(chain),)) + chain + payload).digest()


class PrivateKey:
    """A secp256k1 private key (the node's host key, a validator key or a wallet key)."""

    __slots__ = ("_key", "public_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("a secp256k1 secret is 32 bytes")
        try:
            self._key = coincurve.PrivateKey(secret)
        except Exception as exc:  # zero or >= group order
            raise ValueError(f"invalid secp256k1 secret: {exc}") from None
        self.public_key: bytes = self._key.public_key.format(compressed=True)

    @classmethod
    def generate(cls) -> PrivateKey:
        while True:
            try:
                return cls(os.urandom(32))
            except ValueError:  # pragma: no cover - probability 2**-128
                continue

    @property
    def secret(self) -> bytes:
        return self._key.secret

    def sign_digest(self, digest: bytes) -> bytes:
        """Compact low-S signature of a 32-byte digest (RFC 6979 nonces; libsecp256k1 emits low-S)."""
        raw = ffi.new("secp256k1_ecdsa_signature *")
        if not lib.secp256k1_ecdsa_sign(_CTX, raw, digest, self._key.secret, ffi.NULL, ffi.NULL):
            raise ValueError("signing failed")  # pragma: no cover
        out = ffi.new("unsigned char[64]")
        lib.secp256k1_ecdsa_signature_serialize_compact(_CTX, out, raw)
        return bytes(ffi.buffer(out, 64))

    def sign(self, tag: bytes, chain_id: str, payload: bytes) -> bytes:
        return self.sign_digest(signing_digest(tag, chain_id, payload))

    @property
    def address(self) -> bytes:
        return address_of(self.public_key)

    @property
    def peer_id(self) -> str:
        return peer_id_of(self.public_key)

    # -- PEM files -------------------------------------------------------------------------------
    def to_pem(self) -> bytes:
        sk = ecdsa.SigningKey.from_string(self.secret, curve=ecdsa.SECP256k1)
        return sk.to_pem(format="ssleay")

    @classmethod
    def from_pem(cls, data: bytes) -> PrivateKey:
        try:
            sk = ecdsa.SigningKey.from_pem(data)
        except Exception as exc:
            raise DecodeError(f"not a PEM EC private key: {exc}") from None
        if sk.curve != ecdsa.SECP256k1:
            raise DecodeError(f"key is on curve {sk.curve.name}, not secp256k1")
        return cls(sk.to_string())

    def save(self, path: str) -> None:
        """Write the key as PEM, readable by the owner only; never overwrite an existing key."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_pem())
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: str) -> PrivateKey:
        with open(path, "rb") as f:
            return cls.from_pem(f.read())


@lru_cache(maxsize=65536)
def _parsed_pubkey(pubkey: bytes):  # noqa: ANN202 - cffi object
    raw = ffi.new("secp256k1_pubkey *")
    if len(pubkey) != PUBKEY_SIZE or not lib.secp256k1_ec_pubkey_parse(_CTX, raw, pubkey, len(pubkey)):
        return None
    return raw


def valid_pubkey(pubkey: bytes) -> bool:
    """True for a 33-byte compressed SEC1 point on the curve."""
    return len(pubkey) == PUBKEY_SIZE and pubkey[0] in (2, 3) and _parsed_pubkey(bytes(pubkey)) is not None


def verify_digest(pubkey: bytes, digest: bytes, signature: bytes) -> bool:
    """Verify a compact signature over a digest. High-S, malformed keys or signatures: False."""
    if len(signature) != SIGNATURE_SIZE or len(digest) != HASH_SIZE or len(pubkey) != PUBKEY_SIZE:
        return False
    if pubkey[0] not in (2, 3):
        return False
    pk = _parsed_pubkey(bytes(pubkey))
    if pk is None:
        return False
    raw = ffi.new("secp256k1_ecdsa_signature *")
    if not lib.secp256k1_ecdsa_signature_parse_compact(_CTX, raw, signature):
        return False
    return bool(lib.secp256k1_ecdsa_verify(_CTX, raw, digest, pk))


def verify(pubkey: bytes, tag: bytes, chain_id: str, payload: bytes, signature: bytes) -> bool:
    return verify_digest(pubkey, signing_digest(tag, chain_id, payload), signature)


def require_valid(pubkey: bytes, tag: bytes, chain_id: str, payload: bytes, signature: bytes) -> None:
    """Raise InvalidSignature unless the signature verifies."""
    if not verify(pubkey, tag, chain_id, payload, signature):
        raise InvalidSignature(f"bad {tag.decode()} signature")


# -- addresses -------------------------------------------------------------------------------------
def address_of(pubkey: bytes) -> bytes:
    """20-byte account address: first 20 bytes of SHA-256 of the compressed public key."""
    return hashlib.sha256(pubkey).digest()[:ADDRESS_SIZE]


def prefix_for(network: str) -> str:
    return MAINNET_PREFIX if network == "mainnet" else TESTNET_PREFIX


def _address_checksum(prefix: str, address: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(prefix.encode() + address).digest()).digest()[:4]


@functools.lru_cache(maxsize=4096)
def encode_address(address: bytes, network: str = "devnet") -> str:
    """``TIME1…``/``TIME0…``: prefix + base58(address || checksum), the checksum covering the prefix
    too, so a mainnet address pasted into a testnet wallet fails the check.

    Memoized (a pure function of its arguments): base58 of the same few validator and sender addresses was
    15 % of a ``getblock`` (issue 15)."""
    if len(address) != ADDRESS_SIZE:
        raise ValueError("an address is 20 bytes")
    prefix = prefix_for(network)
    return prefix + base58.b58encode(address + _address_checksum(prefix, address)).decode()


MAX_ADDRESS_CHARS = 64            # an address's 24 bytes are 33 base58 characters after its prefix


def decode_address(text: str) -> bytes:
    """Parse a ``TIME1…``/``TIME0…`` address; DecodeError on anything else."""
    for prefix in (MAINNET_PREFIX, TESTNET_PREFIX):
        if text.startswith(prefix):
            break
    else:
        raise DecodeError("an address starts with TIME1 (mainnet) or TIME0 (testnet, devnet)")
    if len(text) > MAX_ADDRESS_CHARS:           # base58 decoding is quadratic: a long string would burn CPU
        raise DecodeError(f"address too long ({len(text)} characters, at most {MAX_ADDRESS_CHARS})")
    try:
        raw = base58.b58decode(text[len(prefix):])
    except ValueError:
        raise DecodeError("address is not base58") from None
    if len(raw) != ADDRESS_SIZE + 4:
        raise DecodeError("address has the wrong length")
    address, checksum = raw[:ADDRESS_SIZE], raw[ADDRESS_SIZE:]
    if _address_checksum(prefix, address) != checksum:
        raise DecodeError("address checksum mismatch")
    return address


def address_network(text: str) -> str:
    """'mainnet' or 'testnet' (testnet and devnet share the TIME0 prefix)."""
    return "mainnet" if text.startswith(MAINNET_PREFIX) else "testnet"


# -- libp2p PeerIDs --------------------------------------------------------------------------------
_LIBP2P_KEYTYPE_SECP256K1 = 2


def libp2p_public_key_protobuf(pubkey: bytes) -> bytes:
    """libp2p ``PublicKey`` protobuf: field 1 (varint) Type=2, field 2 (bytes) Data=33-byte key."""
    if len(pubkey) != PUBKEY_SIZE:
        raise ValueError("a compressed secp256k1 public key is 33 bytes")
    return bytes((0x08, _LIBP2P_KEYTYPE_SECP256K1, 0x12, PUBKEY_SIZE)) + pubkey


def peer_id_of(pubkey: bytes) -> str:
    """PeerID as libp2p computes it: keys ≤ 42 bytes use the identity multihash (0x00, length)."""
    proto = libp2p_public_key_protobuf(pubkey)
    return base58.b58encode(bytes((0x00, len(proto))) + proto).decode()


MAX_PEER_ID_CHARS = 64            # a PeerID's 39 bytes are 54 base58 characters at most


def pubkey_from_peer_id(peer_id: str) -> bytes:
    """Inverse of peer_id_of for secp256k1 identity-multihash PeerIDs; DecodeError otherwise."""
    if len(peer_id) > MAX_PEER_ID_CHARS:        # base58 decoding is quadratic: a long string would burn CPU
        raise DecodeError(f"PeerID too long ({len(peer_id)} characters, at most {MAX_PEER_ID_CHARS})")
    try:
        raw = base58.b58decode(peer_id)
    except ValueError:
        raise DecodeError("PeerID is not base58") from None
    if len(raw) != 2 + 4 + PUBKEY_SIZE or raw[0] != 0x00 or raw[1] != 4 + PUBKEY_SIZE:
        raise DecodeError("not an identity-multihash secp256k1 PeerID")
    proto = raw[2:]
    if proto[:4] != bytes((0x08, _LIBP2P_KEYTYPE_SECP256K1, 0x12, PUBKEY_SIZE)):
        raise DecodeError("PeerID does not hold a secp256k1 key")
    pubkey = proto[4:]
    if not valid_pubkey(pubkey):
        raise DecodeError("PeerID holds an invalid public key")
    return pubkey


@dataclass(frozen=True)
class KeyInfo:
    peer_id: str
    address: str
    public_key: str

    @classmethod
    def of(cls, key: PrivateKey, network: str = "devnet") -> KeyInfo:
        return cls(peer_id_of(key.public_key), encode_address(key.address, network), key.public_key.hex())
