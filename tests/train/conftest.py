"""Fixtures for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import write_task_file


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """DIR/<task>/train.jsonl for one task of each loss (8 records each)."""
    root = tmp_path / "data"
    write_task_file(root / "qa" / "train.jsonl", "qa", 8, scores=True)
    write_task_file(root / "tool" / "train.jsonl", "tool", 8, scores=False)
    write_task_file(root / "chat" / "train.jsonl", "chat", 8, scores=True, history=True)
    return root
