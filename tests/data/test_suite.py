"""The real small build: layout, validity, disjoint splits, determinism, resume (one shared build)."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_embedder.cli import app
from llm_embedder.data import suite
from llm_embedder.data.chat import GREETINGS, SMALL_TALK, turn
from llm_embedder.data.suite import TASKS, build_suite, positive_texts
from llm_embedder.data.validate import validate_file
from llm_embedder.evaluate.run import corpus_text
from llm_embedder.io import DataError, read_jsonl
from llm_embedder.train.mine import corpus_texts

pytestmark = pytest.mark.integration
CORPUS_TASKS = {"qa", "icl", "tool", "convsearch"}
runner = CliRunner()


def test_layout_counts_and_build_time(small_suite) -> None:
    out, manifest, seconds = small_suite
    print(f"small build: {seconds:.1f} s")
    assert seconds < 90  # the issue asks for under a minute on 2 cores; leave slack for a busy machine
    assert (out / "DATA_CARD.md").exists() and json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["complete"] and manifest["size"] == "small" and manifest["seed"] == 0
    assert "bfcl-eval" in manifest["sources"]
    for task in TASKS:
        assert sorted(p.name for p in (out / task).iterdir()) == sorted(
            ["train.jsonl", "dev.jsonl", "test.jsonl"] + (["corpus.jsonl"] if task in CORPUS_TASKS else [])
        )
        counts = manifest["tasks"][task]["counts"]
        assert counts["train"] == 200 and counts["dev"] == 50 and counts["test"] == 100, (task, counts)
    card = (out / "DATA_CARD.md").read_text()
    for task in TASKS:
        assert f"## {task}" in card
    assert "CC BY-SA 4.0" in card and "constructed" in card.lower()
    # the lrlm code chunks come from the running Python: listed with its version and licence
    assert f"python-stdlib {platform.python_version()} (PSF-2.0" in card
    assert manifest["sources"]["python-stdlib"] == platform.python_version()
    spans = []
    for split in ("train", "dev", "test"):
        turns = [len(r["history"]) for r in read_jsonl(out / "chat" / f"{split}.jsonl")]
        spans.append(f"{min(turns)}-{max(turns)} turns in {split}")
    assert "{}, {} in dev, {} in test".format(spans[0], *(s.split(" turns")[0] for s in spans[1:])) in card


def test_every_file_validates(small_suite) -> None:
    out, _, _ = small_suite
    for path in sorted(out.glob("*/*.jsonl")):
        assert validate_file(path) == [], path


def test_record_contract(small_suite) -> None:
    out, _, _ = small_suite
    for task in TASKS:
        corpus = read_jsonl(out / task / "corpus.jsonl") if task in CORPUS_TASKS else None
        if corpus is not None:  # mine's keys by default are evaluation's
            assert corpus_texts(out / task / "corpus.jsonl") == [corpus_text(doc) for doc in corpus], task
        if corpus is not None:
            assert [c["id"] for c in corpus] == list(range(len(corpus)))
        for split in ("train", "dev", "test"):
            for record in read_jsonl(out / task / f"{split}.jsonl"):
                assert record["task"] == task and record["answers"] and all(record["answers"])
                assert "teacher_scores" not in record
                if task == "chat":
                    filler = {turn(*pair) for pair in SMALL_TALK + GREETINGS}
                    assert record["pos_index"] and not filler & {record["history"][i] for i in record["pos_index"]}
                    continue
                if split == "train":
                    assert len(record["neg"]) >= 1
                    if task != "lrlm":
                        assert len(record["neg"]) >= 7 or task == "tool"
                if task == "lrlm":
                    assert record["pos"] == [] and record["query"] and len(record["neg"]) <= 64
                    continue
                assert record["pos_index"], (task, split)
                # the key evaluation (and mine, by default) makes of the document is the training positive
                for i, text in zip(record["pos_index"], record["pos"], strict=True):
                    assert corpus_text(corpus[i]) == text, (task, corpus[i], text)


def test_splits_are_disjoint(small_suite) -> None:
    out, _, _ = small_suite
    for task in TASKS:
        splits = {s: read_jsonl(out / task / f"{s}.jsonl") for s in ("train", "dev", "test")}
        queries = {s: {r["query"].casefold() for r in rs} for s, rs in splits.items()}
        positives = {s: {p for r in rs for p in positive_texts(r)} for s, rs in splits.items()}
        for earlier, later in (("test", "train"), ("test", "dev"), ("dev", "train")):
            assert not queries[earlier] & queries[later], (task, earlier, later)
            assert not positives[earlier] & positives[later], (task, earlier, later)
        if task in CORPUS_TASKS:
            test_ids = {i for r in splits["test"] for i in r["pos_index"]}
            train_ids = {i for r in splits["train"] for i in r["pos_index"] + r["neg_index"]}
            assert not test_ids & train_ids, task


def test_same_seed_same_bytes_other_seed_differs(small_suite, tmp_path: Path) -> None:
    out, _, _ = small_suite
    tasks = ["qa", "chat", "tool"]
    again = tmp_path / "again"
    build_suite(again, size="small", seed=0, tasks=tasks)
    assert list(build_suite(again, size="small", seed=0, tasks=["qa"])["tasks"]) == tasks  # kept, still listed
    for task in tasks:
        for path in sorted((out / task).iterdir()):
            assert (again / task / path.name).read_bytes() == path.read_bytes(), path
    other = tmp_path / "other"
    build_suite(other, size="small", seed=1, tasks=["chat", "tool"])
    for task in ("chat", "tool"):
        assert (other / task / "test.jsonl").read_bytes() != (out / task / "test.jsonl").read_bytes()


def test_resume_keeps_finished_tasks(small_suite) -> None:
    out, _, _ = small_suite
    before = (out / "tool" / "train.jsonl").stat().st_mtime_ns
    seen = []
    build_suite(out, size="small", seed=0, tasks=list(TASKS), progress=lambda t, s: seen.append((t, s)))
    assert all(status.startswith("kept") for _, status in seen) and len(seen) == len(TASKS)
    assert (out / "tool" / "train.jsonl").stat().st_mtime_ns == before


def test_unknown_task_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="buildable tasks"):
        build_suite(tmp_path, tasks=["nope"])


def test_a_folder_of_other_files_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """--out holding a user's files (their own qa/train.jsonl) and no manifest.json is refused before writing."""
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "train.jsonl").write_text("mine\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError) as err:
        build_suite(tmp_path, tasks=["tool"])
    assert str(err.value) == (f"--out {tmp_path} already holds files that are not a task suite build (notes.txt, "
                              "qa); give a new or empty folder")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "qa", "train.jsonl"]
    assert (tmp_path / "qa" / "train.jsonl").read_text() == "mine\n"
    result = runner.invoke(app, ["data", "build", "--out", str(tmp_path), "--task", "tool"])
    assert isinstance(result.exception, FileExistsError) and str(result.exception) == str(err.value)  # main: exit 2


