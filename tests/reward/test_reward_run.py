"""The scoring job: equals score_records, resumes byte-identically, keeps provenance, refuses mismatched restarts."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from reward_helpers import KEYS, write_records
from typer.testing import CliRunner

from llm_embedder.io import DataError
from llm_embedder.reward import ScoreStats, score_file, score_records
from llm_embedder.reward.run import count_done, merge_parts, part_path


class Interrupted(RuntimeError):
    pass


class FailingLM:
    """Wraps a CausalLM and raises on the n-th scoring call, like a job killed midway."""

    def __init__(self, lm, fail_on_call: int):
        self._lm, self.calls, self.fail_on_call = lm, 0, fail_on_call

    def __getattr__(self, name):
        return getattr(self._lm, name)

    def answer_logprob(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise Interrupted("killed")
        return self._lm.answer_logprob(*args, **kwargs)


def test_file_job_matches_score_records_and_records_provenance(tiny_lm, tmp_path):
    src = write_records(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    summary = score_file(src, out, tiny_lm, chunk_pairs=8, show_progress=False)
    records = [json.loads(line) for line in src.read_text().splitlines()]
    stats = ScoreStats()
    expected = score_records(records, tiny_lm, stats=stats)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["query_id"] for r in got] == [r["query_id"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["teacher_scores"] == pytest.approx(e["teacher_scores"], abs=1e-5)
        assert len(g["teacher_scores"]) == len(e.get("history") or e["pos"] + e["neg"])
    assert summary["scored"] == 11 and summary["skipped_no_candidates"] == 1 == stats.skipped_no_candidates
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["complete"] and meta["settings"]["llm"] == tiny_lm.name and meta["package_version"]
    assert meta["settings"]["templates"]["chat"] == "{key}\nSpeaker 1: {query}\nSpeaker 2: {answer}"
    assert meta["started"] and meta["finished"] and "teacher" not in got[0]


def test_interrupted_run_resumes_to_byte_identical_output(tiny_lm, tmp_path):
    src = write_records(tmp_path / "in.jsonl", n=16)
    whole = tmp_path / "whole.jsonl"
    score_file(src, whole, tiny_lm, chunk_pairs=8, show_progress=False)
    out = tmp_path / "out.jsonl"
    with pytest.raises(Interrupted):
        score_file(src, out, FailingLM(tiny_lm, fail_on_call=3), chunk_pairs=8, show_progress=False)
    partial = out.read_bytes()
    assert 0 < partial.count(b"\n") < whole.read_bytes().count(b"\n")
    assert whole.read_bytes().startswith(partial)  # nothing written before the kill is lost or wrong
    out.write_bytes(partial + b'{"query": "half a li')  # a kill in the middle of a write
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["complete"] is False
    summary = score_file(src, out, tiny_lm, chunk_pairs=8, show_progress=False)
    assert out.read_bytes() == whole.read_bytes()
    assert summary["scored"] == 15
    again = score_file(src, out, tiny_lm, chunk_pairs=8, show_progress=False)
    assert again.get("already_complete") and out.read_bytes() == whole.read_bytes()


def test_restart_with_other_settings_is_refused(tiny_lm, tmp_path):
    src = write_records(tmp_path / "in.jsonl", n=4)
    out = tmp_path / "out.jsonl"
    score_file(src, out, tiny_lm, chunk_pairs=8, show_progress=False)
    with pytest.raises(ValueError, match="other settings .*batch_tokens"):
        score_file(src, out, tiny_lm, batch_tokens=99, chunk_pairs=8, show_progress=False)
    score_file(src, out, tiny_lm, batch_tokens=99, chunk_pairs=8, show_progress=False, overwrite=True)
    assert count_done(out) == 4


def fine_tune_in_place(model_dir):
    """Change a causal LM's weights where they are, as fine-tuning it in place would."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(0.5)
    model.save_pretrained(model_dir)


