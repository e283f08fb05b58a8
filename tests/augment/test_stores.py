"""The scenario stores over Retriever: knowledge, conversation memory, chunks, examples, tools, conv. search."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llm_embedder.augment import (
    ChunkMemory,
    ConversationalSearch,
    ConversationMemory,
    ExampleBank,
    KnowledgeBase,
    ToolBox,
    chunk_text,
)
from llm_embedder.retriever import Retriever


def ranked(embedder, task: str, query: str, texts: list[str]) -> list[int]:
    """The expected ranking, computed directly from the embedder (the tiny model is random)."""
    scores = embedder.encode_queries(query, task) @ embedder.encode_keys(texts, task).T
    return [int(i) for i in (-scores[0]).argsort()]


FACTS = ["Paris is the capital of France.", "Water boils at 100 degrees Celsius.", "Cats are mammals."]


def test_knowledge_base(tiny_embedder, tmp_path: Path) -> None:
    kb = KnowledgeBase(tiny_embedder, FACTS, index_dir=tmp_path / "kb")
    best = FACTS[ranked(tiny_embedder, "qa", "capital?", FACTS)[0]]
    assert len(kb) == 3 and kb.search("capital?", k=1)[0].text == best
    assert kb.prompt("capital?", k=1) == f"Knowledge: {best}\n\nQuestion: capital?\nAnswer:"
    kb.add([{"text": "Dogs bark.", "kind": "animal"}])
    reopened = KnowledgeBase(tiny_embedder, index_dir=tmp_path / "kb")
    assert len(reopened) == 4
    assert [h.text for h in reopened.search("x", k=4, filter={"kind": "animal"})] == ["Dogs bark."]


def test_a_store_refuses_a_string_of_documents(tiny_embedder) -> None:
    with pytest.raises(TypeError, match=r"documents is a string \('Paris is the capital of France.'\); pass a list"):
        KnowledgeBase(tiny_embedder, "Paris is the capital of France.")
    kb = KnowledgeBase(tiny_embedder)
    with pytest.raises(TypeError, match=r"documents is a string \('Cats are mammals.'\)"):
        kb.add("Cats are mammals.")
    assert len(kb) == 0


def test_conversation_memory_relevance_and_recency(tiny_embedder) -> None:
    memory = ConversationMemory(tiny_embedder, min_score=-1.0)
    assert memory.retrieve("hi") == [] and memory.prompt("hi") == "Speaker 1: hi\nSpeaker 2:"
    memory.add_turn("I have a cat named Tom.", "Lovely!")
    only = memory.retrieve("anything")
    assert len(only) == 1 and math.isnan(only[0].score) and only[0].metadata["recency"]  # too few turns
    memory.add_turn("I work as a nurse.", "Busy job.")
    memory.add_turn("My favourite food is pizza.", "Yum.")
    hits = memory.retrieve("cat", k=1)
    assert hits[0].metadata["turn"] == ranked(tiny_embedder, "chat", "cat", memory.turns)[0]
    assert not math.isnan(hits[0].score) and "recency" not in hits[0].metadata
    memory.min_score = 2.0  # nothing can be relevant enough -> recency
    assert [h.metadata["turn"] for h in memory.retrieve("cat", k=2)] == [1, 2]
    prompt = memory.prompt("cat", k=1)
    assert prompt == "Speaker 1: My favourite food is pizza.\nSpeaker 2: Yum.\nSpeaker 1: cat\nSpeaker 2:"


def test_conversation_memory_refuses_a_blank_query_however_many_turns(tiny_embedder) -> None:
    """A blank query returned the recent turns while the memory held k turns or fewer, and raised once it held
    more: refused alike in both cases."""
    memory = ConversationMemory(tiny_embedder, min_score=-1.0)
    for held in range(3):
        with pytest.raises(ValueError, match="query 1 is empty"):
            memory.retrieve("  ", k=1)
        memory.add_turn(f"turn {held}", "ok")


def test_chunk_text_is_lossless_and_token_sized(tiny_embedder) -> None:
    tok = tiny_embedder.tokenizer
    text = " ".join(f"Sentence {i} talks about topic {i % 5}." for i in range(40))
    chunks = chunk_text(text, tok, 16)
    assert "".join(chunks) == text and len(chunks) > 3
    assert all(len(tok.encode(c, add_special_tokens=False)) <= 16 for c in chunks)
    with pytest.raises(ValueError, match="positive"):
        chunk_text(text, tok, 0)


def test_chunk_memory_retrieves_earlier_chunks(tiny_embedder) -> None:
    memory = ChunkMemory(tiny_embedder, chunk_tokens=8)
    positions = memory.add_text(" ".join(f"word{i}" for i in range(60)), source="doc")
    assert positions == list(range(len(memory.chunks))) and len(positions) > 4
    hits = memory.retrieve("word3", k=3, before=4)
    expected = [p for p in ranked(tiny_embedder, "lrlm", "word3", memory.chunks) if p < 4][:3]
    assert [h.metadata["position"] for h in hits] == expected
    top = ranked(tiny_embedder, "lrlm", "word3", memory.chunks)[0]
    with_next = memory.retrieve("word3", k=1, continuation=True)[0]
    following = memory.chunks[top + 1] if top + 1 < len(memory.chunks) else ""
    assert with_next.text == memory.chunks[top] + following
    prompt = memory.prompt("NOW", k=3, before=4)
    kept = sorted(h.metadata["position"] for h in memory.retrieve("NOW", k=3, before=4))
    assert prompt == "".join(memory.chunks[p] for p in kept) + "NOW"


def test_example_bank(tiny_embedder) -> None:
    bank = ExampleBank(tiny_embedder, [{"input": "2+2", "output": "4"}, {"input": "3+5", "output": "8"}, "free text"])
    assert len(bank) == 3
    texts = ["2+2\n4", "3+5\n8", "free text"]
    order = ranked(tiny_embedder, "icl", "1+1", texts)
    assert bank.retrieve("1+1", k=1)[0].text == texts[order[0]]
    prompt = bank.prompt("1+1", k=2)
    assert prompt == f"{texts[order[1]]}\n{texts[order[0]]}\n1+1\n"  # most similar right before the query
    with pytest.raises(ValueError, match=r"examples\[0\]: missing field 'output'"):
        bank.add([{"input": "no output"}])


def get_weather(city: str, unit: str = "celsius") -> str:
    """Current weather for a city.

    city: name of the city
    unit: celsius or fahrenheit
    """
    return f"sunny in {city} ({unit})"


def test_toolbox_register_verbalise_retrieve_call(tiny_embedder) -> None:
    box = ToolBox(tiny_embedder)
    tool = box.register(get_weather)
    # the key text is the form the tool task trains on (data.tool.verbalise), which the trained model knows
    assert tool.verbalise() == (
        "get_weather: Current weather for a city. | required: city (string): name of the city | optional: unit "
        "(string): celsius or fahrenheit"
    )
    schema = {"type": "function", "function": {
        "name": "send_email", "description": "Send an email.",
        "parameters": {"type": "object", "properties": {"to": {"type": "string", "description": "recipient"}},
                       "required": ["to"]}}}
    expected = "send_email: Send an email. | required: to (string): recipient"
    assert box.register(schema).verbalise() == expected
    assert box.register({"name": "noop", "description": "Do nothing"}).verbalise() == "noop: Do nothing"
    keys = [t.verbalise() for t in box.tools.values()]
    assert [t.name for t in box.retrieve("rain?", k=3)] == [list(box.tools)[i] for i in ranked(
        tiny_embedder, "tool", "rain?", keys)]
    scored = box.retrieve_scored("rain?", k=2)
    assert [t.name for t, _ in scored] == [t.name for t in box.retrieve("rain?", k=2)] and scored[0][1] >= scored[1][1]
    assert box.call("get_weather", city="Oslo") == "sunny in Oslo (celsius)"
    with pytest.raises(ValueError, match="no Python function"):
        box.call("send_email", to="x")
    with pytest.raises(ValueError, match="already registered"):
        box.register(get_weather)
    with pytest.raises(ValueError, match="missing field 'name'"):
        box.register({"description": "nameless"})
    assert box.prompt("weather", k=3).startswith("Available tools:\n")


def test_threads_registering_one_name_get_one_tool(tiny_embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads registering the same name both passed the 'already registered' check: two keys, one tool."""
    box = ToolBox(tiny_embedder)
    encode = tiny_embedder.encode_keys
    monkeypatch.setattr(tiny_embedder, "encode_keys", lambda *a, **kw: time.sleep(0.05) or encode(*a, **kw))
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(box.register, get_weather) for _ in range(2)]
    errors = sorted(str(future.exception()) for future in futures if future.exception())
    assert errors == ["a tool named 'get_weather' is already registered"] and len(box.retriever) == len(box) == 1


