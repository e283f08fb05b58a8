"""The shared JSONL readers: bad UTF-8, bad JSON and wrong paths each give one line naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_embedder.io import (
    DataError,
    JsonlError,
    check_output_file,
    check_template,
    finite_json,
    iter_jsonl,
    iter_text_lines,
    parse_jsonl_lines,
    read_jsonl,
    yaml_error,
)


def test_non_utf8_line_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 14\)$"):
        read_jsonl(path)


def test_utf8_error_column_counts_characters(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes('{"text": "été '.encode() + b'\xff"}\n')  # two 2-byte characters before the bad byte
    with pytest.raises(DataError, match=r"mixed\.jsonl:1: not valid UTF-8 \(byte 0xff at column 15\)"):
        read_jsonl(path)


def test_reading_streams_up_to_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{oops\n')
    records = iter_jsonl(path)
    assert next(records) == (1, {"a": 1}) and next(records) == (3, {"a": 2})
    with pytest.raises(JsonlError, match=r"late\.jsonl:4: malformed JSON") as err:
        next(records)
    assert (err.value.line, err.value.field) == (4, "json")


def test_on_error_reports_bad_lines_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"a": 1}\n[1]\n{"a": "\xe9"}\n{bad\n{"a": 5}\n')
    bad: list[JsonlError] = []
    assert [line for line, _ in iter_jsonl(path, on_error=bad.append)] == [1, 5]
    assert [(e.line, e.field) for e in bad] == [(2, "json"), (3, "encoding"), (4, "json")]
    assert str(bad[0]) == f"{path}:2: expected a JSON object, got list"


def test_bom_on_first_line_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "\u00e9"}).encode() + b"\r\n{\"text\": \"b\"}\r\n")
    assert read_jsonl(path) == [{"text": "\u00e9"}, {"text": "b"}]
    assert list(iter_text_lines(path)) == ['{"text": "\\u00e9"}', '{"text": "b"}']


def test_text_lines_name_file_and_line_of_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"one\n\ntwo\xe9\n")
    lines = iter_text_lines(path)
    assert next(lines) == "one" and next(lines) == ""
    with pytest.raises(DataError, match=r"notes\.txt:3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        next(lines)


def test_parse_lines_accepts_bytes_and_text() -> None:
    assert list(parse_jsonl_lines([b'{"a": 1}\n', "", '{"b": 2}'], "mem")) == [(1, {"a": 1}), (3, {"b": 2})]
    with pytest.raises(DataError, match=r"^mem:2: not valid UTF-8"):
        list(parse_jsonl_lines([b"{}", b"\x80"], "mem"))


def test_directory_and_missing_file_are_clear(tmp_path: Path) -> None:
    folder = tmp_path / "qa"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"^\S*qa is a directory, expected a JSONL file$"):
        read_jsonl(folder)
    with pytest.raises(IsADirectoryError, match=r"^--corpus: \S*qa is a directory"):
        read_jsonl_option(folder, "--corpus")
    with pytest.raises(FileNotFoundError, match=r"^--corpus: file not found: \S*nope\.jsonl$"):
        read_jsonl_option(tmp_path / "nope.jsonl", "--corpus")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        next(iter_text_lines(folder))


def read_jsonl_option(path: Path, option: str) -> list:
    return list(iter_jsonl(path, option=option))


def test_check_output_file_refuses_a_directory_or_a_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(IsADirectoryError, match=r"--out .* is a directory; give a file path"):
        check_output_file(tmp_path)
    with pytest.raises(NotADirectoryError, match=r"afile is a file, not a folder"):
        check_output_file(tmp_path / "afile" / "x.jsonl")
    assert check_output_file(tmp_path / "new" / "sub" / "x.jsonl") == tmp_path / "new" / "sub" / "x.jsonl"


def test_check_output_file_refuses_an_input_of_the_job(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n")
    (tmp_path / "sub").mkdir()
    for same in (source, tmp_path / "sub" / ".." / "in.jsonl"):
        with pytest.raises(FileExistsError, match=r"--out .* is the input file .*in.jsonl; give another path"):
            check_output_file(same, inputs=[tmp_path / "other.jsonl", source])
    assert check_output_file(tmp_path / "out.jsonl", inputs=[source]) == tmp_path / "out.jsonl"
    assert source.read_text() == "{}\n"


@pytest.mark.parametrize(("template", "message"), [
    ("{} {0}", "{} is not a field name"),
    ("{text.upper}", "{text.upper} is not a field name"),
    ("{a[0]}", "{a[0]} is not a field name"),
    ("{title", "expected '}' before end of string"),
    ("{title!z}", "unknown conversion !z"),
    ("no fields", "names no field"),
])
def test_check_template_refuses_what_a_record_template_cannot_mean(template: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_template(template, "--template")
    assert str(err.value).startswith(f"--template {template!r}") and message in str(err.value)
    assert check_template("{title} {text!s}", "--template") == ["title", "text"]


def test_yaml_error_is_one_line_naming_file_line_and_column(tmp_path: Path) -> None:
    import yaml

    with pytest.raises(yaml.YAMLError) as err:
        yaml.safe_load("a: [1, 2\nb: 3\n")
    line = yaml_error(tmp_path / "train.yaml", err.value)
    assert line.startswith(f"{tmp_path / 'train.yaml'}:2:") and "cannot parse YAML: " in line and "\n" not in line
    assert yaml_error("f.yaml", ValueError("plain\nerror")) == "f.yaml: cannot parse YAML: plain error"


def test_exclusive_refuses_a_second_holder_until_the_first_is_gone(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from llm_embedder.io import RunInProgressError, exclusive

    lock = tmp_path / "out.jsonl.lock"
    with exclusive(lock, "out.jsonl"):
        assert lock.read_text().strip().isdigit()  # the holder's pid
        message = r"out.jsonl is being written by another run \(it holds .*\.lock\)"
        with pytest.raises(RunInProgressError, match=message), exclusive(lock, "out.jsonl"):
            pass
    assert not lock.exists()
    # a holder killed outright leaves the file, but not the lock
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from llm_embedder.io import exclusive\n"
                               f"with exclusive({str(lock)!r}, 'x'):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunInProgressError):
        with exclusive(lock, "out.jsonl"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    assert lock.exists()
    with exclusive(lock, "out.jsonl"):
        pass
    # a folder it made for the lock goes again if the run left nothing in it
    with pytest.raises(ValueError), exclusive(tmp_path / "new" / ".lock", "new"):
        raise ValueError("bad data")
    assert not (tmp_path / "new").exists()


def test_an_output_folder_under_a_file_is_refused_naming_the_file(tmp_path):
    """`data build --out lines.txt/sub` (and index, export) failed with "[Errno 20] Not a directory: ..." once it
    came to write (export named its own temporary folder); the file in the way is named first now."""
    from llm_embedder.io import check_output_dir

    (tmp_path / "lines.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"--out .*lines.txt/sub: .*lines.txt is a file, not a folder"):
        check_output_dir(tmp_path / "lines.txt" / "sub", (), "a suite")


def test_a_line_nested_too_deeply_is_that_line_s_problem(tmp_path: Path) -> None:
    """Python's parser raised RecursionError, a traceback; data check stopped there too."""
    path = tmp_path / "deep.jsonl"
    path.write_text('{"a": 1}\n{"a": ' + "[" * 100_000 + "]" * 100_000 + '}\n{"a": 3}\n')
    with pytest.raises(JsonlError) as err:
        list(iter_jsonl(path))
    assert str(err.value) == f"{path}:2: nested too deeply"
    bad: list[JsonlError] = []
    assert [line for line, _ in iter_jsonl(path, on_error=bad.append)] == [1, 3]
    assert [str(e) for e in bad] == [f"{path}:2: nested too deeply"]


