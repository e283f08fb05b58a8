"""`llm-embedder data build` / `data check` through the real typer app."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_embedder.cli import app

runner = CliRunner()


def test_check_reports_problems_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "", "task": "qa", "query_id": 0, "pos": [], "neg": []}) + "\n")
    result = runner.invoke(app, ["data", "check", str(bad)])
    assert result.exit_code == 1
    assert "bad.jsonl:1:query: empty query" in result.output


def test_check_prints_summary_for_valid_file(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"query": "q", "task": "tool", "query_id": 0, "pos": ["a"], "neg": ["b", "c"],
                                "teacher_scores": [1, 0, 0]}) + "\n")
    result = runner.invoke(app, ["data", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert "tool" in result.output and "2.00" in result.output and "all" in result.output


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """The console entry point in-process: (exit code, stdout + stderr), user errors included."""
    from llm_embedder.cli import main

    monkeypatch.setattr("sys.argv", ["llm-embedder", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


RECORD = {"query": "q", "task": "tool", "query_id": 0, "pos": ["a"], "neg": ["b"]}


def test_check_malformed_json_names_the_line_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({**RECORD, "query_id": i}) for i in range(3)] + ["{oops"]
    bad.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "check", str(bad)])
    assert result.exit_code == 1
    line = next(line for line in result.output.splitlines() if "malformed" in line)
    assert line == f"{bad}:4:json: malformed JSON: Expecting property name enclosed in double quotes (column 2)"


@pytest.mark.parametrize("content", ["", "\n   \n"])
def test_check_empty_file_fails(tmp_path: Path, content: str) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text(content)
    result = runner.invoke(app, ["data", "check", str(empty)])
    assert result.exit_code == 1
    assert f"{empty}: no records" in result.output and "1 problem(s) found" in result.output


def test_check_non_utf8_names_file_line_and_column(tmp_path: Path) -> None:
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"query": "caf\xe9", "task": "qa"}\n')
    result = runner.invoke(app, ["data", "check", str(latin)])
    assert result.exit_code == 1
    assert f"{latin}:1:encoding: not valid UTF-8 (byte 0xe9 at column 15)" in result.output


def test_check_directory_is_one_line_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "suite" / "qa"
    folder.mkdir(parents=True)
    for name in ("train", "dev", "corpus"):
        (folder / f"{name}.jsonl").write_text(json.dumps(RECORD) + "\n")
    code, output = run_main(monkeypatch, capsys, "data", "check", str(folder))
    assert code == 2
    assert output.strip() == (f"error: {folder} is a directory, expected a JSONL file (it holds corpus.jsonl, "
                              f"dev.jsonl, train.jsonl: check them with `data check {folder}/*.jsonl`)")
    code, output = run_main(monkeypatch, capsys, "data", "check", str(folder.parent))
    assert code == 2 and f"check them with `data check {folder.parent}/*/*.jsonl`" in output


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_check_bad_corpus_option_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, kind: str
) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(RECORD) + "\n")
    corpus = tmp_path / "nonexist.jsonl" if kind == "missing" else tmp_path
    code, output = run_main(monkeypatch, capsys, "data", "check", str(good), "--corpus", str(corpus))
    assert code == 2
    expected = f"file not found: {corpus}" if kind == "missing" else f"{corpus} is a directory, expected a JSONL file"
    assert output.strip() == f"error: --corpus: {expected}"


@pytest.mark.integration
def test_build_one_task(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "build", "--out", str(tmp_path), "--task", "tool", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tool" / "corpus.jsonl").exists() and json.loads((tmp_path / "manifest.json").read_text())[
        "seed"] == 3
    check = runner.invoke(app, ["data", "check", *map(str, sorted((tmp_path / "tool").glob("*.jsonl")))])
    assert check.exit_code == 0, check.output


@pytest.mark.parametrize(("lines", "problem"), [
    # null candidates were skipped as absent; train read them as none and refused the record
    ([{"pos": None, "neg": None}], "1:pos: must be a list of strings, got null"),
    ([{"neg": None}], "1:neg: must be a list of strings, got null"),
    # a chat record inside a tool file: train trains one task per file
    ([{}, {"task": "chat", "query_id": 1, "history": ["a", "b"]}],
     "2:task: 'chat' differs from the file's task 'tool' (one task per file)"),
    # tool selects its positive with 'first': a record without one cannot train
    ([{"pos": []}], "1:pos: no positive, but task 'tool' selects one with 'first'"),
])
def test_check_reports_what_train_refuses(tmp_path: Path, lines: list[dict], problem: str) -> None:
    from llm_embedder.io import DataError
    from llm_embedder.train.examples import load_training_file

    data = tmp_path / "tool" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(RECORD | line) + "\n" for line in lines))
    result = runner.invoke(app, ["data", "check", str(data)])
    assert result.exit_code == 1
    assert f"{data}:{problem}" in result.output.replace("\n", "")
    with pytest.raises(DataError, match=re.escape(f"{data}:{problem}")):
        load_training_file(data, 0, group_size=2)


def test_check_an_eval_file_needs_no_positive_to_train(tmp_path: Path) -> None:
    """An evaluation split is not trained on: a record with no positive (pos_index into a corpus) is fine there."""
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps(RECORD | {"pos": []}) + "\n")
    assert runner.invoke(app, ["data", "check", str(data)]).exit_code == 0


def test_check_reads_an_eval_file_as_evaluate_does(tmp_path: Path) -> None:
    """task, query_id, pos and neg, which only training needs, were required of test.jsonl though evaluate reads it
    without them (the task is its folder's)."""
    data = tmp_path / "qa" / "test.jsonl"
    data.parent.mkdir()
    (tmp_path / "qa" / "corpus.jsonl").write_text(json.dumps({"text": "Theft is a crime."}) + "\n")
    data.write_text(json.dumps({"query": "someone stole a bike", "pos_index": [0], "answers": ["theft"]}) + "\n")
    result = runner.invoke(app, ["data", "check", str(data)])
    assert result.exit_code == 0, result.output
    assert "qa" in result.output and "?" not in result.output  # summarised under its folder's task
    data.write_text(json.dumps({"query": "q", "pos_index": [3], "answers": ["a"]}) + "\n")  # still checked
    result = runner.invoke(app, ["data", "check", str(data)])
    assert result.exit_code == 1 and "pos_index" in result.output
    train = tmp_path / "qa" / "train.jsonl"  # a training file still needs them
    train.write_text(json.dumps({"query": "q", "pos": ["a"], "neg": ["b"]}) + "\n")
    result = runner.invoke(app, ["data", "check", str(train)])
    assert result.exit_code == 1 and "task" in result.output


def test_check_reports_a_key_given_twice(tmp_path: Path) -> None:
    """{"pos": ["a"], "pos": []} was read as its last value, silently; train refuses it too."""
    from llm_embedder.io import DataError
    from llm_embedder.train.examples import load_training_file

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(RECORD) + "\n" + json.dumps(RECORD | {"query_id": 1})[:-1] + ', "pos": []}\n')
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a", "text": "b"}\n')
    result = runner.invoke(app, ["data", "check", str(data), str(corpus)])
    assert result.exit_code == 1
    output = result.output.replace("\n", "")
    assert f"{data}:2:pos: duplicate key 'pos' (JSON keeps only its last value)" in output
    assert f"{corpus}:1:text: duplicate key 'text' (JSON keeps only its last value)" in output
    with pytest.raises(DataError, match=re.escape(f"{data}:2:pos: duplicate key 'pos'")):
        load_training_file(data, 0, group_size=2)