def test_conversational_search_uses_the_whole_conversation(tiny_embedder) -> None:
    docs = ["Q1 A1 Q2", "unrelated passage", "Q2"]
    search = ConversationalSearch(tiny_embedder, docs)
    assert search.query_for("Q2") == "Q2"
    search.add_turn("Q1", "A1")
    assert search.query_for("Q2") == "Q1 A1 Q2"
    best = docs[ranked(tiny_embedder, "convsearch", "Q1 A1 Q2", docs)[0]]
    assert search.search("Q2", k=1)[0].text == best
    assert search.prompt("Q2", k=1) == f"Knowledge: {best}\n\nContext and Question: Q1 A1 Q2\nAnswer:"
    search.reset()
    assert search.search("Q2", k=1)[0].text == docs[ranked(tiny_embedder, "convsearch", "Q2", docs)[0]]


def test_a_long_conversation_keeps_its_latest_turns_and_the_question(tiny_embedder_dir) -> None:
    """The embedder cuts a query at its max length from the end: after enough turns the current question was cut
    off (every question found the same passages), and the prompt refused the query as over the budget."""
    from llm_embedder.embedder import Embedder

    embedder = Embedder(tiny_embedder_dir, device="cpu", query_max_length=32)
    docs = ["The Eiffel Tower is 330 metres tall.", "Python was created by Guido van Rossum."]
    search = ConversationalSearch(embedder, docs)
    for i in range(40):
        search.add_turn(f"question number {i} about the weather", f"answer number {i}: it is sunny")
    query = search.query_for("Who created Python?", search._encodable)
    assert query.endswith("answer number 39: it is sunny Who created Python?")
    assert embedder.count_tokens([query], "convsearch", "query", truncate=False) <= 32
    assert search.search("Who created Python?", k=1)[0].text == Retriever.build(embedder, "convsearch", docs).search(
        query, k=1)[0][0].text  # what it searched with is the query it keeps
    prompt = search.prompt("Who created Python?", k=2, budget_tokens=120)
    assert prompt.endswith("Who created Python?\nAnswer:") and "question number 0 " not in prompt


