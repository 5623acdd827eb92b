"""The qdrant data source against real qdrant-client local-mode folders (no server binary can
be installed here): named, sparse and multi vectors, unicode/nested/null payloads, integer and
UUID ids, several collections in batches, aliases and metadata, restore under another name and
into another folder compared point by point, sample searches, refusal to overwrite, corrupted
and truncated artifacts refused with nothing half restored, fingerprints that see a deleted
point and a changed payload, the local-mode lock, and the config schema."""

from __future__ import annotations

import json
import random
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from stackvault.config.loader import check_text
from stackvault.errors import SourceCorrupt, SourceInUse, SourceUnavailable, UsageError
from stackvault.sources.base import DataSource
from stackvault.sources.directory import DirectorySink, DirectorySource
from stackvault.sources.qdrant import MANIFEST, QdrantSource, points_artifact
from stackvault.sources.registry import get_source_class

N_DOCS = 2500  # several scroll/upsert batches of BATCH
BATCH = 200


# --- data -----------------------------------------------------------------------------------


def fill(path: Path, seed: int = 3) -> None:
    """Three collections: `docs` (named dense cosine + multivector + sparse IDF, metadata,
    an alias, int and UUID ids, payloads with unicode, nesting and nulls), `plain` (one
    unnamed Euclid vector) and `empty` (no points, sparse only)."""
    rnd = random.Random(seed)
    c = QdrantClient(path=str(path))
    try:
        c.create_collection(
            "docs",
            vectors_config={
                "dense": models.VectorParams(size=16, distance=models.Distance.COSINE,
                                             on_disk=True,
                                             hnsw_config=models.HnswConfigDiff(m=8)),
                "colbert": models.VectorParams(
                    size=4, distance=models.Distance.DOT,
                    multivector_config=models.MultiVectorConfig(
                        comparator=models.MultiVectorComparator.MAX_SIM))},
            sparse_vectors_config={"bm25": models.SparseVectorParams(
                modifier=models.Modifier.IDF)},
            hnsw_config=models.HnswConfigDiff(m=32, ef_construct=200),
            quantization_config=models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8)),
            metadata={"owner": "ingest", "model": "mini-ü"})
        c.create_collection("plain", vectors_config=models.VectorParams(
            size=3, distance=models.Distance.EUCLID))
        c.create_collection("empty", vectors_config={},
                            sparse_vectors_config={"s": models.SparseVectorParams()})
        c.update_collection_aliases(change_aliases_operations=[
            models.CreateAliasOperation(create_alias=models.CreateAlias(
                collection_name="docs", alias_name="docs-live"))])
        points = []
        for i in range(N_DOCS):
            pid: Any = i if i % 3 else str(uuid.UUID(int=rnd.getrandbits(128)))
            vec: dict[str, Any] = {"dense": [rnd.gauss(0, 1) for _ in range(16)]}
            if i % 5:
                vec["colbert"] = [[rnd.random() for _ in range(4)]
                                  for _ in range(rnd.randint(1, 3))]
            if i % 2:
                idx = rnd.sample(range(1000), rnd.randint(1, 6))
                vec["bm25"] = models.SparseVector(indices=idx,
                                                  values=[rnd.random() for _ in idx])
            payload = {"n": i, "title": f"Dokument {i} — ünïcødé 🙂", "score": i / 7,
                       "tags": ["a", "b"][: i % 3], "meta": {"lang": None, "deep": {"x": [1,
                       {"y": None}]}}, "none": None, "big": 2**62 + i}
            points.append(models.PointStruct(id=pid, vector=vec, payload=payload))
        for start in range(0, N_DOCS, 500):
            c.upsert("docs", points[start:start + 500])
        c.upsert("plain", [models.PointStruct(id=i, vector=[rnd.random() for _ in range(3)],
                                              payload={} if i % 2 else {"k": "v"})
                           for i in range(50)])
    finally:
        c.close()


def dump(path: Path, names: dict[str, str] | None = None) -> dict[str, Any]:
    """Every point of the collections (target name -> name to report) with config, as read
    by a fresh client: {name: (config json, {id: (payload, vectors)})}."""
    c = QdrantClient(path=str(path))
    try:
        out = {}
        have = [x.name for x in c.get_collections().collections]
        for t, name in (names or {n: n for n in have}).items():
            info = c.get_collection(t)
            pts = {}
            offset = None
            while True:
                recs, offset = c.scroll(t, limit=1000, offset=offset, with_vectors=True)
                for r in recs:
                    pts[r.id] = (r.payload, r.vector)
                if offset is None:
                    break
            out[name] = (info.config.params.model_dump(exclude_none=True),
                         info.config.metadata, pts)
        return out
    finally:
        c.close()


