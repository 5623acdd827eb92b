"""The sqlite data source against real SQLite files: round trips compared by content (types,
unicode, non-UTF-8 text, blobs, NULLs, large values, WITHOUT ROWID, generated columns, index,
view, trigger, AUTOINCREMENT, user_version), a consistent copy while another process writes,
restore elsewhere, in-use refusal and force, selective table restore, corrupted artifacts."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from stackvault.errors import (
    SourceCorrupt,
    SourceError,
    SourceInUse,
    SourceUnavailable,
    UsageError,
)
from stackvault.sources import sqlite as sqlite_mod
from stackvault.sources.base import DataSource
from stackvault.sources.directory import DirectorySink, DirectorySource
from stackvault.sources.sqlite import ARTIFACT, SqliteSource

MODES = ["wal", "delete"]


# --- data ------------------------------------------------------------------------------------


def make_db(path: Path, journal_mode: str = "wal", seed: int = 1) -> None:
    """A small but realistic application database (about 2.5 MB)."""
    rnd = random.Random(seed)
    names = ["Zoë", "Ørjan", "渡辺", "Παναγιώτης", "محمد", "👩‍💻 dev", "e\u0301cole", "plain"]
    with closing(sqlite3.connect(path)) as con:
        con.execute(f"PRAGMA journal_mode={journal_mode}")
        con.executescript("""
            PRAGMA user_version = 7;
            CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
                                email TEXT UNIQUE, score REAL, bio TEXT, active INTEGER);
            CREATE TABLE audit (id INTEGER PRIMARY KEY, action TEXT NOT NULL);
            CREATE TABLE documents (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                                    title TEXT, body TEXT, embedding BLOB, meta);
            CREATE INDEX documents_user ON documents(user_id, title);
            CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
            CREATE TABLE events (kind TEXT, payload BLOB);
            CREATE TABLE sized (a TEXT, n INTEGER GENERATED ALWAYS AS (length(a)) STORED);
            CREATE VIEW user_docs AS
                SELECT u.name, count(d.id) AS docs FROM users u
                LEFT JOIN documents d ON d.user_id = u.id GROUP BY u.id;
            CREATE TRIGGER users_audit AFTER INSERT ON users
                BEGIN INSERT INTO audit (action) VALUES ('insert ' || NEW.name); END;
        """)
        for i in range(300):
            con.execute("INSERT INTO users (name, email, score, bio, active) VALUES (?,?,?,?,?)",
                        (f"{rnd.choice(names)} {i}", None if i % 7 == 0 else f"u{i}@example.org",
                         None if i % 5 == 0 else rnd.uniform(-1e9, 1e9),
                         "".join(rnd.choice(names) for _ in range(rnd.randint(0, 40))),
                         rnd.choice([0, 1, None])))
        for i in range(120):
            body = None if i % 9 == 0 else "lorem ✓ ipsum " * rnd.randint(1, 2000)
            con.execute("INSERT INTO documents (user_id, title, body, embedding, meta) "
                        "VALUES (?,?,?,?,?)",
                        (rnd.randint(1, 300), f"doc {i} — {rnd.choice(names)}", body,
                         rnd.randbytes(1536 * 4) if i % 4 else None,
                         rnd.choice([None, 1, 2.5, "x", b"\x00\x01"])))
        con.execute("INSERT INTO documents (id, title, body, embedding) VALUES (?,?,?,?)",
                    (10_000, "large", "ß" * 600_000, rnd.randbytes(1_000_000)))
        kv = [("int", 2**62), ("neg", -1), ("float", 0.1), ("nul", None), ("blob", b"\xff\x00"),
              ("text", "NUL\x00inside"), ("empty", ""), ("emptyblob", b""), ("nan-ish", -0.0)]
        con.executemany("INSERT INTO kv VALUES (?, ?)", kv)
        con.execute("INSERT INTO kv VALUES ('not-utf8', CAST(x'c328ff' AS TEXT))")
        con.executemany("INSERT INTO events VALUES (?, ?)", [("dup", b"same")] * 3
                        + [("ev", rnd.randbytes(50)) for _ in range(50)])
        con.executemany("INSERT INTO sized (a) VALUES (?)", [("abc",), ("日本語",), (None,)])
        con.execute("DELETE FROM users WHERE id % 50 = 0")  # gaps in ids, a used sequence
        con.commit()


def dump(path: Path, view: bool = True) -> dict[str, Any]:
    """Everything a user could see: schema, pragmas, every row with its storage classes."""
    # read-write, so that closing removes the -wal and -shm a WAL database gets on opening
    with closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as con:
        con.text_factory = bytes
        out: dict[str, Any] = {
            "schema": sorted(con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")),
            "user_version": con.execute("PRAGMA user_version").fetchone(),
        }
        tables = [r[0].decode() for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for t in tables:
            cols = [r[1].decode() for r in con.execute(f'PRAGMA table_xinfo("{t}")')]
            typed = ", ".join(f'"{c}", typeof("{c}")' for c in cols)
            try:
                rows = con.execute(f'SELECT rowid, {typed} FROM "{t}"').fetchall()
            except sqlite3.OperationalError:  # WITHOUT ROWID
                rows = con.execute(f'SELECT {typed} FROM "{t}"').fetchall()
            out[t] = sorted(rows, key=repr)
        if view:
            out["view"] = sorted(con.execute("SELECT * FROM user_docs"), key=repr)
    return out


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "stackvault" in p.name
                  or p.name.endswith(("-wal", "-shm", "-journal")))


@pytest.fixture(params=MODES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "app" / "app.db"
    path.parent.mkdir()
    make_db(path, request.param)
    return path


def backup_to(src: SqliteSource, folder: Path) -> Any:
    return src.backup(DirectorySink(folder))


# --- holders: other processes using the database ----------------------------------------------

HOLDER = r"""
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("SELECT count(*) FROM sqlite_master").fetchone()
if sys.argv[2] == "txn":
    con.execute("BEGIN")
    con.execute("SELECT count(*) FROM users").fetchone()
