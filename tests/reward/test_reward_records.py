"""Records -> (prompt, answer) pairs through the task registry's templates, and the bad-input rules."""

from __future__ import annotations

import pytest

from llm_embedder.io import DataError
from llm_embedder.reward.records import KeyFitter, build_record_pairs
from llm_embedder.reward.scorer import ScoreStats, score_records
from llm_embedder.tasks import Task, register_task, unregister_task


@pytest.fixture()
def fitter(tiny_lm):
    return KeyFitter(tiny_lm.tokenizer, tiny_lm.max_length)


def test_qa_pairs_follow_the_template_pos_then_neg(fitter):
    record = {"task": "qa", "query": "capital of France?", "pos": ["P1"], "neg": ["N1", "N2"], "answers": ["Paris"]}
    ps = build_record_pairs(record, 3, "in.jsonl", fitter)
    assert ps.prompts == [f"Knowledge: {k}\n\nQuestion: capital of France?\n\nAnswer: " for k in ("P1", "N1", "N2")]
    assert ps.answer == "Paris" and ps.truncated == 0


def test_chat_scores_each_history_turn_and_lrlm_concatenates_chunks(fitter):
    chat = {"task": "chat", "query": "hi", "history": ["t1", "t2"], "answers": ["yo"], "pos": ["ignored"]}
    expected = [f"{turn}\nSpeaker 1: hi\nSpeaker 2: " for turn in ("t1", "t2")]
    assert build_record_pairs(chat, 1, "f", fitter).prompts == expected
    lrlm = {"task": "lrlm", "query": "chunk before", "pos": [], "neg": ["old chunk"], "answers": [" target"]}
    assert build_record_pairs(lrlm, 1, "f", fitter).prompts == ["old chunk\nchunk before"]


def test_a_users_task_brings_its_own_template(fitter):
    register_task(Task(name="mytask", query_instruction="q: ", key_instruction="k: ",
                       reward_template="Doc: {key} | Q: {query} | A: {answer}"))
    try:
        ps = build_record_pairs({"task": "mytask", "query": "Q", "pos": ["D"], "answers": ["A"]}, 1, "f", fitter)
        assert ps.prompts == ["Doc: D | Q: Q | A: "]
    finally:
        unregister_task("mytask")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"task": "qa", "query": "q", "pos": ["p"]}, r"data.jsonl:7: field 'answers' is missing"),
        ({"task": "qa", "query": "q", "pos": ["p"], "answers": []}, r"data.jsonl:7: field 'answers'"),
        ({"task": "nope", "query": "q", "pos": ["p"], "answers": ["a"]}, r"data.jsonl:7: field 'task': unknown task"),
        ({"query": "q", "pos": ["p"], "answers": ["a"]}, r"data.jsonl:7: field 'task' is missing"),
        ({"task": "qa", "query": 3, "pos": ["p"], "answers": ["a"]}, r"data.jsonl:7: field 'query'"),
        ({"task": "qa", "query": "q", "pos": "p", "answers": ["a"]}, r"data.jsonl:7: field 'pos'"),
    ],
)
def test_bad_records_name_file_line_and_field(fitter, record, message):
    with pytest.raises(DataError, match=message):
        build_record_pairs(record, 7, "data.jsonl", fitter)


def test_no_candidates_is_skipped_and_counted_and_long_keys_are_cut(tiny_lm):
    long_key = "The quick brown fox jumps over the lazy dog. " * 60  # far beyond the 256-token window
    records = [
        {"task": "qa", "query": "capital?", "pos": ["Paris is the capital of France."], "neg": [long_key],
         "answers": ["Paris"]},
        {"task": "qa", "query": "nothing to score", "pos": [], "neg": []},  # no answers needed when skipped
    ]
    stats = ScoreStats()
    out = score_records(records, tiny_lm, stats=stats)
    assert len(out) == 1 and len(out[0]["teacher_scores"]) == 2
    assert (stats.records, stats.scored, stats.skipped_no_candidates, stats.truncated_prompts) == (2, 1, 1, 1)
    fitter = KeyFitter(tiny_lm.tokenizer, tiny_lm.max_length)
    ps = build_record_pairs(records[0], 1, "f", fitter)
    assert ps.prompts[1].startswith("Knowledge: The quick brown fox")
    assert ps.prompts[1].endswith("\n\nQuestion: capital?\n\nAnswer: ")  # the query survives, the key is cut
    assert fitter.count(ps.prompts[1] + "Paris") <= tiny_lm.max_length


def test_key_max_tokens_cuts_every_key(tiny_lm):
    fitter = KeyFitter(tiny_lm.tokenizer, tiny_lm.max_length, key_max_tokens=3)
    ps = build_record_pairs({"task": "icl", "query": "q", "pos": ["The quick brown fox jumps"], "answers": ["a"]},
                            1, "f", fitter)
    assert ps.truncated == 1 and len(tiny_lm.tokenizer(ps.prompts[0].split("\n")[0])["input_ids"]) <= 3
