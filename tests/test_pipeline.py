"""The demo pipeline end to end on tiny models (real data build, reward, training, evaluation), and its resume."""

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from llm_embedder.pipeline import (
    Pipeline,
    PipelineConfig,
    prompt_items,
    run_pipeline,
    sample_keeping,
    seed_mean,
    training_subset,
    verdict,
)

TINY = PipelineConfig(train_records=4, candidates=3, group_size=3, batch_size=2, epochs=1, eval_queries=4,
                      llm_queries=2, max_corpus=20, max_candidates=4, max_length=32, repetition="tool=2")


def test_sample_keeping_keeps_marked_items():
    chosen = sample_keeping(20, [3, 17, 99], 5, random.Random(0))
    assert len(chosen) == 5 and {3, 17} <= set(chosen) and chosen == sorted(chosen)
    assert sample_keeping(3, [], 5, random.Random(0)) == [0, 1, 2]


def test_training_subset_cuts_candidates_and_keeps_the_marked_turn():
    records = [
        {"query": "q", "task": "chat", "query_id": 0, "history": [f"turn {i}" for i in range(10)], "pos_index": [9],
         "answers": ["a"]},
        {"query": "q", "task": "chat", "query_id": 1, "history": ["only one"], "answers": ["a"]},
        {"query": "q", "task": "qa", "query_id": 2, "pos": ["p1", "p2"], "neg": [f"n{i}" for i in range(9)],
         "teacher_scores": [0.0] * 11, "pos_index": [1, 2], "answers": ["a"]},
    ]
    chat, qa = training_subset(records, TINY, "mixed")
    assert len(chat["history"]) == 3 and "turn 9" in chat["history"]
    assert [chat["history"][i] for i in chat["pos_index"]] == ["turn 9"]
    assert "pos_index" not in qa  # corpus ids mean nothing once the candidates are cut
    assert qa["pos"] == ["p1"] and len(qa["neg"]) == 2 and "teacher_scores" not in qa


def test_training_subset_lets_the_llm_rank_further_positives_of_distillation_tasks():
    cfg = PipelineConfig(candidates=8)
    pos, neg = [f"p{i}" for i in range(3)], [f"n{i}" for i in range(7)]
    icl = {"query": "q", "task": "icl", "query_id": 0, "pos": pos, "neg": neg, "answers": ["a"]}
    tool = {**icl, "task": "tool"}
    (icl_subset,) = training_subset([icl], cfg, "icl")
    assert icl_subset["pos"] == ["p0"] and icl_subset["neg"][:2] == ["p1", "p2"]  # scored beside the negatives
    assert len(icl_subset["neg"]) == 7 and set(icl_subset["neg"][2:]) < set(neg)
    (tool_subset,) = training_subset([tool], cfg, "tool")  # contrastive: a further positive is no negative
    assert tool_subset["pos"] == ["p0"] and set(tool_subset["neg"]) == set(neg)


def test_verdict_compares_with_the_better_base_and_task_specific():
    results = {
        "tool": {"base (no instructions)": {"ndcg@5": 0.5}, "base (instructions)": {"ndcg@5": 0.4},
                 "unified": {"ndcg@5": 0.6}, "task-specific": {"ndcg@5": 0.6}},
        "chat": {"base (no instructions)": {"perplexity": 20.0}, "base (instructions)": {"perplexity": 30.0},
                 "unified": {"perplexity": 21.0}, "task-specific": {"perplexity": 22.0}},
    }
    lines = verdict(results)
    assert lines[0].endswith("-> better") and lines[1].endswith("-> NOT better")
    assert lines[-1] == "unified beats the better base variant on 1/2 tasks"
    per_query = {  # paired against the better base: tool's with instructions is ignored
        "tool": {"base (no instructions)": [0.5, 0.4, 0.6], "base (instructions)": [0.0, 0.0, 0.0],
                 "unified": [0.6, 0.5, 0.7]},
        "chat": {"base (no instructions)": [-3.0, -3.1], "unified": [-3.5, -2.8]},
    }
    lines = verdict(results, per_query)
    assert lines[0].endswith("-> better; per query +0.1000 ± 0.0000 ndcg@5 (SE, 3 queries)")
    assert lines[1].endswith("-> NOT better; per query -0.1000 ± 0.4000 gold_loglik (SE, 2 queries, within 2 SE)")
    assert not any(line.startswith("unified - task-specific per query") for line in lines)  # none in per_query
    per_query["tool"]["task-specific"] = [0.7, 0.5, 0.6]
    lines = verdict(results, per_query)
    assert lines[-2] == "unified - task-specific per query (SE): tool +0.0000 ± 0.0577"
    assert lines[-3].endswith(": +2.3% (matches or beats)")  # no SE while chat has no per-query values
    per_query["chat"]["task-specific"] = [-3.2, -3.3]  # differences -0.3, +0.5: SE 0.4 nats
    lines = verdict(results, per_query)
    # relative SEs: tool 0.0577 / 0.6, chat (21/22) x 0.4; the mean's: sqrt(0.0962² + 0.3818²) / 2
    assert lines[-3] == ("unified vs task-specific, mean relative difference on main metrics: +2.3% ± 19.7% (SE) "
                         "(matches or beats)")


