"""Stack snapshots end to end: stackvault.yaml with SQLite + files; backup, damage, restore
(with plan, confirmation, safety snapshot, verification), restore elsewhere, one table,
export with SHA256SUMS, and partial failure."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from pathlib import Path

import pytest
from e2e_support import PASSWORD, SV, base_env


def db_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall()
                for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                        "ORDER BY name")}
    finally:
        con.close()


def folder_state(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def stack(tmp_path: Path) -> tuple[SV, Path]:
    db = tmp_path / "app.db"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE docs(id INTEGER PRIMARY KEY, title TEXT, body BLOB);
        CREATE TABLE chunks(id INTEGER PRIMARY KEY, doc_id INTEGER, text TEXT, score REAL);
        CREATE INDEX chunks_doc ON chunks(doc_id);
    """)
    con.executemany("INSERT INTO docs(title, body) VALUES (?, ?)",
                    [(f"Dokument {i} – ünïcødé", bytes(range(i % 256)) * 7) for i in range(300)])
    con.executemany("INSERT INTO chunks(doc_id, text, score) VALUES (?, ?, ?)",
                    [(i % 300, f"chunk {i} " * 20, i / 7) for i in range(3000)])
    con.commit()
    con.close()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / ".env").write_text("MODEL=all-minilm\n")
    (conf / "settings.yaml").write_text("chunk_size: 512\n")
    (conf / "cache").mkdir()
    (conf / "cache" / "skip.tmp").write_text("not backed up\n")
    (tmp_path / "stackvault.yaml").write_text(f"""
version: 1
repository:
  location: {tmp_path / "repo"}
components:
  app_db:
    type: sqlite
    path: {db}
  config:
    type: files
    paths: [{conf}]
    exclude: ["*.tmp"]
    depends_on: [app_db]
""")
    sv = SV(None, base_env(STACKVAULT_PASSWORD=PASSWORD,
                           STACKVAULT_CONFIG=str(tmp_path / "stackvault.yaml")))
    sv.ok("init")  # location and password from stackvault.yaml and the environment
    assert (tmp_path / "repo" / "config").is_file()
    return sv, tmp_path


def test_backup_damage_restore_verifies_content(stack: tuple[SV, Path]) -> None:
    sv, d = stack
    before_db, before_conf = db_rows(d / "app.db"), folder_state(d / "conf")
    out = sv.json("backup")
    assert out["complete"] is True and set(out["components"]) == {"app_db", "config"}
    # Damage both components.
    con = sqlite3.connect(d / "app.db")
    con.execute("DELETE FROM chunks WHERE id > 10")
    con.execute("DROP TABLE docs")
    con.commit()
    con.close()
    (d / "conf" / ".env").write_text("broken\n")

    plan = sv.json("restore", "--dry-run")
    assert [s["component"] for s in plan["plan"]["steps"]] == ["app_db", "config"]
    assert db_rows(d / "app.db") != before_db  # a dry run changes nothing

    refused = sv("restore")  # no terminal, no --yes
    assert refused.rc == 2 and "--yes" in refused.err

    report = sv.json("restore", "--yes")
    assert report["ok"] is True
    assert all(c["verified"] for c in report["components"])
    assert db_rows(d / "app.db") == before_db
    restored = folder_state(d / "conf")
    assert restored == {k: v for k, v in before_conf.items() if not k.endswith(".tmp")} | {
        "cache/skip.tmp": before_conf["cache/skip.tmp"]}  # excluded file left untouched

    # The safety snapshot holds the damaged state and is never "latest".
    snaps = sv.json("snapshots")
    safety = [s for s in snaps if "safety" in s["tags"]]
    assert len(safety) == 1
    again = sv.json("restore", "--dry-run")
    assert again["plan"]["snapshot"] != safety[0]["id"]
    rollback = sv.json("restore", safety[0]["id"], "--yes", "--no-safety-snapshot")
    assert rollback["ok"] is True
    assert "docs" not in db_rows(d / "app.db")


