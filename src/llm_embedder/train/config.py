"""Training configuration: defaults, a ``train.yaml`` whose keys mirror the CLI options, CLI overrides.

Defaults follow the paper (recipe §2.6): lr 5e-6 with warm-up 0.1 and weight decay 0.01 (AdamW, linear decay),
10,000 steps, 100 queries per device, group size 8 (1 positive + 7 negatives), max length 256/256,
τ = 0.01. Those fit bge-base on 8 GPUs; for a small CPU run pass a few steps, a batch of 2–8 and a larger lr.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

LOSSES = ("contrastive", "kl_distill", "stable_distill")


@dataclass
class TrainConfig:
    """Everything ``llm-embedder train`` needs; ``from_sources`` merges defaults, a YAML file and the CLI."""

    data: list[str] = field(default_factory=list)
    out: str = ""
    base: str = "minilm"
    max_steps: int = 10_000
    batch_size: int = 100  # queries per device
    group_size: int = 8
    lr: float = 5e-6
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    query_max_length: int = 256
    key_max_length: int = 256
    temperature: float = 0.01
    seed: int = 42
    save_steps: int = 1000
    save_total_limit: int = 3
    logging_steps: int = 10
    fp16: bool = True  # only takes effect on CUDA
    cpu_bf16: bool = False  # bf16 mixed precision on a CPU with bf16 matmuls (AVX512-BF16/AMX); fp32 weights
    gradient_checkpointing: bool = False
    self_paced: bool = False  # 2024 revision: per-task lr scaled by L_T0 / L_T (see train.self_paced)
    self_paced_interval: int = 1000
    task_files: list[str] = field(default_factory=list)
    resume: bool = False
    device: str | None = None
    # ablations (recipe §4): each default is the paper's method
    instructions: bool = True  # False: queries and keys as plain text (prompts are still saved)
    # tasks trained without their instructions; the model saves empty prompts for them, so it retrieves them
    # plain too (``Embedder`` and plain sentence-transformers alike), every other task with its instructions
    plain_tasks: list[str] = field(default_factory=list)
    homogeneous: bool = True  # False: batches mix tasks; the loss is computed per task subgroup
    # homogeneous batches spread evenly over each epoch, task by task; False: one random shuffle of all batches
    interleave_tasks: bool = True
    hard_labels: bool = False  # True: ignore teacher scores, contrastive loss on the labelled positive
    loss_override: dict[str, str] = field(default_factory=dict)  # task -> loss, e.g. {"qa": "kl_distill"}

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "save_steps", "logging_steps", "self_paced_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (1 positive + negatives), got {self.group_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError("lr and temperature must be positive")
        if not isinstance(self.loss_override, dict):
            raise ValueError(f"loss_override must map task -> loss, got {self.loss_override!r}")
        for task, loss in self.loss_override.items():
            if loss not in LOSSES:
                raise ValueError(f"loss_override {task}={loss}: unknown loss; known: {', '.join(LOSSES)}")
        if isinstance(self.plain_tasks, str) or not all(isinstance(t, str) and t for t in self.plain_tasks):
            raise ValueError(f"plain_tasks must be a list of task names, got {self.plain_tasks!r}")
        if self.self_paced and not self.homogeneous:
            raise ValueError("self_paced needs homogeneous batches (one task per step)")

    def loss_for(self, task: str) -> str:
        """The loss this run trains ``task`` with: contrastive under hard_labels, else override, else registry."""
        from llm_embedder.tasks import get_task
        from llm_embedder.train.examples import training_task

        return training_task(get_task(task), self.hard_labels, self.loss_override).loss

    @classmethod
    def from_sources(cls, config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
        """Defaults < YAML file < overrides that are not None."""
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(read_config_file(config_file))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read train.yaml; keys are CLI option names (``max-steps`` or ``max_steps``); unknown keys are errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: cannot parse YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value")
    known = {f.name for f in fields(TrainConfig)}
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(f"{path}: unknown option {key!r}; known: {', '.join(sorted(known))}")
        if name in ("data", "task_files") and isinstance(value, str):
            value = [value]
        if name == "loss_override" and isinstance(value, list | str):
            value = parse_loss_override([value] if isinstance(value, str) else value)
        values[name] = value
    return values


def parse_loss_override(items: list[str]) -> dict[str, str]:
    """``["qa=kl_distill", ...]`` -> ``{"qa": "kl_distill"}`` (what ``--loss-override`` takes)."""
    out = {}
    for item in items:
        task, sep, loss = str(item).partition("=")
        if not sep or not task.strip() or not loss.strip():
            raise ValueError(f"loss override {item!r}: expected TASK=LOSS, e.g. qa=kl_distill")
        out[task.strip()] = loss.strip()
    return out
