"""Hard-negative mining: positives never come back as negatives; answer-bearing passages can be filtered."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llm_embedder.data.validate import validate_file
from llm_embedder.io import DataError, read_jsonl
from llm_embedder.train.mine import FewNegativesWarning, corpus_texts, mine_negatives, select_negatives


def test_select_negatives_excludes_positives_and_answers() -> None:
    texts = ["gold passage", "Paris is the capital", "other one", "other two", "gold passage"]
    record = {"pos": ["gold passage"], "pos_index": [0], "answers": ["paris"]}
    assert select_negatives([0, 1, 2, 3, 4], texts, record, 10, filter_answers=False) == [1, 2, 3]
    assert select_negatives([0, 1, 2, 3, 4], texts, record, 10, filter_answers=True) == [2, 3]
    assert select_negatives([0, 1, 2, 3, 4], texts, record, 1, filter_answers=True) == [2]


def test_mine_cli(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    from typer.testing import CliRunner

    from llm_embedder.cli import app

    corpus = tmp_path / "corpus.jsonl"
    passages = [{"title": f"T{i}", "text": f"passage number {i} about topic {i % 3}"} for i in range(12)]
    passages.append({"title": "Capital", "text": "the answer is Paris"})
    corpus.write_text("".join(json.dumps(p) + "\n" for p in passages))
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"query": "topic 1 question", "task": "qa", "pos": ["T1 passage number 1 about topic 1"],
                                "neg": [], "answers": ["paris"], "teacher_scores": [1.0], "query_id": 0}) + "\n")
    out = tmp_path / "mined.jsonl"
    with pytest.warns(FewNegativesWarning, match="1 of 1 records got fewer than 20 negatives"):  # 11 are left
        result = CliRunner().invoke(app, ["mine", "--model", str(tiny_embedder_dir), "--data", str(data), "--corpus",
                                          str(corpus), "--out", str(out), "--top-k", "20", "--filter-answers"])
    assert result.exit_code == 0, result.output
    # CliRunner's output is no terminal: the corpus encoding reports as a plain line, as in a log
    assert "encoding qa keys: 13/13 (100%)" in result.output, result.output
    (record,) = read_jsonl(out)
    assert "teacher_scores" not in record and len(record["neg"]) == 11  # 13 minus the positive and the answer
    assert "T1 passage number 1 about topic 1" not in record["neg"]
    assert "Capital the answer is Paris" not in record["neg"]
    assert record["neg_index"] and 1 not in record["neg_index"] and 12 not in record["neg_index"]
    assert not (tmp_path / "mined.jsonl.work").exists()  # the corpus vectors go once the output is written
    assert validate_file(out, corpus_size=13) == []  # what mine writes is fit to train on
    before = data.read_bytes()
    result = CliRunner().invoke(app, ["mine", "--model", str(tiny_embedder_dir), "--data", str(data), "--corpus",
                                      str(corpus), "--out", str(data)])
    assert isinstance(result.exception, FileExistsError) and "is the input file" in str(result.exception)
    assert data.read_bytes() == before


def test_mine_refuses_an_empty_corpus_text(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    # an empty passage embeds as the instruction alone, near every query: it would be every record's hard negative
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"query": "q", "task": "qa", "pos": ["a"], "neg": [], "answers": ["a"], "query_id": 0})
                    + "\n")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "a passage"}) + "\n" + json.dumps({"text": "  ", "id": 2}) + "\n")
    with pytest.raises(DataError, match=r"corpus.jsonl:2: the record has an empty text"):
        mine_negatives(str(tiny_embedder_dir), data, corpus, tmp_path / "out.jsonl")
    with pytest.raises(DataError, match=r"corpus.jsonl:1: the key template '\{missing_or_empty\}' gives an empty"):
        corpus.write_text(json.dumps({"text": "a passage", "missing_or_empty": ""}) + "\n")
        mine_negatives(str(tiny_embedder_dir), data, corpus, tmp_path / "out.jsonl", key_template="{missing_or_empty}")
    with pytest.raises(ValueError, match=r"the key template '\{\} \{text\}': \{\} is not a field name"):
        mine_negatives(str(tiny_embedder_dir), data, corpus, tmp_path / "out.jsonl", key_template="{} {text}")
    corpus.write_text(json.dumps({"text": "a passage"}) + "\n")
    good = {"query": "q", "task": "qa", "pos": ["a"], "query_id": 0}
    for change, message in [({"query": 5}, r"qa.jsonl:1:query: must be a string, got int"),
                            ({"task": "nosuch"}, r"qa.jsonl:1:task: unknown task 'nosuch'"),
                            ({"pos_index": [3]}, r"qa.jsonl:1:pos_index: index 3 out of corpus range of size 1")]:
        data.write_text(json.dumps(good | change) + "\n")
        with pytest.raises(DataError, match=message):
            mine_negatives(str(tiny_embedder_dir), data, corpus, tmp_path / "out.jsonl")
    with pytest.raises(IsADirectoryError, match="is a directory; give a file path"):
        mine_negatives(str(tiny_embedder_dir), data, corpus, tmp_path)
    data.write_text("")
    with pytest.raises(DataError, match=r"qa.jsonl: no records to mine negatives for"):
        mine_negatives(str(tiny_embedder_dir), data, corpus, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(("entry", "template", "message"), [
    ({"title": ["Paris", "France"], "text": "capital"}, None, r"corpus.jsonl:2:title: must be a string, got list"),
    ({"title": 7, "text": "capital"}, None, r"corpus.jsonl:2:title: must be a string, got int"),
    ({"title": "Paris", "text": ["capital"]}, None, r"corpus.jsonl:2:text: must be a string, got list"),
    ({"contents": {"a": 1}}, None, r"corpus.jsonl:2:contents: must be a string, got dict"),
    ({"title": ["Paris"], "text": "capital"}, "{title} {text}",
     r"corpus.jsonl:2:title: must be a string or a number, got list \(the key template '\{title\} \{text\}'"),
])
def test_a_corpus_field_that_is_no_text_is_refused(tmp_path: Path, entry: dict, template: str | None,
                                                   message: str) -> None:
    """A list title was formatted into the passage as Python's repr: "['Paris', 'France'] capital"."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"title": "Rome", "text": "capital of Italy"}) + "\n" + json.dumps(entry) + "\n")
    with pytest.raises(DataError, match=message):
        corpus_texts(corpus, template)


