"""`llm-embedder index / search / augment` on a tiny model (in-process) plus one real-process error check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from llm_embedder.cli import app

runner = CliRunner()


def write_corpus(path: Path) -> Path:
    rows = [{"id": f"d{i}", "title": f"Title {i}", "text": f"text of document {i}", "lang": "en" if i % 2 else "fr"}
            for i in range(9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_index_search_augment(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "idx"
    args = ["index", "--task", "qa", "--corpus", str(corpus), "--out", str(out), "--model", str(tiny_embedder_dir),
            "--template", "{title} {text}", "--batch-size", "4", "--filter-field", "lang"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 9 and meta["task"] == "qa" and meta["backend"] == "faiss"
    assert {"embeddings.memmap", "index.faiss", "docs.jsonl", "meta.json"} <= {p.name for p in out.iterdir()}
    assert runner.invoke(app, args).exit_code == 0  # re-running a finished build is a no-op

    result = runner.invoke(app, ["search", "text of document 3", "--index", str(out), "-k", "4", "--json",
                                 "--filter", "lang=en"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert len(line["hits"]) == 4 and all(h["metadata"]["lang"] == "en" for h in line["hits"])
    # a field the build did not store would match nothing: refused, naming the option that stores it
    proc = subprocess.run(
        [sys.executable, "-m", "llm_embedder", "search", "text of document 3", "--index", str(out),
         "--filter", "title=Title 3"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert "filter on 'title'" in message and "stores only these fields for filtering: lang" in message
    assert "--filter-field title" in message
    assert all(h["text"].startswith("Title ") for h in line["hits"])

    # the table shows the corpus's own id beside the index's number
    result = runner.invoke(app, ["search", "text of document 3", "--index", str(out), "-k", "9"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "rank" in line)
    assert [name.strip() for name in header.strip("┃ ").split("┃")] == ["rank", "score", "id", "corpus id", "text"]
    row = next(line for line in result.stdout.splitlines() if "Title 3 text of document 3" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")][2:4] == ["3", "d3"]

    result = runner.invoke(app, ["augment", "Which document?", "--task", "qa", "--index", str(out), "-k", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Knowledge: Title ") and result.stdout.endswith("Answer:\n")
    result = runner.invoke(app, ["augment", "hi", "--task", "chat", "--item", "Speaker 1: a\nSpeaker 2: b"])
    assert result.stdout == "Speaker 1: a\nSpeaker 2: b\nSpeaker 1: hi\nSpeaker 2:\n"


def test_search_with_another_task_is_a_clear_error(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    assert runner.invoke(app, ["index", "--task", "qa", "--corpus", str(corpus), "--out", str(out), "--model",
                               str(tiny_embedder_dir)]).exit_code == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "llm_embedder", "search", "q", "--index", str(out), "--task", "tool"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())
    assert "was built for task 'qa', not 'tool'" in message and "Traceback" not in message


def test_search_with_a_named_model_keeps_the_index_document_length(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    """An index built in Python at 16 document tokens, searched from the CLI with its model named: the CLI's
    embedder takes the index's length instead of refusing the model at its saved 256."""
    from llm_embedder.embedder import Embedder
    from llm_embedder.retriever import Retriever

    short = Embedder(tiny_embedder_dir, device="cpu", key_max_length=16)
    Retriever.build(short, "qa", ["text of document 1", "something else entirely"], out_dir=tmp_path / "idx")
    result = runner.invoke(app, ["search", "text of document 1", "--index", str(tmp_path / "idx"), "-k", "1",
                                 "--json", "--model", str(tiny_embedder_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hits"][0]["text"] == "text of document 1"
    meta_path = tmp_path / "idx" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "key_max_length": "sixteen"}))
    result = runner.invoke(app, ["search", "q", "--index", str(tmp_path / "idx"), "--model", str(tiny_embedder_dir)])
    # in-process the error reaches the runner; the console entry point prints it in one line and exits 2
    assert "corrupt index metadata: key_max_length must be a positive integer" in str(result.exception)


