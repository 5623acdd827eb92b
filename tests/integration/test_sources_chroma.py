"""The chroma data source against real ChromaDB: PersistentClient folders and `chroma run`
servers started here on loopback ports. Round trips in both modes and across them (folder ->
server, server -> folder), collections with metadata and configuration (cosine, l2, ip, legacy
`hnsw:*` metadata, empty), unicode ids and documents, metadatas of every allowed type, a few
thousand records in pages, restore under other names compared record by record, sample
queries (also against an approximate index that answers them differently after a restore),
refusal to overwrite unless forced, `tables`, damaged and truncated artifacts with
nothing half restored, an unreachable server, tokens, config and the install hint."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest

from stackvault.config.loader import check_text
from stackvault.errors import SourceCorrupt, SourceError, SourceInUse, SourceUnavailable, UsageError
from stackvault.sources.base import DataSource
from stackvault.sources.chroma import INDEX, ChromaSource, artifact_name
from stackvault.sources.chroma.stream import Reader
from stackvault.sources.chroma.verify import check_samples, exact_answer, same_answer
from stackvault.sources.directory import DirectorySink, DirectorySource
from stackvault.sources.registry import get_source_class, register, unregister
from support.chroma_server import ChromaServer, start, stop

TOKEN = "chroma-Tok-Test-Juliet-5523"
DIM = 24


# --- stores and data -------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ChromaServer]:
    s = start(tmp_path / "server")
    try:
        yield s
    finally:
        stop(s)


def folder_client(path: Path) -> Any:
    # a new Settings each time: PersistentClient writes the folder into the object it gets,
    # and chromadb refuses a second client for a folder whose cached settings differ
    return chromadb.PersistentClient(path=str(path),
                                     settings=chromadb.Settings(anonymized_telemetry=False))


def fill(client: Any, seed: int = 7, n: int = 2500) -> None:
    """Four collections: cosine with hnsw settings and metadata (n records), l2 (300), ip made
    the legacy way (`hnsw:space` in metadata, 40), and an empty one."""
    rng = np.random.default_rng(seed)
    docs = client.create_collection(
        "docs-cosine", embedding_function=None,
        metadata={"owner": "rag-team", "version": 3, "ratio": 0.25, "public": True},
        configuration={"hnsw": {"space": "cosine", "ef_construction": 150,
                                "max_neighbors": 24, "ef_search": 80}})
    words = ["naïve", "日本語", "emoji 😀", "Ελληνικά", "plain", "", "line\nbreak", "tab\t"]
    ids = [f"doc-{i}" if i % 10 else f"ключ-{i}-é" for i in range(n)]
    for start_ in range(0, n, 1000):
        part = range(start_, min(n, start_ + 1000))
        docs.add(ids=[ids[i] for i in part],
                 embeddings=rng.normal(size=(len(part), DIM)).astype(np.float32),
                 documents=[None if i % 13 == 0 else f"{words[i % len(words)]} {i}"
                            for i in part],
                 metadatas=[None if i % 11 == 0 else
                            {"s": f"wört-{i % 7}", "i": i - 1000, "f": i / 7.0, "b": i % 2 == 0,
                             "big": 2**53 + i, "tiny": 1e-300 * (i + 1), "one": 1.0}
                            for i in part],
                 uris=[f"s3://media/{i}.pdf" if i % 4 == 0 else None for i in part])
    notes = client.create_collection("notes-l2", embedding_function=None,
                                     configuration={"hnsw": {"space": "l2"}})
    notes.add(ids=[f"n{i}" for i in range(300)],
              embeddings=(rng.normal(size=(300, 8)) * 100).astype(np.float32),
              documents=[f"note {i}" for i in range(300)])
    legacy = client.create_collection("legacy.ip", embedding_function=None,
                                      metadata={"hnsw:space": "ip", "team": "search"})
    legacy.add(ids=[f"x{i}" for i in range(40)],
               embeddings=rng.uniform(-1, 1, size=(40, 4)).astype(np.float32),
               metadatas=[{"k": i} for i in range(40)])
    client.create_collection("empty-one", embedding_function=None)


def contents(client: Any, name: str) -> tuple[dict[str, Any], dict[str, tuple[Any, ...]]]:
    """A collection's settings and its records by id (embeddings as float32 arrays)."""
    col = client.get_collection(name, embedding_function=None)
    got = col.get(include=["embeddings", "documents", "metadatas", "uris"])
    conf = dict(col.configuration_json)
    conf.pop("embedding_function", None)
    records = {}
    for i, rid in enumerate(got["ids"]):
        records[rid] = (got["documents"][i], got["metadatas"][i] or None, got["uris"][i],
                        np.asarray(got["embeddings"][i], dtype=np.float32))
    return {"metadata": col.metadata, "configuration": conf}, records


