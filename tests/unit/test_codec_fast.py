"""The fast paths of the hot codecs (``messages.FAST_DECODERS``/``FAST_ENCODERS``) agree with construct.

A fast decoder must accept only what the guarded decoder (compiled parse, rebuild, compare) accepts, with an
equal value; it may decline (None) anything, which then takes the guarded path. A fast encoder must write
the bytes construct builds, or decline. Checked on random valid values, on mutations of their encodings
(bit flips, truncation, extension, insertion...) and on random bytes, with the fuzz suite's generators.
"""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.test_wire_fuzz import mutated, strategy_for
from timecoin.errors import DecodeError
from timecoin.wire import messages

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
NAMES = sorted(messages.FAST_DECODERS)
CODECS = {name: getattr(messages, {"Tx": "TX", "Vote": "VOTE", "Header": "HEADER", "Block": "BLOCK",
                                   "Envelope": "ENVELOPE"}[name]) for name in NAMES}


def guarded(name: str, data: bytes) -> tuple[bool, Any]:
    try:
        return True, CODECS[name].decode_guarded(data)
    except DecodeError:
        return False, None


def check(name: str, data: bytes) -> None:
    fast = messages.FAST_DECODERS[name](data)
    ok, value = guarded(name, data)
    if fast is not None:
        assert ok, f"fast {name} decoder accepted bytes the guarded one refuses: {data.hex()}"
        assert fast == value
    # And the public decode (fast path first) behaves exactly as the guarded one.
    if ok:
        assert CODECS[name].decode(data) == value
    else:
        with pytest.raises(DecodeError):
            CODECS[name].decode(data)


@st.composite
def valid(draw: st.DrawFn, name: str | None = None) -> tuple[str, Any, bytes]:
    name = name or draw(st.sampled_from(NAMES))
    if name == "Envelope":      # the fast envelope covers TX and VOTE bodies; other types must decline
        msg_type = draw(st.sampled_from([messages.MsgType.TX, messages.MsgType.VOTE, messages.MsgType.PING]))
        value = {"type": int(msg_type), "request_id": draw(st.integers(0, 2**32 - 1)),
                 "body": draw(strategy_for(messages.BODIES[msg_type]))}
    else:
        value = draw(strategy_for(messages.LAYOUTS[name]))
    return name, value, CODECS[name].compiled.build(value)


@FAST
@given(valid())
def test_valid_encodings_decode_fast_to_the_guarded_value(case: tuple[str, Any, bytes]) -> None:
    name, value, data = case
    check(name, data)
    fast = messages.FAST_DECODERS[name](data)
    if name != "Envelope" or value["type"] in (int(messages.MsgType.TX), int(messages.MsgType.VOTE)):
        assert fast is not None and fast == CODECS[name].decode_guarded(data)


@FAST
@given(valid())
def test_fast_encoders_write_what_construct_builds(case: tuple[str, Any, bytes]) -> None:
    name, value, data = case
    encoder = messages.FAST_ENCODERS.get(name)
    if encoder is None:
        return
    try:
        out = encoder(value)
    except ValueError:
        out = None
    assert out is None or out == data
    assert CODECS[name].encode(value) == data


@FAST
@given(st.data())
def test_mutated_encodings_agree_with_the_guarded_decoder(data: st.DataObject) -> None:
    name, _, encoded = data.draw(valid())
    check(name, data.draw(mutated(encoded)))


@FAST
@given(st.sampled_from(NAMES), st.binary(max_size=400))
def test_random_bytes_agree_with_the_guarded_decoder(name: str, data: bytes) -> None:
    check(name, data)


def test_non_utf8_chain_id_is_refused_by_both_paths() -> None:
    tx = {"kind": 0, "chain_id": "c", "sender": bytes(33), "nonce": 0, "fee": 0, "amount": 1,
          "recipient": bytes(20), "signature": bytes(64)}
    data = bytearray(messages.TX.encode(tx))
    data[2] = 0xFF                        # the chain id's only byte: not UTF-8
    assert messages.FAST_DECODERS["Tx"](bytes(data)) is None
    with pytest.raises(DecodeError):
        messages.TX.decode(bytes(data))


@pytest.mark.parametrize("bad", [{"block_hash": bytes(31)}, {"height": 2**64}, {"type": "1"},
                                 {"signature": bytearray(64)}])
def test_fast_vote_encoder_declines_what_construct_must_judge(bad: dict[str, Any]) -> None:
    vote = {"type": 1, "height": 1, "round": 0, "block_hash": bytes(32), "validator": bytes(20),
            "signature": bytes(64)} | bad
    try:
        out = messages.FAST_ENCODERS["Vote"](vote)
    except Exception:               # struct.error and the fast path's own ValueError
        out = None
    assert out is None or out == messages.VOTE.compiled.build(vote)
