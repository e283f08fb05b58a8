"""The task registry: one source of truth for each task's instructions, training recipe and reward prompt.

The six built-in tasks live in ``resources/tasks.yaml``; users add their own from a YAML/JSON file
(``register_tasks_from_file``) or in Python (``register_task``). Every stage (encoding, training, reward,
evaluation, serving) looks tasks up here, so an instruction is applied identically everywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from llm_embedder.io import (
    DataError,
    UniqueKeyLoader,
    check_template,
    json_document,
    parse_limit,
    read_text,
    yaml_error,
)

LOSSES = ("contrastive", "kl_distill", "stable_distill")
POSITIVE_SELECTIONS = ("first", "random", "teacher", "teacher-pos")
NEGATIVE_SELECTIONS = ("random", "first", "teacher-", "teacher+")
ROLES = ("query", "key")
# numeric fields: (int or float, lower bound, whether the bound itself is allowed, whether None is allowed)
NUMERIC_FIELDS: dict[str, tuple[type, float | None, bool, bool]] = {
    "teacher_temperature": (float, 0, False, False),
    "teacher_scores_margin": (float, 0, True, True),
    "teacher_scores_min": (float, None, True, True),
    "max_sample_num": (int, 1, True, True),
}


# a task name is part of file paths (an index or mining folder per task) and prompt names (``qa.query``): letters,
# digits, '_' and '-', not starting with '-' (it would read as an option)
TASK_NAME = re.compile(r"\w[\w-]*")


def is_task_name(name: Any) -> bool:
    """Whether ``name`` can name a task (``TASK_NAME``): no path separator, dot, space or leading '-'."""
    return isinstance(name, str) and TASK_NAME.fullmatch(name) is not None


class UnknownTaskError(KeyError):
    """Raised for a task name that is not registered; the message lists the known tasks."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown task {self.name!r}; known tasks: {', '.join(list_tasks())}"


@dataclass(frozen=True)
class Task:
    """A retrieval-augmentation task: how to embed its queries and keys, train on it, and reward it."""

    name: str
    query_instruction: str
    key_instruction: str
    loss: str = "contrastive"
    select_positive: str = "first"
    select_negative: str = "random"
    teacher_temperature: float = 1.0
    teacher_scores_margin: float | None = None
    teacher_scores_min: float | None = None
    max_sample_num: int | None = None
    reward_template: str = "Knowledge: {key}\n\nQuestion: {query}\n\nAnswer: {answer}"
    scenario: str = ""

    def __post_init__(self) -> None:
        if not is_task_name(self.name):
            raise ValueError(f"task name must be letters, digits, '_' or '-' (not starting with '-'), got "
                             f"{self.name!r}")
        for field_name in ("query_instruction", "key_instruction", "reward_template", "scenario"):
            value = getattr(self, field_name)
            if not isinstance(value, str):
                raise ValueError(f"task {self.name!r}: {field_name} must be a string, got {value!r}")
        for field_name in NUMERIC_FIELDS:
            _check_number(self.name, field_name, getattr(self, field_name))
        _check_choice(self.name, "loss", self.loss, LOSSES)
        _check_choice(self.name, "select_positive", self.select_positive, POSITIVE_SELECTIONS)
        _check_choice(self.name, "select_negative", self.select_negative, NEGATIVE_SELECTIONS)
        try:  # parsed, so that an escaped "{{key}}" (literal text) does not count as the field
            named_fields = set(check_template(self.reward_template, "reward_template"))
        except ValueError as err:
            raise ValueError(f"task {self.name!r}: {err}") from None
        missing = ["{" + f + "}" for f in ("key", "query", "answer") if f not in named_fields]
        if missing:
            raise ValueError(f"task {self.name!r}: reward_template lacks {', '.join(missing)}")
        extra = sorted(named_fields - {"key", "query", "answer"})
        if extra:  # only these three are filled in; a record's other fields never reach the template
            named = ", ".join("{" + field + "}" for field in extra)
            raise ValueError(f"task {self.name!r}: reward_template uses {named}; it may use only {{key}}, {{query}} "
                             "and {answer}")

    def instruction(self, role: str) -> str:
        """The instruction prepended to a text of this role ('query' or 'key')."""
        if role == "query":
            return self.query_instruction
        if role == "key":
            return self.key_instruction
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")

    def model_instruction(self, role: str, saved_prompts: Mapping[str, str]) -> str:
        """The instruction a model applies for this role: its own saved prompt (``<task>.<role>``; empty for a task
        it was trained on without instructions) if it has one, else the registry's."""
        saved = saved_prompts.get(self.prompt_name(role))
        return self.instruction(role) if saved is None else saved

    def prompt_name(self, role: str) -> str:
        """The sentence-transformers prompt name for a role, e.g. ``qa.query``."""
        self.instruction(role)
        return f"{self.name}.{role}"

    def instruction_hash(self) -> str:
        """A short hash of both instructions; stored with an index to detect a mismatched task."""
        digest = hashlib.sha256((self.query_instruction + "\x00" + self.key_instruction).encode())
        return digest.hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_choice(task: str, field_name: str, value: str, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"task {task!r}: {field_name} must be one of {', '.join(choices)}, got {value!r}")