@pytest.mark.integration
def test_real_minilm_picks_tools_and_memories(minilm) -> None:
    def convert_currency(amount: float, source: str, target: str) -> float:
        """Convert an amount of money from one currency to another."""
        return amount

    def set_alarm(time: str) -> str:
        """Set an alarm clock for a given time."""
        return time

    box = ToolBox(minilm, [get_weather, convert_currency, set_alarm])
    assert box.retrieve("Will it rain in London tomorrow?", k=1)[0].name == "get_weather"
    assert box.retrieve("How many euros is 20 dollars?", k=1)[0].name == "convert_currency"
    memory = ConversationMemory(minilm)
    memory.add_turn("My dog is called Rex.", "What a nice name.")
    memory.add_turn("I live in Lisbon.", "Beautiful city.")
    memory.add_turn("I am learning to play the piano.", "Great hobby.")
    assert memory.retrieve("What is my dog's name?", k=1)[0].metadata["turn"] == 0


def test_conversation_memory_reopened_keeps_its_turns(tiny_embedder, tmp_path: Path) -> None:
    memory = ConversationMemory(tiny_embedder, min_score=-1.0, index_dir=tmp_path / "chat")
    for i in range(3):
        memory.add_turn(f"user {i}", f"assistant {i}")
    reopened = ConversationMemory(tiny_embedder, min_score=-1.0, index_dir=tmp_path / "chat")
    assert len(reopened) == 3 and reopened.turns == memory.turns
    assert [h.metadata["turn"] for h in reopened.recent(2)] == [1, 2]
    best = ranked(tiny_embedder, "chat", "user 1", memory.turns)[0]
    assert [h.metadata["turn"] for h in reopened.retrieve("user 1", k=1)] == [best]
    assert reopened.add_turn("user 3", "assistant 3") == 3  # numbering continues after what is held
    again = ConversationMemory(tiny_embedder, index_dir=tmp_path / "chat")
    assert [h.metadata["turn"] for h in again.recent(4)] == [0, 1, 2, 3]


