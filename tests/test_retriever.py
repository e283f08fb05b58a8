"""Retriever: build in memory or on disk, search, add, load, mismatch errors; one real-MiniLM check."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from llm_embedder.index import EmptyIndexError
from llm_embedder.io import LOCK_FILE, RunInProgressError, exclusive
from llm_embedder.retriever import Hit, IndexChangedError, Retriever

DOCS = [
    {"text": "The Eiffel Tower is in Paris.", "lang": "en"},
    {"text": "Mount Fuji is the highest mountain in Japan.", "lang": "en"},
    {"text": "La tour Eiffel se trouve à Paris.", "lang": "fr"},
    {"text": "Python is a programming language.", "lang": "en"},
]


def test_in_memory_build_search_add(tiny_embedder) -> None:
    retriever = Retriever.build(tiny_embedder, "qa", DOCS)
    assert len(retriever) == 4 and retriever.task == "qa" and retriever.embedder is tiny_embedder
    results = retriever.search([DOCS[1]["text"], DOCS[3]["text"]], k=2)
    assert len(results) == 2 and all(len(r) == 2 for r in results)
    assert isinstance(results[0][0], Hit) and results[0][0].score >= results[0][1].score
    hits = retriever.search("anything", k=10, filter={"lang": "fr"})[0]
    assert [h.id for h in hits] == [2] and hits[0].metadata == {"lang": "fr"}
    assert retriever.add(["A new document.", {"text": "Another one.", "lang": "de"}]) == [4, 5]
    assert [h.text for h in retriever.search("x", k=10, filter={"lang": "de"})[0]] == ["Another one."]
    with pytest.raises(ValueError, match=r"documents\[0\]: a document needs a string 'text'"):
        retriever.add([{"title": "no text"}])
    with pytest.raises(ValueError, match=r"documents\[1\]: a document's 'text' is empty"):
        retriever.add(["fine", {"text": "", "lang": "de"}])
    with pytest.raises(ValueError, match=r"documents\[1\]: a document's 'text' holds only whitespace"):
        retriever.add(["fine", "   "])
    with pytest.raises(ValueError, match=r"documents\[0\]: a document's 'text' holds only invisible characters"):
        retriever.add(["\u200b"])  # a zero-width space: the tokenizer drops it, leaving the instruction alone
    assert len(retriever) == 6  # nothing of a refused batch was added
    with pytest.raises(ValueError, match=r"query 2 is empty; give the text to search for"):
        retriever.search(["Paris", "  "])  # it would return the documents nearest to the instruction alone
    with pytest.raises(ValueError, match=r"query 1 is empty"):
        retriever.search(["\u200d\u200b"])
    with pytest.raises(TypeError, match=r"query 1 is a NoneType, not a string"):
        retriever.search([None])


def test_empty_retriever(tiny_embedder) -> None:
    retriever = Retriever.build(tiny_embedder, "chat", [])
    with pytest.raises(EmptyIndexError):
        retriever.search("hello")
    retriever.add(["hello there"])
    assert retriever.search("hello")[0][0].text == "hello there"


def test_directory_roundtrip_and_add(tiny_embedder, tmp_path: Path) -> None:
    built = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=tmp_path / "idx")
    first = built.search(DOCS[0]["text"], k=3)[0]
    built.add([{"text": "Added later.", "lang": "en"}])
    again = Retriever.load(tmp_path / "idx", tiny_embedder)
    assert len(again) == 5 and json.loads((tmp_path / "idx" / "meta.json").read_text())["count"] == 5
    rows = np.fromfile(tmp_path / "idx" / "embeddings.memmap", dtype=np.float32).reshape(5, -1)
    np.testing.assert_allclose(rows[4], tiny_embedder.encode_keys(["Added later."], "qa")[0], atol=1e-6)
    assert [h.id for h in again.search(DOCS[0]["text"], k=3)[0]] == [h.id for h in first]
    assert again.search("Added later.", k=5, filter={"lang": "en"})[0]
    assert again.delete([0]) == 1
    assert 0 not in [h.id for h in Retriever.load(tmp_path / "idx", tiny_embedder).search("x", k=5)[0]]


def test_documents_lists_what_the_index_still_holds(tiny_embedder, tmp_path: Path) -> None:
    built = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=tmp_path / "idx")
    assert built.documents() == [(i, dict(doc)) for i, doc in enumerate(DOCS)]
    built.delete([1])
    assert [i for i, _ in Retriever.load(tmp_path / "idx", tiny_embedder).documents()] == [0, 2, 3]
    in_memory = Retriever.build(tiny_embedder, "qa", ["one", "two"])
    in_memory.delete([0])
    assert in_memory.documents() == [(1, {"text": "two"})]


def test_mismatched_embedder_is_refused(tiny_embedder, tmp_path: Path) -> None:
    from llm_embedder.embedder import Embedder

    Retriever.build(tiny_embedder, "qa", DOCS, out_dir=tmp_path / "idx")
    meta_path = tmp_path / "idx" / "meta.json"
    meta = json.loads(meta_path.read_text())
    plain = Embedder(tiny_embedder.path, device="cpu", use_instructions=False)
    with pytest.raises(ValueError, match="task instructions: the index was encoded for task 'qa'"):
        Retriever.load(tmp_path / "idx", plain)
    meta.update(model="other-model", model_path="/nowhere")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="model: index was built with 'other-model'"):
        Retriever.load(tmp_path / "idx", tiny_embedder)
    meta_path.write_text("{broken")
    with pytest.raises(ValueError, match="corrupt index metadata"):
        Retriever.load(tmp_path / "idx", tiny_embedder)
    with pytest.raises(FileNotFoundError, match="nothing not found"):
        Retriever.load(tmp_path / "nothing", tiny_embedder)
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(FileNotFoundError, match="unfinished is not a finished index directory"):
        Retriever.load(tmp_path / "unfinished", tiny_embedder)


def test_loading_with_a_model_retrained_since_the_build_warns(tiny_embedder_dir, tmp_path: Path) -> None:
    import os
    import shutil
    import warnings

    from llm_embedder.embedder import Embedder
    from llm_embedder.models import ModelChangedWarning

    model = tmp_path / "model"
    shutil.copytree(tiny_embedder_dir, model)
    Retriever.build(Embedder(model, device="cpu"), "qa", DOCS, out_dir=tmp_path / "idx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Retriever.load(tmp_path / "idx", Embedder(model, device="cpu"))
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.warns(ModelChangedWarning, match="changed since the index was built; if the model was retrained"):
        Retriever.load(tmp_path / "idx", Embedder(model, device="cpu"))


def test_a_model_of_the_same_name_in_another_folder_with_other_weights_warns(tiny_embedder_dir, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil
    import warnings

    from llm_embedder.embedder import Embedder
    from llm_embedder.models import ModelChangedWarning

    for where in ("a", "b", "c"):
        shutil.copytree(tiny_embedder_dir, tmp_path / where / "m1")  # copy2: file times kept
    monkeypatch.chdir(tmp_path / "a")
    Retriever.build(Embedder("m1", device="cpu"), "qa", DOCS, out_dir=tmp_path / "idx")
    monkeypatch.chdir(tmp_path / "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a copy keeping its file times is the same model
        Retriever.load(tmp_path / "idx", Embedder("m1", device="cpu"))
    monkeypatch.chdir(tmp_path / "c")
    weights = tmp_path / "c" / "m1" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.warns(ModelChangedWarning, match=r"the model 'm1' is .*c/m1, not the folder the index was built with"):
        Retriever.load(tmp_path / "idx", Embedder("m1", device="cpu"))


LONG_DOC = "A document far longer than sixteen tokens, " + " ".join(f"word{i}" for i in range(60))


def test_index_keeps_its_document_length(tiny_embedder, tmp_path: Path) -> None:
    """An index built at 16 document tokens reopens at 16 without an embedder, refuses one at another length
    (its added vectors would differ from the stored ones), and does not check an index that predates the field."""
    from llm_embedder.embedder import Embedder

    short = Embedder(tiny_embedder.path, device="cpu", key_max_length=16)
    Retriever.build(short, "qa", DOCS, out_dir=tmp_path / "idx")
    meta_path = tmp_path / "idx" / "meta.json"
    assert json.loads(meta_path.read_text())["key_max_length"] == 16
    assert not np.allclose(short.encode_keys([LONG_DOC], "qa"), tiny_embedder.encode_keys([LONG_DOC], "qa"))

    reopened = Retriever.load(tmp_path / "idx")
    assert reopened.embedder.key_max_length == 16
    assert Retriever.load(tmp_path / "idx", model=tiny_embedder.path).embedder.key_max_length == 16
    reopened.add([LONG_DOC])
    rows = np.fromfile(tmp_path / "idx" / "embeddings.memmap", dtype=np.float32).reshape(5, -1)
    np.testing.assert_allclose(rows[4], short.encode_keys([LONG_DOC], "qa")[0], atol=1e-6)

    with pytest.raises(ValueError, match=r"document tokens: the index's vectors keep 16 tokens of a document, "
                                         r"the embedder keeps 256 \(encode at 16"):
        Retriever.load(tmp_path / "idx", tiny_embedder)
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "key_max_length": "16"}))
    with pytest.raises(ValueError, match="corrupt index metadata: key_max_length must be a positive integer"):
        Retriever.load(tmp_path / "idx", short)
    del meta["key_max_length"]  # written before the index recorded it
    meta_path.write_text(json.dumps(meta))
    assert len(Retriever.load(tmp_path / "idx", tiny_embedder)) == 5


def test_in_memory_retriever_records_its_document_length(tiny_embedder) -> None:
    assert Retriever.build(tiny_embedder, "qa", DOCS).meta["key_max_length"] == tiny_embedder.key_max_length


@pytest.mark.integration
def test_minilm_finds_the_right_passage(minilm, tmp_path: Path) -> None:
    docs = [
        "Paris is the capital and largest city of France.",
        "The mitochondrion is the powerhouse of the cell.",
        "Mount Everest is Earth's highest mountain above sea level.",
        "The Great Barrier Reef is the world's largest coral reef system.",
        "Python was created by Guido van Rossum and first released in 1991.",
    ]
    retriever = Retriever.build(minilm, "qa", docs, out_dir=tmp_path / "idx")
    queries = ["What is the capital of France?", "Which mountain is the tallest?", "Who created Python?"]
    tops = [hits[0].id for hits in Retriever.load(tmp_path / "idx").search(queries, k=3)]
    assert tops == [0, 2, 4]
    assert retriever.meta["model"] == "minilm"


def test_filter_on_a_field_the_index_did_not_store_is_refused(tiny_embedder, tmp_path: Path) -> None:
    from llm_embedder.index.build import build_index

    build_index(DOCS, tmp_path / "idx", tiny_embedder, "qa", progress=False)  # no filter_fields
    retriever = Retriever.load(tmp_path / "idx", tiny_embedder)
    assert len(retriever.search("Paris", k=2)[0]) == 2
    with pytest.raises(ValueError, match=r"filter on 'lang', but the index stores only these fields for filtering: "
                                         r"none; build it with --filter-field lang"):
        retriever.search("Paris", k=2, filter={"lang": "en"})
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    del meta["filter_fields"]  # an index from before the fields were recorded: searched as before
    (tmp_path / "idx" / "meta.json").write_text(json.dumps(meta))
    assert Retriever.load(tmp_path / "idx", tiny_embedder).search("Paris", k=2, filter={"lang": "en"}) == [[]]


def test_a_filter_on_a_field_no_document_holds_is_refused_under_every_field(tiny_embedder, tmp_path: Path) -> None:
    """Retriever.build stores every field ("*"): a mistyped field matched nothing, silently."""
    for retriever in (Retriever.build(tiny_embedder, "qa", DOCS, out_dir=tmp_path / "idx"),
                      Retriever.build(tiny_embedder, "qa", DOCS)):
        assert len(retriever.search("Paris", k=4, filter={"lang": "en"})[0]) == 3
        with pytest.raises(ValueError, match=r"filter on 'lnag', but no document in the index has that field; the "
                                             r"fields are: lang"):
            retriever.search("Paris", k=2, filter={"lnag": "en"})
        retriever.add([{"text": "Tokyo is in Japan.", "country": "jp"}])  # a field added later is known at once
        assert [h.text for h in retriever.search("Tokyo", k=4, filter={"country": "jp"})[0]] == ["Tokyo is in Japan."]
    reopened = Retriever.load(tmp_path / "idx", tiny_embedder)
    assert reopened.search("Tokyo", k=4, filter={"country": "jp"})[0][0].text == "Tokyo is in Japan."
    with pytest.raises(ValueError, match="no document in the index has that field; the fields are: country, lang"):
        reopened.search("Paris", k=2, filter={"lnag": "en"})


def test_a_document_json_cannot_store_is_refused_before_anything_is_written(tiny_embedder, tmp_path: Path) -> None:
    """A date in a document used to fail in json.dumps after its vector was in the index: the next add clashed on
    its id, search hit a row docs.jsonl did not have. Now it is refused, naming it, and nothing is written."""
    import datetime

    out = tmp_path / "idx"
    retriever = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"documents\[1\]: field 'when' cannot be stored as JSON \(a date; give it "
                                         r"as a string, number, boolean, list or dict\)"):
        retriever.add([{"text": "Good doc one."}, {"text": "Bad doc", "when": datetime.date(2020, 1, 1)}])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before and len(retriever) == 4
    assert retriever.add([{"text": "Good doc one."}]) == [4]
    assert {h.id: h.text for h in retriever.search("Good doc one.", k=5)[0]}[4] == "Good doc one."
    assert len(Retriever.load(out, tiny_embedder)) == 5
    with pytest.raises(ValueError, match=r"documents\[0\]: field 'when' cannot be stored as JSON \(a date"):
        Retriever.build(tiny_embedder, "qa", [{"text": "Bad doc", "when": datetime.date(2020, 1, 1)}],
                        out_dir=tmp_path / "idx2")


def test_a_string_of_documents_is_refused_a_path_is_a_jsonl_file(tiny_embedder, tmp_path: Path) -> None:
    """A plain string was read as a JSONL path: a document was "file not found", a file name indexed that file."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"text": "Cats purr."}\n{"text": "Dogs bark."}\n')
    refused = r"documents is a string \('Paris is the capital of France.'\); pass a list of documents, e.g. \['Paris"
    with pytest.raises(TypeError, match=refused):
        Retriever.build(tiny_embedder, "qa", "Paris is the capital of France.")
    with pytest.raises(TypeError, match=refused):
        Retriever.build(tiny_embedder, "qa", "Paris is the capital of France.", out_dir=tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
    retriever = Retriever.build(tiny_embedder, "qa", facts)  # a Path is a JSONL file, as before
    assert sorted(h.text for h in retriever.search("x", k=5)[0]) == ["Cats purr.", "Dogs bark."]
    with pytest.raises(TypeError, match=r"documents is a string \('/.*'\); pass a list of .* or a Path for a JSONL"):
        retriever.add(str(facts))
    assert len(retriever) == 2


def test_a_reopened_hnsw_index_names_its_factory(tiny_embedder, tmp_path: Path) -> None:
    """Documents without fields leave no FAISS sidecar, so the reopened index named its factory '?' in the delete
    error; meta.json records it."""
    Retriever.build(tiny_embedder, "qa", ["Cats purr.", "Dogs bark."], out_dir=tmp_path / "idx", factory="HNSW8")
    with pytest.raises(ValueError, match=r"^the FAISS factory 'HNSW8' does not support delete"):
        Retriever.load(tmp_path / "idx", tiny_embedder).delete([0])


OTHER_DOCS = ["Quantum physics studies matter at small scales.", "Rivers flow to the sea.", "Bread is baked."]


def test_an_index_directory_of_other_documents_is_refused(tiny_embedder, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """In-memory documents are fingerprinted by content: other documents are not answered with the old index, nor
    resumed into an interrupted build of others; the same ones are re-used or resumed as before."""
    out = tmp_path / "rb1"
    Retriever.build(tiny_embedder, "qa", ["Cats purr.", "Dogs bark."], out_dir=out)
    refused = r"rb1 holds a build of a different corpus \(other documents\); use another out_dir or delete it"
    with pytest.raises(ValueError, match=refused):
        Retriever.build(tiny_embedder, "qa", OTHER_DOCS, out_dir=out)
    assert len(Retriever.build(tiny_embedder, "qa", [{"text": "Cats purr."}, "Dogs bark."], out_dir=out)) == 2
    original, calls = tiny_embedder.encode_keys, []

    def killed_at_the_second_batch(texts, task, **options):
        calls.append(texts)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(texts, task, **options)

    monkeypatch.setattr(tiny_embedder, "encode_keys", killed_at_the_second_batch)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        Retriever.build(tiny_embedder, "qa", DOCS, out_dir=cut, batch_size=2)
    with pytest.raises(ValueError, match=refused.replace("rb1", "cut")):
        Retriever.build(tiny_embedder, "qa", OTHER_DOCS + ["Tea is a drink."], out_dir=cut, batch_size=2)
    calls.clear()
    resumed = Retriever.build(tiny_embedder, "qa", (d for d in DOCS), out_dir=cut, batch_size=2)  # streamed too
    assert calls == [[DOCS[2]["text"], DOCS[3]["text"]]] and [h.text for h in resumed.search("x", k=4)[0]]


def test_builds_recorded_before_documents_were_fingerprinted(tiny_embedder, tmp_path: Path) -> None:
    """Such a build has no fingerprint of its in-memory documents: a finished one is re-used as before; an unfinished
    one is checked against the documents it wrote."""
    out = tmp_path / "idx"
    Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    progress_path = out / "progress.json"
    progress = {**json.loads(progress_path.read_text()), "corpus": None}
    progress_path.write_text(json.dumps(progress))
    assert len(Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)) == 4
    progress_path.write_text(json.dumps({**progress, "done": False, "rows_done": 2}))
    (out / "meta.json").unlink()
    with pytest.raises(ValueError, match="holds a build of a different corpus"):
        Retriever.build(tiny_embedder, "qa", OTHER_DOCS, out_dir=out)
    assert len(Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)) == 4


