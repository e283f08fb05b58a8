"""The unified embedder: one sentence-transformers model, a task instruction per query/key role."""

from __future__ import annotations

import json
import operator
import threading
import warnings
from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llm_embedder.models import check_device, config_position_limit, resolve_embedder_path
from llm_embedder.tasks import Task, get_task, list_tasks, register_task, task_from_dict

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

TASKS_FILE = "llm_embedder_tasks.json"
BACKENDS = ("torch", "onnx", "onnx-int8")
PROGRESS_THRESHOLD = 512  # show a progress bar when encoding at least this many texts


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_texts(texts: Sequence[str] | str) -> list[str]:
    """Validate an encode input: a string or a sequence of strings (a non-string names its index)."""
    texts = text_list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
    return texts


def check_not_blank(texts: list[str]) -> None:
    """Refuse an empty text, or one of only whitespace or invisible characters (``io.blank_kind``), naming its
    position: it would be embedded as the instruction alone, a vector near every text of the other role, returned as
    if it meant something."""
    from llm_embedder.io import blank_kind

    for i, text in enumerate(texts):
        if what := blank_kind(text):
            raise ValueError(f"texts[{i}] {what}: it would be embedded as the instruction alone; give each a text")


def text_list(texts: Sequence[str] | str, what: str = "texts") -> list[str]:
    """A string or a sequence of texts as a list (its items unchecked). A dict or a set is refused: a dict would give
    its keys, a set an arbitrary order that the results could not be matched back to; bytes would be read as ints.
    """
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, bytes | bytearray):
        raise TypeError(f"{what} must be a string or a list of strings, got {type(texts).__name__}; decode it first "
                        "(e.g. .decode('utf-8'))")
    if isinstance(texts, Mapping | AbstractSet):
        kind = type(texts).__name__
        why = "its order is arbitrary, so the vectors could not be matched to the texts" if isinstance(
            texts, AbstractSet) else "a dict gives its keys"
        raise TypeError(f"{what} must be a string or a list of strings, got a {kind} ({why}); pass a list")
    if not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise TypeError(f"{what} must be a string or a list of strings, got {type(texts).__name__}")
    return list(texts)


def positive_int(value: object, name: str) -> int:
    """``value`` as an int if it is a whole number of at least 1, else a one-line ValueError naming ``name``.

    Refused up front: a batch size or max length of 0 or below failed only at the first encode (or 0 silently
    meant the default).
    """
    if not isinstance(value, bool):
        try:
            number = operator.index(value)  # an int or a numpy integer, not a float or a string
        except TypeError:
            number = None
        if number is not None and number >= 1:
            return number
    raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


