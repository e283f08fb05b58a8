"""Tokenise a batch of (query, group of keys) examples for the sentence-transformers trainer.

Output keys follow the trainer's convention (``<column>_input_ids`` …), so ``collect_features`` yields
``[query_features, keys_features]`` to the loss: the B queries, then the B·N keys flattened in group order
(query b's keys at ``b·N … b·N+N-1``), one forward pass each. ``label`` carries the teacher scores (B, N).
The task's instructions come from the registry and are passed as sentence-transformers prompts, the same
path ``Embedder.encode`` uses; query and key max lengths are applied separately.

With ``mixed=True`` (the no-homogeneous-batching ablation) a batch may hold several datasets: the rows are
grouped by task and each group is collated as above, giving ``{"subbatches": [batch, ...]}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from llm_embedder.tasks import get_task


@dataclass
class GroupCollator(SentenceTransformerDataCollator):
    """Collate ``{"query", "keys", "label"?, "dataset_name"}`` rows; ``dataset_tasks`` maps dataset → task."""

    dataset_tasks: dict[str, str] = field(default_factory=dict)
    query_max_length: int = 256
    key_max_length: int = 256
    use_instructions: bool = True
    plain_tasks: frozenset[str] = frozenset()  # tasks tokenised without their instructions
    # the base model's own saved prompts (``<task>.<role>``): they win over the registry, as in ``Embedder``, so a
    # model trained further keeps the instructions it was trained with (an empty one for a plain task)
    saved_prompts: dict[str, str] = field(default_factory=dict)
    mixed: bool = False

    def task_of(self, row: dict[str, Any]) -> str | None:
        return row.get("task") or self.dataset_tasks.get(row.get("dataset_name"))

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            return {}
        if self.mixed:
            groups: dict[str | None, list[dict[str, Any]]] = {}
            for row in features:
                groups.setdefault(self.task_of(row), []).append(row)
            return {"subbatches": [self.collate(rows) for rows in groups.values()]}
        return self.collate(features)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """One homogeneous batch: every row of one dataset (or, mixed, one task)."""
        name = features[0].get("dataset_name")
        task_name = self.task_of(features[0])
        if task_name is None:
            raise ValueError(f"cannot tell the task of dataset {name!r}")
        task = get_task(task_name)
        batch: dict[str, Any] = {}
        if name is not None:
            batch["dataset_name"] = name
        sizes = {len(row["keys"]) for row in features}
        if len(sizes) != 1:
            raise ValueError(f"dataset {name!r}: examples in one batch have different group sizes {sorted(sizes)}")
        columns = {
            "query": ([row["query"] for row in features], "query", self.query_max_length),
            "keys": ([key for row in features for key in row["keys"]], "key", self.key_max_length),
        }
        for column, (texts, role, max_length) in columns.items():
            plain = not self.use_instructions or task.name in self.plain_tasks
            prompt = None if plain else task.model_instruction(role, self.saved_prompts)
            encoded = self.preprocess_fn(texts, prompt=prompt or None, max_length=max_length)
            for key, value in encoded.items():
                batch[f"{column}_{key}"] = value
        if "label" in features[0]:
            batch["label"] = torch.tensor([row["label"] for row in features], dtype=torch.float32)
        return batch