def test_check_takes_task_files(tmp_path: Path) -> None:
    """Records of a task from a task file were all "unknown task 'legal'", and --task-file was no option."""
    from llm_embedder.tasks import list_tasks, unregister_task

    tasks = tmp_path / "legal.json"
    tasks.write_text(json.dumps({"tasks": [{"name": "legal_check", "query_instruction": "Find: ",
                                            "key_instruction": "Statute: "}]}))
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(RECORD | {"task": "legal_check"}) + "\n")
    assert "legal_check" not in list_tasks()
    try:
        result = runner.invoke(app, ["data", "check", "--task-file", str(tasks), str(data)])
        assert result.exit_code == 0, result.output
        assert "legal" in result.output and "problem" not in result.output
    finally:
        unregister_task("legal_check")
    result = runner.invoke(app, ["data", "check", str(data)])
    assert result.exit_code == 1 and "unknown task 'legal_check'" in result.output


def test_check_accepts_an_icl_corpus_of_contents(tmp_path: Path) -> None:
    """FlagEmbedding's icl corpus lines {"contents": "input\\noutput"} were refused for lacking text."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"contents": "2+2?\n4"}) + "\n" + json.dumps({"text": "plain"}) + "\n")
    result = runner.invoke(app, ["data", "check", str(corpus)])
    assert result.exit_code == 0, result.output
    corpus.write_text(json.dumps({"contents": "2+2?\n4"}) + "\n" + json.dumps({"title": 3}) + "\n"
                      + json.dumps({"contents": " "}) + "\n")
    result = runner.invoke(app, ["data", "check", str(corpus)])
    assert result.exit_code == 1
    output = result.output.replace("\n", "")
    assert f"{corpus}:2:text: missing or not a string" in output and f"{corpus}:3:contents: empty" in output


def test_import_each_format(tmp_path: Path) -> None:
    mmlu = tmp_path / "astronomy_test.csv"
    mmlu.write_text("Which planet is largest?,Mars,Jupiter,Venus,Earth,B\nWhat is 2+2?,3,4,5,6,B\n")
    out = tmp_path / "mmlu" / "test.jsonl"
    result = runner.invoke(app, ["data", "import", "--format", "mmlu", str(mmlu), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote 2 records to {out}" in result.output.replace("\n", "")
    assert [json.loads(line)["answers"] for line in out.read_text().splitlines()] == [["Jupiter"], ["4"]]
    assert runner.invoke(app, ["data", "check", str(out)]).exit_code == 0

    popqa = tmp_path / "popQA.tsv"
    popqa.write_text('question\tpossible_answers\tprop_id\nWho?\t["A", "B"]\t22\n')
    out = tmp_path / "popqa" / "test.jsonl"
    assert runner.invoke(app, ["data", "import", "-f", "popqa", str(popqa), "-o", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["prop_id"] == 22
    assert runner.invoke(app, ["data", "check", str(out)]).exit_code == 0

    beir = tmp_path / "scifact"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "Paris", "text": "capital of France"}) + "\n")
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "france?"}) + "\n")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    out = tmp_path / "beir" / "test.jsonl"
    result = runner.invoke(app, ["data", "import", "--format", "beir", str(beir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["pos"] == ["Paris capital of France"]
    assert json.loads((out.parent / "corpus.jsonl").read_text())["doc_id"] == "d1"
    assert runner.invoke(app, ["data", "check", str(out), str(out.parent / "corpus.jsonl")]).exit_code == 0

    flag = tmp_path / "flag.jsonl"
    flag.write_text(json.dumps({"query": "france?", "task": "qa", "pos_index": [0]}) + "\n")
    out = tmp_path / "flag" / "test.jsonl"
    result = runner.invoke(app, ["data", "import", "--format", "flag", str(flag), "--corpus",
                                 str(beir.parent / "beir" / "corpus.jsonl"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["pos"] == ["Paris capital of France"]
    # its corpus lands beside it, where evaluate looks (without it each query was ranked among its own texts)
    written = [json.loads(line) for line in (out.parent / "corpus.jsonl").read_text().splitlines()]
    assert [d["text"] for d in written] == ["capital of France"] and "wrote 1 corpus entry" in result.output
    assert runner.invoke(app, ["data", "check", str(out), str(out.parent / "corpus.jsonl")]).exit_code == 0
    again = runner.invoke(app, ["data", "import", "--format", "flag", str(flag), "--corpus",
                                str(out.parent / "corpus.jsonl"), "--out", str(out), "--overwrite"])
    assert again.exit_code == 0, again.output  # a corpus already beside the records is not written again
    assert "corpus entries" not in again.output


def test_import_refuses_to_overwrite_and_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    popqa = tmp_path / "popQA.tsv"
    popqa.write_text('question\tpossible_answers\nWho?\t["A"]\n')
    out = tmp_path / "test.jsonl"
    out.write_text("keep me\n")
    code, output = run_main(monkeypatch, capsys, "data", "import", "--format", "popqa", str(popqa), "--out", str(out))
    assert code == 2 and f"--out {out} exists; give --overwrite to replace it" in output
    assert out.read_text() == "keep me\n"
    code, output = run_main(monkeypatch, capsys, "data", "import", "--format", "popqa", str(popqa), "--out", str(out),
                            "--overwrite")
    assert code == 0 and "wrote 1 record to" in output and json.loads(out.read_text())["answers"] == ["A"]
    popqa.write_text("question\tpossible_answers\nWho?\tA\n")
    code, output = run_main(monkeypatch, capsys, "data", "import", "--format", "popqa", str(popqa), "--out", str(out),
                            "--overwrite")
    assert code == 2 and f"{popqa}:2:possible_answers: not a JSON list" in output
    assert json.loads(out.read_text())["answers"] == ["A"]  # nothing written over a good file
    code, output = run_main(monkeypatch, capsys, "data", "import", "--format", "csv", str(popqa), "--out", str(out))
    assert code == 2 and "--format must be one of flag, beir, mmlu, popqa, got 'csv'" in output


def test_import_beir_never_replaces_its_own_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    beir = tmp_path / "scifact"
    (beir / "qrels").mkdir(parents=True)
    corpus = json.dumps({"_id": "d1", "title": "Paris", "text": "capital of France"}) + "\n"
    (beir / "corpus.jsonl").write_text(corpus)
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "france?"}) + "\n")
    (beir / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    code, output = run_main(monkeypatch, capsys, "data", "import", "--format", "beir", str(beir), "--out",
                            str(beir / "test.jsonl"), "--overwrite")
    assert code == 2 and "is the input file" in output and (beir / "corpus.jsonl").read_text() == corpus
    assert not (beir / "test.jsonl").exists()


def test_import_beir_leaves_out_queries_without_a_relevant_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A query whose qrels are all 0 was written with an empty pos: train and mine refused the file (no positive),
    and neither BEIR's evaluation nor evaluate's metrics score a query without a relevant document."""
    beir = tmp_path / "scifact"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "Paris", "text": "capital of France"}) + "\n"
                                       + json.dumps({"_id": "d2", "title": "Rome", "text": "capital of Italy"}) + "\n")
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"query {q}?"}) + "\n"
                                                for q in ("q1", "q2", "q3")))
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t0\nq2\td2\t0\n"
                                              "q3\td2\t2\n")
    out = tmp_path / "out" / "qa" / "train.jsonl"
    code, output = run_main(monkeypatch, capsys, "data", "import", "--format", "beir", str(beir), "--split", "train",
                            "--out", str(out))
    assert code == 0, output
    assert re.search(r"warning: .*train\.tsv: left out 1 of 3 queries .*no relevant document.*'q2' \(line 3\)",
                     " ".join(output.split())), output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["source_id"], r["query_id"], r["pos_index"]) for r in records] == [("q1", 0, [0]), ("q3", 1, [1])]
    assert "wrote 2 records" in output
    check = runner.invoke(app, ["data", "check", str(out), str(out.parent / "corpus.jsonl")])
    assert check.exit_code == 0, check.output  # fit to train on: every record has a positive
    (beir / "qrels" / "train.tsv").write_text("q2\td1\t0\nq2\td2\t0\n")
    code, output = run_main(monkeypatch, capsys, "data", "import", "--format", "beir", str(beir), "--split", "train",
                            "--out", str(out), "--overwrite")
    assert code == 2 and "train.tsv: no query has a relevant document (a score above 0)" in " ".join(output.split())
    assert len(out.read_text().splitlines()) == 2  # nothing written over the good file