def test_a_null_corpus_title_is_no_title(tmp_path: Path) -> None:
    """It was formatted as the word "None" ("None Rome"), where the key template and the imports read it as empty."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"title": None, "text": "Rome"}) + "\n")
    assert corpus_texts(corpus) == corpus_texts(corpus, "{title} {text}") == ["Rome"]


class Interrupt(Exception):
    pass


def test_an_interrupted_mine_goes_on_where_it_stopped(tmp_path: Path, tiny_embedder_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while encoding the corpus, a re-run encodes only the rest and writes what an uncut run writes;
    another corpus, or a folder of that name that no mine made, is not mixed in."""
    from llm_embedder.embedder import Embedder

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"passage {i} on topic {i % 4}"}) + "\n" for i in range(20)))
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"query": f"topic {i}", "task": "qa", "pos": [f"passage {i} on topic {i % 4}"],
                                        "pos_index": [i], "query_id": i}) + "\n" for i in range(3)))
    own = shutil.copytree(tiny_embedder_dir, tmp_path / "model")  # retrained in place below: not the shared one
    model = str(own)
    mine_negatives(model, data, corpus, tmp_path / "uncut.jsonl", top_k=5, batch_size=4, progress=False)
    encoded: list[int] = []
    cut_at = [3]  # the call that is killed (0: none)
    original = Embedder.encode_keys

    def cut(self, texts, task, **kwargs):
        encoded.append(len(texts))
        if len(encoded) == cut_at[0]:
            raise Interrupt("killed")
        return original(self, texts, task, **kwargs)

    monkeypatch.setattr(Embedder, "encode_keys", cut)
    out = tmp_path / "mined.jsonl"
    with pytest.raises(Interrupt):
        mine_negatives(model, data, corpus, out, top_k=5, batch_size=4, progress=False)
    assert not out.exists() and (tmp_path / "mined.jsonl.work" / "qa" / "progress.json").exists()
    encoded.clear()
    cut_at[0] = 0
    mine_negatives(model, data, corpus, out, top_k=5, batch_size=4, progress=False)
    assert encoded == [4, 4, 4]  # rows 8-19: the 8 rows encoded before the cut are not encoded again
    assert read_jsonl(out) == read_jsonl(tmp_path / "uncut.jsonl")
    assert not (tmp_path / "mined.jsonl.work").exists()

    encoded.clear()
    cut_at[0] = 3
    with pytest.raises(Interrupt):  # cut again, then the corpus changes: its vectors are not reused
        mine_negatives(model, data, corpus, out, top_k=5, batch_size=4, progress=False)
    corpus.write_text("".join(json.dumps({"text": f"other passage {i}"}) + "\n" for i in range(20)))
    encoded.clear()
    cut_at[0] = 0
    mine_negatives(model, data, corpus, out, top_k=5, batch_size=4, progress=False)
    assert encoded == [4] * 5
    assert all("other passage" in text for record in read_jsonl(out) for text in record["neg"])

    encoded.clear()
    cut_at[0] = 3
    with pytest.raises(Interrupt):  # cut again, then the model is retrained in place: its vectors are not reused
        mine_negatives(model, data, corpus, out, top_k=5, batch_size=4, progress=False)
    weights = own / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    encoded.clear()
    cut_at[0] = 0
    mine_negatives(model, data, corpus, out, top_k=5, batch_size=4, progress=False)
    assert encoded == [4] * 5

    foreign = tmp_path / "notes.jsonl.work"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("my notes")
    with pytest.raises(FileExistsError, match="the work folder .*notes.jsonl.work already holds files that are not "
                                              "a mining run's work"):
        mine_negatives(model, data, corpus, tmp_path / "notes.jsonl", top_k=5, progress=False)
    assert (foreign / "mine.txt").read_text() == "my notes"


