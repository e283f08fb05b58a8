"""Evaluation: retrieval metrics and the LLM's downstream quality, with baselines, as JSON, markdown and plots."""

from llm_embedder.evaluate.downstream import DOWNSTREAM, main_metric
from llm_embedder.evaluate.metrics import retrieval_metrics
from llm_embedder.evaluate.rankers import (
    BM25Ranker,
    DenseRanker,
    GoldRanker,
    NoRetrieval,
    RandomRanker,
    RecencyRanker,
    TeacherRanker,
)
from llm_embedder.evaluate.report import markdown_table, write_report
from llm_embedder.evaluate.run import load_task_data, run_evaluation

__all__ = [
    "BM25Ranker", "DOWNSTREAM", "DenseRanker", "GoldRanker", "NoRetrieval", "RandomRanker", "RecencyRanker",
    "TeacherRanker", "load_task_data", "main_metric", "markdown_table", "retrieval_metrics", "run_evaluation",
    "write_report",
]
