"""ONNX export and the onnx / onnx-int8 Embedder backends, on the tiny random model (seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_embedder.cli import app
from llm_embedder.embedder import Embedder
from llm_embedder.export import EXPORT_FILE, ONNX_DIR, export_onnx

TEXTS = ["who wrote hamlet", "The quick brown fox jumps over the lazy dog. " * 12, "a", "  padded text  ", "Ünïcödé"]


@pytest.fixture(scope="module")
def saved_dir(tiny_embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved by Embedder.save: every task instruction is a named prompt."""
    return tiny_embedder.save(tmp_path_factory.mktemp("saved") / "model")


@pytest.fixture(scope="module")
def exported(saved_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(saved_dir, tmp_path_factory.mktemp("export") / "onnx_model", quantize="int8")


@pytest.mark.parametrize("role", ["query", "key"])
def test_onnx_fp32_matches_torch(exported: Path, role: str):
    torch_vecs = Embedder(exported, device="cpu").encode(TEXTS, "qa", role)
    onnx_vecs = Embedder(exported, backend="onnx").encode(TEXTS, "qa", role)
    assert onnx_vecs.shape == torch_vecs.shape and onnx_vecs.dtype == np.float32
    assert np.abs(onnx_vecs - torch_vecs).max() < 1e-4


def test_onnx_convert_to_tensor(exported: Path):
    import torch

    onnx = Embedder(exported, backend="onnx")
    tensor = onnx.encode_keys(TEXTS, "qa", convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    assert torch.equal(tensor, torch.from_numpy(onnx.encode_keys(TEXTS, "qa")))


def test_int8_close_to_fp32(exported: Path):
    fp32 = Embedder(exported, backend="onnx").encode_keys(TEXTS, "qa")
    int8 = Embedder(exported, backend="onnx-int8").encode_keys(TEXTS, "qa")
    cosine = (fp32 * int8).sum(axis=1)
    assert cosine.min() > 0.98
    assert not np.array_equal(fp32, int8)  # it really is a different (quantized) model


def test_export_carries_pooling_and_prompts(saved_dir: Path, exported: Path):
    info = json.loads((exported / ONNX_DIR / EXPORT_FILE).read_text())
    saved_prompts = json.loads((saved_dir / "config_sentence_transformers.json").read_text())["prompts"]
    assert saved_prompts.items() <= info["prompts"].items() and "qa.query" in saved_prompts
    assert info["pooling"] == "mean" and info["dim"] == 32
    onnx = Embedder(exported, backend="onnx")
    torch_model = Embedder(saved_dir, device="cpu").model
    by_name = onnx.model.encode(TEXTS, prompt_name="qa.query", normalize_embeddings=True)
    reference = torch_model.encode(TEXTS, prompt_name="qa.query", normalize_embeddings=True)
    assert np.abs(by_name - reference).max() < 1e-4
    assert onnx.instruction("qa", "query") == saved_prompts["qa.query"]


def test_cls_pooling_is_honoured(tiny_embedder_dir: Path, tmp_path: Path):
    from sentence_transformers import SentenceTransformer, models

    st = SentenceTransformer(str(tiny_embedder_dir), device="cpu")
    cls_model = SentenceTransformer(modules=[st[0], models.Pooling(32, pooling_mode="cls")], device="cpu")
    cls_model.save(str(tmp_path / "cls"))
    out = export_onnx(tmp_path / "cls", tmp_path / "cls_onnx")
    torch_vecs = Embedder(out, device="cpu").encode_keys(TEXTS)
    onnx_vecs = Embedder(out, backend="onnx").encode_keys(TEXTS)
    assert np.abs(onnx_vecs - torch_vecs).max() < 1e-4


def test_missing_export_and_bad_backend_are_clear(tiny_embedder_dir: Path, exported: Path):
    with pytest.raises(FileNotFoundError, match="llm-embedder export"):
        Embedder(tiny_embedder_dir, backend="onnx")
    with pytest.raises(ValueError, match="backend must be one of"):
        Embedder(tiny_embedder_dir, backend="tensorrt")
    with pytest.raises(ValueError, match="torch backend"):
        Embedder(exported, backend="onnx").save(exported.parent / "again")


def test_cli_export(tiny_embedder_dir: Path, tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "cli_export"
    result = runner.invoke(app, ["export", "--model", str(tiny_embedder_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads((out / ONNX_DIR / EXPORT_FILE).read_text())
    assert info["files"] == {"fp32": "model.onnx"}
    with pytest.raises(FileNotFoundError, match="--quantize int8"):
        Embedder(out, backend="onnx-int8")
    again = runner.invoke(app, ["export", "--model", str(tiny_embedder_dir), "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)


def test_a_failed_overwrite_keeps_the_old_export_and_the_model(tiny_embedder_dir: Path, tmp_path: Path):
    out = export_onnx(tiny_embedder_dir, tmp_path / "old_export")
    not_a_model = tmp_path / "data"
    not_a_model.mkdir()
    (not_a_model / "train.jsonl").write_text("{}\n")
    (not_a_model / "config.json").write_text("{}")  # looks like a model folder: fails only while exporting
    with pytest.raises(ValueError, match="Unrecognized model"):
        export_onnx(not_a_model, out, overwrite=True)
    assert (out / ONNX_DIR / EXPORT_FILE).is_file()  # replaced only once a new export is complete
    with pytest.raises(ValueError, match="would replace the model directory"):
        export_onnx(tiny_embedder_dir, tiny_embedder_dir.parent, overwrite=True)
    assert (tiny_embedder_dir / "config_sentence_transformers.json").is_file()
    export_onnx(tiny_embedder_dir, out, overwrite=True)
    assert not out.with_name(out.name + ".partial").exists() and (out / ONNX_DIR / EXPORT_FILE).is_file()


def test_overwrite_replaces_only_an_export_and_nothing_goes_inside_the_model(tiny_embedder_dir: Path, tmp_path: Path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an ONNX export"):
        export_onnx(tiny_embedder_dir, notes, overwrite=True)
    assert (notes / "precious.txt").read_text() == "keep me"
    model = shutil.copytree(tiny_embedder_dir, tmp_path / "model")
    with pytest.raises(ValueError, match="inside the model directory"):
        export_onnx(model, model / "onnx_export")
    assert not (model / "onnx_export").exists()


@pytest.mark.parametrize("include_prompt", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", ["lasttoken", "cls", "mean"])
def test_pooling_matches_torch_with_either_padding_side(tiny_embedder_dir: Path, tmp_path: Path, side: str,
                                                        mode: str, include_prompt: bool):
    """A left-padding tokenizer puts the pads first: the last real token is the last position the mask keeps, not
    ``mask.sum() - 1``; the first is not position 0; and the prompt a model does not pool comes after the pads."""
    model = shutil.copytree(tiny_embedder_dir, tmp_path / mode)
    pooling = json.loads((model / "1_Pooling" / "config.json").read_text())
    (model / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode": mode,
                                                                 "include_prompt": include_prompt}))
    tokenizer = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tokenizer, "padding_side": side}))
    out = export_onnx(model, tmp_path / f"{mode}_onnx")
    assert json.loads((out / ONNX_DIR / EXPORT_FILE).read_text())["pooling"] == mode
    torch_embedder, onnx_embedder = Embedder(out, device="cpu"), Embedder(out, backend="onnx")
    assert torch_embedder.tokenizer.padding_side == onnx_embedder.tokenizer.padding_side == side
    for role in ("query", "key"):
        torch_vecs = torch_embedder.encode(TEXTS, "qa", role)
        onnx_vecs = onnx_embedder.encode(TEXTS, "qa", role)
        assert np.abs(onnx_vecs - torch_vecs).max() < 1e-4


def test_export_removes_only_a_partial_folder_it_made(tiny_embedder_dir: Path, tmp_path: Path, monkeypatch):
    """The export is built in <out>.partial: a folder of that name that is not ours was deleted unasked."""
    import llm_embedder.export as export_module

    out = tmp_path / "model_onnx"
    foreign = tmp_path / "model_onnx.partial"
    foreign.mkdir()
    (foreign / "draft.txt").write_text("someone's work")
    with pytest.raises(FileExistsError, match="model_onnx.partial exists and is not an unfinished llm-embedder export"):
        export_onnx(tiny_embedder_dir, out)
    assert (foreign / "draft.txt").read_text() == "someone's work" and not out.exists()
    shutil.rmtree(foreign)

    def die(*args, **kwargs):  # the run stops while quantizing: its partial folder stays behind
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "quantize_int8", die)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(tiny_embedder_dir, out, quantize="int8")
    assert foreign.is_dir() and not out.exists()
    monkeypatch.undo()
    export_onnx(tiny_embedder_dir, out, quantize="int8")  # an unfinished export of ours is replaced
    assert not foreign.exists() and (out / ONNX_DIR / EXPORT_FILE).is_file()
    assert not any(path.name.startswith(".llm_embedder") for path in out.rglob("*"))  # no marker in the export


@pytest.mark.parametrize("given", [".", "..", "sub/.."])
def test_export_into_the_current_folder_is_a_clear_error(tiny_embedder_dir: Path, tmp_path: Path, monkeypatch,
                                                        given: str):
    """--out . said "PosixPath('.') has an empty name"; an export replaces its folder, so the one this runs in (or
    one holding it) is refused by name."""
    here = tmp_path / "outer" / "here"  # empty, as a new folder one exports into
    here.mkdir(parents=True)
    if given.startswith("sub/"):
        (here / "sub").mkdir()
    monkeypatch.chdir(here)
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["export", "--model", str(tiny_embedder_dir), "--out", given])
    assert isinstance(result.exception, ValueError)
    assert str(result.exception).startswith(f"--out {given} is the folder this runs in, or holds it")
    assert sorted(tmp_path.rglob("*")) == before  # nothing made or removed


def test_an_export_leaves_the_training_run_behind(tiny_embedder_dir: Path, tmp_path: Path):
    """A trained model's checkpoints (optimizer state) and step logs were copied into the export."""
    model = shutil.copytree(tiny_embedder_dir, tmp_path / "model")
    (model / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (model / "checkpoints" / "checkpoint-4" / "optimizer.pt").write_bytes(b"\0" * 1024)
    (model / "logs").mkdir()
    (model / "logs" / "steps.rank0.jsonl").write_text("{}\n")
    out = export_onnx(model, tmp_path / "export")
    assert not (out / "checkpoints").exists() and not (out / "logs").exists()
    assert (out / ONNX_DIR / "model.onnx").is_file()