def assert_same(a: Any, a_name: str, b: Any, b_name: str) -> None:
    """Record by record: ids, documents, metadatas (values and types) and uris equal,
    embeddings within float32 noise; and the same metadata and configuration."""
    sa, ra = contents(a, a_name)
    sb, rb = contents(b, b_name)
    assert sa == sb
    assert sorted(ra) == sorted(rb)
    for rid, (doc, meta, uri, emb) in ra.items():
        doc2, meta2, uri2, emb2 = rb[rid]
        assert (doc, uri) == (doc2, uri2), rid
        assert (meta is None) == (meta2 is None), rid
        if meta:  # same keys and types; floats may be one float64 ulp off (chromadb's doing)
            assert {k: type(v) for k, v in meta.items()} == \
                {k: type(v) for k, v in meta2.items()}, rid
            for k, v in meta.items():
                assert v == meta2[k] or (isinstance(v, float)
                                         and math.isclose(v, meta2[k], rel_tol=1e-12)), rid
        np.testing.assert_allclose(emb2, emb, rtol=1e-5, atol=1e-30)


def answers(client: Any, name: str, queries: np.ndarray) -> list[list[str]]:
    col = client.get_collection(name, embedding_function=None)
    return [list(ids) for ids in col.query(query_embeddings=queries, n_results=5)["ids"]]


def backup(source: ChromaSource, where: Path) -> Any:
    result = source.backup(DirectorySink(where))
    return result


def names(client: Any) -> list[str]:
    return sorted(c.name for c in client.list_collections())


COLLECTIONS = ["docs-cosine", "empty-one", "legacy.ip", "notes-l2"]


# --- round trips -------------------------------------------------------------------------------


def test_folder_round_trip_renamed_and_into_a_server(tmp_path: Path, server: ChromaServer
                                                      ) -> None:
    folder = tmp_path / "chroma"
    client = folder_client(folder)
    fill(client)
    source = ChromaSource(path=str(folder), batch_size=300)
    assert isinstance(source, DataSource)
    probe = source.probe()
    assert probe.reachable and probe.version == chromadb.__version__
    assert "docs-cosine 2500 records" in probe.detail
    res = backup(source, tmp_path / "art")
    assert [a.name for a in res.artifacts] == [artifact_name(i) for i in range(4)] + [INDEX]
    assert res.fingerprint.counts == {"docs-cosine": 2500, "empty-one": 0, "legacy.ip": 40,
                                      "notes-l2": 300}
    assert res.fingerprint.compare(source.fingerprint()) == []
    samples = res.extra["sample_queries"]["docs-cosine"]
    assert len(samples) == 3 and all(len(s["ids"]) == 5 for s in samples)

    # under another name, in the same folder, next to the originals
    target = {"to": "#restored-*"}
    assert "renamed by 'restored-*'" in source.describe_target(target)
    source.restore(DirectorySource(tmp_path / "art"), target=target)
    assert names(client) == sorted(COLLECTIONS + [f"restored-{n}" for n in COLLECTIONS])
    for n in COLLECTIONS:
        assert_same(client, n, client, f"restored-{n}")
    assert res.fingerprint.compare(source.fingerprint(target=target)) == []
    # a fresh adapter (no memory of the restore) finds the same through the pattern
    fresh = ChromaSource(path=str(folder))
    assert res.fingerprint.compare(fresh.fingerprint(target=target)) == []

    # into the other mode: a server
    to_server = {"to": server.url}
    source.restore(DirectorySource(tmp_path / "art"), target=to_server)
    remote = server.client()
    assert names(remote) == COLLECTIONS
    for n in COLLECTIONS:
        assert_same(client, n, remote, n)
    assert res.fingerprint.compare(source.fingerprint(target=to_server)) == []
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(4, DIM)).astype(np.float32)
    assert answers(client, "docs-cosine", queries) == answers(remote, "docs-cosine", queries)