def test_an_llm_fine_tuned_in_place_does_not_pass_for_the_one_that_scored(tiny_lm_dir, tmp_path):
    from llm_embedder.llm import CausalLM

    llm_dir = shutil.copytree(tiny_lm_dir, tmp_path / "my-llm")
    src = write_records(tmp_path / "in.jsonl", n=4)
    out, other = tmp_path / "out.jsonl", tmp_path / "other.jsonl"
    score_file(src, out, CausalLM(llm_dir, device="cpu"), chunk_pairs=8, show_progress=False)
    fine_tune_in_place(llm_dir)
    tuned = CausalLM(llm_dir, device="cpu")
    with pytest.raises(ValueError, match="before its weight files changed"):
        score_file(src, out, tuned, chunk_pairs=8, show_progress=False)
    summary = score_file(src, other, tuned, chunk_pairs=8, show_progress=False, reuse=[out])
    assert summary["reused"] == 0 and summary["reuse_skipped"] == ["out.jsonl (other llm_version)"]
    assert summary["scored"] == 4
    score_file(src, out, tuned, chunk_pairs=8, show_progress=False, overwrite=True)
    assert out.read_bytes() == other.read_bytes()


def test_the_same_llm_elsewhere_continues_and_reuses_a_run(tiny_lm_dir, tmp_path):
    """A run dir copied from another machine was refused ("other settings (llm_path)"): the bundled LLM is converted
    into each user's own cache, so its path differs while its weights do not. The LLM is known by its weights."""
    from llm_embedder.llm import CausalLM

    src = write_records(tmp_path / "in.jsonl", n=4)
    out = tmp_path / "out.jsonl"
    score_file(src, out, CausalLM(shutil.copytree(tiny_lm_dir, tmp_path / "a" / "llm"), device="cpu"), chunk_pairs=8,
               show_progress=False)
    moved = CausalLM(shutil.copytree(tmp_path / "a" / "llm", tmp_path / "b" / "llm"), device="cpu")  # times kept
    assert score_file(src, out, moved, chunk_pairs=8, show_progress=False).get("already_complete")
    summary = score_file(src, tmp_path / "again.jsonl", moved, chunk_pairs=8, show_progress=False, reuse=[out])
    assert summary["reused"] == 4 and summary["reuse_skipped"] == []
    meta_file = tmp_path / "out.jsonl.meta.json"  # a run that recorded no version is still known by its path
    meta = json.loads(meta_file.read_text())
    del meta["settings"]["llm_version"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"other settings \(llm_path\)"):
        score_file(src, out, moved, chunk_pairs=8, show_progress=False)


def test_a_run_recorded_before_llm_versions_were_is_continued(tiny_lm, tmp_path):
    src = write_records(tmp_path / "in.jsonl", n=4)
    out = tmp_path / "out.jsonl"
    score_file(src, out, tiny_lm, chunk_pairs=8, show_progress=False)
    meta_file = tmp_path / "out.jsonl.meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["settings"]["llm_version"]
    del meta["settings"]["llm_version"]
    meta_file.write_text(json.dumps(meta))
    assert score_file(src, out, tiny_lm, chunk_pairs=8, show_progress=False).get("already_complete")
    summary = score_file(src, tmp_path / "again.jsonl", tiny_lm, chunk_pairs=8, show_progress=False, reuse=[out])
    assert summary["reused"] == 4 and summary["reuse_skipped"] == []


def test_scoring_into_the_input_is_refused_before_anything_is_written(tiny_lm, tmp_path):
    src = write_records(tmp_path / "in.jsonl", n=4)
    before = src.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="is the input file"):
            score_file(src, src, tiny_lm, chunk_pairs=8, show_progress=False, overwrite=overwrite)
    assert src.read_bytes() == before and not (tmp_path / "in.jsonl.meta.json").exists()


def test_scoring_an_output_another_run_is_writing_is_refused(tiny_lm, tmp_path):
    from llm_embedder.io import RunInProgressError, exclusive

    src = write_records(tmp_path / "in.jsonl", n=4)
    out = tmp_path / "out.jsonl"
    with exclusive(tmp_path / "out.jsonl.lock", "x"):
        with pytest.raises(RunInProgressError, match="out.jsonl is being written by another run"):
            score_file(src, out, tiny_lm, chunk_pairs=8, show_progress=False)
    assert not out.exists()
    score_file(src, out, tiny_lm, chunk_pairs=8, show_progress=False)
    assert count_done(out) == 4 and not (tmp_path / "out.jsonl.lock").exists()


