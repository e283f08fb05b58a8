"""Bad training input fails early with one clear line: config-file values, option ranges, the device, mining."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llm_embedder.cli import app
from llm_embedder.train import trainer as trainer_module
from llm_embedder.train.config import TrainConfig, read_config_file
from llm_embedder.train.mine import mine_negatives

runner = CliRunner()


def test_config_file_reads_numbers_yaml_leaves_as_strings(tmp_path: Path) -> None:
    """PyYAML reads ``5e-6`` (no dot) as a string: numeric fields convert it; booleans and strings stay."""
    path = tmp_path / "c.yaml"
    path.write_text("lr: 5e-6\ntemperature: 5e-2\nmax-steps: 1e4\nseed: '7'\nfp16: false\nbase: minilm\n"
                    "out: 2024\ndata: some/dir\ndevice: cpu\n")
    config = TrainConfig.from_sources(path)
    assert (config.lr, config.temperature, config.max_steps, config.seed) == (5e-6, 5e-2, 10_000, 7)
    assert isinstance(config.max_steps, int) and isinstance(config.lr, float)
    assert (config.fp16, config.base, config.out, config.data, config.device) == (False, "minilm", "2024",
                                                                                  ["some/dir"], "cpu")


def test_config_file_keys_are_the_command_line_options(tmp_path: Path) -> None:
    """`train --help` says the file's keys mirror its options: --plain-task, --task-file, --no-instructions."""
    path = tmp_path / "c.yaml"
    path.write_text("plain-task: [chat]\ntask-file: tasks.yaml\nno-instructions: true\nno-homogeneous: false\n")
    assert read_config_file(path) == {"plain_tasks": ["chat"], "task_files": ["tasks.yaml"], "instructions": False,
                                      "homogeneous": True}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("instructions: true\nno-instructions: true\n", "c.yaml: no-instructions: instructions is given twice"),
        ("lr: 1e-3\nbatch_size: 2\nlr: 0.5\n", "c.yaml:3:1: cannot parse YAML: 'lr' is given twice (first on line 1)"),
        ("loss_override: {qa: kl_distill, qa: contrastive}\n",
         "c.yaml:1:33: cannot parse YAML: 'qa' is given twice (first on line 1)"),
        ("no-lr: 1\n", "c.yaml: unknown option 'no-lr'; known: "),
        ("lr: abc\n", "c.yaml: lr: expected a number, got 'abc'"),
        ("batch_size: two\n", "c.yaml: batch_size: expected a whole number, got 'two'"),
        ("max-steps: 2.5\n", "c.yaml: max-steps: expected a whole number, got 2.5"),
        ("temperature: .nan\n", "c.yaml: temperature: expected a finite number, got nan"),
        ("seed: -1\n", "c.yaml: seed: must be at least 0, got -1"),
        ("query_max_length: 0\n", "c.yaml: query_max_length: must be at least 1, got 0"),
        ("fp16: maybe\n", "c.yaml: fp16: expected true or false, got 'maybe'"),
        ("lr: true\n", "c.yaml: lr: expected a number, got True"),
        ("base: [a, b]\n", "c.yaml: base: expected a string, got ['a', 'b']"),
        ("lr: 1\ndata: " + "[" * 100_000 + "]" * 100_000 + "\n", "c.yaml:2: nested too deeply"),
        ("lr: 1\nmax_steps: " + "9" * 5000 + "\n", "c.yaml:2: integer too large (more than 4300 digits)"),
        ("lr: 1\nbase: a\x00b\n", "c.yaml:2:8: cannot parse YAML: NUL not allowed in YAML"),
    ],
)
def test_bad_config_values_name_the_file_and_key(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        read_config_file(path)
    assert str(err.value).startswith(f"{tmp_path}/{message}")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_max_length": 0}, "query_max_length: must be at least 1, got 0"),
        ({"key_max_length": -5}, "key_max_length: must be at least 1, got -5"),
        ({"seed": -1}, "seed: must be at least 0, got -1"),
        ({"seed": 2**32}, "seed: must be at most 2**32 - 1, got 4294967296"),
        ({"lr": 0}, "lr: must be greater than 0, got 0"),
        ({"batch_size": "two"}, "batch_size: expected a whole number, got 'two'"),
        ({"self_paced": "yes"}, "self_paced: expected true or false, got 'yes'"),
    ],
)
def test_config_values_are_checked_in_python_too(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        TrainConfig(**kwargs)
    assert str(err.value) == message


def test_bad_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lr: 5e-6\nbatch_size: two\n")
    result = subprocess.run(
        [sys.executable, "-m", "llm_embedder", "train", "--config", str(path), "--data", str(tmp_path),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {path}: batch_size: expected a whole number, got 'two'"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--query-max-length", "0"], "--query-max-length"),
        (["--key-max-length", "-5"], "--key-max-length"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**32)], "--seed"),
        (["--batch-size", "0"], "--batch-size"),
        (["--group-size", "1"], "--group-size"),
        (["--max-steps", "0"], "--max-steps"),
        (["--save-steps", "0"], "--save-steps"),
    ],
)
def test_train_option_ranges_name_the_option(tmp_path: Path, args: list[str], option: str) -> None:
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *args],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("top_k", ["0", "-2"])
def test_mine_top_k_must_be_positive(tmp_path: Path, top_k: str) -> None:
    result = runner.invoke(app, ["mine", "-m", "minilm", "--data", str(tmp_path / "d.jsonl"), "--corpus",
                                 str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o.jsonl"), "--top-k", top_k],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert "Invalid value for '--top-k'" in result.output
    with pytest.raises(ValueError, match=f"top_k must be a whole number of at least 1, got {top_k}"):
        mine_negatives("minilm", tmp_path / "d.jsonl", tmp_path / "c.jsonl", tmp_path / "o.jsonl", top_k=int(top_k))


def test_bad_device_fails_before_data_or_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args, **kwargs):
        raise AssertionError("data read or model loaded before the device was checked")

    monkeypatch.setattr(trainer_module, "load_training_files", no_loading)
    config = TrainConfig(data=[str(tmp_path / "missing")], out=str(tmp_path / "out"), device="gpu")
    with pytest.raises(ValueError) as err:
        trainer_module.train(config)
    assert str(err.value) == "device 'gpu': not a torch device (cpu, cuda, cuda:N, mps)"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device 'cuda': CUDA is not available on this machine$"):
            trainer_module.train(TrainConfig(data=["x"], out=str(tmp_path / "out"), device="cuda"))
    assert not (tmp_path / "out").exists()


def test_mine_checks_the_device_before_reading(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"query": "q", "task": "qa", "pos": ["p"]}) + "\n")
    with pytest.raises(ValueError, match="^device 'gpu': not a torch device"):
        mine_negatives("minilm", data, tmp_path / "missing.jsonl", tmp_path / "o.jsonl", device="gpu")


