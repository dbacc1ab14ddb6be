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

## Calling the node

**Auth.** At each start the node writes `<datadir>/.cookie` (`__cookie__:<64 hex>`, mode 0600) and removes
it at a clean stop; or set `rpc_user` and `rpc_password`. Without valid credentials: HTTP 401. A non-loopback
`rpc_host` needs `rpc_allow_ip` (CIDR list); other clients get 403. `GET /health` needs no auth: 200 when
the node is synced and finalizing, 503 with the reason otherwise.

**Shell.** `timecoin rpc --datadir D METHOD [ARGS...]` works like `bitcoin-cli` (arguments typed by this
table, `-named key=value`, exit status `abs(code) % 256` on an RPC error). The wallet commands sign with a
local key file and never send it: `timecoin send --key FILE --to ADDRESS --amount 12.5 [--fee F] [--wait]`,
`timecoin stake|unstake --key FILE --amount A`, `timecoin balance ADDRESS`, `timecoin tx TXID`. Amounts
are decimal TIME strings with 8 decimals (`"12.50000000"`), never floats. `timecoin verify PROOF.json
--genesis genesis.json` checks a `getfinalityproof` offline.

**Python, Twisted** (`timecoin.client`, on txaio: the same code runs under both frameworks):

```python
import txaio
txaio.use_twisted()
from twisted.internet import defer, task
from timecoin.client import Client

async def main(reactor):
    client = Client.from_datadir("/var/lib/timecoin")
    height = await client.getblockcount()
    block = await client.getblock(await client.getblockhash(height), 2)
    print(height, block["hash"], len(block["tx"]))

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
```

**Python, asyncio:**

```python
import asyncio
import txaio
txaio.use_asyncio()
from timecoin.client import Client, RPCError

async def main():
    client = Client("http://127.0.0.1:29332/", "user", "password")
    try:
        print(await client.gettransactionfinality("ab" * 32))
    except RPCError as exc:
        print("the node said", exc.code, exc.message)

asyncio.run(main())
```
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