def test_restore_elsewhere_and_one_table(stack: tuple[SV, Path]) -> None:
    sv, d = stack
    original = db_rows(d / "app.db")
    sv.ok("backup")
    scratch = d / "scratch.db"
    report = sv.json("restore", "--component", "app_db", "--to", f"app_db={scratch}", "--yes")
    assert report["ok"] is True and report["safety_snapshot"] is None  # nothing overwritten
    assert db_rows(scratch) == original
    assert db_rows(d / "app.db") == original

    # Pull one deleted table back into production without touching the other.
    con = sqlite3.connect(d / "app.db")
    con.execute("DELETE FROM docs")
    con.execute("INSERT INTO chunks(doc_id, text, score) VALUES (1, 'new since backup', 0)")
    con.commit()
    con.close()
    report = sv.json("restore", "--component", "app_db.docs", "--yes")
    assert report["ok"] is True
    now = db_rows(d / "app.db")
    assert now["docs"] == original["docs"]
    assert len(now["chunks"]) == len(original["chunks"]) + 1


def test_export_is_checkable_with_sha256sum(stack: tuple[SV, Path]) -> None:
    sv, d = stack
    sv.ok("backup")
    for component in ("app_db", "config"):
        out = d / f"export-{component}"
        sv.ok("export", "--component", component, "--out", str(out))
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    assert db_rows(d / "export-app_db" / "db.sqlite3") == db_rows(d / "app.db")
    again = sv("export", "--component", "app_db", "--out", str(d / "export-app_db"))
    assert again.rc == 2 and "not empty" in again.err


def test_partial_failure_is_marked_and_skipped_by_latest(stack: tuple[SV, Path]) -> None:
    sv, d = stack
    good = sv.json("backup")["snapshot"]
    (d / "app.db").rename(d / "app.db.moved")
    res = sv("--json", "backup")
    assert res.rc == 3, str(res)
    out = res.json()
    assert out["complete"] is False and out["components"]["app_db"]["ok"] is False
    assert out["components"]["config"]["ok"] is True
    snaps = {s["id"]: s for s in sv.json("snapshots")}
    assert "partial" in snaps[out["snapshot"]]["tags"]
    # latest for app_db is the last complete one; config alone may come from the partial one.
    assert sv.json("restore", "--component", "app_db", "--to",
                   f"app_db={d / 'x.db'}", "--dry-run")["plan"]["snapshot"] == good
    assert sv.json("restore", "--component", "config", "--dry-run")["plan"]["snapshot"] == \
        out["snapshot"]


def test_bad_config_and_unknown_component(stack: tuple[SV, Path]) -> None:
    sv, d = stack
    res = sv("backup", "--component", "nope")
    assert res.rc == 2 and "unknown component" in res.err
    (d / "stackvault.yaml").write_text("version: 1\nrepository: {location: x}\ncomponents:\n"
                                       "  a: {type: sqlite}\n  b: {type: files, paths: []}\n")
    bad = sv("backup")
    assert bad.rc == 2
    assert "components.a" in bad.err and "components.b" in bad.err


def test_components_are_backed_up_concurrently(stack: tuple[SV, Path]) -> None:
    """Each component's pre hook waits until the other one's has started: this can only
    succeed when the two components run at the same time."""
    sv, d = stack
    cfg = d / "stackvault.yaml"

    def hook(mine: str, other: str) -> str:
        wait = (f"touch {d / mine}; for i in $(seq 1 100); do [ -e {d / other} ] && exit 0; "
                "sleep 0.1; done; exit 1")
        return f"    hooks:\n      pre:\n        - command: '{wait}'\n"

    text = cfg.read_text()
    text = text.replace("    path: ", hook("a.started", "b.started") + "    path: ", 1)
    text = text.replace("    paths: ", hook("b.started", "a.started") + "    paths: ", 1)
    cfg.write_text(text)
    out = sv.json("backup")
    assert out["complete"] is True, out
    assert (d / "a.started").exists() and (d / "b.started").exists()
