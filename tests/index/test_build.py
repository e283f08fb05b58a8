"""Streaming corpus encoding: memmap, resume after an interruption, metadata, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from llm_embedder.index import FaissIndex
from llm_embedder.index.build import build_index
from llm_embedder.io import DataError


def write_corpus(path: Path, n: int) -> Path:
    with path.open("w") as handle:
        for i in range(n):
            record = {"id": f"d{i}", "title": f"T{i}", "text": f"document number {i} about topic {i % 7}"}
            handle.write(json.dumps(record) + "\n")
    return path


class Interrupt(Exception):
    pass


def test_build_writes_layout_and_meta(tiny_embedder, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 23)
    meta = build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", template="{title} {text}", batch_size=8,
                       progress=False)
    out = tmp_path / "idx"
    assert meta["count"] == 23 and meta["dim"] == tiny_embedder.dim and meta["task"] == "qa"
    assert meta["instruction_hash"] == __import__("llm_embedder.tasks").tasks.get_task("qa").instruction_hash()
    assert meta["key_max_length"] == tiny_embedder.key_max_length == 256
    assert json.loads((out / "meta.json").read_text()) == meta
    vectors = np.memmap(out / "embeddings.memmap", dtype=np.float32, mode="r", shape=(23, tiny_embedder.dim))
    docs = [json.loads(line) for line in (out / "docs.jsonl").read_text().splitlines()]
    assert docs[5]["text"] == "T5 document number 5 about topic 5" and docs[5]["id"] == "d5"
    np.testing.assert_allclose(vectors[5], tiny_embedder.encode_keys(docs[5]["text"], "qa")[0], atol=1e-5)
    index = FaissIndex.load(out / "index.faiss")
    assert index.count == 23 and index.search(vectors[5], k=1)[1][0, 0] == 5


def test_interrupted_build_resumes(tiny_embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 40)
    reference = build_index(corpus, tmp_path / "ref", tiny_embedder, "qa", batch_size=8, progress=False)
    assert reference["count"] == 40
    calls: list[int] = []
    kill_at = [3]
    original = tiny_embedder.encode_keys

    def flaky(texts, task, **kw):
        calls.append(len(texts))
        if len(calls) == kill_at[0]:
            raise Interrupt("killed")
        return original(texts, task, **kw)

    monkeypatch.setattr(tiny_embedder, "encode_keys", flaky)
    with pytest.raises(Interrupt):
        build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", batch_size=8, progress=False)
    progress = json.loads((tmp_path / "idx" / "progress.json").read_text())
    assert progress["rows_done"] == 16 and not (tmp_path / "idx" / "meta.json").exists()
    calls.clear()
    kill_at[0] = 0
    build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", batch_size=8, progress=False)
    assert calls == [8, 8, 8]  # only the 24 rows not yet encoded
    a = np.fromfile(tmp_path / "idx" / "embeddings.memmap", dtype=np.float32)
    b = np.fromfile(tmp_path / "ref" / "embeddings.memmap", dtype=np.float32)
    np.testing.assert_allclose(a, b, atol=1e-5)
    calls.clear()
    build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", batch_size=8, progress=False)
    assert calls == []  # finished: nothing to redo


def test_a_folder_of_another_kind_is_refused_untouched(tiny_embedder, tmp_path: Path) -> None:
    """--out on the corpus's own folder (it holds a docs.jsonl of the user's) would have replaced that file."""
    corpus = write_corpus(tmp_path / "docs.jsonl", 5)
    before = corpus.read_bytes()
    with pytest.raises(FileExistsError, match=f"--out {tmp_path} already holds files that are not an index build "
                                              r"\(docs.jsonl\); give a new or empty folder"):
        build_index(corpus, tmp_path, tiny_embedder, "qa", progress=False)
    assert corpus.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]
    with pytest.raises(NotADirectoryError, match="is a file; give a folder"):
        build_index(corpus, corpus, tiny_embedder, "qa", progress=False)


def test_a_build_cut_while_writing_documents_is_taken_again(tiny_embedder, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed in the first pass, a build leaves only its temporary document files; re-running goes on."""
    from llm_embedder.index import build

    corpus = write_corpus(tmp_path / "c.jsonl", 5)

    def cut(record, *args):
        raise Interrupt("killed")

    monkeypatch.setattr(build, "filterable", cut)
    with pytest.raises(Interrupt):
        build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", filter_fields=["title"], progress=False)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["docs.jsonl.tmp", "docs.offsets.tmp"]
    monkeypatch.undo()
    assert build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", progress=False)["count"] == 5


