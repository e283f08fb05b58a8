"""Prompts shared by the LLM-scoring tests and benchmarks/gpu_check.py."""

from __future__ import annotations


def varied_length_qa(n: int = 8) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """``n`` qa queries, gold answers and one retrieved passage each, of lengths that differ, so batches pad."""
    queries = [f"question {i}: " + "word " * (3 * i) for i in range(n)]
    answers = [[f"answer {i}"] for i in range(n)]
    retrieved = [[f"passage {i}: " + "text " * (4 * (n - i))] for i in range(n)]
    return queries, answers, retrieved
