"""ONNX Runtime encoder with the subset of the ``SentenceTransformer`` API that ``Embedder`` uses.

Reads an ``llm-embedder export`` directory: tokenizer files from its root, the graph from ``onnx/``, and
pooling / normalisation / max length / prompts from ``onnx/export.json``. Texts are sorted by length and
batched (less padding), tokenized with the model's own tokenizer, run through ORT, pooled in numpy.
ORT uses as many intra-op threads as torch does, so backend comparisons are like for like.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llm_embedder.export import EXPORT_FILE, ONNX_DIR

if TYPE_CHECKING:
    import torch


class OnnxEncoder:
    """Encode texts with an exported ONNX model (``precision`` is ``fp32`` or ``int8``)."""

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        from llm_embedder.extras import require_extra

        require_extra("onnx", "the ONNX backends", ("onnxruntime",))
        import onnxruntime as ort
        from transformers import AutoTokenizer

        path = Path(path)
        export_file = path / ONNX_DIR / EXPORT_FILE
        if not export_file.is_file():
            raise FileNotFoundError(
                f"{path} has no ONNX export ({ONNX_DIR}/{EXPORT_FILE}); create one with "
                f"`llm-embedder export --model {path} --out DIR --quantize int8` and load DIR"
            )
        self.info = json.loads(export_file.read_text(encoding="utf-8"))
        files = self.info.get("files", {})
        if precision not in files:
            raise FileNotFoundError(
                f"{path}: no {precision} ONNX model in this export (has {sorted(files)}); "
                "re-export with `--quantize int8` for the onnx-int8 backend"
            )
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(path / ONNX_DIR / files[precision]), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.precision = precision
        self.max_seq_length: int = int(self.info["max_seq_length"])
        self.prompts: dict[str, str] = dict(self.info.get("prompts", {}))
        self.pooling: str = self.info["pooling"]
        self._prompt_lengths: dict[str, int] = {}

    def get_embedding_dimension(self) -> int:
        return int(self.info["dim"])

    def encode(
        self, sentences: Sequence[str], *, prompt: str | None = None, prompt_name: str | None = None,
        batch_size: int = 32, show_progress_bar: bool = False, convert_to_numpy: bool = True,
        convert_to_tensor: bool = False, normalize_embeddings: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Vectors (n, dim) float32, same semantics as ``SentenceTransformer.encode`` for these arguments (a CPU
        tensor with ``convert_to_tensor``)."""
        if prompt is None and prompt_name is not None:
            prompt = self.prompts[prompt_name]
        prompt = prompt or ""
        texts = [prompt + text for text in sentences]
        if self.info.get("do_lower_case"):
            texts = [text.lower() for text in texts]
        order = np.argsort([-len(text) for text in texts], kind="stable")
        out = np.zeros((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:
            from tqdm import tqdm

            starts = tqdm(starts, desc="Batches")
        for start in starts:
            rows = order[start:start + batch_size]
            out[rows] = self._encode_batch([texts[i] for i in rows], prompt)
        if normalize_embeddings or self.info.get("normalize"):
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        if convert_to_tensor:
            import torch

            return torch.from_numpy(out)
        return out

    def _encode_batch(self, texts: list[str], prompt: str) -> np.ndarray:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np"
        )
        mask = enc["attention_mask"].astype(np.int64)
        hidden = self.session.run(
            None, {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": mask}
        )[0]
        return self._pool(hidden, mask, prompt)

    def _pool(self, hidden: np.ndarray, mask: np.ndarray, prompt: str) -> np.ndarray:
        """As sentence-transformers' Pooling pools, left padding included: the prompt left out of the mask first
        (for a model that does not pool it), then cls takes the first position the mask keeps, lasttoken the last."""
        if prompt and not self.info.get("include_prompt", True):
            mask = without_prompt(mask, self._prompt_length(prompt))
        rows = np.arange(len(hidden))
        if self.pooling == "cls":
            return hidden[rows, np.argmax(mask > 0, axis=1)]
        if self.pooling == "lasttoken":
            return hidden[rows, last_token_positions(mask)] * mask.any(axis=1, keepdims=True)
        weights = mask[..., None].astype(hidden.dtype)
        if self.pooling == "max":
            return np.where(weights > 0, hidden, -1e9).max(axis=1)
        return (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)

    def _prompt_length(self, prompt: str) -> int:
        """Prompt tokens without a trailing special token (what sentence-transformers masks)."""
        if prompt not in self._prompt_lengths:
            ids = self.tokenizer(prompt)["input_ids"]
            length = len(ids) - (1 if ids and ids[-1] in self.tokenizer.all_special_ids else 0)
            self._prompt_lengths[prompt] = length
        return self._prompt_lengths[prompt]


def without_prompt(mask: np.ndarray, prompt_length: int) -> np.ndarray:
    """The mask with each row's first ``prompt_length`` kept positions dropped: the prompt's tokens, which come
    after the pads with a left-padding tokenizer."""
    starts = np.argmax(mask > 0, axis=1)  # a row's pads (0 without left padding)
    return np.where(np.arange(mask.shape[1])[None, :] < (starts + prompt_length)[:, None], 0, mask)


def last_token_positions(mask: np.ndarray) -> np.ndarray:
    """Per row, the last position the attention mask keeps (the last column for a row it keeps none of).

    As sentence-transformers pools ``lasttoken``: with a left-padding tokenizer the pads come first, so the count
    of kept tokens minus one would point into the text (or at a pad), not at its last token.
    """
    kept = mask > 0
    last = mask.shape[1] - 1 - np.argmax(kept[:, ::-1], axis=1)
    return np.where(kept.any(axis=1), last, mask.shape[1] - 1)
