"""The postgres data source against real servers started here: Debian's PostgreSQL 15 and the
`pgserver` wheel's PostgreSQL 16 with pgvector. Round trips are compared by content (every
row of every table, sequences, and the schema as pg_dump prints it), not only counts."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stackvault.errors import SourceCorrupt, SourceError, SourceInUse, SourceUnavailable, UsageError
from stackvault.sources.base import DataSource
from stackvault.sources.directory import DirectorySink, DirectorySource
from stackvault.sources.postgres import PostgresSource, find_tools
from support.postgres_server import (
    DEBIAN_PG15,
    PgServer,
    free_port,
    pgserver_bin_dir,
    postgres,
)

# --- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg15() -> Iterator[PgServer]:
    with postgres(DEBIAN_PG15) as server:
        yield server


@pytest.fixture(scope="module")
def pg15b() -> Iterator[PgServer]:
    """A second, empty PostgreSQL 15: restores into another instance."""
    with postgres(DEBIAN_PG15) as server:
        yield server


@pytest.fixture(scope="module")
def pg16() -> Iterator[PgServer]:
    bin_dir = pgserver_bin_dir()
    assert bin_dir is not None, "pgserver is in the test extra: pip install -e '.[test]'"
    with postgres(bin_dir) as server:
        yield server


def source(server: PgServer, *dbs: str, **kw: Any) -> PostgresSource:
    kw.setdefault("pg_bin_dir", server.bin_dir)
    return PostgresSource(databases=list(dbs), host=server.host, port=server.port,
                          user="postgres", **kw)


def connect(server: PgServer, db: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server.dsn(db), autocommit=True)


# --- data ------------------------------------------------------------------------------------

APP_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN short_text AS text CHECK (length(VALUE) < 200);
CREATE SCHEMA billing;
CREATE TABLE users (
    id serial PRIMARY KEY, name text NOT NULL, email short_text UNIQUE, score double precision,
    balance numeric(20, 6), born date, seen timestamptz, nap interval, active boolean,
    tags text[], prefs jsonb, raw json, avatar bytea, uid uuid, feeling mood, addr inet);
CREATE TABLE documents (
    id bigserial PRIMARY KEY, user_id int REFERENCES users(id), title text, body text,
    created timestamptz DEFAULT now());
CREATE INDEX documents_user_title ON documents (user_id, title);
CREATE TABLE billing.invoices (no int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id int REFERENCES users(id), amount numeric, cents bigint GENERATED ALWAYS AS
    ((amount * 100)::bigint) STORED);
CREATE TABLE "Mixed Case" ("Key" text PRIMARY KEY, "välue" text);
CREATE VIEW user_docs AS SELECT u.name, count(d.id) AS docs
    FROM users u LEFT JOIN documents d ON d.user_id = u.id GROUP BY u.name;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.title := coalesce(NEW.title, 'untitled'); RETURN NEW; END $$;
CREATE TRIGGER documents_touch BEFORE INSERT ON documents FOR EACH ROW EXECUTE FUNCTION touch();
COMMENT ON TABLE documents IS 'chunks of source files';
"""

NAMES = ["Zoë", "Ørjan", "渡辺", "Παναγιώτης", "محمد", "👩‍💻 dev", "e\u0301cole", "plain"]


