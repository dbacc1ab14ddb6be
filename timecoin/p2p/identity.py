"""Host identity on the wire: the libp2p TLS 1.3 handshake (SPEC §5 "Transport").

Each side presents a self-signed X.509 certificate made for a fresh ephemeral ECDSA P-256 key. The
certificate carries the libp2p Public Key Extension (OID 1.3.6.1.4.1.53594.1.1, critical)::

    SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }

``publicKey`` is the libp2p ``PublicKey`` protobuf of our secp256k1 host key and ``signature`` is the host
key's DER ECDSA signature over SHA-256(``"libp2p-tls-handshake:" || SubjectPublicKeyInfo DER``). The peer
derives our PeerID from that key, so the TLS session is bound to the host key without a CA.

Both sides check the other's certificate inside OpenSSL's verify callback, so a bad certificate aborts
the handshake before any application data is delivered. OpenSSL itself cannot build a chain for a
self-signed certificate and does not know our critical extension: those errors, and only those, are
forgiven at depth 0 when the libp2p check passes.
"""
from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import coincurve
from cryptography import x509
from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as _CryptoUnsupported
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from zope.interface import implementer

from timecoin import crypto
from timecoin.errors import DecodeError, Reason, TimecoinError

__all__ = [
    "ALPN_PROTOCOL",
    "EXTENSION_OID",
    "HostIdentity",
    "PeerAuthError",
    "SIGNATURE_PREFIX",
    "decode_signed_key",
    "encode_signed_key",
    "peer_public_key",
    "public_key_from_certificate",
]

EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
SIGNATURE_PREFIX = b"libp2p-tls-handshake:"
ALPN_PROTOCOL = b"libp2p"
CERT_BACKDATE = 3600.0                      # clock skew allowance: valid from an hour ago
CERT_LIFETIME = 365 * 24 * 3600.0           # a year; a HostIdentity is made at each start

_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_PROTOBUF_PREFIX = bytes((0x08, 0x02, 0x12, crypto.PUBKEY_SIZE))   # Type=Secp256k1, Data=<33 bytes>

# OpenSSL verify errors that a lone self-signed libp2p certificate raises by design (x509_vfy.h).
_X509_V_OK = 0
_FORGIVEN_AT_DEPTH_0 = frozenset({
    18,   # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    20,   # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,   # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    34,   # X509_V_ERR_UNHANDLED_CRITICAL_EXTENSION (ours, which OpenSSL does not know)
})


class PeerAuthError(TimecoinError):
    """A peer certificate that fails the libp2p TLS checks: the peer proved no host key."""

    reason = Reason.BAD_SIGNATURE


# -- strict DER for SignedKey ------------------------------------------------------------------------
def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _der_tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _der_length(len(content)) + content