def test_stale_teacher_scores_in_the_input_are_replaced_not_refused(tiny_lm, tmp_path):
    src = write_records(tmp_path / "in.jsonl", n=4)
    fresh = tmp_path / "fresh.jsonl"
    score_file(src, fresh, tiny_lm, chunk_pairs=8, show_progress=False)
    stale = tmp_path / "stale.jsonl"
    stale.write_text("".join(json.dumps({**json.loads(line), "teacher_scores": [float("nan")]}) + "\n"
                             for line in src.read_text().splitlines()))
    out = tmp_path / "out.jsonl"
    score_file(stale, out, tiny_lm, chunk_pairs=8, show_progress=False)
    assert out.read_bytes() == fresh.read_bytes()


def test_count_done_drops_a_partial_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n{"c": ')
    assert count_done(path) == 2 and path.read_text() == '{"a": 1}\n{"b": 2}\n'


def test_merge_parts_splits_at_newlines_only_and_keeps_parts_that_do_not_add_up(tmp_path):
    out = tmp_path / "out.jsonl"
    recs = [{"i": i, "text": f"a{sep}b"} for i, sep in enumerate(["\u2028", "\u2029", "\u0085", "\x1c", "\r", "\f"])]
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in recs]
    chunks = [[0, 1], [2], [3], [4, 5]]  # rank 0 wrote chunks 0 and 2, rank 1 chunks 1 and 3
    part_path(out, 0, 2).write_bytes((lines[0] + lines[1] + lines[3]).encode())
    part_path(out, 1, 2).write_bytes((lines[2] + lines[4] + lines[5]).encode())
    merge_parts(out, chunks, 2)
    assert out.read_bytes() == "".join(lines).encode()
    assert not list(tmp_path.glob("*.part"))

    out.unlink()
    part_path(out, 0, 2).write_bytes((lines[0] + lines[1]).encode())  # one record short
    part_path(out, 1, 2).write_bytes((lines[2] + lines[4] + lines[5]).encode())
    with pytest.raises(RuntimeError, match=r"rank0-of-2\.part holds 2 lines but rank 0 wrote 3 records.*run the "
                                           r"same command again to score the rest"):
        merge_parts(out, chunks, 2)
    assert not out.exists()
    assert part_path(out, 0, 2).exists() and part_path(out, 1, 2).exists()
    part_path(out, 0, 2).write_bytes((lines[0] + lines[1] + lines[3] + lines[3]).encode())  # one line too many
    with pytest.raises(RuntimeError, match=r"holds 4 lines but rank 0 wrote 3 records.*delete that part"):
        merge_parts(out, chunks, 2)


