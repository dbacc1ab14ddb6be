"""Generate the wire-format tables of ``docs/protocol.md`` from ``timecoin/wire/messages.py``.

messages.py is the one source of every layout; the doc's reference section is produced from it
(field order, wire types, sizes, the comments next to fields) so it cannot drift. A test compares
the doc with this output.

    python -m timecoin.wire.docgen                          # print the generated section
    python -m timecoin.wire.docgen --write docs/protocol.md  # replace it in the doc

Unknown construct types raise instead of being guessed at: a new primitive in messages.py must be
taught here before the doc can be regenerated.
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from construct import (
    Construct,
    FocusedSeq,
    FormatField,
    GreedyBytes,
    Prefixed,
    Rebuild,
    Renamed,
    SizeofError,
    StringEncoded,
    Struct,
    Switch,
    Terminated,
)

from timecoin import crypto
from timecoin.errors import Reason
from timecoin.wire import framing, messages

BEGIN = "<!-- BEGIN GENERATED: python -m timecoin.wire.docgen --write docs/protocol.md -->"
END = "<!-- END GENERATED -->"

_INTS = {">B": "u8", ">H": "u16", ">I": "u32", ">L": "u32", ">Q": "u64",
         ">b": "i8", ">h": "i16", ">i": "i32", ">l": "i32", ">q": "i64"}
# Named primitives of messages.py, documented once in their own table and referred to by name.
ALIASES = {name: getattr(messages, name)
           for name in ("Hash", "Address", "PubKey", "Signature", "ShortString", "LongString", "Blob")}

# What each signature domain covers; keyed by the crypto constant so a new tag must be described here.
SIGNED_BYTES = {
    "TAG_TX": "`Tx` encoding without its trailing 64-byte `signature`",
    "TAG_VOTE": "`Vote` encoding without its trailing 64-byte `signature` (also each `CommitSig`, "
                "whose precommit is rebuilt from the certificate's height, round and block hash)",
    "TAG_PROPOSAL": "`ProposalSignBytes` encoding (the block enters by its hash)",
}


@dataclass(frozen=True)
class Field:
    """One row of a layout table."""

    name: str
    wire: str
    size: str
    note: str


def _layout_names() -> dict[int, str]:
    return {id(layout): name for name, layout in messages.LAYOUTS.items()}


def _anchor(name: str) -> str:
    return f"[{name}](#{name.lower()})"


def _fixed_size(con: Construct) -> int | None:
    try:
        return con.sizeof()
    except SizeofError:
        return None


def _max(lengthfield: Construct) -> int:
    return 2 ** (8 * lengthfield.length) - 1


def describe_primitive(con: Construct) -> tuple[str, str]:
    """(encoding, size) of an integer, bytes or string construct, ignoring alias names."""
    if isinstance(con, FormatField):
        if con.fmtstr not in _INTS:
            raise ValueError(f"docgen: unknown integer format {con.fmtstr!r}")
        return _INTS[con.fmtstr], str(con.length)
    if isinstance(con, messages.ExactBytes):
        return f"bytes[{con.length}]", str(con.length)
    if isinstance(con, StringEncoded) and isinstance(con.subcon, Prefixed) and con.subcon.subcon is GreedyBytes:
        lf = con.subcon.lengthfield
        encoding = con.encoding.upper().replace("UTF8", "UTF-8")
        length = describe_primitive(lf)[0]
        return f"{length} byte length, then at most {_max(lf)} bytes of {encoding}", f"{lf.length} + n"
    if isinstance(con, Prefixed) and con.subcon is GreedyBytes:
        lf = con.lengthfield
        return f"{describe_primitive(lf)[0]} byte length, then at most {_max(lf)} bytes", f"{lf.length} + n"
    raise ValueError(f"docgen: cannot describe {con!r}; teach timecoin/wire/docgen.py this construct")


def describe(con: Construct, top: str | None = None) -> tuple[str, str]:
    """(wire type, size) of one field's construct; ValueError for anything not understood."""
    names = _layout_names()
    if id(con) in names and names[id(con)] != top:
        size = _fixed_size(con)
        return _anchor(names[id(con)]), str(size) if size is not None else "variable"
    for alias, obj in ALIASES.items():
        if con is obj:
            return alias, describe_primitive(con)[1]
    if (isinstance(con, FocusedSeq) and len(con.subcons) == 2 and isinstance(con.subcons[0], Renamed)
            and isinstance(con.subcons[0].subcon, Rebuild)):   # PrefixedArray
        countfield = con.subcons[0].subcon.subcon
        cwire, csize = describe(countfield)
        ewire, esize = describe(con.subcons[1].subcon.subcon)
        size = f"{csize} + {esize} × count" if esize.isdigit() else f"{csize} + sum of items"
        return f"{cwire} count ≤ {_max(countfield)}, then count × {ewire}", size
    if isinstance(con, Switch):
        return "body layout selected by `type` (unknown type: malformed)", "variable"
    return describe_primitive(con)


def layout_fields(name: str, layout: Construct) -> list[Field]:
    """The rows of one layout, in wire order."""
    if not isinstance(layout, Struct):
        raise ValueError(f"docgen: layout {name} is not a Struct")
    notes = _field_comments().get(name, {})
    rows: list[Field] = []
    for sub in layout.subcons:
        if sub is Terminated:
            rows.append(Field("—", "end of input", "0", "no trailing bytes allowed"))
            continue
        if not isinstance(sub, Renamed) or not sub.name:
            raise ValueError(f"docgen: unnamed field {sub!r} in {name}")
        wire, size = describe(sub.subcon, top=name)
        rows.append(Field(sub.name, wire, size, notes.get(sub.name, "")))
    return rows