def test_build_refuses_other_settings(tiny_embedder, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", progress=False)
    with pytest.raises(ValueError, match="different task, instruction_hash"):
        build_index(corpus, tmp_path / "idx", tiny_embedder, "chat", progress=False)
    write_corpus(tmp_path / "other.jsonl", 6)
    with pytest.raises(ValueError, match=r"idx holds a build of a different corpus \(it was built from .*c\.jsonl\); "
                                         "use another --out or delete it"):
        build_index(tmp_path / "other.jsonl", tmp_path / "idx", tiny_embedder, "qa", progress=False)
    write_corpus(corpus, 6)
    with pytest.raises(ValueError, match=r"a different corpus \(.*c\.jsonl changed since: its documents differ"):
        build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", progress=False)


def test_a_touched_or_moved_corpus_with_the_same_documents_is_the_same_build(tiny_embedder, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    first = build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", progress=False)
    stat = corpus.stat()
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # `touch`
    assert build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", progress=False) == first
    moved = corpus.rename(tmp_path / "moved.jsonl")
    assert build_index(moved, tmp_path / "idx", tiny_embedder, "qa", progress=False) == first
    # the same records with the same size: a changed text is still another corpus
    moved.write_text(moved.read_text().replace("number 0 ", "number X "))
    with pytest.raises(ValueError, match="a different corpus"):
        build_index(moved, tmp_path / "idx", tiny_embedder, "qa", progress=False)


def test_resuming_at_another_document_length_is_refused(tiny_embedder_dir, tmp_path: Path) -> None:
    """Rows already encoded keep 256 tokens of a document: going on at 16 would mix two kinds of vectors."""
    from llm_embedder.embedder import Embedder

    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    build_index(corpus, tmp_path / "idx", Embedder(tiny_embedder_dir, device="cpu"), "qa", progress=False)
    short = Embedder(tiny_embedder_dir, device="cpu", key_max_length=16)
    with pytest.raises(ValueError, match="different key_max_length"):
        build_index(corpus, tmp_path / "idx", short, "qa", progress=False)
    assert build_index(corpus, tmp_path / "short", short, "qa", progress=False)["key_max_length"] == 16


def test_bad_corpus_names_file_line_field(tiny_embedder, tmp_path: Path) -> None:
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'text'"):
        build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", progress=False)
    corpus.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'text' must be a string"):
        build_index(corpus, tmp_path / "idx2", tiny_embedder, "qa", progress=False)
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing field 'title'"):
        build_index(corpus, tmp_path / "idx3", tiny_embedder, "qa", template="{title} {text}", progress=False)
    # an empty text would be embedded as the instruction alone; a title-only document goes in with a template
    corpus.write_text('{"text": "ok", "title": "A"}\n{"text": "", "title": "Only a title"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'text' is empty \(a --template such as"):
        build_index(corpus, tmp_path / "idx4", tiny_embedder, "qa", progress=False)
    assert build_index(corpus, tmp_path / "idx5", tiny_embedder, "qa", template="{title} {text}",
                       progress=False)["count"] == 2
    corpus.write_text('{"text": "ok", "title": "A"}\n{"text": " ", "title": ""}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: the template '\{title\} \{text\}' gives an empty text"):
        build_index(corpus, tmp_path / "idx6", tiny_embedder, "qa", template="{title} {text}", progress=False)
    with pytest.raises(DataError, match=r"documents\[1\]: field 'text' is empty$"):
        build_index(["ok", {"id": 1, "text": ""}], tmp_path / "idx7", tiny_embedder, "qa", progress=False)
    # a template that cannot mean a record's fields is refused before anything is read or written
    for template, message in [("{} {0}", r"\{\} is not a field name"), ("{text.upper}", r"\{text.upper\} is not a"),
                              ("{title", "expected '}' before end of string")]:
        with pytest.raises(ValueError, match=r"the template '.*': " + message):
            build_index(corpus, tmp_path / "idx8", tiny_embedder, "qa", template=template, progress=False)
    assert not (tmp_path / "idx8").exists()
    with pytest.raises(DataError, match=r"bad.jsonl:1: the template '\{text:d\}': Unknown format code 'd'"):
        build_index(corpus, tmp_path / "idx9", tiny_embedder, "qa", template="{text:d}", progress=False)
    corpus.write_text('{"text": "ok", "title": "A"}\n{"text": "fine", "title": ["B", "C"]}\n')  # was "['B', 'C'] fine"
    with pytest.raises(DataError, match=r"bad.jsonl:2:title: must be a string or a number, got list \(the template"):
        build_index(corpus, tmp_path / "idx10", tiny_embedder, "qa", template="{title} {text}", progress=False)
    corpus.write_text('{"text": "ok", "title": "A"}\n{"text": "fine", "title": "B"}\n')
    with pytest.raises(DataError, match=r"filter field 'country': no document has it"):
        build_index(corpus, tmp_path / "idx11", tiny_embedder, "qa", filter_fields=["title", "country"],
                    progress=False)
    assert not (tmp_path / "idx11" / "embeddings.memmap").exists()  # refused before anything was encoded
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty.jsonl: no documents to index"):
        build_index(empty, tmp_path / "idx10", tiny_embedder, "qa", progress=False)


def test_milvus_backend_build(tiny_embedder, tmp_path: Path) -> None:
    from llm_embedder.retriever import Retriever

    corpus = write_corpus(tmp_path / "c.jsonl", 12)
    meta = build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", backend="milvus", progress=False,
                       filter_fields=["title"])
    assert meta["backend"] == "milvus" and (tmp_path / "idx" / "index.milvus.json").exists()
    retriever = Retriever.load(tmp_path / "idx", tiny_embedder)
    hits = retriever.search("document number 3 about topic 3", k=3, filter={"title": "T3"})[0]
    assert [h.id for h in hits] == [3] and hits[0].metadata["id"] == "d3"
    retriever.close()


def test_filter_fields_the_index_owns_are_refused_first_and_left_out_of_every_field(tiny_embedder,
                                                                                  tmp_path: Path) -> None:
    from llm_embedder.retriever import Retriever

    corpus = write_corpus(tmp_path / "c.jsonl", 4)
    for name in ("id", "vector", "my-field"):
        with pytest.raises(ValueError, match=f"filter field '{name}' must be an identifier other than"):
            build_index(corpus, tmp_path / "refused", tiny_embedder, "qa", backend="milvus", filter_fields=[name],
                        progress=False)
        assert not (tmp_path / "refused").exists()  # before anything was written or encoded
    # "*": every field a filter can name; Milvus used to fail after encoding on a document field named vector
    odd = tmp_path / "odd.jsonl"
    odd.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i}", "vector": "v", "my-field": 1, "lang": "en"})
                           + "\n" for i in range(3)))
    build_index(odd, tmp_path / "idx", tiny_embedder, "qa", backend="milvus", filter_fields=["*"], progress=False)
    retriever = Retriever.load(tmp_path / "idx", tiny_embedder)
    hits = retriever.search("text 1", k=3, filter={"lang": "en"})[0]
    assert len(hits) == 3 and hits[0].metadata["vector"] == "v"  # the document keeps its fields
    retriever.close()


