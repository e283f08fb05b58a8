"""MMLU-style and PopQA-style question files load into qa evaluation records (tiny fixtures written here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_embedder.data.loaders import load_mmlu, load_popqa
from llm_embedder.data.validate import validate_file
from llm_embedder.io import DataError


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


MMLU_CSV = ('"Which of these is a prime?\nPick one.",4,6,7,9,C\n'
            "What is 2+2?,3,4,5,6,B\n")


def test_mmlu_csv_release_and_jsonl(tmp_path: Path) -> None:
    folder = tmp_path / "test"
    folder.mkdir()
    (folder / "elementary_mathematics_test.csv").write_text(MMLU_CSV, encoding="utf-8")
    (folder / "astronomy_test.csv").write_text("Which planet is largest?,Mars,Jupiter,Venus,Earth,B\n")
    records = load_mmlu(folder)
    assert [(r["subject"], r["answers"], r["answer_index"]) for r in records] == [
        ("astronomy", ["Jupiter"], 1), ("elementary_mathematics", ["7"], 2), ("elementary_mathematics", ["4"], 1)]
    assert records[1]["query"] == "Which of these is a prime?\nPick one."
    assert records[1]["choices"] == ["4", "6", "7", "9"]
    assert [r["query_id"] for r in records] == [0, 1, 2] and all(r["task"] == "qa" for r in records)
    out = tmp_path / "qa" / "test.jsonl"
    jsonl(out, records)
    assert validate_file(out) == []  # qa evaluation data as `data check` reads it
    data = jsonl(tmp_path / "mmlu.json", [
        {"query": "What is 2+2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "elementary_mathematics",
         "query_id": 11},
        {"question": "Largest planet?", "choices": ["Mars", "Jupiter", "Venus", "Earth"], "answer": "B",
         "subject": "astronomy"},
    ])
    assert [(r["query"], r["answers"], r["subject"]) for r in load_mmlu(data)] == [
        ("What is 2+2?", ["4"], "elementary_mathematics"), ("Largest planet?", ["Jupiter"], "astronomy")]


def test_mmlu_errors_name_file_line_field(tmp_path: Path) -> None:
    bad = tmp_path / "anatomy_test.csv"
    bad.write_text("What is 2+2?,3,4,5,6,B\nAnd 3+3?,5,6,7,8,E\n")
    with pytest.raises(DataError, match=r"anatomy_test\.csv:2:answer: expected one of A, B, C, D"):
        load_mmlu(bad)
    bad.write_text("What is 2+2?,3,4,5,B\n")
    with pytest.raises(DataError, match=r"anatomy_test\.csv:1: expected 6 columns"):
        load_mmlu(bad)
    empty = jsonl(tmp_path / "e.json", [{"query": " ", "choices": ["a", "b"], "answer": 0}])
    with pytest.raises(DataError, match=r"e\.json:1:question: missing or empty question"):
        load_mmlu(empty)
    (tmp_path / "none.csv").write_text("")
    with pytest.raises(DataError, match=r"none\.csv: no records"):
        load_mmlu(tmp_path / "none.csv")


POPQA_TSV = ("id\tsubj\tprop\tobj\tprop_id\tquestion\tpossible_answers\n"
             '4222362\tGeorge Rankin\toccupation\tpolitician\t22\tWhat is George Rankin\'s occupation?\t'
             '["politician", "political leader"]\n'
             '"5"\tSan Marino\tcapital\tCity of San Marino\t36\tWhat is the capital of San Marino?\t'
             '"[""City of San Marino"", ""San Marino""]"\n')


def test_popqa_tsv_and_jsonl(tmp_path: Path) -> None:
    tsv = tmp_path / "popQA.tsv"
    tsv.write_text(POPQA_TSV, encoding="utf-8")
    records = load_popqa(tsv)
    assert records[0]["answers"] == ["politician", "political leader"] and records[0]["prop_id"] == 22
    assert records[1]["answers"] == ["City of San Marino", "San Marino"] and records[1]["source_id"] == "5"
    assert records[0]["query"] == "What is George Rankin's occupation?" and records[0]["subj"] == "George Rankin"
    out = jsonl(tmp_path / "qa" / "test.jsonl", records)
    assert validate_file(out) == []
    data = jsonl(tmp_path / "popqa.jsonl", [{"question": "Who?", "possible_answers": '["A", "B"]', "prop_id": 9},
                                            {"query": "What?", "answers": ["C"]}])
    assert [(r["query"], r["answers"], r.get("prop_id")) for r in load_popqa(data)] == [
        ("Who?", ["A", "B"], 9), ("What?", ["C"], None)]


def test_popqa_errors_name_file_line_field(tmp_path: Path) -> None:
    tsv = tmp_path / "popQA.tsv"
    tsv.write_text("question\tpossible_answers\nWho?\t[\"A\"]\nWhat?\tnot json\n")
    with pytest.raises(DataError, match=r"popQA\.tsv:3:possible_answers: not a JSON list"):
        load_popqa(tsv)
    tsv.write_text("question\tanswer\nWho?\tA\n")
    with pytest.raises(DataError, match=r"popQA\.tsv:1: header lacks possible_answers"):
        load_popqa(tsv)
    tsv.write_text("question\tpossible_answers\n")
    with pytest.raises(DataError, match=r"popQA\.tsv: no records"):
        load_popqa(tsv)
    data = jsonl(tmp_path / "p.jsonl", [{"question": "Who?", "possible_answers": []}])
    with pytest.raises(DataError, match=r"p\.jsonl:1:possible_answers: must be a non-empty list"):
        load_popqa(data)


def test_popqa_integer_of_too_many_digits_names_file_line_field(tmp_path: Path) -> None:
    """int() of the s_pop cell raised a plain ValueError, naming no file or line."""
    tsv = tmp_path / "popQA.tsv"
    tsv.write_text('question\tpossible_answers\ts_pop\nWho?\t["A"]\t1\nWho else?\t["B"]\t' + "9" * 5000 + "\n")
    with pytest.raises(DataError) as err:
        load_popqa(tsv)
    assert str(err.value) == f"{tsv}:3:s_pop: integer too large (more than 4300 digits)"


def test_popqa_and_mmlu_non_finite_numbers_name_file_line_field(tmp_path: Path) -> None:
    """They were imported and written out as NaN, Infinity (no JSON) or the answer text "nan"."""
    tsv = tmp_path / "popQA.tsv"
    tsv.write_text('question\tpossible_answers\tprop_id\ts_pop\nWho?\t["A"]\t22\tnan\n')
    with pytest.raises(DataError, match=r"popQA\.tsv:2:s_pop: expected an integer, got 'nan'$"):
        load_popqa(tsv)
    data = tmp_path / "popqa.jsonl"
    data.write_text('{"question": "q?", "possible_answers": ["a"], "prop_id": NaN, "s_pop": Infinity}\n')
    with pytest.raises(DataError, match=r"popqa\.jsonl:1: NaN is not JSON in field 'prop_id'"):
        load_popqa(data)
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text('{"question": "q?", "choices": [1.5, NaN, "x"], "answer": 1}\n')
    with pytest.raises(DataError, match=r"mmlu\.jsonl:1: NaN is not JSON in field 'choices'"):
        load_mmlu(mmlu)


def test_popqa_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    """The row became a dict: the second question column was imported without a word."""
    tsv = tmp_path / "popQA.tsv"
    tsv.write_text('question\tquestion\tpossible_answers\nWho?\tWhat?\t["A"]\n')
    with pytest.raises(DataError, match=r"popQA\.tsv:1: the header names column 'question' twice$"):
        load_popqa(tsv)


def test_mmlu_csv_with_bad_utf8_names_the_real_line(tmp_path: Path) -> None:
    """The text layer decodes ahead of the csv reader: it said "after line 0" for a bad byte on line 7."""
    path = tmp_path / "math_test.csv"
    path.write_bytes(b"".join(b"What is %d?,1,2,3,4,B\n" % i for i in range(6)) + b"What is caf\xe9?,1,2,3,4,B\n")
    with pytest.raises(DataError) as err:
        load_mmlu(path)
    assert str(err.value) == f"{path}:7: not valid UTF-8 (byte 0xe9 at column 12)"


def test_mmlu_csv_files_are_found_whatever_the_case_of_their_extension(tmp_path: Path) -> None:
    """A folder's ``<subject>_test.CSV`` files were not found (``holds no *.csv files``), or, beside ``.csv`` ones,
    left out silently; a single ``.CSV`` file was read as CSV already."""
    folder = tmp_path / "test"
    folder.mkdir()
    (folder / "astronomy_test.CSV").write_text("Which planet is largest?,Mars,Jupiter,Venus,Earth,B\n")
    (folder / "anatomy_test.Csv").write_text("Which organ pumps blood?,Heart,Lung,Liver,Skin,A\n")
    (folder / "virology_test.csv").write_text("What causes flu?,A virus,A bacterium,A fungus,A prion,A\n")
    (folder / "astronomy_dev.CSV").write_text("Smallest planet?,Mars,Jupiter,Venus,Mercury,D\n")
    records = load_mmlu(folder)
    assert [(r["subject"], r["answers"]) for r in records] == [
        ("anatomy", ["Heart"]), ("astronomy", ["Jupiter"]), ("virology", ["A virus"])]
    assert [r["query"] for r in load_mmlu(folder, split="dev")] == ["Smallest planet?"]
    (alone,) = load_mmlu(folder / "astronomy_test.CSV")
    assert (alone["subject"], alone["answers"]) == ("astronomy", ["Jupiter"])


def test_every_loader_tells_the_bytes_it_reads(tmp_path: Path) -> None:
    """``on_read`` (data import's progress bar) is told each line's bytes: all of every file read, no more."""
    from llm_embedder.data.loaders import load_beir, load_flag_jsonl

    said: list[int] = []
    mmlu = tmp_path / "astronomy_test.csv"
    mmlu.write_text("Which planet is largest?,Mars,Jupiter,Venus,Ërde,B\n", encoding="utf-8")
    load_mmlu(mmlu, on_read=said.append)
    assert sum(said) == mmlu.stat().st_size
    said.clear()
    popqa = tmp_path / "popQA.tsv"
    popqa.write_text('question\tpossible_answers\nWho?\t["A", "B"]\n')
    load_popqa(popqa, on_read=said.append)
    assert sum(said) == popqa.stat().st_size
    said.clear()
    corpus = jsonl(tmp_path / "corpus.jsonl", [{"title": "T", "text": "a text"}, {"text": "another"}])
    flag = jsonl(tmp_path / "flag.jsonl", [{"query": "q", "task": "qa", "pos_index": [1]}])
    load_flag_jsonl(flag, corpus=corpus, on_read=said.append)
    assert sum(said) == flag.stat().st_size + corpus.stat().st_size
    said.clear()
    beir = tmp_path / "beir"
    files = [jsonl(beir / "corpus.jsonl", [{"_id": "d1", "title": "Paris", "text": "capital of France"}]),
             jsonl(beir / "queries.jsonl", [{"_id": "q1", "text": "france?"}]), beir / "qrels" / "test.tsv"]
    files[2].parent.mkdir()
    files[2].write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    load_beir(beir, on_read=said.append)
    assert sum(said) == sum(f.stat().st_size for f in files)