def test_server_round_trip_into_a_folder_and_the_same_server(tmp_path: Path,
                                                             server: ChromaServer) -> None:
    remote = server.client()
    fill(remote, seed=3, n=1200)
    source = ChromaSource(host="127.0.0.1", port=server.port, batch_size=250)
    assert source.probe().reachable
    res = backup(source, tmp_path / "art")
    assert res.fingerprint.compare(source.fingerprint()) == []
    assert res.versions["chroma"]

    folder = tmp_path / "copy"
    source.restore(DirectorySource(tmp_path / "art"), target={"to": str(folder)})
    local = folder_client(folder)
    for n in COLLECTIONS:
        assert_same(remote, n, local, n)
    assert res.fingerprint.compare(ChromaSource(path=str(folder)).fingerprint()) == []

    # one collection under a new name on the same server
    source.restore(DirectorySource(tmp_path / "art"), target={"to": "#notes-v2"},
                   tables=["notes-l2"])
    assert_same(remote, "notes-l2", remote, "notes-v2")
    assert "svtmp" not in " ".join(names(remote))


def test_the_source_is_left_alone_and_every_page_is_read(tmp_path: Path) -> None:
    """Paging: batch sizes that divide the count, do not, and exceed it give one backup."""
    folder = tmp_path / "chroma"
    client = folder_client(folder)
    col = client.create_collection("paged", embedding_function=None)
    col.add(ids=[f"r{i}" for i in range(1000)],
            embeddings=np.arange(4000, dtype=np.float32).reshape(1000, 4))
    digests = set()
    for batch in (1000, 333, 250, 5000):
        res = backup(ChromaSource(path=str(folder), batch_size=batch), tmp_path / f"a{batch}")
        assert res.fingerprint.counts == {"paged": 1000}
        digests.add(res.fingerprint.digests["paged"])
    assert len(digests) == 1


# --- sample queries against an approximate index ------------------------------------------------

# an HNSW index this sparse misses neighbours: built again from the same records in another
# order, it answers the sample queries differently (so it did in every run with 3,000 vectors)
COARSE = {"ef_search": 10, "ef_construction": 10, "max_neighbors": 4}


def coarse_collection(client: Any, space: str = "l2", n: int = 3000) -> Any:
    """`n` random 384-dimensional vectors, added in shuffled batches."""
    col = client.create_collection("coarse", embedding_function=None,
                                   configuration={"hnsw": {**COARSE, "space": space}})
    rng = np.random.default_rng(11)
    emb = rng.normal(size=(n, 384)).astype(np.float32)
    order = rng.permutation(n)
    for part in np.array_split(order, 3):
        col.add(ids=[f"v{i}" for i in part], embeddings=emb[part])
    return col


def trailer_samples(art: Path) -> list[dict[str, Any]]:
    with open(art / artifact_name(0), "rb") as f:
        return [v for k, v in Reader(f, "test").frames() if k == "end"][0]["samples"]


def test_an_approximate_index_does_not_fail_a_correct_restore(tmp_path: Path,
                                                              server: ChromaServer) -> None:
    folder = tmp_path / "chroma"
    client = folder_client(folder)
    coarse_collection(client)
    source = ChromaSource(path=str(folder), batch_size=700)
    res = backup(source, tmp_path / "art")
    samples = trailer_samples(tmp_path / "art")
    for target, restored in (({"to": "#copy-*"}, lambda: client),
                             ({"to": server.url}, server.client)):
        source.restore(DirectorySource(tmp_path / "art"), target=target)
        assert res.fingerprint.compare(source.fingerprint(target=target)) == []
        name = "copy-coarse" if target["to"].startswith("#") else "coarse"
        col = restored().get_collection(name, embedding_function=None)
        got = [col.query(query_embeddings=[s["embedding"]], n_results=5,
                         include=["distances"]) for s in samples]
        # the case at hand: the restored index does answer differently
        assert not all(same_answer(s["ids"], s["distances"], g["ids"][0], g["distances"][0])
                       for s, g in zip(samples, got, strict=True))