def test_read_rows_matches_direct_indexing(tmp_path):
    import numpy as np

    from llm_embedder.index import build

    data = np.random.default_rng(0).standard_normal((2500, 8)).astype(np.float32)
    path = tmp_path / "embeddings.f32"
    data.tofile(path)
    rows = np.sort(np.random.default_rng(1).choice(2500, size=300, replace=False))
    np.testing.assert_array_equal(build.read_rows(path, rows, 2500, 8), data[rows])


def test_builds_from_before_the_document_length(tiny_embedder, tmp_path: Path) -> None:
    """A finished build written before key_max_length was recorded is re-used as it is; an unfinished one is
    refused, since nobody knows at which length its rows were encoded."""
    corpus = write_corpus(tmp_path / "c.jsonl", 6)
    out = tmp_path / "idx"
    build_index(corpus, out, tiny_embedder, "qa", progress=False)
    progress, meta = json.loads((out / "progress.json").read_text()), json.loads((out / "meta.json").read_text())
    del progress["settings"]["key_max_length"], meta["key_max_length"]
    (out / "progress.json").write_text(json.dumps(progress))
    (out / "meta.json").write_text(json.dumps(meta))
    assert build_index(corpus, out, tiny_embedder, "qa", progress=False) == meta
    with pytest.raises(ValueError, match="different task"):
        build_index(corpus, out, tiny_embedder, "chat", progress=False)
    (out / "progress.json").write_text(json.dumps({**progress, "done": False}))
    with pytest.raises(ValueError, match="unfinished build from an earlier version"):
        build_index(corpus, out, tiny_embedder, "qa", progress=False)