def slowed(monkeypatch: pytest.MonkeyPatch, obj: object, name: str, seconds: float = 0.05) -> None:
    """Make ``obj.name`` sleep first: it widens the window in which another thread can run."""
    original = getattr(obj, name)

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, slow)


def assert_paired(retriever: Retriever) -> None:
    """Each document the index holds has its own text's vector under its id."""
    held = retriever.documents()
    vectors = retriever.embedder.encode_keys([doc["text"] for _, doc in held], retriever.task)
    for (i, _), vector in zip(held, vectors, strict=True):
        np.testing.assert_allclose(retriever.index.index.reconstruct(i), vector, atol=1e-5)


def run_threads(*targets) -> list[BaseException]:
    """Run the targets in threads at once; the exceptions they raised."""
    errors: list[BaseException] = []

    def guarded(target):
        try:
            target()
        except BaseException as err:  # reported by the test
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


@pytest.mark.parametrize("on_disk", [False, True])
def test_one_retriever_is_safe_to_share_between_threads(tiny_embedder, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, on_disk: bool) -> None:
    """Two threads adding numbered their documents from the same count ('ids already in the index', documents
    lost), and a search between the index's update and the documents' hit an id the documents lacked."""
    retriever = Retriever.build(tiny_embedder, "qa", ["Seed document."], out_dir=tmp_path / "idx" if on_disk else None)
    slowed(monkeypatch, tiny_embedder, "encode_keys")
    slowed(monkeypatch, retriever.docs, "append")  # the index holds the new ids, the documents not yet
    texts = {name: [f"{name} document {i}." for i in range(8)] for name in ("first", "second")}

    def adding(name: str):
        return lambda: [retriever.add(texts[name][i : i + 2]) for i in range(0, 8, 2)]

    def searching() -> None:
        for _ in range(40):
            assert all(hit.text for hit in retriever.search("document", k=20)[0])

    assert run_threads(adding("first"), adding("second"), searching) == []
    assert len(retriever) == 17 and sorted(doc["text"] for _, doc in retriever.documents()) == \
        sorted(["Seed document.", *texts["first"], *texts["second"]])
    assert_paired(retriever)
    if on_disk:
        assert_paired(Retriever.load(tmp_path / "idx", tiny_embedder))


