"""``python -m llm_embedder`` (also what ``torchrun -m llm_embedder`` runs)."""

from llm_embedder.cli import main

if __name__ == "__main__":
    main()
