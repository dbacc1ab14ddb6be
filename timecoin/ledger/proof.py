"""Finality proofs: export a block's (or a tx's) finality so a third party checks it offline.

A proof is self-describing JSON (``type`` ``timecoin/finality-proof``, ``version`` 1; bytes as hex,
addresses as 20-byte hex)::

    {"type": "timecoin/finality-proof", "version": 1, "chain_id": "...", "genesis_hash": "<hex>",
     "trusted": {"height": 0}                                    # genesis, or for a trusted block:
              | {"height": T, "header": {...}, "validators": [...]},
     "set_changes": [{"header": {...}, "certificate": {...}, "validators": [...]}, ...],
     "block": {"hash": "<hex>", "header": {...}, "certificate": {...}, "validators": [...]},
     "tx": {"txid": "<hex>", "raw": "<hex>", "index": i, "count": n, "path": ["<hex>", ...]}}  # optional

Why it is enough: a header names the hash of its own validator set only (it does not commit to the
next set, and the state root is an LtHash, which proves no single account). So trust walks forward the
way CometBFT's light client skips: starting from a set the verifier trusts (genesis, or the set named
by a trusted block's header), each ``set_changes`` entry is the first block of a new set; it is
accepted only if its certificate verifies under its own set AND its signers who belong to the trusted
set hold more than 2/3 of the trusted set's power (that is, the trusted set vouches for it). The
target block must then be signed by the set reached. The tx part is an RFC 6962 audit path (the shape
of :mod:`timecoin.ledger.merkle`) from the txid to the header's ``tx_root``.

Everything here is pure: :func:`build_proof` reads a store-like object, :func:`verify_proof` reads
only its arguments. Every failure is a :class:`ProofError` whose message names the failing part.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from timecoin import crypto
from timecoin.errors import DecodeError, TimecoinError
from timecoin.ledger.block import Block, CommitCertificate, Header, Vote, VoteType
from timecoin.ledger.merkle import _leaf, _node
from timecoin.ledger.tx import Transaction
from timecoin.ledger.validators import Validator, ValidatorSet

PROOF_TYPE = "timecoin/finality-proof"
PROOF_VERSION = 1
MAX_PATH = 64                     # a Merkle path longer than this cannot belong to any real block
MAX_LIST = 65_535                 # signatures / validators per certificate or set (the wire's u16 prefix)
U64 = (1 << 64) - 1
MAX_PROOF_BYTES = 64 * 1024 * 1024   # readers refuse bigger documents before parsing them


class ProofError(TimecoinError):
    """The proof does not show finality; the message names the part that fails."""


class ProofBuildError(TimecoinError):
    """The store cannot produce a proof for this request (the message says why)."""


@dataclass(frozen=True)
class Trusted:
    """What a verifier trusts: a genesis (height 0, its validator set) or one block hash at a height."""

    height: int
    block_hash: bytes
    chain_id: str | None = None
    validators: ValidatorSet | None = None

    @classmethod
    def from_genesis(cls, genesis: Any) -> Trusted:
        return cls(0, genesis.hash, genesis.chain_id, genesis.validators())

    @classmethod
    def at(cls, height: int, block_hash: bytes) -> Trusted:
        if height < 1:
            raise ValueError("a trusted block height is at least 1 (use the genesis for height 0)")
        if len(block_hash) != crypto.HASH_SIZE:
            raise ValueError("a trusted block hash is 32 bytes")
        return cls(height, block_hash)


@dataclass(frozen=True)
class VerifiedBlock:
    """What :func:`verify_proof` established: this block (and tx, if asked) is final on ``chain_id``."""

    chain_id: str
    height: int
    block_hash: bytes
    header: Header
    signed_power: int
    total_power: int
    set_changes: tuple[int, ...]          # heights whose set the verifier walked through
    txid: bytes | None = None
    tx_index: int | None = None


# -- Merkle audit paths (RFC 6962 §2.1.1, consistent with merkle.merkle_root) -----------------------
def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)      # largest power of two < n


def _subroot(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(_subroot(leaves[:k]), _subroot(leaves[k:]))


def merkle_path(items: Sequence[bytes], index: int) -> list[bytes]:
    """Sibling hashes from leaf ``index`` up to the root (bottom first)."""
    if not 0 <= index < len(items):
        raise IndexError(f"leaf {index} of {len(items)}")
    leaves = [_leaf(x) for x in items]
    path: list[bytes] = []
    lo, hi = 0, len(leaves)
    while hi - lo > 1:
        k = lo + _split(hi - lo)
        if index < k:
            path.append(_subroot(leaves[k:hi]))
            hi = k
        else:
            path.append(_subroot(leaves[lo:k]))
            lo = k
    return path[::-1]


def root_from_path(item: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes | None:
    """The root that ``path`` leads to from ``item`` at ``index`` of ``count``; None if its length is wrong."""
    sides: list[bool] = []                       # True: the sibling is on the right (top first)
    lo, hi = 0, count
    while hi - lo > 1:
        k = lo + _split(hi - lo)
        sides.append(index < k)
        lo, hi = (lo, k) if index < k else (k, hi)
    if len(sides) != len(path):
        return None
    h = _leaf(item)
    for sibling, right in zip(path, reversed(sides), strict=True):
        h = _node(h, sibling) if right else _node(sibling, h)
    return h


# -- JSON encoding -------------------------------------------------------------------------------------
def _hexed(wire: dict[str, Any]) -> dict[str, Any]:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in wire.items()}


def header_json(header: Header) -> dict[str, Any]:
    return _hexed(header.to_wire())


def certificate_json(cert: CommitCertificate) -> dict[str, Any]:
    return {"height": cert.height, "round": cert.round, "block_hash": cert.block_hash.hex(),
            "signatures": [{"validator": a.hex(), "signature": s.hex()} for a, s in cert.signatures]}


def validators_json(vs: ValidatorSet) -> list[dict[str, Any]]:
    return [{"address": v.address.hex(), "pubkey": v.pubkey.hex(), "power": v.power} for v in vs.validators]


def _certified_json(block: Block, cert: CommitCertificate, vs: ValidatorSet) -> dict[str, Any]:
    return {"hash": block.hash.hex(), "header": header_json(block.header), "certificate": certificate_json(cert),
            "validators": validators_json(vs)}


# -- building ------------------------------------------------------------------------------------------
class ChainReader(Protocol):
    """The store reads a proof needs (timecoin.store.Store provides them)."""

    def get(self, db_name: str, key: bytes) -> bytes | None: ...
    def validator_set(self, height: int) -> ValidatorSet | None: ...
    def get_block(self, height: int) -> Block | None: ...
    def get_certificate(self, height: int) -> CommitCertificate | None: ...
    def genesis_hash(self) -> bytes: ...
    def chain_id(self) -> str: ...


def _load(store: ChainReader, height: int) -> tuple[Block, CommitCertificate, ValidatorSet]:
    block, cert, vs = store.get_block(height), store.get_certificate(height), store.validator_set(height)
    if block is None or cert is None or vs is None:
        raise ProofBuildError(f"no certified block at height {height}")
    return block, cert, vs


def _trusted_power(cert: CommitCertificate, trusted: ValidatorSet) -> int:
    """Power of ``trusted`` among the certificate's signers (signatures are checked by the verifier)."""
    return sum(trusted.power_of(a) for a, _ in cert.signatures)


