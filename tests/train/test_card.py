"""The training card says how the run's batches were formed."""

from __future__ import annotations

from llm_embedder.train.card import batching_note
from llm_embedder.train.config import TrainConfig


def test_batching_note_names_the_order_or_the_ablation() -> None:
    assert batching_note(TrainConfig()).endswith("each dataset's batches are spread evenly over every epoch.")
    assert batching_note(TrainConfig(interleave_tasks=False)).endswith("all batches are shuffled together.")
    assert batching_note(TrainConfig(homogeneous=False)).startswith("Ablation: batches mix datasets")
