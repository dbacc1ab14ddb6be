"""The RPC method table: every method's name, parameters (typed, checked), result and handler, in one place.

A handler is registered with :meth:`MethodTable.method` and called as ``handler(ctx, **params)`` with its
parameters already checked against their declared types and ranges, from a JSON-RPC positional array or
named object (bitcoind accepts both). It returns a JSON-ready value or a Deferred of one (long polls such
as ``waitfornewblock``). Bad parameters never reach a handler: :meth:`MethodTable.call` raises
``RPCError(-32602)`` naming the parameter and what is wrong. ``help`` and docs/rpc.md are built from the
same table, so a method cannot be documented one way and checked another.
"""
from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from timecoin.rpc.errors import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, RPCError

_HEX = frozenset(string.hexdigits)
MAX_INT = (1 << 63) - 1                # JSON integers we accept (heights, amounts in units, counts)

# A parameter's type: what JSON value it accepts.
TYPES = ("int", "number", "str", "bool", "hex", "object", "array", "any")


@dataclass(frozen=True)
class Param:
    """One parameter: its name (for named calls and help), JSON type, and bounds.

    ``hex_bytes`` fixes the decoded length of a ``hex`` string (32 for a hash); ``choices`` limits a
    ``str``; ``minimum``/``maximum`` bound an ``int`` or ``number``. A parameter with ``required=False``
    takes ``default`` when absent.
    """

    name: str
    type: str
    doc: str
    required: bool = True
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    hex_bytes: int | None = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"parameter {self.name}: unknown type {self.type!r}")

    def check(self, value: Any) -> Any:
        """``value`` if it fits, else RPCError(-32602) saying why."""
        t = self.type
        if t == "any":
            return value
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise self._bad(value, "an integer")
            self._bounds(value, -MAX_INT, MAX_INT)
        elif t == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self._bad(value, "a number")
            self._bounds(value, None, None)
        elif t == "bool":
            if not isinstance(value, bool):
                raise self._bad(value, "true or false")
        elif t in ("str", "hex"):
            if not isinstance(value, str):
                raise self._bad(value, "a string")
            if t == "hex":
                if len(value) % 2 or not _HEX.issuperset(value):
                    raise RPCError(INVALID_PARAMS, f"{self.name} must be hex (an even number of 0-9a-f digits)")
                if self.hex_bytes is not None and len(value) != 2 * self.hex_bytes:
                    raise RPCError(INVALID_PARAMS, f"{self.name} must be {self.hex_bytes} bytes "
                                                   f"({2 * self.hex_bytes} hex digits), not {len(value) // 2}")
            elif self.choices is not None and value not in self.choices:
                raise RPCError(INVALID_PARAMS, f"{self.name} must be one of {', '.join(self.choices)}")
        elif t == "object":
            if not isinstance(value, dict):
                raise self._bad(value, "an object")
        elif t == "array" and not isinstance(value, list):
            raise self._bad(value, "an array")
        return value

    def _bounds(self, value: float, low: float | None, high: float | None) -> None:
        low = self.minimum if self.minimum is not None else low
        high = self.maximum if self.maximum is not None else high
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"[{'-inf' if low is None else _num(low)}, {'inf' if high is None else _num(high)}]"
            raise RPCError(INVALID_PARAMS, f"{self.name} out of range: {value} not in {span}")

    def _bad(self, value: Any, want: str) -> RPCError:
        return RPCError(INVALID_PARAMS, f"{self.name} must be {want}, not {_json_type(value)}")


