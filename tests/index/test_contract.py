"""One contract for every VectorIndex backend: FAISS in-process and Milvus Lite (for real)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm_embedder.index import EmptyIndexError, FaissIndex, IndexFormatError, MilvusIndex, open_index

DIM = 8


def unit(rows: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(params=["faiss", "milvus"])
def backend(request) -> str:
    return request.param


def make(backend: str, tmp_path: Path, dim: int = DIM):
    if backend == "faiss":
        return open_index(tmp_path / "index.faiss", dim)
    return open_index(tmp_path / "index.db", dim)


def save_path(backend: str, tmp_path: Path) -> Path:
    return tmp_path / ("saved.faiss" if backend == "faiss" else "index.milvus.json")


def load(backend: str, path: Path):
    return FaissIndex.load(path) if backend == "faiss" else MilvusIndex.load(path)


def test_open_index_dispatch(tmp_path: Path) -> None:
    assert isinstance(open_index(tmp_path / "a.faiss", DIM), FaissIndex)
    index = open_index(tmp_path / "a.db", DIM)
    assert isinstance(index, MilvusIndex) and index.dim == DIM
    index.close()
    hnsw = open_index(tmp_path / "b.db", DIM, factory="HNSW16")  # the factory reaches Milvus too
    assert hnsw.client.describe_index(hnsw.collection, "vector")["index_type"] == "HNSW"
    hnsw.close()


def test_add_search_count(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    vectors = unit(20)
    index.add(list(range(100, 120)), vectors * 3.0)  # not normalised: the index normalises
    assert index.count == 20 and index.dim == DIM
    scores, ids = index.search(vectors[:3], k=5)
    assert scores.shape == (3, 5) and ids.shape == (3, 5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert ids[:, 0].tolist() == [100, 101, 102]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    exact = np.argsort(-(vectors[:3] @ vectors.T), axis=1)[:, :5] + 100
    assert ids.tolist() == exact.tolist()
    index.close()


def test_k_larger_than_index_pads(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    index.add([1, 2, 3], unit(3))
    scores, ids = index.search(unit(3)[0], k=10)
    assert ids.shape == (1, 10)
    assert sorted(ids[0, :3].tolist()) == [1, 2, 3]
    assert (ids[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()
    index.close()


def test_filter(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    meta = [{"lang": "en" if i % 2 else "fr", "n": i} for i in range(10)]
    index.add(range(10), unit(10), meta)
    _, ids = index.search(unit(10)[0], k=10, filter={"lang": "en"})
    got = [i for i in ids[0].tolist() if i >= 0]
    assert sorted(got) == [1, 3, 5, 7, 9]
    _, ids = index.search(unit(10)[0], k=3, filter={"n": [2, 4]})
    assert sorted(i for i in ids[0].tolist() if i >= 0) == [2, 4] and ids[0, 2] == -1
    _, ids = index.search(unit(10)[0], k=3, filter={"lang": "de"})
    assert (ids == -1).all()
    with pytest.raises(ValueError, match="identifier"):
        index.search(unit(1), k=1, filter={"bad field": 1})
    index.close()


def test_an_empty_filter_is_no_filter_and_an_empty_value_list_is_refused(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    index.add(range(6), unit(6), [{"lang": "en"}] * 6)
    _, unfiltered = index.search(unit(6)[:2], k=4)
    _, ids = index.search(unit(6)[:2], k=4, filter={})  # no condition: every document, as without a filter
    assert ids.tolist() == unfiltered.tolist()
    for number in (float("nan"), float("inf"), -float("inf")):  # NaN matched nothing, 1e999 neither, silently
        with pytest.raises(ValueError, match="'lang' must be a finite number"):
            index.search(unit(1), k=1, filter={"lang": number})
    for empty in ([], (), set()):
        with pytest.raises(ValueError, match="'lang' is given no value"):
            index.search(unit(1), k=1, filter={"lang": empty})
    index.close()


def test_a_filter_of_mixed_value_types_matches_any_of_them(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    index.add(range(4), unit(4), [{"code": "1990"}, {"code": 1990}, {"code": "x"}, {"code": 1991}])
    _, ids = index.search(unit(4)[0], k=4, filter={"code": [1990, "1990"]})  # what --filter code=1990 gives
    assert sorted(i for i in ids[0].tolist() if i >= 0) == [0, 1]
    index.close()


def test_a_filter_tells_a_bool_from_a_number(backend: str, tmp_path: Path) -> None:
    """True == 1 in Python (and in Milvus Lite's filters): a bool filter value matches only a bool, a number only a
    number (1 and 1.0 alike, as JSON has it), also where the documents of the other type score higher."""
    index = make(backend, tmp_path)
    values = [True, 1, 1.0, False, 0, 0.0, "true", "1", 2]
    ones = 20  # documents whose flag is 1, each the query itself, so that every one outscores the bools
    query = unit(1, seed=5)
    vectors = np.concatenate([unit(len(values), seed=6), np.repeat(query, ones, axis=0)])
    index.add(range(len(vectors)), vectors, [{"flag": v} for v in values] + [{"flag": 1}] * ones)
    later = list(range(len(values), len(vectors)))

    def found(value: object, k: int = len(vectors)) -> list[int]:
        _, ids = index.search(query, k=k, filter={"flag": value})
        return sorted(i for i in ids[0].tolist() if i >= 0)

    assert found(True) == [0] and found(True, k=1) == [0]
    assert found(False) == [3] and found(False, k=1) == [3]
    assert found(1) == [1, 2, *later] and found(1.0) == found(1)
    assert found(0) == [4, 5] and found(0.0) == [4, 5]
    assert found([True, 2], k=2) == [0, 8]
    assert found("true") == [6] and found("1") == [7]
    index.close()


def test_delete(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    vectors = unit(6)
    index.add(range(6), vectors, [{"g": 1}] * 6)
    assert index.delete([0, 1, 99]) == 2
    assert index.count == 4
    assert index.held([5, 0, 99, 2, 1]) == [2, 5]  # which of the ids it holds, sorted
    _, ids = index.search(vectors[0], k=6)
    assert 0 not in ids and 1 not in ids
    index.add([0], vectors[0])  # a deleted id can be reused
    assert index.search(vectors[0], k=1)[1][0, 0] == 0
    index.close()


def test_save_load_roundtrip(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    vectors = unit(12)
    index.add(range(12), vectors, [{"tag": f"t{i}"} for i in range(12)])
    path = index.save(save_path(backend, tmp_path))
    before = index.search(vectors[:2], k=4)
    index.close()
    again = load(backend, path)
    assert again.count == 12 and again.dim == DIM
    after = again.search(vectors[:2], k=4)
    assert after[1].tolist() == before[1].tolist()
    np.testing.assert_allclose(after[0], before[0], atol=1e-5)
    assert again.search(vectors[0], k=12, filter={"tag": "t5"})[1][0, 0] == 5
    again.close()


def test_wrong_dimension(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    with pytest.raises(ValueError, match=f"dimension 5, but the index has dimension {DIM}"):
        index.add([1], np.ones((1, 5), np.float32))
    index.add([1], unit(1))
    with pytest.raises(ValueError, match="dimension 3"):
        index.search(np.ones(3, np.float32), k=1)
    with pytest.raises(ValueError, match="NaN"):
        index.add([2], np.full((1, DIM), np.nan, np.float32))
    assert index.count == 1
    index.close()


def test_duplicate_ids_write_nothing(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    index.add([1, 2], unit(2))
    with pytest.raises(ValueError, match="duplicate ids in the batch: \\[5\\]"):
        index.add([5, 5], unit(2, seed=1))
    with pytest.raises(ValueError, match="already in the index: \\[2\\]"):
        index.add([3, 2], unit(2, seed=1))
    assert index.count == 2
    _, ids = index.search(unit(2, seed=1), k=3)
    assert 3 not in ids  # the batch with a duplicate wrote nothing
    with pytest.raises(ValueError, match="2 ids for 1 vectors"):
        index.add([7, 8], unit(1))
    index.close()


def test_empty_index_and_bad_k(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    assert index.count == 0
    with pytest.raises(EmptyIndexError, match="empty"):
        index.search(unit(1), k=3)
    with pytest.raises(EmptyIndexError, match="empty"):  # a filter matching nothing is no excuse
        index.search(unit(1), k=3, filter={"lang": "en"})
    index.add([1], unit(1))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            index.search(unit(1), k=bad)
    index.close()


def test_corrupt_and_truncated_files(backend: str, tmp_path: Path) -> None:
    index = make(backend, tmp_path)
    index.add(range(5), unit(5))
    path = index.save(save_path(backend, tmp_path))
    index.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match="corrupt"):
        load(backend, path)
    path.write_bytes(b"garbage" * 3)
    with pytest.raises(IndexFormatError):
        load(backend, path)
    with pytest.raises(FileNotFoundError):
        load(backend, tmp_path / "missing" / path.name)


def test_exact_ties_come_in_id_order(backend: str, tmp_path: Path) -> None:
    """Equal vectors came back [1, 0] from FAISS and [0, 1] from Milvus: the same corpus, two orders."""
    index = make(backend, tmp_path)
    same, other = unit(1)[0], unit(1, seed=5)[0]
    near = same + 0.3 * other
    index.add([3, 7, 9, 1, 4, 2], np.stack([same, same, near, same, near, other]))
    scores, ids = index.search(same, k=6)
    assert ids[0, :3].tolist() == [1, 3, 7] and ids[0, 3:5].tolist() == [4, 9]
    assert (np.diff(scores[0]) <= 1e-6).all()  # only ties move: still best first
    index.close()


@pytest.mark.parametrize("factory", ["IVF16,Flat", "HNSW8"])
def test_the_search_effort_can_be_set_per_search(backend: str, factory: str, tmp_path: Path) -> None:
    """IVF nprobe (16) and HNSW efSearch (128) were fixed; a search may now set them."""
    index = open_index(tmp_path / ("index.faiss" if backend == "faiss" else "index.db"), DIM, factory=factory)
    vectors = unit(400)
    index.add(range(400), vectors)
    setting = {"nprobe": 1} if factory.startswith("IVF") else {"ef_search": 400}
    other = {"ef_search": 400} if factory.startswith("IVF") else {"nprobe": 1}
    if backend == "milvus":  # Milvus Lite searches a collection this small exhaustively: look at what is asked
        asked, search = [], index.client.search
        index.client.search = lambda *args, **kwargs: asked.append(kwargs["search_params"]) or search(*args, **kwargs)
        index.search(vectors[:3], k=10, **setting)
        index.search(vectors[:3], k=10)
        expected = {"nprobe": 1} if factory.startswith("IVF") else {"ef": 400}
        assert asked == [{"metric_type": "IP", "params": expected}, {"metric_type": "IP"}]
    else:
        _, ids = index.search(vectors[:3], k=400, **setting)
        found = (ids >= 0).sum(axis=1)
        if factory.startswith("IVF"):  # one list of 16 searched: part of the index
            assert (found < 400).all() and (index.search(vectors[:3], k=400)[1] >= 0).all()
        else:
            assert (found == 400).all()
    refused = f"^{next(iter(other))} \\(--[a-z-]+\\) applies to an (IVF|HNSW) index, not to the"
    with pytest.raises(ValueError, match=refused):
        index.search(vectors[:1], k=3, **other)
    with pytest.raises(ValueError, match="nprobe must be a positive integer, got 0"):
        index.search(vectors[:1], k=3, nprobe=0)
    index.close()


ODD_VALUES = {"lang": "français", "emoji": "😀", "quote": 'say "hi"', "slash": "a\\b", "lines": "a\nb\r\tc",
              "ctrl": "a\x01\x08\x0cb", "in": "kw", "and": "kw", "like": "kw", "not": "kw"}


def test_filters_on_any_text_and_any_field_name_match_on_every_backend(backend: str, tmp_path: Path) -> None:
    """Milvus got non-ASCII values as JSON's \\u escapes, which its parser refuses, and field names that are its
    keywords (in, and, like...) as bare names, which break the expression; FAISS matched them all."""
    index = make(backend, tmp_path)
    index.add(range(3), unit(3), [ODD_VALUES, {k: "other" for k in ODD_VALUES}, {"lang": "english"}])
    for field, value in ODD_VALUES.items():
        _, ids = index.search(unit(3)[0], k=3, filter={field: value})
        assert [i for i in ids[0].tolist() if i >= 0] == [0], field
    _, ids = index.search(unit(3)[0], k=3, filter={"lang": ["français", "english"]})
    assert sorted(i for i in ids[0].tolist() if i >= 0) == [0, 2]
    _, ids = index.search(unit(3)[0], k=3, filter={"in": ["kw", "other"], "lang": "français"})
    assert [i for i in ids[0].tolist() if i >= 0] == [0]
    index.close()


def test_a_failing_milvus_call_is_one_line_without_pymilvus_traceback(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    index = make("milvus", tmp_path)
    index.add([1], unit(1))
    with pytest.raises(ValueError, match="Milvus") as caught:  # a filter Milvus's parser refuses
        index._call(index.client.query, index.collection, filter='id == "', output_fields=["id"])
    assert "\n" not in str(caught.value)
    assert not [r for r in caplog.records if r.name.startswith("pymilvus") and r.levelname == "ERROR"]
    index.close()


def test_an_unreachable_milvus_is_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import time

    from llm_embedder.index.milvus_index import MilvusUnavailableError

    start = time.monotonic()
    with pytest.raises(MilvusUnavailableError, match=r"^cannot reach Milvus at http://127\.0\.0\.1:1 \([^\n]*\)"):
        open_index("http://127.0.0.1:1", DIM)
    # a descriptor naming such a server (index.milvus.json of an index folder)
    descriptor = tmp_path / "index.milvus.json"
    descriptor.write_text('{"backend": "milvus", "uri": "http://127.0.0.1:1", "collection": "c", "dim": 8}')
    with pytest.raises(MilvusUnavailableError, match="cannot reach Milvus at http://127.0.0.1:1"):
        open_index(descriptor)
    assert time.monotonic() - start < 30  # a refused port fails at once (pymilvus waits 10 s for a silent host)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_milvus_lite_db_another_process_holds_is_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import subprocess
    import sys

    from llm_embedder.index.milvus_index import MilvusUnavailableError

    db = tmp_path / "held.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pymilvus import MilvusClient; c = MilvusClient(sys.argv[1]); "
         "print('ready', flush=True); time.sleep(120)", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(MilvusUnavailableError, match="in use by another process \\(a running serve\\?\\)"):
            open_index(db, DIM)
    finally:
        holder.kill()
        holder.wait()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # milvus-lite's traceback was not printed
    index = open_index(db, DIM)  # free again once the holder is gone
    assert index.count == 0
    index.close()



def test_milvus_returns_all_k_hits_and_a_server_refuses_k_above_its_cap(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every search was cut at MAX_LIMIT (16384) hits and padded with -1 as if no more matched; FAISS returns all k.
    Milvus Lite returns them all too; a Milvus server cannot (it caps topk, and offset + limit), so it refuses."""
    from llm_embedder.index import milvus_index

    monkeypatch.setattr(milvus_index, "MAX_LIMIT", 5)  # the cap, made small enough to reach here
    index = make("milvus", tmp_path)
    index.add(range(10), unit(10))
    _, ids = index.search(unit(10)[0], k=8)
    assert (ids >= 0).all() and len(set(ids[0].tolist())) == 8
    index.close()
    with pytest.raises(ValueError, match="k=8: a Milvus server returns at most 5 hits per query and the index holds"):
        milvus_index.search_limit(8, 10, lite=False)
    assert milvus_index.search_limit(8, 5, lite=False) == 5  # no more than the cap held: padding says the truth
    assert milvus_index.search_limit(5, 10, lite=False) == 5


def test_milvus_search_effort_on_hnsw_sq_and_an_index_of_an_old_factory(tmp_path: Path) -> None:
    """HNSW_SQ takes ef like HNSW; an index built by an earlier version with a factory now refused (it built
    AUTOINDEX) stays searchable."""
    index = open_index(tmp_path / "index.db", DIM, factory="HNSW8,SQ8")
    index.add(range(20), unit(20))
    assert index.search(unit(20)[:1], k=3, ef_search=50)[1][0, 0] == 0
    index.factory = "Bogus12"  # as an earlier version recorded it
    assert index.search(unit(20)[:1], k=3)[1][0, 0] == 0
    with pytest.raises(ValueError, match=r"ef_search \(--ef-search\) applies to an HNSW index"):
        index.search(unit(20)[:1], k=3, ef_search=50)
    index.close()


def test_a_closed_milvus_lite_index_is_free_for_another_process(tmp_path: Path) -> None:
    """close() kept Milvus Lite's server, and its lock on the database, until the process ended: the next process (a
    serve, the next writer) was refused 'in use by another process'. Two objects on one database share the server:
    the last to close releases it."""
    import subprocess
    import sys

    first = open_index(tmp_path / "index.db", DIM)
    first.add([1, 2], unit(2))
    second = open_index(tmp_path / "index.db", DIM)
    first.close()
    assert second.count == 2  # still served to the object left open
    second.close()
    code = ("import sys; from llm_embedder.index import open_index; "
            f"index = open_index({str(tmp_path / 'index.db')!r}, {DIM}); print(index.count); index.close()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "2"


def count_queries(index) -> list[str]:
    """The count(*) queries the index's client runs from now on (each call's filter, listed)."""
    asked, query = [], index.client.query

    def counting(*args, **kwargs):
        if "count(*)" in kwargs.get("output_fields", ()):
            asked.append(kwargs.get("filter", ""))
        return query(*args, **kwargs)

    index.client.query = counting
    return asked


def test_a_milvus_search_runs_no_count_query(tmp_path: Path) -> None:
    """Every search ran a count(*) query first (50-190 ms at 20k rows on Milvus Lite, more than the search); the
    count is needed only where the answer leaves a doubt: no hit at all (empty, or a filter matching nothing)."""
    index = make("milvus", tmp_path)
    vectors = unit(10)
    index.add(range(10), vectors, [{"lang": "en" if i % 2 else "fr", "n": i} for i in range(10)])
    counted = count_queries(index)
    assert index.search(vectors[:2], k=3)[1][:, 0].tolist() == [0, 1]
    _, ids = index.search(vectors[0], k=20)  # more than the index holds: padded, still without a count
    assert sorted(ids[0, :10].tolist()) == list(range(10)) and (ids[0, 10:] == -1).all()
    _, ids = index.search(vectors[0], k=3, filter={"lang": "en"})
    assert len(set(ids[0].tolist())) == 3 and all(i % 2 for i in ids[0].tolist())
    _, ids = index.search(vectors[0], k=3, filter={"n": [2, 4]})  # a strict (number) filter, short of k
    assert sorted(ids[0, :2].tolist()) == [2, 4] and ids[0, 2] == -1
    assert counted == []
    _, ids = index.search(vectors[0], k=3, filter={"lang": "de"})  # no hit at all: empty index, or no match?
    assert (ids == -1).all() and counted == [""]
    index.close()


def stale_counts(monkeypatch: pytest.MonkeyPatch, *values: int) -> None:
    """MilvusIndex.count answers ``values`` first (what another process's adds left stale), then the truth."""
    stale, real = list(values), MilvusIndex.count.fget
    monkeypatch.setattr(MilvusIndex, "count", property(lambda self: stale.pop(0) if stale else real(self)))


def test_a_stale_milvus_count_cuts_no_search_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A count read before another process added more must not cap the hits asked for: the search was cut at the
    count and padded with -1 as if no more matched."""
    from llm_embedder.index import milvus_index

    monkeypatch.setattr(milvus_index, "MAX_LIMIT", 5)  # so that k=8 is a k above the cap, which needs the count
    index = make("milvus", tmp_path)
    vectors = unit(10)
    index.add(range(10), vectors, [{"n": i} for i in range(10)])
    stale_counts(monkeypatch, 3)
    _, ids = index.search(vectors[0], k=8)  # Lite: all k
    exact = np.argsort(-(vectors[:1] @ vectors.T), axis=1)[0, :8]
    assert ids[0].tolist() == exact.tolist()
    # a Milvus server (Lite made to look like one): a count of 4, no more than its cap, when the index holds 10
    monkeypatch.setattr(milvus_index, "is_lite", lambda uri: False)
    stale_counts(monkeypatch, 4)
    with pytest.raises(milvus_index.KLimitError, match="k=8: a Milvus server returns at most 5 hits per query and "
                                                       "the index holds 10 vectors"):
        index.search(vectors[0], k=8)
    stale_counts(monkeypatch, 4)
    _, ids = index.search(vectors[0], k=8, filter={"n": [1, 2]})  # fewer match than the cap: padded, not refused
    assert sorted(ids[0, :2].tolist()) == [1, 2] and (ids[0, 2:] == -1).all()
    index.close()


def test_a_milvus_server_caps_k_without_a_count_per_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a server (Lite made to look like one, its cap made 5): k up to the cap runs no count; a larger k is refused
    where the index holds more than the cap, and padded where it holds no more."""
    from llm_embedder.index import milvus_index

    monkeypatch.setattr(milvus_index, "MAX_LIMIT", 5)
    monkeypatch.setattr(milvus_index, "is_lite", lambda uri: False)
    index = make("milvus", tmp_path)
    vectors = unit(10)
    index.add(range(5), vectors[:5])
    counted = count_queries(index)
    assert (index.search(vectors[:2], k=5)[1] >= 0).all() and counted == []
    _, ids = index.search(vectors[0], k=8)
    assert sorted(ids[0, :5].tolist()) == list(range(5)) and (ids[0, 5:] == -1).all()
    index.add(range(5, 10), vectors[5:])
    with pytest.raises(milvus_index.KLimitError, match="k=8: .* the index holds 10 vectors; ask for k <= 5"):
        index.search(vectors[0], k=8)
    index.close()


def test_a_milvus_server_gone_is_an_unavailable_error_of_one_line(milvus_server, capfd: pytest.CaptureFixture) -> None:
    """A Milvus server that stops answering was a plain ValueError (a server answered it 400, as if the request were
    at fault) with pymilvus's "Connection recovery failed" traceback on stderr: now an IndexUnavailableError."""
    from llm_embedder.index import IndexUnavailableError

    uri, process = milvus_server
    index = open_index(uri, DIM)
    index.add(range(5), unit(5))
    assert index.search(unit(5)[:1], k=3)[1][0, 0] == 0
    process.kill()
    process.wait()
    capfd.readouterr()
    with pytest.raises(IndexUnavailableError, match=f"Milvus \\({uri}\\): .*unavailable"):
        index.search(unit(5)[:1], k=3)
    assert "Traceback" not in capfd.readouterr().err