@pytest.mark.parametrize("space", ["l2", "cosine", "ip"])
def test_a_sample_record_restored_differently_fails(tmp_path: Path, space: str) -> None:
    folder = tmp_path / "chroma"
    client = folder_client(folder)
    coarse_collection(client, space, n=600)
    source = ChromaSource(path=str(folder))
    backup(source, tmp_path / "art")
    samples = trailer_samples(tmp_path / "art")
    source.restore(DirectorySource(tmp_path / "art"), target={"to": "#copy-*"})
    copy = client.get_collection("copy-coarse", embedding_function=None)
    check_samples(copy, samples, space, "copy")
    assert all(exact_answer(copy, space, s) for s in samples)  # chromadb's distances
    rid = samples[0]["ids"][1]
    emb = np.asarray(copy.get(ids=[rid], include=["embeddings"])["embeddings"][0])
    copy.update(ids=[rid], embeddings=[emb * 1.01 + 0.01])  # a little off
    with pytest.raises(SourceCorrupt, match="sample query"):
        check_samples(copy, samples, space, "copy")
    copy.delete(ids=[rid])
    with pytest.raises(SourceCorrupt, match="sample query"):
        check_samples(copy, samples, space, "copy")


# --- refusals ----------------------------------------------------------------------------------


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    folder = tmp_path / "chroma"
    client = folder_client(folder)
    fill(client, n=200)
    source = ChromaSource(path=str(folder))
    res = backup(source, tmp_path / "art")
    docs = client.get_collection("docs-cosine", embedding_function=None)
    docs.delete(ids=[f"doc-{i}" for i in range(1, 50)])
    docs.add(ids=["intruder"], embeddings=[[0.5] * DIM], documents=["not in the backup"])

    with pytest.raises(SourceInUse) as e:
        source.restore(DirectorySource(tmp_path / "art"))
    assert "docs-cosine holds 156 records" in str(e.value) and "--force" in str(e.value)
    assert docs.count() == 156  # untouched

    source.restore(DirectorySource(tmp_path / "art"), force=True)
    assert res.fingerprint.compare(source.fingerprint()) == []
    assert "svtmp" not in " ".join(names(client))

    # force_restore on the component does the same
    client.get_collection("notes-l2", embedding_function=None).delete(ids=["n1"])
    ChromaSource(path=str(folder), force_restore=True).restore(DirectorySource(tmp_path / "art"))
    assert res.fingerprint.compare(source.fingerprint()) == []


def test_an_empty_existing_collection_is_replaced_without_force(tmp_path: Path) -> None:
    folder = tmp_path / "chroma"
    client = folder_client(folder)
    fill(client, n=100)
    source = ChromaSource(path=str(folder), collections=["notes-l2"])
    res = backup(source, tmp_path / "art")
    client.delete_collection("notes-l2")
    client.create_collection("notes-l2", embedding_function=None,
                             configuration={"hnsw": {"space": "ip"}})
    source.restore(DirectorySource(tmp_path / "art"))
    assert res.fingerprint.compare(source.fingerprint()) == []
    assert client.get_collection("notes-l2").configuration_json["hnsw"]["space"] == "l2"


