import json

import numpy as np
import pytest

from llm_embedder.evaluate import DenseRanker, run_evaluation, write_report
from llm_embedder.evaluate.rankers import BM25Ranker, GoldRanker, RecencyRanker, TeacherRanker, dense_systems
from llm_embedder.evaluate.run import load_task_data
from llm_embedder.io import DataError


class ContainsAnswerLM:
    """A transparent stand-in LLM: the answer is likely exactly when the prompt contains it."""

    def __init__(self):
        self.calls = 0
        self.prompts = []

    def answer_logprob(self, prompts, answers, batch_tokens=0, progress=None):
        self.calls += 1
        self.prompts.extend(prompts)
        if progress is not None:
            progress(len(prompts))
        return np.array([-0.5 if a in p else -4.0 for p, a in zip(prompts, answers, strict=True)])

    def generate(self, prompts, max_new_tokens=16, stop=None, chat=True):
        return [p.split("Knowledge: ")[-1][:40] for p in prompts]


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def suite(tmp_path):
    corpus = [
        {"id": 0, "text": "Jupiter is the largest planet."},
        {"id": 1, "text": "Paris is the capital of France."},
        {"id": 2, "text": "The Nile is a long river in Africa."},
    ]
    write_jsonl(tmp_path / "qa" / "corpus.jsonl", corpus)
    write_jsonl(tmp_path / "qa" / "test.jsonl", [
        {"query": "which is the largest planet", "answers": ["Jupiter"], "pos_index": [0], "task": "qa", "query_id": 0},
        {"query": "capital of France", "answers": ["Paris"], "pos_index": [1], "task": "qa", "query_id": 1},
    ])
    history = ["Speaker 1: I love cats.\nSpeaker 2: Nice.", "Speaker 1: My car is red.\nSpeaker 2: Cool."]
    write_jsonl(tmp_path / "chat" / "test.jsonl", [
        {"query": "What colour is my car?", "answers": ["red"], "history": history, "pos_index": [1],
         "task": "chat", "query_id": 0},
    ])
    return tmp_path


def test_load_task_data_shapes(suite):
    qa = load_task_data(suite, "qa")
    assert not qa.per_query and len(qa.candidates) == 3 and qa.golds == [[0], [1]]
    chat = load_task_data(suite, "chat")
    assert chat.per_query and chat.golds == [[1]]


def test_a_corpus_of_flagembedding_contents_is_read(suite):
    """``data check`` accepts {"contents": ...} corpus lines (the icl form); evaluation read only ``text``."""
    write_jsonl(suite / "qa" / "corpus.jsonl", [{"contents": "Jupiter\nthe largest planet"}, {"contents": "Paris"},
                                                {"contents": "Nile"}])
    assert load_task_data(suite, "qa").candidates == ["Jupiter\nthe largest planet", "Paris", "Nile"]


@pytest.mark.parametrize(("line", "message"), [
    ('{"title": "only title"}', r"corpus.jsonl:4:text: missing or not a string"),
    ('{"text": 5}', r"corpus.jsonl:4:text: missing or not a string"),
    ('{"title": "t", "text": null}', r"corpus.jsonl:4:text: missing or not a string"),
    ('{"text": ""}', r"corpus.jsonl:4:text: empty, and no title"),
    ('{"text": "  "}', r"corpus.jsonl:4:text: empty, and no title"),  # embedded as the instruction alone
    ('{"title": " ", "text": ""}', r"corpus.jsonl:4:text: empty, and no title"),
    ('{"title": NaN, "text": "x"}', r"corpus.jsonl:4:title: NaN is not JSON in field 'title'"),
])
def test_a_corpus_line_that_fails_data_check_is_refused_naming_it(suite, line, message):
    """It failed as a KeyError or TypeError naming no line, or was embedded as "t None", "nan x" or the instruction."""
    with (suite / "qa" / "corpus.jsonl").open("a") as handle:
        handle.write(line + "\n")
    with pytest.raises(DataError, match=message):
        load_task_data(suite, "qa")


def test_bad_gold_index_names_file_and_line(suite):
    write_jsonl(suite / "qa" / "test.jsonl", [{"query": "q", "pos_index": [7], "answers": ["a"]}])
    with pytest.raises(DataError, match=r"test.jsonl:1:pos_index: index 7 out of corpus range"):
        load_task_data(suite, "qa")


def test_missing_split_is_a_clear_error(suite):
    with pytest.raises(FileNotFoundError, match="no test split for task 'tool'"):
        load_task_data(suite, "tool")


def test_lexical_and_recency_rankers(suite):
    qa = load_task_data(suite, "qa")
    assert BM25Ranker().rank("qa", qa.queries, qa.candidates, 2)[0][0] == 0
    chat = load_task_data(suite, "chat")
    assert RecencyRanker().rank("chat", chat.queries, chat.candidates, 5) == [[1, 0]]