def test_verdict_over_training_seeds_judges_their_mean():
    bases = {"base (no instructions)": {"perplexity": 20.0}, "base (instructions)": {"perplexity": 30.0}}
    results = {
        "chat": {**bases, "unified": {"perplexity": 16.0}, "unified (seed 1)": {"perplexity": 24.0},
                 "task-specific": {"perplexity": 20.0}, "task-specific (seed 1)": {"perplexity": 20.0}},
        "tool": {"base (no instructions)": {"ndcg@5": 0.5}, "base (instructions)": {"ndcg@5": 0.4},
                 "unified": {"ndcg@5": 0.6}, "unified (seed 1)": {"ndcg@5": 0.44},
                 "task-specific": {"ndcg@5": 0.5}, "task-specific (seed 1)": {"ndcg@5": 0.5}},
    }
    per_query = {"tool": {"base (no instructions)": [0.5, 0.5], "unified": [0.6, 0.6], "unified (seed 1)": [0.4, 0.48]}}
    mean_results, mean_per_query = seed_mean(results, per_query, ["", " (seed 1)"])
    assert mean_results["chat"]["unified"]["perplexity"] == pytest.approx((16.0 * 24.0) ** 0.5)  # geometric
    assert mean_results["tool"]["unified"] == {"ndcg@5": pytest.approx(0.52)}
    assert not any("seed" in name for systems in mean_results.values() for name in systems)
    assert mean_per_query["tool"]["unified"] == pytest.approx([0.5, 0.54])
    assert "task-specific" not in mean_per_query["tool"]  # no seed has per-query values for it

    lines = verdict(results, per_query, {0: "", 1: " (seed 1)"})
    # seed 0: chat +20%, tool +20%; seed 1: chat -20%, tool -12%
    assert lines[0] == "training seed 0: unified vs task-specific +20.0%, beats the better base on 2/2 tasks"
    assert lines[1] == "training seed 1: unified vs task-specific -16.0%, beats the better base on 0/2 tasks"
    assert lines[2].startswith("mean of 2 training seeds")
    assert lines[4] == ("tool: unified 0.5200 vs best base 0.5000 (ndcg@5) -> better; per query +0.0200 ± 0.0200 "
                        "ndcg@5 (SE, 2 queries, within 2 SE)")
    # the mean: chat 1 - sqrt(16 x 24) / 20 = +2.0%, tool +4%; over seeds: stdev(+20%, -16%) / sqrt(2) = 18%
    assert lines[5] == ("unified vs task-specific, mean relative difference on main metrics: +3.0% ± 18.0% "
                        "(SE over seeds) (matches or beats)")
    assert lines[-1] == "unified beats the better base variant on 2/2 tasks"
    assert verdict(results, per_query, {0: ""}) == verdict(results, per_query)  # one seed: as before