elif sys.argv[2] == "closed":
    con.close()
print("ready", flush=True)
sys.stdin.read()
"""


@contextmanager
def holder(path: Path, how: str) -> Iterator[subprocess.Popen[str]]:
    """Another process with the database open: "idle" (connection open, no transaction),
    "txn" (a read transaction open) or "closed" (connection closed again)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), how], text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield p
    finally:
        assert p.stdin is not None
        p.stdin.close()
        p.wait(timeout=10)


# --- round trips ------------------------------------------------------------------------------


def test_round_trip_restores_content(db: Path, tmp_path: Path) -> None:
    expected = dump(db)
    src = SqliteSource(db)
    assert isinstance(src, DataSource)
    result = backup_to(src, tmp_path / "out")
    assert [a.name for a in result.artifacts] == [ARTIFACT]
    assert result.artifacts[0].kind == "file"
    assert result.versions == {"sqlite": sqlite3.sqlite_version}
    assert result.extra["user_version"] == 7
    assert result.extra["journal"] == ("wal" if db.read_bytes()[18] == 2 else "rollback")
    assert src.fingerprint().compare(result.fingerprint) == []
    assert result.fingerprint.counts["users"] == 294 and result.fingerprint.counts["kv"] == 10
    assert result.fingerprint.counts["audit"] == 300  # the trigger's rows

    with closing(sqlite3.connect(db)) as con:  # damage: rows, a table, the schema
        con.execute("DELETE FROM users WHERE id < 100")
        left = con.execute("SELECT count(*) FROM users").fetchone()[0]
        con.execute("DROP TABLE documents")
        con.execute("UPDATE kv SET v = 1 WHERE k = 'float'")
        con.execute("PRAGMA user_version = 8")
        con.commit()
    damaged = src.fingerprint()
    assert set(result.fingerprint.compare(damaged)) >= {
        f"count of users: expected 294, found {left}",
        "count of documents: expected 121, missing",
        "content of kv: differs", "content of sqlite_master: differs"}

    src.restore(DirectorySource(tmp_path / "out"))
    assert dump(db) == expected
    assert src.fingerprint().compare(result.fingerprint) == []
    assert leftovers(db.parent) == []
    with closing(sqlite3.connect(db)) as con:  # the application carries on: trigger, index
        con.execute("INSERT INTO users (name) VALUES ('after')")
        assert con.execute("SELECT action FROM audit ORDER BY id DESC LIMIT 1").fetchone() == (
            "insert after",)
        assert con.execute("SELECT max(id) FROM users").fetchone()[0] == 301  # AUTOINCREMENT
        plan = con.execute("EXPLAIN QUERY PLAN SELECT * FROM documents WHERE user_id = 3")
        assert "documents_user" in str(plan.fetchall())


