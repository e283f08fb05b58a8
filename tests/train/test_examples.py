"""Building training examples from task records (recipe §2.3) and validating input before training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from train_fixtures import write_task_file

from llm_embedder.io import DataError
from llm_embedder.tasks import Task, get_task
from llm_embedder.train.examples import build_example, load_training_file, load_training_files, resolve_data_paths


def task(**overrides) -> Task:
    base = dict(name="t", query_instruction="Q: ", key_instruction="K: ")
    return Task(**{**base, **overrides})


POS, NEG = ["p0", "p1"], ["n0", "n1", "n2"]
SCORES = [0.1, 0.9, -1.0, 2.0, -3.0]  # p0, p1, n0, n1, n2


def test_positive_selection() -> None:
    rng = random.Random(0)
    assert build_example("q", POS, NEG, SCORES, task(select_positive="first"), 3, rng)["keys"][0] == "p0"
    assert build_example("q", POS, NEG, SCORES, task(select_positive="teacher-pos"), 3, rng)["keys"][0] == "p1"
    drawn = {build_example("q", POS, NEG, None, task(select_positive="random"), 3, random.Random(s))["keys"][0]
             for s in range(20)}
    assert drawn == {"p0", "p1"}
    # teacher: the argmax over pos + neg is the negative n1; it becomes the positive and leaves the negatives
    ex = build_example("q", POS, NEG, SCORES, task(select_positive="teacher", loss="kl_distill"), 4, rng)
    assert ex["keys"][0] == "n1" and "n1" not in ex["keys"][1:]
    score_of = {"n0": -1.0, "n2": -3.0}  # two negatives left, tiled to three
    assert ex["label"][0] == 2.0 and ex["label"][1:] == [score_of[key] for key in ex["keys"][1:]]


def test_negative_selection_and_stable_ordering() -> None:
    rng = random.Random(0)
    t = task(select_negative="first")
    assert build_example("q", POS, NEG, SCORES, t, 3, rng)["keys"] == ["p0", "n0", "n1"]
    t = task(select_negative="teacher-", loss="kl_distill")
    ex = build_example("q", POS, NEG, SCORES, t, 3, rng)
    assert ex["keys"] == ["p0", "n2", "n0"] and ex["label"] == [0.1, -3.0, -1.0]
    t = task(select_negative="teacher+", loss="kl_distill")
    assert build_example("q", POS, NEG, SCORES, t, 3, rng)["keys"] == ["p0", "n1", "n0"]
    # stable distillation: negatives sorted by teacher score, descending; the positive stays first
    t = task(select_negative="first", loss="stable_distill")
    ex = build_example("q", POS, NEG, SCORES, t, 4, rng)
    assert ex["keys"] == ["p0", "n1", "n0", "n2"] and ex["label"] == [0.1, 2.0, -1.0, -3.0]
    # contrastive examples carry no label
    assert "label" not in build_example("q", POS, NEG, None, task(), 3, rng)


def test_few_negatives_are_tiled() -> None:
    ex = build_example("q", ["p"], ["a", "b"], [1.0, 0.5, 0.2], task(select_negative="first", loss="kl_distill"),
                       6, random.Random(0))
    assert ex["keys"] == ["p", "a", "b", "a", "b", "a"] and ex["label"] == [1.0, 0.5, 0.2, 0.5, 0.2, 0.5]


def test_filters_and_max_sample_num(tmp_path: Path) -> None:
    path = tmp_path / "lrlm.jsonl"
    candidates = [(["a", "b"], [-2.0, -2.05]), (["a", "b"], [-2.0, -2.5]), (["a", "b", "c"], [-3.0, -2.0, -2.6])]
    rows = [{"query_id": i, "query": f"q{i}", "task": "lrlm", "pos": [], "neg": neg, "teacher_scores": scores}
            for i, (neg, scores) in enumerate(candidates)]  # q0: margin 0.05 < 0.1, filtered
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_training_file(path, 0, group_size=3)
    assert loaded.task == "lrlm" and loaded.records == 3 and loaded.filtered == 1
    assert [e["query"] for e in loaded.examples] == ["q1", "q2"]
    assert loaded.examples[1]["keys"][0] == "b"  # teacher positive
    assert get_task("lrlm").teacher_scores_margin == 0.1


def test_chat_history_becomes_the_candidates(tmp_path: Path) -> None:
    path = write_task_file(tmp_path / "chat.jsonl", "chat", 2, scores=True, history=True)
    loaded = load_training_file(path, 0, group_size=3)
    assert loaded.examples[0]["keys"][0] == "chat relevant passage 0" and len(loaded.examples[0]["label"]) == 3


def test_examples_are_reproducible(tmp_path: Path) -> None:
    path = write_task_file(tmp_path / "qa.jsonl", "qa", 5, scores=True, n_neg=6)
    assert load_training_file(path, 0, 4).examples == load_training_file(path, 0, 4).examples


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"query": "q", "task": "nope", "pos": ["p"], "neg": ["n"]}, r"bad\.jsonl:2:task: .*unknown task 'nope'"),
        ({"query": "q", "task": "qa", "pos": ["p"], "neg": ["n"]}, r"bad\.jsonl:2:teacher_scores: missing"),
        ({"query": "q", "task": "chat", "pos": ["p"], "neg": ["n"]}, r"bad\.jsonl:2:teacher_scores: missing"),
        ({"query": "q", "task": "tool", "pos": ["p"], "neg": []}, r"bad\.jsonl:2:neg: record has no negative"),
        ({"query": "q", "task": "tool", "pos": ["p"]}, r"bad\.jsonl:2:neg: missing field"),
        ({"query": "q", "task": "qa", "pos": ["p"], "neg": ["n"], "teacher_scores": [1.0]},
         r"bad\.jsonl:2:teacher_scores: has 1 scores"),
        ({"query": "", "task": "tool", "pos": ["p"], "neg": ["n"]}, r"bad\.jsonl:2:query"),
        ({"query": "q", "task": "convsearch", "pos": ["p"], "neg": ["n"]}, r"bad\.jsonl:2:task: .*one task per file"),
    ],
)
def test_bad_records_name_file_line_field(tmp_path: Path, record: dict, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    good_task = record["task"] if record["task"] in ("qa", "chat", "tool") else "tool"
    good = {"query": "fine", "task": good_task, "pos": ["p"], "neg": ["n"], "query_id": 0}
    record = {**record, "query_id": 1}
    if good["task"] in ("qa", "chat"):
        good["teacher_scores"] = [1.0, 0.0]
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=message):
        load_training_file(path, 0, group_size=3)


def test_data_dirs_and_repeated_files(data_dir: Path) -> None:
    qa = data_dir / "qa" / "train.jsonl"
    paths = resolve_data_paths([data_dir, qa])
    assert [p.parent.name for p in paths] == ["chat", "qa", "tool", "qa"]
    files = load_training_files([data_dir, qa], group_size=3)
    names = [f.name for f in files]
    assert len(set(names)) == 4 and all("." not in n for n in names)
    with pytest.raises(FileNotFoundError, match="no <task>/train.jsonl"):
        resolve_data_paths([data_dir / "qa"])
    with pytest.raises(FileNotFoundError):
        resolve_data_paths([data_dir / "missing.jsonl"])
