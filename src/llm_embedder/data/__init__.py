"""The offline task suite: builders for the six tasks from installed packages, loaders, and the validator.

Heavy imports stay in the submodules: ``from llm_embedder.data.suite import build_suite``,
``from llm_embedder.data.validate import validate_file``, ``from llm_embedder.data.loaders import load_beir``.
"""