def aliases(path: Path) -> dict[str, str]:
    c = QdrantClient(path=str(path))
    try:
        return {a.alias_name: a.collection_name for a in c.get_aliases().aliases}
    finally:
        c.close()


def assert_same_points(want: dict[Any, Any], got: dict[Any, Any]) -> None:
    """Same ids (ints stay ints, UUIDs stay strings), same payloads, vectors within float32
    tolerance."""
    assert set(want) == set(got)
    assert {type(k) for k in got} == {type(k) for k in want}
    for pid, (payload, vec) in want.items():
        payload2, vec2 = got[pid]
        assert payload2 == payload, pid
        if not isinstance(vec, dict):
            vec, vec2 = {"": vec}, {"": vec2}
        assert set(vec2) == set(vec), pid
        for name, v in vec.items():
            v2 = vec2[name]
            if isinstance(v, models.SparseVector):
                assert v2.indices == v.indices
                np.testing.assert_allclose(v2.values, v.values, rtol=1e-6)
            else:
                np.testing.assert_allclose(np.asarray(v2), np.asarray(v), rtol=1e-6, atol=1e-7)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "qdrant"
    fill(path)
    return path


def backup(src: QdrantSource, tmp_path: Path, name: str = "bk") -> tuple[Any, DirectorySource]:
    res = src.backup(DirectorySink(tmp_path / name))
    return res, DirectorySource(tmp_path / name)


# --- round trips ------------------------------------------------------------------------------


def test_round_trip_under_a_prefix_point_by_point(store: Path, tmp_path: Path) -> None:
    src = QdrantSource(path=store, batch_size=BATCH)
    assert isinstance(src, DataSource)
    res, snap = backup(src, tmp_path)
    assert res.fingerprint.counts == {"points.docs": N_DOCS, "points.empty": 0,
                                      "points.plain": 50}
    assert [a.name for a in res.artifacts] == [points_artifact(0), points_artifact(1),
                                               points_artifact(2), MANIFEST]
    assert res.extra["aliases"] == {"docs": ["docs-live"]}
    # the sample searches found something for each vector kind
    kinds = {name for _, name, ids in res.extra["searches"]["docs"] if ids}
    assert kinds == {"dense", "colbert", "bm25"}
    assert src.fingerprint().compare(res.fingerprint) == []  # live == backup

    before = dump(store)
    target = {"to": "prefix:drill_"}
    src.restore(snap, target=target)
    assert src.fingerprint(target=target).compare(res.fingerprint) == []
    got = dump(store, {f"drill_{n}": n for n in before})
    for name, (params, meta, pts) in before.items():
        assert got[name][0] == params and got[name][1] == meta, name
        assert_same_points(pts, got[name][2])
    assert aliases(store) == {"docs-live": "docs", "drill_docs-live": "drill_docs"}
    # a fresh adapter (as `stackvault restore` then `verify` would use) agrees too
    assert QdrantSource(path=store).fingerprint(target=target).compare(res.fingerprint) == []


def test_restore_into_another_folder_and_under_one_name(store: Path, tmp_path: Path) -> None:
    src = QdrantSource(path=store, batch_size=BATCH)
    res, snap = backup(src, tmp_path)
    other = tmp_path / "elsewhere"
    src.restore(snap, target={"to": str(other)})
    assert src.fingerprint(target={"to": str(other)}).compare(res.fingerprint) == []
    assert aliases(other) == {"docs-live": "docs"}
    before, after = dump(store), dump(other)
    for name in before:
        assert_same_points(before[name][2], after[name][2])

    one = QdrantSource(path=store, collections=["plain"])
    res1, snap1 = backup(one, tmp_path, "one")
    one.restore(snap1, target={"to": "name:plain_copy"})
    assert one.fingerprint(target={"to": "name:plain_copy"}).compare(res1.fingerprint) == []
    # several collections cannot share one name
    with pytest.raises(UsageError, match="prefix"):
        src.restore(snap, target={"to": "name:x"})
    # selected collections only (`--component NAME.COLLECTION`)
    src.restore(snap, target={"to": "#sel_*"}, tables=["plain"])
    got = dump(store)
    assert "sel_plain" in got and "sel_docs" not in got
    with pytest.raises(UsageError, match="no collection 'nope'"):
        src.restore(snap, target={"to": "#sel2_*"}, tables=["nope"])