def make_app_db(server: PgServer, db: str, rows: int = 300) -> None:
    with connect(server, "postgres") as c:
        c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{db}"')
    with connect(server, db) as c:
        c.execute(APP_SCHEMA)
        for i in range(rows):
            c.execute(
                "INSERT INTO users (name, email, score, balance, born, seen, nap, active, tags,"
                " prefs, raw, avatar, uid, feeling, addr) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                " %s, %s, %s, %s, %s, gen_random_uuid(), %s, %s)",
                (f"{NAMES[i % len(NAMES)]} {i}", f"u{i}@example.org",
                 [0.1 * i, float("nan"), float("inf"), -0.0][i % 4], f"{i}.{i:06d}",
                 f"19{50 + i % 50}-0{1 + i % 9}-1{i % 10}",
                 f"2026-11-{1 + i % 28} 10:{i % 60}:00+02",
                 f"{i} hours", i % 3 == 0, [f"t{i}", "ünï", None] if i % 5 else None,
                 psycopg.types.json.Jsonb({"n": i, "ü": [1, 2, {"x": None}]}),
                 psycopg.types.json.Json({"raw": i}), bytes(range(i % 256)) * 3,
                 ["sad", "ok", "happy"][i % 3], f"10.0.{i % 256}.1"))
        for i in range(rows * 3):
            c.execute("INSERT INTO documents (user_id, title, body) VALUES (%s, %s, %s)",
                      (1 + i % rows, None if i % 7 == 0 else f"doc {i} {NAMES[i % 8]}",
                       ("lorem ipsum ✓ " * (i % 50)) + str(i)))
        c.execute("INSERT INTO documents (user_id, title, body) VALUES (1, 'large', %s)",
                  (("x" * 1000 + "y") * 6000,))  # ~6 MB, TOASTed
        c.execute("INSERT INTO billing.invoices (user_id, amount) "
                  "SELECT 1 + g %% %s, g * 1.25 FROM generate_series(1, 500) g", (rows,))
        c.execute("""INSERT INTO "Mixed Case" VALUES ('a', 'ä'), ('b', NULL),
                     ('tab\tnew\nline', 'q')""")
        c.execute("SELECT setval('users_id_seq', 5000)")  # sequences come back as they were


def contents(server: PgServer, db: str) -> dict[str, Any]:
    """Every row of every table (as text, sorted), every sequence, and the schema."""
    out: dict[str, Any] = {}
    with connect(server, db) as c:
        c.execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
        tables = c.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON "
            "n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN "
            "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
            "ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            rel = psycopg.sql.Identifier(schema, table)
            out[f"{schema}.{table}"] = sorted(r[0] for r in c.execute(
                psycopg.sql.SQL("SELECT t::text FROM {} t").format(rel)).fetchall())
        out["sequences"] = c.execute(
            "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2"
        ).fetchall()
    out["schema"] = schema_text(server, db)
    return out


def schema_text(server: PgServer, db: str) -> str:
    proc = subprocess.run([str(server.bin_dir / "pg_dump"), "-s", "-h", server.host, "-p",
                           str(server.port), "-U", "postgres", db],
                          capture_output=True, text=True, check=True)
    # \restrict lines carry a random key per run; comments carry the database name
    return "\n".join(ln for ln in proc.stdout.splitlines()
                     if not ln.startswith(("\\restrict", "\\unrestrict", "--")))


def backup_to(tmp: Path, src: PostgresSource) -> tuple[DirectorySource, Any]:
    out = tmp / "backup"
    sink = DirectorySink(out)
    result = src.backup(sink)
    return DirectorySource(out), result


# --- tests -----------------------------------------------------------------------------------


def test_adapter_satisfies_the_protocol(pg15: PgServer) -> None:
    assert isinstance(source(pg15, "postgres"), DataSource)


def test_round_trip_many_types_into_the_same_server(pg15: PgServer, tmp_path: Path) -> None:
    make_app_db(pg15, "app")
    src = source(pg15, "app")
    before = contents(pg15, "app")
    stored, result = backup_to(tmp_path, src)
    assert result.fingerprint.compare(src.fingerprint()) == []
    assert result.versions["server"].startswith("PostgreSQL 15")
    assert re.match(r"^[0-9A-F]+/[0-9A-F]+$", result.extra["databases"]["app"]["wal_lsn"])
    assert result.fingerprint.counts["app.public.documents"] == 901

    with connect(pg15, "app") as c:  # damage: a dropped table, changed and deleted rows
        c.execute("DROP TABLE billing.invoices")
        c.execute("UPDATE users SET name = 'hacked' WHERE id < 50")
        c.execute("DELETE FROM documents WHERE id % 2 = 0")
    assert src.fingerprint().compare(result.fingerprint) != []
    src.restore(stored)
    assert contents(pg15, "app") == before
    assert src.fingerprint().compare(result.fingerprint) == []
    with connect(pg15, "postgres") as c:  # no scratch or old databases left behind
        left = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname "
                                        "LIKE '%\\_\\_sv\\_%'").fetchall()]
    assert left == []


