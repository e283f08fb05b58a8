"""`index`, `search` and `augment`: build a resumable index from a corpus, query it, build LLM prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llm_embedder.cli.app import app
from llm_embedder.cli.basic import (
    MAX_COUNT,
    DeviceOption,
    MaxLengthOption,
    ModelOption,
    TaskFileOption,
    check_choice,
    check_max_length,
    register_task_files,
)

IndexOption = Annotated[Path, typer.Option("--index", "-i", help="Index directory written by `llm-embedder index`.")]


@app.command("index")
def index_command(
    task: Annotated[str, typer.Option(help="Task whose key instruction encodes the corpus (qa, tool, ...).")],
    corpus: Annotated[Path, typer.Option(help="Corpus JSONL: one object per line with 'text' (and 'id', 'title').")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory (re-running the same command resumes).")],
    model: ModelOption = "minilm",
    factory: Annotated[str, typer.Option(help="FAISS factory string: Flat, HNSW32, IVF1024,PQ32 ...")] = "Flat",
    backend: Annotated[str, typer.Option(help="faiss (in-process) or milvus (a Milvus Lite file in OUT).")] = "faiss",
    field: Annotated[str, typer.Option(help="JSONL field holding the text.")] = "text",
    template: Annotated[
        str | None, typer.Option(help="Compose the text from fields, e.g. '{title} {text}' (overrides --field).")
    ] = None,
    filter_field: Annotated[
        list[str] | None, typer.Option("--filter-field", help="Field stored in the index for --filter (repeat).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_COUNT, help="Texts per encoding batch (progress is saved after each).")
    ] = 256,
    device: DeviceOption = None,
    max_length: MaxLengthOption = None,
    task_file: TaskFileOption = None,
) -> None:
    """Encode a corpus with a task's key instruction into a memmap and index it (FAISS or Milvus).

    Streams the corpus (memory stays flat), shows progress and resumes after an interruption. OUT gets
    embeddings.memmap, docs.jsonl and docs.offsets, progress.json, the index (index.faiss, with
    index.faiss.meta.json for --filter-field; or index.db and index.milvus.json) and meta.json (model, task,
    instruction hash, document tokens, dim, count, filter fields); search and serve keep the index's document
    tokens.
    """
    from llm_embedder.embedder import Embedder, register_model_tasks
    from llm_embedder.index.build import build_index, check_factory
    from llm_embedder.models import config_embedding_dim, resolve_embedder_path
    from llm_embedder.tasks import get_task

    register_task_files(task_file)
    register_model_tasks(model)  # a task the model was trained with is known before the model loads
    get_task(task)
    check_choice("--backend", backend, ("faiss", "milvus"))  # before the model loads, as the next ones
    check_max_length(model, max_length)
    dim = config_embedding_dim(resolve_embedder_path(model))
    if dim is not None:  # a bad --factory is refused before the model loads (where the configs say, else once loaded)
        check_factory(factory, backend, dim)
    if not corpus.exists():
        raise FileNotFoundError(f"corpus not found: {corpus}")

    def note_title() -> None:  # once the arguments are known good: not before an error about another one
        if template is None and field == "text" and first_record_has_title(corpus):
            Console(stderr=True, markup=False).print(
                "note: the corpus's records have a 'title' that --field text leaves out; the models train and are "
                "evaluated on '{title} {text}' keys (--template '{title} {text}' embeds it)",
                highlight=False, soft_wrap=True)

    embedder = Embedder(model, device=device, batch_size=batch_size, query_max_length=max_length,
                        key_max_length=max_length)
    meta = build_index(corpus, out, embedder, task, factory=factory, backend=backend, field=field, template=template,
                       batch_size=batch_size, filter_fields=filter_field or (), on_encode=note_title)
    Console(stderr=True, markup=False).print(
        f"indexed {meta['count']} documents for task {task} ({meta['dim']}-d, up to "
        f"{meta.get('key_max_length', '?')} tokens each, {backend} {factory}) in {out}", soft_wrap=True
    )


def first_record_has_title(corpus: Path) -> bool:
    """Whether the corpus's first record carries a non-empty string 'title' (a bad file is left to the build)."""
    from llm_embedder.io import iter_jsonl

    try:
        for _, record in iter_jsonl(corpus):
            title = record.get("title")
            return isinstance(title, str) and bool(title.strip())
    except Exception:  # noqa: BLE001 - the build reports a malformed corpus with its line
        return False
    return False


