"""Benchmark source files are split into JSON lines at "\n" only."""

from __future__ import annotations

import json

from llm_embedder.data.sources import _read_lines


def test_read_lines_keeps_records_whose_strings_hold_unicode_line_separators(tmp_path):
    rows = [{"id": i, "question": f"a{sep}b"} for i, sep in enumerate(["\u2028", "\u2029", "\u0085", "\x1c"])]
    path = tmp_path / "rows.json"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "\n", encoding="utf-8")
    assert _read_lines(path) == rows
