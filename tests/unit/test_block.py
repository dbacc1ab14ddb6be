"""Blocks, Merkle roots, votes, evidence and commit certificates (SPEC §3–§4).

``verify_certificate`` is what sync trusts to accept a block as final, so each of its refusals is
tested with a certificate that would otherwise pass.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from timecoin import crypto
from timecoin.crypto import PrivateKey
from timecoin.errors import DecodeError, InvalidSignature, Reason, ValidationError
from timecoin.ledger.block import (
    NIL_HASH,
    Block,
    CommitCertificate,
    Evidence,
    Header,
    Proposal,
    Vote,
    VoteType,
    evidence_root,
    tx_root,
    verify_certificate,
)
from timecoin.ledger.merkle import EMPTY_ROOT, merkle_root
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.ledger.validators import Validator, ValidatorSet

CHAIN = "timecoin-test"
KEYS = sorted((PrivateKey(bytes([i]) * 32) for i in range(1, 6)), key=lambda k: k.address)
OUTSIDER = PrivateKey(b"\x99" * 32)


def _leaf(x: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + x).digest()


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def _set(powers: list[int]) -> ValidatorSet:
    return ValidatorSet(Validator(k.address, k.public_key, p) for k, p in zip(KEYS, powers, strict=False))


def _tx(nonce: int, key: PrivateKey = OUTSIDER) -> Transaction:
    return Transaction.create(key, TxKind.TRANSFER, CHAIN, nonce, 1000, 5, KEYS[0].address)


def _block(validators: ValidatorSet, height: int = 7, txs: tuple[Transaction, ...] = ()) -> Block:
    header = Header(height=height, round=0, prev_hash=b"\x01" * 32, timestamp=1_700_000_000_000,
                    proposer=KEYS[0].address, tx_root=tx_root(txs), state_root=b"\x02" * 32,
                    validators_hash=validators.hash, evidence_root=evidence_root(()))
    return Block(header, txs)


def _precommit(key: PrivateKey, block: Block, round_: int = 0, chain: str = CHAIN,
               vtype: VoteType = VoteType.PRECOMMIT, height: int | None = None) -> Vote:
    h = block.height if height is None else height
    return Vote(vtype, h, round_, block.hash, key.address).signed(key, chain)


def _cert(block: Block, signers: list[PrivateKey], **kw: object) -> CommitCertificate:
    return CommitCertificate.from_votes([_precommit(k, block, **kw) for k in signers])  # type: ignore[arg-type]


def _refused(block: Block, cert: CommitCertificate, vs: ValidatorSet, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as err:
        verify_certificate(block, cert, vs, CHAIN)
    assert err.value.reason == Reason.BAD_CERTIFICATE


# -- Merkle roots --------------------------------------------------------------------------------------
def test_merkle_root_shapes() -> None:
    a, b, c, d, e = (bytes([i]) * 32 for i in range(5))
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert merkle_root([a]) == _leaf(a)
    assert merkle_root([a, b]) == _node(_leaf(a), _leaf(b))
    # RFC 6962: split at the largest power of two below n; no duplication of odd leaves.
    assert merkle_root([a, b, c]) == _node(_node(_leaf(a), _leaf(b)), _leaf(c))
    ab_cd = _node(_node(_leaf(a), _leaf(b)), _node(_leaf(c), _leaf(d)))
    assert merkle_root([a, b, c, d]) == ab_cd
    assert merkle_root([a, b, c, d, e]) == _node(ab_cd, _leaf(e))


def test_merkle_root_distinguishes_lists() -> None:
    a, b, c = (bytes([i]) * 32 for i in range(3))
    roots = {merkle_root(x) for x in ([a, b, c], [a, b, c, c], [b, a, c], [a, b], [_node(_leaf(a), _leaf(b))])}
    assert len(roots) == 5
    # A leaf equal to an inner node does not collide (leaf/node prefixes differ).
    assert merkle_root([_node(_leaf(a), _leaf(b))]) != merkle_root([a, b])


def test_block_tx_root_is_merkle_of_tx_ids() -> None:
    txs = tuple(_tx(n) for n in range(3))
    block = _block(_set([1]), txs=txs)
    assert block.header.tx_root == merkle_root([t.id for t in txs])
    block.check_roots()
    with pytest.raises(ValidationError, match="tx_root") as err:
        replace(block, txs=txs[:2]).check_roots()
    assert err.value.reason == Reason.BAD_BLOCK
    with pytest.raises(ValidationError, match="tx_root"):
        replace(block, txs=(txs[1], txs[0], txs[2])).check_roots()


def test_block_encoding_round_trip_and_hash() -> None:
    vs = _set([1, 1])
    b1 = _block(vs)
    ev = Evidence.of(_precommit(KEYS[0], b1), Vote(VoteType.PRECOMMIT, 7, 0, NIL_HASH,
                                                    KEYS[0].address).signed(KEYS[0], CHAIN))
    txs = (_tx(0), _tx(1))
    header = replace(b1.header, tx_root=tx_root(txs), evidence_root=evidence_root((ev,)))
    block = Block(header, txs, (ev,))
    again = Block.decode(block.encoded)
    assert again == block
    assert again.hash == block.hash == hashlib.sha256(header.encoded).digest()
    again.check_roots()
    assert block.size == len(block.encoded)
    with pytest.raises(ValidationError, match="evidence_root"):
        replace(block, evidence=()).check_roots()
    with pytest.raises(DecodeError):
        Block.decode(block.encoded + b"\x00")
    # Any header field changes the hash.
    assert replace(header, timestamp=header.timestamp + 1).hash != header.hash
    assert replace(header, round=1).hash != header.hash


# -- commit certificates -------------------------------------------------------------------------------
def test_certificate_accepts_more_than_two_thirds() -> None:
    vs = _set([100, 100, 100, 100])
    block = _block(vs)
    cert = _cert(block, KEYS[:3])               # 300 of 400
    verify_certificate(block, cert, vs, CHAIN)
    verify_certificate(block, _cert(block, KEYS[:4]), vs, CHAIN)
    assert CommitCertificate.decode(cert.encoded) == cert
    verify_certificate(block, CommitCertificate.decode(cert.encoded), vs, CHAIN)


def test_certificate_refuses_exactly_two_thirds() -> None:
    vs = _set([200, 100])                       # total 300: 200 is exactly 2/3
    block = _block(vs)
    _refused(block, _cert(block, [KEYS[0]]), vs, "not > 2/3")
    vs2 = _set([201, 100])                      # 201 of 301: 603 > 602, strictly more
    block2 = _block(vs2)
    verify_certificate(block2, _cert(block2, [KEYS[0]]), vs2, CHAIN)
    vs3 = _set([1, 1, 1])
    block3 = _block(vs3)
    _refused(block3, _cert(block3, KEYS[:2]), vs3, "not > 2/3")
    verify_certificate(block3, _cert(block3, KEYS[:3]), vs3, CHAIN)
    _refused(block3, CommitCertificate(block3.height, 0, block3.hash), vs3, "not > 2/3")


def test_certificate_refuses_duplicate_signer() -> None:
    """Counting one signer twice would reach the quorum: 2 x 100 + 100 = 300 of 400."""
    vs = _set([100, 100, 100, 100])
    block = _block(vs)
    v0, v1 = _precommit(KEYS[0], block), _precommit(KEYS[1], block)
    cert = CommitCertificate(block.height, 0, block.hash,
                             ((v0.validator, v0.signature), (v0.validator, v0.signature), (v1.validator, v1.signature)))
    _refused(block, cert, vs, "ascending")
    # And out of order (unsorted) is refused too, even with distinct signers.
    v2 = _precommit(KEYS[2], block)
    unsorted = CommitCertificate(block.height, 0, block.hash,
                                 ((v2.validator, v2.signature), (v0.validator, v0.signature),
                                  (v1.validator, v1.signature)))
    _refused(block, unsorted, vs, "ascending")


def test_certificate_refuses_signer_not_in_set() -> None:
    vs = _set([100, 100, 100])
    block = _block(vs)
    # The outsider's own, valid signature: not a member.
    _refused(block, _cert(block, [*KEYS[:2], OUTSIDER]), vs, "not a validator")
    # Membership is of this height's set: a member of another set is not enough.
    _refused(block, _cert(block, [*KEYS[:2], KEYS[4]]), vs, "not a validator")


def test_certificate_refuses_bad_signature() -> None:
    vs = _set([100, 100, 100])
    block = _block(vs)
    good = _cert(block, KEYS[:3])
    sigs = list(good.signatures)
    addr, sig = sigs[2]
    sigs[2] = (addr, bytes([sig[0] ^ 1]) + sig[1:])
    _refused(block, replace(good, signatures=tuple(sigs)), vs, "signature")
    # A member's address with another member's signature.
    sigs = list(good.signatures)
    sigs[2] = (sigs[2][0], sigs[1][1])
    _refused(block, replace(good, signatures=tuple(sigs)), vs, "signature")
    # Signed for another chain.
    _refused(block, _cert(block, KEYS[:3], chain="timecoin-other"), vs, "signature")


def test_certificate_refuses_votes_for_another_block_height_round_or_type() -> None:
    vs = _set([100, 100, 100])
    block = _block(vs)
    other = _block(vs, height=8)
    sibling = Block(replace(block.header, timestamp=block.header.timestamp + 1))
    _refused(block, _cert(other, KEYS[:3]), vs, "another block")
    _refused(block, _cert(sibling, KEYS[:3]), vs, "another block")
    # Signatures over precommits for another height, relabelled as this block's certificate.
    wrong_h = _cert(block, KEYS[:3], height=8)
    _refused(block, replace(wrong_h, height=block.height), vs, "signature")
    # Signed in round 1, certificate claims round 0.
    r1 = _cert(block, KEYS[:3], round_=1)
    verify_certificate(block, r1, vs, CHAIN)
    _refused(block, replace(r1, round=0), vs, "signature")
    # Prevotes are not precommits.
    _refused(block, _cert(block, KEYS[:3], vtype=VoteType.PREVOTE), vs, "signature")


def test_certificate_refuses_block_of_another_validator_set() -> None:
    vs = _set([100, 100, 100])
    block = _block(_set([100, 100, 100, 100]))
    _refused(block, _cert(block, KEYS[:3]), vs, "another validator set")


def test_certificate_from_votes_is_canonical() -> None:
    vs = _set([1, 1, 1, 1])
    block = _block(vs)
    votes = [_precommit(k, block) for k in reversed(KEYS[:4])]
    cert = CommitCertificate.from_votes(votes)
    assert [a for a, _ in cert.signatures] == sorted(k.address for k in KEYS[:4])
    assert cert == CommitCertificate.from_votes(list(reversed(votes)))
    assert {v.encoded for v in cert.votes()} == {v.encoded for v in votes}


# -- votes, evidence, proposals ------------------------------------------------------------------------
def test_vote_signature_and_domain() -> None:
    vs = _set([1])
    block = _block(vs)
    fresh = _precommit(KEYS[0], block, round_=5)   # never verified before: no cached result
    with pytest.raises(InvalidSignature):
        fresh.verify_signature(KEYS[1].public_key, CHAIN)
    vote = _precommit(KEYS[0], block)
    vote.verify_signature(KEYS[0].public_key, CHAIN)
    assert Vote.decode(vote.encoded) == vote
    with pytest.raises(InvalidSignature):
        vote.verify_signature(KEYS[0].public_key, "timecoin-other")
    with pytest.raises(InvalidSignature):
        replace(vote, round=1).verify_signature(KEYS[0].public_key, CHAIN)
    # The same signed bytes are not a valid proposal or tx signature (domain tags differ).
    assert not crypto.verify(KEYS[0].public_key, crypto.TAG_PROPOSAL, CHAIN, vote.signing_payload(), vote.signature)
    assert not crypto.verify(KEYS[0].public_key, crypto.TAG_TX, CHAIN, vote.signing_payload(), vote.signature)


def test_vote_verified_once_still_fails_with_another_key() -> None:
    block = _block(_set([1]))
    vote = _precommit(KEYS[0], block, round_=6)
    vote.verify_signature(KEYS[0].public_key, CHAIN)
    with pytest.raises(InvalidSignature):
        vote.verify_signature(KEYS[1].public_key, CHAIN)


def test_evidence_canonical_order_and_verify() -> None:
    vs = _set([100, 100])
    b1, b2 = _block(vs), _block(vs, height=7, txs=(_tx(0),))
    va, vb = _precommit(KEYS[0], b1), _precommit(KEYS[0], b2)
    ev = Evidence.of(va, vb)
    assert ev == Evidence.of(vb, va)
    assert ev.vote_a.block_hash < ev.vote_b.block_hash
    assert ev.validator == KEYS[0].address and ev.height == 7
    ev.verify(vs, CHAIN)
    assert Evidence.decode(ev.encoded) == ev
    # A nil vote against a block vote is an equivocation too.
    nil = Vote(VoteType.PRECOMMIT, 7, 0, NIL_HASH, KEYS[0].address).signed(KEYS[0], CHAIN)
    Evidence.of(nil, va).verify(vs, CHAIN)


def _bad_evidence(ev: Evidence, vs: ValidatorSet, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as err:
        ev.verify(vs, CHAIN)
    assert err.value.reason == Reason.BAD_EVIDENCE


def test_invalid_evidence_refused() -> None:
    vs = _set([100, 100])
    b1, b2 = _block(vs), _block(vs, height=7, txs=(_tx(0),))
    va, vb = _precommit(KEYS[0], b1), _precommit(KEYS[0], b2)
    ev = Evidence.of(va, vb)
    _bad_evidence(Evidence(va, va), vs, "differ")
    _bad_evidence(Evidence(ev.vote_b, ev.vote_a), vs, "canonical order")
    _bad_evidence(Evidence.of(va, _precommit(KEYS[0], b2, round_=1)), vs, "same height/round")
    _bad_evidence(Evidence.of(va, _precommit(KEYS[0], b2, vtype=VoteType.PREVOTE)), vs, "same height/round")
    _bad_evidence(Evidence.of(va, _precommit(KEYS[1], b2)), vs, "same height/round")
    outsider_ev = Evidence.of(_precommit(OUTSIDER, b1), _precommit(OUTSIDER, b2))
    _bad_evidence(outsider_ev, vs, "not a validator")
    forged = replace(vb, signature=bytes([vb.signature[0] ^ 1]) + vb.signature[1:])
    _bad_evidence(Evidence.of(va, forged), vs, "signature")
    # Two votes signed for another chain do not prove anything on this one.
    _bad_evidence(Evidence.of(_precommit(KEYS[0], b1, chain="x"), _precommit(KEYS[0], b2, chain="x")), vs,
                  "signature")


def test_proposal_signature() -> None:
    vs = _set([1])
    block = _block(vs)
    prop = Proposal(7, 0, -1, b"", block).signed(KEYS[0], CHAIN)
    assert prop.proposer == KEYS[0].address
    prop.verify_signature(KEYS[0].public_key, CHAIN)
    assert Proposal.decode(prop.encoded) == prop
    with pytest.raises(InvalidSignature):
        prop.verify_signature(KEYS[0].public_key, "timecoin-other")
    with pytest.raises(InvalidSignature):
        replace(prop, pol_round=0).verify_signature(KEYS[0].public_key, CHAIN)
    with pytest.raises(InvalidSignature):
        replace(prop, block=_block(vs, height=8)).verify_signature(KEYS[0].public_key, CHAIN)
