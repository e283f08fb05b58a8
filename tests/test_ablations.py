"""The ablations end to end on a tiny demo run (tiny embedder and LM): four variants trained, evaluated, resumed."""

import json
import re

import pytest
import torch
from rich.console import Console
from test_pipeline import TINY

from llm_embedder.ablations import (
    ABLATIONS,
    LEGACY_STAMP,
    compare,
    drop_stale_results,
    path_signature,
    run_ablations,
    signature,
    systems_for,
)
from llm_embedder.pipeline import run_pipeline
from llm_embedder.train.once import TRAINED_STAMP


def test_missing_run_is_a_clear_error(tmp_path):
    (tmp_path / "pipeline.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="llm-embedder demo"):
        run_ablations(tmp_path, console=Console(record=True))


def test_a_run_file_that_is_not_its_json_is_named(tmp_path):
    from llm_embedder.ablations import read_run
    from llm_embedder.io import DataError

    config = tmp_path / "models" / "unified" / "train_config.json"
    config.parent.mkdir(parents=True)
    (tmp_path / "pipeline.json").write_text("not json")
    config.write_text("{}")
    with pytest.raises(DataError, match=r"pipeline.json: not a demo run's JSON"):
        read_run(tmp_path)
    (tmp_path / "pipeline.json").write_text("{}")
    config.write_text("[]")
    with pytest.raises(DataError, match=r"train_config.json: expected a JSON object, got list"):
        read_run(tmp_path)


@pytest.fixture
def no_demo(monkeypatch):
    """Calls of the demo pipeline, recorded instead of run (the real one takes half an hour)."""
    import llm_embedder.pipeline

    calls = []

    def fake_run_pipeline(run_dir, **kwargs):
        calls.append((run_dir, kwargs))
        raise RuntimeError("the demo pipeline would run here")

    monkeypatch.setattr(llm_embedder.pipeline, "run_pipeline", fake_run_pipeline)
    return calls


def test_a_run_without_a_demo_is_an_error_unless_quick(tmp_path, no_demo):
    typo = tmp_path / "dmeo"
    message = (f"{typo} holds no demo run (no pipeline.json); run `llm-embedder demo --out {typo}` first, "
               "or pass --quick to make a quick one")
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
        run_ablations(typo, console=Console(record=True))
    assert not no_demo and not typo.exists()
    with pytest.raises(RuntimeError, match="the demo pipeline would run here"):  # --quick: the quick demo there
        run_ablations(typo, quick=True, base="b", llm="l", console=Console(record=True))
    assert no_demo == [(typo, {"quick": True, "base": "b", "llm": "l", "console": no_demo[0][1]["console"]})]


def test_ablate_cli_refuses_a_run_without_a_demo(tmp_path, no_demo):
    from typer.testing import CliRunner

    from llm_embedder.cli import app

    typo = tmp_path / "dmeo"
    result = CliRunner().invoke(app, ["ablate", "--run", str(typo)])
    assert result.exit_code != 0 and isinstance(result.exception, FileNotFoundError)
    assert str(result.exception).startswith(f"{typo} holds no demo run (no pipeline.json)")
    assert not no_demo and not typo.exists()
    assert "unless --quick" in " ".join(CliRunner().invoke(app, ["ablate", "--help"]).output.split())


def test_a_mistyped_llm_stops_the_ablations_before_training(tmp_path, no_demo):
    (tmp_path / "pipeline.json").write_text(json.dumps({"llm_queries": 4}))
    (tmp_path / "models" / "unified").mkdir(parents=True)
    (tmp_path / "models" / "unified" / "train_config.json").write_text(json.dumps({"data": [], "base": "minilm"}))
    with pytest.raises(FileNotFoundError, match="LLM 'typo' is neither a Hugging Face directory"):
        run_ablations(tmp_path, llm="typo", console=Console(record=True))
    assert not (tmp_path / "ablations").exists()


def test_compare_names_worse_and_not_worse():
    results = {"tool": {"unified": {"ndcg@5": 0.5}, "w/o instructions": {"ndcg@5": 0.4},
                        "w/o LLM reward": {"ndcg@5": 0.6}}}
    (line,) = compare(results)
    assert "w/o LLM reward 0.6000 (not worse)" in line and "w/o instructions 0.4000 (worse)" in line
    per_query = {"tool": {"unified": [0.5, 0.5, 0.5], "w/o instructions": [0.3, 0.4, 0.5]}}
    (line,) = compare(results, per_query)
    assert "w/o instructions 0.4000 (worse, per query -0.1000 ± 0.0577)" in line
    assert "w/o LLM reward 0.6000 (not worse)" in line  # no per-query values for it: no difference given


@pytest.fixture
def one_thread():
    """One torch thread: on a loaded 2-core machine, tiny models run ~5x faster without thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.integration
def test_ablations_end_to_end_and_resume(tiny_embedder_dir, tiny_lm_dir, tmp_path, one_thread):
    run = tmp_path / "demo"
    run_pipeline(run, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=Console(record=True), cfg=TINY)
    console = Console(record=True, width=200)
    results = run_ablations(run, llm=str(tiny_lm_dir), console=console)

    out = run / "ablations"
    demo = json.loads((run / "eval" / "results.json").read_text())
    unified = json.loads((run / "models" / "unified" / "train_config.json").read_text())
    assert set(results) == set(demo)
    for task, systems in results.items():
        assert {"unified", *ABLATIONS} <= set(systems), task
        assert systems["unified"] == demo[task]["unified"]  # copied: same model, same settings
    for name, (slug, change) in ABLATIONS.items():
        model = out / "models" / slug
        config = json.loads((model / "train_config.json").read_text())
        for key in ("data", "max_steps", "batch_size", "lr", "group_size", "base"):
            assert config[key] == unified[key], (name, key)
        assert all(config[key] == value for key, value in change.items()), name
        assert not (model / "checkpoints").exists()
    card = (out / "models" / "no-instructions" / "TRAINING_CARD.md").read_text()
    assert "instructions: false" in card
    assert "plain KL" in (out / "results.md").read_text() and (out / "plots" / "qa.png").exists()
    assert "| qa | kl_distill |" in (out / "models" / "plain-kl" / "TRAINING_CARD.md").read_text()
    # the instruction-free model is evaluated without instructions, the others with
    models = {name: (out / "models" / slug, "instructions" not in change) for name, (slug, change) in ABLATIONS.items()}
    systems = systems_for(models, str(tiny_embedder_dir), "cpu")
    assert not systems["w/o instructions"]("qa").embedder.use_instructions
    assert systems["w/o LLM reward"]("qa").embedder.use_instructions
    # evaluated with the demo's embedder fast mode, as the copied unified results were
    ablation_settings = json.loads((out / "settings.json").read_text())
    assert ablation_settings.get("embed_fast") == TINY.embed_fast
    assert ablation_settings["embed_max_length"] == TINY.max_length  # the demo's training length, as its eval
    fast = systems_for(models, str(tiny_embedder_dir), "cpu", fast="bf16")
    assert fast["w/o LLM reward"]("qa").embedder.fast == "bf16"
    assert systems_for(models, str(tiny_embedder_dir), "cpu", max_length=12)["w/o LLM reward"](
        "qa").embedder.key_max_length == 12

    assert not drop_stale_results(out, json.loads((run / "pipeline.json").read_text()))
    # the gold row changes nothing here, nor does a setting added since with its default value
    assert not drop_stale_results(out, {**json.loads((run / "pipeline.json").read_text()), "gold": True})
    stored = json.loads((out / "pipeline.json").read_text())
    (out / "pipeline.json").write_text(json.dumps({k: v for k, v in stored.items() if k != "plain_tasks"}))
    assert not drop_stale_results(out, json.loads((run / "pipeline.json").read_text()))
    (out / "pipeline.json").write_text(json.dumps({**stored, "retired_setting": 1}))
    assert drop_stale_results(out, json.loads((run / "pipeline.json").read_text()))
    (out / "results.json").write_text(json.dumps(results))
    assert drop_stale_results(out, {**json.loads((run / "pipeline.json").read_text()), "eval_queries": 1})
    assert not any(json.loads((out / "results.json").read_text()).values())
    drop_stale_results(out, json.loads((run / "pipeline.json").read_text()))
    (out / "results.json").write_text(json.dumps(results))

    again = Console(record=True, width=200)
    assert run_ablations(run, llm=str(tiny_lm_dir), console=again) == results
    assert again.export_text().count("already trained on these inputs") == len(ABLATIONS)
    # a model stamped the way the ablations did before they shared train.once is kept, not retrained
    legacy = out / "models" / "no-instructions"
    inputs = json.loads((legacy / TRAINED_STAMP).read_text())
    (legacy / TRAINED_STAMP).unlink()
    (legacy / LEGACY_STAMP).write_text(json.dumps({"inputs": inputs, "done": True}))

    # the dev split: the same models, evaluated beside the demo's dev results in ablations-dev
    run_pipeline(run, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=Console(record=True),
                 cfg=TINY.with_overrides({"split": "dev"}))
    dev = Console(record=True, width=200)
    dev_results = run_ablations(run, llm=str(tiny_lm_dir), split="dev", console=dev)
    assert dev.export_text().count("already trained on these inputs") == len(ABLATIONS)
    assert json.loads((legacy / TRAINED_STAMP).read_text()) == inputs and not (legacy / LEGACY_STAMP).exists()
    assert json.loads((run / "ablations-dev" / "settings.json").read_text())["split"] == "dev"
    demo_dev = json.loads((run / "eval-dev" / "results.json").read_text())
    assert all(dev_results[t]["unified"] == demo_dev[t]["unified"] for t in demo_dev)
    assert all(set(ABLATIONS) <= set(systems) for systems in dev_results.values())
    assert run_ablations(run, llm=str(tiny_lm_dir), console=Console(record=True)) == results  # test kept
    with pytest.raises(ValueError, match="split must be test or dev"):
        run_ablations(run, split="train", console=Console(record=True))

    # a model stamped with its training files' paths, as before stamps named them within the run, is kept
    by_path = out / "models" / "plain-kl"
    settings = json.loads((by_path / TRAINED_STAMP).read_text())["settings"]
    settings["data"] = json.loads((run / "models" / "unified" / "train_config.json").read_text())["data"]
    (by_path / TRAINED_STAMP).write_text(json.dumps(path_signature(settings)))
    again = Console(record=True, width=200)
    assert run_ablations(run, llm=str(tiny_lm_dir), console=again) == results
    assert again.export_text().count("already trained on these inputs") == len(ABLATIONS)
    assert json.loads((by_path / TRAINED_STAMP).read_text()) == signature(settings)  # restamped
    assert all(name.startswith("train/") for name in signature(settings)["data_sha256"])
    # a run moved elsewhere keeps its ablated models: the stamps name the training files within the run
    moved = tmp_path / "moved"
    run.rename(moved)
    again = Console(record=True, width=200)
    assert run_ablations(moved, llm=str(tiny_lm_dir), console=again) == results
    assert again.export_text().count("already trained on these inputs") == len(ABLATIONS)


def test_training_files_are_found_in_a_moved_run(tmp_path):
    from llm_embedder.ablations import locate_training_files

    run = tmp_path / "copy"
    (run / "train" / "qa").mkdir(parents=True)
    (run / "train" / "qa" / "train.abc.jsonl").write_text("{}\n")
    kept = tmp_path / "elsewhere.jsonl"
    kept.write_text("{}\n")
    recorded = ["runs/demo/train/qa/train.abc.jsonl", str(kept), "runs/demo/train/icl/train.gone.jsonl"]
    assert locate_training_files(recorded, run) == [
        str(run / "train" / "qa" / "train.abc.jsonl"), str(kept), "runs/demo/train/icl/train.gone.jsonl"
    ]


def test_the_demo_s_rows_are_shared_only_with_an_evaluation_under_its_settings(tmp_path):
    """ablate copied the demo's unified and base rows whatever they were measured under: with another LLM, or a
    dev run's other query count, the table compared rows measured two ways."""
    from llm_embedder.ablations import seed_shared_results
    from llm_embedder.evaluate.run import RESULTS_FILE, SETTINGS_FILE

    demo, out = tmp_path / "eval", tmp_path / "ablations"
    demo.mkdir()
    (demo / SETTINGS_FILE).write_text(json.dumps({"llm": "smollm2", "max_queries": 60}))
    (demo / RESULTS_FILE).write_text(json.dumps({"tool": {"unified": {"ndcg@5": 0.5}, "bm25": {"ndcg@5": 0.4}}}))
    seed_shared_results(demo, out)  # a new ablation cache: the rows come with the settings they were measured under
    assert json.loads((out / RESULTS_FILE).read_text()) == {"tool": {"unified": {"ndcg@5": 0.5}}}
    assert json.loads((out / SETTINGS_FILE).read_text()) == {"llm": "smollm2", "max_queries": 60}
    other = tmp_path / "other"
    other.mkdir()
    (other / SETTINGS_FILE).write_text(json.dumps({"llm": "tinylm2", "max_queries": 60}))
    seed_shared_results(demo, other)  # an ablation cache measured with another LLM gets nothing
    assert not (other / RESULTS_FILE).exists()