def test_gold_ranker_puts_the_labelled_items_first_then_the_fallback_order(suite):
    qa = load_task_data(suite, "qa")
    bm25 = BM25Ranker().rank("qa", qa.queries, qa.candidates, 3)
    gold = GoldRanker([[2, 2], []]).rank("qa", qa.queries, qa.candidates, 2)
    assert gold[0] == [2, next(i for i in bm25[0] if i != 2)]  # a repeated label counts once
    assert gold[1] == bm25[1][:2]  # no label: the fallback's order
    chat = load_task_data(suite, "chat")
    assert GoldRanker(chat.golds, fallback=RecencyRanker()).rank("chat", chat.queries, chat.candidates, 5) == [[1, 0]]
    assert GoldRanker([[0]], fallback=RecencyRanker()).rank("chat", chat.queries, chat.candidates, 1) == [[0]]
    with pytest.raises(ValueError, match="labels for 1 queries, asked to rank 2"):
        GoldRanker([[0]]).rank("qa", qa.queries, qa.candidates, 2)


def test_gold_row_sits_beside_the_systems_when_asked_for(suite, tmp_path):
    lm = ContainsAnswerLM()
    wrong = {"qa": [[2, 1, 0], [2, 0, 1]], "chat": [[0, 1]]}
    results = run_evaluation(suite, ["qa", "chat"], {"wrong": lambda t: FixedRanker("wrong", wrong[t])},
                             tmp_path / "eval", lm=lm, baselines=False, gold=True, generate=False)
    assert list(results["qa"]) == ["gold", "wrong"]
    assert results["qa"]["gold"]["ndcg@1"] == 1.0 and results["qa"]["wrong"]["ndcg@1"] == 0.0
    # one item in chat's prompt: the gold turn holds "red", the other system's first turn does not
    assert results["chat"]["gold"]["gold_loglik"] == -0.5 and results["chat"]["wrong"]["gold_loglik"] == -4.0
    with pytest.raises(ValueError, match="a system is named 'gold', the name of the gold row"):
        run_evaluation(suite, ["qa"], {"gold": lambda t: FixedRanker("gold", wrong[t])}, tmp_path / "clash",
                       lm=lm, baselines=False, gold=True, generate=False)
    # without the flag there is no such row
    plain = run_evaluation(suite, ["qa"], {"wrong": lambda t: FixedRanker("wrong", wrong[t])}, tmp_path / "plain",
                           lm=lm, baselines=False, generate=False)
    assert list(plain["qa"]) == ["wrong"]


def test_teacher_ranks_each_candidate_alone_by_the_llm_and_remembers_the_scores(suite):
    chat, qa, lm = load_task_data(suite, "chat"), load_task_data(suite, "qa"), ContainsAnswerLM()
    memo: dict = {}
    assert TeacherRanker(lm, chat.answers, memo).rank("chat", chat.queries, chat.candidates, 5) == [[1, 0]]
    # one prompt per candidate, the candidate alone in the task's prompt, as the reward fills it
    question = "\nSpeaker 1: What colour is my car?\nSpeaker 2: "
    assert sorted(lm.prompts) == [turn + question for turn in chat.candidates[0]]
    assert sorted(memo.values()) == [-4.0, -0.5] and lm.calls == 1
    assert TeacherRanker(lm, chat.answers, memo).rank("chat", chat.queries, chat.candidates, 1) == [[1]]
    assert lm.calls == 1  # every prompt already in the memo
    with pytest.raises(ValueError, match="not a shared corpus"):
        TeacherRanker(lm, qa.answers).rank("qa", qa.queries, qa.candidates, 2)
    with pytest.raises(ValueError, match="answers for 1 queries, asked to rank 2"):
        TeacherRanker(lm, chat.answers).rank("chat", ["a", "b"], [["x"], ["y"]], 1)
    with pytest.raises(ValueError, match="query 0 has candidates but no answer"):
        TeacherRanker(lm, [[]]).rank("chat", chat.queries, chat.candidates, 1)

    class NaNLM(ContainsAnswerLM):
        def answer_logprob(self, prompts, answers, batch_tokens=0, progress=None):
            return np.full(len(prompts), np.nan)

    with pytest.raises(ValueError, match="non-finite log-likelihoods for the teacher"):
        TeacherRanker(NaNLM(), chat.answers).rank("chat", chat.queries, chat.candidates, 1)


def test_teacher_row_on_the_tasks_with_their_own_candidates(suite, tmp_path):
    lm = ContainsAnswerLM()
    wrong = {"qa": [[2, 1, 0], [2, 0, 1]], "chat": [[0, 1]]}
    systems = {"wrong": lambda t: FixedRanker("wrong", wrong[t])}
    results = run_evaluation(suite, ["qa", "chat"], systems, tmp_path / "eval", lm=lm, baselines=False,
                             teacher=True, generate=False)
    assert list(results["qa"]) == ["wrong"]  # a shared corpus: no teacher row
    assert list(results["chat"]) == ["teacher", "wrong"]
    assert results["chat"]["teacher"]["ndcg@1"] == 1.0 and results["chat"]["teacher"]["gold_loglik"] == -0.5
    # the LLM metric of the teacher's top turn came from the teacher's own scores: no prompt scored twice
    assert len(lm.prompts) == len(set(lm.prompts))
    with pytest.raises(ValueError, match="a system is named 'teacher', the name of the teacher row"):
        run_evaluation(suite, ["chat"], {"teacher": systems["wrong"]}, tmp_path / "clash", lm=lm,
                       baselines=False, teacher=True, generate=False)
    with pytest.raises(ValueError, match="the teacher row needs the LLM"):
        run_evaluation(suite, ["chat"], systems, tmp_path / "no-lm", baselines=False, teacher=True)