def test_a_second_mine_on_the_same_out_is_refused_while_the_first_runs(tmp_path: Path, tiny_embedder_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The second run deleted the first's work folder (the first then failed on its missing memmap and left a
    folder every later run refused); now it is refused in one line, and the first finishes as if alone."""
    from llm_embedder.embedder import Embedder
    from llm_embedder.io import RunInProgressError

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"passage {i} on topic {i % 4}"}) + "\n" for i in range(12)))
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"query": "topic 1", "task": "qa", "pos": ["passage 1 on topic 1"], "neg": [],
                                "query_id": 0}) + "\n")
    out = tmp_path / "mined.jsonl"
    (tmp_path / "mined.jsonl.lock").write_text("12345\n")  # left by a killed run: its OS lock went with it
    refused: list[Exception] = []
    original = Embedder.encode_keys

    def second_run_meanwhile(self, texts, task, **kwargs):
        if not refused:  # another key template: unlocked, this run deleted the first's work folder as stale
            with pytest.raises(RunInProgressError) as err:
                mine_negatives(str(tiny_embedder_dir), data, corpus, out, top_k=3, key_template="{text}",
                               progress=False)
            refused.append(err.value)
        return original(self, texts, task, **kwargs)

    monkeypatch.setattr(Embedder, "encode_keys", second_run_meanwhile)
    assert mine_negatives(str(tiny_embedder_dir), data, corpus, out, top_k=3, batch_size=4, progress=False) == 1
    assert str(refused[0]) == (f"the mined negatives {out} is being written by another run (it holds {out}.lock); "
                               "let that run finish, or stop it, then run this again")
    (record,) = read_jsonl(out)
    assert len(record["neg"]) == 3 and "passage 1 on topic 1" not in record["neg"]
    assert not (tmp_path / "mined.jsonl.work").exists() and not (tmp_path / "mined.jsonl.lock").exists()


GOOD = {"query": "q", "task": "qa", "pos": ["p"], "query_id": 0}


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_embedder.embedder import Embedder

    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded before the records were checked")

    monkeypatch.setattr(Embedder, "__init__", no_loading)


@pytest.mark.parametrize(("change", "problem"), [
    ({"pos": "Paris is in France"}, "pos: must be a list of strings, got str"),  # was mined as its characters
    ({"answers": "Paris"}, "answers: must be a list of strings, got str"),  # filtered passages by its letters
    ({"pos": [5]}, "pos: item 0 must be a string, got int"),  # a traceback, OUT.work left behind
    ({"pos": ["Rome", " "]}, "pos: item 1 is empty"),
    ({"neg": [], "query_id": "7"}, "query_id: must be an integer, got str"),
    ({"pos": None}, "pos: missing field: the record's positives, kept out of its negatives"),
    # chat: the history went, no positive came, and data check refused what mine wrote
    ({"task": "chat", "pos": None, "history": ["turn one", "turn two"], "teacher_scores": [0.2, 0.8]},
     "history: a chat record: its candidates are its history turns, not corpus passages, so there is nothing to "
     "mine for it; leave it out of the file to mine (score and train take it as it is)"),
    # lrlm: no labelled positive; the passages that answer the query would come back as its negatives
    ({"task": "lrlm", "pos": [], "neg": ["an earlier chunk"]},
     "pos: no positive (pos and pos_index are empty): the passages that answer the query would be mined as its "
     "negatives"),
])
def test_a_bad_record_is_named_before_the_model_loads(tmp_path: Path, tiny_embedder_dir: Path, no_model_loading: None,
                                                      change: dict, problem: str) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "Paris is in France"}) + "\n" + json.dumps({"text": "Rome"}) + "\n")
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({k: v for k, v in (GOOD | change).items() if v is not None}) + "\n")
    with pytest.raises(DataError) as err:
        mine_negatives(str(tiny_embedder_dir), data, corpus, tmp_path / "out.jsonl", top_k=1, filter_answers=True)
    assert str(err.value) == f"{data}:1:{problem}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.jsonl", "qa.jsonl"]  # no OUT, work or lock


def test_mine_names_every_bad_record_and_ignores_what_it_writes_anew(tmp_path: Path, tiny_embedder_dir: Path,
                                                                     no_model_loading: None) -> None:
    """Every bad record is named at once, by data check's rules; what mining writes anew (neg, neg_index,
    teacher_scores) may be anything."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "Paris is in France"}) + "\n" + json.dumps({"text": "Rome"}) + "\n")
    data = tmp_path / "qa.jsonl"
    changes = [{"pos": "Paris is in France"}, {"answers": "Paris"}, {"pos": [5]}, {"pos_index": [7]},
               {"neg": "stale", "neg_index": [9], "teacher_scores": ["x"]}, {"query_id": 0}, {"query": " "}]
    data.write_text("".join(json.dumps(GOOD | {"query_id": i} | change) + "\n" for i, change in enumerate(changes)))
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError) as err:
        mine_negatives(str(tiny_embedder_dir), data, corpus, out, top_k=1, filter_answers=True)
    assert str(err.value).splitlines() == [
        f"6 problem(s) in {data}:",
        f"{data}:1:pos: must be a list of strings, got str",
        f"{data}:2:answers: must be a list of strings, got str",
        f"{data}:3:pos: item 0 must be a string, got int",
        f"{data}:4:pos_index: index 7 out of corpus range of size 2",
        f"{data}:6:query_id: duplicate query_id 0 (first on line 1)",
        f"{data}:7:query: empty query",
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.jsonl", "qa.jsonl"]  # no OUT, work or lock


def test_records_left_with_fewer_than_top_k_negatives_are_reported(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    """They were written silently: a record whose passages were nearly all positives or answer-bearing trained on
    fewer negatives than asked (or none) without anyone knowing."""
    import warnings

    from typer.testing import CliRunner

    from llm_embedder.cli import app, show_user_warnings

    corpus = tmp_path / "corpus.jsonl"
    texts = ["Paris is the capital", "Paris in spring", "Rome is old", "Rome has seven hills", "Oslo is cold",
             "Lima is in Peru", "Quito is high", "Kyiv has a river"]
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    data = tmp_path / "qa.jsonl"
    records = [GOOD | {"query_id": 0, "pos": ["Paris is the capital"], "answers": ["paris"]},  # 6 are left
               GOOD | {"query_id": 1, "pos": ["Oslo is cold"], "answers": ["rome", "is"]},  # 1 is left
               GOOD | {"query_id": 2, "pos": ["Lima is in Peru"], "pos_index": [5], "answers": ["i"]}]  # 0 are left
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "mined.jsonl"
    with pytest.warns(FewNegativesWarning) as caught:
        mine_negatives(str(tiny_embedder_dir), data, corpus, out, top_k=4, filter_answers=True, progress=False)
    assert [str(w.message) for w in caught] == [
        f"2 of 3 records got fewer than 4 negatives ({data}:2 has 1, {data}:3 has 0): too few of the 8 passages "
        "retrieved for each were left once positives and answer-bearing passages were left out"]
    assert [len(record["neg"]) for record in read_jsonl(out)] == [4, 1, 0]
    with warnings.catch_warnings():  # the command prints it as one warning line
        warnings.simplefilter("always")
        show_user_warnings()
        result = CliRunner().invoke(app, ["mine", "--model", str(tiny_embedder_dir), "--data", str(data), "--corpus",
                                          str(corpus), "--out", str(out), "--top-k", "8", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (f"warning: 3 of 3 records got fewer than 8 negatives ({data}:1 has 7, {data}:2 has 7, {data}:3 has 7)"
            in " ".join(result.output.split()))


@pytest.fixture
def statutes(tmp_path: Path) -> tuple[Path, Path]:
    """A corpus of six statutes and a data file (written by the test)."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"statute {i} on topic {i % 3}"}) + "\n" for i in range(6)))
    return corpus, tmp_path / "legal.jsonl"


def test_mine_takes_task_files(tmp_path: Path, tiny_embedder_dir: Path, statutes: tuple[Path, Path]) -> None:
    """mine had no --task-file: a custom task could never be mined."""
    from typer.testing import CliRunner

    from llm_embedder.cli import app
    from llm_embedder.tasks import unregister_task

    corpus, data = statutes
    task_file = tmp_path / "tasks.yaml"
    task_file.write_text("tasks:\n  - name: legal_file\n    query_instruction: 'Find the statute for: '\n"
                         "    key_instruction: 'Statute: '\n")
    data.write_text(json.dumps(GOOD | {"task": "legal_file", "pos": ["statute 1 on topic 1"]}) + "\n")
    try:
        result = CliRunner().invoke(app, ["mine", "--model", str(tiny_embedder_dir), "--data", str(data), "--corpus",
                                          str(corpus), "--out", str(tmp_path / "file.jsonl"), "--top-k", "2",
                                          "--task-file", str(task_file)])
        assert result.exit_code == 0, result.output
        assert [len(r["neg"]) for r in read_jsonl(tmp_path / "file.jsonl")] == [2]
    finally:
        unregister_task("legal_file")


def test_mine_knows_the_tasks_a_saved_model_carries(tmp_path: Path, tiny_embedder_dir: Path,
                                                    statutes: tuple[Path, Path]) -> None:
    """mine looked the records' tasks up before the model loaded and registered its own: a model's own task was
    'unknown' (as encode and index did before 977d24a)."""
    from llm_embedder.embedder import Embedder
    from llm_embedder.tasks import list_tasks, register_task, unregister_task

    corpus, data = statutes
    register_task(name="legal_model", query_instruction="Find the statute for: ", key_instruction="Statute: ")
    try:
        Embedder(tiny_embedder_dir, device="cpu").save(tmp_path / "legal_model")
    finally:
        unregister_task("legal_model")
    data.write_text(json.dumps(GOOD | {"task": "legal_model", "pos": ["statute 1 on topic 1"]}) + "\n")
    try:
        assert "legal_model" not in list_tasks()  # only the model knows it
        mine_negatives(str(tmp_path / "legal_model"), data, corpus, tmp_path / "model.jsonl", top_k=2, progress=False)
        assert [len(r["neg"]) for r in read_jsonl(tmp_path / "model.jsonl")] == [2]
    finally:
        unregister_task("legal_model")