def test_index_max_length_is_kept_by_search_and_serve(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    """`index --max-length 16` records 16; search (no model named) encodes at it; a server at the model's saved
    256 refuses the index at startup with one line that says why and how to match it."""
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "idx"
    result = runner.invoke(app, ["index", "--task", "qa", "--corpus", str(corpus), "--out", str(out), "--model",
                                 str(tiny_embedder_dir), "--max-length", "16"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "meta.json").read_text())["key_max_length"] == 16
    from llm_embedder.retriever import Retriever

    reopened = Retriever.load(out)
    assert reopened.embedder.key_max_length == 16
    expected = [h.id for h in reopened.search("text of document 3", k=3)[0]]
    result = runner.invoke(app, ["search", "text of document 3", "--index", str(out), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert [h["id"] for h in json.loads(result.stdout)["hits"]] == expected

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "llm_embedder", "serve", "--model", str(tiny_embedder_dir), "--index", f"docs={out}",
         "--port", "1"], capture_output=True, text=True, env=env, timeout=300,
    )
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stderr
    assert "the index's vectors keep 16 tokens of a document, the embedder keeps 256" in message
    assert "--max-length" in message and "Traceback" not in message


def test_augment_refuses_an_unknown_task_and_tokenizer() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args, expected in (
        (["--task", "qaa", "--item", "x"], "unknown task 'qaa'"),
        (["--item", "x", "--tokenizer", "nonexist"], "--tokenizer 'nonexist' is neither a model directory nor"),
    ):
        proc = subprocess.run([sys.executable, "-m", "llm_embedder", "augment", "q", *args],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert expected in " ".join(proc.stderr.split())


def test_augment_refuses_an_empty_query_or_item() -> None:
    result = runner.invoke(app, ["augment", "  ", "--task", "qa", "--item", "x"])
    assert isinstance(result.exception, ValueError) and "the query is empty" in str(result.exception)
    result = runner.invoke(app, ["augment", "q", "--task", "qa", "--item", "x", "--item", ""])
    assert isinstance(result.exception, ValueError) and "--item 2 is empty" in str(result.exception)


def test_search_names_an_unknown_task_as_unknown(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    corpus, out = write_corpus(tmp_path / "corpus.jsonl"), tmp_path / "idx"
    args = ["index", "--task", "qa", "--corpus", str(corpus), "--out", str(out), "--model", str(tiny_embedder_dir)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["search", "x", "--index", str(out), "--task", "nosuch"])
    assert "unknown task 'nosuch'" in str(result.exception), result.exception


def test_search_refuses_an_empty_query(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "llm_embedder", "search", "ok", " ", "--index", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 2 and "query 2 is empty" in proc.stderr


def test_a_milvus_index_is_searched_from_a_new_process(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    # as users run it: one process builds, a later one searches (Milvus Lite reopens the collection released)
    corpus, out = write_corpus(tmp_path / "corpus.jsonl"), tmp_path / "idx"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llm_embedder", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    built = cli("index", "--task", "qa", "--corpus", str(corpus), "--out", str(out), "--model", str(tiny_embedder_dir),
                "--template", "{title} {text}", "--backend", "milvus", "--filter-field", "lang")
    assert built.returncode == 0, built.stderr
    found = cli("search", "text of document 3", "--index", str(out), "-k", "3", "--json", "--filter", "lang=en")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    assert len(hits) == 3 and all(hit["metadata"]["lang"] == "en" for hit in hits)


def test_a_model_retrained_in_place_is_named_by_index_and_search(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    """`index` refuses to resume or re-use the old vectors (exit 2, one line); `search` warns in one line."""
    import shutil

    model, out = tmp_path / "model", tmp_path / "idx"
    shutil.copytree(tiny_embedder_dir, model)
    args = ["index", "--task", "qa", "--corpus", str(write_corpus(tmp_path / "corpus.jsonl")), "--out", str(out),
            "--model", str(model)]
    assert runner.invoke(app, args).exit_code == 0
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # retrained in place: the same bytes, a new file time

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llm_embedder", *argv], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)

    refused = run(*args)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds a build with different model weights" in " ".join(refused.stderr.split())
    searched = run("search", "text of document 3", "--index", str(out), "-k", "1", "--json")
    assert searched.returncode == 0 and json.loads(searched.stdout)["hits"]
    warning = " ".join(searched.stderr.split())
    assert warning.startswith("warning: ") and "changed since the index was built" in warning
    assert "UserWarning" not in searched.stderr and "Retriever.load" not in searched.stderr


def test_texts_and_paths_with_brackets_are_printed_as_they_are(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    texts = ["see list[int] and dict[str, int] types", "[bold red]ALERT[/bold red] markup text", "a[/i] closing tag"]
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "idx"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    args = ["index", "--task", "qa", "--corpus", str(corpus), "--out", str(out), "--model", str(tiny_embedder_dir)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["search", "types [b]", "--index", str(out), "-k", "3"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert all(t in result.output for t in texts) and "types [b]" in result.output
    missing = tmp_path / "idx[bold]"
    proc = subprocess.run([sys.executable, "-m", "llm_embedder", "search", "q", "--index", str(missing)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 2 and "idx[bold]" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_an_index_refused_for_an_empty_corpus_runs_again_with_the_corpus_fixed(tiny_embedder_dir: Path,
                                                                               tmp_path: Path) -> None:
    corpus, out = tmp_path / "empty.jsonl", tmp_path / "o_empty"
    corpus.write_text("\n\n")
    args = ["index", "--task", "qa", "--corpus", str(corpus), "--out", str(out), "--model", str(tiny_embedder_dir)]
    result = runner.invoke(app, args)
    assert "empty.jsonl: no documents to index" in str(result.exception) and not out.exists()
    write_corpus(corpus)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.exception
    assert json.loads((out / "meta.json").read_text())["count"] == 9


def test_an_index_of_a_task_from_a_task_file_is_searched_and_augmented_with_it(tiny_embedder_dir: Path,
                                                                               tmp_path: Path) -> None:
    task_file = tmp_path / "legal.yaml"
    task_file.write_text("tasks:\n  - name: legal\n    query_instruction: 'Find statutes for: '\n"
                         "    key_instruction: 'Statute: '\n    loss: contrastive\n")
    corpus, out = write_corpus(tmp_path / "corpus.jsonl"), tmp_path / "idx"

    def cli(*args: str) -> subprocess.CompletedProcess:  # a process each: the task registry is process-wide
        return subprocess.run([sys.executable, "-m", "llm_embedder", *args], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)

    built = cli("index", "--task", "legal", "--task-file", str(task_file), "--corpus", str(corpus), "--out", str(out),
                "--model", str(tiny_embedder_dir))
    assert built.returncode == 0, built.stderr
    found = cli("search", "document 3", "--index", str(out), "--json", "--task-file", str(task_file))
    assert found.returncode == 0 and len(json.loads(found.stdout)["hits"]) == 9, found.stderr
    prompt = cli("augment", "document 3", "--task", "legal", "--index", str(out), "-k", "2", "--task-file",
                 str(task_file))
    assert prompt.returncode == 0 and "text of document" in prompt.stdout, prompt.stderr
    refused = cli("augment", "q", "--index", str(out), "--budget", "0")
    assert refused.returncode == 2 and "--budget must be at least 1" in refused.stderr


def test_a_filter_value_that_reads_as_a_number_also_matches_its_text() -> None:
    from llm_embedder.cli.index import parse_filter

    assert parse_filter(["code=1990", "lang=en", "flag=true", 'name="1990"']) == {
        "code": [1990, "1990"], "lang": ["en"], "flag": [True, "true"], "name": ["1990"]}


def test_augment_lays_out_a_chunk_index_in_text_order_and_says_what_it_left_out(tiny_embedder_dir: Path,
                                                                                 tmp_path: Path) -> None:
    """`augment --task lrlm --index` printed the chunks in rank order (ChunkMemory.prompt keeps text order), and
    items left out for the budget were left out silently."""
    from llm_embedder.augment import ChunkMemory
    from llm_embedder.embedder import Embedder

    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    memory = ChunkMemory(Embedder(tiny_embedder_dir, device="cpu"), chunk_tokens=1, index_dir=tmp_path / "cm")
    memory.add_text(" ".join(words))
    result = runner.invoke(app, ["augment", "pi rho", "--task", "lrlm", "--index", str(tmp_path / "cm"), "-k", "6"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "alpha beta gamma delta epsilon zetapi rho\n"  # concatenated, as the recipe does
    result = runner.invoke(app, ["augment", "who?", "--item", "word " * 300, "--item", "Ada wrote it.", "--budget",
                                 "50"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Knowledge: Ada wrote it.\n\nQuestion: who?\nAnswer:\n"
    assert "left out for the budget of 50 tokens: item(s) 1 of 2" in " ".join(result.stderr.split())


def test_a_null_filter_value_matches_its_text_on_both_backends(tiny_embedder, tmp_path: Path) -> None:
    """`--filter tag=null` was refused ("filter value for 'tag' must be str, int, float or bool, got None") though
    parse_filter said null also matches its text. It matches the text "null" (an index stores no null field)."""
    from llm_embedder.cli.index import parse_filter
    from llm_embedder.retriever import Retriever

    assert parse_filter(["tag=null"]) == {"tag": ["null"]}
    docs = [{"text": "one", "tag": "null"}, {"text": "two", "tag": None}, {"text": "three"}, {"text": "four", "tag": 1}]
    for backend in ("faiss", "milvus"):
        retriever = Retriever.build(tiny_embedder, "qa", docs, out_dir=tmp_path / backend, backend=backend)
        assert [h.id for h in retriever.search("x", k=4, filter=parse_filter(["tag=null"]))[0]] == [0], backend
        retriever.close()


def test_search_reads_queries_from_a_file_or_stdin(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    """`search` took positional queries only; --queries FILE ('-': stdin) gives one per line, after any arguments,
    a blank line refused naming it (as encode does), and the output as before: with --json one line per query."""
    corpus, out = write_corpus(tmp_path / "corpus.jsonl"), tmp_path / "idx"
    args = ["index", "--task", "qa", "--corpus", str(corpus), "--out", str(out), "--model", str(tiny_embedder_dir)]
    assert runner.invoke(app, args).exit_code == 0
    queries = tmp_path / "queries.jsonl"  # read as lines whatever its name
    queries.write_text("text of document 3\n{\"text\": \"document 5\"}\n")
    result = runner.invoke(app, ["search", "document 1", "--index", str(out), "-k", "2", "--json", "--queries",
                                 str(queries)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query"] for line in lines] == ["document 1", "text of document 3", '{"text": "document 5"}']
    assert all(len(line["hits"]) == 2 for line in lines)
    alone = runner.invoke(app, ["search", "text of document 3", "--index", str(out), "-k", "2", "--json"])
    assert json.loads(alone.stdout) == lines[1]
    result = runner.invoke(app, ["search", "--index", str(out), "-k", "1", "--json", "--queries", "-"],
                           input="first query\nsecond query\n")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["query"] for line in result.stdout.splitlines()] == ["first query", "second query"]
    queries.write_text("one\n\nthree\n")
    result = runner.invoke(app, ["search", "--index", str(out), "--queries", str(queries)])
    assert f"{queries}:2: empty line (one query per line)" in str(result.exception)
    queries.write_text("one\r\nthree\r\n\r\n \n")  # blank lines at the end were refused as an empty line
    result = runner.invoke(app, ["search", "--index", str(out), "--json", "--queries", str(queries)])
    assert result.exit_code == 0, result.exception
    assert [json.loads(line)["query"] for line in result.stdout.splitlines()] == ["one", "three"]
    queries.write_text("")
    result = runner.invoke(app, ["search", "--index", str(out), "--queries", str(queries)])
    assert f"{queries}: no queries to search" in str(result.exception)
    result = runner.invoke(app, ["search", "--index", str(out)])
    assert "no query: give one or more as arguments, or --queries FILE" in str(result.exception)


def test_search_sets_the_search_effort(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    corpus, out = write_corpus(tmp_path / "corpus.jsonl"), tmp_path / "idx"
    args = ["index", "--task", "qa", "--corpus", str(corpus), "--out", str(out), "--model", str(tiny_embedder_dir),
            "--factory", "HNSW8"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["search", "document 1", "--index", str(out), "-k", "9", "--json", "--ef-search", "9"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["hits"]) == 9
    result = runner.invoke(app, ["search", "document 1", "--index", str(out), "--nprobe", "4"])
    assert "nprobe (--nprobe) applies to an IVF index, not to the FAISS factory 'HNSW8'" in str(result.exception)


def test_a_milvus_index_whose_server_is_unreachable_is_one_line(tiny_embedder, tiny_embedder_dir: Path,
                                                                tmp_path: Path) -> None:
    """MilvusClient(...) was not wrapped: a raw MilvusException traceback."""
    from llm_embedder.index.build import build_index

    out = tmp_path / "idx"
    build_index(write_corpus(tmp_path / "corpus.jsonl"), out, tiny_embedder, "qa", backend="milvus", progress=False)
    descriptor = json.loads((out / "index.milvus.json").read_text())
    (out / "index.milvus.json").write_text(json.dumps({**descriptor, "uri": "http://127.0.0.1:1"}))
    proc = subprocess.run(
        [sys.executable, "-m", "llm_embedder", "search", "text of document 3", "--index", str(out), "--model",
         str(tiny_embedder_dir)], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: cannot reach Milvus at http://127.0.0.1:1 (")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_augment_knows_the_task_of_the_index_model(tiny_embedder: object, tmp_path: Path) -> None:
    """An index built with a model trained on a task of its own: augment refused the task as unknown (search knew
    it, from the model the index loads)."""
    from llm_embedder.embedder import Embedder
    from llm_embedder.retriever import Retriever
    from llm_embedder.tasks import list_tasks, register_task, unregister_task

    try:
        register_task(name="statutes_aug", query_instruction="Find: ", key_instruction="Statute: ")
        model = tiny_embedder.save(tmp_path / "model")
        Retriever.build(Embedder(model, device="cpu"), "statutes_aug", ["Theft is a crime.", "Contracts bind."],
                        out_dir=tmp_path / "idx")
    finally:
        unregister_task("statutes_aug")
    assert "statutes_aug" not in list_tasks()
    try:
        result = runner.invoke(app, ["augment", "who stole?", "--task", "statutes_aug", "--index",
                                     str(tmp_path / "idx"), "-k", "1"])
        assert result.exit_code == 0, result.exception
        assert "Question: who stole?" in result.stdout
    finally:
        if "statutes_aug" in list_tasks():
            unregister_task("statutes_aug")


def test_augment_lays_out_a_task_in_the_layout_its_model_carries(tiny_embedder: object, tmp_path: Path) -> None:
    """A model trained with a task file's layout: augment (with its index, or --model with --item) laid the task out
    as qa ("Knowledge: ... Question:") unless the same --task-file was given again."""
    from llm_embedder.augment.prompt import register_layout
    from llm_embedder.embedder import Embedder
    from llm_embedder.retriever import Retriever
    from llm_embedder.tasks import list_tasks, register_task, unregister_task

    try:
        register_task(name="statutes_lay", query_instruction="Find: ", key_instruction="Statute: ")
        register_layout("statutes_lay", {"header": "Statutes:\n", "query": "Case: {query}\nRuling:"})
        model = tiny_embedder.save(tmp_path / "model")
        Retriever.build(Embedder(model, device="cpu"), "statutes_lay", ["Theft is a crime."], out_dir=tmp_path / "idx")
    finally:
        unregister_task("statutes_lay")
    with_index = ["--index", str(tmp_path / "idx"), "-k", "1"]
    for where in (with_index, ["--model", str(model), "--item", "Theft is a crime."]):
        try:
            result = runner.invoke(app, ["augment", "who stole?", "--task", "statutes_lay", *where])
            assert result.exit_code == 0, result.exception
            assert result.stdout == "Statutes:\nTheft is a crime.\n\nCase: who stole?\nRuling:\n", where
        finally:
            if "statutes_lay" in list_tasks():
                unregister_task("statutes_lay")


def test_index_notes_a_title_that_the_default_field_leaves_out(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    """`index` embedded `text` alone by default, silently, where the corpus has titles and the models train on
    '{title} {text}' keys; now it says so (and nothing when --template is given, or the records have no title)."""
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    base = ["index", "--task", "qa", "--corpus", str(corpus), "--model", str(tiny_embedder_dir)]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "plain")])
    assert result.exit_code == 0, result.output
    assert "records have a 'title' that --field text leaves out" in result.stderr
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "titled"), "--template", "{title} {text}"])
    assert result.exit_code == 0 and "note:" not in result.stderr, result.output
    untitled = tmp_path / "untitled.jsonl"
    untitled.write_text('{"text": "a"}\n{"text": "b"}\n')
    result = runner.invoke(app, [*base[:4], str(untitled), *base[5:], "--out", str(tmp_path / "untitled")])
    assert result.exit_code == 0 and "note:" not in result.stderr, result.output


def test_augment_refuses_k_without_an_index() -> None:
    """-k without --index was ignored silently (the items are the --item ones)."""
    result = runner.invoke(app, ["augment", "q", "--task", "qa", "--item", "x", "-k", "5"])
    assert isinstance(result.exception, ValueError), result.output
    assert str(result.exception).startswith("-k is how many items to retrieve with --index, and no --index is given")
    result = runner.invoke(app, ["augment", "q", "--task", "qa", "--item", "x"])
    assert result.exit_code == 0 and result.stdout.startswith("Knowledge: x"), result.output


def test_a_bad_k_or_filter_is_refused_before_the_index_and_model_load(tmp_path: Path, monkeypatch) -> None:
    """search -k -3 and --filter abc, augment -k 0, failed only once the model had loaded."""
    from llm_embedder.retriever import Retriever

    def no_load(*args, **kwargs):
        raise AssertionError("the index and its model were loaded")

    monkeypatch.setattr(Retriever, "load", no_load)
    for args in (["search", "q", "--index", str(tmp_path), "-k", "-3"],
                 ["search", "q", "--index", str(tmp_path), "-k", "0"],
                 ["augment", "q", "--index", str(tmp_path), "-k", "0"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "Invalid value for '-k'" in result.output, (args, result.output)
    result = runner.invoke(app, ["search", "q", "--index", str(tmp_path), "--filter", "abc"])
    assert isinstance(result.exception, ValueError), result.output
    assert str(result.exception) == "--filter must look like field=value, got 'abc'"



def test_index_refuses_bad_arguments_without_the_title_note_or_faiss_internals(tiny_embedder_dir: Path,
                                                                                 tmp_path: Path) -> None:
    """The title note came before errors about other arguments, and a bad --factory showed FAISS's C++ signature."""
    corpus = write_corpus(tmp_path / "corpus.jsonl")  # its records have titles: the note's case
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["index", "--task", "qa", "--corpus", str(corpus), "--model", str(tiny_embedder_dir)]
    for args, message in (
        (["--out", str(a_file)], "a_file"),
        (["--out", str(tmp_path / "idx"), "--backend", "nope"], "--backend must be one of faiss, milvus, got 'nope'"),
        (["--out", str(tmp_path / "idx"), "--factory", "Bogus"],
         "invalid FAISS factory string 'Bogus': could not parse index string Bogus"),
    ):
        result = runner.invoke(app, [*base, *args])
        assert result.exception is not None and message in str(result.exception), (args, result.output)
        assert "note:" not in result.stderr and "Error in" not in str(result.exception), (args, result.stderr)


def test_a_bad_factory_is_refused_before_the_model_loads(tiny_embedder_dir: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    """index --factory BAD was refused once the model had loaded (the factory was checked against its loaded
    dimension). The dimension is read from the model's configs: a factory the tiny model's 32 dimensions refuse
    (PQ64) is refused as early, and one they take (PQ32, PQ16) is not."""
    from llm_embedder.embedder import Embedder

    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(Embedder, "__init__", no_loading)
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    args = ["index", "--task", "qa", "--corpus", str(corpus), "--out", str(tmp_path / "idx"), "--model",
            str(tiny_embedder_dir)]
    for factory in ("BAD", "PQ64", "IVF4,Flat,Junk"):
        result = runner.invoke(app, [*args, "--factory", factory])
        assert isinstance(result.exception, ValueError), (factory, result.output)
        assert str(result.exception).startswith(f"invalid FAISS factory string {factory!r}: "), result.exception
    for factory in ("PQ32", "PQ16", "HNSW32", "Flat"):  # valid for 32 dimensions: on to loading the model
        result = runner.invoke(app, [*args, "--factory", factory])
        assert str(result.exception) == "the model loaded", (factory, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]  # nothing written


def test_the_dimension_is_read_from_the_model_configs_as_the_loaded_model_gives_it(tiny_embedder_dir: Path,
                                                                                  tmp_path: Path) -> None:
    """A Dense layer after the pooling, or pooling modes put side by side, change the dimension: the configs say
    what the loaded model does; a module of a kind the configs do not tell about gives None (checked once loaded)."""
    from sentence_transformers import SentenceTransformer, models

    from llm_embedder.embedder import Embedder
    from llm_embedder.models import config_embedding_dim

    assert config_embedding_dim(tiny_embedder_dir) == Embedder(tiny_embedder_dir, device="cpu").dim == 32
    transformer = models.Transformer(str(tiny_embedder_dir))
    for name, modules in (
            ("dense", [transformer, models.Pooling(32, pooling_mode="mean"), models.Dense(32, 24), models.Normalize()]),
            ("two_modes", [transformer, models.Pooling(32, pooling_mode=["cls", "mean"])])):
        folder = tmp_path / name
        SentenceTransformer(modules=modules, device="cpu").save(str(folder))
        assert config_embedding_dim(folder) == Embedder(folder, device="cpu").dim, name
    modules = json.loads((tmp_path / "dense" / "modules.json").read_text())
    modules[2]["type"] = "my_package.MyProjection"
    (tmp_path / "dense" / "modules.json").write_text(json.dumps(modules))
    assert config_embedding_dim(tmp_path / "dense") is None


def test_index_shows_its_progress_on_stderr(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    """index's bar went to stdout, its last line ('indexed ...') to stderr, encode's bar to stderr."""
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    result = runner.invoke(app, ["index", "--task", "qa", "--corpus", str(corpus), "--out", str(tmp_path / "idx"),
                                 "--model", str(tiny_embedder_dir), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "encoding qa keys: 9/9 (100%)" in result.stderr and "indexed 9 documents" in result.stderr
    assert result.stdout == ""