def test_a_second_writer_of_an_index_directory_is_refused(tiny_embedder, tmp_path: Path) -> None:
    """Two objects opened on one directory both numbered their new document 1 and the later save replaced the other's
    index: id 1 had the text 'Cats...' and the vector of 'Water boils', meta.json said 3 documents, the index held 2.
    Now a writer holds the directory's lock file and refuses to write where another changed it since it read it."""
    out = tmp_path / "idx"
    Retriever.build(tiny_embedder, "qa", ["Paris is the capital of France."], out_dir=out)
    first, second = Retriever.load(out, tiny_embedder), Retriever.load(out, tiny_embedder)
    assert first.add(["Cats are mammals."]) == [1]
    changed = rf"^the index {out} changed since it was opened \(another writer\?\); open it again$"
    with pytest.raises(IndexChangedError, match=changed):
        second.add(["Water boils at 100 C."])
    with pytest.raises(IndexChangedError, match=changed):
        second.delete([0])
    again = Retriever.load(out, tiny_embedder)
    assert len(again) == 2 and json.loads((out / "meta.json").read_text())["count"] == 2
    assert [doc["text"] for _, doc in again.documents()] == ["Paris is the capital of France.", "Cats are mammals."]
    assert_paired(again)
    assert again.add(["Water boils at 100 C."]) == [2] and again.delete([0]) == 1  # its own writes: fine
    with pytest.raises(IndexChangedError, match=changed):
        first.delete([1])  # the other deleted meanwhile
    with exclusive(out / LOCK_FILE, "a test"), pytest.raises(RunInProgressError, match="is being written by another"):
        Retriever.load(out, tiny_embedder).add(["Dogs bark."])
    final = Retriever.load(out, tiny_embedder)
    assert [i for i, _ in final.documents()] == [1, 2] and len(final) == 2 and not (out / LOCK_FILE).exists()
    assert_paired(final)


