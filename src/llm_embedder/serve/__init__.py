"""Serving: an OpenAI-compatible embedding, search and augmentation HTTP server (FastAPI + uvicorn).

``create_app(embedder, retrievers, settings)`` builds the app; ``llm-embedder serve`` runs it.
"""

from llm_embedder.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