class Embedder:
    """Encode queries and keys of any registered task with its instructions.

    ``model`` is a sentence-transformers directory or a bundled alias (``minilm``). On CUDA the model
    runs in fp16, on CPU in fp32. ``use_instructions=False`` gives the plain base model (a baseline).
    ``backend="onnx"`` / ``"onnx-int8"`` runs an ``llm-embedder export`` directory on ONNX Runtime (CPU),
    with the pooling and prompts stored in the export; ``dtype`` and ``model_kwargs`` apply to torch only.
    ``fast="bf16"`` is the CPU fast mode of the LLM (``llm_embedder.llm.fast``) for an fp32 torch model: bf16
    Linear layers, the rest fp32; ~1.5x faster encoding where the CPU has bf16 matmuls, cosine to the exact
    vectors ~0.99998. ``query_max_length`` / ``key_max_length`` are the tokens a text keeps; by default the length
    the model was saved with (its ``max_seq_length``: 256 for MiniLM, the training length for a model that
    ``llm-embedder train`` wrote), as ``SentenceTransformer(path)`` encodes.
    """

    def __init__(
        self,
        model: str | Path = "minilm",
        *,
        device: str | None = None,
        dtype: str = "auto",
        query_max_length: int | None = None,
        key_max_length: int | None = None,
        batch_size: int = 64,
        use_instructions: bool = True,
        model_kwargs: dict | None = None,
        backend: str = "torch",
        fast: str | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.path = resolve_embedder_path(model)
        self.name = str(model)
        self.device = check_device(device) or default_device()  # a bad or missing device fails before loading
        self.batch_size = positive_int(batch_size, "batch_size")
        for name, length in (("query_max_length", query_max_length), ("key_max_length", key_max_length)):
            if length is not None:
                positive_int(length, name)  # before the model loads
        self.use_instructions = use_instructions
        _register_saved_tasks(self.path)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if fast not in (None, "bf16"):
            raise ValueError(f"fast must be None or 'bf16', got {fast!r}")
        if fast and (backend != "torch" or self.device != "cpu" or dtype not in ("auto", "fp32")):
            raise ValueError(f"fast={fast!r} is for an fp32 torch model on the CPU (backend {backend}, "
                             f"device {self.device}, dtype {dtype})")
        self.backend = backend
        self.fast = fast
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._count_base = None  # a copy of the tokenizer that never tokenizes: the source of each thread's own
        self._count_local = threading.local()
        if backend != "torch":
            from llm_embedder.onnx_encoder import OnnxEncoder

            self.device, self.dtype = "cpu", "int8" if backend == "onnx-int8" else "fp32"
            self.model = OnnxEncoder(self.path, precision=self.dtype)  # type: ignore[assignment]
            self.saved_prompts = dict(self.model.prompts)
            self._set_max_lengths(query_max_length, key_max_length)
            return
        self.model: SentenceTransformer = SentenceTransformer(
            str(self.path), device=self.device, local_files_only=True, **(model_kwargs or {})
        )
        # the prompts the model was saved with: a task trained without instructions has an empty one
        self.saved_prompts: dict[str, str] = dict(self.model.prompts or {})
        self._set_max_lengths(query_max_length, key_max_length)
        if dtype == "auto":
            dtype = "fp16" if self.device.startswith("cuda") else "fp32"
        if dtype not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"dtype must be auto, fp32, fp16 or bf16, got {dtype!r}")
        if dtype == "fp16":
            self.model.half()
        elif dtype == "bf16":
            self.model.bfloat16()
        if fast == "bf16":
            from llm_embedder.llm.fast import bf16_linears

            bf16_linears(self.model)
        self.dtype = dtype

    def _set_max_lengths(self, query_max_length: int | None, key_max_length: int | None) -> None:
        """The tokens each role keeps: the length the model was saved with (trained at, for a model ``llm-embedder
        train`` wrote) by default; a length beyond the model's positions is refused (it failed inside the model)."""
        saved = int(self.model.max_seq_length or 512)
        limit = self.position_limit()
        lengths = {}
        for name, length in (("query_max_length", query_max_length), ("key_max_length", key_max_length)):
            lengths[name] = saved if length is None else positive_int(length, name)
            if length is not None and limit is not None and lengths[name] > limit:
                raise ValueError(f"max length {lengths[name]} ({name}) is more than model {self.name} can encode: "
                                 f"{limit} positions (max_position_embeddings of its config); give at most {limit}")
        self.query_max_length, self.key_max_length = lengths["query_max_length"], lengths["key_max_length"]

    def position_limit(self) -> int | None:
        """The most tokens the transformer has positions for (its config's ``max_position_embeddings``), or None
        where its config has none (an ONNX export keeps the model's config)."""
        return config_position_limit(self.path)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def instruction(self, task: str | Task, role: str) -> str:
        """The prefix this embedder applies to a text of ``role`` for ``task`` ('' without instructions).

        A model's own saved prompt (``<task>.<role>``, written by ``save``) wins over the registry's instruction:
        a model trained on a task without instructions (``TrainConfig.plain_tasks``) saved an empty one.
        """
        return self.model_instruction(task, role) if self.use_instructions else ""

    def model_instruction(self, task: str | Task, role: str) -> str:
        """The instruction this model was trained with: its saved prompt if it has one, else the registry's."""
        return get_task(task).model_instruction(role, self.saved_prompts)

    def encode_queries(
        self, texts: Sequence[str] | str, task: str | Task = "qa", *, batch_size: int | None = None,
        show_progress: bool | None = None, convert_to_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """L2-normalised float32 vectors of queries, shape (n, dim)."""
        return self.encode(texts, task, "query", batch_size=batch_size, show_progress=show_progress,
                           convert_to_tensor=convert_to_tensor)

    def encode_keys(
        self, texts: Sequence[str] | str, task: str | Task = "qa", *, batch_size: int | None = None,
        show_progress: bool | None = None, convert_to_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """L2-normalised float32 vectors of keys (documents, turns, chunks, tools...), shape (n, dim)."""
        return self.encode(texts, task, "key", batch_size=batch_size, show_progress=show_progress,
                           convert_to_tensor=convert_to_tensor)

    def encode(
        self, texts: Sequence[str] | str, task: str | Task, role: str, *, batch_size: int | None = None,
        show_progress: bool | None = None, convert_to_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Encode texts of one role (``query`` or ``key``) with the task's instruction.

        A float32 numpy array, or with ``convert_to_tensor`` a float32 torch tensor left on the model's device
        (so a GPU caller computes scores there without a round trip through host memory). An empty text, or one of
        only whitespace, is refused (a ValueError naming it, ``texts[3] is empty``).
        """
        texts = check_texts(texts)
        check_not_blank(texts)
        if batch_size is not None:
            batch_size = positive_int(batch_size, "batch_size")
        prompt = self.instruction(task, role)
        if not texts:
            vectors = np.zeros((0, self.dim), dtype=np.float32)
            if convert_to_tensor:
                import torch

                return torch.from_numpy(vectors).to(self.device)
            return vectors
        if show_progress is None:
            show_progress = len(texts) >= PROGRESS_THRESHOLD
        max_length = self.query_max_length if role == "query" else self.key_max_length
        with self._lock:
            self.model.max_seq_length = max_length
            vectors = self.model.encode(
                texts,
                prompt=prompt or None,
                batch_size=self.batch_size if batch_size is None else batch_size,
                show_progress_bar=show_progress,
                convert_to_numpy=not convert_to_tensor,
                convert_to_tensor=convert_to_tensor,
                normalize_embeddings=True,
            )
        # fp16 on a GPU by default (or bf16): float32, as the arrays are, and normalised again in float32, as the
        # model normalised them in its own precision (norms like 1.001 in bf16)
        renormalise = self.dtype in ("fp16", "bf16")
        if convert_to_tensor:
            vectors = vectors.float()
            if renormalise:
                import torch

                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            return vectors
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if renormalise:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def count_tokens(self, texts: Sequence[str] | str, task: str | Task | None = None, role: str = "query", *,
                     truncate: bool = True) -> int:
        """Number of tokens the model sees for these texts as ``encode(texts, task, role)`` would: the task's
        instruction (none without a task), the special tokens, at most the role's max length per text
        (``truncate=False``: all of each text, to tell whether the model would cut it). Takes what ``encode``
        takes: a plain string is one text, no texts count 0.

        Thread-safe beside ``encode`` and never waiting on it: a fast tokenizer keeps its padding/truncation
        settings in shared state, so counting with the encoder's own tokenizer from another thread (the server
        does) could corrupt a batch being encoded. Each thread counts with its own copy.
        """
        texts = check_texts(texts)
        prompt = self.instruction(task, role) if task is not None else ""  # a bad task fails for no texts too
        if not texts:  # the tokenizer fails on an empty batch
            return 0
        tokenizer = getattr(self._count_local, "tokenizer", None)
        if tokenizer is None:
            import copy

            with self._count_lock:  # held while copying only
                if self._count_base is None:
                    self._count_base = copy.deepcopy(self.tokenizer)
                tokenizer = self._count_local.tokenizer = copy.deepcopy(self._count_base)
        max_length = self.query_max_length if role == "query" else self.key_max_length
        # verbose=False: counting a text past the model's length is asked for, not the mistake HF warns of
        encoded = tokenizer([prompt + t for t in texts], add_special_tokens=True, truncation=truncate,
                            max_length=max_length if truncate else None, verbose=False)["input_ids"]
        return int(sum(len(ids) for ids in encoded))

    def save(self, path: str | Path, plain_tasks: Collection[str] = ()) -> Path:
        """Write a sentence-transformers directory with every task instruction as a named prompt.

        ``SentenceTransformer(path).encode(x, prompt_name="qa.query")`` then equals
        ``encode_queries(x, task="qa")``. The tasks in ``plain_tasks`` (trained without instructions) get empty
        prompts; the others keep this model's own (``model_instruction``).
        """
        if self.backend != "torch":
            raise ValueError(f"save() needs the torch backend (this one runs {self.backend}); save the source model")
        if self.fast:
            raise ValueError(f"save() needs the exact model (this one runs fast={self.fast!r}); load it without fast")
        path = Path(path)
        prompts = {}
        for name in list_tasks():
            task = get_task(name)
            for role in ("query", "key"):
                prompts[task.prompt_name(role)] = "" if name in plain_tasks else self.model_instruction(task, role)
        self.model.prompts = prompts
        self.model.default_prompt_name = None
        self.model.max_seq_length = max(self.query_max_length, self.key_max_length)
        self.model.save(str(path))
        tasks = [get_task(name).to_dict() for name in list_tasks()]
        saved: dict = {"tasks": tasks}
        layouts = user_task_layouts()
        if layouts:  # a user task's augment prompt travels with the model, as its instructions do
            saved["layouts"] = layouts
        (path / TASKS_FILE).write_text(json.dumps(saved, indent=2), encoding="utf-8")
        return path


class TaskRedefinedWarning(UserWarning):
    """A task registered (from a task file) with other instructions than a model saved: the model's win."""


def register_model_tasks(model: str | Path) -> None:
    """Register the tasks a saved model carries (its llm_embedder_tasks.json) without loading it, so that a
    command can look its task up, and refuse a bad one, before the model loads."""
    _register_saved_tasks(resolve_embedder_path(model))


def user_task_layouts() -> dict[str, dict[str, str]]:
    """The augment layouts of the registered user tasks (built-in tasks keep theirs in code), as saved."""
    from dataclasses import asdict

    from llm_embedder.augment.prompt import LAYOUTS
    from llm_embedder.tasks import BUILTIN_TASKS

    return {name: asdict(LAYOUTS[name]) for name in list_tasks() if name in LAYOUTS and name not in BUILTIN_TASKS}


def _register_saved_tasks(path: Path) -> None:
    """Register user tasks saved with a model, so a trained model carries its own instructions, and their augment
    layouts where none is registered yet (a --task-file given with the model sets its own)."""
    tasks_file = path / TASKS_FILE
    if not tasks_file.exists():
        return
    saved = json.loads(tasks_file.read_text(encoding="utf-8"))
    for item in saved.get("tasks", []):
        task = task_from_dict(item, where=str(tasks_file))
        try:
            held = get_task(task.name)
        except KeyError:
            register_task(task)
            continue
        if (held.query_instruction, held.key_instruction) != (task.query_instruction, task.key_instruction):
            warnings.warn(f"task {task.name!r} is registered with other instructions (a --task-file?) than the "
                          f"model {path} was saved with; encoding uses the model's own, which it was trained with",
                          TaskRedefinedWarning, stacklevel=3)
    from llm_embedder.augment.prompt import LAYOUTS, register_layout
    from llm_embedder.tasks import task_layout

    for name, layout in saved.get("layouts", {}).items():
        if name not in LAYOUTS:
            register_layout(name, task_layout(layout, f"{tasks_file}: task {name!r}"))
