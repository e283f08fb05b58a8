"""``CausalLM``: the one causal-LM wrapper every stage uses (reward, evaluation, the assistant example)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_embedder.llm.fast import bf16_linears, pick_fast_mode, quantize_int8
from llm_embedder.llm.loading import LLM_ALIASES, llm_version, pick_device_dtype, resolve_llm_path
from llm_embedder.llm.scoring import bucketed_logprob, encode_pairs

# padded tokens per forward pass when scoring, unless the caller says otherwise
CUDA_BATCH_TOKENS = 16384
CPU_BATCH_TOKENS = 1024
GENERATE_BATCH = 8  # prompts per generate() batch


class CausalLM:
    """A causal LM from a Hugging Face directory or the bundled alias ``smollm2``.

    fp32 on CPU, bf16 on CUDA (``dtype="auto"``). ``fast`` is the opt-in CPU fast mode, with scores that differ
    slightly from exact mode: ``"bf16"`` runs the transformer body's Linear layers in bf16 (the residual
    stream, norms, attention, LM head and log-softmax stay fp32; needs a CPU with AVX512-BF16 or AMX),
    ``"int8"`` quantizes the Linear layers (dynamic int8, less faithful), ``"auto"`` picks bf16 where the CPU
    supports it and int8 elsewhere. ``max_length`` defaults to the model's context window.
    """

    def __init__(
        self,
        model: str | Path = "smollm2",
        device: str | None = None,
        dtype: str = "auto",
        max_length: int | None = None,
        fast: str | None = None,
        batch_tokens: int | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # device, dtype and fast mode first: a bad one fails before the bundled alias is converted (which loads
        # weights), and before the weights load (a fast mode on CUDA was refused only once they had)
        self.device, self.dtype = pick_device_dtype(device, dtype)
        self.fast = pick_fast_mode(fast, self.device)
        self.path = resolve_llm_path(model)
        self.name = str(model) if str(model) in LLM_ALIASES else self.path.name
        self.version = llm_version(model)  # what the weights are: cached scores follow them
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=self.dtype).to(self.device).eval()
        if self.fast == "int8":
            self.model = quantize_int8(self.model)
        elif self.fast == "bf16":
            self.model = bf16_linears(self.model)
        if self.fast:
            self.name += f"+{self.fast}"
        window = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(max_length or window)
        self.batch_tokens = batch_tokens or (CUDA_BATCH_TOKENS if self.device.type == "cuda" else CPU_BATCH_TOKENS)
        self.truncated_count = 0
        self.model.requires_grad_(False)  # scoring only; never touch the process-wide grad mode

    def __repr__(self) -> str:
        return f"CausalLM({self.name!r}, device={self.device}, dtype={self.dtype}, max_length={self.max_length})"

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts (without special tokens) of each text."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def answer_logprob(
        self, prompts: Sequence[str], answers: Sequence[str], batch_tokens: int | None = None, progress: Any = None
    ) -> np.ndarray:
        """Mean log-probability per answer token of each answer given its prompt (float64, one per pair).

        Pairs are batched by length (at most ``batch_tokens`` padded tokens per forward pass) and the LM head
        runs only at answer positions. A pair longer than ``max_length`` loses prompt tokens on the left; such
        pairs are counted in ``truncated_count``.
        """
        if not prompts:
            return np.empty(0, dtype=np.float64)
        enc = encode_pairs(self.tokenizer, prompts, answers, self.max_length)
        self.truncated_count += sum(enc.truncated)
        return bucketed_logprob(self.model, enc, batch_tokens or self.batch_tokens, progress=progress)

    def choose(self, prompt: str, options: Sequence[str]) -> int:
        """Index of the option with the highest mean per-token log-probability after ``prompt``."""
        if not options:
            raise ValueError("choose() needs at least one option")
        return int(np.argmax(self.answer_logprob([prompt] * len(options), list(options))))

    def perplexity(self, contexts: Sequence[str], targets: Sequence[str]) -> np.ndarray:
        """Per-example perplexity of the target given the context: exp(-mean token log-prob)."""
        return np.exp(-self.answer_logprob(contexts, targets))

    def _format(self, prompts: Sequence[str], chat: bool) -> list[str]:
        if chat and getattr(self.tokenizer, "chat_template", None):
            return [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
                )
                for p in prompts
            ]
        return list(prompts)

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        stop: list[str] | None = None,
        chat: bool = True,
        batch_size: int = GENERATE_BATCH,
        **sampling: Any,
    ) -> list[str]:
        """Greedy continuations (cut before the first stop string), through the chat template when there is one.

        Extra keyword arguments go to ``model.generate`` (e.g. ``do_sample=True, num_return_sequences=n``; then
        each prompt yields n strings, consecutively).
        """
        texts = self._format(prompts, chat)
        outputs: list[str] = []
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            for lo in range(0, len(texts), batch_size):
                enc = self.tokenizer(
                    texts[lo : lo + batch_size], return_tensors="pt", padding=True, add_special_tokens=not chat
                ).to(self.device)
                kwargs: dict[str, Any] = {"do_sample": False, **sampling}
                if stop:
                    kwargs.update(stop_strings=stop, tokenizer=self.tokenizer)
                generated = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **kwargs
                )
                new = generated[:, enc["input_ids"].shape[1] :]
                outputs.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        finally:
            self.tokenizer.padding_side = side
        return [cut_at_stop(o, stop) for o in outputs]


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """The text up to (not including) the earliest stop string."""
    for s in stop or []:
        if s and s in text:
            text = text[: text.index(s)]
    return text