@pytest.mark.integration
def test_pipeline_runs_end_to_end_and_resumes(tiny_embedder_dir, tiny_lm_dir, tmp_path):
    out = tmp_path / "demo"
    console = Console(record=True, width=200)
    results = run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=console, cfg=TINY)
    assert set(results) == {"qa", "icl", "chat", "lrlm", "tool", "convsearch"}
    for task, systems in results.items():
        assert {"unified", "base (instructions)", "base (no instructions)"} <= set(systems), task
        # the tiny LM's flat scores can leave lrlm no example past the 0.1 margin: then it is said, not hidden
        assert "task-specific" in systems or f"{task}: not trained" in console.export_text(), task
    assert all("task-specific" in results[t] for t in ("qa", "tool", "convsearch"))
    assert "perplexity" in results["chat"]["unified"] and "ndcg@5" in results["tool"]["unified"]
    assert (out / "eval" / "results.md").exists() and (out / "eval" / "plots" / "qa.png").exists()
    assert (out / "models" / "unified" / "TRAINING_CARD.md").exists()
    # the embedders' fast mode is part of the evaluation settings, so exact and bf16 results are never mixed
    settings = json.loads((out / "eval" / "settings.json").read_text())
    assert settings.get("embed_fast") == TINY.embed_fast
    # every embedder, the base included, keeps the tokens the models were trained on
    assert settings["embed_max_length"] == TINY.max_length == 32
    assert settings["prompt_items"] == {"icl": TINY.icl_examples} == {"icl": 8}  # the recipe's few-shot 8
    assert not (out / "models" / "unified" / "checkpoints").exists()
    # the same budget: the unified model trains each task for exactly the steps of its task-specific model
    steps = [json.loads(line)["task"] for line in (out / "models" / "unified" / "logs" / "steps.rank0.jsonl").open()]
    for task in results:
        single = out / "models" / "task-specific" / task / "train_config.json"
        expected = json.loads(single.read_text())["max_steps"] if single.exists() else 0
        assert steps.count(task) == expected, task
    # the reference mixture's tool repetition (TINY sets it): its file twice in both models, twice convsearch's steps
    tool, convsearch = (json.loads((out / "models" / "task-specific" / t / "train_config.json").read_text())
                        for t in ("tool", "convsearch"))
    assert len(tool["data"]) == 2 and len(set(tool["data"])) == 1 and tool["max_steps"] == 2 * convsearch["max_steps"]
    scored = sorted((out / "train" / "qa").glob("train.*.jsonl"))
    assert len(scored) == 1 and all("teacher_scores" in json.loads(line) for line in scored[0].open())

    again = Console(record=True, width=200)
    cached = run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=again, cfg=TINY)
    assert cached == results
    # in a fresh run's order, though the cache's JSON holds them sorted
    assert list(cached) == list(results) and all(list(cached[t]) == list(results[t]) for t in results)
    text = again.export_text()
    assert "already trained on these inputs" in text and "(cached)" in text
    check_stamps_follow_the_files(out, tmp_path / "copied" / "demo", tiny_embedder_dir, tiny_lm_dir)

    # a second training seed: its models go to models/seed1/, the first seed's models and results are re-used,
    # and the verdict is that of the two seeds' mean
    seeds = Console(record=True, width=200)
    two = run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=seeds,
                       cfg=TINY.with_overrides({"train_seeds": "2"}))
    seeds_text = seeds.export_text()
    assert seeds_text.count("already trained on these inputs") == 1 + len(
        list((out / "models" / "task-specific").iterdir()))
    seed1 = json.loads((out / "models" / "seed1" / "unified" / "train_config.json").read_text())
    assert seed1["seed"] == 1 and seed1["data"] == json.loads(
        (out / "models" / "unified" / "train_config.json").read_text())["data"]
    for task in results:
        assert two[task]["unified"] == results[task]["unified"], task  # cached, not measured again
        assert "unified (seed 1)" in two[task], task
    assert "training seed 0: unified vs task-specific" in seeds_text and "training seed 1: " in seeds_text
    assert "mean of 2 training seeds" in seeds_text and "unified (seed 1)" in (out / "eval" / "results.md").read_text()
    # back to one seed: seed 1's results stay cached, out of the report and the verdict; so does a system someone
    # evaluated into the demo's folder by hand
    for name in ("results.json", "per_query.json"):  # as `llm-embedder evaluate --out runs/demo/eval` leaves it
        cached = json.loads((out / "eval" / name).read_text())
        cached["qa"]["my scratch"] = cached["qa"]["unified"]
        (out / "eval" / name).write_text(json.dumps(cached))
    one = Console(record=True, width=200)
    assert run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=one, cfg=TINY) == results
    table = (out / "eval" / "results.md").read_text()
    assert "training seed" not in one.export_text() and "seed 1" not in table and "my scratch" not in table
    cache = json.loads((out / "eval" / "results.json").read_text())["qa"]
    assert "unified (seed 1)" in cache and "my scratch" in cache
    # the reference rows: added beside the cached results, then out of the table again when not asked for
    gold = run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=Console(record=True),
                        cfg=TINY.with_overrides({"gold": "true", "teacher": "true"}))
    assert all(gold[task]["gold"]["ndcg@1"] == 1.0 and gold[task]["unified"] == results[task]["unified"]
               for task in results)
    assert {task for task in gold if "teacher" in gold[task]} == {"chat", "lrlm"}
    assert "| gold |" in (out / "eval" / "results.md").read_text()
    assert "| teacher |" in (out / "eval" / "results.md").read_text()
    assert run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=one, cfg=TINY) == results
    assert "| gold |" not in (out / "eval" / "results.md").read_text()
    assert "| teacher |" not in (out / "eval" / "results.md").read_text()
    # a torn model stamp in the evaluation dir (say, a kill while it was written) means unknown models: the
    # trained models are measured again rather than the run stopping on it
    (out / "eval" / "models.json").write_text('{"unified": {"da')
    sentinel = json.loads((out / "eval" / "results.json").read_text())
    sentinel["qa"]["unified (seed 1)"]["stale"] = 1.0
    (out / "eval" / "results.json").write_text(json.dumps(sentinel))
    torn = run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=Console(record=True),
                        cfg=TINY.with_overrides({"train_seeds": "2"}))
    assert "stale" not in torn["qa"]["unified (seed 1)"] and torn["tool"] == two["tool"]
    assert json.loads((out / "eval" / "models.json").read_text())["unified (seed 1)"] is not None
    # the base rows follow the base model: measured with another one (another --base under the same row names),
    # they are measured again, while the trained models' results stay cached
    versions = json.loads((out / "eval" / "versions.json").read_text())
    versions["qa"]["base (instructions)"] = [["model.safetensors", 1, 1]]
    (out / "eval" / "versions.json").write_text(json.dumps(versions))
    sentinel = json.loads((out / "eval" / "results.json").read_text())
    for name in ("base (instructions)", "unified"):
        sentinel["qa"][name]["stale"] = 1.0
    (out / "eval" / "results.json").write_text(json.dumps(sentinel))
    rebased = run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=Console(record=True),
                           cfg=TINY.with_overrides({"train_seeds": "2"}))
    assert "stale" not in rebased["qa"]["base (instructions)"] and rebased["qa"]["unified"]["stale"] == 1.0

    dev = Console(record=True, width=200)
    dev_results = run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=dev,
                               cfg=TINY.with_overrides({"split": "dev"}))
    assert set(dev_results) == set(results) and (out / "eval-dev" / "results.md").exists()
    dev_text = dev.export_text()
    assert "already trained on these inputs" in dev_text and "(dev split)" in dev_text
    assert json.loads((out / "eval-dev" / "settings.json").read_text())["split"] == "dev"

    # a dev run with another lr retrains the models: the test split's cached results of the old ones are stale
    sentinel = json.loads((out / "eval" / "results.json").read_text())
    sentinel["qa"]["unified"]["stale"] = 1.0
    (out / "eval" / "results.json").write_text(json.dumps(sentinel))
    lr = TINY.with_overrides({"lr": "3e-4"})
    run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=Console(record=True),
                 cfg=lr.with_overrides({"split": "dev"}))
    retrained = run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=Console(record=True),
                             cfg=lr)
    assert "stale" not in retrained["qa"]["unified"]
    assert retrained["qa"]["bm25"] == results["qa"]["bm25"]  # the baselines did not change

    # more records per task: only the new ones go to the LLM, the first four keep their scores
    grown = Pipeline(out, TINY.with_overrides({"train_records": "6"}), base=str(tiny_embedder_dir),
                     llm=str(tiny_lm_dir), console=Console(record=True, width=200))
    files = grown.score(sorted(results))
    grown_text = grown.console.export_text()
    assert "qa: 6 records scored" in grown_text and "4 of them re-used from an earlier subset" in grown_text
    first = [json.loads(line) for line in scored[0].open()]
    assert [json.loads(line) for line in files["qa"].open()][:4] == first

    # chat without instructions: only the unified model and chat's task-specific model train again, and the
    # unified model retrieves chat plain (its saved prompt) and the other tasks with their instructions
    plain = Console(record=True, width=200)
    run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=plain,
                 cfg=lr.with_overrides({"plain_tasks": "chat", "split": "dev"}))
    kept = [line for line in plain.export_text().splitlines() if "already trained on these inputs" in line]
    assert len(kept) == len(list((out / "models" / "task-specific").iterdir())) - 1
    assert not any(line.split(":")[0].endswith(("/unified", "/chat")) for line in kept)
    assert json.loads((out / "models" / "unified" / "train_config.json").read_text())["plain_tasks"] == ["chat"]
    assert json.loads((out / "models" / "task-specific" / "chat" / "train_config.json").read_text())[
        "plain_tasks"] == ["chat"]
    assert json.loads((out / "models" / "task-specific" / "qa" / "train_config.json").read_text())["plain_tasks"] == []
    from llm_embedder.embedder import Embedder

    unified = Embedder(out / "models" / "unified", device="cpu")
    assert unified.instruction("chat", "key") == "" and unified.instruction("qa", "key") != ""