def test_dense_ranker_encodes_shared_candidates_once(tiny_embedder):
    class Counting:
        def __init__(self, embedder):
            self.embedder, self.keys_encoded = embedder, []

        def __getattr__(self, name):
            return getattr(self.embedder, name)

        def encode_keys(self, texts, task, **options):
            self.keys_encoded.append(list(texts))
            self.options = options
            return self.embedder.encode_keys(texts, task, **options)

    history = ["turn one about tea", "turn two about the weather", "turn three about trains", "a fourth turn"]
    candidates = [history[:2], history[:3], history]  # later queries of a conversation see the earlier turns too
    queries = ["tea?", "weather?", "trains?"]
    counting = Counting(tiny_embedder)
    rankings = DenseRanker(counting).rank("chat", queries, candidates, 3)
    assert counting.keys_encoded == [history]
    assert counting.options == {"show_progress": False}  # the evaluation's own progress; no encoder bar in its log
    one_by_one = []
    for query, group in zip(queries, candidates, strict=True):
        scores = tiny_embedder.encode_keys(group, "chat") @ tiny_embedder.encode_queries([query], "chat")[0]
        one_by_one.append([int(i) for i in np.argsort(-scores, kind="stable")[:3]])
    assert rankings == one_by_one


def test_run_evaluation_resumes_and_reports(suite, tiny_embedder, tmp_path):
    lm = ContainsAnswerLM()
    out = tmp_path / "eval"
    systems = {"tiny": lambda task: DenseRanker(tiny_embedder)}
    results = run_evaluation(suite, ["qa", "chat"], systems, out, lm=lm)
    assert set(results["qa"]) == {"none", "random", "bm25", "tiny"}
    assert "recency" in results["chat"]
    # BM25 finds the passage holding the answer, so the LLM metric must beat no retrieval
    assert results["qa"]["bm25"]["gold_loglik"] > results["qa"]["none"]["gold_loglik"]
    assert results["qa"]["bm25"]["ndcg@1"] == 1.0
    assert results["chat"]["recency"]["perplexity"] == pytest.approx(np.exp(0.5))
    per_query = json.loads((out / "per_query.json").read_text())
    # per query: the gold log-likelihoods whose mean is reported, for every system but "none" alike
    assert np.mean(per_query["qa"]["bm25"]) == pytest.approx(results["qa"]["bm25"]["gold_loglik"])
    n_chat = len(load_task_data(suite, "chat").queries)
    assert len(per_query["chat"]["recency"]) == len(per_query["chat"]["tiny"]) == n_chat
    assert len(per_query["chat"]["none"]) == n_chat  # no retrieval still has an LLM value per query
    calls = lm.calls
    again = run_evaluation(suite, ["qa", "chat"], systems, out, lm=lm)
    assert again == results and lm.calls == calls  # everything came from results.json
    # another call's table: the systems it asked for, then (by default) the others the folder holds
    assert list(run_evaluation(suite, ["qa"], {}, out, lm=lm)["qa"]) == ["none", "random", "bm25", "tiny"]
    assert run_evaluation(suite, ["qa"], {}, out, lm=lm, cached_others=False) == {
        "qa": {name: results["qa"][name] for name in ("none", "random", "bm25")}}
    assert lm.calls == calls
    plots = write_report(results, out)
    assert {p.name for p in plots} == {"qa.png", "chat.png"}
    write_report({"qa": results["qa"]}, out)  # a later report without chat leaves no chat plot behind
    assert {p.name for p in (out / "plots").iterdir()} == {"qa.png"}
    write_report(results, out)
    table = (out / "results.md").read_text()
    assert "| bm25 |" in table and "perplexity" in table


def test_results_of_another_embedder_fast_mode_are_not_reused(suite, tiny_embedder_dir, tmp_path):
    out = tmp_path / "eval"
    exact = dense_systems({"tiny": str(tiny_embedder_dir)}, None, "cpu")
    first = run_evaluation(suite, ["qa"], exact, out, baselines=False)
    assert "embed_fast" not in json.loads((out / "settings.json").read_text())
    fast = dense_systems({"tiny": str(tiny_embedder_dir)}, None, "cpu", fast="bf16")
    calls = []
    counted = {"tiny": lambda task: calls.append(task) or fast["tiny"](task)}
    second = run_evaluation(suite, ["qa"], counted, out, baselines=False, embed_fast="bf16")
    assert calls == ["qa"]  # measured again, not read from the exact run's cache
    assert json.loads((out / "settings.json").read_text())["embed_fast"] == "bf16"
    assert set(second["qa"]["tiny"]) == set(first["qa"]["tiny"])


def test_results_at_another_embedder_max_length_are_not_reused(suite, tiny_embedder_dir, tmp_path):
    out = tmp_path / "eval"
    saved = dense_systems({"tiny": str(tiny_embedder_dir)}, None, "cpu")
    run_evaluation(suite, ["qa"], saved, out, baselines=False)
    assert json.loads((out / "settings.json").read_text())["embed_max_length"] == "saved"
    short = dense_systems({"tiny": str(tiny_embedder_dir)}, None, "cpu", max_length=8)
    embedders = []

    def counted(task):
        ranker = short["tiny"](task)
        embedders.append(ranker.embedder)
        return ranker

    run_evaluation(suite, ["qa"], {"tiny": counted}, out, baselines=False, embed_max_length=8)
    assert len(embedders) == 1  # measured again, not read from the cache of the saved length
    assert (embedders[0].query_max_length, embedders[0].key_max_length) == (8, 8)
    assert json.loads((out / "settings.json").read_text())["embed_max_length"] == 8


