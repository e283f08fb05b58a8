"""llm-embedder: one embedding model for every retrieval need of an LLM.

``augment`` and the stores are in ``llm_embedder.augment`` (a subpackage, so not re-exported here under that name).
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["CausalLM", "Embedder", "Retriever", "__version__", "register_task", "register_tasks_from_file"]

# imported lazily so that `llm-embedder --help` does not pay for torch
_LAZY = {
    "Embedder": "llm_embedder.embedder",
    "Retriever": "llm_embedder.retriever",
    "CausalLM": "llm_embedder.llm",
    "register_task": "llm_embedder.tasks",
    "register_tasks_from_file": "llm_embedder.tasks",
}

if TYPE_CHECKING:
    from llm_embedder.embedder import Embedder
    from llm_embedder.llm import CausalLM
    from llm_embedder.retriever import Retriever
    from llm_embedder.tasks import register_task, register_tasks_from_file


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llm_embedder' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