def test_cli_scores_a_file_and_reports_bad_input(tiny_lm_dir, tmp_path):
    from llm_embedder.cli import app

    src = write_records(tmp_path / "in.jsonl", n=4)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["score", str(src), "--out", str(out), "--llm", str(tiny_lm_dir)])
    assert result.exit_code == 0, result.output
    assert "scored 4 records" in result.output and count_done(out) == 4
    # a plain line in a log, naming the file with its folder (the demo's are all candidates.jsonl)
    assert re.search(rf"scoring {tmp_path.name}/in.jsonl \(rank 0/1\): (\d+)/\1 \(100%\)", result.output)
    result = CliRunner().invoke(app, ["score", str(src), "--out", str(out), "--llm", str(tiny_lm_dir)])
    assert result.exit_code == 0 and f"-> {out} [already complete];" in " ".join(result.output.split()), result.output
    more = write_records(tmp_path / "more.jsonl", n=6)  # the same 4 records and 2 more
    result = CliRunner().invoke(app, ["score", str(more), "--out", str(tmp_path / "more_out.jsonl"), "--llm",
                                      str(tiny_lm_dir), "--reuse", str(out)])
    assert result.exit_code == 0, result.output
    assert "scored 5 records" in result.output and "4 records took their scores from --reuse" in result.output
    result = CliRunner().invoke(app, ["score", str(more), "--out", str(tmp_path / "o4.jsonl"), "--llm",
                                      str(tiny_lm_dir), "--reuse", str(tmp_path / "typo.jsonl")])
    assert isinstance(result.exception, FileNotFoundError) and "--reuse: file not found" in str(result.exception)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = CliRunner().invoke(app, ["score", str(empty), "--out", str(tmp_path / "o5.jsonl"), "--llm",
                                      str(tiny_lm_dir)])
    assert isinstance(result.exception, DataError) and "empty.jsonl: no records to score" in str(result.exception)
    assert not (tmp_path / "o4.jsonl").exists() and not (tmp_path / "o5.jsonl").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "qa", "query": "q", "pos": ["p"], "answers": ["a"]}\n{"task": "qa", "query": "q", '
                   '"pos": ["p"]}\n')
    result = CliRunner().invoke(app, ["score", str(bad), "--out", str(tmp_path / "o2.jsonl"), "--llm",
                                      str(tiny_lm_dir)])
    assert isinstance(result.exception, DataError) and "bad.jsonl:2: field 'answers'" in str(result.exception)
    assert not (tmp_path / "o2.jsonl").exists()
    # every record scoring cannot use is named at once, not only the first
    record = {"task": "qa", "query": "q", "pos": ["p"], "neg": ["n"]}
    lines = [{**record, "query_id": 0}, {**record, "answers": ["a"], "query_id": 1}, {**record, "answers": [],
                                                                                     "query_id": 2}]
    bad.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = CliRunner().invoke(app, ["score", str(bad), "--out", str(tmp_path / "o2.jsonl"), "--llm",
                                      str(tiny_lm_dir)])
    message = str(result.exception)
    assert isinstance(result.exception, DataError) and "2 problem(s) in" in message, message
    assert "bad.jsonl:1: field 'answers'" in message and "bad.jsonl:3: field 'answers'" in message
    # what training would refuse hours later is refused before scoring: a duplicate query_id, a string id
    good = {"task": "qa", "query": "q", "pos": ["p"], "neg": ["n"], "answers": ["a"], "query_id": 0}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "query": "r"}) + "\n"
                   + json.dumps({**good, "query_id": "x"}) + "\n")
    result = CliRunner().invoke(app, ["score", str(bad), "--out", str(tmp_path / "o3.jsonl"), "--llm",
                                      str(tiny_lm_dir)])
    message = str(result.exception)
    assert isinstance(result.exception, DataError) and "2 problem(s) in" in message, message
    assert "bad.jsonl:2:query_id: duplicate" in message and "bad.jsonl:3:query_id: must be an integer" in message
    assert not (tmp_path / "o3.jsonl").exists()


def test_rank_aware_reward_runs_end_to_end(tiny_lm, tmp_path):
    records = [{"task": "qa", "query": "capital of France?", "pos": [KEYS[0]], "neg": KEYS[1:3], "answers": ["Paris"]}]
    first = score_records(records, tiny_lm, rank_aware=3)
    second = score_records(records, tiny_lm, rank_aware=3)
    assert first == second  # samples are seeded from the prompt
    assert len(first[0]["teacher_scores"]) == 3 and all(-1 < s < 1 for s in first[0]["teacher_scores"])


class CountingLM:
    """Wraps a CausalLM and counts the prompts sent to it."""

    def __init__(self, lm):
        self._lm, self.prompts = lm, 0

    def __getattr__(self, name):
        return getattr(self._lm, name)

    def answer_logprob(self, prompts, *args, **kwargs):
        self.prompts += len(prompts)
        return self._lm.answer_logprob(prompts, *args, **kwargs)