def _set_changes(store: ChainReader, start: int, target: int) -> list[int]:
    """Heights in (start, target] whose validator set differs from the height before (raw bytes compared)."""
    from timecoin.store import VALIDATORS  # lazily: verifying needs no LMDB

    out: list[int] = []
    prev = store.get(VALIDATORS, max(start, 1).to_bytes(8, "big"))
    for height in range(max(start, 1) + 1, target + 1):
        raw = store.get(VALIDATORS, height.to_bytes(8, "big"))
        if raw != prev:
            out.append(height)
            prev = raw
    return out


def build_proof(store: ChainReader, height: int, txid: bytes | None = None, trusted_height: int = 0) -> dict[str, Any]:
    """The finality proof of block ``height`` (and of ``txid`` in it), walking sets from ``trusted_height``.

    Each set change is linked by the first block of the new set whose certificate carries more than 2/3
    of the previous set's power; if no block of that set does (a change that removed over 1/3 of the
    power at once), ProofBuildError says so: no verifier could accept the walk.
    """
    if not 0 <= trusted_height <= height:
        raise ProofBuildError(f"trusted height {trusted_height} must be between 0 and the block's height {height}")
    block, cert, vs = _load(store, height)
    proof: dict[str, Any] = {"type": PROOF_TYPE, "version": PROOF_VERSION, "chain_id": store.chain_id(),
                             "genesis_hash": store.genesis_hash().hex()}
    if trusted_height == 0:
        proof["trusted"] = {"height": 0}
        current = store.validator_set(1)
    else:
        anchor, _, current = _load(store, trusted_height)
        proof["trusted"] = {"height": trusted_height, "header": header_json(anchor.header),
                            "validators": validators_json(current)}
    if current is None:
        raise ProofBuildError("the store has no validator set at height 1")
    changes = _set_changes(store, trusted_height, height)
    links = []
    for i, change in enumerate(changes):
        end = changes[i + 1] if i + 1 < len(changes) else height + 1
        for h in range(change, end):
            lblock, lcert, lvs = _load(store, h)
            if current.quorum(_trusted_power(lcert, current)):
                links.append(_certified_json(lblock, lcert, lvs))
                current = lvs
                break
        else:
            raise ProofBuildError(f"the validator set that changed at height {change} is not vouched for by more "
                                  "than 2/3 of the previous set's power in any certificate: no light proof "
                                  f"can cross it (ask for a proof trusting a height >= {change})")
    proof["set_changes"] = links
    proof["block"] = _certified_json(block, cert, vs)
    if txid is not None:
        ids = [t.id for t in block.txs]
        if txid not in ids:
            raise ProofBuildError(f"tx {txid.hex()} is not in block {height}")
        index = ids.index(txid)
        proof["tx"] = {"txid": txid.hex(), "raw": block.txs[index].encoded.hex(), "index": index,
                       "count": len(ids), "path": [h.hex() for h in merkle_path(ids, index)]}
    return proof


