"""Training configuration: defaults, a ``train.yaml`` whose keys mirror the CLI options, CLI overrides.

Defaults follow the paper (recipe §2.6): lr 5e-6 with warm-up 0.1 and weight decay 0.01 (AdamW, linear decay),
10,000 steps, 100 queries per device, group size 8 (1 positive + 7 negatives), max length 256/256,
τ = 0.01. Those fit bge-base on 8 GPUs; for a small CPU run pass a few steps, a batch of 2–8 and a larger lr.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from llm_embedder.io import UniqueKeyLoader, parse_limit, read_text, yaml_error

LOSSES = ("contrastive", "kl_distill", "stable_distill")
MAX_SEED = 2**32 - 1  # numpy's and the HF trainer's seed range
# the most a whole-number setting or option may be (a step count, a batch, a length): 40 digits of --max-steps were
# taken, and trained with ~1e35 hours left; what an int32 holds, well beyond any real run, as torch and FAISS take them
MAX_COUNT = 2**31 - 1

# the numeric options and their lower bounds: (kind, minimum, whether the minimum itself is allowed)
NUMBERS: dict[str, tuple[type, float, bool]] = {
    "max_steps": (int, 1, True),
    "batch_size": (int, 1, True),
    "group_size": (int, 2, True),  # 1 positive + at least one negative
    "query_max_length": (int, 1, True),
    "key_max_length": (int, 1, True),
    "seed": (int, 0, True),
    "save_steps": (int, 1, True),
    "save_total_limit": (int, 1, True),
    "logging_steps": (int, 1, True),
    "self_paced_interval": (int, 1, True),
    "lr": (float, 0, False),
    "temperature": (float, 0, False),
    "warmup_ratio": (float, 0, True),
    "weight_decay": (float, 0, True),
    "base_mix": (float, 0, True),
}
RATIOS = ("warmup_ratio", "base_mix")  # below 1 as well (a base_mix of 1 would save the starting model)
BOOLS = ("fp16", "cpu_bf16", "gradient_checkpointing", "self_paced", "resume", "instructions", "homogeneous",
         "interleave_tasks", "hard_labels")
STRINGS = ("out", "base")
LISTS = ("data", "task_files", "plain_tasks")  # a file may give one item as a plain string


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
    instructions: bool = True  # False: queries and keys as plain text (every task saved with empty prompts)
    # tasks trained without their instructions; the model saves empty prompts for them, so it retrieves them
    # plain too (``Embedder`` and plain sentence-transformers alike), every other task with its instructions
    plain_tasks: list[str] = field(default_factory=list)
    homogeneous: bool = True  # False: batches mix tasks; the loss is computed per task subgroup
    # homogeneous batches spread evenly over each epoch, task by task; False: one random shuffle of all batches
    interleave_tasks: bool = True
    hard_labels: bool = False  # True: ignore teacher scores, contrastive loss on the labelled positive
    loss_override: dict[str, str] = field(default_factory=dict)  # task -> loss, e.g. {"qa": "kl_distill"}
    # the share of the starting model's weights in the saved model (``train.base_mix``); 0: the trained weights
    base_mix: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):  # each value's type and range, e.g. "batch_size: must be at least 1, got 0"
            try:
                setattr(self, f.name, check_value(f.name, getattr(self, f.name)))
            except ValueError as err:
                raise ValueError(f"{f.name}: {err}") from None
        if self.self_paced and not self.homogeneous:
            raise ValueError("self_paced needs homogeneous batches (one task per step)")

    def check_task_names(self) -> None:
        """Refuse a task named in ``plain_tasks`` or ``loss_override`` that is not registered (call it once
        ``task_files`` are): the trainer would silently ignore it, training that task as if it were not given."""
        from llm_embedder.tasks import UnknownTaskError, get_task

        for option, tasks in (("plain_tasks", self.plain_tasks), ("loss_override", list(self.loss_override))):
            for task in tasks:
                try:
                    get_task(task)
                except UnknownTaskError as err:
                    raise ValueError(f"{option}: {err}") from None

    def trained_plain(self) -> list[str]:
        """The tasks this run trains without instructions, which the model saves with empty prompts so that it
        retrieves them plain wherever it is used: ``plain_tasks``, or every task under ``instructions=False``."""
        from llm_embedder.tasks import list_tasks

        return list(list_tasks()) if not self.instructions else list(self.plain_tasks)

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


# the command line's repeatable options are singular and its ablation switches negative: the same keys in a file
OPTION_NAMES = {"plain_task": "plain_tasks", "task_file": "task_files"}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read train.yaml; keys are CLI option names (``max-steps`` or ``max_steps``, ``plain-task``,
    ``no-instructions: true``) or the config's own (``plain_tasks``, ``instructions: false``); unknown keys are
    errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    text = read_text(path)  # bad UTF-8 names the file and line
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader) or {}  # a SafeLoader
    except yaml.YAMLError as err:
        raise ValueError(yaml_error(path, err, text=text)) from None
    except (RecursionError, ValueError) as err:  # nested too deeply, or an integer of too many digits
        raise ValueError(parse_limit(path, text, err) or f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value")
    known = {f.name for f in fields(TrainConfig)}
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = OPTION_NAMES.get(name, name)
        negated = name.startswith("no_") and name[3:] in BOOLS
        if negated:
            name = name[3:]
        if name not in known:
            raise ValueError(f"{path}: unknown option {key!r}; known: {', '.join(sorted(known))}")
        if name in values:
            raise ValueError(f"{path}: {key}: {name} is given twice")
        try:
            values[name] = check_value(name, value, from_file=True)
        except ValueError as err:
            raise ValueError(f"{path}: {key}: {err}") from None
        if negated:
            values[name] = not values[name]
    return values


def _number(value: Any, kind: type, from_file: bool) -> int | float:
    """``value`` as an int or float; in a file a numeric string counts (YAML reads ``5e-6`` as a string)."""
    what = "a whole number" if kind is int else "a number"
    number = value
    if from_file and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"expected {what}, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ValueError(f"expected {what}, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    if kind is int:
        if number != int(number):
            raise ValueError(f"expected {what}, got {value!r}")
        return int(number)
    return float(number)


def check_value(name: str, value: Any, from_file: bool = False) -> Any:
    """One option's value, checked (and, from a file, converted); ValueError says what is wrong with it.

    ``from_file``: numeric strings count as numbers, a single path or task name as a one-item list, and
    ``loss_override`` may be a list of ``TASK=LOSS`` strings, as ``read_config_file`` reads YAML.
    """
    if name in NUMBERS:
        kind, low, inclusive = NUMBERS[name]
        number = _number(value, kind, from_file)
        if number < low or (number == low and not inclusive):
            note = " (1 positive + negatives)" if name == "group_size" else ""
            raise ValueError(f"must be {'at least' if inclusive else 'greater than'} {low}{note}, got {value!r}")
        if name == "seed" and number > MAX_SEED:
            raise ValueError(f"must be at most 2**32 - 1, got {value!r}")
        if kind is int and name != "seed" and number > MAX_COUNT:
            raise ValueError(f"must be at most 2**31 - 1, got {value!r}")
        if name in RATIOS and number >= 1:
            raise ValueError(f"must be in [0, 1), got {value!r}")
        return number
    if name in BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if name in STRINGS or name == "device":
        if value is None and name == "device":
            return None
        if isinstance(value, os.PathLike) or (from_file and isinstance(value, int | float)
                                              and not isinstance(value, bool)):
            value = str(value)  # a Path, or ``out: 2024`` in a file
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if name in LISTS:
        if from_file and isinstance(value, str):
            value = [value]  # ``data: some/dir``
        if isinstance(value, list | tuple):
            value = [str(v) if isinstance(v, os.PathLike) or (from_file and isinstance(v, int | float)
                                                              and not isinstance(v, bool)) else v for v in value]
        if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            what = "task names" if name == "plain_tasks" else "paths"
            raise ValueError(f"must be a list of {what}, got {value!r}")
        return value
    if name == "loss_override":
        if from_file and isinstance(value, list | str):
            value = parse_loss_override([value] if isinstance(value, str) else value)
        if not isinstance(value, dict):
            raise ValueError(f"must map task -> loss, got {value!r}")
        for task, loss in value.items():  # here, so that a config file's bad loss is named with the file
            if loss not in LOSSES:
                raise ValueError(f"{task}={loss}: unknown loss; known: {', '.join(LOSSES)}")
        return value
    return value


def parse_loss_override(items: list[str], label: str = "loss override") -> dict[str, str]:
    """``["qa=kl_distill", ...]`` -> ``{"qa": "kl_distill"}`` (what ``--loss-override`` takes); ``label`` names
    the items in a message (the command line: ``--loss-override``)."""
    out = {}
    for item in items:
        task, sep, loss = str(item).partition("=")
        if not sep or not task.strip() or not loss.strip():
            raise ValueError(f"{label} {item!r}: expected TASK=LOSS, e.g. qa=kl_distill")
        out[task.strip()] = loss.strip()
    return out