def test_restore_into_a_second_instance_and_missing_database(pg15: PgServer, pg15b: PgServer,
                                                             tmp_path: Path) -> None:
    make_app_db(pg15, "app2", rows=50)
    stored, result = backup_to(tmp_path, source(pg15, "app2"))
    target = {"database": f"postgresql://postgres@127.0.0.1:{pg15b.port}/copy"}
    src = source(pg15, "app2")
    assert f"127.0.0.1:{pg15b.port}" in src.describe_target(target)
    src.restore(stored, target=target)
    assert contents(pg15b, "copy") == contents(pg15, "app2")
    assert src.fingerprint(target=target).compare(result.fingerprint) == []


def test_one_table_restored_into_a_scratch_database_and_in_place(pg15: PgServer,
                                                                 tmp_path: Path) -> None:
    make_app_db(pg15, "app3", rows=40)
    src = source(pg15, "app3")
    before = contents(pg15, "app3")
    stored, result = backup_to(tmp_path, src)
    with connect(pg15, "app3") as c:
        c.execute("DROP TABLE billing.invoices")
        c.execute("DELETE FROM documents WHERE id > 10")
        c.execute("UPDATE users SET name = 'changed'")  # not restored: must stay changed
    # pull the dropped table out into a scratch database, production untouched
    src.restore(stored, target={"database": "scratch3"}, tables=["billing.invoices"])
    assert contents(pg15, "scratch3")["billing.invoices"] == before["billing.invoices"]
    # then restore it and documents in place
    src.restore(stored, tables=["invoices", "app3.public.documents"])
    after = contents(pg15, "app3")
    assert after["billing.invoices"] == before["billing.invoices"]
    assert after["public.documents"] == before["public.documents"]
    assert after["public.users"] != before["public.users"]
    keys = {"app3.billing.invoices", "app3.public.documents"}
    assert src.fingerprint().restrict(keys).compare(result.fingerprint.restrict(keys)) == []
    # identity columns and the documents sequence continue where the snapshot left them
    with connect(pg15, "app3") as c:
        c.execute("INSERT INTO billing.invoices (user_id, amount) VALUES (1, 1)")
        assert c.execute("SELECT max(no) FROM billing.invoices").fetchone() == (501,)


def test_unknown_or_ambiguous_table_is_refused(pg15: PgServer, tmp_path: Path) -> None:
    make_app_db(pg15, "app4", rows=5)
    stored, _ = backup_to(tmp_path, source(pg15, "app4"))
    with pytest.raises(UsageError, match="'nope' is not in the snapshot"):
        source(pg15, "app4").restore(stored, tables=["nope"])


def test_table_referenced_by_others_is_refused_and_nothing_changes(pg15: PgServer,
                                                                    tmp_path: Path) -> None:
    make_app_db(pg15, "app5", rows=10)
    src = source(pg15, "app5")
    stored, _ = backup_to(tmp_path, src)
    with connect(pg15, "app5") as c:
        c.execute("UPDATE users SET name = 'kept'")
    before = contents(pg15, "app5")
    with pytest.raises(SourceError, match="nothing was changed"):
        src.restore(stored, tables=["users"])
    assert contents(pg15, "app5") == before


def test_database_in_use_is_refused_unless_forced(pg15: PgServer, tmp_path: Path) -> None:
    make_app_db(pg15, "app6", rows=10)
    src = source(pg15, "app6")
    stored, result = backup_to(tmp_path, src)
    with connect(pg15, "app6") as c:
        c.execute("DELETE FROM documents")
        with pytest.raises(SourceInUse, match="open connection"):
            src.restore(stored)
        assert c.execute("SELECT count(*) FROM documents").fetchone() == (0,)
        src.restore(stored, force=True)
    assert src.fingerprint().compare(result.fingerprint) == []