def test_tables_select_collections(tmp_path: Path) -> None:
    folder = tmp_path / "chroma"
    fill(folder_client(folder), n=100)
    source = ChromaSource(path=str(folder))
    res = backup(source, tmp_path / "art")
    target = {"to": str(tmp_path / "other")}
    source.restore(DirectorySource(tmp_path / "art"), target=target,
                   tables=["legacy.ip", "notes-l2"])
    assert names(folder_client(tmp_path / "other")) == ["legacy.ip", "notes-l2"]
    assert res.fingerprint.restrict(
        ["legacy.ip", "embeddings.legacy.ip", "settings.legacy.ip", "notes-l2",
         "embeddings.notes-l2", "settings.notes-l2"]).compare(
        source.fingerprint(target=target)) == []
    with pytest.raises(UsageError, match="no collection nope"):
        source.restore(DirectorySource(tmp_path / "art"), target=target, tables=["nope"])
    with pytest.raises(UsageError, match="2 collections are restored"):
        source.restore(DirectorySource(tmp_path / "art"), target={"to": "#one-name"},
                       tables=["legacy.ip", "notes-l2"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_artifact_is_refused_with_nothing_half_restored(tmp_path: Path,
                                                                damage: str) -> None:
    folder = tmp_path / "chroma"
    client = folder_client(folder)
    fill(client, n=1500)
    source = ChromaSource(path=str(folder), batch_size=200)
    backup(source, tmp_path / "art")
    # the docs collection is artifact 0; damage the l2 collection (artifact 3): the first
    # collections are built completely before the damage is found, and must go again
    path = tmp_path / "art" / artifact_name(3)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x40
    else:
        data = bytearray(b"not a chroma stream at all")
    path.write_bytes(bytes(data))
    target = tmp_path / "target"
    tclient = folder_client(target)
    tclient.create_collection("bystander", embedding_function=None).add(
        ids=["b"], embeddings=[[1.0, 2.0]])
    with pytest.raises(SourceCorrupt):
        source.restore(DirectorySource(tmp_path / "art"), target={"to": str(target)})
    assert names(tclient) == ["bystander"]

    # same with --force into the live folder: the originals are all still there
    before = source.fingerprint()
    with pytest.raises(SourceCorrupt):
        source.restore(DirectorySource(tmp_path / "art"), force=True)
    assert names(client) == COLLECTIONS
    assert source.fingerprint().compare(before) == []


def test_unreachable_server_and_missing_folder(tmp_path: Path, monkeypatch: Any) -> None:
    from support.chroma_server import free_port

    port = free_port()
    monkeypatch.setenv("SV_CHROMA_TOKEN", TOKEN)
    source = ChromaSource(host="127.0.0.1", port=port, token_env="SV_CHROMA_TOKEN")
    with pytest.raises(SourceUnavailable) as e:
        source.backup(DirectorySink(tmp_path / "art"))
    assert f"127.0.0.1:{port}" in str(e.value) and "chroma run" in str(e.value.hint)
    assert TOKEN not in str(e.value)
    probe = source.probe()
    assert not probe.reachable and "cannot reach" in probe.detail
    with pytest.raises(SourceUnavailable):
        source.restore(DirectorySource(tmp_path / "art"))
    assert "not reachable now" in ChromaSource(host="127.0.0.1", port=port,
                                               collections=["a-b"]).describe_target()

    missing = ChromaSource(path=str(tmp_path / "nothing-here"))
    with pytest.raises(SourceUnavailable, match="chroma.sqlite3 not found"):
        missing.backup(DirectorySink(tmp_path / "art2"))
    assert not (tmp_path / "nothing-here").exists()  # not created by looking


def test_token_env(tmp_path: Path, server: ChromaServer, monkeypatch: Any) -> None:
    server.client().create_collection("tok-test", embedding_function=None).add(
        ids=["a"], embeddings=[[1.0]])
    source = ChromaSource(host="127.0.0.1", port=server.port, token_env="SV_CHROMA_TOKEN")
    monkeypatch.delenv("SV_CHROMA_TOKEN", raising=False)
    with pytest.raises(UsageError, match="SV_CHROMA_TOKEN"):
        source.backup(DirectorySink(tmp_path / "art"))
    monkeypatch.setenv("SV_CHROMA_TOKEN", TOKEN)  # sent; this server has no auth
    res = source.backup(DirectorySink(tmp_path / "art2"))
    assert res.fingerprint.counts == {"tok-test": 1}
    assert TOKEN not in repr(res.to_dict())


def test_configured_collections_and_unknown_ones(tmp_path: Path) -> None:
    folder = tmp_path / "chroma"
    fill(folder_client(folder), n=50)
    res = backup(ChromaSource(path=str(folder), collections=["notes-l2"]), tmp_path / "a")
    assert list(res.fingerprint.counts) == ["notes-l2"]
    with pytest.raises(SourceError, match="no collection nope"):
        backup(ChromaSource(path=str(folder), collections=["nope"]), tmp_path / "b")


# --- pieces --------------------------------------------------------------------------------------


def test_target_forms(tmp_path: Path) -> None:
    source = ChromaSource(path=str(tmp_path / "c"), collections=["docs"])
    for bad in ({"path": "x"}, {"to": "#a*b*"}, {"to": "ftp://h:1"}, {"to": "#x"},
                {"to": "http://user:pw@h:1"}, {"to": "#"}):
        with pytest.raises(UsageError):
            source.describe_target(bad)
    assert "ChromaDB server http://h:9000" in source.describe_target({"to": "http://h:9000"})


def test_same_answer_tolerates_ties_only() -> None:
    assert same_answer(["a", "b"], [0.0, 0.5], ["a", "b"], [0.0, 0.5000001])
    assert same_answer(["a", "b", "c"], [0.0, 0.5, 0.5], ["a", "c", "b"], [0.0, 0.5, 0.5])
    assert not same_answer(["a", "b"], [0.0, 0.5], ["b", "a"], [0.0, 0.5])
    assert not same_answer(["a", "b"], [0.0, 0.5], ["a", "c"], [0.0, 0.9])


def test_registry_and_config(tmp_path: Path) -> None:
    assert get_source_class("chroma") is ChromaSource
    ok = check_text(f"""
version: 1
repository: {{location: {tmp_path / "repo"}}}
components:
  vectors: {{type: chroma, path: ./chroma, collections: [docs]}}
  remote: {{type: chroma, host: 127.0.0.1, port: 8001, token_env: CHROMA_TOKEN}}
""")
    assert ok.ok, ok
    for bad, words in (("{type: chroma}", "exactly one of"),
                       ("{type: chroma, path: x, host: y}", "exactly one of"),
                       ("{type: chroma, path: x, token_env: T}", "token_env is for a server"),
                       ("{type: chroma, path: x, collections: [ab]}", "3-512"),
                       ("{type: chroma, host: h, token: abc}", "never written")):
        res = check_text(f"version: 1\nrepository: {{location: /r}}\ncomponents:\n  v: {bad}\n")
        assert not res.ok and words in str(res), (bad, str(res))
        assert "abc" not in str(res).replace("a-z", "")


def test_missing_package_gives_the_install_hint(tmp_path: Path, monkeypatch: Any) -> None:
    """An adapter whose dependency is absent (here a made-up module name, imported for real)
    is refused with the extra's install hint, not an ImportError."""
    (tmp_path / "sv_fake_chroma_adapter.py").write_text(
        "import chromadb_not_installed_anywhere_zz  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register("chroma-fake", "sv_fake_chroma_adapter:ChromaSource", origin="built-in",
             extra="chroma", packages={"chromadb_not_installed_anywhere_zz": "chromadb"})
    try:
        with pytest.raises(UsageError) as e:
            get_source_class("chroma-fake")
        assert "needs chromadb, which is not installed" in str(e.value)
        assert e.value.hint == "pip install 'stackvault[chroma]'"
    finally:
        unregister("chroma-fake")
        sys.modules.pop("sv_fake_chroma_adapter", None)


def test_a_folder_already_open_with_other_settings(tmp_path: Path) -> None:
    """chromadb keeps one system per folder per process: an application that opened the
    folder with its own settings does not stop the adapter."""
    folder = tmp_path / "chroma"
    app = chromadb.PersistentClient(path=str(folder), settings=chromadb.Settings(
        anonymized_telemetry=False, allow_reset=True))
    app.create_collection("app-coll", embedding_function=None).add(ids=["a"],
                                                                    embeddings=[[1.0, 0.0]])
    source = ChromaSource(path=str(folder))
    res = backup(source, tmp_path / "art")
    assert res.fingerprint.counts == {"app-coll": 1}
    source.restore(DirectorySource(tmp_path / "art"), target={"to": "#copy-*"})
    assert names(app) == ["app-coll", "copy-app-coll"]
