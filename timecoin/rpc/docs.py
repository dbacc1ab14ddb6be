"""docs/rpc.md from the method table: every method with its parameters, result and errors.

``python -m timecoin.rpc.docs > docs/rpc.md`` writes it; tests/unit/test_rpc_doc.py fails when the file and
the table differ, so the reference cannot drift from what the node checks.
"""
from __future__ import annotations

import sys

from timecoin.rpc.registry import Method, MethodTable

INTRO = """# JSON-RPC reference

Generated from the node's method table by `python -m timecoin.rpc.docs > docs/rpc.md` (a test fails when
this file and the table differ). The server speaks JSON-RPC 1.0, 1.1 and 2.0 over HTTP `POST /` with HTTP
Basic auth, as bitcoind does; `timecoin rpc METHOD [ARGS...]` calls it from the shell and
`timecoin.client` from Python (Twisted or asyncio). Parameters are positional or named; every parameter is
checked before a method runs, and a bad one is error -32602 naming it.

Common errors of every method: -32700 parse error, -32600 invalid request, -32601 method not found,
-32602 invalid params, -32603 internal error (details in the node's log only), -28 while the node starts.
"""


def render(table: MethodTable) -> str:
    groups: dict[str, list[Method]] = {}
    for method in table.methods.values():
        groups.setdefault(method.group, []).append(method)
    out = [INTRO]
    for group in sorted(groups):
        out.append(f"## {group}\n")
        for method in sorted(groups[group], key=lambda m: m.name):
            out.append(_method(method))
    return "\n".join(out).rstrip() + "\n"


def _method(method: Method) -> str:
    lines = [f"### `{method.usage()}`", "", method.summary, ""]
    if method.params:
        lines += ["| # | name | type | required | default | description |", "| --- | --- | --- | --- | --- | --- |"]
        for i, p in enumerate(method.params, 1):
            kind = p.type + (f", {p.hex_bytes} bytes" if p.hex_bytes else "")
            if p.minimum is not None or p.maximum is not None:
                kind += f", {'' if p.minimum is None else _n(p.minimum)}..{'' if p.maximum is None else _n(p.maximum)}"
            if p.choices:
                kind += ", one of " + "/".join(p.choices)
            default = "" if p.required else f"`{p.default!r}`"
            lines.append(f"| {i} | `{p.name}` | {kind} | {'yes' if p.required else 'no'} | {default} | {p.doc} |")
        lines.append("")
    lines += [f"**Result:** {method.result}", ""]
    if method.errors:
        lines += ["**Errors:**", ""] + [f"- {e}" for e in method.errors] + [""]
    return "\n".join(lines)


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def main() -> None:
    from timecoin.rpc.methods import TABLE
    sys.stdout.write(render(TABLE))


if __name__ == "__main__":
    main()
