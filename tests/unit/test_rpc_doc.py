"""docs/rpc.md is the method table rendered: regenerate it with ``python -m timecoin.rpc.docs > docs/rpc.md``."""
from __future__ import annotations

from pathlib import Path

from timecoin.rpc.docs import render
from timecoin.rpc.methods import TABLE

DOC = Path(__file__).resolve().parents[2] / "docs" / "rpc.md"


def test_docs_rpc_md_is_the_method_table() -> None:
    assert DOC.read_text() == render(TABLE), "docs/rpc.md is stale: python -m timecoin.rpc.docs > docs/rpc.md"


def test_every_method_is_documented_with_a_summary_and_a_result() -> None:
    for method in TABLE.methods.values():
        assert method.summary.strip() and method.result.strip(), method.name
        assert all(p.doc.strip() for p in method.params), method.name