def test_import_reads_one_mmlu_split_and_never_writes_over_what_it_reads(tmp_path: Path) -> None:
    """A folder's dev and val CSVs were merged into the test records, and --out naming one of its CSVs replaced it."""
    folder = tmp_path / "mmlu"
    folder.mkdir()
    for split, question in (("test", "Largest planet?"), ("dev", "Smallest planet?"), ("val", "Hottest planet?")):
        (folder / f"astronomy_{split}.csv").write_text(f"{question},Mars,Jupiter,Venus,Mercury,B\n")
    out = tmp_path / "test.jsonl"
    result = runner.invoke(app, ["data", "import", "--format", "mmlu", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["query"] for line in out.read_text().splitlines()] == ["Largest planet?"]
    result = runner.invoke(app, ["data", "import", "--format", "mmlu", str(folder), "--split", "dev", "--out",
                                 str(out), "--overwrite"])
    assert result.exit_code == 0 and json.loads(out.read_text())["query"] == "Smallest planet?"
    csv = folder / "astronomy_test.csv"
    before = csv.read_text()
    result = runner.invoke(app, ["data", "import", "--format", "mmlu", str(folder), "--out", str(csv), "--overwrite"])
    assert result.exit_code != 0 and csv.read_text() == before


def test_import_refuses_a_flag_file_of_two_tasks(tmp_path: Path) -> None:
    """--task filled the records without one, so the file held two tasks, which data check then refused."""
    source = tmp_path / "flag.jsonl"
    source.write_text(json.dumps({"query": "q1", "pos": ["a"], "neg": ["b"], "task": "qa"}) + "\n"
                      + json.dumps({"query": "q2", "pos": ["c"], "neg": ["d"]}) + "\n")
    out = tmp_path / "train.jsonl"
    result = runner.invoke(app, ["data", "import", "--format", "flag", str(source), "--task", "chat",
                                 "--out", str(out)])
    assert result.exit_code != 0 and not out.exists()
    assert "1:task: 'qa' differs from the task given, 'chat'; one task per file" in str(result.exception)
    source.write_text(json.dumps({"query": "q1", "pos": ["a"], "neg": ["b"], "task": "qa"}) + "\n"
                      + json.dumps({"query": "q2", "pos": ["c"], "neg": ["d"], "task": "chat"}) + "\n")
    result = runner.invoke(app, ["data", "import", "--format", "flag", str(source), "--out", str(out)])
    assert result.exit_code != 0 and "2:task: 'chat' differs from the file's task" in str(result.exception)


def test_import_shows_its_progress_on_stderr(tmp_path: Path) -> None:
    """data import said nothing until it was done, however long the files it read: it shows the bytes it has read of
    its input files, then the records it has written, as index and encode show theirs (plain lines in a log)."""
    flag, corpus = tmp_path / "flag.jsonl", tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"title": f"T{i}", "text": f"document {i}"}) + "\n" for i in range(5)))
    flag.write_text("".join(json.dumps({"query": f"q{i}", "task": "qa", "pos_index": [i]}) + "\n" for i in range(3)))
    read = flag.stat().st_size + 2 * corpus.stat().st_size  # the corpus is read for the keys, then to be written
    out = tmp_path / "qa" / "test.jsonl"
    result = runner.invoke(app, ["data", "import", "--format", "flag", str(flag), "--corpus", str(corpus), "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output
    assert f"reading flag.jsonl (flag, bytes): 0/{read} (0%)" in result.stderr
    assert f"reading flag.jsonl (flag, bytes): {read}/{read} (100%)" in result.stderr
    assert "writing test.jsonl: 3/3 (100%)" in result.stderr and "writing corpus.jsonl: 5/5 (100%)" in result.stderr
    assert "reading" not in result.stdout and f"wrote 3 records to {out}" in result.stdout.replace("\n", "")
    folder = tmp_path / "mmlu"
    folder.mkdir()
    for subject in ("astronomy", "virology"):
        (folder / f"{subject}_test.csv").write_text("Which planet is largest?,Mars,Jupiter,Venus,Earth,B\n")
    (folder / "astronomy_dev.csv").write_text("Smallest planet?,Mars,Jupiter,Venus,Mercury,D\n")  # not read
    result = runner.invoke(app, ["data", "import", "--format", "mmlu", str(folder), "--out", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 0, result.output
    read = 2 * len("Which planet is largest?,Mars,Jupiter,Venus,Earth,B\n")
    assert f"reading mmlu (mmlu, bytes): {read}/{read} (100%)" in result.stderr, result.stderr
