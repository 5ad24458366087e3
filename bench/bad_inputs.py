"""Bad inputs against the real CLI: does every one end in a clear error or a handled row?

    .venv/bin/python bench/bad_inputs.py [--jobs 2] [--only SUBSTRING] [--timeout 60] [--keep]

Each case is a bad input of its own (a file in a bad encoding, a wrong layout, a wrong type in
one column, a FIFO, a symlink loop, an output directory holding a user's files, ...). For each
case the script builds the files in a fresh directory and runs the real commands as a new user
would, each as a subprocess with a timeout (``COLUMNS=80``):

* ``check``:   ``rlhf data check FILE --json check.json`` (plus the case's options);
* ``prepare``: ``rlhf data prepare -c config.yaml --out out/`` with a small config that feeds FILE
  to one input (``preferences`` unless the case says otherwise) and turns off the curation
  steps that need a model or many rows (language filter, coverage, per-user cap).

Outcome classes, per command:

* ``clear``     exit 2 with one line naming the file (and every word the case requires, such as
  "UTF-16", "symlink loop" or a line number);
* ``handled``   exit 0 or 1 with the bad rows accounted for: ``check`` lists them in its JSON
  report, ``prepare`` quarantines them with file, row and rule, and its report balances
  (rows in = kept + dropped);
* ``wrong``     anything else: exit 0 where it should fail, a message that does not name the file
  or says the wrong thing, other rows than the bad ones, a user's file deleted;
* ``traceback`` a Python traceback in the output;
* ``hang``      the command did not finish within the timeout.

A case says which class each command should end in and, for row-level defects, which rows
(the file's own numbering: JSONL line, CSV line counting the header, JSON array element,
Parquet row) are bad. On top, for every case where both commands ran, ``check`` and
``prepare`` must agree row by row: the rows ``check`` fails on a validation rule (every
expectation except the refusal check, which ``prepare`` applies as curation) must be exactly
the rows ``prepare`` quarantines (column "same rows").

More cases, or other commands (``rlhf config validate`` on bad configs, ``rlhf model info`` on
bad models, ``rlhf run`` on bad runs), are added by appending to :data:`CASES` and, for a new
command, to :data:`COMMANDS` (a function from a case's :class:`Setup` to an :class:`Outcome`).

Prints a table (80 columns) and the counts; writes ``bench/results/bad_inputs.json``.
Note: when run as root, ``chmod 000`` does not stop reads, so that case expects success then.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RLHF = [str(Path(sys.executable).with_name("rlhf"))]  # --cli replaces it (e.g. to measure an older checkout)
HH_SAMPLE = Path("/work/shared/data/hh-rlhf/harmless-base-sample.jsonl.gz")
REFUSAL_COLUMNS = ("chosen_if_benign", "response_if_benign")  # curation in `prepare`, not validation
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
CLASSES = ("clear", "handled", "wrong", "traceback", "hang")


# ---------------------------------------------------------------------------- cases


@dataclass
class Setup:
    """What a case's setup made: the input, the prepare input it feeds, and what must survive."""

    input: Path
    slot: str = "preferences"  # demonstrations | preferences | rl_prompts
    check_args: list[str] = field(default_factory=list)  # extra `data check` options
    out: Path | None = None  # `data prepare --out` (default: a fresh directory)
    keep: list[Path] = field(default_factory=list)  # the user's files: must exist afterwards
    names: list[str] = field(default_factory=list)  # what the error must name (default: the input's name)


@dataclass
class Case:
    name: str
    group: str
    setup: Callable[[Path], Setup]
    expect: str | dict[str, str]  # class for every command, or per command
    rows: list[int] | None = None  # the bad rows both commands must name (None: not checked)
    say: str | dict[str, str] = ""  # words the error line must hold ("|" separates alternatives needed together)
    commands: tuple[str, ...] = ("check", "prepare")
    note: str = ""

    def expected(self, command: str) -> str:
        return self.expect if isinstance(self.expect, str) else self.expect[command]

    def words(self, command: str) -> list[str]:
        say = self.say if isinstance(self.say, str) else self.say.get(command, "")
        return [w for w in say.split("|") if w]


G = {"prompt": "How do I boil an egg?", "chosen": "Put it in boiling water for eight minutes.",
     "rejected": "Eggs are a kind of food."}


def good(i: int) -> dict[str, Any]:
    """A valid preference row with its own id and prompt (so dedup keeps it)."""
    return {"id": f"g{i}", "prompt": f"Question number {i} about cooking pasta?", "chosen": f"Boil it for {i + 8} minutes.",
            "rejected": f"Pasta number {i} is not food."}


def jsonl_text(rows: list[Any]) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def rows_file(name: str, bad: list[Any], *, slot: str = "preferences", base: list[Any] | None = None,
              check_args: list[str] | None = None) -> Callable[[Path], Setup]:
    """Two good rows, then ``bad`` (so the bad rows are lines 3, 4, ...)."""
    def setup(tmp: Path) -> Setup:
        rows = (base if base is not None else [good(1), good(2)]) + bad
        return Setup(write(tmp, name, jsonl_text(rows)), slot=slot, check_args=check_args or [])
    return setup


def raw_file(name: str, content: str | bytes | Callable[[], str | bytes], *, slot: str = "preferences",
             check_args: list[str] | None = None) -> Callable[[Path], Setup]:
    def setup(tmp: Path) -> Setup:
        data = content() if callable(content) else content
        return Setup(write(tmp, name, data), slot=slot, check_args=check_args or [])
    return setup


def bad_row(**fields: Any) -> dict[str, Any]:
    """Line 3: a preference row with ``fields`` changed (``None`` removes a column)."""
    row = {"id": "bad", **G}
    for k, v in fields.items():
        if v is _DROP:
            row.pop(k, None)
        else:
            row[k] = v
    return row


_DROP = object()
GOOD_TEXT = jsonl_text([good(1), good(2), good(3)])
GOOD_ROWS = [good(1), good(2), good(3)]


def type_case(name: str, note: str, **fields: Any) -> Case:
    return Case(name, "types", rows_file(f"{name}.jsonl", [bad_row(**fields)]), "handled", rows=[3], note=note)


