"""Retrieval augmentation for applications: a store per scenario and prompt assembly for the LLM."""

from llm_embedder.augment.chunks import ChunkMemory, chunk_text
from llm_embedder.augment.prompt import GENERIC, LAYOUTS, Layout, augment, get_layout, register_layout
from llm_embedder.augment.stores import ConversationalSearch, ConversationMemory, ExampleBank, KnowledgeBase
from llm_embedder.augment.tools import Tool, ToolBox

__all__ = [
    "GENERIC", "LAYOUTS", "ChunkMemory", "ConversationMemory", "ConversationalSearch", "ExampleBank",
    "KnowledgeBase", "Layout", "Tool", "ToolBox", "augment", "chunk_text", "get_layout", "register_layout",
]