def test_refuses_existing_collections_unless_forced(store: Path, tmp_path: Path) -> None:
    src = QdrantSource(path=store, batch_size=BATCH)
    res, snap = backup(src, tmp_path)
    c = QdrantClient(path=str(store))
    c.delete(collection_name="docs", points_selector=models.PointIdsList(points=[1, 2]))
    c.set_payload("plain", {"n": "changed"}, points=[3])
    c.delete_collection("empty")  # and its name now an alias of another collection
    c.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
        create_alias=models.CreateAlias(collection_name="plain", alias_name="empty"))])
    c.close()
    damaged = src.fingerprint()
    diffs = res.fingerprint.compare(damaged)
    assert "count of points.docs: expected 2500, found 2498" in diffs
    assert "content of content.plain: differs" in diffs
    assert "content of content.docs: differs" in diffs
    assert "count of points.empty: expected 0, missing" in diffs

    with pytest.raises(SourceInUse, match="refusing to overwrite"):
        src.restore(snap)
    assert src.fingerprint().compare(damaged) == []  # untouched
    src.restore(snap, force=True)
    assert src.fingerprint().compare(res.fingerprint) == []
    assert aliases(store) == {"docs-live": "docs"}
    # force_restore on the component does the same
    QdrantSource(path=store, force_restore=True).restore(snap)
    assert src.fingerprint().compare(res.fingerprint) == []


def test_sample_searches_detect_a_different_neighbourhood(store: Path, tmp_path: Path) -> None:
    src = QdrantSource(path=store, collections=["plain"], sample_queries=3)
    res, _ = backup(src, tmp_path)
    c = QdrantClient(path=str(store))
    # points very close to the sampled queries change the answers (not the sampled points)
    extra = []
    for n, (pid, _, _ids) in enumerate(res.extra["searches"]["plain"]):
        vec = c.retrieve("plain", [pid], with_vectors=True)[0].vector
        extra.append(models.PointStruct(id=1000 + n, vector=[x + 1e-4 for x in vec]))
    c.upsert("plain", extra)
    c.close()
    diffs = res.fingerprint.compare(src.fingerprint())
    assert "content of search.plain: differs" in diffs


# --- bad input: nothing half restored ------------------------------------------------------------


def _corrupt(snap_dir: Path, name: str, edit: Any) -> None:
    """Rewrite an artifact and its recorded size and checksum, so that only the adapter's
    own checks can see the change."""
    import hashlib
    path = snap_dir / name
    path.write_bytes(edit(path.read_bytes()))
    index = snap_dir / ".stackvault-artifacts.json"
    doc = json.loads(index.read_text())
    for a in doc["artifacts"]:
        if a["name"] == name:
            a["size"] = path.stat().st_size
            a["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    index.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage", ["truncated", "bytes", "consistent"])