def test_an_interrupted_first_task_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest is written before the first task: a folder cut off there is still the build's own."""
    out = tmp_path / "suite"

    def cut_off(cfg):
        (out / "chat").mkdir(parents=True, exist_ok=True)
        (out / "chat" / "train.jsonl").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setitem(suite.BUILDERS, "chat", cut_off)
    with pytest.raises(KeyboardInterrupt):
        build_suite(out, tasks=["chat"])
    monkeypatch.undo()
    assert list(build_suite(out, tasks=["chat"])["tasks"]) == ["chat"]


def test_another_seed_into_a_suite_of_other_tasks_is_refused(tmp_path: Path) -> None:
    """A seed-1 tool build into a seed-0 suite left a manifest saying seed 1 over seed-0 task folders."""
    build_suite(tmp_path, seed=0, tasks=["chat", "tool"])
    before = (tmp_path / "manifest.json").read_text()
    with pytest.raises(ValueError) as err:
        build_suite(tmp_path, seed=1, tasks=["tool"])
    assert str(err.value) == (f"--out {tmp_path} holds tasks built with other settings (size small, seed 0): chat; "
                              "a build with size small, seed 1 would mix them in one suite: build it with its "
                              "settings, build every task it holds, or give another --out")
    assert (tmp_path / "manifest.json").read_text() == before
    result = runner.invoke(app, ["data", "build", "--out", str(tmp_path), "--task", "tool", "--seed", "1"])
    assert isinstance(result.exception, ValueError) and str(result.exception) == str(err.value)  # main: exit 2
    # rebuilding every task it holds with the new seed is one suite again; --fresh of one task keeps the others listed
    assert build_suite(tmp_path, seed=1, tasks=["tool", "chat"])["seed"] == 1
    assert list(build_suite(tmp_path, seed=1, tasks=["tool"], resume=False)["tasks"]) == ["chat", "tool"]


@pytest.mark.parametrize("content", ["[]", "{\"tasks\": []}", "not json"])
def test_a_manifest_that_is_no_manifest_is_named(tmp_path: Path, content: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'manifest.json'))}: not a task suite manifest"):
        build_suite(tmp_path, tasks=["tool"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_progress_gives_a_task_s_counts_as_words(tmp_path: Path) -> None:
    """`data build` printed a Python dict per task ("done {'train': 200, 'dev': 50, ...}")."""
    seen = []
    build_suite(tmp_path / "suite", size="small", seed=0, tasks=["tool"], progress=lambda t, s: seen.append((t, s)))
    assert seen[-1][0] == "tool" and re.fullmatch(r"done \(train \d+, dev \d+, test \d+(, \w+ \d+)*\)", seen[-1][1])
