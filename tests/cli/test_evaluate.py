import json
import os
import subprocess
import sys

import pytest

from llm_embedder.io import write_jsonl


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "llm_embedder", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture
def qa_suite(tmp_path):
    corpus = [{"id": i, "text": text} for i, text in enumerate(
        ["Jupiter is the largest planet.", "Paris is the capital of France.", "The Nile is a river in Africa."])]
    write_jsonl(tmp_path / "qa" / "corpus.jsonl", corpus)
    write_jsonl(tmp_path / "qa" / "test.jsonl", [
        {"query": "which is the largest planet", "answers": ["Jupiter"], "pos_index": [0], "query_id": 0},
        {"query": "capital of France", "answers": ["Paris"], "pos_index": [1], "query_id": 1},
    ])
    return tmp_path


def evaluate(suite, out, tiny_embedder_dir, tiny_lm_dir, *extra):
    return run_cli("evaluate", "--data", str(suite), "--model", f"tiny={tiny_embedder_dir}", "--base", "",
                   "--llm", str(tiny_lm_dir), "--no-generate", "--no-baselines", "--out", str(out), *extra)


def test_a_corpus_without_a_text_string_is_one_error_line_naming_it(qa_suite, tiny_embedder_dir, tmp_path):
    with (qa_suite / "qa" / "corpus.jsonl").open("a") as handle:
        handle.write('{"title": "only title"}\n')
    result = run_cli("evaluate", "--data", str(qa_suite), "--model", f"tiny={tiny_embedder_dir}", "--base", "",
                     "--llm", "none", "--no-baselines", "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "KeyError" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {qa_suite / 'qa' / 'corpus.jsonl'}:4:text: missing or not a string (and no `contents` string)")


def test_prompt_items_sets_how_many_items_the_llm_sees(qa_suite, tiny_embedder_dir, tiny_lm_dir, tmp_path):
    one = evaluate(qa_suite, tmp_path / "one", tiny_embedder_dir, tiny_lm_dir, "--prompt-items", "qa=1")
    assert one.returncode == 0, one.stderr
    assert json.loads((tmp_path / "one" / "settings.json").read_text())["prompt_items"] == {"qa": 1}
    three = evaluate(qa_suite, tmp_path / "three", tiny_embedder_dir, tiny_lm_dir)
    assert three.returncode == 0, three.stderr
    assert json.loads((tmp_path / "three" / "settings.json").read_text())["prompt_items"] == {}
    per_query = [json.loads((tmp_path / run / "per_query.json").read_text())["qa"]["tiny"] for run in ("one", "three")]
    assert per_query[0] != per_query[1]  # one passage in the prompt against the default three


def test_gold_adds_the_labelled_items_row(qa_suite, tiny_embedder_dir, tiny_lm_dir, tmp_path):
    result = evaluate(qa_suite, tmp_path / "out", tiny_embedder_dir, tiny_lm_dir, "--gold")
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["qa"]) == {"gold", "tiny"} and results["qa"]["gold"]["ndcg@1"] == 1.0
    assert "| gold |" in (tmp_path / "out" / "results.md").read_text()


def test_teacher_adds_the_llm_choice_row_where_queries_have_their_own_candidates(
    qa_suite, tiny_embedder_dir, tiny_lm_dir, tmp_path
):
    history = ["Speaker 1: I love cats.\nSpeaker 2: Nice.", "Speaker 1: My car is red.\nSpeaker 2: Cool."]
    write_jsonl(qa_suite / "chat" / "test.jsonl", [{"query": "What colour is my car?", "answers": ["Red."],
                                                     "history": history, "pos_index": [1], "query_id": 0}])
    result = evaluate(qa_suite, tmp_path / "out", tiny_embedder_dir, tiny_lm_dir, "--teacher")
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["qa"]) == {"tiny"} and set(results["chat"]) == {"teacher", "tiny"}
    # the LLM metric of the teacher's turn is the best of the turns, each alone in the prompt
    assert results["chat"]["teacher"]["gold_loglik"] >= results["chat"]["tiny"]["gold_loglik"]
    assert "| teacher |" in (tmp_path / "out" / "results.md").read_text()
    no_llm = run_cli("evaluate", "--data", str(qa_suite), "--base", "", "--llm", "none", "--teacher",
                     "--out", str(tmp_path / "none"))
    assert no_llm.returncode != 0 and "--teacher ranks candidates with the LLM: give --llm" in no_llm.stderr


