"""docs/protocol.md stays true to timecoin/wire/messages.py (its reference section is generated)."""
from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from construct import Flag, Struct

from timecoin import crypto
from timecoin.errors import Reason
from timecoin.wire import docgen, messages
from timecoin.wire.messages import MsgType

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
REGENERATE = "python -m timecoin.wire.docgen --write docs/protocol.md"


def _section(name: str, text: str) -> str:
    """The text of one '#### name' layout section of the generated reference."""
    match = re.search(rf"^#### {re.escape(name)}\n(.*?)(?=^#### |\Z)", text, re.S | re.M)
    assert match, f"no section for {name}"
    return match.group(1)


def _rows(section: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| #")]
    return rows


def test_doc_generated_section_is_current() -> None:
    doc = DOC.read_text(encoding="utf-8")
    current = docgen.extract(doc)
    fresh = docgen.generate()
    if current != fresh:
        diff = "".join(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True),
                                            "docs/protocol.md", "docgen output", n=1))
        pytest.fail(f"docs/protocol.md is out of date with timecoin/wire/messages.py; regenerate it with\n"
                    f"    {REGENERATE}\n\n{diff[:4000]}")


def test_doc_describes_every_message_and_layout_in_order() -> None:
    text = docgen.extract(DOC.read_text(encoding="utf-8"))
    for t in MsgType:
        body = next(n for n, layout in messages.LAYOUTS.items() if layout is messages.BODIES[t])
        assert f"| {int(t)} | `{t.name}` | [{body}](#{body.lower()}) |" in text
    for name, layout in messages.LAYOUTS.items():
        names = [row[1].strip("`") for row in _rows(_section(name, text))]
        expected = [sub.name for sub in layout.subcons if sub.name]
        assert [n for n in names if n != "—"] == expected, name


def test_doc_sizes_match_real_encodings() -> None:
    """Sizes in the tables add up to the length of real encodings (independent of docgen's sizeof)."""
    text = docgen.extract(DOC.read_text(encoding="utf-8"))
    vote = messages.VOTE.encode({"type": 1, "height": 1, "round": 0, "block_hash": bytes(32),
                                 "validator": bytes(20), "signature": bytes(64)})
    header = messages.HEADER.encode({"version": 1, "height": 1, "round": 0, "prev_hash": bytes(32), "timestamp": 0,
                                     "proposer": bytes(20), "tx_root": bytes(32), "state_root": bytes(32),
                                     "validators_hash": bytes(32), "evidence_root": bytes(32)})
    for name, encoded in [("Vote", vote), ("Header", header)]:
        section = _section(name, text)
        assert sum(int(row[3]) for row in _rows(section)) == len(encoded)
        assert f"Size: {len(encoded)} bytes (fixed)." in section
    tx = _rows(_section("Tx", text))
    fixed = sum(int(row[3]) for row in tx if row[3].isdigit())
    chain_id = "abc"
    encoded = messages.TX.encode({"kind": 0, "chain_id": chain_id, "sender": bytes(33), "nonce": 0, "fee": 0,
                                  "amount": 0, "recipient": bytes(20), "signature": bytes(64)})
    assert fixed + 1 + len(chain_id) == len(encoded)        # ShortString: 1 + n


def test_doc_names_signature_tags_and_reject_codes() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for tag in (crypto.TAG_TX, crypto.TAG_VOTE, crypto.TAG_PROPOSAL):
        assert f"`{tag.decode()}`" in doc
    assert "len(tag) ‖ tag ‖ len(chain_id) ‖ chain_id ‖ payload" in doc
    for reason in Reason:
        assert f"| {int(reason)} | `{reason.name.lower()}` |" in doc
    assert f"| `DEFAULT_MAX_FRAME_BYTES` | {8 * 1024 * 1024} (8 MiB) |" in doc


def test_field_comments_come_from_messages_py() -> None:
    text = docgen.generate()
    assert "| 1 | `kind` | u8 | 1 | 0 transfer, 1 stake, 2 unstake |" in text
    assert "| 3 | `pol_round` | i32 | 4 | -1: no proof-of-lock round |" in text
    assert "A consensus vote; signed bytes = encoding without the trailing signature." in _section("Vote", text)