@dataclass(frozen=True)
class Method:
    name: str
    handler: Callable[..., Any]
    params: tuple[Param, ...]
    summary: str                          # one line: what it does
    result: str                           # what it returns (for help and docs/rpc.md)
    group: str                            # "Blockchain", "Network", ... (help's sections)
    errors: tuple[str, ...] = ()          # "code: when" lines beyond -32602 (for help and docs/rpc.md)

    def usage(self) -> str:
        return " ".join([self.name] + [p.name if p.required else f"[{p.name}]" for p in self.params])

    def help_text(self) -> str:
        lines = [self.usage(), "", self.summary, ""]
        if self.params:
            lines.append("Arguments:")
            for i, p in enumerate(self.params, 1):
                extra = "required" if p.required else f"optional, default={p.default!r}"
                lines.append(f"{i}. {p.name} ({p.type}, {extra}) {p.doc}")
            lines.append("")
        lines += ["Result:", self.result]
        if self.errors:
            lines += ["", "Errors:"] + list(self.errors)
        return "\n".join(lines)


@dataclass
class MethodTable:
    """Every RPC method by name (see the module docstring)."""

    methods: dict[str, Method] = field(default_factory=dict)

    def method(self, name: str, *params: Param, summary: str, result: str, group: str,
               errors: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register ``handler(ctx, **params)`` as ``name`` (ValueError on a second ``name``)."""
        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            if name in self.methods:
                raise ValueError(f"RPC method {name} registered twice")
            seen: set[str] = set()
            optional = False
            for p in params:
                if p.name in seen:
                    raise ValueError(f"RPC method {name}: parameter {p.name} twice")
                if optional and p.required:
                    raise ValueError(f"RPC method {name}: required {p.name} after an optional parameter")
                seen.add(p.name)
                optional = optional or not p.required
            self.methods[name] = Method(name, handler, tuple(params), summary, result, group, errors)
            return handler
        return register

    def get(self, name: Any) -> Method:
        if not isinstance(name, str):
            raise RPCError(INVALID_REQUEST, "method must be a string")
        method = self.methods.get(name)
        if method is None:
            raise RPCError(METHOD_NOT_FOUND, f"Method not found: {name[:100]}")
        return method

    def bind(self, method: Method, params: Any) -> dict[str, Any]:
        """Checked keyword arguments for ``method`` from a positional list or a named object."""
        if params is None:
            params = []
        if isinstance(params, list):
            if len(params) > len(method.params):
                raise RPCError(INVALID_PARAMS, f"{method.name} takes at most {len(method.params)} parameters, "
                                               f"got {len(params)}")
            given = dict(zip((p.name for p in method.params), params, strict=False))
        elif isinstance(params, dict):
            names = {p.name for p in method.params}
            unknown = sorted(str(k) for k in params if k not in names)
            if unknown:
                raise RPCError(INVALID_PARAMS, f"{method.name} has no parameter {', '.join(unknown)[:200]}")
            given = dict(params)
        else:
            raise RPCError(INVALID_REQUEST, "params must be an array or an object")
        out: dict[str, Any] = {}
        for p in method.params:
            if p.name in given and given[p.name] is not None:
                out[p.name] = p.check(given[p.name])
            elif p.required:
                raise RPCError(INVALID_PARAMS, f"{method.name}: missing parameter {p.name} ({p.type})\n"
                                               f"usage: {method.usage()}")
            else:
                out[p.name] = p.default
        return out

    def call(self, ctx: Any, name: Any, params: Any) -> Any:
        """Run ``name`` with ``params``: its result (or a Deferred of it); RPCError for a bad call."""
        method = self.get(name)
        return method.handler(ctx, **self.bind(method, params))

    def help(self, name: str | None = None) -> str:
        """bitcoind's ``help``: every method's usage by group, or one method's full text."""
        if name:
            return self.get(name).help_text()
        groups: dict[str, list[Method]] = {}
        for m in self.methods.values():
            groups.setdefault(m.group, []).append(m)
        out: list[str] = []
        for group in sorted(groups):
            out.append(f"== {group} ==")
            out += [m.usage() for m in sorted(groups[group], key=lambda m: m.name)]
            out.append("")
        return "\n".join(out).rstrip()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# The node's method table: every timecoin.rpc.* handler module registers into it when imported
# (timecoin.rpc.methods imports them all).
TABLE = MethodTable()