# -- parsing (every field of an untrusted document checked) --------------------------------------------
def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ProofError(f"malformed proof: {where} must be an object")
    if key not in obj:
        raise ProofError(f"malformed proof: {where}.{key} is missing")
    return obj[key]


def _int(obj: Any, key: str, where: str, high: int = U64, low: int = 0) -> int:
    v = _field(obj, key, where)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise ProofError(f"malformed proof: {where}.{key} must be an integer in [{low}, {high}]")
    return v


def _bytes(obj: Any, key: str, where: str, size: int) -> bytes:
    v = _field(obj, key, where)
    return _hex(v, f"{where}.{key}", size)


def _hex(v: Any, where: str, size: int | None) -> bytes:
    try:
        if not isinstance(v, str) or len(v) > 2_000_000:
            raise ValueError
        raw = bytes.fromhex(v)
    except ValueError:
        raise ProofError(f"malformed proof: {where} must be a hex string") from None
    if size is not None and len(raw) != size:
        raise ProofError(f"malformed proof: {where} must be {size} bytes, not {len(raw)}")
    return raw


def _list(obj: Any, key: str, where: str, limit: int = MAX_LIST) -> list[Any]:
    v = _field(obj, key, where)
    if not isinstance(v, list) or len(v) > limit:
        raise ProofError(f"malformed proof: {where}.{key} must be an array of at most {limit} entries")
    return v


def parse_header(obj: Any, where: str) -> Header:
    return Header(
        height=_int(obj, "height", where), round=_int(obj, "round", where, 2**32 - 1),
        prev_hash=_bytes(obj, "prev_hash", where, 32), timestamp=_int(obj, "timestamp", where),
        proposer=_bytes(obj, "proposer", where, 20), tx_root=_bytes(obj, "tx_root", where, 32),
        state_root=_bytes(obj, "state_root", where, 32), validators_hash=_bytes(obj, "validators_hash", where, 32),
        evidence_root=_bytes(obj, "evidence_root", where, 32), version=_int(obj, "version", where, 2**16 - 1))


def parse_certificate(obj: Any, where: str) -> CommitCertificate:
    sigs = tuple((_bytes(s, "validator", f"{where}.signatures[{i}]", 20),
                  _bytes(s, "signature", f"{where}.signatures[{i}]", 64))
                 for i, s in enumerate(_list(obj, "signatures", where)))
    return CommitCertificate(_int(obj, "height", where), _int(obj, "round", where, 2**32 - 1),
                             _bytes(obj, "block_hash", where, 32), sigs)