def directory_files(out: Path) -> dict[str, int]:
    """The sizes of an index directory's document, embedding and meta files."""
    return {name: (out / name).stat().st_size for name in ("docs.jsonl", "docs.offsets", "embeddings.memmap")}


def fail(monkeypatch: pytest.MonkeyPatch, target: object, name: str, after: bool = False) -> None:
    """Make ``target.name`` raise "No space left on device" once, before or ``after`` doing its work."""
    original, calls = getattr(target, name), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the space freed since (the roll back writes too)
            return original(*args, **kwargs)
        if after:
            original(*args, **kwargs)
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(target, name, failing)


def injected_failures(retriever: Retriever) -> list[tuple[object, str, bool]]:
    """Each write of an add, failing before or after it wrote (the index's own add: after it inserted). An add to a
    FAISS index that replays its adds does not save the index file; an HNSW index's add does, and an add whose save
    wrote the file is kept (see test_a_killed_add_whose_vectors_an_hnsw_index_saved_is_kept)."""
    import llm_embedder.retriever as module
    from llm_embedder.retriever import DocStore

    index = type(retriever.index)
    if retriever.index.backend == "milvus":
        last = [(index, "save", False), (index, "save", True), (module, "atomic_write", False)]
    elif retriever._journaled():
        last = [(module, "atomic_write", False)]
    else:
        last = [(index, "save", False)]
    return [(DocStore, "append", False), (DocStore, "append", True), (module, "_append_rows", False),
            (module, "_append_rows", True), (index, "add", True), *last]


@pytest.mark.parametrize(("backend", "factory"), [("faiss", "Flat"), ("faiss", "HNSW8"), ("milvus", "Flat")])
def test_an_add_that_fails_midway_is_rolled_back(tiny_embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 backend: str, factory: str) -> None:
    """An add that failed after its vectors went into the index (a full disk writing docs.jsonl) left the index
    broken for good: id 2 in the index (Milvus: stored; FAISS: in the object) without a document, so every search
    reaching it raised IndexError and every later add 'ids already in the index: [2]'. Now documents go first,
    vectors after, meta.json last, and a failure anywhere takes the add back."""
    out = tmp_path / "idx"
    retriever = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out, backend=backend, factory=factory)
    for target, name, after in injected_failures(retriever):
        before = directory_files(out)
        with monkeypatch.context() as patch:
            fail(patch, target, name, after)
            with pytest.raises(OSError, match="No space left on device"):
                retriever.add([{"text": "Apple strudel is a pastry.", "kind": "dessert"}])
        where = f"{name} failing {'after' if after else 'before'} writing"
        assert len(retriever) == 4 and len(retriever.docs) == 4, where
        assert directory_files(out) == before, where
        assert sorted(h.id for h in retriever.search("Apple strudel", k=10)[0]) == [0, 1, 2, 3], where
        assert "kind" not in retriever.meta["stored_fields"], where
    assert retriever.add(["Apple strudel is a pastry."]) == [4]
    assert retriever.search("Apple strudel is a pastry.", k=5)[0][0].text == "Apple strudel is a pastry."
    reopened = Retriever.load(out, tiny_embedder)
    assert len(reopened) == 5 and [i for i, _ in reopened.documents()] == [0, 1, 2, 3, 4]
    rows = np.fromfile(out / "embeddings.memmap", dtype=np.float32).reshape(-1, tiny_embedder.dim)
    assert len(rows) == 5
    if backend == "faiss":
        assert_paired(reopened)
    reopened.close()


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing catches it on the way out)."""


def killed(*args, **kwargs):
    """A function that kills the process where it is put."""
    raise Killed


def killed_add(monkeypatch: pytest.MonkeyPatch, retriever: Retriever, target: object, name: str) -> None:
    """An add that stops for good after ``target.name`` did its work, as a killed process does: nothing is undone
    and the object is not used again."""
    original = getattr(target, name)

    def work_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(target, name, work_then_die)
        patch.setattr(Retriever, "_undo", lambda *args: None, raising=False)
        with pytest.raises(Killed):
            retriever.add(["Apple strudel is a pastry.", "Cherry pie is a pastry."])


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_what_a_killed_add_left_is_rolled_back_by_load(tiny_embedder, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """Killed between its writes, an add left documents past meta.json's count (load: "docs.jsonl has 6 documents,
    meta.json says 4") or vectors without documents (search: IndexError). Load now rolls it back, and says so. (A
    FAISS add writes the embeddings file, not the index file; Milvus saves its index.)"""
    import llm_embedder.retriever as module
    from llm_embedder.retriever import DocStore, IndexRepairedWarning

    last = (module, "_append_rows") if backend == "faiss" else ("index", "save")
    for step, (target, name) in enumerate([(DocStore, "append"), ("index", "add"), last]):
        out = tmp_path / f"idx{step}"
        built = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out, backend=backend)
        before = directory_files(out)
        killed_add(monkeypatch, built, type(built.index) if target == "index" else target, name)
        built.close()
        with pytest.warns(IndexRepairedWarning, match=r"rolled back an add that did not finish: 2 document\(s\) and "
                                                      r"[02] vector\(s\) past the 4 documents meta.json counts"):
            reopened = Retriever.load(out, tiny_embedder)
        assert directory_files(out) == before and len(reopened) == 4, name
        assert sorted(h.id for h in reopened.search("Apple strudel", k=10)[0]) == [0, 1, 2, 3], name
        assert reopened.add(["Plum cake."]) == [4]
        reopened.close()
        again = Retriever.load(out, tiny_embedder)
        assert [doc["text"] for _, doc in again.documents()][4:] == ["Plum cake."] and len(again) == 5
        again.close()


def test_a_killed_add_whose_vectors_an_hnsw_index_saved_is_kept(tiny_embedder, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """HNSW cannot delete: an add killed after its index was saved, before meta.json, is complete but for the count;
    it is counted in."""
    from llm_embedder.index import FaissIndex
    from llm_embedder.retriever import IndexRepairedWarning

    out = tmp_path / "idx"
    built = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out, factory="HNSW8")
    killed_add(monkeypatch, built, FaissIndex, "save")
    with pytest.warns(IndexRepairedWarning, match=r"kept an add of 2 document\(s\) that did not finish"):
        reopened = Retriever.load(out, tiny_embedder)
    assert len(reopened) == 6 and len(reopened.docs) == 6 and json.loads((out / "meta.json").read_text())["count"] == 6
    assert "Cherry pie is a pastry." in [h.text for h in reopened.search("Cherry pie is a pastry.", k=6)[0]]
    assert reopened.add(["Plum cake."]) == [6]
    assert_paired(Retriever.load(out, tiny_embedder))


def test_a_reader_does_not_read_an_add_another_writer_is_making(tiny_embedder, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Opened while another process holds the directory's lock mid-add, the index reads the documents meta.json
    counts and leaves the rest alone (it was refused: 'docs.jsonl has 6 documents, meta.json says 4')."""
    from llm_embedder.retriever import DocStore

    out = tmp_path / "idx"
    built = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out, backend="milvus")
    killed_add(monkeypatch, built, type(built.index), "add")
    built.close()
    with exclusive(out / LOCK_FILE, "another writer"):
        reader = Retriever.load(out, tiny_embedder)
        assert len(reader.docs) == 4 and sorted(h.id for h in reader.search("Apple", k=10)[0]) == [0, 1, 2, 3]
        reader.close()
    assert len(DocStore(out)) == 6  # left for the writer (here: rolled back at the next load)
    from llm_embedder.retriever import IndexRepairedWarning

    with pytest.warns(IndexRepairedWarning, match="rolled back an add that did not finish: 2 document"):
        assert len(Retriever.load(out, tiny_embedder).docs) == 4 and len(DocStore(out)) == 4


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_an_add_killed_for_real_is_rolled_back(tiny_embedder_dir, tmp_path: Path, backend: str) -> None:
    """SIGKILL between the documents and the index's save (in a process of its own, which builds the index too:
    Milvus Lite serves a database to one process)."""
    import os
    import signal
    import subprocess
    import sys

    from llm_embedder.embedder import Embedder

    out = tmp_path / "idx"
    script = (
        "import json, os, signal, sys\n"
        "from llm_embedder.embedder import Embedder\n"
        "from llm_embedder.retriever import Retriever\n"
        "e = Embedder(sys.argv[2], device='cpu')\n"
        f"r = Retriever.build(e, 'qa', {json.dumps(DOCS)}, out_dir=sys.argv[1], backend={backend!r})\n"
        "original = type(r.index).add\n"
        "def add_then_die(*args, **kwargs):\n"
        "    original(*args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "type(r.index).add = add_then_die\n"
        "r.add(['Apple strudel is a pastry.'])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", script, str(out), str(tiny_embedder_dir)], env=env, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.warns(UserWarning, match=r"rolled back an add that did not finish: 1 document\(s\) and [01] vector"):
        reopened = Retriever.load(out, Embedder(tiny_embedder_dir, device="cpu"))
    assert len(reopened) == 4 and sorted(h.id for h in reopened.search("Apple", k=10)[0]) == [0, 1, 2, 3]
    assert reopened.add(["Plum cake."]) == [4]