def check_stamps_follow_the_files(out, copy, tiny_embedder_dir, tiny_lm_dir):
    """A model's stamp holds each training file's path inside the run dir and its digest: a copied run keeps its
    models and results, a model stamped the older way (paths only) is kept while its files are unchanged, and a
    changed file retrains what was made from it."""
    def run(cfg=TINY):
        console = Console(record=True, width=200)
        results = run_pipeline(copy, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=console, cfg=cfg)
        kept = [line.split(":")[0] for line in console.export_text().splitlines() if "already trained" in line]
        return results, {Path(line).name for line in kept}

    def mark_cached_results():
        results = json.loads((copy / "eval" / "results.json").read_text())
        results["qa"]["unified"]["cached"] = 1.0
        (copy / "eval" / "results.json").write_text(json.dumps(results))

    shutil.copytree(out, copy)
    models = [copy / "models" / "unified", *sorted((copy / "models" / "task-specific").iterdir())]
    names = {model.name for model in models}
    mark_cached_results()
    results, kept = run()
    assert kept == names and results["qa"]["unified"]["cached"] == 1.0
    stamp = json.loads((copy / "models" / "task-specific" / "tool" / "pipeline_inputs.json").read_text())
    assert stamp["data"] == [f"train/tool/candidates.jsonl sha256:{stamp['data'][0].split('sha256:')[1]}"] * 2

    def legacy(stamp):  # the stamps written before they held digests: the paths as the run dir spells them
        return {**stamp, "data": [str(copy / entry.split(" sha256:")[0]) for entry in stamp["data"]]}

    for model in models:
        stamp_file = model / "pipeline_inputs.json"
        stamp_file.write_text(json.dumps(legacy(json.loads(stamp_file.read_text()))))
    measured = json.loads((copy / "eval" / "models.json").read_text())
    (copy / "eval" / "models.json").write_text(json.dumps({name: legacy(stamp) if stamp else stamp
                                                           for name, stamp in measured.items()}))
    settings = json.loads((copy / "eval" / "settings.json").read_text())
    assert settings["data"] == "../data"
    (copy / "eval" / "settings.json").write_text(json.dumps({**settings, "data": str((copy / "data").resolve())}))
    results, kept = run()
    assert kept == names and results["qa"]["unified"]["cached"] == 1.0
    assert "sha256:" in json.loads((models[0] / "pipeline_inputs.json").read_text())["data"][0]

    # a legacy stamp whose file changed after it: retrained
    tool = copy / "models" / "task-specific" / "tool" / "pipeline_inputs.json"
    tool.write_text(json.dumps(legacy(json.loads(tool.read_text()))))
    later = tool.stat().st_mtime + 10
    os.utime(copy / "train" / "tool" / "candidates.jsonl", (later, later))
    _, kept = run()
    assert kept == names - {"tool"}

    # other candidates per record: tool's subset changes though its steps do not, so its model trains again
    _, kept = run(TINY.with_overrides({"candidates": "4"}))
    assert "tool" not in kept and "convsearch" not in kept