def _check_number(task: str, field_name: str, value: Any) -> None:
    """A numeric field's type and range (``NUMERIC_FIELDS``); bools and NaN are not numbers here."""
    kind, low, inclusive, optional = NUMERIC_FIELDS[field_name]
    if value is None and optional:
        return
    what = "a whole number" if kind is int else "a number"
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or (kind is int and not isinstance(value, int))):
        raise ValueError(f"task {task!r}: {field_name} must be {what}, got {value!r}")
    if low is not None and (value < low or (value == low and not inclusive)):
        bound = f"at least {low}" if inclusive else f"greater than {low}"
        raise ValueError(f"task {task!r}: {field_name} must be {bound}, got {value!r}")


def _convert_numbers(data: dict[str, Any]) -> dict[str, Any]:
    """Numeric strings as numbers (YAML reads ``1e-2`` as a string) and whole floats as ints for int fields;
    anything else is left for ``Task`` to refuse with a clear message."""
    data = dict(data)
    for field_name, (kind, *_) in NUMERIC_FIELDS.items():
        value = data.get(field_name)
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                continue
        if isinstance(value, float) and kind is int and value.is_integer():
            value = int(value)
        if field_name in data:
            data[field_name] = value
    return data


_REGISTRY: dict[str, Task] = {}
BUILTIN_TASKS: tuple[str, ...] = ()


def register_task(task: Task | None = None, /, *, overwrite: bool = False, **kwargs: Any) -> Task:
    """Register a task, given as a ``Task`` or as keyword arguments. Returns the registered task.

    ``overwrite`` replaces a user task registered with other settings; a built-in task is never replaced (its
    instructions are part of the model contract), as it is never unregistered.
    """
    if task is None:
        task = task_from_dict(kwargs)
    _check_collision(task, overwrite)
    _REGISTRY[task.name] = task
    return task


def _check_collision(task: Task, overwrite: bool, where: str = "") -> None:
    """Refuse ``task`` where its name is registered with other settings: always for a built-in task, without
    ``overwrite`` for a user task. ``where`` (a task file) prefixes the message."""
    if _REGISTRY.get(task.name, task) == task:
        return
    prefix = f"{where}: " if where else ""
    if task.name in BUILTIN_TASKS:
        raise ValueError(f"{prefix}task {task.name!r} is built in and cannot be replaced (its instructions are part "
                         "of the model contract); give your task another name")
    if not overwrite:
        advice = "give it another name" if where else "give it another name, or pass overwrite=True to replace it"
        raise ValueError(f"{prefix}task {task.name!r} is already registered with other settings; {advice}")


