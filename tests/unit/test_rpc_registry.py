"""The RPC method table checks every parameter before a handler runs, and says what is wrong."""
from __future__ import annotations

from typing import Any

import pytest

from timecoin.rpc.errors import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, RPCError
from timecoin.rpc.registry import MethodTable, Param


def table() -> tuple[MethodTable, list[dict[str, Any]]]:
    t = MethodTable()
    calls: list[dict[str, Any]] = []

    @t.method("getblockhash", Param("height", "int", "a height", minimum=0),
              summary="Hash of the block at a height.", result="hex", group="Blockchain")
    def getblockhash(ctx: Any, height: int) -> str:
        calls.append({"height": height})
        return "ok"

    @t.method("getblock", Param("blockhash", "hex", "a hash", hex_bytes=32),
              Param("verbosity", "int", "0, 1 or 2", required=False, default=1, minimum=0, maximum=2),
              summary="A block.", result="object", group="Blockchain")
    def getblock(ctx: Any, blockhash: str, verbosity: int) -> dict[str, Any]:
        calls.append({"blockhash": blockhash, "verbosity": verbosity})
        return {}

    return t, calls


def error(t: MethodTable, name: Any, params: Any) -> RPCError:
    with pytest.raises(RPCError) as info:
        t.call(None, name, params)
    return info.value


def test_positional_and_named_params_reach_the_handler_checked_with_defaults() -> None:
    t, calls = table()
    t.call(None, "getblockhash", [5])
    t.call(None, "getblock", {"blockhash": "ab" * 32})
    t.call(None, "getblock", ["ab" * 32, 2])
    t.call(None, "getblock", ["ab" * 32, None])           # null takes the default, as bitcoind does
    assert calls == [{"height": 5}, {"blockhash": "ab" * 32, "verbosity": 1},
                     {"blockhash": "ab" * 32, "verbosity": 2}, {"blockhash": "ab" * 32, "verbosity": 1}]


@pytest.mark.parametrize(("name", "params", "code", "says"), [
    ("getblockhash", ["5"], INVALID_PARAMS, "height must be an integer, not a string"),
    ("getblockhash", [True], INVALID_PARAMS, "height must be an integer, not a boolean"),
    ("getblockhash", [1.5], INVALID_PARAMS, "height must be an integer, not a number"),
    ("getblockhash", [-1], INVALID_PARAMS, "height out of range"),
    ("getblockhash", [1 << 70], INVALID_PARAMS, "height out of range"),
    ("getblockhash", [], INVALID_PARAMS, "missing parameter height"),
    ("getblockhash", [1, 2], INVALID_PARAMS, "at most 1 parameters"),
    ("getblockhash", {"hight": 1}, INVALID_PARAMS, "no parameter hight"),
    ("getblockhash", "5", INVALID_REQUEST, "params must be an array or an object"),
    ("getblock", ["zz" * 32], INVALID_PARAMS, "blockhash must be hex"),
    ("getblock", ["abc"], INVALID_PARAMS, "blockhash must be hex"),
    ("getblock", ["ab" * 31], INVALID_PARAMS, "must be 32 bytes"),
    ("getblock", ["ab" * 32, 3], INVALID_PARAMS, "verbosity out of range"),
    ("nosuchmethod", [], METHOD_NOT_FOUND, "Method not found"),
    (17, [], INVALID_REQUEST, "method must be a string"),
])
def test_bad_calls_never_reach_the_handler_and_say_what_is_wrong(name: Any, params: Any, code: int,
                                                                  says: str) -> None:
    t, calls = table()
    err = error(t, name, params)
    assert err.code == code and says in err.message, err.message
    assert calls == []


def test_a_method_cannot_be_registered_twice_or_with_a_required_param_after_an_optional_one() -> None:
    t, _ = table()
    with pytest.raises(ValueError, match="twice"):
        t.method("getblock", summary="", result="", group="")(lambda ctx: None)
    with pytest.raises(ValueError, match="after an optional"):
        t.method("x", Param("a", "int", "", required=False), Param("b", "int", ""), summary="", result="",
                 group="")(lambda ctx, a, b: None)


def test_help_lists_methods_by_group_and_explains_one() -> None:
    t, _ = table()
    assert t.help() == "== Blockchain ==\ngetblock blockhash [verbosity]\ngetblockhash height"
    text = t.help("getblock")
    assert text.startswith("getblock blockhash [verbosity]") and "2. verbosity (int, optional, default=1)" in text