class Killed(Exception):
    """Stands for the process being killed."""


def test_an_interrupted_training_goes_on_from_its_last_checkpoint(tiny_embedder_dir, tiny_lm_dir, tmp_path,
                                                                   monkeypatch):
    from transformers import TrainerCallback

    import llm_embedder.pipeline as pipeline_module
    import llm_embedder.train.trainer as trainer_module

    class KillAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 1:
                raise Killed

    real_build = trainer_module.build_trainer

    def build_and_kill(config, files):
        trainer = real_build(config, files)
        trainer.add_callback(KillAfterFirstSave())
        return trainer

    monkeypatch.setattr(pipeline_module, "CHECKPOINT_EVERY", 1)
    pipeline = Pipeline(tmp_path / "demo", TINY, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir),
                        console=Console(record=True, width=200))
    files = pipeline.score(pipeline.build_data())
    unified = tmp_path / "demo" / "models" / "unified"
    monkeypatch.setattr(trainer_module, "build_trainer", build_and_kill)
    with pytest.raises(Killed):
        pipeline.train(files)
    assert [p.name for p in (unified / "checkpoints").iterdir()] == ["checkpoint-1"]
    assert not (unified / "pipeline_inputs.json").exists()

    monkeypatch.setattr(trainer_module, "build_trainer", real_build)
    pipeline.train(files)
    assert "models/unified: resuming from checkpoint-1" in pipeline.console.export_text()
    max_steps = json.loads((unified / "train_config.json").read_text())["max_steps"]
    card = (unified / "TRAINING_CARD.md").read_text()
    assert max_steps > 1 and f"Steps: {max_steps} (max {max_steps})" in card and "Resumed from" in card
    assert (unified / "pipeline_inputs.json").exists() and not (unified / "training_inputs.json").exists()
    assert not (unified / "checkpoints").exists()

    # checkpoints left by other inputs (here another lr) are cleared, not refused, and training starts afresh
    monkeypatch.setattr(trainer_module, "build_trainer", build_and_kill)
    other = Pipeline(tmp_path / "demo", TINY.with_overrides({"lr": "3e-4"}), base=str(tiny_embedder_dir),
                     llm=str(tiny_lm_dir), console=Console(record=True, width=200))
    with pytest.raises(Killed):
        other.train(files)
    monkeypatch.setattr(trainer_module, "build_trainer", real_build)
    pipeline.train(files)
    assert "resuming" not in pipeline.console.export_text()  # (the export above cleared the record)
    assert "Resumed from" not in (unified / "TRAINING_CARD.md").read_text()
    assert json.loads((unified / "train_config.json").read_text())["lr"] == TINY.lr