def test_out_of_another_kind_is_refused_before_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An --out holding files that no training run wrote (a base model, a data folder) is refused, untouched."""
    def no_loading(*args, **kwargs):
        raise AssertionError("data read before the output folder was checked")

    monkeypatch.setattr(trainer_module, "load_training_files", no_loading)
    model = tmp_path / "models" / "minilm"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    with pytest.raises(FileExistsError) as err:
        trainer_module.train(TrainConfig(data=[str(tmp_path / "d")], out=str(model), device="cpu"))
    assert str(err.value) == (f"--out {model} already holds files that are not a training run (config.json, "
                              "model.safetensors); give a new or empty folder")
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]
    result = subprocess.run(
        [sys.executable, "-m", "llm_embedder", "train", "--data", str(tmp_path / "d"), "--out", str(model)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {err.value}"


@pytest.mark.parametrize("kept", ["logs", "checkpoints", "train_config.json", "run_inputs.json",
                                  "training_inputs.json", ".DS_Store", None])
def test_out_a_run_started_or_empty_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              kept: str | None) -> None:
    """A folder a run (or the demo) started, an empty one, or one with hidden files only, passes the check."""
    class Checked(Exception):
        pass

    def reached(*args, **kwargs):
        raise Checked

    monkeypatch.setattr(trainer_module, "load_training_files", reached)
    out = tmp_path / "run"
    out.mkdir()
    if kept in ("logs", "checkpoints"):
        (out / kept).mkdir()
        (out / "README.md").write_text("a model card")  # beside a run's own folder, any file is its own
    elif kept:
        (out / kept).write_text("{}")
    with pytest.raises(Checked):
        trainer_module.train(TrainConfig(data=[str(tmp_path / "d")], out=str(out), device="cpu"))


def test_a_run_into_a_folder_another_run_is_writing_is_refused(tmp_path: Path) -> None:
    from llm_embedder.io import RunInProgressError, exclusive

    out = tmp_path / "run"
    with exclusive(out / trainer_module.LOCK_FILE, "x"):
        with pytest.raises(RunInProgressError, match=r"the training run .*run is being written by another run"):
            trainer_module.train(TrainConfig(data=[str(tmp_path / "d")], out=str(out), device="cpu"))


@pytest.mark.parametrize("option", ["query_max_length", "key_max_length"])
def test_max_length_beyond_the_base_positions_fails_before_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 tiny_embedder_dir: Path, option: str) -> None:
    """A max length the base model has no positions for fails before training (saving refused it, half-saved)."""
    def no_loading(*args, **kwargs):
        raise AssertionError("data read before the max length was checked")

    monkeypatch.setattr(trainer_module, "load_training_files", no_loading)
    config = TrainConfig(data=[str(tmp_path / "d")], out=str(tmp_path / "out"), base=str(tiny_embedder_dir),
                         device="cpu", **{option: 1000})
    with pytest.raises(ValueError) as err:
        trainer_module.train(config)
    assert str(err.value) == (f"{option} 1000 is more than model {tiny_embedder_dir} can encode: 512 positions "
                              "(max_position_embeddings of its config); give at most 512")
    assert not (tmp_path / "out").exists()
    result = subprocess.run(
        [sys.executable, "-m", "llm_embedder", "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
         "--query-max-length", "1000"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --query-max-length 1000 is more than model minilm can encode: 512 "
                                     "positions (max_position_embeddings of its config); give at most 512")


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    """read_text's UnicodeDecodeError reached the command line without the file or line."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"max_steps: 1\nbatch_size: 2\nout: caf\xe9\n")
    with pytest.raises(ValueError) as err:
        read_config_file(path)
    assert str(err.value) == f"{path}:3: not valid UTF-8 (byte 0xe9 at column 9)"