class FixedRanker:
    """Returns the same rankings for every query set (only the first ``len(queries)`` are used)."""

    def __init__(self, name, rankings):
        self.name, self.rankings = name, rankings

    def rank(self, task, queries, candidates, k):
        return [r[:k] for r in self.rankings[: len(queries)]]


def test_llm_metric_uses_the_first_queries_and_skips_prompts_already_scored(suite, tmp_path):
    lm = ContainsAnswerLM()
    right, wrong = [[0, 1, 2], [1, 0, 2]], [[2, 1, 0], [2, 0, 1]]
    systems = {"a": lambda t: FixedRanker("a", right), "b": lambda t: FixedRanker("b", right),
               "c": lambda t: FixedRanker("c", wrong)}
    results = run_evaluation(suite, ["qa"], systems, tmp_path / "eval", lm=lm, baselines=False,
                             max_llm_queries=1, generate=False)
    qa = results["qa"]
    assert qa["a"]["ndcg@1"] == 1.0 and qa["c"]["ndcg@1"] == 0.0  # retrieval metrics over both queries
    assert qa["a"] == qa["b"] and qa["a"]["gold_loglik"] == -0.5  # top-3 of query 1 holds "Jupiter"
    # one LLM query per system; "b" retrieved what "a" did, so its prompt was not sent again
    assert len(lm.prompts) == 2 and all("largest planet" in p for p in lm.prompts)


def test_corpus_subsample_keeps_golds_and_remaps(suite):
    from llm_embedder.evaluate.run import subsample_corpus

    corpus = [f"doc {i}" for i in range(100)]
    small, golds = subsample_corpus(corpus, [[97], [3, 50]], max_corpus=10)
    assert len(small) == 10
    assert [small[g] for g in golds[0]] == ["doc 97"]
    assert [small[g] for g in golds[1]] == ["doc 3", "doc 50"]
    assert subsample_corpus(corpus, [[97]], 10) == subsample_corpus(corpus, [[97]], 10)
    # hard negatives come before the random fill, round-robin over the queries, while they fit
    small, golds = subsample_corpus(corpus, [[97], [3]], max_corpus=4, hard=[[10, 11, 12], [20, 21]])
    assert small == ["doc 3", "doc 10", "doc 20", "doc 97"] and golds == [[3], [0]]
    qa = load_task_data(suite, "qa", max_corpus=2)
    assert len(qa.candidates) == 2 and [qa.candidates[g[0]] for g in qa.golds] == [
        "Jupiter is the largest planet.", "Paris is the capital of France."]


def test_recent_window_keeps_gold_and_latest():
    from llm_embedder.evaluate.run import recent_window

    texts = [f"chunk {i}" for i in range(10)]
    kept, gold = recent_window(texts, [2], 4)
    assert kept == ["chunk 2", "chunk 7", "chunk 8", "chunk 9"] and gold == [0]
    assert recent_window(texts[:3], [1], 4) == (texts[:3], [1])


def test_changed_settings_do_not_reuse_cached_results(suite, tmp_path):
    lm = ContainsAnswerLM()
    out = tmp_path / "eval"
    run_evaluation(suite, ["qa"], {}, out, lm=lm, generate=False)
    calls = lm.calls
    run_evaluation(suite, ["qa"], {}, out, lm=lm, generate=False)
    assert lm.calls == calls
    run_evaluation(suite, ["qa"], {}, out, lm=lm, generate=False, max_queries=1)
    assert lm.calls > calls


def test_an_llm_fine_tuned_in_place_measures_anew_and_an_unversioned_cache_is_kept(suite, tmp_path):
    lm = ContainsAnswerLM()
    out = tmp_path / "eval"
    lm.version = "v1"
    run_evaluation(suite, ["qa"], {}, out, lm=lm, generate=False)
    calls = lm.calls
    run_evaluation(suite, ["qa"], {}, out, lm=lm, generate=False)
    assert lm.calls == calls
    lm.version = "v2"  # the same name and path, other weights
    run_evaluation(suite, ["qa"], {}, out, lm=lm, generate=False)
    assert lm.calls > calls
    # results cached by a version that recorded no LLM version are taken as they are
    settings = json.loads((out / "settings.json").read_text())
    del settings["llm_version"]
    (out / "settings.json").write_text(json.dumps(settings))
    calls = lm.calls
    run_evaluation(suite, ["qa"], {}, out, lm=lm, generate=False)
    assert lm.calls == calls and json.loads((out / "settings.json").read_text())["llm_version"] == "v2"


def test_an_evaluation_into_a_folder_another_is_writing_is_refused(suite, tmp_path):
    from llm_embedder.evaluate.run import LOCK_FILE
    from llm_embedder.io import RunInProgressError, exclusive

    out = tmp_path / "eval"
    with exclusive(out / LOCK_FILE, "x"):
        with pytest.raises(RunInProgressError, match="the evaluation .*eval is being written by another run"):
            run_evaluation(suite, ["qa"], {}, out, lm=ContainsAnswerLM(), generate=False)
    assert "qa" in run_evaluation(suite, ["qa"], {}, out, lm=ContainsAnswerLM(), generate=False)