def parse_filter(filters: list[str] | None) -> dict | None:
    """``field=value`` options -> a filter mapping (repeating a field means any of the values).

    A value is read as JSON where it parses; a number, true or false also matches its text, so that
    ``code=1990`` finds a document whose code is the string "1990" as well as the number (quote it,
    ``code='"1990"'``, for the string alone). ``null`` matches the text "null" alone: an index stores no null
    field (a document's null is not stored for filtering), so JSON null would match nothing."""
    if not filters:
        return None
    out: dict[str, list] = {}
    for item in filters:
        if "=" not in item:
            raise ValueError(f"--filter must look like field=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        values = out.setdefault(key.strip(), [])
        if parsed is not None:
            values.append(parsed)
        if parsed is None or isinstance(parsed, (bool, int, float)):
            values.append(value.strip())
    return out


FilterOption = Annotated[list[str] | None, typer.Option("--filter", help="field=value (repeatable).")]


def index_meta(index: Path) -> dict:
    """An index folder's meta.json, or {} where there is none or it cannot be read (Retriever.load names it)."""
    meta_path = index / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    return meta if isinstance(meta, dict) else {}


def register_index_tasks(index: Path, model: str | None) -> None:
    """Register the user tasks of the model an index is read with (``model``, else the index's own), without
    loading it: a task that model was trained with is known before the task name is checked."""
    from llm_embedder.embedder import register_model_tasks

    meta = index_meta(index)
    for source in (model, meta.get("model_path"), meta.get("model")):
        if source and (source == model or Path(str(source)).is_dir()):
            try:
                register_model_tasks(source)
            except FileNotFoundError:  # Retriever.load names a model that is not there
                pass
            return


def open_retriever(index: Path, model: str | None, task: str | None):
    from llm_embedder.retriever import Retriever

    meta = index_meta(index)
    built_for = meta.get("task")
    if task is not None:
        from llm_embedder.tasks import get_task

        get_task(task)  # an unknown name is an unknown task, not another index's
    if task is not None and built_for is not None and task != built_for:  # fail before loading any model
        raise ValueError(f"{index} was built for task {built_for!r}, not {task!r}; build an index for {task!r}")
    # the model named keeps the tokens of a document that the index's vectors were encoded with
    return Retriever.load(index, model=model)


@app.command("search")
def search_command(
    index: IndexOption,
    queries: Annotated[list[str] | None, typer.Argument(help="One or more query texts.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=MAX_COUNT, help="Hits per query.")] = 10,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Embedder (default: the one named in the index).")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="Expected task (an error if the index was built for another).")
    ] = None,
    filter: FilterOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    nprobe: Annotated[int | None, typer.Option(
        min=1, max=MAX_COUNT,
        help="IVF index: lists searched (default 16 on FAISS); more finds more of the true top k.")] = None,
    ef_search: Annotated[int | None, typer.Option(
        min=1, max=MAX_COUNT,
        help="HNSW index: candidates kept (default 128 on FAISS); more finds more of the true top k.")] = None,
    queries_file: Annotated[Path | None, typer.Option(
        "--queries", help="File of queries, one per line ('-': stdin); after any given as arguments.")] = None,
    task_file: TaskFileOption = None,
) -> None:
    """Top-k documents with scores for each query, from an index directory.

    A hit's id is the document's number in the index (its line in the corpus, from 0); the corpus's own "id"
    field, where documents have one, is shown beside it and kept in the hit's metadata (--json: one line per query,
    in the order given)."""
    from rich.table import Table

    from llm_embedder.cli.basic import read_texts
    from llm_embedder.io import finite_json
    from llm_embedder.retriever import check_queries

    register_task_files(task_file)  # an index of a task from a task file needs its instructions
    queries = list(queries or [])
    check_queries(queries)  # before the model loads
    if queries_file is not None:  # a blank line is refused, naming it, as encode does
        queries += read_texts(queries_file, None, noun="query", use="search", lines_only=True)
    if not queries:
        raise ValueError("no query: give one or more as arguments, or --queries FILE")
    filters = parse_filter(filter)  # a malformed one is refused before the model loads
    retriever = open_retriever(index, model, task)
    results = retriever.search(queries, k=k, filter=filters, nprobe=nprobe, ef_search=ef_search)
    console = Console(markup=False)  # documents are text: "list[int]" is not a style tag
    for query, hits in zip(queries, results, strict=True):
        if json_out:
            rows = [{"id": h.id, "score": round(h.score, 6), "text": h.text, "metadata": h.metadata} for h in hits]
            print(json.dumps(finite_json({"query": query, "hits": rows}), ensure_ascii=False))
            continue
        table = Table(title=f"{retriever.task}: {query}", title_justify="left")
        # id: the document's number in the index; corpus id: the corpus's own "id" field, where it has one
        corpus_ids = any("id" in h.metadata for h in hits)
        for column in ("rank", "score", "id", *(["corpus id"] if corpus_ids else []), "text"):
            table.add_column(column)
        for rank, h in enumerate(hits, start=1):
            own = [str(h.metadata.get("id", ""))] if corpus_ids else []
            table.add_row(str(rank), f"{h.score:.4f}", str(h.id), *own, h.text[:200])
        console.print(table)
    retriever.close()