def test_fingerprint_sees_content_not_only_counts(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    make_db(path)
    src = SqliteSource(path)
    before = src.fingerprint()
    with closing(sqlite3.connect(path)) as con:
        con.execute("UPDATE users SET active = 1 - active WHERE id = "
                    "(SELECT min(id) FROM users WHERE active IS NOT NULL)")  # one value
        con.execute("UPDATE kv SET v = CAST(v AS BLOB) WHERE k = 'text'")  # same bytes, TEXT->BLOB
        con.commit()
    after = src.fingerprint()
    assert before.counts == after.counts
    assert before.compare(after) == ["content of kv: differs", "content of users: differs"]


def test_restore_into_another_path_leaves_the_original_alone(db: Path, tmp_path: Path) -> None:
    src = SqliteSource(db)
    result = backup_to(src, tmp_path / "out")
    with closing(sqlite3.connect(db)) as con:
        con.execute("DELETE FROM users")
        con.commit()
    damaged_dump, damaged_sha = dump(db), file_sha(db)
    other = tmp_path / "scratch" / "copy.db"
    target = {"path": str(other)}
    assert "does not exist" in src.describe_target(target)
    src.restore(DirectorySource(tmp_path / "out"), target=target)
    assert src.fingerprint(target=target).compare(result.fingerprint) == []
    assert dump(db) == damaged_dump and file_sha(db) == damaged_sha
    assert leftovers(other.parent) == []
    assert "replaced" in src.describe_target(target)
    with pytest.raises(UsageError, match="exactly 'path'"):
        src.restore(DirectorySource(tmp_path / "out"), target={"to": str(other)})


def test_restore_through_a_symlink_replaces_the_database(tmp_path: Path) -> None:
    real = tmp_path / "data" / "real.db"
    real.parent.mkdir()
    make_db(real, "delete")
    link = tmp_path / "app.db"
    link.symlink_to(real)
    expected = dump(real)
    src = SqliteSource(link)
    backup_to(src, tmp_path / "out")
    with closing(sqlite3.connect(real)) as con:
        con.execute("DELETE FROM users")
        con.commit()
    src.restore(DirectorySource(tmp_path / "out"))
    assert link.is_symlink() and dump(real) == expected


# --- a consistent copy while the application writes ---------------------------------------------

WRITER = r"""
import random, sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
rnd = random.Random(5)
n = 0
print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    x = rnd.randint(1, 10**6)
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO ledger (amount, note) VALUES (?, ?)", (x, "credit " * 20))
    con.execute("INSERT INTO ledger (amount, note) VALUES (?, ?)", (-x, "debit " * 20))
    con.execute("UPDATE counter SET n = n + 1")
    con.execute("COMMIT")
    n += 1
    time.sleep(0.001)
"""


def _counter(path: Path) -> int:
    with closing(sqlite3.connect(path, timeout=30)) as con:
        return int(con.execute("SELECT n FROM counter").fetchone()[0])


@pytest.mark.parametrize("mode", MODES)
def test_backup_is_consistent_while_another_process_writes(mode: str, tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    make_db(path, mode)
    with closing(sqlite3.connect(path)) as con:
        con.executescript("CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount INTEGER, note);"
                          "CREATE TABLE counter (n INTEGER); INSERT INTO counter VALUES (0);")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], text=True,
                              stdout=subprocess.PIPE)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while _counter(path) < 20:
            assert time.monotonic() < deadline, "the writer does not write"
            time.sleep(0.01)
        before = _counter(path)
        result = backup_to(SqliteSource(path), tmp_path / "out")
        deadline = time.monotonic() + 20
        while _counter(path) <= before + 20:
            assert time.monotonic() < deadline, "the writer stopped during the backup"
            time.sleep(0.01)
    finally:
        writer.kill()
        writer.wait()
    copy = tmp_path / "copy.db"
    DirectorySource(tmp_path / "out").extract(ARTIFACT, copy)
    sqlite_mod.check_integrity(copy, "the copy")
    with closing(sqlite3.connect(copy)) as con:
        n = con.execute("SELECT n FROM counter").fetchone()[0]
        rows, total = con.execute("SELECT count(*), sum(amount) FROM ledger").fetchone()
    assert n >= before and rows == 2 * n and total == 0  # whole transactions only
    assert result.fingerprint.counts["ledger"] == rows
    assert SqliteSource(copy).fingerprint().compare(result.fingerprint) == []
    assert SqliteSource(path).fingerprint().compare(result.fingerprint) != []  # it moved on


