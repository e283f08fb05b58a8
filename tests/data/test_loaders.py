"""FlagEmbedding JSONL and BEIR folders load into validated suite records (tiny fixtures written here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llm_embedder.data.loaders import NoRelevantWarning, format_key, load_beir, load_corpus, load_flag_jsonl
from llm_embedder.io import DataError


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CORPUS = [{"title": "Paris", "text": "capital of France"}, {"title": "Rome", "text": "capital of Italy"},
          {"text": "no title here"}]


def test_flag_train_and_eval_with_corpus(tmp_path: Path) -> None:
    corpus = jsonl(tmp_path / "corpus.json", CORPUS)
    train = jsonl(tmp_path / "train.json", [
        {"query": "capital of france?", "pos": ["Paris capital of France"], "neg": ["x"], "task": "qa",
         "teacher_scores": [1.0, 0.0]},
        {"query": "italy?", "pos": ["Rome"], "neg": ["y"]},  # task read from the first line
    ])
    records = load_flag_jsonl(train)
    assert [r["task"] for r in records] == ["qa", "qa"] and [r["query_id"] for r in records] == [0, 1]
    evaluation = jsonl(tmp_path / "test.json", [{"query": "italy?", "qid": 7, "pos_index": [1], "neg_index": [2],
                                                 "answers": ["Rome"]}])
    [record] = load_flag_jsonl(evaluation, corpus=corpus, task="qa")
    assert record["query_id"] == 7
    assert record["pos"] == ["Rome capital of Italy"] and record["neg"] == ["no title here"]
    assert format_key(load_corpus(corpus)[0], "{text}") == "capital of France"


def test_flag_errors_name_file_line_field(tmp_path: Path) -> None:
    corpus = jsonl(tmp_path / "corpus.json", CORPUS)
    bad = jsonl(tmp_path / "bad.json", [{"query": "q", "task": "qa", "pos_index": [9]}])
    with pytest.raises(DataError, match=r"bad\.json:1:pos_index"):
        load_flag_jsonl(bad, corpus=corpus)
    no_task = jsonl(tmp_path / "nt.json", [{"query": "q", "pos": [], "neg": []}])
    with pytest.raises(DataError, match=r"nt\.json:1:task"):
        load_flag_jsonl(no_task)
    wrong = jsonl(tmp_path / "wrong.json", [{"query": "", "task": "qa", "pos": ["p"], "neg": []}])
    with pytest.raises(DataError, match=r"wrong\.json:1:query"):
        load_flag_jsonl(wrong)


def beir(folder: Path, qrels: str) -> Path:
    jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "Paris", "text": "capital of France"},
                                    {"_id": "d2", "title": "", "text": "Rome is in Italy"}])
    jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "where is rome?"}, {"_id": "q2", "text": "france?"}])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return folder


def test_beir_folder(tmp_path: Path) -> None:
    folder = beir(tmp_path / "scifact", "query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td1\t2\nq2\td2\t0\n")
    records, corpus = load_beir(folder, split="test", task="qa")
    assert [c["doc_id"] for c in corpus] == ["d1", "d2"] and corpus[1]["id"] == 1
    assert [(r["query"], r["pos_index"], r["source_id"]) for r in records] == [
        ("where is rome?", [1], "q1"), ("france?", [0], "q2")]
    assert records[1]["pos"] == ["Paris capital of France"] and records[0]["pos"] == ["Rome is in Italy"]


def test_beir_queries_with_no_relevant_document_are_left_out_and_counted(tmp_path: Path) -> None:
    """They were written with an empty pos, as records no task can use: BEIR's evaluation leaves them out."""
    qrels = "q1\td2\t1\n" + "".join(f"q{i}\td1\t0\n" for i in range(2, 10))
    folder = beir(tmp_path / "b", qrels)
    jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": f"query {i}"} for i in range(1, 10)])
    with pytest.warns(NoRelevantWarning, match=r"test\.tsv: left out 8 of 9 queries that have no relevant document "
                                               r".*'q2' \(line 2\), .*'q6' \(line 6\), and 3 more;"):
        records, corpus = load_beir(folder)
    assert [(r["source_id"], r["query_id"], r["pos_index"]) for r in records] == [("q1", 0, [1])]
    assert len(corpus) == 2  # the corpus is whole: its ids are the records' pos_index


def test_beir_errors(tmp_path: Path) -> None:
    folder = beir(tmp_path / "b1", "query-id\tcorpus-id\tscore\nq1\tmissing\t1\n")
    with pytest.raises(DataError, match=r"test\.tsv:2:corpus-id"):
        load_beir(folder)
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        load_beir(folder, split="dev")


