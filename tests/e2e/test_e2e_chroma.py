"""A chroma component end to end: stackvault.yaml naming a `chroma run` server, backup, damage
(records deleted and changed, a collection dropped), `restore --yes` with verification,
refusal of a non-empty target without --force, and `restore --to` into a folder under other
names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
from e2e_support import PASSWORD, SV, base_env

from support.chroma_server import ChromaServer, start, stop


def fill(client: Any) -> None:
    rng = np.random.default_rng(11)
    docs = client.create_collection("chunks", embedding_function=None,
                                    metadata={"model": "all-minilm", "dim": 16},
                                    configuration={"hnsw": {"space": "cosine"}})
    docs.add(ids=[f"chunk-{i}" for i in range(1500)],
             embeddings=rng.normal(size=(1500, 16)).astype(np.float32),
             documents=[f"Absatz {i}: Grüße 😀" for i in range(1500)],
             metadatas=[{"doc": i // 10, "page": i % 10, "score": i / 3, "ok": i % 2 == 0}
                        for i in range(1500)])
    faq = client.create_collection("faq", embedding_function=None)
    faq.add(ids=["q1", "q2"], embeddings=[[0.1, 0.2], [0.3, 0.4]],
            documents=["how?", "why?"])


def state(client: Any) -> dict[str, Any]:
    out = {}
    for col in client.list_collections():
        got = client.get_collection(col.name, embedding_function=None).get(
            include=["documents", "metadatas"])
        out[col.name] = sorted(zip(got["ids"], got["documents"],
                                   [sorted((m or {}).items()) for m in got["metadatas"]],
                                   strict=True))
    return out


@pytest.fixture
def chroma_stack(tmp_path: Path) -> Iterator[tuple[SV, ChromaServer]]:
    server = start(tmp_path / "chroma")
    try:
        (tmp_path / "stackvault.yaml").write_text(f"""
version: 1
repository:
  location: {tmp_path / "repo"}
components:
  vectors:
    type: chroma
    host: 127.0.0.1
    port: {server.port}
    batch_size: 400
""")
        sv = SV(None, base_env(STACKVAULT_PASSWORD=PASSWORD,
                               STACKVAULT_CONFIG=str(tmp_path / "stackvault.yaml")))
        sv.ok("init")
        yield sv, server
    finally:
        stop(server)


def test_backup_damage_restore_and_restore_elsewhere(
        chroma_stack: tuple[SV, ChromaServer], tmp_path: Path) -> None:
    sv, server = chroma_stack
    client = server.client()
    fill(client)
    before = state(client)
    out = sv.json("backup")
    assert out["complete"] is True and list(out["components"]) == ["vectors"]

    chunks = client.get_collection("chunks", embedding_function=None)
    chunks.delete(ids=[f"chunk-{i}" for i in range(0, 1500, 3)])
    chunks.update(ids=["chunk-1"], documents=["overwritten"], embeddings=[[0.5] * 16])
    client.delete_collection("faq")
    assert state(client) != before

    plan = sv.json("restore", "--dry-run")
    assert "ChromaDB server http://127.0.0.1" in plan["plan"]["steps"][0]["target_description"]
    refused = sv("--json", "restore", "--yes", "--no-safety-snapshot")
    assert refused.rc != 0 and "--force" in refused.text + refused.err
    assert state(client)["chunks"] != before["chunks"]  # untouched by the refusal

    report = sv.json("restore", "--yes", "--force")
    assert report["ok"] is True and report["components"][0]["verified"] is True, report
    assert report["safety_snapshot"]
    assert state(client) == before

    copy = tmp_path / "copy"
    elsewhere = sv.json("restore", "--component", "vectors.chunks", "--to",
                        f"vectors={copy}#restored-*", "--yes")
    assert elsewhere["ok"] is True and elsewhere["safety_snapshot"] is None, elsewhere
    local = chromadb.PersistentClient(path=str(copy),
                                      settings=chromadb.Settings(anonymized_telemetry=False))
    assert [c.name for c in local.list_collections()] == ["restored-chunks"]
    got = state(local)
    assert got["restored-chunks"] == before["chunks"]


def test_drill_into_renamed_collections_with_a_search_probe(
        chroma_stack: tuple[SV, ChromaServer], tmp_path: Path) -> None:
    sv, server = chroma_stack
    client = server.client()
    fill(client)
    cfg = tmp_path / "stackvault.yaml"
    cfg.write_text(cfg.read_text() + "drill:\n  probes:\n    - component: vectors\n"
                   "      search: {collection: chunks, near_id: chunk-7, top: 3}\n"
                   "      expect: chunk-7\n")
    sv.ok("backup")
    before = state(client)
    out = sv.json("drill")
    assert out["ok"] is True, out
    assert "svdrill-" in out["components"][0]["target"]
    assert out["probes"][0]["ok"] is True and "chunk-7" in out["probes"][0]["found"]
    assert state(client) == before  # the drill's collections are gone, the live ones intact