def test_too_deep_line_skips_brackets_in_strings() -> None:
    from llm_embedder.io import too_deep_line

    assert too_deep_line('{"a": "' + "[" * 1000 + '"}\n') is None
    assert too_deep_line("a: it's\nb: " + "[" * 1000 + "]" * 1000 + "\n") == 2


def test_an_integer_of_too_many_digits_names_the_line(tmp_path: Path) -> None:
    """Python's int() limit raised a plain ValueError naming no file or line; data check stopped there."""
    path = tmp_path / "big.jsonl"
    path.write_text('{"a": 1}\n{"a": ' + "9" * 5000 + '}\n{"a": 3}\n')
    with pytest.raises(JsonlError) as err:
        list(iter_jsonl(path))
    assert str(err.value) == f"{path}:2: integer too large (more than 4300 digits)"
    bad: list[JsonlError] = []
    assert [line for line, _ in iter_jsonl(path, on_error=bad.append)] == [1, 3]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_naming_the_field(tmp_path: Path, literal: str) -> None:
    """Python's json read them; written back out (an import, an index's docs.jsonl) they were no JSON."""
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"text": "t", "meta": {"n": [1, ' + literal + ']}}\n')
    with pytest.raises(JsonlError) as err:
        list(iter_jsonl(path))
    assert str(err.value) == (f"{path}:2: {literal} is not JSON in field 'meta' (numbers must be finite; write null "
                              "or leave the field out)")
    assert err.value.field == "meta"