@pytest.mark.parametrize("score", ["nan", "inf", "-inf"])
def test_beir_qrels_score_must_be_finite(tmp_path: Path, score: str) -> None:
    """float() reads "nan" and "inf": a nan score read as not relevant, an inf one as relevant, silently."""
    folder = beir(tmp_path / "b", f"query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td1\t{score}\n")
    with pytest.raises(DataError, match=rf"test\.tsv:3:score: not a finite number: '{score}'"):
        load_beir(folder)


@pytest.mark.parametrize(("title", "kind"), [(["Paris", "France"], "list"), (7, "int"), ({"en": "Paris"}, "dict")])
def test_beir_title_that_is_no_string_is_refused(tmp_path: Path, title: object, kind: str) -> None:
    """It was written into the corpus and the positives as Python's repr: "['Paris', 'France'] capital of France"."""
    folder = beir(tmp_path / "b", "q1\td2\t1\nq2\td1\t1\n")
    jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": title, "text": "capital of France"},
                                    {"_id": "d2", "title": "", "text": "Rome is in Italy"}])
    with pytest.raises(DataError, match=rf"corpus\.jsonl:1:title: must be a string, got {kind}"):
        load_beir(folder)
    jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": None, "text": "capital of France"},
                                    {"_id": "d2", "title": "", "text": "Rome is in Italy"}])
    assert load_beir(folder)[1][0]["title"] == ""  # a null title is no title, as before


@pytest.mark.parametrize(("entry", "field", "kind"), [
    ({"title": ["Paris"], "text": "capital of France"}, "title", "list"),
    ({"title": "Paris", "text": ["capital of France"]}, "text", "list"),
    ({"title": 7, "text": "capital of France"}, "title", "int"),
])
def test_flag_corpus_field_that_is_no_string_is_refused(tmp_path: Path, entry: dict, field: str, kind: str) -> None:
    corpus = jsonl(tmp_path / "corpus.json", [CORPUS[1], entry])
    data = jsonl(tmp_path / "test.json", [{"query": "france?", "task": "qa", "pos_index": [1]}])
    with pytest.raises(DataError, match=rf"corpus\.json:2:{field}: must be a string, got {kind}"):
        load_flag_jsonl(data, corpus=corpus)


def test_a_key_template_field_holding_a_list_is_refused(tmp_path: Path) -> None:
    corpus = [{"id": 0, "title": "Paris", "text": "capital", "tags": ["a", "b"]}]
    data = jsonl(tmp_path / "test.json", [{"query": "france?", "task": "qa", "pos_index": [0]}])
    with pytest.raises(DataError, match=r"corpus entry 0 \(used by .*\):tags: must be a string or a number, got list"):
        load_flag_jsonl(data, corpus=corpus, key_template="{text} {tags}")


def test_format_key_treats_null_as_empty(tmp_path: Path) -> None:
    """A null title was formatted as the text "None": keys read "None Rome, ..."."""
    assert format_key({"title": None, "text": "x"}) == "x"
    corpus = jsonl(tmp_path / "corpus.json", [{"title": None, "text": "Rome, capital of Italy"}])
    train = jsonl(tmp_path / "test.json", [{"query": "italy?", "task": "qa", "pos_index": [0]}])
    assert load_flag_jsonl(train, corpus=corpus)[0]["pos"] == ["Rome, capital of Italy"]


@pytest.mark.parametrize(("template", "message"), [
    ("{text.upper}", "is not a field name"),  # was "<built-in method upper ...>" as every key
    ("plain", "names no field"),  # was "plain" as every key
    ("{title", "expected '}'"),  # was a bare ValueError
    ("{nosuch}", "no corpus entry has 'nosuch'"),  # was "item 0 is empty", blaming the record
])
def test_key_template_is_checked_up_front(tmp_path: Path, template: str, message: str) -> None:
    corpus = jsonl(tmp_path / "corpus.json", CORPUS)
    data = jsonl(tmp_path / "test.json", [{"query": "italy?", "task": "qa", "pos_index": [1], "neg_index": [0]}])
    with pytest.raises(ValueError, match=rf"key_template '{re.escape(template)}'.*{re.escape(message)}"):
        load_flag_jsonl(data, corpus=corpus, key_template=template)
    folder = beir(tmp_path / "b", "q1\td2\t1\n")
    with pytest.raises(ValueError, match=rf"key_template '{re.escape(template)}'.*{re.escape(message)}"):
        load_beir(folder, key_template=template)


def test_flag_empty_key_names_the_corpus_entry(tmp_path: Path) -> None:
    corpus = jsonl(tmp_path / "corpus.json", [{"title": "Paris", "text": "capital"}, {"title": "Rome"}])
    data = jsonl(tmp_path / "test.json", [{"query": "q", "task": "qa", "pos_index": [1]}])
    with pytest.raises(DataError, match=r"corpus\.json:2 \(used by .*test\.json:1:pos_index\): empty key under "
                                        r"key_template '\{text\}'"):
        load_flag_jsonl(data, corpus=corpus, key_template="{text}")


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl"])
def test_beir_duplicate_ids_are_refused(tmp_path: Path, name: str) -> None:
    """A repeated _id silently replaced the earlier line."""
    folder = beir(tmp_path / "b", "q1\td2\t1\n")
    path = folder / name
    path.write_text(path.read_text() + json.dumps({"_id": "d1" if name == "corpus.jsonl" else "q1", "text": "again"})
                    + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(name)}:3:_id: duplicate _id '(d1|q1)' \(first on line 1\)"):
        load_beir(folder)