def task_from_dict(data: dict[str, Any], where: str | None = None, position: int | None = None) -> Task:
    """Build a Task from a mapping, naming unknown, missing or bad fields clearly.

    Errors read ``<where>: task '<name>': <problem>`` (``task #<position>`` while the name is unusable).
    """
    name = data.get("name") if isinstance(data, dict) else None
    if is_task_name(name):
        label = f"task {name!r}"
    else:
        label = f"task #{position}" if position is not None else "task"
    label = f"{where}: {label}" if where else label
    if not isinstance(data, dict):
        raise ValueError(f"{label}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(Task)}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise ValueError(f"{label}: unknown field(s) {unknown}; allowed: {sorted(known)}")
    for required in ("name", "query_instruction", "key_instruction"):
        if required not in data:
            raise ValueError(f"{label}: missing required field {required!r}")
    try:
        return Task(**_convert_numbers(data))
    except ValueError as err:
        raise ValueError(f"{label}: {str(err).removeprefix(f'task {name!r}: ')}") from None


def register_tasks_from_file(path: str | Path, *, overwrite: bool = False) -> list[Task]:
    """Register the tasks defined in a YAML or JSON file (a list, or a mapping with a ``tasks`` list).

    A task may carry a ``layout`` (the fields of ``augment.prompt.Layout``: query, header, separator, footer,
    order), its prompt layout for ``augment`` and ``/v1/augment``, registered with it (``register_layout``).
    Every task is checked before any is registered; an error names the file, the task and the field.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"task file not found: {path}")
    text = read_text(path)  # bad UTF-8 names the file and line
    try:
        data = json_document(text, path) if path.suffix == ".json" else yaml.load(text, Loader=UniqueKeyLoader)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: cannot parse task file: {err}") from None
    except yaml.YAMLError as err:
        raise ValueError(yaml_error(path, err, "task file", text)) from None
    except DataError:  # a key given twice, named with its file and line
        raise
    except (RecursionError, ValueError) as err:  # nested too deeply, or an integer of too many digits
        raise ValueError(parse_limit(path, text, err) or f"{path}: cannot parse task file: {err}") from None
    if isinstance(data, dict) and "tasks" in data:
        data = data["tasks"]
    elif isinstance(data, dict) and "name" in data:
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of tasks or a mapping with a 'tasks' list")
    tasks, layouts = [], {}
    for i, item in enumerate(data):
        layout = None
        if isinstance(item, dict) and "layout" in item:  # the augment prompt's layout, registered with the task
            item = dict(item)
            layout = item.pop("layout")
        task = task_from_dict(item, where=str(path), position=i)
        tasks.append(task)
        if layout is not None:
            layout = task_layout(layout, f"{path}: task {task.name!r}")
            if layouts.get(task.name, layout) != layout:
                raise ValueError(f"{path}: task {task.name!r} is defined twice with different layouts")
            layouts[task.name] = layout
    seen: dict[str, Task] = {}
    for task in tasks:
        if seen.get(task.name, task) != task:
            raise ValueError(f"{path}: task {task.name!r} is defined twice with different settings")
        seen[task.name] = task
        _check_collision(task, overwrite, where=str(path))
    if layouts:
        from llm_embedder.augment.prompt import LAYOUTS, register_layout

        for name, layout in layouts.items():
            if LAYOUTS.get(name, layout) != layout and (name in BUILTIN_TASKS or not overwrite):
                why = "is built in" if name in BUILTIN_TASKS else "already has another layout; give it another name"
                raise ValueError(f"{path}: task {name!r} {why}: a task file cannot replace its layout")
    registered = [register_task(task, overwrite=overwrite) for task in tasks]
    for name, layout in layouts.items():
        register_layout(name, layout)
    return registered


def task_layout(value: Any, label: str) -> Any:
    """A task file's ``layout`` entry as an ``augment.prompt.Layout``, checked as ``Layout`` checks it; errors
    start with ``label`` (the file and task)."""
    from dataclasses import fields as layout_fields

    from llm_embedder.augment.prompt import Layout

    allowed = [f.name for f in layout_fields(Layout)]
    if not isinstance(value, dict):
        raise ValueError(f"{label}: layout must be a mapping with any of {allowed}, got {value!r}")
    unknown = sorted(str(k) for k in set(value) - set(allowed))
    if unknown:
        raise ValueError(f"{label}: layout: unknown field(s) {unknown}; allowed: {allowed}")
    try:
        return Layout(**value)
    except ValueError as err:
        raise ValueError(f"{label}: {err}") from None


def get_task(name: str | Task) -> Task:
    """Look a task up by name; an unknown name raises UnknownTaskError listing the known tasks."""
    if isinstance(name, Task):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownTaskError(str(name)) from None


def list_tasks() -> list[str]:
    """Names of all registered tasks, built-in first."""
    return list(_REGISTRY)


def unregister_task(name: str) -> None:
    """Remove a user task (built-in tasks cannot be removed)."""
    if name in BUILTIN_TASKS:
        raise ValueError(f"cannot unregister built-in task {name!r}")
    _REGISTRY.pop(name, None)
    from llm_embedder.augment.prompt import LAYOUTS

    LAYOUTS.pop(name, None)  # a task registered again under this name does not inherit the old prompt


def _load_builtin() -> tuple[str, ...]:
    text = resources.files("llm_embedder").joinpath("resources/tasks.yaml").read_text(encoding="utf-8")
    tasks = [task_from_dict(item, where="builtin tasks.yaml") for item in yaml.safe_load(text)["tasks"]]
    for task in tasks:
        register_task(task)
    return tuple(t.name for t in tasks)


BUILTIN_TASKS = _load_builtin()