# --- restore safety ---------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "how"), [("wal", "idle"), ("wal", "txn"), ("delete", "txn"),
                                           ("delete", "idle")])
def test_restore_refuses_a_database_in_use_unless_forced(mode: str, how: str, tmp_path: Path
                                                         ) -> None:
    path = tmp_path / "live.db"
    make_db(path, mode)
    expected = dump(path)
    src = SqliteSource(path)
    result = backup_to(src, tmp_path / "out")
    with closing(sqlite3.connect(path)) as con:
        con.execute("DELETE FROM kv")
        con.commit()
    damaged_sha = file_sha(path)
    with holder(path, how):
        with pytest.raises(SourceInUse, match="in use") as err:
            src.restore(DirectorySource(tmp_path / "out"))
        assert "force" in str(err.value)
        assert file_sha(path) == damaged_sha
        assert leftovers(tmp_path) == [n for n in leftovers(tmp_path) if n.startswith("live")]
        SqliteSource(path, force_restore=True).restore(DirectorySource(tmp_path / "out"))
        assert dump(path) == expected
    # the holder has gone, having written to the old (unlinked) file only
    assert dump(path) == expected
    assert src.fingerprint().compare(result.fingerprint) == []
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("mode", "how"), [("wal", "idle"), ("delete", "txn")])
def test_in_use_is_seen_through_locks_without_proc(mode: str, how: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_mod, "_processes_with_open", lambda _path: [])
    path = tmp_path / "live.db"
    make_db(path, mode)
    with holder(path, how):
        reason = sqlite_mod.in_use(path)
    assert reason is not None and "another connection" in reason
    with holder(path, "closed"):
        assert sqlite_mod.in_use(path) is None