def test_a_filter_on_a_name_that_cannot_be_a_field_says_so(tiny_embedder, tmp_path: Path) -> None:
    """`--filter bad-field=1` advised "build it with --filter-field bad-field", which the build then refused."""
    from llm_embedder.index.build import build_index

    build_index(DOCS, tmp_path / "idx", tiny_embedder, "qa", filter_fields=["lang"], progress=False)
    for retriever in (Retriever.load(tmp_path / "idx", tiny_embedder), Retriever.build(tiny_embedder, "qa", DOCS)):
        for name in ("bad-field", "id"):
            with pytest.raises(ValueError, match=rf"^filter field '{name}' must be an identifier other than") as err:
                retriever.search("Paris", k=2, filter={name: 1})
            assert "--filter-field" not in str(err.value)


def test_search_takes_the_search_effort(tiny_embedder, tmp_path: Path) -> None:
    """Retriever.search passes nprobe / ef_search to the index, checked before the queries are encoded."""
    retriever = Retriever.build(tiny_embedder, "qa", DOCS * 10, factory="IVF4,Flat")
    assert len(retriever.search("Paris", k=40, nprobe=4)[0]) == 40
    assert len(retriever.search("Paris", k=40, nprobe=1)[0]) < 40
    refused = r"ef_search \(--ef-search\) applies to an HNSW index, not to the FAISS factory 'IVF4,Flat'"
    with pytest.raises(ValueError, match=refused):
        retriever.search("Paris", k=3, ef_search=64)
    with pytest.raises(ValueError, match="ef_search must be a positive integer, got -1"):
        retriever.search([None], k=3, ef_search=-1)  # before the query is looked at


def test_search_vectors_equals_search_of_the_encoded_queries(tiny_embedder, tmp_path: Path) -> None:
    """search_vectors (the server's path, its queries encoded in batches of its own) gives search's hits, and checks
    what search checks: k, the filter's fields, the effort, and the vectors' dimension."""
    retriever = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=tmp_path / "idx")
    queries = ["Paris tower", "highest mountain"]
    vectors = tiny_embedder.encode_queries(queries, "qa")
    assert retriever.search_vectors(vectors, k=3) == retriever.search(queries, k=3)
    assert retriever.search_vectors(vectors, k=4, filter={"lang": "fr"}) == retriever.search(
        queries, k=4, filter={"lang": "fr"})
    with pytest.raises(ValueError, match="no document in the index has that field"):
        retriever.search_vectors(vectors, k=3, filter={"langue": "fr"})
    with pytest.raises(ValueError, match="k must be"):
        retriever.search_vectors(vectors, k=0)
    with pytest.raises(ValueError, match="ef_search"):
        retriever.search_vectors(vectors, k=3, ef_search=8)
    with pytest.raises(ValueError, match="query vectors"):
        retriever.search_vectors(vectors[:, :5], k=3)


@pytest.mark.parametrize(("queries", "message"), [
    ({"who wrote Hamlet?", "capital of France"}, "got a set"),  # was searched in the set's arbitrary order
    ({"who wrote Hamlet?": 1}, "got a dict"),  # was searched by its keys
    (b"who", "got bytes"),  # was "query 1 is a int, not a string"
])
def test_search_refuses_queries_encode_refuses(tiny_embedder, queries, message):
    retriever = Retriever.build(tiny_embedder, "qa", ["a", "b"])
    with pytest.raises(TypeError, match=message):
        retriever.search(queries, k=1)


