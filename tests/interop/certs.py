"""Build libp2p TLS certificates with chosen defects, independently of ``timecoin.p2p.identity``.

The unit and interop tests need certificates that are properly self-signed X.509 yet wrong in one libp2p
detail (bad host signature, swapped key, missing extension, expired...). These builders use
``cryptography`` and coincurve directly so a bug in the code under test cannot hide in them.
"""
from __future__ import annotations

import datetime

import coincurve
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from timecoin import crypto

OID = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
PREFIX = b"libp2p-tls-handshake:"
YEAR = 365 * 24 * 3600


def spki_of(tls_key: ec.EllipticCurvePrivateKey) -> bytes:
    return tls_key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


def der_octets(data: bytes) -> bytes:
    assert len(data) < 256
    return (bytes((0x04, len(data))) if len(data) < 128 else bytes((0x04, 0x81, len(data)))) + data


def der_seq(content: bytes) -> bytes:
    assert len(content) < 256
    return (bytes((0x30, len(content))) if len(content) < 128 else bytes((0x30, 0x81, len(content)))) + content


def host_signature(host: crypto.PrivateKey, spki: bytes) -> bytes:
    """libp2p secp256k1 signature: DER ECDSA over SHA-256(prefix || SPKI)."""
    return coincurve.PrivateKey(host.secret).sign(PREFIX + spki)


def signed_key(pubkey_protobuf: bytes, signature: bytes) -> bytes:
    return der_seq(der_octets(pubkey_protobuf) + der_octets(signature))


def make_cert(tls_key: ec.EllipticCurvePrivateKey, ext_value: bytes | None, now: float,
              lifetime: float = YEAR, critical: bool = True,
              extra: list[tuple[x509.ExtensionType, bool]] | None = None) -> bytes:
    """A self-signed certificate of ``tls_key`` valid [now - 1h, now + lifetime] carrying ``ext_value``
    (None: no libp2p extension) plus ``extra`` extensions."""
    name = x509.Name([])
    utc = datetime.UTC
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(tls_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(datetime.datetime.fromtimestamp(int(now - 3600), utc))
               .not_valid_after(datetime.datetime.fromtimestamp(int(now + lifetime), utc)))
    if ext_value is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(OID, ext_value), critical=critical)
    for ext, crit in extra or []:
        builder = builder.add_extension(ext, critical=crit)
    return builder.sign(tls_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def good_cert(host: crypto.PrivateKey, now: float, **kw: object) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A correct libp2p certificate for ``host`` and its TLS key."""
    tls_key = ec.generate_private_key(ec.SECP256R1())
    ext = signed_key(crypto.libp2p_public_key_protobuf(host.public_key), host_signature(host, spki_of(tls_key)))
    return make_cert(tls_key, ext, now, **kw), tls_key  # type: ignore[arg-type]


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes((data[index] ^ 0x01,)) + data[index + 1:]
