"""FAISS specifics: factory strings, training, unsupported delete, atomic saves."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from llm_embedder.index import FaissIndex, IndexFormatError

DIM = 16


def unit(rows: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat", "IVF4,PQ4x4"])
def test_factories_find_exact_match(factory: str, tmp_path: Path) -> None:
    index = FaissIndex(DIM, factory)
    vectors = unit(300)
    index.add(range(300), vectors)
    _, ids = index.search(vectors[:10], k=3)
    hits = sum(int(ids[i, 0] == i) for i in range(10))
    assert hits >= (7 if "PQ" in factory else 10)
    again = FaissIndex.load(index.save(tmp_path / "i.faiss"))
    assert again.search(vectors[:10], k=3)[1].tolist() == ids.tolist()


def test_bad_factory_and_too_little_training() -> None:
    # FAISS's words, without its C++ signature, source file and line ("Error in std::unique_ptr<faiss::Index> ...")
    with pytest.raises(ValueError) as err:
        FaissIndex(DIM, "NotAnIndex")
    assert str(err.value) == "invalid FAISS factory string 'NotAnIndex': could not parse index string NotAnIndex"
    with pytest.raises(ValueError) as err:
        FaissIndex(DIM, "IVF10,PQ")
    assert str(err.value) == "invalid FAISS factory string 'IVF10,PQ': could not parse code description PQ in IVF10,PQ"
    index = FaissIndex(DIM, "IVF64,Flat")
    with pytest.raises(ValueError, match="could not be trained on 10 vectors") as err:
        index.add(range(10), unit(10))
    assert "(Number of training points (10) should be at least as large as number of clusters (64))" in str(err.value)
    assert index.count == 0


def test_an_unreadable_index_file_says_why_in_faiss_words(tmp_path) -> None:
    from llm_embedder.index.base import IndexFormatError

    path = tmp_path / "i.faiss"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(IndexFormatError) as err:
        FaissIndex.load(path)
    assert str(err.value).endswith('not a readable FAISS index (truncated or corrupt?): Index type 0x62726167 ("garb") '
                                   "not recognized"), str(err.value)


def test_hnsw_delete_is_a_clear_error() -> None:
    index = FaissIndex(DIM, "HNSW32")
    index.add(range(5), unit(5))
    with pytest.raises(ValueError, match="does not support delete"):
        index.delete([1])
    assert index.count == 5


def test_a_loaded_index_names_its_factory_or_its_faiss_class(tmp_path: Path) -> None:
    """Without metadata no sidecar records the factory: the delete error named it '?'. Now it names the factory the
    caller gives load (an index directory's meta.json), else the FAISS class."""
    index = FaissIndex(DIM, "HNSW8")
    index.add(range(3), unit(3))
    index.save(tmp_path / "index.faiss")
    with pytest.raises(ValueError, match=r"^the FAISS factory 'HNSW8' does not support delete"):
        FaissIndex.load(tmp_path / "index.faiss", factory="HNSW8").delete([1])
    with pytest.raises(ValueError, match=r"^the FAISS index IndexHNSWFlat does not support delete"):
        FaissIndex.load(tmp_path / "index.faiss").delete([1])


def test_failed_save_keeps_previous_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "index.faiss"
    index = FaissIndex(DIM)
    index.add(range(4), unit(4), [{"v": 1}] * 4)
    index.save(path)
    original = path.read_bytes()
    sidecar = Path(f"{path}.meta.json").read_bytes()
    index.add([10, 11], unit(2, seed=3), [{"v": 2}] * 2)

    def crash(idx, target):  # write half a file, then die like a full disk or a kill would
        Path(target).write_bytes(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == original
    assert Path(f"{path}.meta.json").read_bytes() == sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "index.faiss.meta.json"]  # no temp left
    monkeypatch.undo()
    assert FaissIndex.load(path).count == 4


def test_sidecar_mismatch_is_detected(tmp_path: Path) -> None:
    a = FaissIndex(DIM)
    a.add(range(3), unit(3), [{"x": 1}] * 3)
    a.save(tmp_path / "a.faiss")
    b = FaissIndex(DIM)
    b.add(range(5), unit(5), [{"x": 1}] * 5)
    b.save(tmp_path / "b.faiss")
    (tmp_path / "a.faiss.meta.json").write_bytes((tmp_path / "b.faiss.meta.json").read_bytes())
    with pytest.raises(IndexFormatError, match="does not match"):
        FaissIndex.load(tmp_path / "a.faiss")
    (tmp_path / "a.faiss.meta.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="corrupt metadata"):
        FaissIndex.load(tmp_path / "a.faiss")


def test_copy_false_normalises_in_place_and_builds_the_same_index(tmp_path: Path) -> None:
    raw = np.random.default_rng(3).normal(size=(300, DIM)).astype(np.float32) * 3  # not unit length
    before = raw.copy()
    copied, handed_over = FaissIndex(DIM, "IVF4,PQ4x4"), FaissIndex(DIM, "IVF4,PQ4x4")
    copied.train(raw)
    copied.add(range(300), raw)
    np.testing.assert_array_equal(raw, before)  # the default copies: the caller's array is left alone
    mine = raw.copy()
    handed_over.train(mine, copy=False)
    mine = raw.copy()
    handed_over.add(range(300), mine, copy=False)
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, rtol=1e-6)  # normalised in place
    a, b = copied.save(tmp_path / "a.faiss"), handed_over.save(tmp_path / "b.faiss")
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(ValueError, match="NaN"):
        handed_over.add([999], np.full((1, DIM), np.nan, np.float32), copy=False)


def test_a_saved_index_gets_the_usual_file_permissions(tmp_path: Path) -> None:
    import os

    from llm_embedder.io import current_umask

    index = FaissIndex(4)
    index.add([0, 1], np.eye(4, dtype=np.float32)[:2], [{"lang": "en"}, {"lang": "fr"}])
    path = index.save(tmp_path / "index.faiss")
    expected = 0o666 & ~current_umask()
    for saved in (path, Path(f"{path}.meta.json")):
        assert os.stat(saved).st_mode & 0o777 == expected, saved  # mkstemp alone gives 0600


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_filtered_search_agrees_with_a_scan_of_the_metadata_through_adds_deletes_and_a_reload(
    factory: str, tmp_path: Path
) -> None:
    """Filtered search used to scan every document's metadata per call (~70 ms at 50k documents); it now reads a
    map of each filtered field's values. The two must agree on every filter, kept up to date by add and delete."""
    from llm_embedder.index.base import check_filter, matches

    values = ["en", "fr", 1, 1.0, True, False, 0, "1", 2.5, ["en"], None]
    rng = np.random.default_rng(0)

    def records(n: int) -> list[dict]:
        return [{"lang": values[rng.integers(len(values))], "n": int(rng.integers(3))} if i % 7 else {"other": 1}
                for i in range(n)]

    def agrees(index: FaissIndex, metadata: dict[int, dict]) -> None:
        for flt in ({"lang": "en"}, {"lang": 1}, {"lang": True}, {"lang": [False, "fr"]}, {"lang": "1"},
                    {"lang": 2.5}, {"lang": "en", "n": [0, 2]}, {"n": 1}, {"missing": 1}, {"lang": "none"}):
            expected = sorted(i for i, m in metadata.items() if matches(m, check_filter(flt)))
            _, ids = index.search(unit(1, seed=9), k=len(metadata), filter=flt)
            assert sorted(int(i) for i in ids[0] if i >= 0) == expected, flt

    index = FaissIndex(DIM, factory)  # IVF: 4 lists, all searched (nprobe 16 is capped at 4)
    first = records(60)
    index.add(range(60), unit(60), metadata=first)
    metadata = {i: m for i, m in enumerate(first)}
    agrees(index, metadata)  # the maps are built here
    more = records(40)
    index.add(range(60, 100), unit(40, seed=1), metadata=more)  # and updated here
    metadata.update({60 + i: m for i, m in enumerate(more)})
    agrees(index, metadata)
    index.delete(list(range(0, 100, 3)))
    metadata = {i: m for i, m in metadata.items() if i % 3}
    agrees(index, metadata)
    agrees(FaissIndex.load(index.save(tmp_path / "i.faiss")), metadata)
    last = records(40)
    index.add(range(100, 140), unit(40, seed=2), metadata=last)  # IVF in an id map: shifted ids from here on
    metadata.update({100 + i: m for i, m in enumerate(last)})
    agrees(index, metadata)
    agrees(FaissIndex.load(index.save(tmp_path / "i.faiss")), metadata)


@pytest.mark.parametrize(("factory", "replayable"), [
    ("Flat", True), ("SQ8", True), ("SQfp16", True), ("IDMap,Flat", True), ("IDMap2,SQ8", True),
    ("PQ4", False), ("IVF4,Flat", False), ("PCA8,Flat", False), ("HNSW8", False), ("NSG8,Flat", False),
    ("Flat,RFlat", False),
])
def test_an_index_says_whether_its_adds_replay(factory: str, replayable: bool) -> None:
    """An index directory adds the vectors past its index file's checkpoint again at load, in other batches: it may
    do so where that builds the same index bit for bit (checked here, batches of 7 against one of 290, which FAISS
    computes with BLAS), not for a graph's links nor where a matrix product rounds otherwise in another batch."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal((300, 16)).astype(np.float32)
    whole, batched = FaissIndex(16, factory), FaissIndex(16, factory)
    assert whole.replayable is replayable
    if not replayable:
        return
    for index in (whole, batched):
        index.train(data)
        index.add(np.arange(10), data[:10])
    whole.add(np.arange(10, 300), data[10:])
    for start in range(10, 300, 7):
        batched.add(np.arange(start, min(start + 7, 300)), data[start : start + 7])
    assert bytes(faiss.serialize_index(whole.index)) == bytes(faiss.serialize_index(batched.index))


def test_ivf_search_after_a_delete_and_an_add_names_the_vector_found() -> None:
    """IVF was wrapped in IndexIDMap2, whose remove_ids compacts its id map as if the IVF renumbered its vectors
    0..n-1 (Flat does, IVF does not): after a delete the ids came out shifted, vector 10 was found as id 13."""
    x = unit(400)
    index = FaissIndex(DIM, "IVF4,Flat")
    index.add(list(range(300)), x[:300])
    index.delete([5, 6, 7])
    index.add(list(range(300, 400)), x[300:])
    _, ids = index.search(x[10:11], 1, nprobe=4)
    assert ids[0].tolist() == [10]


@pytest.mark.parametrize("factory", ["IVF4,Flat", "IVF4,SQ8", "PCA8,IVF4,Flat", "OPQ4,IVF4,Flat", "IDMap2,IVF4,Flat"])
def test_ivf_ids_survive_deletes_adds_and_a_reload(factory: str, tmp_path: Path) -> None:
    """Each vector is found under its own id after deletes and adds (IVF, SQ, behind PCA or OPQ, and an explicit
    IDMap2, which the IVF's own ids replace); ids(), held and held_from know what was deleted; a save and load
    gives the same results."""
    x = unit(400)
    index = FaissIndex(DIM, factory)
    index.add(range(300), x[:300])
    deleted = [5, 6, 7, *range(100, 150), 299]
    assert index.delete(deleted) == len(deleted)
    assert index.delete([5, 1000]) == 0
    index.add(range(300, 400), x[300:])
    kept = sorted(set(range(400)) - set(deleted))
    assert index.count == len(kept)
    assert np.sort(index.ids()).tolist() == kept
    assert index.held([4, 5, 6, 150, 299, 300, 1000]) == [4, 150, 300]
    assert index.held_from(290) == [*range(290, 299), *range(300, 400)]
    with pytest.raises(ValueError, match=r"ids already in the index: \[4\]"):
        index.add([4, 5], x[4:6])  # 5 was deleted, 4 was not
    scores, ids = index.search(x[kept], 5, nprobe=4)
    assert not np.isin(ids, deleted).any()
    reference = FaissIndex(DIM, factory)  # the same training, only the kept vectors ever added
    reference.train(x[:300])
    reference.add(kept, x[kept])
    assert ids[:, 0].tolist() == reference.search(x[kept], 1, nprobe=4)[1][:, 0].tolist()
    if "PCA" not in factory:  # PCA to half the dimensions finds another vector first at times
        assert ids[:, 0].tolist() == kept
    assert not isinstance(index.index, faiss.IndexIDMap | faiss.IndexIDMap2)  # the IVF holds the ids
    again = FaissIndex.load(index.save(tmp_path / "i.faiss"))
    assert not isinstance(again.index, faiss.IndexIDMap | faiss.IndexIDMap2)
    assert np.sort(again.ids()).tolist() == kept
    assert again.held_from(290) == index.held_from(290)
    scores_again, ids_again = again.search(x[kept], 5, nprobe=4)
    assert ids_again.tolist() == ids.tolist()
    np.testing.assert_array_equal(scores_again, scores)
    again.delete([300, 301])
    again.add([300, 5], x[[300, 5]])
    assert np.sort(again.ids()).tolist() == sorted({*kept, 5} - {301})
    assert again.search(x[kept[:20]], 1, nprobe=4)[1][:, 0].tolist() == ids[:20, 0].tolist()


def _old_format(path: Path, delete: list[int] | None, metadata: bool) -> np.ndarray:
    """An IVF index file as the version before wrote it: the IVF in an IndexIDMap2 holding caller ids 1000..1299
    (positions 0..299 in the IVF), with a metadata sidecar; ``delete`` removes ids as its delete did."""
    x = unit(300)
    fresh = FaissIndex(DIM, "IVF4,Flat")
    inner = faiss.index_factory(DIM, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    fresh.index = faiss.IndexIDMap2(inner)
    fresh.index.train(x)
    fresh.add(range(1000, 1300), x, metadata=[{"n": i % 3} for i in range(300)] if metadata else None)
    if delete:
        fresh.index.remove_ids(faiss.IDSelectorBatch(np.asarray(delete, dtype=np.int64)))
        for id_ in delete:
            fresh.metadata.pop(id_, None)
    fresh.save(path)
    assert isinstance(faiss.read_index(str(path)), faiss.IndexIDMap2)
    return x


def test_an_old_ivf_file_without_a_delete_is_converted_and_deletes_right(tmp_path: Path) -> None:
    """An IVF saved in an IndexIDMap2 whose IVF still numbers its vectors 0..n-1 (no delete yet): its lists' ids
    become the caller ids on load, so deletes and adds work from then on."""
    path = tmp_path / "i.faiss"
    x = _old_format(path, None, metadata=True)
    index = FaissIndex.load(path)  # the sidecar's id checksum still matches
    assert np.sort(index.ids()).tolist() == list(range(1000, 1300))
    assert index.search(x[:50], 1, nprobe=4)[1][:, 0].tolist() == list(range(1000, 1050))
    index.delete([1005, 1006, 1007])
    index.add(range(2000, 2010), unit(10, seed=3))
    assert index.search(x[10:50], 1, nprobe=4)[1][:, 0].tolist() == list(range(1010, 1050))
    assert isinstance(index.index, faiss.IndexIVFFlat)
    _, ids = index.search(x[:3], 300, filter={"n": 0}, nprobe=4)
    assert sorted(i for i in ids[0].tolist() if i >= 0) == [i for i in range(1000, 1300, 3) if i != 1006]
    again = FaissIndex.load(index.save(path))
    assert again.search(x[10:50], 1, nprobe=4)[1][:, 0].tolist() == list(range(1010, 1050))


def test_an_old_ivf_file_after_a_delete_refuses_to_change_and_to_read_out_of_its_map(tmp_path: Path) -> None:
    """After a delete by the version before, the id map and the IVF's ids disagree: which caller id a vector had
    cannot be told. The index still loads (with a warning) and searches as before, but refuses add and delete,
    naming the file to rebuild, and a hit past the id map's end (FAISS read it out of bounds) is an error."""
    path = tmp_path / "i.faiss"
    x = _old_format(path, [1005, 1006, 1007], metadata=False)
    with pytest.warns(UserWarning, match="rebuild"):
        index = FaissIndex.load(path)
    assert isinstance(index.index, faiss.IndexIDMap2)
    assert index.count == 297
    with pytest.raises(ValueError, match=f"^cannot delete: {path}: .*rebuild the index"):
        index.delete([1010])
    with pytest.raises(ValueError, match=f"^cannot add: {path}: .*rebuild the index"):
        index.add([5000], unit(1))
    assert index.count == 297
    assert index.search(x[:2], 1, nprobe=4)[1][:, 0].tolist() == [1000, 1001]  # before the deleted positions
    with pytest.raises(IndexFormatError, match="rebuild"):
        index.search(x[298:300], 1, nprobe=4)  # IVF positions 298 and 299, past the 297 ids left in the map