def test_docgen_refuses_constructs_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="teach timecoin/wire/docgen.py"):
        docgen.layout_fields("Odd", Struct("flag" / Flag))


def test_extract_and_replace_need_the_markers() -> None:
    with pytest.raises(ValueError, match="markers"):
        docgen.extract("no markers here")
    doc = f"intro\n{docgen.BEGIN}\nold\n{docgen.END}\noutro\n"
    new = docgen.replace(doc, "new\n")
    assert new == f"intro\n{docgen.BEGIN}\nnew\n{docgen.END}\noutro\n"
    assert docgen.extract(new) == "new\n"


def test_docgen_command_prints_the_section_and_rewrites_a_stale_doc(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "timecoin.wire.docgen"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert run.stdout == docgen.generate()
    stale = tmp_path / "protocol.md"
    stale.write_text(f"# doc\n{docgen.BEGIN}\nstale\n{docgen.END}\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "timecoin.wire.docgen", "--write", str(stale)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    assert "updated" in run.stdout
    assert docgen.extract(stale.read_text(encoding="utf-8")) == docgen.generate()


def _hand_table(name: str) -> dict[str, str]:
    """field -> bytes of a hand-written '### name' table (outside the generated section)."""
    doc = DOC.read_text(encoding="utf-8").split(docgen.BEGIN)[0]
    match = re.search(rf"^### {re.escape(name)}\n(.*?)(?=^##)", doc, re.S | re.M)
    assert match, f"docs/protocol.md has no hand-written section '### {name}'"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in match.group(1).splitlines()
            if line.startswith("| `")]
    return {row[0]: row[2] for row in rows}


def test_doc_account_and_validator_set_sizes_match_the_code() -> None:
    from timecoin.ledger.account import Account
    from timecoin.ledger.params import ChainParams
    from timecoin.ledger.validators import Validator, ValidatorSet

    acct = _hand_table("Account")
    fixed = sum(int(v) for k, v in acct.items() if v.isdigit() and "[i]" not in k)
    entry = sum(int(v) for k, v in acct.items() if k.startswith("`unbonding[i]"))
    assert acct["`pubkey`"] == "0 or 33"
    assert len(Account().encoded) == fixed == 28
    assert len(Account(pubkey=b"\x02" * 33).encoded) == fixed + 33
    assert len(Account(unbonding=((1, 2), (3, 4))).encoded) == fixed + 2 * entry and entry == 16
    doc = " ".join(DOC.read_text(encoding="utf-8").split())      # line breaks do not matter
    assert f"Size: {fixed} bytes + {entry} per unbonding" in doc
    assert f"`max_unbonding_entries` (default {ChainParams('x').max_unbonding_entries}," in doc

    vs = _hand_table("ValidatorSet")
    head = int(vs["`validators` count"])
    per = sum(int(v) for k, v in vs.items() if "[i]" in k)
    two = ValidatorSet([Validator(bytes([1]) * 20, b"\x02" * 33, 5), Validator(bytes([2]) * 20, b"\x03" * 33, 7)])
    assert len(ValidatorSet([]).encode()) == head and len(two.encode()) == head + 2 * per
    assert f"Size: {head} bytes + {per} per validator" in doc


def test_doc_state_root_and_validators_hash_are_what_the_code_computes() -> None:
    import hashlib

    from timecoin.ledger import lthash as lt
    from timecoin.ledger.account import Account
    from timecoin.ledger.validators import Validator, ValidatorSet

    address, account = bytes([9]) * 20, Account(balance=5, pubkey=b"\x02" * 33)
    leaf = hashlib.shake_256(address + account.encoded).digest(2048)
    lanes = [int.from_bytes(leaf[i:i + 2], "little") for i in range(0, 2048, 2)]
    acc = lt.LtHash()
    acc.add(address + account.encoded)
    acc.add(address + account.encoded)                    # twice: lane-wise sum mod 2**16
    expected = b"".join(((2 * x) % 65536).to_bytes(2, "little") for x in lanes)
    assert acc.to_bytes() == expected and acc.digest() == hashlib.sha256(expected).digest()
    vs = ValidatorSet([Validator(address, b"\x02" * 33, 1)])
    assert vs.hash == hashlib.sha256(vs.encode()).digest()
