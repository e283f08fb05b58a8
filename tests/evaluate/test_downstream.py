"""The LLM in the loop on a real (tiny) causal LM."""

from llm_embedder.evaluate.downstream import downstream_metrics
from llm_embedder.llm import CausalLM
from llm_embedder.llm.fast import cpu_has_bf16


def test_a_prompt_scores_the_same_whatever_it_is_scored_beside(tiny_lm_dir):
    # the demo's mode where the CPU has it: batched, bf16 scores moved with their neighbours' padding
    lm = CausalLM(str(tiny_lm_dir), fast="bf16" if cpu_has_bf16() else None)
    queries = [f"question {i}: " + "word " * (3 * i) for i in range(8)]  # lengths differ, so batches pad
    answers = [[f"answer {i}"] for i in range(8)]
    retrieved = [[f"passage {i}: " + "text " * (4 * (8 - i))] for i in range(8)]
    alone = downstream_metrics("qa", queries[:3], answers[:3], retrieved[:3], lm, generate=False)
    beside_others = downstream_metrics("qa", queries, answers, retrieved, lm, generate=False)
    assert beside_others.per_query[:3] == alone.per_query
