"""The LLM in the loop on a real (tiny) causal LM."""

import pytest
import torch
from prompt_fixtures import varied_length_qa

from llm_embedder.evaluate.downstream import EVAL_BATCH_TOKENS, downstream_metrics
from llm_embedder.llm import CausalLM
from llm_embedder.llm.fast import cpu_has_bf16


def test_a_prompt_scores_the_same_whatever_it_is_scored_beside(tiny_lm_dir):
    # the demo's mode where the CPU has it: batched, bf16 scores moved with their neighbours' padding
    lm = CausalLM(str(tiny_lm_dir), fast="bf16" if cpu_has_bf16() else None)
    queries, answers, retrieved = varied_length_qa(8)
    alone = downstream_metrics("qa", queries[:3], answers[:3], retrieved[:3], lm, generate=False)
    beside_others = downstream_metrics("qa", queries, answers, retrieved, lm, generate=False)
    assert beside_others.per_query[:3] == alone.per_query


class RecordingLM:
    """Scores every pair -1.0 and records the batch_tokens it was asked to use."""

    def __init__(self, device: str, dtype: torch.dtype):
        self.device, self.dtype, self.asked = torch.device(device), dtype, []

    def answer_logprob(self, prompts, answers, batch_tokens=None, progress=None):
        self.asked.append(batch_tokens)
        return [-1.0] * len(prompts)


@pytest.mark.parametrize(("device", "dtype", "expected"), [
    ("cpu", torch.float32, EVAL_BATCH_TOKENS),
    ("cpu", torch.bfloat16, EVAL_BATCH_TOKENS),
    ("cuda", torch.float32, EVAL_BATCH_TOKENS),  # fp32 scores moved with their neighbours on an H100
    ("cuda", torch.bfloat16, None),  # the LLM's own batches: bit-identical to alone there, 16x faster
    ("cuda", torch.float16, None),
])
def test_prompts_are_scored_alone_except_in_half_precision_on_a_gpu(device, dtype, expected):
    lm = RecordingLM(device, dtype)
    downstream_metrics("qa", ["q1", "q2"], [["a"], ["b"]], [["p1"], ["p2"]], lm, generate=False)
    assert lm.asked == [expected]
    downstream_metrics("qa", ["q3"], [["c"]], [["p3"]], lm, generate=False, batch_tokens=512)
    assert lm.asked[-1] == 512


def test_progress_follows_the_prompts_sent_to_the_llm(tiny_lm_dir):
    lm = CausalLM(str(tiny_lm_dir))
    queries, answers, retrieved = varied_length_qa(6)
    memo, seen = {}, []
    first = downstream_metrics("qa", queries[:4], answers[:4], retrieved[:4], lm, generate=False, memo=memo,
                               progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)  # only forward
    seen.clear()  # a second system: only the two prompts the memo lacks go to the LLM
    second = downstream_metrics("qa", queries, answers, retrieved, lm, generate=False, memo=memo,
                                progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)
    assert second.per_query[:4] == first.per_query
    seen.clear()
    downstream_metrics("qa", queries, answers, retrieved, lm, generate=False, memo=memo,
                       progress=lambda done, total: seen.append((done, total)))
    assert seen == []  # all from the memo
