"""Our libp2p TLS certificates against an independent implementation: js-libp2p's ``@libp2p/tls``.

Acceptance (issue 4): js-libp2p verifies our certificates and derives our PeerID from them, refuses
tampered ones, and we accept the certificates it generates and derive the PeerID it reports.

The JS side is ``tests/interop/libp2p_tls.mjs`` with versions pinned by ``tests/interop/package-lock.json``,
installed by ``npm ci`` into pytest's cache directory (once per lockfile). No node/npm, or npm unable to
install (offline): the test is skipped with the reason. Once installed, any disagreement fails.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.interop import certs
from timecoin import crypto
from timecoin.p2p.identity import HostIdentity, PeerAuthError, public_key_from_certificate

INTEROP = Path(__file__).resolve().parent.parent / "interop"
SCRIPT = "libp2p_tls.mjs"
NPM_TIMEOUT = 120.0
NODE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def js_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the pinned js-libp2p install and our script (npm ci once per lockfile)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the js-libp2p interop test")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"node {version} is older than 20")
    manifest = (INTEROP / "package.json").read_bytes()
    lock = (INTEROP / "package-lock.json").read_bytes()
    key = hashlib.sha256(manifest + b"\0" + lock + version.encode()).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)
    base = cache.mkdir(f"libp2p-tls-interop-{key}") if cache is not None else tmp_path_factory.mktemp("js")
    base = Path(base)
    done = base / ".npm-ci-done"
    if not done.exists():
        (base / "package.json").write_bytes(manifest)
        (base / "package-lock.json").write_bytes(lock)
        started = time.monotonic()
        try:
            proc = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                                  cwd=base, capture_output=True, text=True, timeout=NPM_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm ci took more than {NPM_TIMEOUT:.0f} s")
        if proc.returncode != 0:
            pytest.skip(f"npm ci failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
        done.write_text(f"{time.monotonic() - started:.1f}\n")
    shutil.copyfile(INTEROP / SCRIPT, base / SCRIPT)     # always the current script
    return base


def run_js(js_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One run of the JS side; a crash or bad output is a failure, not a skip."""
    req = js_dir / f"request-{time.monotonic_ns()}.json"
    req.write_text(json.dumps(request))
    try:
        proc = subprocess.run([shutil.which("node") or "node", SCRIPT, req.name], cwd=js_dir,
                              capture_output=True, text=True, timeout=NODE_TIMEOUT)
    finally:
        req.unlink()
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_js_libp2p_and_we_agree_on_certificates_and_peer_ids(js_dir: Path) -> None:
    now = time.time()
    host = crypto.PrivateKey.generate()
    stranger = crypto.PrivateKey.generate()
    ours = HostIdentity(host).certificate_der

    # defective certificates of ours, each a well-formed self-signed X.509 certificate but one
    tls_key = ec.generate_private_key(ec.SECP256R1())
    proto = crypto.libp2p_public_key_protobuf(host.public_key)
    sig = certs.host_signature(host, certs.spki_of(tls_key))
    tampered_sig = certs.make_cert(tls_key, certs.signed_key(proto, certs.flip_byte(sig, len(sig) - 1)), now)
    forged = certs.make_cert(tls_key, certs.signed_key(crypto.libp2p_public_key_protobuf(stranger.public_key),
                                                       sig), now)
    lifted_ext = x509.load_der_x509_certificate(ours).extensions.get_extension_for_oid(certs.OID).value.value
    swapped = certs.make_cert(ec.generate_private_key(ec.SECP256R1()), lifted_ext, now)
    broken_self_sig = certs.flip_byte(ours, len(ours) - 3)
    expired = HostIdentity(host, now=now - 2 * 365 * 24 * 3600).certificate_der
    bad = {"tampered host signature": tampered_sig, "host key swapped": forged, "TLS key swapped": swapped,
           "broken self-signature": broken_self_sig, "expired": expired}
    for why, der in bad.items():                      # we refuse them all ourselves
        with pytest.raises(PeerAuthError):
            public_key_from_certificate(der)
            pytest.fail(why)

    out = run_js(js_dir, {
        "verify": [
            {"der": ours.hex(), "expected": None},
            {"der": ours.hex(), "expected": host.peer_id},
            {"der": ours.hex(), "expected": stranger.peer_id},
            *({"der": der.hex(), "expected": None} for der in bad.values()),
        ],
        "generate": 3,
    })
    verified = out["verified"]
    assert len(verified) == 3 + len(bad)

    # (1) js-libp2p accepts our certificate and derives our PeerID; it pins an expected PeerID too
    assert verified[0] == {"ok": True, "peerId": host.peer_id}
    assert verified[1] == {"ok": True, "peerId": host.peer_id}
    assert verified[2]["ok"] is False and "Unexpected" in verified[2]["error"]

    # (3) js-libp2p refuses every tampered certificate of ours
    for why, result in zip(bad, verified[3:], strict=True):
        assert result["ok"] is False, f"js-libp2p accepted a certificate with {why}"

    # (2) we accept js-libp2p's certificates (fresh secp256k1 keys) and derive the PeerID it reports
    generated = out["generated"]
    assert len(generated) == 3 and len({g["peerId"] for g in generated}) == 3
    for g in generated:
        der = bytes.fromhex(g["der"])
        pubkey = public_key_from_certificate(der)
        assert crypto.peer_id_of(pubkey) == g["peerId"]
        assert g["peerId"].startswith("16Uiu2HA")                  # secp256k1 identity-multihash PeerID
        with pytest.raises(PeerAuthError):                        # and refuse it once a bit is flipped
            public_key_from_certificate(certs.flip_byte(der, len(der) - 3))
