"""`stackvault quickstart` (README command one): an embedded RAG stack (SQLite, Qdrant local
mode, ChromaDB folder, files) is built, backed up, damaged, restored, verified and drilled,
with no server and no network; then the stack it leaves behind works with the other
commands."""

from __future__ import annotations

from pathlib import Path

from e2e_support import SV, base_env


def test_quickstart_round_trip_and_the_stack_it_leaves(tmp_path: Path) -> None:
    sv = SV(None, base_env())
    work = tmp_path / "qs"
    out = sv.json("quickstart", "--workdir", str(work), timeout=300)
    assert out["ok"] is True, out
    assert out["damage_seen"] is True and out["identical_to_before"] is True
    assert {c["component"] for c in out["restore"]["components"]} == {
        "app_db", "vectors", "chroma", "sources"}
    assert all(c["verified"] for c in out["restore"]["components"])
    assert out["restore"]["safety_snapshot"]
    assert out["drill"]["ok"] is True and out["drill"]["rto_seconds"] > 0
    assert (work / "repository-password").stat().st_mode & 0o777 == 0o600

    # the stack it wrote is a normal stack: its config validates, status is healthy
    cfg = str(work / "stackvault.yaml")
    assert "ok: 4 components" in sv.ok("-c", cfg, "config", "validate").text
    status = sv.json("-c", cfg, "status")
    assert status["ok"] is True and status["last_drill"]["ok"] is True
    shown = sv.json("-c", cfg, "show")["manifest"]
    assert shown["complete"] is True

    again = sv("quickstart", "--workdir", str(work))
    assert again.rc == 2 and "not empty" in again.err
