"""The validator reports each kind of problem as file:line:field; valid files pass."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llm_embedder.data.validate import check_file, corpus_size_of, validate_file, validate_records
from llm_embedder.io import DataError


def good(query_id: int = 0, **extra) -> dict:
    record = {"query": "q?", "task": "qa", "query_id": query_id, "pos": ["p"], "neg": ["n1", "n2"],
              "answers": ["a"], "pos_index": [0], "neg_index": [1, 2]}
    record.update(extra)
    return record


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def fields(problems) -> list[tuple[int, str]]:
    return [(p.line, p.field) for p in problems]


def test_valid_records_pass(tmp_path: Path) -> None:
    chat = {"query": "q", "task": "chat", "query_id": 1, "history": ["t0", "t1"], "pos_index": [1],
            "teacher_scores": [0.1, 0.9], "answers": ["r"]}
    path = write(tmp_path / "ok.jsonl", [good(0, teacher_scores=[1.0, 0.5, 0.2]), chat])
    assert validate_file(path, corpus_size=3) == []
    check_file(path, corpus_size=3)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"query": None}, "query"),  # removed below
        ({"query": 5}, "query"),
        ({"query": "   "}, "query"),
        ({"pos": "p"}, "pos"),
        ({"neg": ["ok", 3]}, "neg"),
        ({"task": "nope"}, "task"),
        ({"query_id": "7"}, "query_id"),
        ({"teacher_scores": [1.0, 2.0]}, "teacher_scores"),
        ({"teacher_scores": [1.0, math.nan, 0.0]}, "teacher_scores"),
        ({"teacher_scores": [1.0, math.inf, 0.0]}, "teacher_scores"),
        ({"teacher_scores": [10**400, 0.0, 0.0]}, "teacher_scores"),  # beyond a float: OverflowError before
        ({"teacher_scores": [1e39, 0.0, 0.0]}, "teacher_scores"),  # inf as float32: train "diverged"
        ({"teacher_scores": [-1e308, 0.0, 0.0]}, "teacher_scores"),
        ({"pos_index": [5]}, "pos_index"),
        ({"neg_index": [-1, 0]}, "neg_index"),
        ({"answers": "a"}, "answers"),
        ({"pos": [" "]}, "pos"),  # an empty key: embedded as its instruction alone
        ({"neg": ["ok", ""]}, "neg"),
        ({"answers": [""]}, "answers"),
    ],
)
def test_each_problem_is_reported_with_line_and_field(tmp_path: Path, change: dict, field: str) -> None:
    bad = {**good(1), **change}
    if change == {"query": None}:
        del bad["query"]
    path = write(tmp_path / "bad.jsonl", [good(0), bad])
    problems = validate_file(path, corpus_size=3)
    assert (2, field) in fields(problems), problems
    assert all(p.line == 2 for p in problems)
    with pytest.raises(DataError, match=rf"bad\.jsonl:2:{field}"):
        check_file(path, corpus_size=3)


def test_nan_in_file_and_duplicate_query_id_and_chat_ranges(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(
        json.dumps(good(0)) + "\n" + json.dumps(good(0)) + "\n"
        + '{"query": "q", "task": "chat", "query_id": 2, "history": ["a"], "pos_index": [1], '
        '"teacher_scores": [NaN]}\n',
        encoding="utf-8",
    )
    problems = validate_file(path)
    assert (2, "query_id") in fields(problems)
    assert (3, "pos_index") in fields(problems)
    assert (3, "teacher_scores") in fields(problems)
    assert "x.jsonl:2:query_id: duplicate query_id 0" in str(problems[0])


def test_missing_pos_neg_and_sibling_corpus_range(tmp_path: Path) -> None:
    folder = tmp_path / "qa"
    folder.mkdir()
    write(folder / "corpus.jsonl", [{"id": 0, "text": "a"}, {"id": 1, "text": "b"}])
    record = good(0)
    del record["neg"], record["neg_index"]
    path = write(folder / "test.jsonl", [record, good(1, pos_index=[2], neg_index=[0, 1])])
    assert fields(validate_file(path)) == [(1, "neg"), (2, "pos_index")]


def test_records_without_file_and_corpus_file(tmp_path: Path) -> None:
    assert fields(validate_records([good(0), good(1, query="")], "mem")) == [(2, "query")]
    corpus = write(tmp_path / "corpus.jsonl", [{"id": 0, "text": "a"}, {"id": 5, "text": "b"}, {"id": 2}])
    assert fields(validate_file(corpus)) == [(2, "id"), (3, "text")]
    corpus = write(tmp_path / "corpus.jsonl", [{"text": "", "title": "Title only"}, {"text": ""}, {"text": " \n"},
                                               {"text": "", "title": "  "}])  # blank keys: the instruction alone
    assert [(p.line, p.field, p.message) for p in validate_file(corpus)] == [
        (line, "text", "empty, and no title") for line in (2, 3, 4)]
    # a null title is no title, as evaluate, mine and the key templates read it; a list is refused
    corpus = write(tmp_path / "corpus.jsonl", [{"text": "a", "title": None}, {"text": "b", "title": ["x"]},
                                               {"text": "", "title": None}])
    assert [(p.line, p.field) for p in validate_file(corpus)] == [(2, "title"), (3, "text")]


def test_malformed_json_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(good(0)) + "\n{not json\n", encoding="utf-8")
    problems = validate_file(path)
    assert len(problems) == 1 and "broken.jsonl:2" in str(problems[0])


def test_malformed_json_names_file_once_and_the_right_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(good(0)), json.dumps(good(1, query="")), json.dumps(good(2)), "{not json", json.dumps(good(2))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = [str(p) for p in validate_file(path, corpus_size=3)]
    # problems before and after the bad line are still reported, in line order
    assert problems == [
        f"{path}:2:query: empty query",
        f"{path}:4:json: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{path}:5:query_id: duplicate query_id 2 (first on line 3)",
    ]


def test_one_problem_is_one_line_for_train(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(good(0)) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        check_file(path, corpus_size=3)
    assert str(err.value) == f"{path}:2:json: expected a JSON object, got list"


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_file_has_no_records(tmp_path: Path, content: str) -> None:
    for name in ("train.jsonl", "corpus.jsonl"):
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        assert [str(p) for p in validate_file(path)] == [f"{path}: no records"]
        with pytest.raises(DataError, match=r"^\S+\.jsonl: no records$"):
            check_file(path)


def test_non_utf8_is_a_problem_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(good(0)).encode() + b'\n{"query": "caf\xe9"}\n' + json.dumps(good(1)).encode() + b"\n")
    assert [str(p) for p in validate_file(path, corpus_size=3)] == [
        f"{path}:2:encoding: not valid UTF-8 (byte 0xe9 at column 15)"
    ]


def test_corpus_bad_lines_keep_id_positions(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"id": 0, "text": "a"}\n{"id": 1, "text": "\xe9"}\n\n'
                       b'{"id": 2, "text": "c"}\n{"id": 9, "text": "d"}\n')
    assert [str(p) for p in validate_file(corpus)] == [
        f"{corpus}:2:encoding: not valid UTF-8 (byte 0xe9 at column 20)",
        f"{corpus}:5:id: expected 3 (= line order), got 9",
    ]
    assert corpus_size_of(corpus) == 4  # counts bytes lines: a non-UTF-8 corpus does not crash the range check


def test_directory_or_missing_corpus_is_named(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match=r"^\S+ is a directory, expected a JSONL file$"):
        validate_file(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^--corpus: file not found: \S+nope\.jsonl$"):
        corpus_size_of(tmp_path / "nope.jsonl", "--corpus")
    with pytest.raises(IsADirectoryError, match=r"^--corpus: \S+ is a directory"):
        corpus_size_of(tmp_path, "--corpus")


def test_teacher_scores_beyond_float32_are_refused_saying_so(tmp_path: Path) -> None:
    """1e39 passed data check, then train's float32 labels made it inf and training "diverged", blaming --lr."""
    path = write(tmp_path / "s.jsonl", [{**good(0), "teacher_scores": [1e39, 0.1, 0.2]},
                                        {**good(1), "teacher_scores": [3.4e38, 0.1, 0.2]}])
    assert [str(p) for p in validate_file(path)] == [
        f"{path}:1:teacher_scores: contains NaN, infinite or out-of-range scores (train reads them as float32: "
        "|score| <= 3.4e38)"]


def test_corpus_size_counts_entries_as_the_readers_do(tmp_path: Path) -> None:
    """Lines blank once decoded (a BOM alone on line 1, a no-break space, U+3000) were counted as entries, so data
    check accepted a pos_index that evaluate then refused as out of range."""
    folder = tmp_path / "qa"
    folder.mkdir()
    corpus = folder / "corpus.jsonl"
    corpus.write_bytes(b'\xef\xbb\xbf\n{"text": "doc a"}\n\xc2\xa0\n{"text": "doc b"}\n\xe3\x80\x80\r\n')
    assert corpus_size_of(corpus) == 2
    test = write(folder / "test.jsonl", [{"query": "q one", "task": "qa", "query_id": 0, "pos_index": [2]}])
    assert [str(p) for p in validate_file(test, evaluation=True)] == [
        f"{test}:1:pos_index: index 2 out of corpus range of size 2"]
