"""A Qdrant component end to end through the CLI, in local mode: stackvault.yaml with a
qdrant folder, backup, damage (points deleted, a collection dropped), `restore --yes` with
verification, refusal of existing collections without --force, and `--to` under a prefix and
under another name."""

from __future__ import annotations

import random
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from e2e_support import PASSWORD, SV, base_env
from qdrant_client import QdrantClient, models


def fill(path: Path) -> None:
    rnd = random.Random(11)
    c = QdrantClient(path=str(path))
    try:
        c.create_collection("chunks", vectors_config=models.VectorParams(
            size=8, distance=models.Distance.COSINE),
            sparse_vectors_config={"kw": models.SparseVectorParams()})
        c.create_collection("notes", vectors_config={"v": models.VectorParams(
            size=4, distance=models.Distance.DOT)})
        c.update_collection_aliases(change_aliases_operations=[
            models.CreateAliasOperation(create_alias=models.CreateAlias(
                collection_name="chunks", alias_name="chunks-current"))])
        c.upsert("chunks", [models.PointStruct(
            id=i if i % 2 else str(uuid.UUID(int=i + 1)),
            vector={"": [rnd.gauss(0, 1) for _ in range(8)],
                    "kw": models.SparseVector(indices=[i % 50, 60 + i % 7], values=[1.0, 0.5])},
            payload={"doc": i // 10, "text": f"chunk {i} – ünï", "extra": None})
            for i in range(600)])
        c.upsert("notes", [models.PointStruct(id=i, vector={"v": [rnd.random() for _ in
                                                                  range(4)]},
                                              payload={"n": {"deep": [i, None]}})
                           for i in range(40)])
    finally:
        c.close()


def f32(vector: Any) -> Any:
    """Dense vectors at float32, Qdrant's precision (local mode hands back the float64 values
    it was given; a backup keeps float32)."""
    if isinstance(vector, dict):
        return {k: f32(v) for k, v in vector.items()}
    if isinstance(vector, list):
        return np.asarray(vector, dtype=np.float32).tolist()
    return vector


def state(path: Path, names: dict[str, str] | None = None) -> dict[str, Any]:
    c = QdrantClient(path=str(path))
    try:
        out = {}
        for t, name in (names or {x.name: x.name for x in
                                  c.get_collections().collections}).items():
            recs = c.scroll(t, limit=10_000, with_vectors=True)[0]
            out[name] = {r.id: (r.payload, f32(r.vector)) for r in recs}
        out["aliases"] = {a.alias_name: a.collection_name for a in c.get_aliases().aliases}
        return out
    finally:
        c.close()


def test_backup_damage_restore_and_restore_under_other_names(tmp_path: Path) -> None:
    store = tmp_path / "qdrant"
    fill(store)
    (tmp_path / "stackvault.yaml").write_text(f"""
version: 1
repository:
  location: {tmp_path / "repo"}
components:
  vectors:
    type: qdrant
    path: {store}
    batch_size: 100
""")
    sv = SV(None, base_env(STACKVAULT_PASSWORD=PASSWORD,
                           STACKVAULT_CONFIG=str(tmp_path / "stackvault.yaml")))
    sv.ok("init")
    before = state(store)
    out = sv.json("backup")
    assert out["complete"] is True and list(out["components"]) == ["vectors"]

    c = QdrantClient(path=str(store))
    c.delete("chunks", points_selector=models.PointIdsList(points=[1, 3, 5]))
    c.delete_collection("notes")
    c.close()

    refused = sv("--json", "restore", "--yes", "--no-safety-snapshot")
    assert refused.rc != 0 and "--force" in refused.text + refused.err
    report = sv.json("restore", "--yes", "--force")
    assert report["ok"] is True and report["components"][0]["verified"] is True, report
    assert state(store) == before

    prefixed = sv.json("restore", "--to", "vectors=prefix:drill_", "--yes")
    assert prefixed["ok"] is True and prefixed["safety_snapshot"] is None, prefixed
    got = state(store, {"drill_chunks": "chunks", "drill_notes": "notes"})
    assert got["chunks"] == before["chunks"] and got["notes"] == before["notes"]
    assert got["aliases"]["drill_chunks-current"] == "drill_chunks"

    renamed = sv.json("restore", "--component", "vectors.notes", "--to",
                      "vectors=name:notes_restored", "--yes")
    assert renamed["ok"] is True, renamed
    assert state(store, {"notes_restored": "notes"})["notes"] == before["notes"]

    # The application holds the folder: a clear message, nothing written.
    holder = QdrantClient(path=str(store))
    try:
        busy = sv("--json", "restore", "--to", "vectors=prefix:busy_", "--yes")
        assert busy.rc != 0 and "stop the application" in busy.text + busy.err
    finally:
        holder.close()
    assert not any(k.startswith("busy_") for k in state(store))


def test_drill_into_a_scratch_folder_with_a_search_probe(tmp_path: Path) -> None:
    store = tmp_path / "qdrant"
    fill(store)
    (tmp_path / "stackvault.yaml").write_text(f"""
version: 1
repository:
  location: {tmp_path / "repo"}
components:
  vectors:
    type: qdrant
    path: {store}
drill:
  probes:
    - component: vectors
      search: {{collection: chunks, near_id: 7, top: 3}}
      expect: 7
""")
    sv = SV(None, base_env(STACKVAULT_PASSWORD=PASSWORD,
                           STACKVAULT_CONFIG=str(tmp_path / "stackvault.yaml")))
    sv.ok("init")
    sv.ok("backup")
    before = state(store)
    scratch_before = set(Path(tempfile.gettempdir()).glob("stackvault-drill-*"))
    out = sv.json("drill")
    assert out["ok"] is True, out
    assert "stackvault-drill-" in out["components"][0]["target"]
    assert out["probes"][0]["ok"] is True and "7" in out["probes"][0]["found"].split(",")
    assert state(store) == before
    assert set(Path(tempfile.gettempdir()).glob("stackvault-drill-*")) == scratch_before