def test_chunk_memory_reopened_keeps_its_chunks(tiny_embedder, tmp_path: Path) -> None:
    memory = ChunkMemory(tiny_embedder, chunk_tokens=4, index_dir=tmp_path / "lrlm")
    memory.add_text("the secret code is 1234 and nobody knows it", source="a")
    reopened = ChunkMemory(tiny_embedder, chunk_tokens=4, index_dir=tmp_path / "lrlm")
    assert reopened.chunks == memory.chunks and len(reopened.chunks) == len(reopened) > 1
    top = ranked(tiny_embedder, "lrlm", "secret code", memory.chunks)[0]
    hit = reopened.retrieve("secret code", k=1, continuation=True)[0]
    assert hit.metadata == {"position": top, "source": "a", "text_start": 0}
    assert hit.text == "".join(memory.chunks[top : top + 2])
    n = len(memory.chunks)
    assert reopened.add_text("more text here", source="b")[0] == n  # positions continue


def test_reopened_store_skips_a_deleted_document(tiny_embedder, tmp_path: Path) -> None:
    memory = ConversationMemory(tiny_embedder, index_dir=tmp_path / "chat")
    for i in range(3):
        memory.add_turn(f"user {i}", f"assistant {i}")
    memory.retriever.delete([2])
    reopened = ConversationMemory(tiny_embedder, index_dir=tmp_path / "chat")
    assert [h.metadata["turn"] for h in reopened.recent(3)] == [0, 1]
    assert reopened.add_turn("user 3", "assistant 3") == 3  # a deleted turn's number is not given again


def test_a_store_refuses_an_index_whose_documents_it_cannot_place(tiny_embedder, tmp_path: Path) -> None:
    Retriever.build(tiny_embedder, "chat", ["a turn without a number"], out_dir=tmp_path / "chat")
    with pytest.raises(ValueError, match="document 0 has no 'turn' number .* ConversationMemory cannot place it"):
        ConversationMemory(tiny_embedder, index_dir=tmp_path / "chat")


SEND_EMAIL = {"name": "send_email", "description": "Send an email.",
              "parameters": {"properties": {"to": {"type": "string", "description": "recipient"}}, "required": ["to"]}}


def test_toolbox_reopened_knows_its_tools_until_they_are_registered_again(tiny_embedder, tmp_path: Path) -> None:
    box = ToolBox(tiny_embedder, [get_weather, SEND_EMAIL], index_dir=tmp_path / "tools")
    keys = [t.verbalise() for t in box.tools.values()]
    reopened = ToolBox(tiny_embedder, index_dir=tmp_path / "tools")
    assert list(reopened.tools) == ["get_weather", "send_email"] and len(reopened) == 2
    assert [t.verbalise() for t in reopened.tools.values()] == keys  # known by their stored description
    order = [list(box.tools)[i] for i in ranked(tiny_embedder, "tool", "weather in Paris", keys)]
    assert [t.name for t in reopened.retrieve("weather in Paris", k=5)] == order
    with pytest.raises(ValueError, match="no Python function.*register it again"):
        reopened.call("get_weather", city="Paris")
    reopened.register(get_weather)  # replaces the stored tool rather than adding a second one
    assert reopened.call("get_weather", city="Paris") == "sunny in Paris (celsius)"
    assert [t.name for t in reopened.retrieve("weather in Paris", k=5)] == order
    with pytest.raises(ValueError, match="already registered"):
        reopened.register(get_weather)
    changed = ToolBox(tiny_embedder, index_dir=tmp_path / "tools")
    changed.register(get_weather, description="Forecast for a city.")  # a stored tool registered changed
    again = ToolBox(tiny_embedder, [SEND_EMAIL], index_dir=tmp_path / "tools")
    assert len(again) == 2 and len(again.retriever) == 2  # the old key was replaced, not kept beside the new
    assert again.tools["get_weather"].description == "Forecast for a city."
    assert sorted(t.name for t in again.retrieve("weather in Paris", k=5)) == ["get_weather", "send_email"]


