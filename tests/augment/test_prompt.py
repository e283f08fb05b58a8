"""augment(): per-task layouts from recipe §3, budget handling, user layouts."""

from __future__ import annotations

import pytest

from llm_embedder.augment import Layout, augment, register_layout
from llm_embedder.augment.prompt import LAYOUTS, token_counter


def test_qa_knowledge_prefix() -> None:
    prompt = augment("qa", "Who wrote Hamlet?", ["Shakespeare wrote Hamlet.", "Hamlet is a play."])
    assert prompt == "Knowledge: Shakespeare wrote Hamlet.\nHamlet is a play.\n\nQuestion: Who wrote Hamlet?\nAnswer:"


def test_icl_demonstrations_most_similar_last() -> None:
    prompt = augment("icl", "2+2=", ["1+1=\n2", "3+3=\n6"])
    assert prompt == "3+3=\n6\n1+1=\n2\n2+2=\n"


def test_chat_history_turn() -> None:
    prompt = augment("chat", "Do you like cats?", ["Speaker 1: I have a cat.\nSpeaker 2: Nice!"])
    assert prompt == "Speaker 1: I have a cat.\nSpeaker 2: Nice!\nSpeaker 1: Do you like cats?\nSpeaker 2:"


def test_lrlm_chunks_in_document_order() -> None:
    prompt = augment("lrlm", "NOW", ["c3 ", "c1 ", "c2 "], positions=[3, 1, 2])
    assert prompt == "c1 c2 c3 NOW"


def test_tool_and_convsearch_layouts() -> None:
    assert augment("tool", "weather in Paris", ["get_weather: Weather. Parameters: city (string, required)."]) == (
        "Available tools:\nget_weather: Weather. Parameters: city (string, required).\n\n"
        "Request: weather in Paris\nTool call:"
    )
    assert augment("convsearch", "hi what is X", ["X is Y."]) == (
        "Knowledge: X is Y.\n\nContext and Question: hi what is X\nAnswer:"
    )


def test_no_items_gives_query_only_and_generic_fallback() -> None:
    assert augment("qa", "q?", []) == "Question: q?\nAnswer:"
    from llm_embedder.tasks import register_task, unregister_task

    register_task(name="my_task", query_instruction="q: ", key_instruction="k: ")  # a user task without a layout
    try:
        assert augment("my_task", "q?", ["k"]) == "Knowledge: k\n\nQuestion: q?\nAnswer:"
    finally:
        unregister_task("my_task")


def test_budget_drops_lowest_ranked_first() -> None:
    items = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota kappa"]
    full = augment("qa", "q", items, budget_tokens=1000)
    n = token_counter()(full)
    assert augment("qa", "q", items, budget_tokens=n) == full
    cut = augment("qa", "q", items, budget_tokens=n - 1)
    assert cut == "Knowledge: alpha beta gamma\ndelta epsilon\n\nQuestion: q\nAnswer:"
    assert augment("icl", "q", items, budget_tokens=token_counter()("alpha beta gamma\nq\n")) == "alpha beta gamma\nq\n"
    with pytest.raises(ValueError, match="query alone takes"):
        augment("qa", "a very long question " * 10, items, budget_tokens=5)


def test_real_tokenizer_counts(tiny_embedder) -> None:
    tok = tiny_embedder.tokenizer
    items = ["one two three four five"] * 4
    prompt = augment("qa", "q", items, budget_tokens=20, tokenizer=tok)
    kept = prompt.count("one two")
    assert 0 < kept < 4 and len(tok.encode(prompt, add_special_tokens=False)) <= 20
    one_more = augment("qa", "q", items[: kept + 1], budget_tokens=10_000, tokenizer=tok)
    assert len(tok.encode(one_more, add_special_tokens=False)) > 20


def test_an_embedder_or_a_model_counts_with_its_tokenizer(tiny_embedder) -> None:
    """A model passed as the tokenizer counts whole texts with its HF tokenizer, as that tokenizer does: an
    Embedder's own count_tokens (special tokens, its max length) is not what a prompt budget means."""
    tok = tiny_embedder.tokenizer
    long_item = "word " * 400  # past the tiny embedder's max length: a truncating count would let it in
    items = ["one two three four five", long_item, "six seven"]
    by_model = augment("qa", "q", items, budget_tokens=60, tokenizer=tiny_embedder)
    assert by_model == augment("qa", "q", items, budget_tokens=60, tokenizer=tok)
    assert "word word" not in by_model and "six seven" in by_model

    class CountsOnly:  # an object with a count_tokens per text and nothing else still counts
        def count_tokens(self, texts):
            return [len(tok.encode(t, add_special_tokens=False)) for t in texts]

    assert augment("qa", "q", items, budget_tokens=60, tokenizer=CountsOnly()) == by_model