_ASSIGN = re.compile(r"^(\w+) = Struct\(")
_FIELD = re.compile(r'^\s+"(\w+)" / [^#]*#\s*(.+)$')


def _source_lines() -> list[str]:
    return inspect.getsource(messages).splitlines()


def _field_comments() -> dict[str, dict[str, str]]:
    """``{layout: {field: comment}}`` from the comments after fields in messages.py."""
    out: dict[str, dict[str, str]] = {}
    current: str | None = None
    for line in _source_lines():
        m = _ASSIGN.match(line)
        if m:
            current = m.group(1)
            continue
        if current is None:
            continue
        if line.startswith(")"):
            current = None
            continue
        f = _FIELD.match(line)
        if f:
            out.setdefault(current, {})[f.group(1)] = f.group(2).strip()
    return out


def _layout_comments() -> dict[str, str]:
    """``{layout: text}`` from the comment block right above ``Name = Struct(`` in messages.py."""
    out: dict[str, str] = {}
    lines = _source_lines()
    for i, line in enumerate(lines):
        m = _ASSIGN.match(line)
        if not m:
            continue
        block: list[str] = []
        j = i - 1
        while j >= 0 and lines[j].startswith("#") and not lines[j].startswith("# --"):
            block.insert(0, lines[j].lstrip("#").strip())
            j -= 1
        if block:
            out[m.group(1)] = " ".join(block)
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _body_name(layout: Construct) -> str:
    return _layout_names()[id(layout)]


def generate() -> str:
    """The generated section of docs/protocol.md (without the markers)."""
    lines: list[str] = []
    max_frame = framing.DEFAULT_MAX_FRAME_BYTES
    lines += ["### Constants", ""]
    lines += _table(["Name", "Value"], [
        ["`PROTOCOL_VERSION`", str(messages.PROTOCOL_VERSION)],
        ["`DEFAULT_MAX_FRAME_BYTES`", f"{max_frame} ({max_frame >> 20} MiB)"],
        ["frame header", f"{framing.HEADER_SIZE} bytes, big-endian payload length"],
    ])
    lines += ["", "### Primitive types", "",
              "Named primitives used in the layouts below; `n` is the byte length of the content.", ""]
    lines += _table(["Name", "Encoding", "Size"],
                    [[f"`{name}`", *describe_primitive(con)] for name, con in ALIASES.items()])
    lines += ["", "### Message types", "",
              "The envelope's `type` byte selects the body layout. *Request* types count against the",
              "per-peer rate limit.", ""]
    rows = []
    for t in messages.MsgType:
        body = _body_name(messages.BODIES[t])
        rows.append([str(int(t)), f"`{t.name}`", _anchor(body), "yes" if t in messages.REQUESTS else ""])
    lines += _table(["Type", "Name", "Body", "Request"], rows)

    lines += ["", "### Signature domains", "",
              "Signed digest: `SHA-256(len(tag) ‖ tag ‖ len(chain_id) ‖ chain_id ‖ payload)`, lengths one byte.", ""]
    rows = []
    for const in sorted(n for n in dir(crypto) if n.startswith("TAG_")):
        if const not in SIGNED_BYTES:
            raise ValueError(f"docgen: describe what crypto.{const} signs in SIGNED_BYTES")
        rows.append([f"`crypto.{const}`", f"`{getattr(crypto, const).decode()}`", SIGNED_BYTES[const]])
    lines += _table(["Constant", "Tag", "Payload"], rows)

    lines += ["", "### Reject reasons", "", "`Reject.reason` values (`timecoin.errors.Reason`).", ""]
    lines += _table(["Code", "Name"], [[str(int(r)), f"`{r.name.lower()}`"] for r in Reason])

    lines += ["", "### Layouts", "",
              "Integers are unsigned big-endian unless marked `i`; sizes are in bytes. A layout used as a",
              "field is embedded in place (no length prefix of its own).", ""]
    descriptions = _layout_comments()
    for name, layout in messages.LAYOUTS.items():
        lines += [f"#### {name}", ""]
        if name in descriptions:
            lines += [descriptions[name], ""]
        size = _fixed_size(layout) if name != "Envelope" else None
        lines += [f"Size: {size} bytes (fixed)." if size is not None else "Size: variable.", ""]
        fields = layout_fields(name, layout)
        if fields:
            lines += _table(["#", "Field", "Wire type", "Size", "Notes"],
                            [[str(i), f"`{f.name}`" if f.name != "—" else f.name, f.wire, f.size, f.note]
                             for i, f in enumerate(fields, 1)])
        else:
            lines += ["No fields: the encoding is empty."]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def extract(doc: str) -> str:
    """The text between the markers of a doc; ValueError if they are missing."""
    start = doc.find(BEGIN)
    stop = doc.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"markers {BEGIN!r} … {END!r} not found")
    return doc[start + len(BEGIN):stop].strip("\n") + "\n"


def replace(doc: str, section: str) -> str:
    """``doc`` with its generated section replaced by ``section``."""
    start = doc.find(BEGIN)
    stop = doc.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"markers {BEGIN!r} … {END!r} not found")
    return doc[:start + len(BEGIN)] + "\n" + section + doc[stop:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m timecoin.wire.docgen", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="DOC", type=Path,
                        help="replace the generated section of DOC (e.g. docs/protocol.md) in place")
    args = parser.parse_args(argv)
    section = generate()
    if args.write is None:
        sys.stdout.write(section)
        return 0
    doc = args.write.read_text(encoding="utf-8")
    new = replace(doc, section)
    if new != doc:
        args.write.write_text(new, encoding="utf-8")
        print(f"updated {args.write}")
    else:
        print(f"{args.write} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
