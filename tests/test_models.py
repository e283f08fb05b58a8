import os
import shutil

from llm_embedder.models import model_version


def test_model_version_follows_the_weights_not_the_folder(tiny_embedder_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_embedder_dir, model, copy_function=shutil.copy2)
    version = model_version(model)
    assert version and all(name.endswith((".safetensors", ".bin")) for name, _, _ in version)
    assert model_version(tiny_embedder_dir) == version  # copied keeping times: the same weights
    (model / "checkpoints" / "checkpoint-20").mkdir(parents=True)
    (model / "checkpoints" / "checkpoint-20" / "model.safetensors").write_bytes(b"x")
    assert model_version(model) == version  # a training checkpoint is not the model
    weights = model / version[0][0]
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert model_version(model) != version  # retrained in place
    moved = tmp_path / "moved"
    model.rename(moved)
    assert model_version(moved) is not None and model_version(model) is None


def test_a_folder_that_is_not_a_model_is_named_as_such(tmp_path):
    import pytest

    from llm_embedder.cli import app
    from llm_embedder.models import resolve_embedder_path

    data = tmp_path / "suite"
    (data / "qa").mkdir(parents=True)
    (data / "qa" / "train.jsonl").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="model '.*suite' is a folder but not a model"):
        resolve_embedder_path(data)
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["train", "--data", str(data), "--base", str(data), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, FileNotFoundError) and "is a folder but not a model" in str(result.exception)