def test_nan_teacher_scores_are_read_for_score_to_replace(tmp_path: Path) -> None:
    """score writes the scores the LLM gives, NaN too, and replaces stale ones; data check refuses them itself."""
    path = tmp_path / "x.jsonl"
    path.write_text('{"query": "q", "teacher_scores": [NaN, Infinity]}\n')
    assert [str(s) for s in read_jsonl(path)[0]["teacher_scores"]] == ["nan", "inf"]


def test_every_reader_refuses_a_key_given_twice(tmp_path: Path) -> None:
    """Only data check and train refused it; score, import, index, mine, evaluate and encode kept the last."""
    path = tmp_path / "x.jsonl"
    path.write_text('{"query": "q one", "pos": ["a"], "query": "q two"}\n')
    with pytest.raises(JsonlError) as err:
        read_jsonl(path)
    assert str(err.value) == f"{path}:1: duplicate key 'query' (JSON keeps only its last value)"
    with pytest.raises(JsonlError):
        list(parse_jsonl_lines(['{"a": {"b": 1, "b": 2}}'], "lines"))


def test_json_document_names_the_line_of_a_repeated_key() -> None:
    from llm_embedder.io import json_document

    with pytest.raises(DataError) as err:
        json_document('{"name": "x",\n "loss": "contrastive",\n "loss": "kl_distill"}\n', "t.json")
    assert str(err.value) == "t.json:3: duplicate key 'loss' (JSON keeps only its last value)"


def test_a_gzip_file_is_named_as_compressed_not_as_bad_utf8(tmp_path: Path) -> None:
    """A .jsonl.gz was refused as "not valid UTF-8 (byte 0x8b ...)", which hid what to do: decompress it."""
    import gzip

    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"query": "q"}\n'))
    with pytest.raises(JsonlError, match=r"train\.jsonl\.gz:1: a gzip-compressed file; decompress it first"):
        list(iter_jsonl(path))


def test_finite_json_turns_non_finite_floats_into_null() -> None:
    value = {"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": "NaN", "e": 2}
    assert finite_json(value) == {"a": None, "b": [1.5, None, {"c": None}], "d": "NaN", "e": 2}
    json.dumps(finite_json(value), allow_nan=False)  # valid JSON


def test_a_file_with_cr_only_line_endings_is_named_as_such(tmp_path: Path) -> None:
    """A file whose lines end in CR alone read as one line: "malformed JSON: Extra data (column 16)", no more."""
    path = tmp_path / "old_mac.jsonl"
    path.write_bytes(b'{"query": "a"}\r{"query": "b"}\r')
    with pytest.raises(JsonlError, match=r"old_mac\.jsonl:1: .*Extra data.*lines end in CR alone: convert them"):
        list(iter_jsonl(path))