def test_beir_qrels_with_a_bom(tmp_path: Path) -> None:
    folder = beir(tmp_path / "b", "query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n", encoding="utf-8-sig")
    records, _ = load_beir(folder)
    assert [r["source_id"] for r in records] == ["q1"]


def test_beir_errors_name_the_file_and_line_of_the_bad_text(tmp_path: Path) -> None:
    folder = beir(tmp_path / "b", "q1\td2\t1\nq2\td1\t1\n")
    jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "where is rome?"}, {"_id": "q2", "text": " "}])
    with pytest.raises(DataError, match=r"queries\.jsonl:2:text: empty query"):
        load_beir(folder)
    folder = beir(tmp_path / "c", "q1\td2\t1\n")
    jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "Paris", "text": "capital of France"},
                                    {"_id": "d2", "title": "", "text": ""}])
    with pytest.raises(DataError, match=r"corpus\.jsonl:2:text: empty, and no title"):
        load_beir(folder)
    jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "Paris", "text": "capital of France"},
                                    {"_id": "d2", "title": "Rome", "text": ""}])
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: empty key under key_template '\{text\}'"):
        load_beir(folder, key_template="{text}")


def test_flag_corpus_ids_without_a_corpus(tmp_path: Path) -> None:
    """Records with pos_index/neg_index but no corpus got pos/neg = [] and a misleading range error."""
    data = jsonl(tmp_path / "test.json", [{"query": "q", "task": "qa", "pos_index": [0], "neg_index": [1]}])
    with pytest.raises(DataError, match=r"test\.json:1:pos_index: the record gives corpus ids but no `pos` texts, "
                                        r"and no corpus was passed"):
        load_flag_jsonl(data)
    text_ids = jsonl(tmp_path / "s.json", [{"query": "q", "task": "qa", "pos_index": "0"}])
    corpus = jsonl(tmp_path / "corpus.json", CORPUS)
    for given in (None, corpus):
        with pytest.raises(DataError, match=r"s\.json:1:pos_index: must be a list of integers"):
            load_flag_jsonl(text_ids, corpus=given)
    negative = jsonl(tmp_path / "n.json", [{"query": "q", "task": "qa", "pos_index": [-1]}])
    with pytest.raises(DataError, match=r"n\.json:1:pos_index: ids \[-1\] not in a corpus of 3"):
        load_flag_jsonl(negative, corpus=corpus)
    # FlagEmbedding's icl form: pos_index into the record's own candidates needs no corpus
    [record] = load_flag_jsonl(jsonl(tmp_path / "icl.json", [{"query": "q", "task": "icl", "neg": ["a", "b"],
                                                                "pos_index": [1]}]))
    assert record["pos"] == [] and record["pos_index"] == [1]


def test_empty_inputs_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "train.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"train\.jsonl: no records"):
        load_flag_jsonl(empty, task="qa")
    for qrels in ("", "query-id\tcorpus-id\tscore\n"):
        folder = beir(tmp_path / f"b{len(qrels)}", qrels)
        with pytest.raises(DataError, match=r"test\.tsv: no records"):
            load_beir(folder)



def test_beir_null_text_is_empty_and_a_list_text_is_named(tmp_path: Path) -> None:
    """A null text was refused as "_id/text: BEIR corpus lines need _id and text", where the README reads a null
    one as empty (a title-only passage); a list was refused the same way, naming neither field nor type."""
    folder = beir(tmp_path / "b", "q1\td2\t1\nq2\td1\t1\n")
    jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "Paris", "text": None},
                                    {"_id": "d2", "title": "", "text": "Rome is in Italy"}])
    assert load_beir(folder)[1][0]["text"] == "" and load_beir(folder)[0][1]["pos"] == ["Paris"]
    jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "Paris", "text": ["capital"]}])
    with pytest.raises(DataError, match=r"corpus\.jsonl:1:text: must be a string, got list"):
        load_beir(folder)
    jsonl(folder / "corpus.jsonl", [{"title": "Paris", "text": "capital"}])
    with pytest.raises(DataError, match=r"corpus\.jsonl:1:_id: missing"):
        load_beir(folder)
    jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": None}, {"_id": "q2", "text": "france?"}])
    jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "Paris", "text": "x"}, {"_id": "d2", "text": "y"}])
    with pytest.raises(DataError, match=r"queries\.jsonl:1:text: empty query"):
        load_beir(folder)