def test_prompt_items_of_a_run_from_its_settings():
    assert prompt_items({"icl_examples": 2}) == {"icl": 2}
    assert prompt_items({}) == {"icl": 4}  # pipeline.json from before the setting: those runs used 4


def test_settings_overrides_are_typed_and_checked():
    cfg = PipelineConfig().with_overrides({"lr": "5e-5", "epochs": "2", "llm_fast": "bf16", "generate": "true"})
    assert (cfg.lr, cfg.epochs, cfg.llm_fast, cfg.generate) == (5e-5, 2, "bf16", True)
    assert isinstance(cfg.epochs, int) and PipelineConfig().lr == 1e-4  # a copy; the preset is untouched
    for bad, message in (({"lr": "fast"}, "needs a number"), ({"epoch": "2"}, "unknown demo setting 'epoch'"),
                         ({"split": "train"}, "test or dev"), ({"generate": "maybe"}, "true or false"),
                         ({"icl_examples": "0"}, "icl_examples must be at least 1"),
                         ({"embed_fast": "int8"}, "embed_fast must be bf16 or none")):
        with pytest.raises(ValueError, match=message):
            PipelineConfig().with_overrides(bad)


@pytest.mark.parametrize(("setting", "text", "message"), [
    ("batch_size", "0", "batch_size must be at least 1, got 0"),
    ("epochs", "0", "epochs must be at least 1, got 0"), ("epochs", "-2", "epochs must be at least 1, got -2"),
    ("epochs", "1.7", "epochs must be a whole number, got '1.7'"),
    ("epochs", "inf", "epochs must be a whole number, got 'inf'"),
    ("epochs", "nan", "epochs must be a whole number, got 'nan'"),
    ("epochs", "none", "epochs needs a number, got 'none'"),
    ("train_seeds", "none", "train_seeds needs a number, got 'none'"),
    ("generate", "none", "generate is true or false, got 'none'"),
    ("lr", "-1", "lr must be a finite number above 0, got -1.0"), ("lr", "0", "lr must be a finite number above 0"),
    ("lr", "nan", "lr must be a finite number above 0, got nan"),
    ("lr", "inf", "lr must be a finite number above 0, got inf"),
    ("temperature", "0", "temperature must be a finite number above 0, got 0.0"),
    ("train_records", "0", "train_records must be at least 1, got 0"),
    ("train_records", "-5", "train_records must be at least 1, got -5"),
    ("candidates", "0", "candidates must be at least 2 (1 positive + negatives), got 0"),
    ("candidates", "1", "candidates must be at least 2"),
    ("group_size", "0", "group_size must be at least 2"),
    ("group_size", "1", "group_size must be at least 2 (1 positive + negatives), got 1"),
    ("max_length", "0", "max_length must be at least 8, got 0"),
    ("eval_queries", "0", "eval_queries must be at least 1, got 0"),
    ("llm_queries", "-1", "llm_queries must be at least 0, got -1"),
    ("max_corpus", "0", "max_corpus must be at least 1, got 0"),
    ("max_candidates", "-1", "max_candidates must be at least 1, got -1"),
    ("seed", "-1", "seed must be at least 0, got -1"),
    ("llm_fast", "bogus", "llm_fast must be auto, bf16, int8 or none, got 'bogus'"),
    ("base_mix", "1", "base_mix must be in [0, 1), got 1.0"),
    ("base_mix", "-0.5", "base_mix must be at least 0, got -0.5"),
])
def test_settings_out_of_range_are_refused_at_once(setting, text, message):
    with pytest.raises(ValueError, match=f"^demo setting {re.escape(message)}"):
        PipelineConfig.preset(False).with_overrides({setting: text})
    with pytest.raises(ValueError, match=f"^demo setting {re.escape(message)}"):
        PipelineConfig.preset(True).with_overrides({setting: text})