def _parquet(rows: list[dict[str, Any]], schema: Any = None) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


def _truncated_gz() -> bytes:
    data = gzip.compress(jsonl_text([good(i) for i in range(1, 200)]).encode())
    return data[: len(data) // 2]


def _corrupt_gz() -> bytes:
    data = bytearray(gzip.compress(jsonl_text([good(i) for i in range(1, 200)]).encode()))
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    return bytes(data)


def _zip() -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    return buf.getvalue()


def fifo(tmp: Path) -> Setup:
    path = tmp / "pipe.jsonl"
    os.mkfifo(path)
    return Setup(path)


def unix_socket(tmp: Path) -> Setup:
    path = Path(tempfile.mkdtemp(prefix="sock-")) / "s.jsonl"  # AF_UNIX paths must be short
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    _SOCKETS.append(sock)
    return Setup(path)


_SOCKETS: list[socket.socket] = []


def symlink_loop(tmp: Path) -> Setup:
    a, b = tmp / "a.jsonl", tmp / "b.jsonl"
    os.symlink(b, a)
    os.symlink(a, b)
    return Setup(a)


def dangling(tmp: Path) -> Setup:
    link = tmp / "gone.jsonl"
    os.symlink(tmp / "deleted.jsonl", link)
    return Setup(link)


def link_to_good(tmp: Path) -> Setup:
    target = write(tmp, "real.jsonl", GOOD_TEXT)
    link = tmp / "link.jsonl"
    os.symlink(target, link)
    return Setup(link)


def directory(tmp: Path) -> Setup:
    d = tmp / "prefs.jsonl"
    d.mkdir()
    return Setup(d)


def dir_symlink(tmp: Path) -> Setup:
    d = tmp / "folder"
    d.mkdir()
    (d / "notes.md").write_text("not data")
    link = tmp / "prefs.jsonl"
    os.symlink(d, link)
    return Setup(link)


def unreadable(tmp: Path) -> Setup:
    path = write(tmp, "locked.jsonl", GOOD_TEXT)
    path.chmod(0)
    return Setup(path)


def parent_is_file(tmp: Path) -> Setup:
    write(tmp, "prefs.jsonl", GOOD_TEXT)
    return Setup(tmp / "prefs.jsonl" / "inner.jsonl", names=["inner.jsonl"])


def device(path: str) -> Callable[[Path], Setup]:
    return lambda tmp: Setup(Path(path))


def docs_dir_foreign(tmp: Path) -> Setup:
    docs = tmp / "site"
    keep = write(tmp, "site/my-notes.txt", "the user's notes")
    return Setup(write(tmp, "p.jsonl", GOOD_TEXT), check_args=["--docs-dir", str(docs)], keep=[keep], names=["site"])


def docs_dir_file(tmp: Path) -> Setup:
    keep = write(tmp, "docs.html", "<html>mine</html>")
    return Setup(write(tmp, "p.jsonl", GOOD_TEXT), check_args=["--docs-dir", str(keep)], keep=[keep], names=["docs.html"])


def docs_dir_previous(tmp: Path) -> Setup:
    docs = tmp / "docs"
    write(tmp, "docs/index.html", "old")
    keep = write(tmp, "docs/README.txt", "the user's note inside our docs")
    write(tmp, "docs/.rlhf-output.json", json.dumps({"written_by": "rlhf data check --docs-dir", "files": ["index.html"]}))
    return Setup(write(tmp, "p.jsonl", GOOD_TEXT), check_args=["--docs-dir", str(docs)], keep=[keep])


def json_is_dir(tmp: Path) -> Setup:
    d = tmp / "reports"
    keep = write(tmp, "reports/old.txt", "x")
    return Setup(write(tmp, "p.jsonl", GOOD_TEXT), check_args=["--json", str(d)], keep=[keep], names=["reports"])


def json_is_input(tmp: Path) -> Setup:
    p = write(tmp, "p.jsonl", GOOD_TEXT)
    return Setup(p, check_args=["--json", str(p)], keep=[p])


def json_foreign(tmp: Path) -> Setup:
    keep = write(tmp, "results.json", json.dumps({"my": "data"}))
    return Setup(write(tmp, "p.jsonl", GOOD_TEXT), check_args=["--json", str(keep)], keep=[keep], names=["results.json"])


def json_parent_file(tmp: Path) -> Setup:
    blocker = write(tmp, "reports", "a file, not a directory")
    return Setup(write(tmp, "p.jsonl", GOOD_TEXT), check_args=["--json", str(blocker / "r.json")], keep=[blocker],
                 names=["reports"])


def out_foreign(tmp: Path) -> Setup:
    keep = write(tmp, "results/thesis.tex", "months of work")
    return Setup(write(tmp, "p.jsonl", GOOD_TEXT), out=tmp / "results", keep=[keep], names=["results"])


def out_is_file(tmp: Path) -> Setup:
    keep = write(tmp, "out.txt", "x")
    return Setup(write(tmp, "p.jsonl", GOOD_TEXT), out=keep, keep=[keep], names=["out.txt"])


def out_holds_input(tmp: Path) -> Setup:
    p = write(tmp, "data/p.jsonl", GOOD_TEXT)
    return Setup(p, out=tmp / "data", keep=[p], names=["data"])


def out_previous(tmp: Path) -> Setup:
    out = tmp / "curated"
    write(tmp, "curated/report.md", "old report")
    keep = write(tmp, "curated/notes.txt", "the user's note next to our outputs")
    write(tmp, "curated/.rlhf-output.json", json.dumps({"written_by": "rlhf data prepare", "files": ["report.md"]}))
    return Setup(write(tmp, "p.jsonl", GOOD_TEXT), out=out, keep=[keep])


def out_of_other_command(tmp: Path) -> Setup:
    out = tmp / "docs"
    keep = write(tmp, "docs/index.html", "docs")
    write(tmp, "docs/.rlhf-output.json", json.dumps({"written_by": "rlhf data check --docs-dir", "files": ["index.html"]}))
    return Setup(write(tmp, "p.jsonl", GOOD_TEXT), out=out, keep=[keep], names=["docs"])


def hh_sample(tmp: Path) -> Setup:
    path = tmp / "harmless-base-sample.jsonl.gz"
    shutil.copy(HH_SAMPLE, path)
    return Setup(path)


def csv_text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


CSV_HEAD = "id,prompt,chosen,rejected"
CSV_GOOD = ["g1,Question one?,Answer one.,Wrong one.", "g2,Question two?,Answer two.,Wrong two."]
DEEP = "[" * 100_000 + "]" * 100_000

CASES: list[Case] = [
    # ---- encodings
    Case("utf16le_bom", "encoding", raw_file("u16.jsonl", lambda: "\ufeff".encode("utf-16-le") + GOOD_TEXT.encode("utf-16-le")),
         "clear", say="UTF-16"),
    Case("utf16be_no_bom", "encoding", raw_file("u16be.jsonl", lambda: GOOD_TEXT.encode("utf-16-be")), "clear", say="UTF-16"),
    Case("utf32", "encoding", raw_file("u32.jsonl", lambda: GOOD_TEXT.encode("utf-32")), "clear", say="UTF-32"),
    Case("utf16_csv", "encoding", raw_file("u16.csv", lambda: csv_text([CSV_HEAD, *CSV_GOOD]).encode("utf-16")),
         "clear", say="UTF-16"),
    Case("latin1_line", "encoding", raw_file("latin1.jsonl", lambda: GOOD_TEXT.encode() + '{"id": "x", "prompt": "Café?", '
         '"chosen": "Oui.", "rejected": "Non."}\n'.encode("latin-1")), "handled", rows=[4]),
    Case("utf8_bom", "encoding", raw_file("bom.jsonl", lambda: b"\xef\xbb\xbf" + GOOD_TEXT.encode()), "handled", rows=[],
         note="a UTF-8 BOM is still UTF-8: read"),
    Case("utf8_bom_csv", "encoding", raw_file("bom.csv", lambda: b"\xef\xbb\xbf" + csv_text([CSV_HEAD, *CSV_GOOD]).encode()),
         "handled", rows=[]),
    Case("crlf_jsonl", "encoding", raw_file("crlf.jsonl", GOOD_TEXT.replace("\n", "\r\n")), "handled", rows=[]),
    Case("crlf_csv", "encoding", raw_file("crlf.csv", "\r\n".join([CSV_HEAD, *CSV_GOOD, "g3,Q3?,A3,"]) + "\r\n"),
         "handled", rows=[4]),
    Case("cr_only_line_ends", "encoding", raw_file("mac.jsonl", GOOD_TEXT.replace("\n", "\r")), "handled", rows=[]),
    Case("bom_mid_file", "encoding", raw_file("cat.jsonl", lambda: (jsonl_text([good(1), good(2)]) + "\ufeff"
                                                                    + jsonl_text([good(3)])).encode()), "handled",
         rows=[3], note="two files concatenated: the second's BOM"),
    Case("csv_nul_byte", "encoding", raw_file("nul.csv", lambda: csv_text([CSV_HEAD, *CSV_GOOD]).encode()
                                              + b"g3,Q\x00?,A,B\n"), "handled", rows=[4]),
    Case("binary_garbage", "encoding", raw_file("junk.jsonl", bytes(range(256)) * 40), "clear", say="binary"),
    Case("lone_surrogate", "encoding", rows_file("sur.jsonl", ['{"id": "s", "prompt": "Hi \\ud800?", "chosen": "a", '
                                                              '"rejected": "b"}']), "handled", rows=[3]),
    Case("raw_control_char", "encoding", rows_file("ctl.jsonl", ['{"id": "c", "prompt": "tab\there", "chosen": "a", '
                                                               '"rejected": "b"}']), "handled", rows=[3]),
    Case("escaped_nul_in_text", "encoding", rows_file("nul.jsonl", [bad_row(prompt="a\u0000b")]), "handled", rows=[],
         note="U+0000 is valid text: kept"),
    # ---- compression
    Case("gzip_named_jsonl", "compression", raw_file("p.jsonl", lambda: gzip.compress(GOOD_TEXT.encode())), "clear",
         say="gzip|p.jsonl.gz"),
    Case("gz_good", "compression", raw_file("p.jsonl.gz", lambda: gzip.compress(GOOD_TEXT.encode())), "handled", rows=[]),
    Case("gz_json_array", "compression", raw_file("p.json.gz", lambda: gzip.compress(json.dumps(GOOD_ROWS).encode())),
         "handled", rows=[]),
    Case("gz_csv", "compression", raw_file("p.csv.gz", lambda: gzip.compress(csv_text([CSV_HEAD, *CSV_GOOD]).encode())),
         "handled", rows=[]),
    Case("gz_bad_row", "compression", raw_file("p.jsonl.gz", lambda: gzip.compress(
        jsonl_text([good(1), good(2), bad_row(chosen=7)]).encode())), "handled", rows=[3]),
    Case("gz_truncated", "compression", raw_file("cut.jsonl.gz", _truncated_gz), "clear", say="truncated|line"),
    Case("gz_corrupt", "compression", raw_file("bad.jsonl.gz", _corrupt_gz), "clear", say="gzip|line"),
    Case("gz_not_gzip", "compression", raw_file("plain.jsonl.gz", GOOD_TEXT), "clear", say="not gzip|plain.jsonl"),
    Case("gz_twice", "compression", raw_file("twice.jsonl.gz", lambda: gzip.compress(gzip.compress(GOOD_TEXT.encode()))),
         "clear", say="twice"),
    Case("gz_empty", "compression", raw_file("empty.jsonl.gz", b""), "clear", say="empty"),
    Case("gz_of_nothing", "compression", raw_file("nothing.jsonl.gz", lambda: gzip.compress(b"")), "clear", say="empty"),
    Case("bzip2_named_jsonl", "compression", raw_file("p.jsonl", lambda: bz2.compress(GOOD_TEXT.encode())), "clear",
         say="bzip2"),
    Case("zip_named_csv", "compression", raw_file("sheet.csv", _zip), "clear", say="ZIP"),
    Case("parquet_gz", "compression", raw_file("p.parquet.gz", b"x"), "clear", say="unsupported"),
    # ---- layouts
    Case("json_array_in_jsonl", "layout", raw_file("arr.jsonl", lambda: json.dumps(GOOD_ROWS, indent=2)), "clear",
         say="JSON array|arr.json"),
    Case("json_array_one_line", "layout", raw_file("arr1.jsonl", lambda: json.dumps(GOOD_ROWS)), "clear", say="JSON array"),
    Case("empty_list_jsonl", "layout", raw_file("empty.jsonl", "[]\n"), "clear", say="JSON array"),
    Case("pretty_object_jsonl", "layout", raw_file("obj.jsonl", lambda: json.dumps(good(1), indent=2)), "clear",
         say="spread over"),
    Case("jsonl_named_json", "layout", raw_file("lines.json", GOOD_TEXT), "clear", say="JSON lines|lines.jsonl"),
    Case("empty_list_json", "layout", raw_file("empty.json", "[]"), "clear", say="empty"),
    Case("json_scalar", "layout", raw_file("s.json", '"hello"'), "clear", say="expected a JSON list"),
    Case("json_object_no_rows", "layout", raw_file("o.json", '{"name": "x", "count": 3}'), "clear",
         say="expected a JSON list"),
    Case("json_wrapped", "layout", raw_file("w.json", lambda: json.dumps({"data": GOOD_ROWS})), "handled", rows=[]),
    Case("json_columns", "layout", raw_file("c.json", lambda: json.dumps(
        {k: [r[k] for r in GOOD_ROWS] for k in GOOD_ROWS[0]})), "handled", rows=[]),
    Case("json_bad_elements", "layout", raw_file("e.json", lambda: json.dumps(
        [good(1), bad_row(chosen=3), 42, good(2)])), "handled", rows=[2, 3], note="rows are elements (1 = first)"),
    Case("json_duplicate_key_element", "layout", raw_file("dk.json", lambda: "[" + json.dumps(good(1)) + ", "
                                                           '{"prompt": "A?", "prompt": "B?", "chosen": "x", '
                                                           '"rejected": "y"}]'), "handled", rows=[2]),
    Case("json_trailing_comma", "layout", raw_file("t.json", '[{"prompt": "a", "chosen": "b", "rejected": "c"},\n]'),
         "clear", say=":2: invalid JSON"),
    Case("json_nested_too_deep", "layout", raw_file("deep.json", DEEP), "clear", say="nested too deeply"),
    Case("empty_file", "layout", raw_file("empty.jsonl", b""), "clear", say="empty"),
    Case("whitespace_only", "layout", raw_file("blank.jsonl", "\n  \n\t\n"), "clear", say="empty"),
    Case("comment_lines", "layout", raw_file("comments.jsonl", "# exported 2024\n" + GOOD_TEXT), "handled", rows=[1]),
    Case("blank_lines_between", "layout", raw_file("gaps.jsonl", lambda: "\n".join(
        json.dumps(r) for r in [good(1), good(2)]) + "\n\n\n" + json.dumps(bad_row(prompt="")) + "\n"), "handled",
         rows=[5], note="row numbers are line numbers"),
    Case("all_rows_unreadable", "layout", raw_file("broken.jsonl", "{oops\n{\"a\": \n[1, 2]\n"), "clear",
         say="no usable rows"),
    Case("all_rows_invalid", "layout", rows_file("ints.jsonl", [], base=[bad_row(id=f"b{i}", chosen=i) for i in range(3)]),
         {"check": "handled", "prepare": "clear"}, rows=[1, 2, 3], say={"prepare": "no usable rows"},
         note="check: every row fails (exit 1); prepare: nothing usable (exit 2)"),
    Case("all_empty_objects", "layout", raw_file("objs.jsonl", "{}\n{}\n"), "clear"),
    Case("not_objects", "layout", raw_file("nums.jsonl", "1\n2\n\"three\"\n"), "clear", say="no usable rows"),
    Case("demos_given_as_prefs", "layout", rows_file("d.jsonl", [], base=[{"prompt": "Hi?", "completion": "Hello."}],
                                                    check_args=["--kind", "preferences"]), "clear",
         say="no preferences layout"),
    Case("half_pair", "layout", rows_file("half.jsonl", [], base=[{"prompt": "Hi?", "chosen": "Hello."}]), "clear",
         say="'rejected' is missing"),
    Case("responses_without_prompt", "layout", rows_file("r.jsonl", [], base=[{"responses": ["a", "b"]}]), "clear",
         say="'prompt' is missing"),
    Case("completion_without_prompt", "layout", rows_file("c.jsonl", [], base=[{"completion": "Hello."}],
                                                         slot="demonstrations"), "clear", say="'prompt' is missing"),
    Case("unknown_columns", "layout", rows_file("q.jsonl", [], base=[{"question": "Hi?", "answer": "Hello."}]), "clear"),
    Case("mixed_kinds", "layout", rows_file("mixed.jsonl", [{"prompt": "Hi?", "completion": "Hello."},
                                                           {"prompt": "Yo?", "response": "Hey."}]), "handled",
         rows=[3, 4], note="demonstration rows in a preference file: quarantined"),
    Case("duplicate_key", "layout", rows_file("dupkey.jsonl", ['{"id": "d", "prompt": "A?", "prompt": "B?", '
                                                              '"chosen": "x", "rejected": "y"}']), "handled", rows=[3]),
    Case("deeply_nested_field", "layout", rows_file("deep.jsonl", ['{"id": "n", "prompt": ' + DEEP + '}']), "handled",
         rows=[3]),
    Case("huge_int_digits", "layout", rows_file("bigint.jsonl", ['{"id": "h", "prompt": "a?", "chosen": "b", '
                                                                '"rejected": "c", "margin": ' + "9" * 5000 + "}"]),
         "handled", rows=[3]),
    Case("huge_line_10mb", "layout", rows_file("huge.jsonl", [bad_row(chosen="word " * 2_000_000)]), "handled", rows=[3]),
    Case("csv_semicolons", "layout", raw_file("semi.csv", "prompt;chosen;rejected\nHi?;Hello.;Go.\n"), "clear",
         say="separated"),
    Case("tsv_named_csv", "layout", raw_file("tabs.csv", "prompt\tchosen\trejected\nHi?\tHello.\tGo.\n"), "clear",
         say="tab"),
    Case("csv_holding_jsonl", "layout", raw_file("j.csv", GOOD_TEXT), "clear", say="JSON|j.jsonl"),
    Case("csv_extra_field", "layout", raw_file("extra.csv", csv_text([CSV_HEAD, *CSV_GOOD, "g3,Q?,A, B,C"])), "handled",
         rows=[4]),
    Case("csv_missing_field", "layout", raw_file("short.csv", csv_text([CSV_HEAD, CSV_GOOD[0], "g3,Q?", CSV_GOOD[1]])),
         "handled", rows=[3]),
    Case("csv_multiline_field", "layout", raw_file("multi.csv", csv_text([CSV_HEAD, 'g1,"Line one\nline two?",A,B',
                                                                         *CSV_GOOD[1:], "g3,,A,B"])), "handled", rows=[5],
         note="a quoted newline: the bad row is line 5"),
    Case("csv_unclosed_quote", "layout", raw_file("quote.csv", csv_text([CSV_HEAD, CSV_GOOD[0], 'g3,"Never closed,A,B',
                                                                        CSV_GOOD[1]])), "clear", say="unclosed quote|:3"),
    Case("csv_header_only", "layout", raw_file("head.csv", CSV_HEAD + "\n"), "clear", say="empty"),
    Case("csv_duplicate_header", "layout", raw_file("dup.csv", "prompt,chosen,chosen,rejected\nA,B,C,D\n"), "clear",
         say="twice"),
    Case("csv_bad_utf8_row", "layout", raw_file("l1.csv", lambda: csv_text([CSV_HEAD, *CSV_GOOD]).encode()
                                                + b"g3,Caf\xe9?,Oui,Non\n"), "handled", rows=[4]),
    Case("csv_bool_and_number_text", "layout", raw_file("t.csv", csv_text(
        ["id,prompt,chosen,rejected,harmful,margin", *[c + ",false,1.5" for c in CSV_GOOD], "g3,Q?,A,B,maybe,nan"])),
         "handled", rows=[4], note="CSV harmful=maybe, margin=nan"),
    Case("parquet_holding_jsonl", "layout", raw_file("p.parquet", GOOD_TEXT), "clear", say="JSON"),
    Case("parquet_truncated", "layout", raw_file("t.parquet", lambda: _parquet(GOOD_ROWS)[:-30]), "clear", say="Parquet"),
    Case("parquet_no_rows", "layout", raw_file("z.parquet", lambda: _parquet([], schema=__import__("pyarrow").schema(
        [("prompt", __import__("pyarrow").string()), ("chosen", __import__("pyarrow").string()),
         ("rejected", __import__("pyarrow").string())]))), "clear", say="empty"),
    Case("parquet_null_reply", "layout", raw_file("n.parquet", lambda: _parquet(
        [good(1), {**good(2), "chosen": None}, good(3)])), "handled", rows=[2]),
    Case("parquet_bool_labels", "layout", raw_file("b.parquet", lambda: _parquet(
        [{**good(i), "annotator_labels": [True, False]} for i in range(3)])), {"check": "handled", "prepare": "clear"},
         rows=[1, 2, 3], say={"prepare": "no usable rows"}),
    Case("unsupported_extension", "layout", raw_file("p.txt", GOOD_TEXT), "clear", say="unsupported"),
    Case("no_extension", "layout", raw_file("prefs", GOOD_TEXT), "clear", say="unsupported"),
    Case("xlsx", "layout", raw_file("p.xlsx", _zip), "clear", say="unsupported"),
    # ---- types, one column at a time (line 3 is the bad row)
    type_case("chosen_number", "chosen: 5", chosen=5),
    type_case("rejected_number", "rejected: 2.5", rejected=2.5),
    type_case("prompt_bool", "prompt: true", prompt=True),
    type_case("chosen_null", "chosen: null", chosen=None),
    type_case("rejected_missing", "no rejected key in this row", rejected=_DROP),
    type_case("chosen_list_content", "a message whose content is a list",
              chosen=[{"role": "assistant", "content": ["a", "b"]}]),
    type_case("chosen_role_number", "a message whose role is 3", chosen=[{"role": 3, "content": "hi"}]),
    type_case("prompt_message_dict_content", "prompt message content is an object",
              prompt=[{"role": "user", "content": {"text": "hi"}}]),
    type_case("chosen_plain_list", "chosen: a list of strings", chosen=["a", "b"]),
    type_case("labels_bool", "annotator_labels: [true, false]", annotator_labels=[True, False]),
    type_case("labels_mixed_bool", "annotator_labels: [1, true]", annotator_labels=[1, True]),
    type_case("labels_empty", "annotator_labels: []", annotator_labels=[]),
    type_case("labels_out_of_range", "annotator_labels: [1, 2]", annotator_labels=[1, 2]),
    type_case("labels_string", "annotator_labels: \"1,0\"", annotator_labels="1,0"),
    type_case("labels_float", "annotator_labels: [1.0, 0.0]", annotator_labels=[1.0, 0.0]),
    type_case("margin_string", "margin: \"big\"", margin="big"),
    type_case("margin_bool", "margin: true", margin=True),
    Case("margin_infinity", "types", rows_file("inf.jsonl", ['{"id": "i", "prompt": "a?", "chosen": "b", "rejected": "c", '
                                                            '"margin": Infinity}']), "handled", rows=[3]),
    Case("margin_nan", "types", rows_file("nan.jsonl", ['{"id": "i", "prompt": "a?", "chosen": "b", "rejected": "c", '
                                                       '"margin": NaN}']), "handled", rows=[],
         note="NaN reads as null (no margin)"),
    type_case("margin_list", "margin: [1]", margin=[1]),
    type_case("ultrafeedback_score_text", "score_chosen: \"high\"", score_chosen="high", score_rejected=2),
    type_case("ultrafeedback_score_bool", "score_rejected: true", score_chosen=8.5, score_rejected=True),
    Case("margin_1e30", "types", rows_file("big.jsonl", [bad_row(margin=10**30)]), "handled", rows=[],
         note="a large finite margin is valid"),
    type_case("harmful_string", "harmful: \"yes\"", harmful="yes"),
    type_case("harmful_int", "harmful: 1", harmful=1),
    Case("harmful_null", "types", rows_file("hn.jsonl", [bad_row(harmful=None)]), "handled", rows=[],
         note="null harmful means benign"),
    type_case("id_list", "id: [\"a\"]", id=["a"]),
    type_case("id_object", "id: {\"a\": 1}", id={"a": 1}),
    type_case("id_float", "id: 1.5", id=1.5),
    type_case("id_bool", "id: true", id=True),
    type_case("id_blank", "id: \"  \"", id="  "),
    type_case("id_duplicate", "id repeats line 1's", id="g1"),
    Case("id_int", "types", rows_file("intid.jsonl", [bad_row(id=7)]), "handled", rows=[], note="integer ids become text"),
    type_case("split_unknown", "split: \"test\"", split="test"),
    type_case("split_list", "split: [\"train\"]", split=["train"]),
    type_case("topic_number", "topic: 5", topic=5),
    type_case("user_id_list", "user_id: [1]", user_id=[1]),
    type_case("source_object", "source: {}", source={}),
    type_case("chosen_equals_rejected", "the same reply twice", chosen="Same.", rejected=" Same. "),
    type_case("prompt_blank", "prompt: \"   \"", prompt="   "),
    type_case("chosen_empty", "chosen: \"\"", chosen=""),
    Case("line_not_object", "types", rows_file("n.jsonl", ["42"]), "handled", rows=[3]),
    Case("hh_no_assistant", "types", rows_file("hh.jsonl", [{"chosen": "\n\nHuman: Hi", "rejected": "\n\nHuman: Hi"}],
                                               base=[{"chosen": f"\n\nHuman: Q{i}?\n\nAssistant: Yes {i}.",
                                                      "rejected": f"\n\nHuman: Q{i}?\n\nAssistant: No {i}."}
                                                     for i in (1, 2)]), "handled", rows=[3]),
    Case("hh_prompts_differ", "types", rows_file("hh2.jsonl", [{"chosen": "\n\nHuman: A?\n\nAssistant: Yes.",
                                                                "rejected": "\n\nHuman: B?\n\nAssistant: No."}],
                                                 base=[{"chosen": f"\n\nHuman: Q{i}?\n\nAssistant: Yes {i}.",
                                                        "rejected": f"\n\nHuman: Q{i}?\n\nAssistant: No {i}."}
                                                       for i in (1, 2)]), "handled", rows=[3]),
    Case("demo_no_assistant_turn", "types", rows_file("m.jsonl", [{"messages": [{"role": "user", "content": "Hi?"}]}],
                                                      base=[{"messages": [{"role": "user", "content": f"Q{i}?"},
                                                                          {"role": "assistant", "content": f"A{i}."}]}
                                                            for i in (1, 2)], slot="demonstrations"), "handled", rows=[3]),
    Case("demo_content_list", "types", rows_file("m2.jsonl", [{"messages": [{"role": "user", "content": ["Hi?"]},
                                                                           {"role": "assistant", "content": "Yo."}]}],
                                                 base=[{"messages": [{"role": "user", "content": f"Q{i}?"},
                                                                     {"role": "assistant", "content": f"A{i}."}]}
                                                       for i in (1, 2)], slot="demonstrations"), "handled", rows=[3]),
    Case("demo_response_number", "types", rows_file("d.jsonl", [{"prompt": "Hi?", "response": 12}],
                                                    base=[{"prompt": f"Q{i}?", "response": f"A{i}."} for i in (1, 2)],
                                                    slot="demonstrations"), "handled", rows=[3]),
    Case("ranking_one_response", "types", rows_file("r.jsonl", [{"prompt": "Hi?", "responses": ["only"]}],
                                                    base=[{"prompt": f"Q{i}?", "responses": [f"A{i}", f"B{i}"]}
                                                          for i in (1, 2)]), "handled", rows=[3]),
    Case("ranking_repeated_response", "types", rows_file("r2.jsonl", [{"prompt": "Hi?", "responses": ["x", "x", "y"]}],
                                                         base=[{"prompt": f"Q{i}?", "responses": [f"A{i}", f"B{i}"]}
                                                               for i in (1, 2)]), "handled", rows=[3]),
    Case("ranking_number_response", "types", rows_file("r3.jsonl", [{"prompt": "Hi?", "responses": ["x", 5]}],
                                                       base=[{"prompt": f"Q{i}?", "responses": [f"A{i}", f"B{i}"]}
                                                             for i in (1, 2)]), "handled", rows=[3]),
    Case("rl_prompt_number", "types", rows_file("rl.jsonl", [{"prompt": 17}],
                                                base=[{"prompt": f"Question {i} about bread?"} for i in (1, 2)],
                                                slot="rl_prompts"), "handled", rows=[3]),
    # ---- the file system
    Case("missing_file", "filesystem", lambda tmp: Setup(tmp / "nope.jsonl"), "clear", say="no such file"),
    Case("directory", "filesystem", directory, "clear", say="directory"),
    Case("symlink_to_directory", "filesystem", dir_symlink, "clear", say="directory"),
    Case("symlink_loop", "filesystem", symlink_loop, "clear", say="symlink loop"),
    Case("dangling_symlink", "filesystem", dangling, "clear", say="broken symlink"),
    Case("symlink_to_good_file", "filesystem", link_to_good, "handled", rows=[]),
    Case("fifo", "filesystem", fifo, "clear", say="named pipe"),
    Case("dev_null", "filesystem", device("/dev/null"), "clear", say="character device"),
    Case("dev_zero", "filesystem", device("/dev/zero"), "clear", say="character device"),
    Case("unix_socket", "filesystem", unix_socket, "clear", say="socket"),
    Case("chmod_000", "filesystem", unreadable, "handled" if IS_ROOT else "clear", rows=[] if IS_ROOT else None,
         say="" if IS_ROOT else "permission denied", note="root reads it anyway" if IS_ROOT else ""),
    Case("parent_is_a_file", "filesystem", parent_is_file, "clear", say="no such file"),
    Case("unicode_name_with_spaces", "filesystem", raw_file("préférences été 2024.jsonl", GOOD_TEXT), "handled", rows=[]),
    Case("hh_rlhf_sample_gz", "filesystem", hh_sample, "handled", note="real HH-RLHF data (gzip JSONL)"),
    # ---- output paths: nothing rlhf did not write may be deleted
    Case("docs_dir_holds_user_files", "outputs", docs_dir_foreign, "clear", say="not empty", commands=("check",)),
    Case("docs_dir_is_a_file", "outputs", docs_dir_file, "clear", say="not a directory", commands=("check",)),
    Case("docs_dir_previous_output", "outputs", docs_dir_previous, "handled", rows=[], commands=("check",),
         note="ours: replaced; the user's file beside it kept"),
    Case("json_is_a_directory", "outputs", json_is_dir, "clear", say="is a directory", commands=("check",)),
    Case("json_is_the_input", "outputs", json_is_input, "clear", say="not a report", commands=("check",)),
    Case("json_is_a_user_file", "outputs", json_foreign, "clear", say="not a report", commands=("check",)),
    Case("json_parent_is_a_file", "outputs", json_parent_file, "clear", say="is a file", commands=("check",)),
    Case("out_holds_user_files", "outputs", out_foreign, "clear", say="not empty", commands=("prepare",)),
    Case("out_is_a_file", "outputs", out_is_file, "clear", say="not a directory", commands=("prepare",)),
    Case("out_holds_the_input", "outputs", out_holds_input, "clear", say="not empty", commands=("prepare",)),
    Case("out_previous_output", "outputs", out_previous, "handled", rows=[], commands=("prepare",),
         note="ours: replaced; the user's file beside it kept"),
    Case("out_is_docs_of_check", "outputs", out_of_other_command, "clear", say="rlhf data check",
         commands=("prepare",)),
]
if not HH_SAMPLE.is_file():
    CASES = [c for c in CASES if c.name != "hh_rlhf_sample_gz"]


# ---------------------------------------------------------------------------- running


@dataclass
class Outcome:
    command: str
    argv: list[str]
    exit: int | None
    seconds: float
    cls: str = ""
    reason: str = ""
    message: str = ""  # the error line (or the first lines of output)
    rows: list[int] | None = None  # the rows it failed on a validation rule (None: no row-level answer)
    output_tail: str = ""


def _run(argv: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, str, float]:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return None, out, err, time.perf_counter() - t0


def _error_lines(stderr: str) -> list[str]:
    return [line[len("error: "):] for line in stderr.splitlines() if line.startswith("error: ")]


def run_check(case: Case, setup: Setup, work: Path, timeout: float) -> Outcome:
    report = work / "check.json"
    argv = [*RLHF, "data", "check", str(setup.input), *setup.check_args]
    if "--json" not in setup.check_args:
        argv += ["--json", str(report)]
    code, out, err, secs = _run(argv, work, timeout)
    o = Outcome("check", argv[len(RLHF):], code, secs, output_tail=(out + err)[-1500:])
    lines = _error_lines(err)
    data = None
    if "--json" not in setup.check_args and report.is_file():
        data = json.loads(report.read_text())
        f = data["files"][0] if data["files"] else {}
        if f.get("error"):
            lines.append(f["error"])
        rows: set[int] = set()
        for fail in f.get("failures") or []:
            if fail["column"] not in REFUSAL_COLUMNS:
                rows.update(fail["rows"])
        if f.get("failures") is not None and (f.get("failures") or not f.get("error")):
            o.rows = sorted(rows)
    o.message = lines[0] if lines else ""
    _classify(o, case, setup, out + err, lines, accounted=data is not None or code == 2)
    return o


def _config(setup: Setup, work: Path) -> Path:
    inputs = {name: [str(setup.input)] if name == setup.slot else [] for name in ("demonstrations", "preferences",
                                                                                   "rl_prompts")}
    cfg = {"name": "bad-inputs", "model": {"base": "tiny"}, "workspace": str(work / "ws"),
           "data": {**inputs, "prompt_filter": {"languages": [], "coverage_method": "off", "max_prompts_per_user": None}}}
    path = work / "config.yaml"
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")  # JSON is YAML
    return path


def run_prepare(case: Case, setup: Setup, work: Path, timeout: float) -> Outcome:
    out_dir = setup.out or work / "out"
    argv = [*RLHF, "data", "prepare", "-c", str(_config(setup, work)), "--out", str(out_dir)]
    code, out, err, secs = _run(argv, work, timeout)
    o = Outcome("prepare", argv[len(RLHF):], code, secs, output_tail=(out + err)[-1500:])
    lines = _error_lines(err)
    o.message = lines[0] if lines else ""
    accounted = code == 2
    quarantine, report = out_dir / "quarantine.jsonl", out_dir / "report.json"
    if quarantine.is_file() and report.is_file():  # also after exit 2 for an input with no usable row
        rows = [json.loads(line) for line in quarantine.read_text().splitlines()]
        rep = json.loads(report.read_text())
        complete = all(r.get("file") and r.get("row") is not None and r.get("rule") for r in rows)
        accounted = bool(rep.get("balanced")) and complete
        o.rows = sorted({r["row"] for r in rows})
        if not accounted:
            o.reason = "report does not balance or a quarantined row lacks file/row/rule"
    _classify(o, case, setup, out + err, lines, accounted=accounted)
    return o


COMMANDS: dict[str, Callable[[Case, Setup, Path, float], Outcome]] = {"check": run_check, "prepare": run_prepare}


def _classify(o: Outcome, case: Case, setup: Setup, output: str, lines: list[str], *, accounted: bool) -> None:
    expected = case.expected(o.command)
    missing = [p for p in setup.keep if not os.path.lexists(p)]
    if o.exit is None:
        o.cls, o.reason = "hang", "no answer within the timeout"
    elif "Traceback (most recent call last)" in output:
        o.cls, o.reason = "traceback", "a Python traceback in the output"
    elif missing:
        o.cls, o.reason = "wrong", f"deleted the user's {missing[0].name}"
    elif o.exit == 2:
        names = setup.names or [setup.input.name]
        words = case.words(o.command)
        # the words must be in what the line says, not in the paths it names (the scratch paths hold case names)
        said = [line.replace(str(setup.input), "").replace(str(setup.input.parent), "") for line in lines]
        good = [line for line, text in zip(lines, said)
                if all(n in line for n in names) and all(w.lower() in text.lower() for w in words)]
        if good:
            o.message = good[0]
            o.cls = "clear"
        else:
            o.cls = "wrong"
            o.reason = (f"no error line names {names[0]!r}" + (f" and says {' + '.join(map(repr, words))}" if words else ""))
    elif o.exit in (0, 1):
        o.cls = "handled" if accounted else "wrong"
        if not accounted and not o.reason:
            o.reason = "no report of the rows"
    else:
        o.cls, o.reason = "wrong", f"exit code {o.exit}"
    if o.cls in ("clear", "handled") and o.cls != expected:
        o.reason = f"expected {expected}, got {o.cls} (exit {o.exit})"
        o.cls = "wrong"
    if o.cls in ("clear", "handled") and case.rows is not None and o.rows is not None and o.rows != sorted(case.rows):
        o.cls, o.reason = "wrong", f"named rows {o.rows}, the bad rows are {sorted(case.rows)}"
    if o.cls == "handled" and case.rows is not None and o.rows is None:
        o.cls, o.reason = "wrong", "no row-level report"


def parity(outcomes: dict[str, Outcome]) -> str:
    """Do `data check` and `data prepare` fail the same rows of the file? same / DIFF / n/a."""
    if not {"check", "prepare"} <= set(outcomes):
        return "n/a"
    c, p = outcomes["check"], outcomes["prepare"]
    if c.rows is None and p.rows is None:
        return "same" if (c.exit == 2) == (p.exit == 2) else "DIFF"  # both refused the file as a whole
    if c.rows is None or p.rows is None:
        return "DIFF"
    return "same" if c.rows == p.rows else "DIFF"


def run_case(case: Case, base: Path, timeout: float) -> dict[str, Any]:
    work = base / case.name
    work.mkdir(parents=True)
    setup = case.setup(work)
    outcomes: dict[str, Outcome] = {}
    for command in case.commands:
        cwork = work / command
        cwork.mkdir()
        outcomes[command] = COMMANDS[command](case, setup, cwork, timeout)
    if setup.input.is_file() and not setup.input.is_symlink():
        try:
            setup.input.chmod(0o644)
        except OSError:
            pass
    return {"name": case.name, "group": case.group, "note": case.note,
            "expect": {c: case.expected(c) for c in case.commands}, "bad_rows": case.rows,
            "outcomes": {k: asdict(v) for k, v in outcomes.items()}, "parity": parity(outcomes)}


def _table(results: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'case':<32} {'group':<11} {'check':<9} {'prepare':<9} same rows", "-" * 78]
    for r in results:
        cells = [r["outcomes"][c]["cls"] if c in r["outcomes"] else "-" for c in ("check", "prepare")]
        lines.append(f"{r['name'][:32]:<32} {r['group'][:11]:<11} {cells[0]:<9} {cells[1]:<9} {r['parity']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per command before it counts as a hang")
    ap.add_argument("--only", default=None, help="run the cases whose name contains one of these (comma-separated)")
    ap.add_argument("--out", type=Path, default=RESULTS / "bad_inputs.json")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--cli", default=None, help="the command to run instead of this venv's `rlhf`, e.g. "
                    "'env PYTHONPATH=/tmp/old python -m flows.cli' for an older checkout")
    args = ap.parse_args(argv)
    if args.cli:
        import shlex

        RLHF[:] = shlex.split(args.cli)
    only = args.only.split(",") if args.only else None
    cases = [c for c in CASES if only is None or any(o in c.name for o in only)]
    base = Path(tempfile.mkdtemp(prefix="rlhf-bad-inputs-"))
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda c: run_case(c, base, args.timeout), cases))
    finally:
        for sock in _SOCKETS:
            path = sock.getsockname()
            sock.close()
            shutil.rmtree(Path(path).parent, ignore_errors=True)
        if args.keep:
            print(f"scratch kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    wall = time.perf_counter() - t0
    counts = {cls: 0 for cls in CLASSES}
    for r in results:
        for o in r["outcomes"].values():
            counts[o["cls"]] += 1
    runs = sum(counts.values())
    diff = [r["name"] for r in results if r["parity"] == "DIFF"]
    compared = sum(r["parity"] != "n/a" for r in results)
    for line in _table(results):
        print(line)
    bad = [(r["name"], o) for r in results for o in r["outcomes"].values() if o["cls"] not in ("clear", "handled")]
    if bad:
        print("\nnot clear or handled:")
        for name, o in bad:
            print(f"  {name} / {o['command']}: {o['cls']}: {o['reason']}")
            tail = (o["message"] or o["output_tail"].strip().splitlines()[-1:] or [""])
            print(f"    {(tail if isinstance(tail, str) else tail[0])[:200]}")
    if diff:
        print("\ncheck and prepare disagree on the rows of: " + ", ".join(diff))
    print(f"\n{len(results)} cases, {runs} command runs in {wall:.0f} s: "
          + ", ".join(f"{counts[c]} {c}" for c in CLASSES))
    print(f"clear or handled: {counts['clear'] + counts['handled']}/{runs} "
          f"({100 * (counts['clear'] + counts['handled']) / max(runs, 1):.1f}%); "
          f"check and prepare agree row by row on {compared - len(diff)}/{compared} files")
    summary = {"cases": len(results), "command_runs": runs, "counts": counts,
               "parity": {"compared": compared, "same": compared - len(diff), "diff": diff},
               "wall_seconds": round(wall, 1), "timeout_s": args.timeout, "jobs": args.jobs,
               "machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": os.cpu_count(), "root": IS_ROOT},
               "command": "python bench/bad_inputs.py" + (f" --only {args.only}" if args.only else "")
               + (f" --cli {args.cli!r}" if args.cli else "")}
    if args.only is None or args.out != RESULTS / "bad_inputs.json":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "results": results}, indent=2, default=str) + "\n",
                            encoding="utf-8")
        print(f"written: {args.out}")
    ok = counts["clear"] + counts["handled"] == runs and not diff
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
