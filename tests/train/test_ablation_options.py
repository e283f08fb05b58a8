"""The ablation switches of TrainConfig each change what is computed (tiny model, tiny fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import write_task_file
from typer.testing import CliRunner

from llm_embedder.train import trainer as trainer_module
from llm_embedder.train.card import read_step_log
from llm_embedder.train.config import TrainConfig, parse_loss_override, read_config_file
from llm_embedder.train.examples import hard_label_record, load_training_files
from llm_embedder.train.losses import ContrastiveLoss, KLDistillLoss, StableDistillLoss
from llm_embedder.train.sampler import mixed_batches

SMALL = dict(max_steps=3, batch_size=4, group_size=3, lr=1e-3, save_steps=3, logging_steps=1,
             query_max_length=32, key_max_length=32)


def config(data: Path, out: Path, base: Path, **extra) -> TrainConfig:
    return TrainConfig(data=[str(data)], out=str(out), base=str(base), **{**SMALL, **extra})


def rows(files, per_file: int) -> list[dict]:
    return [{**example, "dataset_name": f.name} for f in files for example in f.examples[:per_file]]


def test_defaults_keep_the_paper_method() -> None:
    cfg = TrainConfig()
    assert cfg.instructions and cfg.homogeneous and not cfg.hard_labels and cfg.loss_override == {}
    assert cfg.loss_for("qa") == "stable_distill" and cfg.loss_for("chat") == "kl_distill"


def test_no_instructions_collates_plain_text(data_dir, tmp_path, tiny_embedder_dir) -> None:
    decoded = {}
    for flag in (True, False):
        cfg = config(data_dir, tmp_path / str(flag), tiny_embedder_dir, instructions=flag)
        files = load_training_files(cfg.data, cfg.group_size, cfg.seed)
        trainer = trainer_module.build_trainer(cfg, files)
        batch = trainer.data_collator(rows(files[:1], 2))  # chat
        tokenizer = trainer.model.tokenizer
        decoded[flag] = (tokenizer.decode(batch["query_input_ids"][0], skip_special_tokens=True),
                         tokenizer.decode(batch["keys_input_ids"][0], skip_special_tokens=True))
    assert decoded[True][0].startswith("embed this dialogue") and decoded[True][1].startswith("embed this historical")
    assert decoded[False] == ("chat question number 0", "chat relevant passage 0")


def test_hard_labels_use_the_labelled_positive_and_the_contrastive_loss(data_dir, tmp_path, tiny_embedder_dir) -> None:
    """The labelled positive where a record has one, else (as the paper's "w/o LLM reward" row) its top-rated
    candidate: records without labels (lrlm's, a reference MSC dialogue's) were dropped, so that model never
    trained on lrlm."""
    chat = data_dir / "chat" / "train.jsonl"
    records = [json.loads(line) for line in chat.read_text().splitlines()]
    records[0]["pos_index"] = [2]  # one record marks its useful turn; the other 7 have none, only teacher scores
    for record in records[1:]:
        record["teacher_scores"] = [0.1 * i for i in range(len(record["history"]))]  # the last turn rated top
    chat.write_text("".join(json.dumps(r) + "\n" for r in records))
    files = {f.task: f for f in load_training_files([data_dir], 3, 0, hard_labels=True)}
    assert files["chat"].unlabelled == 0
    labelled, *top_rated = files["chat"].examples
    assert labelled["keys"][0] == "chat unrelated text 0 1" and "label" not in labelled
    assert [e["keys"][0] for e in top_rated] == [records[i]["history"][-1] for i in range(1, 8)]
    assert hard_label_record({"query": "q", "task": "chat", "history": ["a", "b"]}) is None  # neither: dropped
    lrlm = hard_label_record({"query": "q", "task": "lrlm", "pos": [], "neg": ["a", "b", "c"],
                              "teacher_scores": [0.1, 0.9, 0.2]})
    assert (lrlm["pos"], lrlm["neg"]) == (["b"], ["a", "c"]) and "teacher_scores" not in lrlm
    assert all("label" not in e for e in files["qa"].examples)
    assert all(e["keys"][0] == f"qa relevant passage {i}" for i, e in enumerate(files["qa"].examples))
    default = {f.task: f for f in load_training_files([data_dir], 3, 0)}
    assert "label" in default["qa"].examples[0] and default["chat"].unlabelled == 0

    cfg = config(data_dir, tmp_path / "hard", tiny_embedder_dir, hard_labels=True)
    trainer = trainer_module.build_trainer(cfg, list(files.values()))
    assert trainer.loss and all(isinstance(loss, ContrastiveLoss) for loss in trainer.loss.values())
    card = (trainer_module.train(cfg) / "TRAINING_CARD.md").read_text()
    assert "| chat | contrastive | - | first | random |" in card and "hard_labels: true" in card
    assert "lack of a labelled positive" not in card


def test_loss_override_picks_plain_kl(data_dir, tmp_path, tiny_embedder_dir) -> None:
    cfg = config(data_dir, tmp_path / "kl", tiny_embedder_dir, loss_override={"qa": "kl_distill"})
    files = load_training_files(cfg.data, cfg.group_size, cfg.seed, loss_override=cfg.loss_override)
    trainer = trainer_module.build_trainer(cfg, files)
    by_task = {f.task: trainer.loss[f.name] for f in files}
    assert isinstance(by_task["qa"], KLDistillLoss) and isinstance(by_task["tool"], ContrastiveLoss)
    assert not isinstance(by_task["qa"], StableDistillLoss)
    assert "label" in files[[f.task for f in files].index("qa")].examples[0]
    assert parse_loss_override(["qa=kl_distill", "icl = kl_distill"]) == {"qa": "kl_distill", "icl": "kl_distill"}
    with pytest.raises(ValueError, match="unknown loss"):
        TrainConfig(loss_override={"qa": "kl"})
    with pytest.raises(ValueError, match="TASK=LOSS"):
        parse_loss_override(["qa"])
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("loss-override: [qa=kl_distill]\nhomogeneous: false\n")
    assert read_config_file(yaml_file) == {"loss_override": {"qa": "kl_distill"}, "homogeneous": False}
    yaml_file.write_text("loss_override:\n  qa: 3\n")  # the file is named with its bad loss
    with pytest.raises(ValueError, match=r"train\.yaml: loss_override: qa=3: unknown loss; known: contrastive"):
        read_config_file(yaml_file)


def test_mixed_batch_loss_is_the_count_weighted_mean_of_per_task_losses(data_dir, tmp_path, tiny_embedder_dir):
    cfg = config(data_dir, tmp_path / "mixed", tiny_embedder_dir, homogeneous=False)
    files = load_training_files(cfg.data, cfg.group_size, cfg.seed)
    trainer = trainer_module.build_trainer(cfg, files)
    model = trainer.model.eval()  # no dropout: the two computations must agree exactly
    qa, tool = [f for f in files if f.task == "qa"][0], [f for f in files if f.task == "tool"][0]
    features = rows([qa], 1) + rows([tool], 3)
    inputs = trainer.data_collator(features)
    assert len(inputs["subbatches"]) == 2
    with torch.no_grad():
        mixed = trainer.compute_loss(model, inputs)
        direct = []
        for f, n in ((qa, 1), (tool, 3)):
            sub = trainer.data_collator.collate(rows([f], n))
            sub.pop("dataset_name")
            feats, labels = trainer.collect_features(sub)
            direct.append((n, trainer.loss[f.name](feats, labels)))
    expected = sum(n * loss for n, loss in direct) / 4
    assert torch.allclose(mixed, expected) and not torch.allclose(direct[0][1], direct[1][1])

    # the sampler mixes datasets within a batch, and all examples are drawn once per epoch
    batches = mixed_batches(24, 4, 0, 0)
    assert sorted(i for b in batches for i in b) == list(range(24))
    assert any(len({i // 8 for i in b}) > 1 for b in batches)


def test_mixed_training_runs_and_logs_per_task_losses(data_dir, tmp_path, tiny_embedder_dir) -> None:
    out = trainer_module.train(config(data_dir, tmp_path / "run", tiny_embedder_dir, homogeneous=False,
                                      instructions=False))
    steps = read_step_log(out / "logs" / "steps.rank0.jsonl")
    assert len(steps) == 3 and all(s["task"] == "mixed" and s["task_losses"] for s in steps)
    assert any(len(s["task_losses"]) > 1 for s in steps)
    card = (out / "TRAINING_CARD.md").read_text()
    assert "instructions: false" in card and "batches mix datasets" in card
    # trained without instructions, it is saved without them: used anywhere, it retrieves as it was trained
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts and set(prompts.values()) == {""}
    assert "saved as empty prompts: qa, icl, chat" in card
    with pytest.raises(ValueError, match="self_paced"):
        TrainConfig(homogeneous=False, self_paced=True)


def test_cli_passes_the_ablation_flags(monkeypatch, tmp_path) -> None:
    from llm_embedder.cli.app import app

    seen = {}
    monkeypatch.setattr(trainer_module, "train", lambda cfg: seen.setdefault("cfg", cfg) and tmp_path)
    data = write_task_file(tmp_path / "qa" / "train.jsonl", "qa", 2, scores=True)
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "o"), "--no-instructions",
                                      "--no-homogeneous", "--hard-labels", "--loss-override", "qa=kl_distill",
                                      "--loss-override", "icl=kl_distill", "--temperature", "0.05",
                                      "--plain-task", "chat", "--plain-task", "icl"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert not cfg.instructions and not cfg.homogeneous and cfg.hard_labels and cfg.temperature == 0.05
    assert cfg.loss_override == {"qa": "kl_distill", "icl": "kl_distill"} and cfg.plain_tasks == ["chat", "icl"]


def test_plain_tasks_train_without_their_instructions_and_save_empty_prompts(data_dir, tmp_path,
                                                                              tiny_embedder_dir) -> None:
    from sentence_transformers import SentenceTransformer

    from llm_embedder.embedder import Embedder
    from llm_embedder.tasks import get_task

    cfg = config(data_dir, tmp_path / "plain", tiny_embedder_dir, plain_tasks=["chat"])
    files = load_training_files(cfg.data, cfg.group_size, cfg.seed)
    trainer = trainer_module.build_trainer(cfg, files)
    tokenizer = trainer.model.tokenizer
    by_task = {f.task: f for f in files}
    chat = trainer.data_collator(rows([by_task["chat"]], 2))
    qa = trainer.data_collator(rows([by_task["qa"]], 2))
    assert tokenizer.decode(chat["query_input_ids"][0], skip_special_tokens=True) == "chat question number 0"
    assert tokenizer.decode(qa["query_input_ids"][0], skip_special_tokens=True).startswith("represent this query")

    out = trainer_module.train(cfg)
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["chat.query"] == prompts["chat.key"] == ""
    assert prompts["qa.query"] == get_task("qa").query_instruction
    assert "saved as empty prompts: chat" in (out / "TRAINING_CARD.md").read_text()
    # the trained model retrieves chat plain through our Embedder and through plain sentence-transformers alike
    embedder = Embedder(out, device="cpu")
    assert embedder.instruction("chat", "query") == "" and embedder.instruction("qa", "query") == prompts["qa.query"]
    texts = ["what did we say about the trip?"]
    theirs = SentenceTransformer(str(out), device="cpu").encode(texts, prompt_name="chat.query",
                                                                normalize_embeddings=True)
    np.testing.assert_allclose(embedder.encode_queries(texts, "chat"), theirs, atol=1e-5)
    assert not np.allclose(embedder.encode_queries(texts, "chat"), embedder.encode_queries(texts, "qa"), atol=1e-3)
    # saved again (say, by an export), the model keeps its empty prompts
    embedder.save(tmp_path / "again")
    assert Embedder(tmp_path / "again", device="cpu").instruction("chat", "key") == ""
    assert Embedder(out, device="cpu", use_instructions=False).instruction("qa", "query") == ""
    # trained further with the default settings, it keeps training chat plain (its own prompts win), as it saves
    further = trainer_module.build_trainer(config(data_dir, tmp_path / "further", out), files)
    chat = further.data_collator(rows([by_task["chat"]], 2))
    qa = further.data_collator(rows([by_task["qa"]], 2))
    assert tokenizer.decode(chat["query_input_ids"][0], skip_special_tokens=True) == "chat question number 0"
    assert tokenizer.decode(qa["query_input_ids"][0], skip_special_tokens=True).startswith("represent this query")


def test_unknown_plain_task_is_refused_before_training(data_dir, tmp_path, tiny_embedder_dir) -> None:
    with pytest.raises(ValueError, match="plain_tasks: unknown task 'chats'"):
        trainer_module.train(config(data_dir, tmp_path / "bad", tiny_embedder_dir, plain_tasks=["chats"]))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="plain_tasks: must be a list of task names"):
        TrainConfig(plain_tasks="chat")