def test_settings_at_their_limits_are_accepted():
    from llm_embedder.llm.fast import FAST_MODES

    for quick in (False, True):  # the presets (and TINY) pass their own checks
        assert PipelineConfig.preset(quick) == PipelineConfig.preset(quick).with_overrides({})
    limits = {"batch_size": "1", "epochs": "1.0", "train_records": "1", "candidates": "2", "group_size": "2",
              "max_length": "8", "eval_queries": "1", "llm_queries": "0", "max_corpus": "1", "max_candidates": "1",
              "seed": "0", "lr": "1e-9", "temperature": "0.01", "train_seeds": "1"}
    cfg = PipelineConfig().with_overrides(limits)
    assert (cfg.batch_size, cfg.epochs, cfg.llm_queries, cfg.seed, cfg.lr) == (1, 1, 0, 0, 1e-9)
    assert isinstance(cfg.epochs, int)  # a whole number written as 1.0 is still a count
    for mode in FAST_MODES:  # every mode CausalLM takes (bogus ones are refused above)
        assert PipelineConfig().with_overrides({"llm_fast": mode}).llm_fast == mode
    assert PipelineConfig().with_overrides({"llm_fast": "int8"}).llm_fast == "int8"
    assert PipelineConfig().with_overrides({"plain_tasks": "none", "repetition": "none"}).repeats() == {}
    with pytest.raises(ValueError, match="demo setting epochs must be a whole number, got 1.5"):
        PipelineConfig(epochs=1.5)  # built directly, as well as from --set


def test_a_mistyped_model_stops_the_pipeline_before_any_stage(tiny_embedder_dir, tiny_lm_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="model 'typo' is neither a directory nor a bundled alias"):
        run_pipeline(out, base="typo", llm=str(tiny_lm_dir), console=Console(record=True), cfg=TINY)
    with pytest.raises(FileNotFoundError, match="LLM 'typo' is neither a Hugging Face directory"):
        run_pipeline(out, base=str(tiny_embedder_dir), llm="typo", console=Console(record=True), cfg=TINY)
    assert not out.exists()  # no pipeline.json, no data