def test_toolbox_reopens_an_index_from_before_tools_stored_their_description(tiny_embedder, tmp_path: Path) -> None:
    from llm_embedder.augment.tools import tool_from_callable

    key = ("get_weather: Current weather for a city. Parameters: city (string, required): name of the city; "
           "unit (string, optional): celsius or fahrenheit.")  # the key text of that version
    old = [{"text": key, "name": "get_weather"}] * 2  # written twice: re-registering used to add a duplicate
    Retriever.build(tiny_embedder, "tool", old, out_dir=tmp_path / "tools")
    box = ToolBox(tiny_embedder, index_dir=tmp_path / "tools")
    parsed, registered = box.tools["get_weather"], tool_from_callable(get_weather)  # parsed back from the key
    assert parsed.description == "Current weather for a city" and parsed.parameters == registered.parameters
    assert [t.name for t in box.retrieve("weather in Paris", k=5)] == ["get_weather"]
    box.register(get_weather)
    assert len(box.retriever) == 1 and box.retrieve("weather in Paris", k=5)[0].fn is get_weather


def test_toolbox_replaces_a_tool_in_an_index_that_cannot_delete(tiny_embedder, tmp_path: Path) -> None:
    ToolBox(tiny_embedder, [get_weather, SEND_EMAIL], index_dir=tmp_path / "tools", factory="HNSW8")
    box = ToolBox(tiny_embedder, index_dir=tmp_path / "tools")
    box.register(get_weather, description="Forecast for a city.")  # HNSW cannot delete the old key
    assert len(box.retriever) == 3 and len(box) == 2
    assert sorted(t.name for t in box.retrieve("weather", k=5)) == ["get_weather", "send_email"]
    again = ToolBox(tiny_embedder, index_dir=tmp_path / "tools")
    assert again.tools["get_weather"].description == "Forecast for a city."  # the later document wins
    assert sorted(t.name for t in again.retrieve("weather", k=5)) == ["get_weather", "send_email"]


def test_stores_reopened_with_their_documents_do_not_add_them_again(tiny_embedder, tmp_path: Path) -> None:
    docs = [*FACTS, FACTS[0], {"text": "Dogs bark.", "kind": "animal"}]  # a repeated document is kept twice
    assert len(KnowledgeBase(tiny_embedder, docs, index_dir=tmp_path / "kb")) == 5
    assert len(KnowledgeBase(tiny_embedder, docs, index_dir=tmp_path / "kb")) == 5
    more = KnowledgeBase(tiny_embedder, [*docs, FACTS[0], {"text": "Dogs bark.", "kind": "pet"}],
                         index_dir=tmp_path / "kb")
    assert [doc for _, doc in more.retriever.documents()][5:] == [{"text": FACTS[0]},
                                                                 {"text": "Dogs bark.", "kind": "pet"}]
    more.add([FACTS[1]])  # add is explicit: it always adds
    assert len(more) == 8
    examples = [{"input": "2+2", "output": "4"}, "free text"]
    ExampleBank(tiny_embedder, examples, index_dir=tmp_path / "icl")
    assert len(ExampleBank(tiny_embedder, examples, index_dir=tmp_path / "icl")) == 2
    ConversationalSearch(tiny_embedder, FACTS, index_dir=tmp_path / "cs")
    assert len(ConversationalSearch(tiny_embedder, FACTS, index_dir=tmp_path / "cs")) == 3


def test_a_store_refuses_an_index_of_another_task(tiny_embedder, tmp_path: Path) -> None:
    ConversationMemory(tiny_embedder, index_dir=tmp_path / "chat").add_turn("hi", "hello")
    with pytest.raises(ValueError, match=r"chat holds an index for task 'chat', but KnowledgeBase stores task 'qa'"):
        KnowledgeBase(tiny_embedder, index_dir=tmp_path / "chat")  # it would search with chat's instructions


def test_example_bank_refuses_a_template_it_cannot_fill(tiny_embedder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"template '\{input\} \{0\}': field \{0\} is positional; name an example's"):
        ExampleBank(tiny_embedder, template="{input} {0}", index_dir=tmp_path / "icl")
    assert not (tmp_path / "icl").exists()  # refused before anything was written
    with pytest.raises(ValueError, match=r"template '\{input\} \{\}': field \{\} is positional"):
        ExampleBank(tiny_embedder, template="{input} {}")
    with pytest.raises(ValueError, match=r"template '\{input': .*'\}'"):
        ExampleBank(tiny_embedder, template="{input")
    bank = ExampleBank(tiny_embedder, template="{input.upper} {output:d}")
    with pytest.raises(ValueError, match=r"examples\[0\]: cannot fill template '\{input.upper\} \{output:d\}' "
                                         r"\(ValueError: Unknown format code 'd'"):
        bank.add([{"input": "a", "output": "b"}])