def test_reuse_takes_the_scores_of_records_an_earlier_output_holds(tiny_lm, tmp_path):
    src = write_records(tmp_path / "in.jsonl", n=12)
    whole = tmp_path / "whole.jsonl"
    score_file(src, whole, tiny_lm, chunk_pairs=8, show_progress=False)
    lines = src.read_text().splitlines(keepends=True)
    first = tmp_path / "first.jsonl"
    (tmp_path / "first_in.jsonl").write_text("".join(lines[:8]))
    score_file(tmp_path / "first_in.jsonl", first, tiny_lm, chunk_pairs=8, show_progress=False)
    other = tmp_path / "other.jsonl"  # scored with other settings: must not be used
    score_file(src, other, tiny_lm, key_max_tokens=3, chunk_pairs=8, show_progress=False)

    lm = CountingLM(tiny_lm)
    out = tmp_path / "out.jsonl"
    summary = score_file(src, out, lm, chunk_pairs=8, show_progress=False, reuse=[first, other])

    records = [json.loads(line) for line in lines]
    new_pairs = sum(len(r.get("history") or r["pos"] + r["neg"]) for r in records[8:])
    assert lm.prompts == new_pairs  # only records 9-12 went to the LLM
    assert summary["reused"] == 7  # the first 8 minus the one without candidates
    assert summary["reuse_skipped"] == ["other.jsonl (other key_max_tokens)"]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in whole.read_text().splitlines()]
    assert [r["query_id"] for r in got] == [r["query_id"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["teacher_scores"] == pytest.approx(e["teacher_scores"], abs=1e-5)
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["complete"] and meta["reused_from"] == ["first.jsonl"]


def test_reuse_skips_an_incomplete_or_missing_output(tiny_lm, tmp_path):
    src = write_records(tmp_path / "in.jsonl", n=4)
    partial = tmp_path / "partial.jsonl"
    score_file(src, partial, tiny_lm, chunk_pairs=8, show_progress=False)
    meta = json.loads((tmp_path / "partial.jsonl.meta.json").read_text())
    (tmp_path / "partial.jsonl.meta.json").write_text(json.dumps({**meta, "complete": False}))
    lm = CountingLM(tiny_lm)
    summary = score_file(src, tmp_path / "out.jsonl", lm, chunk_pairs=8, show_progress=False,
                         reuse=[partial, tmp_path / "missing.jsonl"])
    assert summary["reused"] == 0 and lm.prompts > 0
    assert summary["reuse_skipped"] == [
        "partial.jsonl (incomplete)", "missing.jsonl (no output with its missing.jsonl.meta.json)"
    ]


def test_an_interrupted_run_with_reuse_resumes_to_the_same_output(tiny_lm, tmp_path):
    src = write_records(tmp_path / "in.jsonl", n=16)
    lines = src.read_text().splitlines(keepends=True)
    (tmp_path / "first_in.jsonl").write_text("".join(lines[:6]))
    first = tmp_path / "first.jsonl"
    score_file(tmp_path / "first_in.jsonl", first, tiny_lm, chunk_pairs=8, show_progress=False)
    whole = tmp_path / "whole.jsonl"
    assert score_file(src, whole, tiny_lm, chunk_pairs=8, show_progress=False, reuse=[first])["reused"] == 5
    out = tmp_path / "out.jsonl"
    with pytest.raises(Interrupted):
        score_file(src, out, FailingLM(tiny_lm, fail_on_call=2), chunk_pairs=8, show_progress=False, reuse=[first])
    done = count_done(out)
    assert 0 < done < 15 and whole.read_bytes().startswith(out.read_bytes())
    resumed = score_file(src, out, tiny_lm, chunk_pairs=8, show_progress=False, reuse=[first])
    assert out.read_bytes() == whole.read_bytes()
    assert resumed["reused"] == len([i for i in range(5) if i >= done])  # what this run took, not the first's


def test_a_malformed_reuse_file_names_its_line(tiny_lm, tmp_path):
    src = write_records(tmp_path / "in.jsonl", n=4)
    old = tmp_path / "old.jsonl"
    score_file(src, old, tiny_lm, chunk_pairs=8, show_progress=False)
    old.write_text(old.read_text() + "{not json\n")
    with pytest.raises(DataError, match="old.jsonl:5"):
        score_file(src, tmp_path / "out.jsonl", tiny_lm, chunk_pairs=8, show_progress=False, reuse=[old])
    assert not (tmp_path / "out.jsonl").exists()  # refused before anything was written


def test_cli_fast_mode_implies_fast_and_a_bad_one_is_refused_before_the_llm_loads(tiny_lm_dir, tmp_path, monkeypatch):
    from llm_embedder.cli import app

    src = write_records(tmp_path / "in.jsonl", n=2)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["score", str(src), "-o", str(out), "--llm", str(tiny_lm_dir), "--device", "cpu",
                                      "--fast-mode", "int8"])  # no --fast: the mode asked for is the mode run
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out.jsonl.meta.json").read_text())["settings"]["llm"].endswith("+int8")

    def no_load(*args, **kwargs):
        raise AssertionError("the LLM was loaded")

    monkeypatch.setattr("llm_embedder.llm.CausalLM", no_load)
    for args, message in ((["--no-fast", "--fast-mode", "int8"], "--fast-mode asks for the fast mode that --no-fast"),
                          (["--fast-mode", "int4"], "--fast-mode must be one of auto, bf16, int8; got 'int4'")):
        result = CliRunner().invoke(app, ["score", str(src), "-o", str(tmp_path / "o2.jsonl"), "--llm",
                                          str(tiny_lm_dir), *args])
        assert isinstance(result.exception, ValueError) and message in str(result.exception), result.output


def test_cli_names_each_bad_record_once_and_a_bad_task_option_as_itself(tiny_lm_dir, tmp_path):
    from llm_embedder.cli import app
    from llm_embedder.tasks import UnknownTaskError

    notask = tmp_path / "notask.jsonl"
    notask.write_text("".join(json.dumps({"query": "q", "pos": ["p"], "neg": ["n"], "answers": ["a"], "query_id": i})
                              + "\n" for i in range(3)))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["score", str(notask), "-o", str(out), "--llm", str(tiny_lm_dir)])
    message = str(result.exception)
    assert isinstance(result.exception, DataError) and "3 problem(s) in" in message, message
    assert message.count("notask.jsonl:1") == 1 and "notask.jsonl:1:task: missing field (set it in the record or " \
                                                    "pass --task)" in message, message
    # a record with no answer and a bad pos: each field once, the answer's problem kept
    notask.write_text(json.dumps({"task": "qa", "query": "q", "pos": [1], "neg": ["n"], "query_id": 0}) + "\n"
                      + json.dumps({"task": "qa", "query": "q", "pos": ["p"], "neg": ["n"], "query_id": 1}) + "\n")
    result = CliRunner().invoke(app, ["score", str(notask), "-o", str(out), "--llm", str(tiny_lm_dir)])
    message = str(result.exception)
    assert "2 problem(s) in" in message and "notask.jsonl:1:pos: item 0 must be a string" in message, message
    assert "notask.jsonl:2: field 'answers' is missing" in message, message
    result = CliRunner().invoke(app, ["score", str(notask), "-o", str(out), "--llm", str(tiny_lm_dir), "--task",
                                      "nope"])
    assert isinstance(result.exception, UnknownTaskError), result.output
    assert "unknown task 'nope'" in str(result.exception) and "notask.jsonl" not in str(result.exception)
    assert not out.exists()