@pytest.mark.parametrize(("option", "message"), [
    ("--base", "model 'typo' is neither a directory nor a bundled alias"),
    ("--llm", "LLM 'typo' is neither a Hugging Face directory"),
])
def test_demo_cli_rejects_a_mistyped_model_before_any_work(tmp_path, option, message):
    import subprocess
    import sys

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "llm_embedder", "demo", "--out", str(run), option, "typo"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not run.exists()


def test_the_demo_runs_its_bf16_fast_modes_only_where_the_cpu_has_bf16():
    import torch

    from llm_embedder.llm.fast import cpu_has_bf16

    expected = "bf16" if cpu_has_bf16() and not torch.cuda.is_available() else None
    for name in ("llm_fast", "embed_fast"):
        assert getattr(PipelineConfig(), name) == expected
        assert getattr(PipelineConfig.preset(quick=True), name) == expected
        assert getattr(PipelineConfig().with_overrides({name: "none"}), name) is None  # exact on request


@pytest.mark.parametrize(("setting", "message"), [
    ("lr", "KEY=VALUE"), ("epochs=two", "needs a number"), ("repetition=tools=2", "'tools=2', expected TASK=N"),
    ("repetition=tool=0", "'tool=0', expected TASK=N with N at least 1"),
    ("train_seeds=0", "demo setting train_seeds must be at least 1, got 0"),
    ("plain_tasks=chat,chats", "demo setting plain_tasks: unknown task 'chats'"),
    ("batch_size=0", "demo setting batch_size must be at least 1, got 0"),
    ("epochs=inf", "demo setting epochs must be a whole number, got 'inf'"),
    ("lr=nan", "demo setting lr must be a finite number above 0, got nan"),
])
def test_demo_cli_rejects_a_bad_setting_before_any_work(tmp_path, setting, message):
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "llm_embedder", "demo", "--out", str(run), "--set", setting],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and message in proc.stderr
    assert not run.exists()


def test_a_max_length_beyond_the_base_positions_stops_the_pipeline_before_any_stage(tiny_embedder_dir, tiny_lm_dir,
                                                                                      tmp_path):
    """max_length 1000 on a 512-position model ran data, reward and training, then failed saving the model."""
    import dataclasses

    out = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=Console(record=True),
                     cfg=dataclasses.replace(TINY, max_length=1000))
    assert str(err.value) == (f"demo setting max_length 1000 is more than model {tiny_embedder_dir} can encode: 512 "
                              "positions (max_position_embeddings of its config); give at most 512")
    assert not out.exists()


def test_a_folder_of_other_files_stops_the_pipeline_before_any_stage(tiny_embedder_dir, tiny_lm_dir, tmp_path,
                                                                      monkeypatch):
    """--out holding a user's files is refused untouched (pipeline.json would replace theirs); a run's own passes."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError) as err:
        run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=Console(record=True), cfg=TINY)
    assert str(err.value) == f"--out {out} already holds files that are not a demo run (notes.txt); give a new or " \
                             "empty folder"
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    class Reached(Exception):
        pass

    def reached(self):
        raise Reached

    monkeypatch.setattr(Pipeline, "build_data", reached)
    (out / "pipeline.json").write_text("{}")  # a demo run's folder (README and all): resumed
    with pytest.raises(Reached):
        run_pipeline(out, base=str(tiny_embedder_dir), llm=str(tiny_lm_dir), console=Console(record=True), cfg=TINY)


@pytest.mark.parametrize(("kwargs", "message"), [
    # split="train" ran data, reward and training, then the evaluation refused it
    ({"split": "train"}, "demo setting split must be test or dev, got 'train'"),
    # a string was taken as true
    ({"train_bf16": "false"}, "demo setting train_bf16 must be True or False, got 'false'"),
    ({"interleave_tasks": 0}, "demo setting interleave_tasks must be True or False, got 0"),
    ({"generate": None}, "demo setting generate must be True or False, got None"),
    ({"gold": "yes"}, "demo setting gold must be True or False, got 'yes'"),
    ({"teacher": 1}, "demo setting teacher must be True or False, got 1"),
])
def test_settings_built_directly_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        PipelineConfig(**kwargs)
    assert PipelineConfig(split="dev", train_bf16=False).split == "dev"