def test_register_layout_for_user_task() -> None:
    register_layout("recipes", {"header": "Recipes:\n", "query": "Cook: {query}\n", "separator": "\n---\n"})
    try:
        assert augment("recipes", "soup", ["a", "b"]) == "Recipes:\na\n---\nb\n\nCook: soup\n"
    finally:
        LAYOUTS.pop("recipes")
    with pytest.raises(ValueError, match="must contain"):
        Layout(query="no placeholder")
    with pytest.raises(TypeError, match="retrieved items must be strings"):
        augment("qa", "q", [3])


def test_an_item_over_the_budget_is_left_out_and_later_ones_still_fit() -> None:
    """It used to drop every item after the first that did not fit: the prompt lost 'Ada wrote it.' too."""
    from llm_embedder.augment.prompt import fit_prompt

    items = ["word " * 300, "Ada wrote it.", "word " * 300, "Hamlet is a play."]
    prompt, kept = fit_prompt("qa", "who?", items, budget_tokens=50)
    assert kept == [1, 3] and prompt == "Knowledge: Ada wrote it.\nHamlet is a play.\n\nQuestion: who?\nAnswer:"


def test_fitting_many_items_counts_each_once_not_the_whole_list_again_and_again() -> None:
    """300 items that do not fit were counted as whole prompts of 300, 299, ... items (a minute with a tokenizer)."""
    from llm_embedder.augment.prompt import approximate_tokens, fit_prompt

    counted: list[int] = []

    def counter(text: str) -> int:
        counted.append(len(text))
        return approximate_tokens(text)

    items = ["lorem ipsum dolor sit amet " * 40] * 300
    prompt, kept = fit_prompt("qa", "q", items, budget_tokens=1024, tokenizer=counter)
    assert 0 < len(kept) < 300 and approximate_tokens(prompt) <= 1024
    assert sum(counted) < 3 * sum(len(item) for item in items)  # the old way counted ~100x that


def test_the_estimate_without_a_tokenizer_errs_high() -> None:
    """Words alone counted a line of Japanese as 1 token and a 500-character URL as 9: budgets were exceeded 600x."""
    from transformers import AutoTokenizer

    from llm_embedder.augment.prompt import approximate_tokens
    from llm_embedder.demo import load_demo_corpus
    from llm_embedder.llm.loading import resolve_llm_path

    tok = AutoTokenizer.from_pretrained(str(resolve_llm_path("smollm2")))
    english = " ".join(key for task in load_demo_corpus().values() for key in task["keys"])
    texts = [english, "東京は日本の首都です" * 30, "https://example.com/" + "abcdefghij" * 50, "3.14159 2.71828 " * 20]
    for text in texts:
        real = len(tok.encode(text, add_special_tokens=False))
        assert 0.85 * real <= approximate_tokens(text), (text[:30], real, approximate_tokens(text))
    assert approximate_tokens(english) <= 1.5 * len(tok.encode(english, add_special_tokens=False))


def test_augment_refuses_what_it_would_misread(tiny_embedder_dir) -> None:
    from llm_embedder.tasks import UnknownTaskError

    with pytest.raises(TypeError, match="retrieved is a string"):  # was one item per character
        augment("qa", "who wrote Hamlet?", "Shakespeare wrote it", 200)
    with pytest.raises(UnknownTaskError, match="unknown task 'QA'"):  # was laid out with the generic layout
        augment("QA", "q", ["a"], 100)
    with pytest.raises(ValueError, match="budget_tokens must be a positive whole number, got '100'"):
        augment("qa", "q", [], "100")


def test_a_tokenizer_given_by_folder_is_loaded(tiny_embedder_dir) -> None:
    """A str has .encode, so a folder name was taken for a tokenizer and failed on add_special_tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_embedder_dir))
    items = ["one two three four five"] * 4
    assert augment("qa", "q", items, 20, tokenizer=str(tiny_embedder_dir)) == augment("qa", "q", items, 20, tok)
    with pytest.raises(FileNotFoundError, match="neither a model directory nor 'smollm2'"):
        augment("qa", "q", items, 20, tokenizer="no-such-folder")