@pytest.mark.parametrize(("options", "message"), [
    ({"backend": "foo"}, "backend must be faiss or milvus, got 'foo'"),
    ({"factory": "Bogus"}, "invalid FAISS factory string 'Bogus'"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
])
def test_bad_settings_are_refused_before_encoding(tiny_embedder, tmp_path: Path, options: dict, message: str) -> None:
    calls = []
    tiny_embedder_encode = tiny_embedder.encode_keys

    class Watched:  # the embedder, counting what it is asked to encode
        def __getattr__(self, name):
            return getattr(tiny_embedder, name)

        def encode_keys(self, texts, task, **options):
            calls.append(len(texts))
            return tiny_embedder_encode(texts, task, **options)

    with pytest.raises(ValueError, match=message):
        build_index(["a document", "another"], tmp_path / "idx", Watched(), "qa", progress=False, **options)
    assert calls == [] and not (tmp_path / "idx").exists()


def test_a_model_retrained_in_place_does_not_reuse_its_old_vectors(tiny_embedder_dir, tmp_path: Path) -> None:
    """The same folder, other weights: neither a finished build nor a cut one is taken as this model's."""
    import os
    import shutil

    from llm_embedder.embedder import Embedder

    model = tmp_path / "model"
    shutil.copytree(tiny_embedder_dir, model)
    corpus, out = write_corpus(tmp_path / "c.jsonl", 5), tmp_path / "idx"
    meta = build_index(corpus, out, Embedder(model, device="cpu"), "qa", progress=False)
    assert meta["model_version"] and build_index(corpus, out, Embedder(model, device="cpu"), "qa",
                                                 progress=False) == meta
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=r"different model weights \(the model's weight files changed since"):
        build_index(corpus, out, Embedder(model, device="cpu"), "qa", progress=False)
    # a build from before the weights were recorded is taken as it was
    progress = json.loads((out / "progress.json").read_text())
    del progress["settings"]["model_version"]
    (out / "progress.json").write_text(json.dumps(progress))
    assert build_index(corpus, out, Embedder(model, device="cpu"), "qa", progress=False) == meta


def test_a_build_refused_for_its_data_runs_again_with_the_data_fixed(tiny_embedder, tmp_path: Path) -> None:
    """A refused corpus (empty, a bad line, a filter field no document has) leaves no document files behind: they
    made the folder one that is not an index build, and the same command with the corpus fixed was refused."""
    corpus, out = tmp_path / "c.jsonl", tmp_path / "idx"
    for text, message in [("\n\n", "no documents to index"), ('{"text": "ok"}\n{"title": "x"}\n', "missing field"),
                          ('{"text": "ok"}\n{"text": "fine"}\n', "filter field 'lang': no document has it")]:
        corpus.write_text(text)
        with pytest.raises(DataError, match=message):
            build_index(corpus, out, tiny_embedder, "qa", filter_fields=["lang"], progress=False)
        assert not out.exists()  # the folder the build made is removed again
    out.mkdir()  # one that was there before the refused build stays, empty
    corpus.write_text("\n\n")
    with pytest.raises(DataError, match="no documents to index"):
        build_index(corpus, out, tiny_embedder, "qa", progress=False)
    assert list(out.iterdir()) == []
    assert build_index(write_corpus(corpus, 3), out, tiny_embedder, "qa", progress=False)["count"] == 3
    # a build cut between moving its document files in place and recording its progress is taken again
    cut = tmp_path / "cut"
    cut.mkdir()
    for name in ("docs.jsonl", "docs.offsets"):
        (cut / name).write_bytes((out / name).read_bytes())
    assert build_index(corpus, cut, tiny_embedder, "qa", progress=False)["count"] == 3