def test_fast_runs_the_embedders_and_the_llm_in_bf16_and_says_so(qa_suite, tiny_embedder_dir, tiny_lm_dir, tmp_path):
    result = evaluate(qa_suite, tmp_path / "fast", tiny_embedder_dir, tiny_lm_dir, "--fast", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    settings = json.loads((tmp_path / "fast" / "settings.json").read_text())
    assert settings["embed_fast"] == "bf16" and settings["llm"].endswith("+bf16")


def test_max_length_sets_every_embedders_tokens(qa_suite, tiny_embedder_dir, tiny_lm_dir, tmp_path):
    result = evaluate(qa_suite, tmp_path / "short", tiny_embedder_dir, tiny_lm_dir, "--max-length", "16",
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "short" / "settings.json").read_text())["embed_max_length"] == 16
    zero = evaluate(qa_suite, tmp_path / "zero", tiny_embedder_dir, tiny_lm_dir, "--max-length", "0")
    assert zero.returncode != 0 and "--max-length" in zero.stderr


@pytest.mark.parametrize(("spec", "message"), [
    ("qa=0", "--prompt-items: qa=0, expected a whole number of at least 1"),
    ("qa=two", "--prompt-items 'qa=two': expected TASK=N"),
    ("tool=2", "--prompt-items: task 'tool' has no LLM prompt; the tasks with one are qa, icl, chat, lrlm"),
    ("foo=2", "--prompt-items: task 'foo' is not a known task; the tasks with an LLM prompt are qa, icl, chat, lrlm"),
])
def test_bad_prompt_items_is_one_clear_line(qa_suite, tiny_embedder_dir, tiny_lm_dir, tmp_path, spec, message):
    result = evaluate(qa_suite, tmp_path / "out", tiny_embedder_dir, tiny_lm_dir, "--prompt-items", spec)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_file_given_for_data_is_named(tmp_path):
    from typer.testing import CliRunner

    from llm_embedder.cli import app

    task_file = tmp_path / "test.jsonl"
    task_file.write_text("{}\n")
    result = CliRunner().invoke(app, ["evaluate", "--data", str(task_file), "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, NotADirectoryError), result.output
    assert "is a file; give the suite's folder (it holds <task>/test.jsonl)" in str(result.exception)


def test_an_out_folder_of_other_files_or_a_file_is_refused(qa_suite, tmp_path):
    from typer.testing import CliRunner

    from llm_embedder.cli import app

    for out, error, message in ((qa_suite / "qa", FileExistsError, "not evaluation results (corpus.jsonl, test.jsonl)"),
                                (qa_suite / "qa" / "test.jsonl", NotADirectoryError, "is a file; give a folder")):
        result = CliRunner().invoke(app, ["evaluate", "--data", str(qa_suite), "--out", str(out), "--llm", "none"])
        assert isinstance(result.exception, error) and message in str(result.exception), result.exception
    assert sorted(p.name for p in (qa_suite / "qa").iterdir()) == ["corpus.jsonl", "test.jsonl"]


def test_a_model_retrained_in_place_is_measured_again(qa_suite, tiny_embedder_dir, tiny_lm_dir, tmp_path):
    import shutil

    model, out = tmp_path / "model", tmp_path / "out"
    shutil.copytree(tiny_embedder_dir, model)

    def run_with_sentinel():
        result = evaluate(qa_suite, out, model, tiny_lm_dir)
        assert result.returncode == 0, result.stderr
        results = json.loads((out / "results.json").read_text())
        stale = "stale" in results["qa"]["tiny"]
        results["qa"]["tiny"]["stale"] = 1.0  # a mark that only a result read from the cache keeps
        (out / "results.json").write_text(json.dumps(results))
        return stale

    assert not run_with_sentinel()
    assert run_with_sentinel()  # the same weights: the cached result
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # retrained in place (the same bytes, a new file time)
    assert not run_with_sentinel()


def test_a_cached_system_whose_model_was_retrained_since_is_left_out(qa_suite, tiny_embedder_dir, tiny_lm_dir,
                                                                       tmp_path):
    """A later call shows the systems of earlier calls from the cache; one whose model folder now holds other
    weights used to be shown with its old figures."""
    import shutil

    model, out = tmp_path / "model", tmp_path / "out"
    shutil.copytree(tiny_embedder_dir, model)
    first = run_cli("evaluate", "--data", str(qa_suite), "--model", f"old={model}", "--base", "", "--llm", "none",
                    "--no-baselines", "--out", str(out))
    assert first.returncode == 0, first.stderr

    def other_call():
        result = run_cli("evaluate", "--data", str(qa_suite), "--model", f"other={tiny_embedder_dir}", "--base", "",
                         "--llm", "none", "--no-baselines", "--out", str(out))
        assert result.returncode == 0, result.stderr
        return result, json.loads((out / "results.json").read_text())["qa"]

    result, cached = other_call()
    assert set(cached) == {"old", "other"} and "warning" not in result.stderr  # unchanged: still shown
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # retrained in place (the same bytes, a new file time)
    result, cached = other_call()
    assert set(cached) == {"other"}
    assert "warning: the model of 'old'" in result.stderr and f"--model old={model}" in result.stderr
    assert "| old |" not in result.stdout


LEGAL_TASK = {"name": "legal_eval", "query_instruction": "Find statutes for: ", "key_instruction": "Statute: ",
              "loss": "stable_distill", "reward_template": "Statute: {key}\n\nCase: {query}\n\nRuling: {answer}"}


@pytest.fixture
def legal_suite(tmp_path):
    """A suite holding a user task's folder (``legal_eval``), answers included, and its task file."""
    corpus = [{"id": i, "text": text} for i, text in enumerate(
        ["Theft is punished by law.", "A contract needs consent.", "The speed limit in towns is 50."])]
    write_jsonl(tmp_path / "suite" / "legal_eval" / "corpus.jsonl", corpus)
    write_jsonl(tmp_path / "suite" / "legal_eval" / "test.jsonl", [
        {"query": "someone stole a bike", "answers": ["guilty of theft"], "pos_index": [0], "query_id": 0},
        {"query": "signed under duress", "answers": ["void contract"], "pos_index": [1], "query_id": 1},
    ])
    task_file = tmp_path / "legal.json"
    task_file.write_text(json.dumps({"tasks": [LEGAL_TASK]}))
    return tmp_path / "suite", task_file


def save_legal_model(tiny_embedder_dir, out):
    """A model saved while the user task was registered: it carries the task in its llm_embedder_tasks.json."""
    from llm_embedder.embedder import Embedder
    from llm_embedder.tasks import register_task, unregister_task

    register_task(**LEGAL_TASK)
    try:
        Embedder(tiny_embedder_dir, device="cpu").save(out)
    finally:
        unregister_task("legal_eval")
    return out


def test_a_user_task_is_evaluated_from_a_task_file_or_the_model_that_carries_it(legal_suite, tiny_embedder_dir,
                                                                                 tmp_path):
    """evaluate had no --task-file and never registered a --model's saved tasks: it said "unknown task 'legal'"."""
    suite, task_file = legal_suite
    model = save_legal_model(tiny_embedder_dir, tmp_path / "models" / "legal_eval")
    # the model carries the task; without --task the suite's folders are evaluated, the user task among them
    result = run_cli("evaluate", "--data", str(suite), "--model", f"m1={model}", "--base", "", "--llm", "none",
                     "--out", str(tmp_path / "by_model"))
    assert result.returncode == 0, result.stderr
    assert set(json.loads((tmp_path / "by_model" / "results.json").read_text())["legal_eval"]) == {
        "random", "bm25", "m1"}
    # one model per task ({task} in the path) carries it too
    result = run_cli("evaluate", "--data", str(suite), "--model", f"per_task={tmp_path / 'models' / '{task}'}",
                     "--base", "", "--llm", "none", "--no-baselines", "--task", "legal_eval",
                     "--out", str(tmp_path / "per_task"))
    assert result.returncode == 0, result.stderr
    # a task file registers it for the baselines alone
    result = run_cli("evaluate", "--data", str(suite), "--task-file", str(task_file), "--base", "", "--llm", "none",
                     "--out", str(tmp_path / "by_file"))
    assert result.returncode == 0, result.stderr
    assert "legal_eval" in json.loads((tmp_path / "by_file" / "results.json").read_text())
    # neither: refused before anything is written, saying how the task becomes known
    result = run_cli("evaluate", "--data", str(suite), "--base", "", "--llm", "none", "--out", str(tmp_path / "none"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown task 'legal_eval'" in result.stderr and "--task-file" in result.stderr
    assert not (tmp_path / "none").exists()


def test_a_user_task_with_answers_gets_the_llm_metric_and_its_prompt_items(legal_suite, tiny_embedder_dir,
                                                                            tiny_lm_dir, tmp_path):
    """A user task's reward template went unused: retrieval metrics only, and --prompt-items refused it."""
    suite, task_file = legal_suite
    runs = {}
    for items in ("3", "1"):
        out = tmp_path / f"items{items}"
        result = evaluate(suite, out, tiny_embedder_dir, tiny_lm_dir, "--task-file", str(task_file),
                          *(["--prompt-items", f"legal_eval={items}"] if items == "1" else []))
        assert result.returncode == 0, result.stderr
        runs[items] = json.loads((out / "results.json").read_text())["legal_eval"]["tiny"]
        assert "| tiny |" in (out / "results.md").read_text() and "legal_eval ndcg@10" in result.stdout
    assert {"gold_loglik", "ndcg@10"} <= set(runs["3"]) and runs["3"]["gold_loglik"] != runs["1"]["gold_loglik"]


def test_prompt_items_given_twice_or_without_an_llm_is_refused(qa_suite, tmp_path):
    """The last of two values was kept without a word, and --prompt-items was taken silently with --llm none."""
    from typer.testing import CliRunner

    from llm_embedder.cli import app
    from llm_embedder.cli.evaluate import parse_prompt_items

    with pytest.raises(ValueError, match=r"--prompt-items gives qa twice \(qa=2, then qa=3\); give it once"):
        parse_prompt_items(["qa=2", "qa=3"])
    result = CliRunner().invoke(app, ["evaluate", "--data", str(qa_suite), "--llm", "none", "--prompt-items", "qa=2",
                                      "--out", str(tmp_path / "out")])
    assert "--prompt-items sets what the LLM's prompt holds, and --llm none gives no LLM" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_base_none_leaves_out_the_base_rows_and_nothing_to_evaluate_is_refused(qa_suite, tiny_embedder_dir, tmp_path):
    """--base none was refused as a missing model folder (--base '' was the way), and with no system, no base and
    --no-baselines the command wrote an empty table."""
    from typer.testing import CliRunner

    from llm_embedder.cli import app

    command = ["evaluate", "--data", str(qa_suite), "--llm", "none", "--no-baselines"]
    result = CliRunner().invoke(app, [*command, "--base", "none", "--model", f"tiny={tiny_embedder_dir}", "--out",
                                      str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    assert set(json.loads((tmp_path / "one" / "results.json").read_text())["qa"]) == {"tiny"}
    for no_base in ("none", ""):
        result = CliRunner().invoke(app, [*command, "--base", no_base, "--out", str(tmp_path / "two")])
        assert isinstance(result.exception, ValueError), result.output
        assert str(result.exception).startswith("nothing to evaluate: --base none and --no-baselines leave no rows")
    assert not (tmp_path / "two").exists()


@pytest.mark.parametrize(("device", "where"), [(None, "and without --device this machine's CUDA is used"),
                                               ("cuda", "not --device cuda")])
def test_fast_on_cuda_is_refused_before_anything_runs(qa_suite, tiny_embedder_dir, tmp_path, monkeypatch, device,
                                                      where):
    """evaluate --fast on a CUDA machine ran the baselines, then an embedder refused fast='bf16' naming its
    parameter. A CUDA device is pretended, as the device checks' tests do."""
    import torch
    from typer.testing import CliRunner

    from llm_embedder.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["evaluate", "--data", str(qa_suite), "--model", f"tiny={tiny_embedder_dir}",
                                      "--llm", "none", "--out", str(out), "--fast",
                                      *(["--device", device] if device else [])])
    assert isinstance(result.exception, ValueError), result.output
    assert str(result.exception) == (f"--fast is for CPU, {where} (on CUDA the embedders run in fp16 and the LLM "
                                     "in bf16 already): drop --fast, or give --device cpu")
    assert not out.exists()


def test_a_bad_split_or_corpus_is_refused_before_the_llm_or_any_model_loads(qa_suite, tiny_embedder_dir, tmp_path,
                                                                            monkeypatch):
    """evaluate loaded the LLM (SmolLM2: seconds to minutes), then found a bad corpus or split of --data."""
    from typer.testing import CliRunner

    from llm_embedder.cli import app
    from llm_embedder.embedder import Embedder
    from llm_embedder.io import DataError
    from llm_embedder.llm import CausalLM

    def no_loading(*args, **kwargs):
        raise AssertionError("the LLM or an embedder loaded before the data was checked")

    monkeypatch.setattr(CausalLM, "__init__", no_loading)
    monkeypatch.setattr(Embedder, "__init__", no_loading)
    corpus, split = qa_suite / "qa" / "corpus.jsonl", qa_suite / "qa" / "test.jsonl"
    out = tmp_path / "out"
    args = ["evaluate", "--data", str(qa_suite), "--model", f"tiny={tiny_embedder_dir}", "--base", "none",
            "--llm", "smollm2", "--out", str(out)]
    with corpus.open("a") as handle:
        handle.write('{"title": "only title"}\n')
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, DataError), result.output
    assert str(result.exception) == f"{corpus}:4:text: missing or not a string (and no `contents` string)"
    write_jsonl(corpus, [{"id": 0, "text": "Jupiter is the largest planet."}])
    write_jsonl(split, [{"query": "which is the largest planet", "answers": ["Jupiter"], "pos_index": [5]}])
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, DataError), result.output
    assert str(result.exception).startswith(f"{split}:1:pos_index"), str(result.exception)
    assert not out.exists()  # nothing written either
