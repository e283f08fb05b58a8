"""Training the unified embedder (recipe §2): examples, homogeneous batches, per-task losses, the trainer.

Entry points: ``llm_embedder.train.trainer.train(config)`` and ``llm_embedder.train.mine.mine_negatives``;
the CLI commands ``train`` and ``mine`` wrap them. Heavy imports (torch, sentence-transformers) stay inside
the submodules, so importing this package is cheap.
"""