def test_a_text_of_only_whitespace_is_refused(tiny_embedder, tmp_path: Path) -> None:
    """Like an empty one, it would be embedded as the instruction alone, a vector near every query."""
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "ok"}\n{"text": " \\t "}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'text' holds only whitespace$"):
        build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", progress=False)
    assert not (tmp_path / "idx").exists()
    with pytest.raises(DataError, match=r"documents\[1\]: field 'text' holds only whitespace$"):
        build_index(["ok", "\n  "], tmp_path / "idx2", tiny_embedder, "qa", progress=False)
    with pytest.raises(DataError, match=r"documents\[0\]: field 'text' holds only invisible characters \(U\+200B\)"):
        build_index(["\u200b"], tmp_path / "idx3", tiny_embedder, "qa", progress=False)


def test_a_build_into_a_folder_another_build_is_writing_is_refused(tiny_embedder, tmp_path: Path) -> None:
    from llm_embedder.index.build import LOCK_FILE
    from llm_embedder.io import RunInProgressError, exclusive

    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    with exclusive(tmp_path / "idx" / LOCK_FILE, "x"):
        with pytest.raises(RunInProgressError, match=r"the index build .*idx is being written by another run"):
            build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", progress=False)
    assert build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", progress=False)["count"] == 5
    assert not (tmp_path / "idx" / LOCK_FILE).exists()


def test_filter_fields_in_another_order_are_the_same_build(tiny_embedder, tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    rows = [{"text": f"doc {i}", "lang": "en", "year": 2000 + i} for i in range(4)]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    meta = build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", filter_fields=["year", "lang"], progress=False)
    assert meta["filter_fields"] == ["lang", "year"]
    again = build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", filter_fields=["lang", "year", "lang"],
                        progress=False)
    assert again == meta
    # a build recorded before the fields were sorted: the same set is the same build
    progress = json.loads((tmp_path / "idx" / "progress.json").read_text())
    progress["settings"]["filter_fields"] = ["year", "lang"]
    (tmp_path / "idx" / "progress.json").write_text(json.dumps(progress))
    assert build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", filter_fields=["lang", "year"],
                       progress=False)["count"] == 4


def watched(embedder, calls: list[int]):
    """The embedder, recording how many texts it is asked to encode per call."""
    encode = embedder.encode_keys

    class Watched:
        def __getattr__(self, name):
            return getattr(embedder, name)

        def encode_keys(self, texts, task, **options):
            calls.append(len(texts))
            return encode(texts, task, **options)

    return Watched()


@pytest.mark.parametrize(("factory", "part"), [
    ("IVF64,Flat", "IVF with 64 lists needs at least 64"),
    ("PQ8", "PQ with 256 centroids per sub-quantizer needs at least 256"),
    ("IVF4,PQ8", "PQ with 256 centroids per sub-quantizer needs at least 256"),
])
def test_a_factory_that_cannot_be_trained_is_refused_before_encoding_and_flat_reuses_the_folder(
        tiny_embedder, tmp_path: Path, factory: str, part: str) -> None:
    """It failed after the whole corpus was encoded, and the advised --factory Flat on the same --out was then refused
    ("holds a build with different factory")."""
    corpus, out, calls = write_corpus(tmp_path / "c.jsonl", 20), tmp_path / "idx", []
    embedder = watched(tiny_embedder, calls)
    with pytest.raises(ValueError, match=f"factory '{factory}' cannot be trained on 20 documents: its {part}"):
        build_index(corpus, out, embedder, "qa", factory=factory, batch_size=8, progress=False)
    assert calls == []
    meta = build_index(corpus, out, embedder, "qa", factory="Flat", batch_size=8, progress=False)
    assert meta["factory"] == "Flat" and meta["count"] == 20 and calls == [8, 8, 4]
    # the same factories FAISS trains are taken (IVF4: 4 lists, 20 vectors)
    calls.clear()
    assert build_index(corpus, out, embedder, "qa", factory="IVF4,Flat", progress=False)["factory"] == "IVF4,Flat"
    assert calls == []