def test_damaged_dump_leaves_the_target_as_it_was(pg15: PgServer, tmp_path: Path) -> None:
    make_app_db(pg15, "app7", rows=30)
    src = source(pg15, "app7")
    stored, _ = backup_to(tmp_path, src)
    dump = tmp_path / "backup" / "databases" / "app7.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    with connect(pg15, "app7") as c:
        c.execute("DELETE FROM documents WHERE id < 100")
    before = contents(pg15, "app7")
    with pytest.raises((SourceCorrupt, SourceError)):
        src.restore(stored)
    assert contents(pg15, "app7") == before
    with connect(pg15, "postgres") as c:
        assert c.execute("SELECT count(*) FROM pg_database WHERE datname LIKE "
                         "'%\\_\\_sv\\_%'").fetchone() == (0,)


def test_directory_format_with_parallel_jobs_and_globals(pg15: PgServer, pg15b: PgServer,
                                                         tmp_path: Path) -> None:
    make_app_db(pg15, "app8", rows=60)
    with connect(pg15, "postgres") as c:
        c.execute("DROP ROLE IF EXISTS reader")
        c.execute("CREATE ROLE reader LOGIN")
    with connect(pg15, "app8") as c:
        c.execute("GRANT SELECT ON documents TO reader")
    src = source(pg15, "app8", format="directory", jobs=2, globals=True)
    stored, result = backup_to(tmp_path, src)
    assert "globals.sql" in stored.names() and "databases/app8.dir" in stored.names()
    other = source(pg15b, "app8", format="directory", jobs=2, globals=True)
    other.restore(stored)
    assert contents(pg15b, "app8") == contents(pg15, "app8")
    with connect(pg15b, "app8") as c:  # the role came back with the grant on it
        assert c.execute("SELECT has_table_privilege('reader', 'documents', 'SELECT')"
                         ).fetchone() == (True,)
    assert other.fingerprint().compare(result.fingerprint) == []


def test_pgvector_round_trip_on_postgresql_16(pg16: PgServer, tmp_path: Path) -> None:
    with connect(pg16, "postgres") as c:
        c.execute("CREATE DATABASE rag")
    with connect(pg16, "rag") as c:
        c.execute("CREATE EXTENSION vector")
        c.execute("CREATE TABLE chunks (id bigserial PRIMARY KEY, doc text, "
                  "embedding vector(8))")
        c.execute("INSERT INTO chunks (doc, embedding) SELECT 'chunk ' || g, "
                  "array_fill(g::real / 7, ARRAY[8])::vector FROM generate_series(1, 2000) g")
        c.execute("CREATE INDEX ON chunks USING hnsw (embedding vector_l2_ops)")
    src = source(pg16, "rag")
    stored, result = backup_to(tmp_path, src)
    assert result.versions["server"].startswith("PostgreSQL 16")
    before = contents(pg16, "rag")
    with connect(pg16, "postgres") as c:
        c.execute("DROP DATABASE rag")
    src.restore(stored)
    assert contents(pg16, "rag") == before
    with connect(pg16, "rag") as c:  # the extension and its index work again
        assert c.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'"
                         ).fetchone() == ("vector",)
        near = c.execute("SELECT id FROM chunks ORDER BY embedding <-> "
                         "array_fill(10::real / 7, ARRAY[8])::vector LIMIT 1").fetchone()
        assert near == (10,)
    assert src.fingerprint().compare(result.fingerprint) == []


# --- bad input -------------------------------------------------------------------------------


def test_unreachable_server(tmp_path: Path) -> None:
    src = PostgresSource(databases=["app"], host="127.0.0.1", port=free_port())
    probe = src.probe()
    assert not probe.reachable and "cannot reach PostgreSQL" in probe.detail
    with pytest.raises(SourceUnavailable, match="cannot reach PostgreSQL at 127.0.0.1"):
        src.backup(DirectorySink(tmp_path / "b"))