def test_score_file_refuses_an_unknown_default_task_as_itself(tiny_lm, tmp_path):
    from llm_embedder.tasks import UnknownTaskError

    src = write_records(tmp_path / "in.jsonl", n=2)
    with pytest.raises(UnknownTaskError, match="unknown task 'nope'"):
        score_file(src, tmp_path / "out.jsonl", tiny_lm, default_task="nope", show_progress=False)


def test_cli_refuses_bad_records_before_the_llm_loads(tiny_lm_dir, tmp_path, monkeypatch):
    """A malformed line or a record without an answer was refused only once the LLM had loaded (15 s for SmolLM2)."""
    from llm_embedder.cli import app

    def no_load(*args, **kwargs):
        raise AssertionError("the LLM was loaded")

    monkeypatch.setattr("llm_embedder.llm.CausalLM", no_load)
    bad = tmp_path / "bad.jsonl"
    good = {"task": "qa", "query": "q", "pos": ["p"], "neg": ["n"], "answers": ["a"], "query_id": 0}
    for text, message in ((json.dumps(good) + "\n{not json\n", "bad.jsonl:2"),
                          (json.dumps({**good, "answers": []}) + "\n", "bad.jsonl:1: field 'answers' is missing")):
        bad.write_text(text)
        result = CliRunner().invoke(app, ["score", str(bad), "-o", str(tmp_path / "out.jsonl"), "--llm",
                                          str(tiny_lm_dir)])
        assert isinstance(result.exception, DataError) and message in str(result.exception), result.exception
    assert not (tmp_path / "out.jsonl").exists()