def test_prompts_hold_each_task_s_top_items_best_next_to_the_query():
    from llm_embedder.evaluate.downstream import DOWNSTREAM, build_prompts

    ranked = [f"example {i}" for i in range(10)]
    (icl,) = build_prompts("icl", ["the query"], [ranked], DOWNSTREAM["icl"])
    assert "example 7" in icl and "example 8" not in icl  # the recipe's 8 examples
    assert icl.index("example 7") < icl.index("example 0") < icl.index("the query")  # most similar last
    (qa,) = build_prompts("qa", ["the query"], [ranked], DOWNSTREAM["qa"])
    assert "example 2" in qa and "example 3" not in qa  # the top 3 passages


def test_prompt_items_override_the_default_and_key_the_cache(suite, tmp_path):
    from llm_embedder.evaluate.downstream import downstream_metrics

    wrong = {"c": lambda t: FixedRanker("c", [[2, 1, 0], [2, 0, 1]])}  # Jupiter third for the first query
    kwargs = dict(lm=ContainsAnswerLM(), baselines=False, max_llm_queries=1, generate=False)
    default = run_evaluation(suite, ["qa"], wrong, tmp_path / "three", **kwargs)
    top_one = run_evaluation(suite, ["qa"], wrong, tmp_path / "one", prompt_items={"qa": 1}, **kwargs)
    assert default["qa"]["c"]["gold_loglik"] == -0.5  # the top 3 hold the answer
    assert top_one["qa"]["c"]["gold_loglik"] == -4.0  # the top 1 does not
    assert json.loads((tmp_path / "one" / "settings.json").read_text())["prompt_items"] == {"qa": 1}
    with pytest.raises(ValueError, match="at least 1"):
        downstream_metrics("qa", ["q"], [["a"]], [["p"]], ContainsAnswerLM(), items=0)
    for bad, message in (({"qa": 0}, "qa=0, expected a whole number of at least 1"),
                         ({"qa": "2"}, "qa='2'"), ({"tool": 2}, "'tool' has no LLM prompt")):
        with pytest.raises(ValueError, match=message):
            run_evaluation(suite, ["qa"], wrong, tmp_path / "bad", prompt_items=bad, **kwargs)
        assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_the_split_is_validated_as_training_data_is(suite):
    """A typo'd task, an empty query or an empty file is refused with its file and line, not evaluated."""
    good = {"query": "capital of France", "answers": ["Paris"], "pos_index": [1], "task": "qa", "query_id": 0}
    write_jsonl(suite / "qa" / "test.jsonl", [good, {**good, "query_id": 1, "task": "qaa"}])
    with pytest.raises(DataError, match=r"test.jsonl:2:task: unknown task 'qaa'"):
        load_task_data(suite, "qa")
    write_jsonl(suite / "qa" / "test.jsonl", [good, {**good, "query_id": 1, "query": ""}])
    with pytest.raises(DataError, match=r"test.jsonl:2:query: empty query"):
        load_task_data(suite, "qa")
    (suite / "qa" / "test.jsonl").write_text("")
    with pytest.raises(DataError, match=r"test.jsonl: no records"):
        load_task_data(suite, "qa")


def test_bm25_ranks_a_query_with_nothing_to_match_instead_of_failing():
    docs = ["doc one about cats", "another doc", "a third"]
    for query in ("q", "the", "?"):  # a single letter, a stopword, punctuation: no BM25 tokens
        assert BM25Ranker().rank("qa", [query, "cats"], docs, 2) == [[0, 1], [0, 1]]
        assert BM25Ranker().rank("chat", [query], [["I love cats", "hello"]], 2) == [[0, 1]]


def test_a_result_measured_with_another_model_version_is_measured_again(suite, tmp_path):
    lm = ContainsAnswerLM()
    right, wrong = [[0, 1, 2], [1, 0, 2]], [[2, 1, 0], [2, 0, 1]]
    out = tmp_path / "eval"

    def evaluate(rankings, version, tasks=("qa", "chat")):
        return run_evaluation(suite, list(tasks), {"m": lambda t: FixedRanker("m", rankings[t])}, out, lm=lm,
                              baselines=False, generate=False, versions={"m": {t: version for t in tasks}})

    first = evaluate({"qa": right, "chat": [[1, 0]]}, "v1")
    assert first["qa"]["m"]["ndcg@1"] == 1.0
    # the same version: read from the cache, whatever the ranker would say now
    assert evaluate({"qa": wrong, "chat": [[0, 1]]}, "v1") == first
    # the model changed on qa only (say, a model per task): qa is measured again, chat kept
    again = evaluate({"qa": wrong}, "v2", tasks=("qa",))
    assert again["qa"]["m"]["ndcg@1"] == 0.0 and again["chat"]["m"] == first["chat"]["m"]
    assert json.loads((out / "versions.json").read_text()) == {"qa": {"m": "v2"}, "chat": {"m": "v1"}}
    # results of unknown provenance (no version recorded for them) are measured again too
    (out / "versions.json").unlink()
    assert evaluate({"qa": right, "chat": [[0, 1]]}, "v3")["chat"]["m"]["ndcg@1"] == 0.0