def test_wrong_password(tmp_path: Path) -> None:
    secret = "pg-Secret-Wrong-4471"
    with postgres(DEBIAN_PG15) as server:
        with connect(server, "postgres") as c:
            c.execute("CREATE ROLE app LOGIN PASSWORD 'right-one'")
        hba = server.root / "data" / "pg_hba.conf"
        hba.write_text("host all postgres 127.0.0.1/32 trust\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n")
        os.kill(server.pid, 1)  # SIGHUP: reload pg_hba.conf
        import time
        time.sleep(0.5)
        os.environ["SV_TEST_PG_PW"] = secret
        try:
            src = PostgresSource(databases=["postgres"], host=server.host, port=server.port,
                                 user="app", password_env="SV_TEST_PG_PW",
                                 pg_bin_dir=server.bin_dir)
            with pytest.raises(SourceUnavailable, match="authentication failed") as err:
                src.backup(DirectorySink(tmp_path / "b"))
            assert secret not in str(err.value)
            os.environ["SV_TEST_PG_PW"] = "right-one"
            _, result = backup_to(tmp_path, src)  # the right password works
            assert result.versions["server"].startswith("PostgreSQL 15")
        finally:
            del os.environ["SV_TEST_PG_PW"]


def test_missing_or_mismatched_pg_dump(pg15: PgServer, pg16: PgServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="there is no pg_dump in pg_bin_dir"):
        source(pg15, "postgres", pg_bin_dir=empty).backup(DirectorySink(tmp_path / "a"))
    # Debian's pg_dump 15 against the PostgreSQL 16 server
    with pytest.raises(UsageError, match="version mismatch: pg_dump 15.* PostgreSQL 16"):
        source(pg16, "postgres", pg_bin_dir=DEBIAN_PG15).backup(DirectorySink(tmp_path / "b"))
    # without pg_bin_dir, a 16 server finds no PostgreSQL 16 tools installed system-wide
    with pytest.raises(UsageError, match="no pg_dump/pg_restore for PostgreSQL 16"):
        find_tools(16, None)
    assert find_tools(15, None).bin_dir == DEBIAN_PG15


def test_missing_database(pg15: PgServer, tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="database 'nosuchdb' does not exist"):
        source(pg15, "nosuchdb").backup(DirectorySink(tmp_path / "b"))


def test_backup_while_writers_write_is_consistent(pg15: PgServer, tmp_path: Path) -> None:
    """Rows inserted during the dump are either in both the dump and the fingerprint or in
    neither: the restored database verifies against the fingerprint."""
    import threading

    make_app_db(pg15, "busy", rows=20)
    stop = threading.Event()

    def write() -> None:
        with closing(psycopg.connect(pg15.dsn("busy"), autocommit=True)) as c:
            while not stop.is_set():
                c.execute("INSERT INTO documents (user_id, title, body) VALUES (1, 't', "
                          "repeat('z', 2000))")

    t = threading.Thread(target=write)
    t.start()
    try:
        src = source(pg15, "busy")
        stored, result = backup_to(tmp_path, src)
    finally:
        stop.set()
        t.join()
    target = {"database": "busy_copy"}
    src.restore(stored, target=target)
    assert src.fingerprint(target=target).compare(result.fingerprint) == []


def test_counts_only_fingerprint_still_catches_lost_rows(pg15: PgServer, tmp_path: Path) -> None:
    make_app_db(pg15, "app9", rows=20)
    src = source(pg15, "app9", checksums=False)
    stored, result = backup_to(tmp_path, src)
    assert result.fingerprint.digests == {}
    assert result.fingerprint.counts["app9.public.users"] == 20
    with connect(pg15, "app9") as c:
        c.execute("UPDATE users SET name = 'x'")  # same counts: not seen without checksums
        assert src.fingerprint().compare(result.fingerprint) == []
        c.execute("""DELETE FROM "Mixed Case" WHERE "Key" = 'a'""")
    assert result.fingerprint.compare(src.fingerprint()) == [
        "count of app9.public.Mixed Case: expected 3, found 2"]
