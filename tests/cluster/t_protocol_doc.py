#!/usr/bin/python3
"""t_protocol_doc — the node protocol has one set of numbers.

src/lib/proto.h names every method id (MGR_*, CTL_*, SRV_*, GW_*) and every
SRV_STATUS id (ST_*); docs/protocol.md has a table row for each,
`| <id> | `NAME` | ...`. This test reads both and fails when a method or
status id is missing on either side or the numbers differ, so the header,
the document and the dispatchers (which use the header's names) cannot
drift apart. No daemon is started.
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kumotest as kt  # noqa: E402

tap = kt.tap
TOP = os.path.dirname(os.path.dirname(HERE))
PREFIXES = ("MGR_", "CTL_", "SRV_", "GW_", "ST_")


def header_ids():
    """{NAME: id} for the enum members of proto.h with one of PREFIXES."""
    with open(os.path.join(TOP, "src/lib/proto.h")) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = {}
    for body in re.findall(r"enum\s*\{(.*?)\}", text, flags=re.S):
        for name, value in re.findall(r"\b([A-Z][A-Z0-9_]*)\s*=\s*(0x[0-9a-fA-F]+|\d+)", body):
            if name.startswith(PREFIXES):
                out[name] = int(value, 0)
    return out


def doc_ids():
    """{NAME: id} from the rows `| id | `NAME` |` of docs/protocol.md."""
    with open(os.path.join(TOP, "docs/protocol.md")) as f:
        text = f.read()
    out = {}
    for value, name in re.findall(r"^\|\s*(0x[0-9a-fA-F]+|\d+)\s*\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", text, flags=re.M):
        if name.startswith(PREFIXES):
            out.setdefault(name, int(value, 0))
    return out


def body():
    h, d = header_ids(), doc_ids()
    tap.ok(len(h) > 30, "proto.h names %d method and status ids" % len(h))
    missing_doc = sorted(n for n in h if n not in d)
    tap.ok(not missing_doc, "every id of proto.h has a row in docs/protocol.md", ", ".join(missing_doc))
    missing_h = sorted(n for n in d if n not in h)
    tap.ok(not missing_h, "every id in docs/protocol.md's tables is in proto.h", ", ".join(missing_h))
    differ = ["%s: proto.h %d, protocol.md %d" % (n, h[n], d[n]) for n in sorted(h) if n in d and h[n] != d[n]]
    tap.ok(not differ, "the numbers agree", "; ".join(differ))


kt.main(body)
