import json

import numpy as np
import pytest
import torch

from llm_embedder.demo import load_demo_corpus
from llm_embedder.embedder import Embedder
from llm_embedder.tasks import UnknownTaskError, get_task, list_tasks, register_task, unregister_task


def test_vectors_are_normalised_float32(tiny_embedder):
    vectors = tiny_embedder.encode_queries(["what is a planet?", "hello there"], task="qa")
    assert vectors.dtype == np.float32 and vectors.shape == (2, tiny_embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_instruction_changes_the_vector_and_roles_differ(tiny_embedder_dir):
    with_instructions = Embedder(tiny_embedder_dir, device="cpu")
    plain = Embedder(tiny_embedder_dir, device="cpu", use_instructions=False)
    text = ["the same text"]
    query = with_instructions.encode_queries(text, "qa")
    key = with_instructions.encode_keys(text, "qa")
    assert not np.allclose(query, key)
    assert not np.allclose(query, plain.encode_queries(text, "qa"))
    expected = plain.model.encode([get_task("qa").query_instruction + text[0]], normalize_embeddings=True)
    np.testing.assert_allclose(query, expected, atol=1e-6)


def test_empty_inputs(tiny_embedder):
    assert tiny_embedder.encode_keys([], "tool").shape == (0, tiny_embedder.dim)
    assert tiny_embedder.encode_queries("a single string", "qa").shape == (1, tiny_embedder.dim)


@pytest.mark.parametrize(("texts", "message"), [
    ([""], r"texts\[0\] is empty"),
    (["a question", "another", " \n\t"], r"texts\[2\] holds only whitespace"),
    (["ok", "\u200b \ufeff"], r"texts\[1\] holds only invisible characters \(U\+200B, U\+FEFF\)"),
    ("", r"texts\[0\] is empty"),
])
def test_an_empty_text_is_refused_naming_its_position(tiny_embedder, texts, message):
    """It was embedded as the instruction alone: a vector near every query (or key), returned without a word."""
    for role in ("query", "key"):
        with pytest.raises(ValueError, match=message):
            tiny_embedder.encode(texts, "qa", role)


def test_convert_to_tensor_gives_the_same_vectors_as_a_float32_tensor(tiny_embedder):
    texts = ["what is a planet?", "hello there"]
    for role in ("query", "key"):
        tensor = tiny_embedder.encode(texts, "chat", role, convert_to_tensor=True)
        assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
        assert tensor.device.type == "cpu" and not tensor.requires_grad
        np.testing.assert_allclose(tensor.numpy(), tiny_embedder.encode(texts, "chat", role), atol=1e-6)
    assert torch.equal(tiny_embedder.encode_queries(texts, "qa", convert_to_tensor=True),
                       torch.from_numpy(tiny_embedder.encode_queries(texts, "qa")))
    empty = tiny_embedder.encode_keys([], "tool", convert_to_tensor=True)
    assert isinstance(empty, torch.Tensor) and empty.shape == (0, tiny_embedder.dim) and empty.dtype == torch.float32


def test_non_string_item_names_its_index(tiny_embedder):
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        tiny_embedder.encode_queries(["a", "b", 3], "qa")


def test_unknown_task_lists_tasks(tiny_embedder):
    with pytest.raises(UnknownTaskError, match="convsearch"):
        tiny_embedder.encode_queries(["a"], "bogus")


def test_missing_model_names_path_and_aliases(tmp_path):
    with pytest.raises(FileNotFoundError, match="minilm") as info:
        Embedder(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


def test_truncation_to_max_length(tiny_embedder_dir):
    short = Embedder(tiny_embedder_dir, device="cpu", query_max_length=16, key_max_length=256)
    long_text = "word " * 600
    a = short.encode_queries([long_text], "qa")
    b = short.encode_queries([long_text + " extra words at the very end"], "qa")
    np.testing.assert_allclose(a, b, atol=1e-6)  # both cut at 16 tokens
    c = short.encode_keys(["word " * 10], "qa")
    d = short.encode_keys(["word " * 10 + " different ending"], "qa")
    assert not np.allclose(c, d)


def test_default_max_length_is_the_saved_one(tiny_embedder_dir, tmp_path):
    """A model saved at 16 tokens (as ``llm-embedder train --query-max-length 16`` saves it) encodes 16 tokens
    when reloaded, as SentenceTransformer(path) does; an explicit length still wins."""
    from sentence_transformers import SentenceTransformer

    assert Embedder(tiny_embedder_dir, device="cpu").query_max_length == 256  # the fixture's saved length
    out = Embedder(tiny_embedder_dir, device="cpu", query_max_length=16, key_max_length=16).save(tmp_path / "m16")
    reloaded = Embedder(out, device="cpu")
    assert (reloaded.query_max_length, reloaded.key_max_length) == (16, 16)
    long_text = "word " * 40
    a, b = reloaded.encode_keys([long_text, long_text + "and a different ending"], "qa")
    np.testing.assert_allclose(a, b, atol=1e-6)  # both cut at 16 tokens
    theirs = SentenceTransformer(str(out), device="cpu").encode(
        [long_text], prompt_name="qa.key", normalize_embeddings=True)
    np.testing.assert_allclose(reloaded.encode_keys([long_text], "qa"), theirs, atol=1e-5)
    longer = Embedder(out, device="cpu", key_max_length=256)
    assert not np.allclose(*longer.encode_keys([long_text, long_text + "and a different ending"], "qa"))


def test_batching_gives_the_same_vectors(tiny_embedder):
    texts = [f"text number {i} " * (i % 7 + 1) for i in range(20)]
    np.testing.assert_allclose(
        tiny_embedder.encode_keys(texts, "qa", batch_size=3), tiny_embedder.encode_keys(texts, "qa", batch_size=20),
        atol=1e-5,
    )


def test_saved_prompts_round_trip_through_sentence_transformers(tiny_embedder, tmp_path):
    from sentence_transformers import SentenceTransformer

    try:
        register_task(name="custom", query_instruction="Custom query: ", key_instruction="Custom key: ")
        out = tiny_embedder.save(tmp_path / "model")
        plain = SentenceTransformer(str(out), device="cpu")
        assert set(plain.prompts) >= {f"{t}.{r}" for t in list_tasks() for r in ("query", "key")}
        texts = ["a question about planets", "x"]  # an empty text is refused (it is the instruction alone)
        for task in list_tasks():
            ours = tiny_embedder.encode_queries(texts, task)
            theirs = plain.encode(texts, prompt_name=f"{task}.query", normalize_embeddings=True)
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
    finally:
        unregister_task("custom")
    # a saved model brings its own user tasks back
    reloaded = Embedder(out, device="cpu")
    assert get_task("custom").key_instruction == "Custom key: "
    assert reloaded.encode_keys(["x"], "custom").shape == (1, reloaded.dim)
    unregister_task("custom")


def test_a_task_registered_otherwise_than_the_model_saved_it_warns_and_the_model_wins(tiny_embedder, tmp_path):
    from llm_embedder.embedder import TaskRedefinedWarning

    try:
        register_task(name="custom", query_instruction="Custom query: ", key_instruction="Custom key: ")
        out = tiny_embedder.save(tmp_path / "model")
        trained_with = tiny_embedder.encode_queries(["x"], "custom")
    finally:
        unregister_task("custom")
    try:  # a --task-file of another definition, registered before the model loads
        register_task(name="custom", query_instruction="Other query: ", key_instruction="Custom key: ")
        with pytest.warns(TaskRedefinedWarning, match="task 'custom' is registered with other instructions"):
            reloaded = Embedder(out, device="cpu")
        np.testing.assert_allclose(reloaded.encode_queries(["x"], "custom"), trained_with, atol=1e-6)
    finally:
        unregister_task("custom")


def test_a_saved_model_carries_its_user_task_s_augment_layout(tiny_embedder, tmp_path):
    """A model trained with a task file's layout lost it: augment and serve, given the model alone, laid the task out
    as qa ("Knowledge: ..."), unless the same --task-file was given again."""
    from llm_embedder.augment.prompt import LAYOUTS, augment, register_layout

    try:
        register_task(name="custom", query_instruction="Custom query: ", key_instruction="Custom key: ")
        register_layout("custom", {"header": "Cases:\n", "query": "Case: {query}\nRuling:"})
        out = tiny_embedder.save(tmp_path / "model")
    finally:
        unregister_task("custom")
    assert "custom" not in LAYOUTS  # unregistering a task drops its layout too
    try:
        Embedder(out, device="cpu")
        assert augment("custom", "a stolen bike", ["best"]) == "Cases:\nbest\n\nCase: a stolen bike\nRuling:"
    finally:
        unregister_task("custom")
    try:  # a layout registered before the model loads (a --task-file given with it) is the one used
        register_task(name="custom", query_instruction="Custom query: ", key_instruction="Custom key: ")
        register_layout("custom", {"query": "Q: {query}"})
        Embedder(out, device="cpu")
        assert augment("custom", "a stolen bike", ["best"]) == "best\n\nQ: a stolen bike"
    finally:
        unregister_task("custom")
    saved = json.loads((out / "llm_embedder_tasks.json").read_text())
    assert set(saved["layouts"]) == {"custom"}  # built-in tasks keep their layouts in code


@pytest.mark.integration
@pytest.mark.parametrize("task", list(load_demo_corpus()))
def test_minilm_ranks_relevant_keys_above_irrelevant(minilm, task):
    data = load_demo_corpus()[task]
    scores = minilm.encode_queries(data["queries"], task) @ minilm.encode_keys(data["keys"], task).T
    for row, relevant, related in zip(scores, data["relevant"], data["related"], strict=True):
        unrelated = [i for i in range(len(data["keys"])) if i not in relevant and i not in related]
        assert min(row[i] for i in relevant) > max(row[i] for i in unrelated)


@pytest.mark.integration
def test_minilm_prompts_round_trip(minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = minilm.save(tmp_path / "minilm")
    plain = SentenceTransformer(str(out), device="cpu")
    texts = load_demo_corpus()["qa"]["keys"]
    for task in ("qa", "chat", "tool"):
        for role in ("query", "key"):
            ours = minilm.encode(texts, task, role)
            theirs = plain.encode(texts, prompt_name=f"{task}.{role}", normalize_embeddings=True)
            assert np.abs(ours - theirs).max() < 1e-5


def test_counting_tokens_beside_encoding_is_thread_safe(tiny_embedder):
    """The server counts tokens on request threads while the batcher encodes: neither may disturb the other."""
    from concurrent.futures import ThreadPoolExecutor

    texts = ["short", "a somewhat longer text with more words in it " * 3, "mid length text here"] * 40
    reference = tiny_embedder.encode_keys(texts, "qa", batch_size=2)
    expected = tiny_embedder.count_tokens(texts)
    with ThreadPoolExecutor(4) as pool:
        encodes = [pool.submit(tiny_embedder.encode_keys, texts, "qa", batch_size=2) for _ in range(4)]
        counts = [pool.submit(tiny_embedder.count_tokens, texts) for _ in range(300)]
        assert all(c.result() == expected for c in counts)
        for future in encodes:
            np.testing.assert_allclose(future.result(), reference, atol=1e-6)


def test_count_tokens_counts_what_encode_feeds_the_model(tiny_embedder):
    text = "Paris is the capital of France."
    tokenizer = tiny_embedder.tokenizer
    instruction = tiny_embedder.instruction("chat", "key")
    assert instruction and tiny_embedder.count_tokens([text]) == len(tokenizer(text)["input_ids"])
    assert tiny_embedder.count_tokens([text], "chat", "key") == len(tokenizer(instruction + text)["input_ids"])
    long = "word " * 5000
    assert tiny_embedder.count_tokens([long, text], "qa", "key") == (
        tiny_embedder.key_max_length + tiny_embedder.count_tokens([text], "qa", "key"))


def test_a_small_count_does_not_wait_for_a_big_one(tiny_embedder):
    """The server counts small requests on its event loop: a big count on another thread must not hold it up."""
    import threading

    started, big_done = threading.Event(), threading.Event()

    class Texts(list):
        def __iter__(self):  # read just before tokenizing
            started.set()
            return super().__iter__()

    def count_big() -> None:
        tiny_embedder.count_tokens(Texts(["many words in a very long text " * 1000] * 20))
        big_done.set()

    worker = threading.Thread(target=count_big)
    worker.start()
    assert started.wait(60)
    assert tiny_embedder.count_tokens(["small"]) > 0
    assert not big_done.is_set()
    worker.join()


def test_fast_bf16_linears_stay_close_to_exact_vectors(tiny_embedder_dir):
    from llm_embedder.llm.fast import Bf16Linear

    texts = ["Paris is the capital of France.", "def add(a, b): return a + b", "a third, longer text " * 8]
    exact = Embedder(tiny_embedder_dir, device="cpu")
    fast = Embedder(tiny_embedder_dir, device="cpu", fast="bf16")
    layers = [m for m in fast.model.modules() if isinstance(m, Bf16Linear)]
    assert layers and not any(isinstance(m, torch.nn.Linear) for m in fast.model.modules())
    a, b = exact.encode_keys(texts, "qa"), fast.encode_keys(texts, "qa")
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cosine = (a * b).sum(axis=1)
    assert cosine.min() > 0.999 and not np.array_equal(a, b)  # approximate, not a copy of the exact path


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fast": "int8"}, "fast must be None or 'bf16'"),
    ({"fast": "bf16", "dtype": "bf16"}, "is for an fp32 torch model on the CPU"),
])
def test_fast_mode_refuses_what_it_cannot_do(tiny_embedder_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Embedder(tiny_embedder_dir, device="cpu", **kwargs)


def test_fast_model_is_not_saved(tiny_embedder_dir, tmp_path):
    with pytest.raises(ValueError, match="save\\(\\) needs the exact model"):
        Embedder(tiny_embedder_dir, device="cpu", fast="bf16").save(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", "device 'gpu': not a torch device (cpu, cuda, cuda:N, mps)"),
        ("CUDA", "device 'CUDA': not a torch device (cpu, cuda, cuda:N, mps)"),
        ("cuda:x", "device 'cuda:x': not a torch device (cpu, cuda, cuda:N, mps)"),
        ("meta", "device 'meta': models cannot run on meta; use cpu, cuda, cuda:N, mps"),
    ],
)
def test_bad_device_is_refused_before_the_model_loads(tiny_embedder_dir, monkeypatch, device, message):
    import sentence_transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", no_loading)
    with pytest.raises(ValueError) as err:
        Embedder(tiny_embedder_dir, device=device)
    assert str(err.value) == message


def test_missing_accelerator_is_named(monkeypatch):
    from llm_embedder.models import check_device

    assert check_device(None) is None and check_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as err:
        check_device("cuda")
    assert str(err.value) == "device 'cuda': CUDA is not available on this machine"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError) as err:
        check_device("cuda:2")
    assert str(err.value) == "device 'cuda:2': this machine has 2 CUDA device(s), cuda:0 to cuda:1"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="^device 'mps': MPS .* is not available on this machine$"):
        check_device("mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_a_clear_error(tiny_embedder_dir):
    with pytest.raises(ValueError, match="^device 'cuda': CUDA is not available on this machine$"):
        Embedder(tiny_embedder_dir, device="cuda")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_max_length": -5}, "query_max_length must be a whole number of at least 1, got -5"),
        ({"query_max_length": 0}, "query_max_length must be a whole number of at least 1, got 0"),
        ({"key_max_length": 0}, "key_max_length must be a whole number of at least 1, got 0"),
        ({"key_max_length": 8.5}, "key_max_length must be a whole number of at least 1, got 8.5"),
        ({"batch_size": 0}, "batch_size must be a whole number of at least 1, got 0"),
        ({"batch_size": -3}, "batch_size must be a whole number of at least 1, got -3"),
        ({"batch_size": True}, "batch_size must be a whole number of at least 1, got True"),
    ],
)
def test_bad_lengths_and_batch_sizes_are_refused_before_the_model_loads(tiny_embedder_dir, monkeypatch, kwargs,
                                                                        message):
    """A negative length failed at the first encode (OverflowError), 0 silently meant the saved length, a batch
    size of 0 was kept until the first encode: each is refused where it is given."""
    import sentence_transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", no_loading)
    with pytest.raises(ValueError) as err:
        Embedder(tiny_embedder_dir, device="cpu", **kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_bad_batch_size_for_one_encode_is_refused(tiny_embedder, batch_size):
    """``encode(..., batch_size=0)`` silently used the embedder's default."""
    with pytest.raises(ValueError, match=f"^batch_size must be a whole number of at least 1, got {batch_size}$"):
        tiny_embedder.encode_queries(["a text"], "qa", batch_size=batch_size)
    assert tiny_embedder.encode_queries(["a text"], "qa", batch_size=1).shape == (1, tiny_embedder.dim)


def test_a_max_length_beyond_the_model_positions_is_refused(tiny_embedder_dir):
    """The tiny BERT has 512 positions: 1000 tokens failed inside the model (RuntimeError) at the first encode."""
    for kwargs in ({"query_max_length": 1000}, {"key_max_length": 513}):
        with pytest.raises(ValueError, match=r"more than model .* can encode: 512 positions .* give at most 512$"):
            Embedder(tiny_embedder_dir, device="cpu", **kwargs)
    at_limit = Embedder(tiny_embedder_dir, device="cpu", query_max_length=512, key_max_length=512)
    assert at_limit.position_limit() == 512
    assert at_limit.encode_keys(["word " * 600], "qa").shape == (1, at_limit.dim)


def test_count_tokens_takes_what_encode_takes(tiny_embedder):
    """No texts raised IndexError; a plain string was counted a character at a time."""
    assert tiny_embedder.count_tokens([], "qa") == 0 and tiny_embedder.count_tokens([]) == 0
    assert tiny_embedder.count_tokens("hello there", "qa") == tiny_embedder.count_tokens(["hello there"], "qa")
    assert tiny_embedder.count_tokens("hello there") == len(tiny_embedder.tokenizer("hello there")["input_ids"])
    with pytest.raises(UnknownTaskError):
        tiny_embedder.count_tokens([], "bogus")


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ({"a": 1}, r"^texts must be a string or a list of strings, got a dict \(a dict gives its keys\); pass a list$"),
        ({"a", "b"}, r"^texts must be a string or a list of strings, got a set \(its order is arbitrary.*pass a list$"),
        (frozenset({"a"}), r"got a frozenset \(its order is arbitrary"),
        ({"a": 1}.keys(), r"got a dict_keys"),
        (b"hello", r"got bytes; decode it first"),  # was "texts[0] must be a string, got int"
    ],
)
def test_dicts_and_sets_of_texts_are_refused(tiny_embedder, texts, message):
    """A dict was encoded as its keys, a set in an arbitrary order the vectors could not be mapped back by."""
    with pytest.raises(TypeError, match=message):
        tiny_embedder.encode_queries(texts, "qa")
    with pytest.raises(TypeError, match=message):
        tiny_embedder.count_tokens(texts, "qa")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_vectors_are_normalised_in_float32(tiny_embedder_dir, dtype):
    """Normalised in bf16 (fp16 on a GPU) and then cast, the vectors had norms like 1.0011 and 0.9990, not the
    L2-normalised float32 the docstring promises."""
    texts = ["what is a planet?", "hello there", "a third, longer text about the solar system " * 5]
    half = Embedder(tiny_embedder_dir, device="cpu", dtype=dtype)
    for convert_to_tensor in (False, True):
        vectors = half.encode_queries(texts, "qa", convert_to_tensor=convert_to_tensor)
        vectors = vectors.numpy() if convert_to_tensor else vectors
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    exact = Embedder(tiny_embedder_dir, device="cpu").encode_queries(texts, "qa")
    assert (exact * half.encode_queries(texts, "qa")).sum(axis=1).min() > 0.99  # the same vectors, in half precision


def test_the_package_exports_its_public_names_lazily():
    """The README's Python API names import from the package; importing it alone does not load torch."""
    import subprocess
    import sys

    code = ("import sys, llm_embedder; assert 'torch' not in sys.modules; "
            "from llm_embedder import CausalLM, Embedder, Retriever, register_task, register_tasks_from_file; "
            "from llm_embedder.retriever import Retriever as R; assert Retriever is R; "
            "assert set(llm_embedder.__all__) <= set(dir(llm_embedder))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_counting_a_text_past_the_model_s_length_logs_nothing(tiny_embedder_dir, caplog):
    """count_tokens(truncate=False) made transformers log "Token indices sequence length is longer than the
    specified maximum sequence length ... will result in indexing errors": counting such a text is the point."""
    embedder = Embedder(tiny_embedder_dir, device="cpu")
    caplog.clear()
    assert embedder.count_tokens(["word " * 600], "qa", "key", truncate=False) > 600
    assert "longer than the specified maximum" not in caplog.text