def test_toolbox_refuses_a_schema_with_malformed_parameters(tiny_embedder) -> None:
    box = ToolBox(tiny_embedder)
    with pytest.raises(ValueError, match=r"tool #0 \('x'\): field 'parameters.properties' must be an object mapping "
                                         r"each parameter name to its schema, got list"):
        box.register({"name": "x", "parameters": {"properties": ["a"]}})
    with pytest.raises(ValueError, match=r"tool #0 \('x'\): field 'parameters.required' must be a list of parameter "
                                         r"names, got str"):
        box.register({"name": "x", "parameters": {"properties": {"city": {}}, "required": "city"}})
    assert len(box) == 0 and len(box.retriever) == 0


def test_stores_refuse_a_string_before_making_their_folder_and_number_turns_across_threads(tiny_embedder,
                                                                                          tmp_path: Path) -> None:
    """ExampleBank took a string as one example per character; KnowledgeBase made its index_dir before refusing
    one; two threads' add_turn got one turn number."""
    import threading

    for make in (lambda: ExampleBank(tiny_embedder, "2+2=\n4", index_dir=tmp_path / "eb"),
                 lambda: KnowledgeBase(tiny_embedder, "Paris is in France.", index_dir=tmp_path / "kb"),
                 lambda: ExampleBank(tiny_embedder).add("2+2=\n4")):
        with pytest.raises(TypeError, match="is a string"):
            make()
    assert not (tmp_path / "eb").exists() and not (tmp_path / "kb").exists()
    memory = ConversationMemory(tiny_embedder)
    threads = [threading.Thread(target=lambda i=i: [memory.add_turn(f"u{i}{j}", "a") for j in range(3)])
               for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(memory._numbers) == list(range(6)) and len(memory.retriever) == 6


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_every_store_refuses_a_bad_k_whether_empty_or_not(tiny_embedder, k) -> None:
    """k=0 used to give [] on an empty store and an error (or a wrong slice) on a full one."""
    def stores():
        memory = ConversationMemory(tiny_embedder)
        chunks = ChunkMemory(tiny_embedder, chunk_tokens=4)
        box = ToolBox(tiny_embedder)
        yield lambda: KnowledgeBase(tiny_embedder).search("q", k)
        yield lambda: ExampleBank(tiny_embedder).retrieve("q", k)
        yield lambda: ConversationalSearch(tiny_embedder).search("q", k)
        yield lambda: memory.retrieve("q", k)
        yield lambda: chunks.retrieve("q", k)
        yield lambda: box.retrieve("q", k)
        memory.add_turn("hi", "hello")
        memory.add_turn("how are you", "fine")
        chunks.add_text("one two three four five six seven eight nine ten")
        box.register(get_weather)
        yield lambda: KnowledgeBase(tiny_embedder, FACTS).search("q", k)
        yield lambda: ExampleBank(tiny_embedder, ["a\nb", "c\nd"]).retrieve("q", k)
        yield lambda: ConversationalSearch(tiny_embedder, FACTS).search("q", k)
        yield lambda: memory.retrieve("q", k)
        yield lambda: chunks.retrieve("q", k)
        yield lambda: box.retrieve("q", k)

    for call in stores():
        with pytest.raises(ValueError, match="k must be a positive integer"):
            call()
    retriever = Retriever.build(tiny_embedder, "qa", FACTS)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        retriever.search("q", k)


def test_conversation_memory_forgets_turns_for_good(tiny_embedder, tmp_path: Path) -> None:
    memory = ConversationMemory(tiny_embedder, min_score=-1.0, index_dir=tmp_path / "chat")
    for i in range(4):
        memory.add_turn(f"user {i}", f"assistant {i}")
    assert memory.forget([3, 1]) == 2
    assert [h.metadata["turn"] for h in memory.recent(4)] == [0, 2]
    assert {h.metadata["turn"] for h in memory.retrieve("user 1", k=2)} == {0, 2}
    assert len(memory) == 2
    with pytest.raises(ValueError, match="no turn numbered 1, 7"):
        memory.forget([1, 7])
    assert len(memory) == 2  # a refused call forgets nothing
    assert memory.add_turn("user 4", "assistant 4") == 4  # the forgotten 3 names no other turn
    reopened = ConversationMemory(tiny_embedder, min_score=-1.0, index_dir=tmp_path / "chat")
    assert [h.metadata["turn"] for h in reopened.recent(5)] == [0, 2, 4]
    assert reopened.add_turn("user 5", "assistant 5") == 5


def test_a_memory_whose_index_cannot_delete_refuses_to_forget(tiny_embedder) -> None:
    memory = ConversationMemory(tiny_embedder, factory="HNSW8")
    memory.add_turn("a", "b")
    with pytest.raises(ValueError, match="does not support delete"):
        memory.forget([0])
    assert [h.metadata["turn"] for h in memory.recent(1)] == [0]


def test_toolbox_unregisters_a_tool(tiny_embedder, tmp_path: Path) -> None:
    box = ToolBox(tiny_embedder, [get_weather, SEND_EMAIL], index_dir=tmp_path / "tools")
    assert box.unregister("get_weather").name == "get_weather"
    assert [t.name for t in box.retrieve("weather in Paris", k=2)] == ["send_email"]
    with pytest.raises(KeyError, match="unknown tool 'get_weather'"):
        box.call("get_weather", city="Paris")
    with pytest.raises(KeyError, match="unknown tool 'nope'; registered: send_email"):
        box.unregister("nope")
    reopened = ToolBox(tiny_embedder, index_dir=tmp_path / "tools")
    assert list(reopened.tools) == ["send_email"]
    reopened.register(get_weather)  # the name is free again
    assert sorted(t.name for t in reopened.retrieve("weather", k=3)) == ["get_weather", "send_email"]


def test_conversation_memory_reopened_after_turns_added_one_at_a_time(tiny_embedder, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A memory adds its turns one at a time, and each add saved the whole FAISS index file again (O(turns) per
    turn: a persistent memory slowed with every turn). Now a turn goes to the index directory's journals, the index
    file is saved now and then; reopened, the memory holds the same turns, forgotten ones left out, and retrieves
    the same ones with the same scores."""
    import llm_embedder.retriever as module

    monkeypatch.setattr(module, "CHECKPOINT_ROWS", 5, raising=False)  # saved twice below, with turns after
    out = tmp_path / "chat"
    memory = ConversationMemory(tiny_embedder, min_score=-1.0, index_dir=out)
    stat = (out / "index.faiss").stat()
    for i in range(3):
        memory.add_turn(f"question {i} about the weather", f"answer {i}: sunny")
    assert (out / "index.faiss").stat().st_mtime_ns == stat.st_mtime_ns
    assert (out / "index.faiss").stat().st_ino == stat.st_ino
    for i in range(3, 12):
        memory.add_turn(f"question {i} about {'cats' if i % 2 else 'trains'}", f"answer {i}")
    assert memory.forget([2, 9]) == 2
    memory.add_turn("what is my name?", "Ada")
    reopened = ConversationMemory(tiny_embedder, min_score=-1.0, index_dir=out)
    assert reopened.turns == memory.turns and reopened._numbers == memory._numbers
    for query in ("cats", "the weather", "my name"):
        assert [(h.id, h.score, h.text) for h in reopened.retrieve(query, k=3)] == \
            [(h.id, h.score, h.text) for h in memory.retrieve(query, k=3)]
    assert reopened.add_turn("and yours?", "none") == 13


def test_a_store_saves_its_index_file_on_close_or_leaving_with(tiny_embedder, tmp_path: Path) -> None:
    """A store on an index_dir had no close(): the turns since the last checkpoint stayed in the journals only, and
    every load read them again from there. ``save``, ``close`` and a ``with`` block write the index file now."""
    import json

    out = tmp_path / "chat"
    with ConversationMemory(tiny_embedder, index_dir=out) as memory:
        memory.add_turn("what is my name?", "Ada")
        meta = json.loads((out / "meta.json").read_text())
        assert meta["index_rows"] < meta["count"]  # in the journals only, until the block ends
    meta = json.loads((out / "meta.json").read_text())
    assert meta["index_rows"] == meta["count"] == 1
    base = KnowledgeBase(tiny_embedder, ["Paris is in France."], index_dir=tmp_path / "kb")
    base.add(["Rome is in Italy."])
    base.save()
    meta = json.loads((tmp_path / "kb" / "meta.json").read_text())
    assert meta["index_rows"] == meta["count"] == 2
    base.close()