def test_results_measured_on_other_data_are_measured_again(suite, tmp_path):
    """A suite rebuilt in place (another seed) kept its cached rows: the demo compared models measured on
    different queries. A task's data is known by content; a task whose data is unchanged keeps its results."""
    lm = ContainsAnswerLM()
    out = tmp_path / "eval"
    run_evaluation(suite, ["qa", "chat"], {}, out, lm=lm, generate=False)
    calls = lm.calls
    run_evaluation(suite, ["qa", "chat"], {}, out, lm=lm, generate=False)
    assert lm.calls == calls  # the same data: read from the cache
    records = [json.loads(line) for line in (suite / "qa" / "test.jsonl").read_text().splitlines()]
    records[0]["query"] = "which planet is the largest"
    write_jsonl(suite / "qa" / "test.jsonl", records)
    lm.prompts.clear()
    run_evaluation(suite, ["qa", "chat"], {}, out, lm=lm, generate=False)
    assert any("which planet is the largest" in p for p in lm.prompts)  # qa measured again
    assert not any("What colour is my car?" in p for p in lm.prompts)  # chat kept


def test_a_system_named_like_a_baseline_or_base_row_is_refused(suite, tmp_path, tiny_embedder_dir):
    """`--model bm25=PATH` was never evaluated (the bm25 baseline's row stood in for it); a model named like a base
    row replaced that row."""
    from llm_embedder.evaluate.rankers import dense_systems

    with pytest.raises(ValueError, match="a system is named 'bm25', the name of a baseline row"):
        run_evaluation(suite, ["qa"], {"bm25": lambda t: FixedRanker("bm25", [[0, 1, 2]] * 2)}, tmp_path / "e")
    with pytest.raises(ValueError, match="a model is named 'base \\(instructions\\)', the name of a base model row"):
        dense_systems({"base (instructions)": str(tiny_embedder_dir)}, "minilm", "cpu")


