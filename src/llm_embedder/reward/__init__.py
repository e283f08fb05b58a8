"""The reward: teacher scores for every candidate, from the LLM's likelihood of the answer (recipe §2.7)."""

from llm_embedder.reward.run import score_file
from llm_embedder.reward.scorer import ScoreStats, score_records

__all__ = ["ScoreStats", "score_file", "score_records"]