@pytest.mark.parametrize("backend", ["faiss", "milvus", None])
def test_an_integer_outside_int64_is_refused_by_add_before_encoding(tiny_embedder, tmp_path: Path,
                                                                    backend: str | None) -> None:
    """Milvus failed on it after encoding ("The Input data type is inconsistent with defined schema"), FAISS took it:
    every backend (and an in-memory Retriever, None) refuses it, naming the document, with nothing written."""
    out = tmp_path / "idx" if backend else None
    retriever = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out, backend=backend or "faiss")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} if out else None
    encoded = []
    original = tiny_embedder.encode_keys

    def watch(texts, task, **kw):
        encoded.append(len(texts))
        return original(texts, task, **kw)

    retriever.embedder = type("Watched", (), {"__getattr__": lambda self, n: getattr(tiny_embedder, n),
                                              "encode_keys": staticmethod(watch)})()
    with pytest.raises(ValueError, match=r"documents\[1\]: field 'big' holds the integer -1180591620717411303424, "
                                         "outside the 64-bit range"):
        retriever.add([{"text": "fine", "big": 2**63 - 1}, {"text": "too big", "big": -(2**70)}])
    assert encoded == [] and len(retriever) == 4
    if out:
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert retriever.add([{"text": "fine", "big": 2**63 - 1}]) == [4]  # int64's own limits are taken
    assert [h.id for h in retriever.search("fine", k=5, filter={"big": 2**63 - 1})[0]] == [4]
    with pytest.raises(ValueError, match="outside the 64-bit integer range"):
        retriever.search("fine", k=5, filter={"big": 2**63})
    retriever.close()


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_a_load_never_rolls_back_an_add_committed_while_it_loads(tiny_embedder, tmp_path: Path, backend: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's add, committed while this one loaded (loading the model takes seconds), was taken for an
    add that did not finish and rolled back; meta.json kept its count, so the index could not be opened again."""
    import warnings

    import llm_embedder.retriever as retriever_module
    from llm_embedder.retriever import IndexChangedError

    out = tmp_path / "idx"
    Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out, backend=backend).close()
    writer = Retriever.load(out, tiny_embedder)
    check = retriever_module.check_compatible

    def commit_meanwhile(meta, embedder, where):  # the window between reading meta.json and opening the index
        check(meta, embedder, where)
        monkeypatch.setattr(retriever_module, "check_compatible", check)
        writer.add(["A document the other process added."])

    monkeypatch.setattr(retriever_module, "check_compatible", commit_meanwhile)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no IndexRepairedWarning: nothing was rolled back
        reader = Retriever.load(out, tiny_embedder)
    assert len(reader.docs) == len(DOCS)  # the snapshot it read
    with pytest.raises(IndexChangedError, match="changed since it was opened"):
        reader.add(["A stale writer's document."])
    reader.close()
    writer.close()
    again = Retriever.load(out, tiny_embedder)
    assert len(again.docs) == len(DOCS) + 1 == json.loads((out / "meta.json").read_text())["count"]
    again.close()


QUERIES = ["Eiffel Tower", "the highest mountain", "Pastry number 3", "a programming language"]


def hits_of(retriever: Retriever, queries: list[str], k: int = 10, **options) -> list[list[tuple[int, float, str]]]:
    """Each query's hits as (id, score, text): what two indexes must agree on to give the same results."""
    return [[(h.id, h.score, h.text) for h in row] for row in retriever.search(queries, k=k, **options)]


def file_identity(path: Path) -> tuple[int, int, int]:
    """A file's inode, size and modification time: all equal, it was not written again."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def test_an_add_or_delete_does_not_write_the_index_file(tiny_embedder, tmp_path: Path) -> None:
    """Each add saved the whole FAISS index and its metadata sidecar again (468 ms per one-document add at 50k
    documents: O(N) per add), so a persistent memory slowed with every turn; so did each delete. Now they go to the
    journals (the embeddings file, deleted.ids) and meta.json, and the index file is a checkpoint: ``save`` writes it,
    so does ``close`` (a ``with`` block); a reload reads the rest from the journals and gives the same hits."""
    from llm_embedder.index import FaissIndex

    out = tmp_path / "idx"
    retriever = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    files = {name: file_identity(out / name) for name in ("index.faiss", "index.faiss.meta.json")}
    for i in range(5):
        assert retriever.add([{"text": f"Pastry number {i}.", "lang": "en"}]) == [4 + i]
    assert retriever.delete([0, 6]) == 2
    assert {name: file_identity(out / name) for name in files} == files
    assert json.loads((out / "meta.json").read_text())["count"] == 9
    reopened = Retriever.load(out, tiny_embedder)
    assert reopened.documents() == retriever.documents() and len(reopened) == 7
    assert hits_of(reopened, QUERIES) == hits_of(retriever, QUERIES)
    assert hits_of(reopened, QUERIES, filter={"lang": "en"}) == hits_of(retriever, QUERIES, filter={"lang": "en"})
    retriever.save()  # the index file holds them all now, for a reader of the file alone
    saved = FaissIndex.load(out / "index.faiss")
    assert sorted(saved.ids().tolist()) == [1, 2, 3, 4, 5, 7, 8] and sorted(saved.metadata) == [1, 2, 3, 4, 5, 7, 8]
    with Retriever.load(out, tiny_embedder) as writer:
        writer.add(["Plum cake."])
    assert FaissIndex.load(out / "index.faiss").count == 8  # saved on leaving the block
    stale, other = Retriever.load(out, tiny_embedder), Retriever.load(out, tiny_embedder)
    stale.add(["Apple pie."])
    Retriever.load(out, tiny_embedder).add(["Cherry pie."])
    index_file = file_identity(out / "index.faiss")
    stale.close()  # another object wrote since: it leaves the saving alone, without an error
    other.close()  # it added nothing: nothing to save
    assert file_identity(out / "index.faiss") == index_file
    final = Retriever.load(out, tiny_embedder)
    assert [doc["text"] for _, doc in final.documents()][-3:] == ["Plum cake.", "Apple pie.", "Cherry pie."]


@pytest.mark.parametrize("factory", ["Flat", "SQ8", "IVF2,Flat"])
def test_a_reload_after_many_small_adds_gives_the_same_hits(tiny_embedder, tmp_path: Path, factory: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Behaviour kept: after one-document adds, some of them in a checkpoint of the index file and the rest read back
    from the embeddings file, a reload gives the in-memory index's hits, scores and filtered hits. The index starts
    empty: SQ8 and IVF are trained by the first add, which saves the index file with it (IVF: every add does)."""
    import llm_embedder.retriever as module

    monkeypatch.setattr(module, "CHECKPOINT_ROWS", 4, raising=False)  # checkpoints between the adds, a tail after
    out = tmp_path / "idx"
    retriever = Retriever.build(tiny_embedder, "qa", [], out_dir=out, factory=factory)
    retriever.add(DOCS)
    for i in range(11):
        retriever.add([{"text": f"Pastry number {i}.", "lang": "fr" if i % 3 else "en"}])
    reopened = Retriever.load(out, tiny_embedder)
    assert len(reopened) == 15 and reopened.documents() == retriever.documents()
    assert hits_of(reopened, QUERIES) == hits_of(retriever, QUERIES)
    assert hits_of(reopened, QUERIES, filter={"lang": "fr"}) == hits_of(retriever, QUERIES, filter={"lang": "fr"})
    meta = json.loads((out / "meta.json").read_text())
    if getattr(retriever, "_journaled", lambda: False)():  # checkpoints came, and a tail is read from the embeddings
        assert 4 < meta["index_rows"] < 15
    else:  # IVF: the index file is saved with every add, as before (its adds do not replay bit for bit)
        assert meta.get("index_rows", 15) == 15


def test_deletes_and_adds_are_read_back_after_a_reload(tiny_embedder, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Behaviour kept: ids deleted from the index file's checkpoint and from the adds past it, before and after a
    checkpoint, stay deleted after a reload (replaying the embeddings file must not bring them back), and adds go
    on after them."""
    import llm_embedder.retriever as module

    monkeypatch.setattr(module, "CHECKPOINT_ROWS", 6, raising=False)
    out = tmp_path / "idx"
    retriever = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    for i in range(3):
        retriever.add([f"Pastry number {i}."])
    assert retriever.delete([1, 5]) == 2  # one in the index file, one in the embeddings file only
    retriever.add(["Pastry number 3."])  # 4 adds and 2 deletes since the build: a checkpoint
    retriever.add(["Pastry number 4."])
    assert retriever.delete([8, 2, 99]) == 2  # after it: one from the checkpoint, one past it (99: unknown)
    reopened = Retriever.load(out, tiny_embedder)
    assert [i for i, _ in reopened.documents()] == [0, 3, 4, 6, 7] == [i for i, _ in retriever.documents()]
    assert hits_of(reopened, QUERIES) == hits_of(retriever, QUERIES)
    assert reopened.add(["Plum cake."]) == [9] and reopened.delete([0]) == 1
    again = Retriever.load(out, tiny_embedder)
    assert [i for i, _ in again.documents()] == [3, 4, 6, 7, 9]
    assert hits_of(again, QUERIES) == hits_of(reopened, QUERIES)


@pytest.mark.parametrize("step", ["append", "_append_rows", "add"])
def test_an_add_killed_after_adds_the_index_file_lacks_keeps_them(tiny_embedder, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """The journals ahead of the index file: adds and a delete committed since it was saved are read back, and an
    add killed after them (after each of its writes before meta.json) is rolled back by load."""
    import llm_embedder.retriever as module
    from llm_embedder.retriever import DocStore, IndexRepairedWarning

    out = tmp_path / "idx"
    built = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    built.add(["Plum cake."])
    built.add([{"text": "Pastry number 3.", "lang": "en"}])
    built.delete([1])
    expected, before = hits_of(built, QUERIES), directory_files(out)
    killed_add(monkeypatch, built, {"append": DocStore, "_append_rows": module, "add": type(built.index)}[step], step)
    with pytest.warns(IndexRepairedWarning, match=r"rolled back an add that did not finish: 2 document\(s\)"):
        reopened = Retriever.load(out, tiny_embedder)
    assert directory_files(out) == before and len(reopened) == 5 and len(reopened.docs) == 6
    assert hits_of(reopened, QUERIES) == expected
    assert reopened.add(["Cherry pie."]) == [6]


def test_a_save_killed_before_meta_json_recorded_it_adds_nothing_twice(tiny_embedder, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The index file ahead of meta.json: a save killed after writing the file, before recording in meta.json what it
    holds, leaves a file holding adds and deletes that meta.json says are past it. Load adds none of them again
    ('ids already in the index') and brings no deleted one back."""
    import warnings

    import llm_embedder.retriever as module
    from llm_embedder.index import FaissIndex

    out = tmp_path / "idx"
    built = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    for i in range(3):
        built.add([{"text": f"Pastry number {i}.", "lang": "en"}])
    built.delete([1, 5])
    expected, meta = hits_of(built, QUERIES), (out / "meta.json").read_text()

    with monkeypatch.context() as patch:
        patch.setattr(module, "atomic_write", killed)
        with pytest.raises(Killed):
            built.save()
    assert (out / "meta.json").read_text() == meta and json.loads(meta)["index_rows"] == 4
    assert sorted(FaissIndex.load(out / "index.faiss").ids().tolist()) == [0, 2, 3, 4, 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair
        reopened = Retriever.load(out, tiny_embedder)
    assert [i for i, _ in reopened.documents()] == [0, 2, 3, 4, 6] and hits_of(reopened, QUERIES) == expected
    assert reopened.add(["Plum cake."]) == [7]
    assert [i for i, _ in Retriever.load(out, tiny_embedder).documents()] == [0, 2, 3, 4, 6, 7]


def test_a_delete_killed_before_meta_json_is_rolled_back_by_load(tiny_embedder, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete writes its ids to deleted.ids, then meta.json: killed between the two it did not happen, and load
    cuts the journal back (its ids are still found)."""
    import llm_embedder.retriever as module
    from llm_embedder.retriever import IndexRepairedWarning

    out = tmp_path / "idx"
    built = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    built.add(["Plum cake."])

    with monkeypatch.context() as patch:
        patch.setattr(module, "atomic_write", killed)
        patch.setattr(Retriever, "_undo", lambda *args: None)
        with pytest.raises(Killed):
            built.delete([0, 4])
    assert (out / "deleted.ids").stat().st_size == 16
    with pytest.warns(IndexRepairedWarning, match=r"rolled back a delete that did not finish: 2 id\(s\) past the 0 "):
        reopened = Retriever.load(out, tiny_embedder)
    assert [i for i, _ in reopened.documents()] == [0, 1, 2, 3, 4] and (out / "deleted.ids").stat().st_size == 0
    assert reopened.delete([4]) == 1
    assert [i for i, _ in Retriever.load(out, tiny_embedder).documents()] == [0, 1, 2, 3]


def test_a_delete_that_fails_is_taken_back(tiny_embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete failing as it writes (a full disk) leaves the index and deleted.ids as they were."""
    import llm_embedder.retriever as module

    out = tmp_path / "idx"
    retriever = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    with monkeypatch.context() as patch:
        fail(patch, module, "atomic_write")
        with pytest.raises(OSError, match="No space left on device"):
            retriever.delete([2])
    assert [i for i, _ in retriever.documents()] == [0, 1, 2, 3] and not (out / "deleted.ids").stat().st_size
    assert retriever.delete([2]) == 1
    assert [i for i, _ in Retriever.load(out, tiny_embedder).documents()] == [0, 1, 3]


def test_an_add_whose_index_file_cannot_be_saved_is_kept_with_a_warning(tiny_embedder, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint failing after a committed add (a full disk) is a warning: the add is in (meta.json counts it, the
    embeddings file holds it), the old index file stays whole, and the next add saves it."""
    import llm_embedder.retriever as module
    from llm_embedder.index import FaissIndex
    from llm_embedder.retriever import IndexCheckpointWarning

    monkeypatch.setattr(module, "CHECKPOINT_ROWS", 1)  # every add saves the index file
    out = tmp_path / "idx"
    retriever = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    with monkeypatch.context() as patch:
        fail(patch, FaissIndex, "save")
        with pytest.warns(IndexCheckpointWarning, match="could not save the index file"):
            assert retriever.add(["Plum cake."]) == [4]
    assert FaissIndex.load(out / "index.faiss").count == 4 and len(Retriever.load(out, tiny_embedder)) == 5
    assert retriever.add(["Cherry pie."]) == [5] and FaissIndex.load(out / "index.faiss").count == 6
    assert hits_of(Retriever.load(out, tiny_embedder), QUERIES) == hits_of(retriever, QUERIES)


def test_open_index_warns_where_the_index_file_lacks_journaled_changes(tiny_embedder, tmp_path: Path) -> None:
    """``open_index`` on an index directory's index.faiss read the checkpoint alone and silently missed the adds and
    deletes since it (only the journals hold them): it warns, naming them and ``Retriever.load``, until ``save``."""
    from llm_embedder.index import open_index
    from llm_embedder.index.base import IndexFileBehindWarning

    out = tmp_path / "idx"
    retriever = Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_index(out / "index.faiss").count == 4  # a build's file holds everything: no warning
    retriever.add(["Plum cake.", "Apple pie."])
    retriever.delete([0])
    with pytest.warns(IndexFileBehindWarning, match=r"lacks 2 added and 1 deleted .*Retriever\.load"):
        assert open_index(out / "index.faiss").count == 4
    retriever.save()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_index(out / "index.faiss").count == 5


def test_an_ivf_index_directory_finds_the_right_documents_after_deletes_adds_and_a_reload(tiny_embedder,
                                                                                         tmp_path: Path) -> None:
    """An IVF index was wrapped in IndexIDMap2, whose delete shifted the ids of every later hit: an IVF directory
    (all lists searched, so exact) must agree with an in-memory Flat index through deletes, adds and a reload."""
    docs = [{"text": f"Pastry number {i}.", "lang": "fr" if i % 3 else "en"} for i in range(40)]
    ivf = Retriever.build(tiny_embedder, "qa", docs, out_dir=tmp_path / "idx", factory="IVF2,Flat")
    flat = Retriever.build(tiny_embedder, "qa", docs)
    for retriever in (ivf, flat):
        assert retriever.delete([1, 2, 3, 20]) == 4
        assert retriever.add([{"text": f"Cake number {i}.", "lang": "fr"} for i in range(5)]) == [40, 41, 42, 43, 44]
        assert retriever.delete([41, 2]) == 1
    reopened = Retriever.load(tmp_path / "idx", tiny_embedder)
    queries = ["Pastry number 7", "Pastry number 30", "Cake number 3", "Pastry number 2", "Cake number 1"]
    for retriever in (ivf, reopened):
        assert [i for i, _ in retriever.documents()] == [i for i, _ in flat.documents()]
        for options in ({}, {"filter": {"lang": "fr"}}):
            got, want = hits_of(retriever, queries, k=8, nprobe=2, **options), hits_of(flat, queries, k=8, **options)
            assert [[(i, text) for i, _, text in row] for row in got] == [[(i, t) for i, _, t in row] for row in want]
            np.testing.assert_allclose([[s for _, s, _ in row] for row in got],
                                       [[s for _, s, _ in row] for row in want], rtol=1e-5)


def test_an_ivf_index_directory_deleted_from_by_the_old_code_refuses_to_change(tiny_embedder, tmp_path: Path) -> None:
    """An index file in which the old code's delete shifted the ids (IVF in IndexIDMap2) loads with a warning and
    refuses a delete and an add, naming the file to rebuild, and the directory keeps its documents."""
    import faiss

    out = tmp_path / "idx"
    Retriever.build(tiny_embedder, "qa", [f"Pastry number {i}." for i in range(40)], out_dir=out, factory="IVF2,Flat")
    vectors = np.fromfile(out / "embeddings.memmap", dtype=np.float32).reshape(40, -1)
    old = faiss.IndexIDMap2(faiss.index_factory(vectors.shape[1], "IVF2,Flat", faiss.METRIC_INNER_PRODUCT))
    old.train(vectors)
    old.add_with_ids(vectors, np.arange(40, dtype=np.int64))
    old.remove_ids(faiss.IDSelectorBatch(np.array([3, 4], dtype=np.int64)))  # as Retriever.delete did, then saved
    faiss.write_index(old, str(out / "index.faiss"))
    with pytest.warns(UserWarning, match="rebuild the index"):
        retriever = Retriever.load(out, tiny_embedder)
    with pytest.raises(ValueError, match=f"cannot delete: {out / 'index.faiss'}: .*rebuild the index"):
        retriever.delete([5])
    with (pytest.warns(UserWarning, match="rebuild the index"),  # the add's undo loads the index file again
          pytest.raises(ValueError, match=f"cannot add: {out / 'index.faiss'}: .*rebuild the index")):
        retriever.add(["Cake."])
    with pytest.warns(UserWarning, match="rebuild the index"):
        assert len(Retriever.load(out, tiny_embedder).docs) == 40  # the add was rolled back


def test_a_huge_k_searches_the_index_for_no_more_than_it_holds(tiny_embedder) -> None:
    """A huge k (``search -k 2147483647``, a server's --max-k) was passed to FAISS as it was, which sized its result
    arrays by it: a C++ bad_alloc abort, or gigabytes for k = 1e8 on 60 documents. The index is asked for at most
    as many hits as it holds; the hits are the same."""
    retriever = Retriever.build(tiny_embedder, "qa", [f"doc {i}" for i in range(6)])
    asked, search = [], retriever.index.search

    def spy(vectors, k, **kwargs):
        asked.append(k)
        if k > 1000:  # FAISS would abort the test run
            raise AssertionError(f"the index was asked for {k} hits")
        return search(vectors, k, **kwargs)

    retriever.index.search = spy
    huge = retriever.search(["doc 1"], k=2**31 - 1)[0]
    assert asked == [6] and [hit.id for hit in huge] == [hit.id for hit in retriever.search(["doc 1"], k=6)[0]]
    many = retriever.search_vectors_many([(tiny_embedder.encode_queries(["doc 2"], "qa"), {"k": 2**31 - 1}),
                                          (tiny_embedder.encode_queries(["doc 3"], "qa"), {"k": 2})])
    assert max(asked[2:]) == 6 and [len(rows[0]) for rows in many] == [6, 2]
    assert len(retriever.search(["doc 1"], k=10)[0]) == 6 and asked[-1] == 10  # a k of usual size goes as it is