def test_a_damaged_cache_file_is_named_or_measured_anew(suite, tmp_path):
    lm = ContainsAnswerLM()
    out = tmp_path / "eval"
    run_evaluation(suite, ["qa"], {}, out, lm=lm, generate=False)
    (out / "settings.json").write_text("")  # a kill while it was written
    calls = lm.calls
    run_evaluation(suite, ["qa"], {}, out, lm=lm, generate=False)
    assert lm.calls > calls  # settings unknown: measured again, not an error on every run
    (out / "results.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"results.json: not a results cache"):
        run_evaluation(suite, ["qa"], {}, out, lm=lm, generate=False)


def test_a_split_that_fails_data_check_is_refused_with_every_problem(suite):
    records = [json.loads(line) for line in (suite / "qa" / "test.jsonl").read_text().splitlines()]
    records[0]["answers"] = [5]
    records[1]["pos_index"] = [999]
    write_jsonl(suite / "qa" / "test.jsonl", records)
    with pytest.raises(DataError, match=r"2 problem\(s\)") as err:
        load_task_data(suite, "qa")
    assert "test.jsonl:1:answers" in str(err.value) and "test.jsonl:2:pos_index" in str(err.value)


@pytest.mark.parametrize(("call", "error", "message"), [
    (dict(tasks="qa"), TypeError, "tasks must be a list of task names, got the string 'qa'"),
    (dict(systems={"m": "some/path"}), TypeError, "systems must map a name to a factory"),
    (dict(max_queries=-1), ValueError, "max_queries must be a whole number of at least 1"),
    (dict(max_llm_queries=-1), ValueError, "max_llm_queries must be a whole number of at least 0"),
    (dict(max_corpus=0), ValueError, "max_corpus must be a whole number of at least 1"),
])
def test_run_evaluation_refuses_arguments_it_would_misread(suite, tmp_path, call, error, message):
    args = {"tasks": ["qa"], "systems": {}, **call}
    with pytest.raises(error, match=message):
        run_evaluation(suite, args.pop("tasks"), args.pop("systems"), tmp_path / "e", **args)


@pytest.fixture
def legal_task():
    """A user task with its own reward template, registered for the test."""
    from llm_embedder.tasks import register_task, unregister_task

    task = register_task(name="legal_run", query_instruction="Find statutes for: ", key_instruction="Statute: ",
                         loss="stable_distill", reward_template="Statute: {key}\n\nCase: {query}\n\nRuling: {answer}")
    yield task
    unregister_task("legal_run")


def write_legal(suite, answers=True):
    corpus = [{"id": i, "text": f"statute {i}" + (" theft is a crime" if i == 1 else "")} for i in range(5)]
    write_jsonl(suite / "legal_run" / "corpus.jsonl", corpus)
    records = [{"query": "someone stole a bike", "answers": ["theft"], "pos_index": [1], "query_id": 0},
               {"query": "a signed paper", "answers": ["contract"], "pos_index": [3], "query_id": 1}]
    write_jsonl(suite / "legal_run" / "test.jsonl",
                [{k: v for k, v in r.items() if answers or k != "answers"} for r in records])


def test_a_user_task_with_answers_gets_the_llm_metric_in_its_reward_template(suite, legal_task, tmp_path):
    """A user task's reward template went unused: it got retrieval metrics only, with no word said."""
    write_legal(suite)
    lm = ContainsAnswerLM()
    ranked = {"m": lambda t: FixedRanker("m", [[0, 2, 1, 3, 4], [4, 0, 2, 1, 3]])}
    results = run_evaluation(suite, ["legal_run"], ranked, tmp_path / "eval", lm=lm, generate=False)
    legal = results["legal_run"]
    assert list(legal) == ["none", "random", "bm25", "m"]  # no retrieval beside the retrievers, as for qa
    # the top 3 items in the task's own template, the best nearest the query; the answer is scored after it
    assert "Statute: statute 1 theft is a crime\nstatute 2\nstatute 0\n\nCase: someone stole a bike\n\nRuling: " in (
        lm.prompts)
    assert legal["m"]["gold_loglik"] == pytest.approx((-0.5 - 4.0) / 2)  # "theft" in query 0's top 3 only
    assert legal["none"] == {"gold_loglik": -4.0} and "accuracy" not in legal["m"]
    # the main metric (table, verdicts, per_query.json) stays the retrieval one
    from llm_embedder.evaluate import main_metric
    from llm_embedder.evaluate.run import paired_metric

    assert main_metric("legal_run") == ("ndcg@10", True) and paired_metric("legal_run") == "ndcg@10"
    per_query = json.loads((tmp_path / "eval" / "per_query.json").read_text())["legal_run"]
    assert np.mean(per_query["m"]) == pytest.approx(legal["m"]["ndcg@10"])
    # --prompt-items overrides its 3 items
    top_one = run_evaluation(suite, ["legal_run"], ranked, tmp_path / "one", lm=ContainsAnswerLM(),
                             baselines=False, generate=False, prompt_items={"legal_run": 1})
    assert top_one["legal_run"]["m"]["gold_loglik"] == -4.0


def test_a_user_task_s_rows_cached_without_the_llm_metric_are_measured_again_the_builtin_ones_kept(
    suite, legal_task, tmp_path
):
    write_legal(suite)
    out, lm = tmp_path / "eval", ContainsAnswerLM()
    systems = {"m": lambda t: FixedRanker("m", [[0, 2, 1, 3, 4], [4, 0, 2, 1, 3]] if t == "legal_run" else
                                          [[0, 1, 2], [1, 0, 2]])}
    first = run_evaluation(suite, ["qa", "legal_run"], systems, out, lm=lm, baselines=False, generate=False)
    results = json.loads((out / "results.json").read_text())  # as the version without the user task's LLM metric
    del results["legal_run"]["m"]["gold_loglik"]
    results["qa"]["m"]["stale"] = 1.0  # a mark only a result read from the cache keeps
    (out / "results.json").write_text(json.dumps(results))
    again = run_evaluation(suite, ["qa", "legal_run"], systems, out, lm=lm, baselines=False, generate=False)
    assert again["legal_run"]["m"] == first["legal_run"]["m"]
    assert again["qa"]["m"]["stale"] == 1.0


def test_a_user_task_without_answers_gets_retrieval_metrics_and_a_line_saying_so(suite, legal_task, tmp_path,
                                                                                  capsys):
    write_legal(suite, answers=False)
    results = run_evaluation(suite, ["legal_run"], {"m": lambda t: FixedRanker("m", [[1, 0, 2]] * 2)},
                             tmp_path / "eval", lm=ContainsAnswerLM(), generate=False)
    assert list(results["legal_run"]) == ["random", "bm25", "m"] and "gold_loglik" not in results["legal_run"]["m"]
    out = capsys.readouterr().err  # beside the progress bar, on stderr
    assert "task legal_run: its records have no 'answers', so it gets retrieval metrics only" in out


def test_a_user_task_s_best_item_goes_nearest_the_query_wherever_its_template_puts_it(legal_task):
    from llm_embedder.evaluate.downstream import build_prompts, downstream_spec
    from llm_embedder.tasks import register_task, unregister_task

    spec = downstream_spec("legal_run")
    assert (spec.items, spec.metric, spec.most_similar_last) == (3, "loglik", True)
    (prompt,) = build_prompts("legal_run", ["q"], [["best", "second", "third", "fourth"]], spec)
    assert prompt == "Statute: third\nsecond\nbest\n\nCase: q\n\nRuling: "
    register_task(name="query_first", query_instruction="", key_instruction="",
                  reward_template="Case: {query}\nStatutes: {key}\nRuling: {answer}")
    try:
        spec = downstream_spec("query_first")
        (prompt,) = build_prompts("query_first", ["q"], [["best", "second", "third", "fourth"]], spec)
        assert prompt == "Case: q\nStatutes: best\nsecond\nthird\nRuling: "
    finally:
        unregister_task("query_first")
    assert downstream_spec("tool") is None and downstream_spec("nope") is None


def test_without_the_llm_an_llm_task_shows_its_retrieval_metric(suite, tiny_embedder, tmp_path, capsys):
    """qa's main metric is the LLM's: with --llm none every cell read '–', and the plot list was empty."""
    systems = {"tiny": lambda task: DenseRanker(tiny_embedder)}
    out = tmp_path / "eval"
    results = run_evaluation(suite, ["qa"], systems, out, baselines=False)
    plots = write_report(results, out)
    table = (out / "results.md").read_text()
    assert "| qa ndcg@10 ↑ |" in table and f"| tiny | {results['qa']['tiny']['ndcg@10']:.4f} |" in table
    assert [p.name for p in plots] == ["qa.png"]


def test_a_task_with_nothing_to_measure_says_so_and_reports(suite, tiny_embedder, tmp_path, capsys):
    """Records without labels, and no LLM: every row was empty, silently, and the detail table had no columns."""
    write_jsonl(suite / "qa" / "test.jsonl", [{"query": "which is the largest planet", "answers": ["Jupiter"]}])
    out = tmp_path / "eval"
    results = run_evaluation(suite, ["qa"], {"tiny": lambda task: DenseRanker(tiny_embedder)}, out, baselines=False)
    assert "task qa: nothing to measure" in capsys.readouterr().err.replace("\n", "")  # beside the bar, on stderr
    write_report(results, out)
    assert "nothing measured" in (out / "results.md").read_text()


def test_without_a_corpus_a_query_is_ranked_among_its_own_texts_and_warned(suite):
    """pos_index (a corpus id beside the pos texts) was read as a place among the query's own pos and neg texts:
    every system scored alike, only the query whose id was 0 found its positive, and nothing was said."""
    from llm_embedder.evaluate.run import CorpusMissingWarning

    (suite / "qa" / "corpus.jsonl").unlink()
    write_jsonl(suite / "qa" / "test.jsonl", [
        {"query": "largest planet", "pos": ["Jupiter is the largest planet."], "neg": ["Paris is in France."],
         "pos_index": [5], "answers": ["Jupiter"]},
        {"query": "capital of France", "pos": ["Paris is the capital of France."], "neg": ["The Nile."],
         "pos_index": [0], "answers": ["Paris"]},
    ])
    with pytest.warns(CorpusMissingWarning, match="give corpus ids .*corpus.jsonl is missing"):
        data = load_task_data(suite, "qa")
    assert data.golds == [[0], [0]] and data.candidates[0][0] == "Jupiter is the largest planet."


def test_records_without_answers_are_named_with_the_way_out(suite, tmp_path):
    """'every test record needs answers' named neither the records nor that --llm none still measures retrieval
    (what a BEIR import, which has no answers, can have)."""
    write_jsonl(suite / "qa" / "test.jsonl", [
        {"query": "which is the largest planet", "answers": ["Jupiter"], "pos_index": [0]},
        {"query": "capital of France", "pos_index": [1]},
    ])
    with pytest.raises(DataError, match=r"record\(s\) 2 of the split have no 'answers'.*--llm none"):
        run_evaluation(suite, ["qa"], {}, tmp_path / "eval", lm=ContainsAnswerLM())


def test_lrlm_prompts_hold_the_retrieved_chunks_in_document_order(tmp_path):
    """lrlm's prompt put the two chunks retrieved in rank order (the best first, wherever it was in the text); the
    recipe keeps them in the document's order (order_method=sequential), as augment's lrlm layout does."""
    history = ["Chunk zero. ", "Chunk one. ", "Chunk two. ", "Chunk three. "]
    write_jsonl(tmp_path / "lrlm" / "test.jsonl", [
        {"query": "The query chunk.", "answers": [" The target."], "history": history, "pos_index": [3],
         "task": "lrlm", "query_id": 0},
    ])
    lm = ContainsAnswerLM()
    run_evaluation(tmp_path, ["lrlm"], {"s": lambda t: FixedRanker("s", [[3, 0, 2, 1]])}, tmp_path / "eval", lm=lm,
                   baselines=False, generate=False)
    assert lm.prompts == ["Chunk zero. Chunk three. \nThe query chunk."]
    lm = ContainsAnswerLM()
    run_evaluation(tmp_path, ["lrlm"], {"s": lambda t: FixedRanker("s", [[3, 0, 2, 1]])}, tmp_path / "three", lm=lm,
                   baselines=False, generate=False, prompt_items={"lrlm": 3})
    assert lm.prompts == ["Chunk zero. Chunk two. Chunk three. \nThe query chunk."]


def test_generated_answers_follow_the_progress_in_the_llm_s_own_batches():
    """qa's greedy answers took minutes on a CPU with the prompts bar standing still at its last prompt."""
    from llm_embedder.evaluate.downstream import generate_answers

    class BatchLM:
        def __init__(self):
            self.batches = []

        def generate(self, prompts, max_new_tokens=16, stop=None, chat=True):
            self.batches.append(len(prompts))
            return [p.upper() for p in prompts]

    lm, seen = BatchLM(), []
    prompts = [f"prompt {i}" for i in range(19)]
    assert generate_answers(lm, prompts, lambda done, total: seen.append((done, total))) == [p.upper() for p in prompts]
    assert lm.batches == [8, 8, 3] and seen == [(0, 19), (8, 19), (16, 19), (19, 19)]


def test_every_task_s_data_is_checked_before_any_task_is_evaluated(suite, tmp_path):
    """A bad corpus of a later task was found only once the earlier tasks were evaluated (hours, on a real run)."""
    write_jsonl(suite / "zz_bad" / "test.jsonl", [{"query": "q", "pos_index": [0], "task": "qa", "query_id": 0}])
    write_jsonl(suite / "zz_bad" / "corpus.jsonl", [{"title": "only a title"}])
    calls = []

    def system(task):
        calls.append(task)
        return FixedRanker("wrong", [[0, 1, 2], [0, 1, 2]])

    with pytest.raises(DataError, match=r"zz_bad/corpus\.jsonl:1:text"):
        run_evaluation(suite, ["qa", "zz_bad"], {"wrong": system}, tmp_path / "eval", baselines=False)
    assert calls == []  # qa was not evaluated first