def test_damaged_artifacts_are_refused_before_anything_is_written(
        store: Path, tmp_path: Path, damage: str) -> None:
    src = QdrantSource(path=store, batch_size=BATCH)
    res, snap = backup(src, tmp_path)
    snap_dir = tmp_path / "bk"
    art = points_artifact(0)  # docs
    if damage == "truncated":
        (snap_dir / art).write_bytes((snap_dir / art).read_bytes()[:-5000])
    elif damage == "bytes":
        data = bytearray((snap_dir / art).read_bytes())
        data[len(data) // 2] ^= 0x20
        (snap_dir / art).write_bytes(bytes(data))
    else:  # a payload changed with every checksum updated: only the manifest digest sees it
        _corrupt(snap_dir, art, lambda b: b.replace(b'"n":7,', b'"n":8,', 1))
    before = dump(store)
    for target in ({"to": "prefix:r_"}, None):
        with pytest.raises(SourceCorrupt):
            src.restore(DirectorySource(snap_dir), target=target, force=True)
    after = dump(store)
    assert set(after) == set(before)  # no r_* collection, the originals still there
    for name in before:
        assert_same_points(before[name][2], after[name][2])


def test_a_failure_while_writing_deletes_what_was_created(store: Path, tmp_path: Path) -> None:
    src = QdrantSource(path=store, batch_size=BATCH)
    _, snap = backup(src, tmp_path)
    # An existing collection under the name of an alias the restore must create: the store
    # refuses the alias after every collection was written; all of them are removed again.
    c = QdrantClient(path=str(store))
    c.create_collection("r_docs-live", vectors_config={})
    c.close()
    with pytest.raises(Exception, match="nothing is left half restored"):
        src.restore(snap, target={"to": "prefix:r_"})
    assert sorted(dump(store)) == ["docs", "empty", "plain", "r_docs-live"]


def test_local_folder_in_use_is_reported(store: Path, tmp_path: Path) -> None:
    src = QdrantSource(path=store)
    _, snap = backup(src, tmp_path)
    holder = QdrantClient(path=str(store))  # the application, still running
    try:
        with pytest.raises(SourceInUse, match="stop the application"):
            src.restore(snap, target={"to": "prefix:x_"})
        with pytest.raises(SourceInUse):
            src.backup(DirectorySink(tmp_path / "bk2"))
        assert src.probe().reachable is False
    finally:
        holder.close()
    assert src.probe().reachable is True


def test_missing_store_collection_and_unreachable_server(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="does not exist"):
        QdrantSource(path=tmp_path / "nope").backup(DirectorySink(tmp_path / "bk"))
    assert not (tmp_path / "nope").exists()  # not created by a backup
    fill(tmp_path / "q")
    with pytest.raises(SourceUnavailable, match="no collection 'missing'"):
        QdrantSource(path=tmp_path / "q", collections=["missing"]).backup(
            DirectorySink(tmp_path / "bk3"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = QdrantSource(url=f"http://127.0.0.1:{port}", api_key_env="SV_TEST_QDRANT_KEY")
    with pytest.raises(UsageError, match="SV_TEST_QDRANT_KEY"):
        server.backup(DirectorySink(tmp_path / "bk4"))
    import os
    os.environ["SV_TEST_QDRANT_KEY"] = "qdrant-secret-Kilo-5521"
    try:
        with pytest.raises(SourceUnavailable, match="cannot reach") as err:
            server.backup(DirectorySink(tmp_path / "bk5"))
        assert "qdrant-secret" not in str(err.value)
        probe = server.probe()
        assert probe.reachable is False and "qdrant-secret" not in probe.detail
    finally:
        del os.environ["SV_TEST_QDRANT_KEY"]


def test_payload_indexes_of_a_server_backup_are_recreated(store: Path, tmp_path: Path) -> None:
    """Local mode reports no payload indexes, so a backup from a server is simulated by
    adding them to the manifest: the restore creates each one (local mode keeps the text
    indexes with scoring, which it records in its meta.json, and ignores the others)."""
    src = QdrantSource(path=store, collections=["plain"])
    _, _snap = backup(src, tmp_path)
    snap_dir = tmp_path / "bk"

    def add_indexes(raw: bytes) -> bytes:
        manifest = json.loads(raw)
        manifest["collections"][0]["payload_schema"] = {
            "k": {"data_type": "keyword"},
            "body": {"data_type": "text", "params": {"type": "text", "tokenizer": "word",
                                                    "scoring": {"type": "bm25"}}}}
        return json.dumps(manifest).encode()

    _corrupt(snap_dir, MANIFEST, add_indexes)
    src.restore(DirectorySource(snap_dir), target={"to": "prefix:ix_"})
    meta = json.loads((store / "meta.json").read_text())
    assert set(meta["text_indexes"]["ix_plain"]) == {"body"}


def test_restore_target_forms_and_schema(tmp_path: Path) -> None:
    assert get_source_class("qdrant") is QdrantSource
    src = QdrantSource(path=tmp_path / "q")
    for bad in ({"to": "http://127.0.0.1:6333"}, {"to": "prefix:"}, {"to": "#a*b*"},
                {"path": "x"}):
        with pytest.raises(UsageError):
            src.describe_target(bad)
    assert "drill_*" in src.describe_target({"to": "prefix:drill_"})
    with pytest.raises(UsageError):
        QdrantSource()
    with pytest.raises(UsageError):
        QdrantSource(path="x", api_key_env="K")
    ok = check_text("version: 1\nrepository: {location: /tmp/r}\ncomponents:\n"
                    "  v: {type: qdrant, path: /srv/q, collections: [chunks]}\n")
    assert ok.ok, ok
    both = check_text("version: 1\nrepository: {location: /tmp/r}\ncomponents:\n"
                      "  v: {type: qdrant, path: /srv/q, url: 'http://h:6333'}\n")
    assert not both.ok
    secret = check_text("version: 1\nrepository: {location: /tmp/r}\ncomponents:\n"
                        "  v: {type: qdrant, url: 'http://h:6333', api_key: abc}\n")
    assert not secret.ok and "abc" not in str(secret)
    shutil.rmtree(tmp_path / "q", ignore_errors=True)