def parse_validators(obj: Any, key: str, where: str) -> ValidatorSet:
    vals = [Validator(_bytes(v, "address", f"{where}.{key}[{i}]", 20), _bytes(v, "pubkey", f"{where}.{key}[{i}]", 33),
                      _int(v, "power", f"{where}.{key}[{i}]", U64, 1))
            for i, v in enumerate(_list(obj, key, where))]
    try:
        return ValidatorSet(vals)
    except ValueError as exc:
        raise ProofError(f"malformed proof: {where}.{key}: {exc}") from None


# -- verifying -----------------------------------------------------------------------------------------
def _short(b: bytes) -> str:
    return b.hex()[:8] + ".."


def check_certificate(header: Header, cert: CommitCertificate, vs: ValidatorSet, chain_id: str) -> int:
    """Signed power of a certificate that finalizes ``header`` under ``vs``; ProofError naming what fails."""
    where = f"certificate of block {header.height}"
    if cert.height != header.height or cert.block_hash != header.hash:
        raise ProofError(f"{where} is for block {_short(cert.block_hash)} at height {cert.height}, not this block")
    power, prev = 0, b""
    for address, signature in cert.signatures:
        if address <= prev:
            raise ProofError(f"{where}: signers are not in strictly ascending order (validator {_short(address)})")
        prev = address
        v = vs.by_address.get(address)
        if v is None:
            raise ProofError(f"{where}: signer {_short(address)} is not in the validator set of height {header.height}")
        vote = Vote(VoteType.PRECOMMIT, cert.height, cert.round, cert.block_hash, address, signature)
        if not crypto.verify(v.pubkey, crypto.TAG_VOTE, chain_id, vote.signing_payload(), signature):
            raise ProofError(f"{where}: signature of validator {_short(address)} does not verify")
        power += v.power
    if not vs.quorum(power):
        raise ProofError(f"{where}: signers hold {power} of {vs.total_power} power, not more than 2/3")
    return power


def _check_set(header: Header, vs: ValidatorSet) -> None:
    if vs.hash != header.validators_hash:
        raise ProofError(f"validator set of height {header.height} does not match validators_hash")


def _check_hash(obj: Any, header: Header, where: str) -> None:
    if isinstance(obj, dict) and "hash" in obj and _bytes(obj, "hash", where, 32) != header.hash:
        raise ProofError(f"{where}: hash {_short(_bytes(obj, 'hash', where, 32))} is not the hash of its header "
                         f"({_short(header.hash)})")


def _anchor(proof: dict[str, Any], trusted: Trusted, chain_id: str, genesis_hash: bytes) -> ValidatorSet:
    anchor = _field(proof, "trusted", "proof")
    height = _int(anchor, "height", "trusted")
    if trusted.height == 0:
        if genesis_hash != trusted.block_hash:
            raise ProofError(f"proof is for genesis {_short(genesis_hash)}, not the trusted genesis "
                             f"{_short(trusted.block_hash)} (another chain)")
        if trusted.chain_id is not None and chain_id != trusted.chain_id:
            raise ProofError(f"proof is for chain {chain_id!r}, not the trusted {trusted.chain_id!r}")
        if height != 0:
            raise ProofError(f"proof starts from trusted height {height}, not genesis: verify it with "
                             f"--trusted-height {height} --trusted-hash HASH, or ask for a proof from genesis")
        if trusted.validators is None:
            raise ProofError("the trusted genesis has no validator set")
        return trusted.validators
    if height != trusted.height:
        raise ProofError(f"proof starts from height {height}, not the trusted height {trusted.height}")
    header = parse_header(_field(anchor, "header", "trusted"), "trusted.header")
    if header.height != trusted.height or header.hash != trusted.block_hash:
        raise ProofError(f"trusted header of height {header.height} has hash {_short(header.hash)}, not the "
                         f"trusted {_short(trusted.block_hash)} at height {trusted.height}")
    vs = parse_validators(anchor, "validators", "trusted")
    _check_set(header, vs)
    return vs