def _der_read(buf: bytes, pos: int) -> tuple[int, int, int]:
    """One TLV at ``pos``: (tag, content start, end). Definite, minimal lengths only; low tag numbers only."""
    if pos + 2 > len(buf):
        raise PeerAuthError("DER: truncated header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise PeerAuthError("DER: high tag numbers are not used here")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise PeerAuthError("DER: indefinite length")
    else:
        n = first & 0x7F
        if n > 4 or pos + n > len(buf):
            raise PeerAuthError("DER: bad length of length")
        length = int.from_bytes(buf[pos:pos + n], "big")
        if buf[pos] == 0 or length < 0x80:
            raise PeerAuthError("DER: non-minimal length")
        pos += n
    end = pos + length
    if end > len(buf):
        raise PeerAuthError("DER: content runs past the end")
    return tag, pos, end


def encode_signed_key(public_key_protobuf: bytes, signature: bytes) -> bytes:
    """DER ``SignedKey`` (the extension value)."""
    return _der_tlv(0x30, _der_tlv(0x04, public_key_protobuf) + _der_tlv(0x04, signature))


def decode_signed_key(data: bytes) -> tuple[bytes, bytes]:
    """(publicKey, signature) of a DER ``SignedKey``; PeerAuthError on any deviation from DER."""
    tag, start, end = _der_read(data, 0)
    if tag != 0x30 or end != len(data):
        raise PeerAuthError("SignedKey: not exactly one SEQUENCE")
    fields = []
    pos = start
    for name in ("publicKey", "signature"):
        tag, fstart, fend = _der_read(data, pos)
        if tag != 0x04:
            raise PeerAuthError(f"SignedKey: {name} is not an OCTET STRING")
        fields.append(data[fstart:fend])
        pos = fend
    if pos != end:
        raise PeerAuthError("SignedKey: trailing bytes in the SEQUENCE")
    return fields[0], fields[1]


def _raw_spki(tbs: bytes) -> bytes:
    """The SubjectPublicKeyInfo bytes exactly as they appear in the TBSCertificate (what the peer signed)."""
    tag, pos, end = _der_read(tbs, 0)
    if tag != 0x30 or end != len(tbs):
        raise PeerAuthError("TBSCertificate is not a SEQUENCE")
    tag, _, nxt = _der_read(tbs, pos)
    if tag == 0xA0:                             # [0] EXPLICIT version
        pos = nxt
    # serialNumber, signature, issuer, validity, subject
    for expected in (0x02, 0x30, 0x30, 0x30, 0x30):
        tag, _, nxt = _der_read(tbs, pos)
        if tag != expected:
            raise PeerAuthError("TBSCertificate: unexpected field")
        pos = nxt
    tag, _, nxt = _der_read(tbs, pos)
    if tag != 0x30:
        raise PeerAuthError("TBSCertificate: no SubjectPublicKeyInfo")
    return tbs[pos:nxt]


# -- host key signature (libp2p secp256k1: DER ECDSA over SHA-256, low-S) -------------------------------
def _sign_host(key: crypto.PrivateKey, message: bytes) -> bytes:
    return coincurve.PrivateKey(key.secret).sign(message)          # hashes with SHA-256, returns DER, low-S


def _verify_host(pubkey: bytes, message: bytes, der_signature: bytes) -> bool:
    """Strict: canonical DER, 0 < r, s < n, low-S (libsecp256k1 rejects high-S)."""
    try:
        r, s = decode_dss_signature(der_signature)
    except ValueError:
        return False
    if not (0 < r < _SECP256K1_ORDER and 0 < s < _SECP256K1_ORDER):
        return False
    if encode_dss_signature(r, s) != der_signature:                # no alternative encodings
        return False
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return crypto.verify_digest(pubkey, crypto.sha256(message), compact)


# -- certificate check ---------------------------------------------------------------------------------
@lru_cache(maxsize=1024)
def _check_certificate(cert_der: bytes) -> tuple[bytes, float, float]:
    """Everything about a certificate that does not depend on the time: (host key, not before, not after).

    Cached: OpenSSL calls the verify callback several times per handshake, and both ends of a
    connection ask for the peer key again after it.
    """
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except (ValueError, x509.InvalidVersion) as exc:    # InvalidVersion is not a ValueError (found by fuzzing)
        raise PeerAuthError(f"not a DER X.509 certificate: {exc}") from None
    if cert.version != x509.Version.v3:
        raise PeerAuthError("not an X.509 v3 certificate")
    try:
        cert.verify_directly_issued_by(cert)               # self-issued, and its signature verifies
    except (ValueError, TypeError, _CryptoInvalidSignature, _CryptoUnsupported) as exc:   # a key type we cannot load
        raise PeerAuthError(f"certificate is not validly self-signed: {exc!r}") from None
    try:
        extensions = cert.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise PeerAuthError(f"bad certificate extensions: {exc}") from None
    ours = None
    for ext in extensions:
        if ext.oid == EXTENSION_OID:
            ours = ext
        elif ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
            raise PeerAuthError(f"unknown critical extension {ext.oid.dotted_string}")
    if ours is None:
        raise PeerAuthError("certificate has no libp2p public key extension")
    value = ours.value.value if isinstance(ours.value, x509.UnrecognizedExtension) else b""
    proto, signature = decode_signed_key(value)
    if len(proto) != len(_PROTOBUF_PREFIX) + crypto.PUBKEY_SIZE or not proto.startswith(_PROTOBUF_PREFIX):
        raise PeerAuthError("host key is not a secp256k1 libp2p PublicKey")
    pubkey = proto[len(_PROTOBUF_PREFIX):]
    if not crypto.valid_pubkey(pubkey):
        raise PeerAuthError("host key is not a valid secp256k1 point")
    if not _verify_host(pubkey, SIGNATURE_PREFIX + _raw_spki(cert.tbs_certificate_bytes), signature):
        raise PeerAuthError("host key signature over the certificate key does not verify")
    return pubkey, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def public_key_from_certificate(cert_der: bytes, now: float | None = None) -> bytes:
    """The 33-byte host key a libp2p TLS certificate proves, if it is valid at ``now``; else PeerAuthError."""
    pubkey, not_before, not_after = _check_certificate(bytes(cert_der))
    now = time.time() if now is None else now
    if now < not_before:
        raise PeerAuthError("certificate is not valid yet")
    if now > not_after:
        raise PeerAuthError("certificate has expired")
    return pubkey


def peer_public_key(tls_transport: Any, now: float | None = None) -> bytes:
    """The verified host key of the remote side of a Twisted TLS transport after its handshake (valid at ``now``,
    the wall clock if None)."""
    get = getattr(tls_transport, "getPeerCertificate", None)
    cert = get() if get is not None else None
    if cert is None:
        raise PeerAuthError("peer presented no certificate")
    der = cert.to_cryptography().public_bytes(serialization.Encoding.DER)
    return public_key_from_certificate(der, now)


# -- TLS contexts -----------------------------------------------------------------------------------
_VerifyCallback = Callable[[SSL.Connection, Any, int, int, int], bool]


def _make_verify(expected_pubkey: bytes | None, require_alpn: bool = False) -> _VerifyCallback:
    """OpenSSL verify callback: the libp2p check decides; OpenSSL's own errors are forgiven only at
    depth 0, only the self-signed/unknown-critical-extension ones, and only when our check passes.

    ``require_alpn``: "libp2p" must be the negotiated ALPN protocol, on both sides. A client checks the
    server's choice (TLS 1.3 sends EncryptedExtensions before the Certificate, so it is known here): a
    server that ignored our offer fails the handshake before any application data, as go-libp2p's client
    refuses it. A server checks it too: :func:`_alpn_select` refuses a client offering other protocols,
    but is never called for a client that offers none, and such a client is refused here.
    """

    def verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if depth != 0:                                  # libp2p: exactly one certificate, no chain
            return False
        if errno != _X509_V_OK and errno not in _FORGIVEN_AT_DEPTH_0:
            return False
        if require_alpn and conn.get_alpn_proto_negotiated() != ALPN_PROTOCOL:
            return False
        try:
            der = cert.to_cryptography().public_bytes(serialization.Encoding.DER)
            pubkey = public_key_from_certificate(der)
        except Exception:                               # never raise into OpenSSL: refuse instead
            return False
        return expected_pubkey is None or pubkey == expected_pubkey

    return verify


def _alpn_select(conn: SSL.Connection, offered: list[bytes]) -> bytes:
    """Server side: pick "libp2p"; a client that offers ALPN without it is refused (as go-libp2p does)."""
    if ALPN_PROTOCOL in offered:
        return ALPN_PROTOCOL
    raise SSL.Error("peer does not offer the libp2p ALPN protocol")


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    """Server side for SSL4ServerEndpoint (``getContext``) or TLSMemoryBIOFactory (``serverConnectionForTLS``)."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def getContext(self) -> SSL.Context:  # noqa: N802 - Twisted's name
        return self._context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802,N803
        conn = SSL.Connection(self._context, None)
        conn.set_app_data(tlsProtocol)
        return conn


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """Client side for ``wrapClientTLS``; pins the server's host key when a PeerID is expected."""

    def __init__(self, context: SSL.Context, expected_pubkey: bytes | None) -> None:
        self._context = context
        self._verify = _make_verify(expected_pubkey, require_alpn=True)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802,N803
        conn = SSL.Connection(self._context, None)      # no SNI: the libp2p spec forbids sending one
        conn.set_app_data(tlsProtocol)
        conn.set_verify(SSL.VERIFY_PEER, self._verify)
        conn.set_connect_state()
        return conn


class HostIdentity:
    """Our TLS certificate for a host key, and the TLS contexts built on it (made once, reused)."""

    def __init__(self, key: crypto.PrivateKey, now: float | None = None) -> None:
        self.key = key
        now = time.time() if now is None else now
        self._tls_key = ec.generate_private_key(ec.SECP256R1())
        spki = self._tls_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        signed_key = encode_signed_key(crypto.libp2p_public_key_protobuf(key.public_key),
                                       _sign_host(key, SIGNATURE_PREFIX + spki))
        name = x509.Name([])                            # as go-libp2p: the name carries nothing
        utc = datetime.UTC
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._tls_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(int(now - CERT_BACKDATE), utc))
            .not_valid_after(datetime.datetime.fromtimestamp(int(now + CERT_LIFETIME), utc))
            .add_extension(x509.UnrecognizedExtension(EXTENSION_OID, signed_key), critical=True)
            .sign(self._tls_key, hashes.SHA256())
        )
        self.certificate_der: bytes = self.certificate.public_bytes(serialization.Encoding.DER)
        self._server_context: SSL.Context | None = None
        self._client_context: SSL.Context | None = None

    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    def _context(self, server: bool) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_certificate(self.certificate)
        ctx.use_privatekey(self._tls_key)
        ctx.check_privatekey()
        # No resumption: every connection proves its host key afresh in a full handshake.
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if server:
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _make_verify(None, require_alpn=True))
            ctx.set_alpn_select_callback(_alpn_select)
        else:
            ctx.set_verify(SSL.VERIFY_PEER, _make_verify(None, require_alpn=True))
            ctx.set_alpn_protos([ALPN_PROTOCOL])
        return ctx

    def server_context_factory(self) -> _ServerCreator:
        """For SSL4ServerEndpoint / TLSMemoryBIOFactory: requires and checks a client certificate."""
        if self._server_context is None:
            self._server_context = self._context(server=True)
        return _ServerCreator(self._server_context)

    def client_creator(self, expected_peer_id: str | None) -> _ClientCreator:
        """For wrapClientTLS: the handshake fails unless the server proves ``expected_peer_id`` (if given).

        A malformed ``expected_peer_id`` raises DecodeError here, before any dial.
        """
        if self._client_context is None:
            self._client_context = self._context(server=False)
        expected = None
        if expected_peer_id is not None:
            try:
                expected = crypto.pubkey_from_peer_id(expected_peer_id)
            except DecodeError as exc:
                raise DecodeError(f"expected PeerID {expected_peer_id!r}: {exc}") from None
        return _ClientCreator(self._client_context, expected)