@app.command("augment")
def augment_command(
    query: Annotated[str, typer.Argument(help="The user query (for convsearch: the conversation so far).")],
    task: Annotated[str, typer.Option(help="Prompt layout / retrieval task.")] = "qa",
    index: Annotated[Path | None, typer.Option("--index", "-i", help="Retrieve the items from this index.")] = None,
    item: Annotated[list[str] | None, typer.Option("--item", help="A retrieved item, best first (repeat).")] = None,
    k: Annotated[int | None, typer.Option("-k", min=1, max=MAX_COUNT,
                                          help="Items to retrieve with --index (default 3).")] = None,
    budget: Annotated[int, typer.Option(help="Token budget of the whole prompt.")] = 1024,
    tokenizer: Annotated[
        str | None, typer.Option(help="Count tokens with this LM (a HF directory or 'smollm2'); default approximate.")
    ] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Embedder for --index (default: the index's); with --item alone, the model whose tasks "
                              "(and their prompt layouts) to know.")] = None,
    task_file: TaskFileOption = None,
) -> None:
    """Print the LLM prompt for a query with retrieved items laid out as the task expects (recipe §3)."""
    from llm_embedder.augment.prompt import check_tokenizer_name, fit_prompt, hit_positions, load_tokenizer
    from llm_embedder.tasks import get_task

    register_task_files(task_file)
    if index is None and k is not None:  # it used to be ignored silently
        raise ValueError("-k is how many items to retrieve with --index, and no --index is given: it would have no "
                         "effect (give the items with --item, or an --index to retrieve them from)")
    if index is not None:
        register_index_tasks(index, model)
    elif model is not None:
        from llm_embedder.embedder import register_model_tasks

        register_model_tasks(model)
    get_task(task)  # a typo would silently get the generic layout
    if budget < 1:  # before any model loads
        raise ValueError(f"--budget must be at least 1 token, got {budget}")
    if not query.strip():
        raise ValueError("the query is empty; give the question the prompt is for")
    empty = [i for i, text in enumerate(item or [], 1) if not text.strip()]
    if empty:
        raise ValueError(f"--item {empty[0]} is empty; give each item its text")
    if tokenizer:
        check_tokenizer_name(tokenizer, "--tokenizer")  # before the index and the model load
    items = list(item or [])
    positions = None
    if index is not None:
        retriever = open_retriever(index, model, task)
        hits = retriever.search(query, k=3 if k is None else k)[0]
        retriever.close()
        items += [h.text for h in hits]
        # chunks of a ChunkMemory index keep their place in the text: lrlm lays them out in that order
        positions = hit_positions(hits) if not item else None
    counter = load_tokenizer(tokenizer) if tokenizer else None
    prompt, kept = fit_prompt(task, query, items, budget_tokens=budget, tokenizer=counter, positions=positions)
    if len(kept) < len(items):
        left = ", ".join(str(i + 1) for i in range(len(items)) if i not in kept)
        Console(stderr=True, markup=False).print(f"left out for the budget of {budget} tokens: item(s) {left} of "
                                                 f"{len(items)}", highlight=False, soft_wrap=True)
    print(prompt)