HUGE = "1234567890123456789012345678901234567890"  # 40 digits


@pytest.mark.parametrize("name", ["max_steps", "batch_size", "group_size", "save_steps", "logging_steps",
                                  "save_total_limit", "self_paced_interval", "query_max_length"])
def test_a_whole_number_setting_has_an_upper_bound(tmp_path: Path, name: str) -> None:
    """A 40-digit max_steps was taken: training ran, its progress line saying ~1e35 hours left."""
    with pytest.raises(ValueError) as err:
        TrainConfig(**{name: int(HUGE)})
    assert str(err.value) == f"{name}: must be at most 2**31 - 1, got {HUGE}"
    path = tmp_path / "c.yaml"
    path.write_text(f"lr: 1\n{name}: {HUGE}\n")
    with pytest.raises(ValueError) as err:
        read_config_file(path)
    assert str(err.value) == f"{path}: {name}: must be at most 2**31 - 1, got {HUGE}"
    assert TrainConfig(**{name: 2**31 - 1}).__dict__[name] == 2**31 - 1


def test_whole_number_options_are_bounded_before_anything_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """--max-steps and every other whole-number option took 40 digits (search -k failed once the model had loaded,
    'Maximum allowed dimension exceeded'); each is refused naming the option."""
    from llm_embedder.embedder import Embedder
    from llm_embedder.retriever import Retriever

    def no_loading(*args, **kwargs):
        raise AssertionError("a model loaded")

    monkeypatch.setattr(Embedder, "__init__", no_loading)
    monkeypatch.setattr(Retriever, "load", no_loading)
    commands = {
        "train": ["train", "--data", str(tmp_path), "--out", str(tmp_path / "out")],
        "encode": ["encode", str(tmp_path / "t.txt")],
        "index": ["index", "--task", "qa", "--corpus", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "i")],
        "search": ["search", "q", "--index", str(tmp_path / "i")],
        "mine": ["mine", "-m", "minilm", "--data", str(tmp_path / "d.jsonl"), "--corpus", str(tmp_path / "c.jsonl"),
                 "--out", str(tmp_path / "o.jsonl")],
        "evaluate": ["evaluate", "--data", str(tmp_path)],
    }
    for command, option in [("train", "--max-steps"), ("train", "--batch-size"), ("train", "--group-size"),
                            ("train", "--save-steps"), ("train", "--query-max-length"), ("encode", "--batch-size"),
                            ("encode", "--max-length"), ("index", "--batch-size"), ("search", "-k"),
                            ("search", "--nprobe"), ("mine", "--top-k"), ("evaluate", "--max-queries")]:
        result = runner.invoke(app, [*commands[command], option, HUGE], env={"COLUMNS": "400"})
        assert result.exit_code == 2, (command, option, result.output)
        assert f"Invalid value for '{option}': Input should be less than or equal to 2147483647" in result.output, (
            command, result.output)
    assert list(tmp_path.iterdir()) == []