def test_another_factory_or_backend_rebuilds_the_index_from_the_vectors_encoded(
        tiny_embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_embedder.retriever import Retriever

    corpus, out, calls = write_corpus(tmp_path / "c.jsonl", 24), tmp_path / "idx", []
    embedder = watched(tiny_embedder, calls)
    original = embedder.encode_keys

    def cut(texts, task, **kw):
        if len(calls) == 1:
            calls.append(len(texts))
            raise Interrupt("killed")
        return original(texts, task, **kw)

    monkeypatch.setattr(embedder, "encode_keys", cut, raising=False)
    with pytest.raises(Interrupt):  # cut after 8 of 24 rows, with Flat
        build_index(corpus, out, embedder, "qa", batch_size=8, progress=False)
    monkeypatch.undo()
    calls.clear()
    meta = build_index(corpus, out, embedder, "qa", factory="HNSW32", batch_size=8, progress=False)
    assert meta["factory"] == "HNSW32" and calls == [8, 8]  # only the rows the cut build had not encoded
    calls.clear()
    meta = build_index(corpus, out, embedder, "qa", backend="milvus", factory="IVF4,Flat", progress=False)
    assert calls == [] and meta["backend"] == "milvus" and not (out / "index.faiss").exists()
    retriever = Retriever.load(out, tiny_embedder)
    assert retriever.index.client.describe_index(retriever.index.collection, "vector")["index_type"] == "IVF_FLAT"
    assert retriever.search("document number 5 about topic 5", k=1)[0][0].id == 5
    retriever.add(["one more document"])  # the folder now holds more than the build wrote
    retriever.close()
    with pytest.raises(ValueError, match="different factory, backend, changed since it was built"):
        build_index(corpus, out, embedder, "qa", factory="Flat", progress=False)
    assert Retriever.load(out, tiny_embedder).index.count == 25  # left as it was


@pytest.mark.parametrize("change", ["add", "delete"])
def test_another_factory_is_refused_after_a_faiss_add_or_delete(tiny_embedder, tmp_path: Path, change: str) -> None:
    """Behaviour kept: an add or a delete changed the index file, which told a build with another factory that the
    folder holds more than its build wrote. Now they go to the journals (the embeddings file, deleted.ids) and the
    index file stays as it was; the build still refuses, and rebuilding would have dropped the add or brought the
    deleted document back."""
    from llm_embedder.retriever import Retriever

    corpus, out = write_corpus(tmp_path / "c.jsonl", 12), tmp_path / "idx"
    build_index(corpus, out, tiny_embedder, "qa", progress=False)
    retriever = Retriever.load(out, tiny_embedder)
    retriever.add(["one more document"]) if change == "add" else retriever.delete([3])
    with pytest.raises(ValueError, match="different factory, changed since it was built"):
        build_index(corpus, out, tiny_embedder, "qa", factory="HNSW8", progress=False)
    held = [i for i, _ in Retriever.load(out, tiny_embedder).documents()]
    assert held == (list(range(13)) if change == "add" else [i for i in range(12) if i != 3])


@pytest.mark.parametrize(("factory", "message"), [
    ("Bogus12", "the Milvus backend has no index for the factory 'Bogus12'; it takes Flat, HNSW<M>"),
    ("IVF1024,PQ32", "Milvus Lite does not build IVF_PQ"),
    ("IVF16,PQ8x4,Refine(Flat)", "no index for the factory"),
    ("HNSW1", "Milvus HNSW takes M from 2 to 2048"),
    ("IVF1024,Flat", "factory 'IVF1024,Flat' cannot be trained on 5 documents: its IVF with 1024 lists"),
])
def test_milvus_refuses_a_factory_it_cannot_build_as_given(tiny_embedder, tmp_path: Path, factory: str,
                                                           message: str) -> None:
    """Any factory was taken: Bogus12 built AUTOINDEX, IVF1024,PQ32 an IVF_FLAT without its PQ."""
    calls: list[int] = []
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_index(write_corpus(tmp_path / "c.jsonl", 5), tmp_path / "idx", watched(tiny_embedder, calls), "qa",
                    backend="milvus", factory=factory, progress=False)
    assert calls == []


def test_milvus_maps_each_factory_it_takes_faithfully(tmp_path: Path) -> None:
    from llm_embedder.index import open_index
    from llm_embedder.index.milvus_index import _index_params

    assert _index_params("HNSW32,SQ8") == ("HNSW_SQ", {"M": 32, "efConstruction": 200, "sq_type": "SQ8"})
    assert _index_params("IVF8,SQ8") == ("IVF_SQ8", {"nlist": 8})
    assert _index_params("IVF1024,PQ32x4", lite=False) == ("IVF_PQ", {"nlist": 1024, "m": 32, "nbits": 4})
    index = open_index(tmp_path / "x.db", 8, factory="HNSW16,SQ8")
    assert index.client.describe_index(index.collection, "vector")["index_type"] == "HNSW_SQ"
    index.close()
    with pytest.raises(ValueError, match="no index for the factory 'Bogus'"):
        open_index(tmp_path / "y.db", 8, factory="Bogus")


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_an_integer_outside_int64_in_a_filter_field_is_refused_before_encoding(tiny_embedder, tmp_path: Path,
                                                                               backend: str) -> None:
    """Milvus failed after encoding with "The Input data type is inconsistent with defined schema", naming nothing;
    FAISS took it. One rule for both: refused, naming file:line:field."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "a", "n": 1}) + "\n" + json.dumps({"text": "b", "n": 2**70}) + "\n")
    calls: list[int] = []
    with pytest.raises(DataError, match=r"c\.jsonl:2: field 'n' holds the integer 1180591620717411303424, outside"):
        build_index(corpus, tmp_path / "idx", watched(tiny_embedder, calls), "qa", backend=backend,
                    filter_fields=["*"], progress=False)
    assert calls == []
    # a field not stored for filtering is only kept in docs.jsonl, which holds any JSON number
    assert build_index(corpus, tmp_path / "idx", tiny_embedder, "qa", backend=backend, progress=False)["count"] == 2


def test_a_corpus_within_one_batch_says_it_started_encoding(tiny_embedder, tmp_path: Path, capsys,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A corpus of one batch said nothing in a log until its one batch was encoded (the first plain line came
    log_every seconds in, or at the end): it now says it started, with its count, as encode does."""
    said = []  # what the log held when the batch was encoded
    real_encode = tiny_embedder.encode_keys

    def encode_keys(*args, **kwargs):
        said.append(capsys.readouterr().err)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(tiny_embedder, "encode_keys", encode_keys)
    build_index(write_corpus(tmp_path / "c.jsonl", 5), tmp_path / "idx", tiny_embedder, "qa", batch_size=8)
    assert len(said) == 1 and "encoding qa keys: 0/5 (0%)" in said[0]
    assert "encoding qa keys: 5/5 (100%)" in capsys.readouterr().err


def test_a_document_holding_nan_is_refused_naming_its_field() -> None:
    """json.dumps wrote NaN into docs.jsonl: search --json printed no JSON and the server answered 500."""
    from llm_embedder.index.build import doc_line

    with pytest.raises(DataError, match=r"^documents\[3\]: field 'n' holds NaN or infinity, which JSON cannot store"):
        doc_line({"text": "t", "n": [1.0, float("inf")]}, "documents[3]")
    assert doc_line({"text": "t", "n": 1.5}, "documents[3]") == b'{"text": "t", "n": 1.5}\n'
