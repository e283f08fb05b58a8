"""The causal LM in the loop: answer log-likelihood, option choice, generation, perplexity."""

from llm_embedder.llm.loading import LLM_ALIASES, cache_root, resolve_llm_path
from llm_embedder.llm.model import CausalLM

__all__ = ["CausalLM", "LLM_ALIASES", "cache_root", "resolve_llm_path"]