def test_in_use_names_the_process(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    make_db(path, "delete")
    with holder(path, "idle") as p:
        reason = sqlite_mod.in_use(path)
    assert reason is not None and f"pid {p.pid} (python" in reason


def test_restore_refuses_to_replace_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    make_db(path)
    src = SqliteSource(path)
    backup_to(src, tmp_path / "out")
    other = tmp_path / "notes.txt"
    other.write_text("my notes, not a database " * 100)
    with pytest.raises(SourceError, match="not a SQLite database"):
        src.restore(DirectorySource(tmp_path / "out"), target={"path": other})
    assert other.read_text().startswith("my notes")
    src.restore(DirectorySource(tmp_path / "out"), target={"path": other}, force=True)
    assert dump(other) == dump(path)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    data[offset + 1] ^= 0x55
    path.write_bytes(bytes(data))


def test_corrupted_artifact_is_refused_and_the_target_untouched(db: Path, tmp_path: Path) -> None:
    src = SqliteSource(db)
    backup_to(src, tmp_path / "out")
    with closing(sqlite3.connect(db)) as con:
        con.execute("DELETE FROM users WHERE id > 10")
        con.commit()
    before = file_sha(db)
    artifact = tmp_path / "out" / ARTIFACT
    _flip(artifact, artifact.stat().st_size // 2)
    with pytest.raises(SourceCorrupt, match="damaged"):
        src.restore(DirectorySource(tmp_path / "out"))
    assert file_sha(db) == before
    assert leftovers(db.parent) == []
    other = tmp_path / "elsewhere" / "x.db"
    with pytest.raises(SourceCorrupt):
        src.restore(DirectorySource(tmp_path / "out"), target={"path": other})
    assert not other.exists()


def _corrupt_btree(path: Path) -> None:
    """Zero part of a b-tree page in the middle of the file: structure damage."""
    page = 4096
    pages = path.stat().st_size // page
    data = bytearray(path.read_bytes())
    for p in range(pages // 3, pages // 3 + 3):
        data[p * page: p * page + 64] = bytes(64)
    path.write_bytes(bytes(data))


def test_artifact_failing_integrity_check_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    make_db(good, "delete")
    bad = tmp_path / "bad.db"
    bad.write_bytes(good.read_bytes())
    _corrupt_btree(bad)
    DirectorySink(tmp_path / "out").add_path(ARTIFACT, bad)  # its SHA-256 matches: only
    before = file_sha(good)                                  # integrity_check can tell
    with pytest.raises(SourceCorrupt, match="integrity_check"):
        SqliteSource(good).restore(DirectorySource(tmp_path / "out"))
    assert file_sha(good) == before
    assert leftovers(tmp_path) == []


def test_backup_refuses_a_corrupt_database(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    make_db(path, "delete")
    _corrupt_btree(path)
    sink = DirectorySink(tmp_path / "out")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(SourceCorrupt, match="integrity_check"):
        SqliteSource(path, tmp_dir=scratch).backup(sink)
    assert sink.artifacts == [] and list(scratch.iterdir()) == []


# --- selected tables --------------------------------------------------------------------------


def test_restore_selected_tables_only(db: Path, tmp_path: Path) -> None:
    expected = dump(db)
    src = SqliteSource(db)
    result = backup_to(src, tmp_path / "out")
    with closing(sqlite3.connect(db)) as con:
        con.execute("DROP TABLE users")  # drops its trigger too
        con.execute("DELETE FROM kv WHERE k = 'int'")
        con.execute("UPDATE sqlite_sequence SET seq = 5")
        con.commit()
    src.restore(DirectorySource(tmp_path / "out"), tables=["users"])
    now = dump(db)
    assert now["users"] == expected["users"] and now["schema"] == expected["schema"]
    assert now["kv"] != expected["kv"]  # other tables keep their current content
    users_only = ["users"]
    assert src.fingerprint().restrict(users_only).compare(
        result.fingerprint.restrict(users_only)) == []
    with closing(sqlite3.connect(db)) as con:
        assert con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'users'").fetchone() == (
            300,)
        assert con.execute("SELECT count(*) FROM user_docs").fetchone() == (294,)  # view works

    with pytest.raises(UsageError, match="not in the snapshot; it has: .*users"):
        src.restore(DirectorySource(tmp_path / "out"), tables=["nope"])
    with pytest.raises(UsageError, match="SQLite's own"):
        src.restore(DirectorySource(tmp_path / "out"), tables=["sqlite_sequence"])
    with holder(db, "txn"), pytest.raises(SourceInUse):
        src.restore(DirectorySource(tmp_path / "out"), tables=["kv"])
    assert dump(db) == now
    scratch = tmp_path / "one-table.db"  # one table pulled out into a new file
    src.restore(DirectorySource(tmp_path / "out"), tables=["kv"], target={"path": scratch})
    with closing(sqlite3.connect(scratch)) as con:
        assert con.execute("SELECT name FROM sqlite_master").fetchall() == [("kv",)]
    assert dump(scratch, view=False)["kv"] == expected["kv"]
    assert leftovers(tmp_path) == []


# --- probe ------------------------------------------------------------------------------------


def test_probe(tmp_path: Path) -> None:
    missing = SqliteSource(tmp_path / "missing.db").probe()
    assert not missing.reachable and "no such" in missing.detail
    assert not (tmp_path / "missing.db").exists()
    path = tmp_path / "a.db"
    make_db(path)
    p = SqliteSource(path).probe()
    assert p.reachable and p.version == sqlite3.sqlite_version and p.size_bytes
    assert "journal_mode=wal" in p.detail
    with pytest.raises(SourceUnavailable):
        SqliteSource(tmp_path / "missing.db").backup(DirectorySink(tmp_path / "out"))
