"""SECURITY.md names, for each threat, the test in which an attacker tries it: every test it names must
exist (a renamed or deleted test would otherwise leave the threat model pointing at nothing)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
TOKEN = re.compile(r"([\w/]+\.py)?::(test_\w+)|([\w/]+\.py)")     # file::test, ::test, or a file alone
FILE = re.compile(r"`((?:unit|integration|sim|fuzz)/[\w/]+\.py|test_\w+\.py)")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")}


def _resolve(name: str) -> Path | None:
    if "/" in name:
        path = TESTS / name
        return path if path.is_file() else None
    found = sorted(TESTS.rglob(name))
    return found[0] if len(found) == 1 else None


def references() -> list[tuple[int, str, str]]:
    """(line number, test file, test name) for every ``file::test`` in SECURITY.md; a bare ``::test``
    belongs to the last file named before it in its paragraph or table row."""
    out = []
    last = None
    for number, line in enumerate((ROOT / "SECURITY.md").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith(("|", "* ")):
            last = None
        for match in TOKEN.finditer(line):
            file, name, alone = match.groups()
            last = file or alone or last
            if name is None:
                continue
            assert last is not None, f"SECURITY.md:{number}: ::{name} names no file before it"
            out.append((number, last, name))
    return out


def test_every_test_security_md_names_exists() -> None:
    refs = references()
    assert len(refs) > 60, "SECURITY.md names fewer tests than it did when this test was written"
    missing = []
    for number, file, name in refs:
        path = _resolve(file)
        if path is None or name not in _test_names(path):
            missing.append(f"SECURITY.md:{number}: {file}::{name}")
    assert not missing, "\n".join(missing)


def test_every_test_file_security_md_names_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    files = set(FILE.findall(text))
    assert len(files) > 20
    assert not [f for f in sorted(files) if _resolve(f) is None]