def verify_proof(proof: Any, trusted: Trusted) -> VerifiedBlock:
    """Check ``proof`` (the parsed JSON) against what the caller ``trusted``; ProofError names what fails."""
    if not isinstance(proof, dict) or proof.get("type") != PROOF_TYPE:
        raise ProofError(f"not a finality proof: expected an object with type {PROOF_TYPE!r}")
    version = proof.get("version")
    if version != PROOF_VERSION:
        raise ProofError(f"unsupported proof version {version!r} (this verifier reads version {PROOF_VERSION})")
    chain_id = _field(proof, "chain_id", "proof")
    if not isinstance(chain_id, str) or not 0 < len(chain_id) <= 255:
        raise ProofError("malformed proof: proof.chain_id must be a non-empty string")
    genesis_hash = _bytes(proof, "genesis_hash", "proof", 32)
    current = _anchor(proof, trusted, chain_id, genesis_hash)
    at = trusted.height
    target_obj = _field(proof, "block", "proof")
    target = parse_header(_field(target_obj, "header", "block"), "block.header")
    walked: list[int] = []
    for i, link in enumerate(_list(proof, "set_changes", "proof")):
        where = f"set_changes[{i}]"
        header = parse_header(_field(link, "header", where), f"{where}.header")
        if not at < header.height <= target.height:
            raise ProofError(f"set change at height {header.height} is not between the trusted height {at} and "
                             f"the block's height {target.height}")
        _check_hash(link, header, where)
        vs = parse_validators(link, "validators", where)
        _check_set(header, vs)
        cert = parse_certificate(_field(link, "certificate", where), f"{where}.certificate")
        check_certificate(header, cert, vs, chain_id)
        vouched = sum(current.power_of(a) for a, _ in cert.signatures)   # signatures verified just above
        if any(a in current and current.by_address[a].pubkey != vs.by_address[a].pubkey for a, _ in cert.signatures):
            raise ProofError(f"set change at height {header.height}: a signer's key differs from the trusted set's")
        if not current.quorum(vouched):
            raise ProofError(f"set change at height {header.height}: the trusted set (from height {at}) signed "
                             f"{vouched} of {current.total_power} power, not more than 2/3")
        current, at = vs, header.height
        walked.append(header.height)
    if target.height < max(at, 1):
        raise ProofError(f"block {target.height} is below the trusted height {at}")
    _check_hash(target_obj, target, "block")
    vs = parse_validators(target_obj, "validators", "block")
    _check_set(target, vs)
    if vs != current:
        raise ProofError(f"validator set of height {target.height} is not the trusted one: the proof's set-change "
                         f"chain misses a change between heights {at} and {target.height}")
    cert = parse_certificate(_field(target_obj, "certificate", "block"), "block.certificate")
    power = check_certificate(target, cert, vs, chain_id)
    if trusted.height and target.height == trusted.height and target.hash != trusted.block_hash:
        raise ProofError(f"block {target.height} is not the trusted block {_short(trusted.block_hash)}")
    out = VerifiedBlock(chain_id, target.height, target.hash, target, power, vs.total_power, tuple(walked))
    if "tx" not in proof:
        return out
    txid, index = _check_tx(proof["tx"], target)
    return VerifiedBlock(chain_id, target.height, target.hash, target, power, vs.total_power, tuple(walked),
                         txid, index)


def _check_tx(obj: Any, header: Header) -> tuple[bytes, int]:
    txid = _bytes(obj, "txid", "tx", 32)
    count = _int(obj, "count", "tx", 2**32, 1)
    index = _int(obj, "index", "tx", count - 1)
    path = [_hex(h, f"tx.path[{i}]", 32) for i, h in enumerate(_list(obj, "path", "tx", MAX_PATH))]
    if isinstance(obj, dict) and obj.get("raw") is not None:
        try:
            tx = Transaction.decode(_hex(obj["raw"], "tx.raw", None))
        except DecodeError as exc:
            raise ProofError(f"malformed proof: tx.raw is not a transaction: {exc}") from None
        if tx.id != txid:
            raise ProofError(f"tx {_short(txid)}: raw transaction hashes to {_short(tx.id)}, not the txid")
    root = root_from_path(txid, index, count, path)
    if root is None:
        raise ProofError(f"tx {_short(txid)} not in block {header.height}: Merkle path has {len(path)} hashes, "
                         f"a tree of {count} leaves needs another number at index {index}")
    if root != header.tx_root:
        raise ProofError(f"tx {_short(txid)} not in block {header.height}: Merkle path does not reach tx_root")
    return txid, index

