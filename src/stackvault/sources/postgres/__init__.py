"""PostgreSQL adapter: pg_dump in one exported snapshot, fingerprints from the same snapshot,
restore through a scratch database and an atomic switch-over.

Why this shape (see docs/stack.md, "PostgreSQL"):
- pg_dump/pg_restore are the only tools that dump and restore every kind of object correctly,
  so the adapter drives them; it picks the ones whose major version matches the server.
- Dumps are written uncompressed (`-Z0`) and streamed into the repository, which
  deduplicates and compresses them: a second backup of a database with 1% of its rows
  changed stores a few percent, where `pg_dump -Fc` would store everything again.
- The backup opens a REPEATABLE READ transaction, exports its snapshot and hands it to
  pg_dump (`--snapshot`); the fingerprint (rows and a content checksum per table) is read in
  that same snapshot while pg_dump runs, so it describes exactly the data dumped. The WAL
  position of that moment is recorded for point-in-time tooling.
- A restore never writes into the target database directly: pg_restore fills a fresh
  scratch database; only when that succeeded is the target swapped for it (two renames) or,
  for selected tables, refilled from it in one transaction. A failure leaves the target as
  it was.
- psycopg 3 (libpq) runs the queries: the maintained PostgreSQL driver, binary wheels.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, cast

try:  # psycopg is a dependency of stackvault; keep the error readable if it is broken
    import psycopg
except ImportError as _e:  # pragma: no cover - exercised only on broken installs
    from stackvault.errors import UsageError as _UsageError

    raise _UsageError("the postgres source needs psycopg, which is not installed",
                      hint="pip install 'psycopg[binary]'") from _e

from stackvault.errors import SourceCorrupt, SourceError, UsageError
from stackvault.sources.base import (
    ArtifactInfo,
    ArtifactSink,
    ArtifactSource,
    ComponentResult,
    Fingerprint,
    ProbeResult,
    Target,
)
from stackvault.sources.postgres.client import (
    Conn,
    Tools,
    find_tools,
    pump,
    read_password,
    run_checked,
)
from stackvault.sources.postgres.databases import (
    SCRATCH,
    create_database,
    create_schemas,
    database_exists,
    drop_database,
    drop_schemas,
    refill_tables,
    refuse_if_in_use,
    switch_over,
)
from stackvault.sources.postgres.fingerprint import fingerprint_db, list_tables
from stackvault.sources.postgres.selection import (
    match_table,
    pick_tables,
    table_pattern,
    target_db,
    target_server,
)

__all__ = ["PostgresSource", "find_tools", "fingerprint_db"]

GLOBALS = "globals.sql"


def _dump_name(db: str, fmt: str) -> str:
    return f"databases/{db}.{'dump' if fmt == 'custom' else 'dir'}"


def _meta_name(db: str) -> str:
    return f"databases/{db}.json"


class PostgresSource:
    """One PostgreSQL server: `databases` (each one custom- or directory-format dump plus a
    small JSON of its properties) and optionally the roles (`globals.sql`)."""

    type: ClassVar[str] = "postgres"

    def __init__(self, *, databases: list[str], host: str = "localhost", port: int = 5432,
                 user: str = "postgres", password_env: str | None = None,
                 password_file: Path | None = None, globals: bool = False,
                 format: str = "custom", jobs: int = 1, pg_bin_dir: Path | None = None,
                 tables: list[str] | None = None, checksums: bool = True) -> None:
        self.databases = list(databases)
        self.checksums = bool(checksums)
        self.host, self.port, self.user = str(host), int(port), str(user)
        self.password_env, self.password_file = password_env, password_file
        self.globals = bool(globals)
        self.format = format
        self.jobs = int(jobs)
        self.pg_bin_dir = Path(pg_bin_dir) if pg_bin_dir else None
        self.tables = list(tables) if tables else None
        self._tools: dict[int, Tools] = {}

    # -- connection helpers
    def _conn(self, target: Target | None = None) -> Conn:
        over = target_server(target)
        return Conn(host=over.get("host", self.host), port=int(over.get("port", self.port)),
                    user=over.get("user", self.user),
                    password=read_password(self.password_env, self.password_file))

    def _server_major(self, conn: Conn) -> tuple[int, str]:
        with contextlib.closing(conn.connect("postgres", autocommit=True)) as c:
            num = int(c.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
            text = str(c.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        return num // 10000, text.split()[0]

    def _tools_for(self, major: int) -> Tools:
        if major not in self._tools:
            self._tools[major] = find_tools(major, self.pg_bin_dir)
        return self._tools[major]

    def _db_map(self, target: Target | None, names: list[str]) -> dict[str, str]:
        """Snapshot database -> database to write (or fingerprint)."""
        if target and "database_prefix" in target:  # drills: every database, renamed
            return {n: f"{target['database_prefix']}{n}"[:63] for n in names}
        wanted = target_db(target)
        if wanted is None:
            return {n: n for n in names}
        if len(names) != 1:
            raise UsageError(f"--to names one database ({wanted}) but the component has "
                             f"{len(names)}: {', '.join(names)}",
                             hint="give the databases in stackvault.yaml one per component, "
                                  "or restore without --to")
        return {names[0]: wanted}

    # -- drills
    def scratch_target(self, label: str) -> Target:
        return {"database_prefix": f"sv_drill_{label}_"}

    def remove_target(self, target: Target) -> None:
        conn = self._conn(target)
        for db in self._db_map(target, self.databases).values():
            drop_database(conn, db)

    def run_probe(self, probe: Mapping[str, Any], *, target: Target | None = None) -> str:
        """`{"sql": QUERY}` (in the first database, or `database: NAME`): the first column of
        the first row, as text ('' if no row)."""
        if "sql" not in probe or set(probe) - {"sql", "database"}:
            raise UsageError("a postgres probe runs `sql` (optionally in `database`); got "
                             + ", ".join(sorted(probe)))
        label = str(probe.get("database") or self.databases[0])
        dbs = self._db_map(target, self.databases)
        if label not in dbs:
            raise UsageError(f"probe database {label!r} is not one of {', '.join(dbs)}")
        with contextlib.closing(self._conn(target).connect(dbs[label])) as c:
            try:
                row = c.execute(str(probe["sql"])).fetchone()
            except psycopg.Error as e:
                raise SourceError(f"probe query failed in {dbs[label]}: "
                                  f"{str(e).strip().splitlines()[0]}") from e
            finally:
                c.rollback()
        return "" if row is None or row[0] is None else str(row[0])

    # -- integrity rules (stackvault integrity)
    def query(self, sql_text: str, params: tuple[Any, ...] = (), *,
              database: str | None = None) -> list[tuple[Any, ...]]:
        """Rows of a read-only query in `database` (default: the first)."""
        with contextlib.closing(self._conn().connect(database or self.databases[0])) as c:
            try:
                c.execute("SET TRANSACTION READ ONLY")
                return list(c.execute(sql_text, params).fetchall())
            except psycopg.Error as e:
                raise SourceError(f"query failed: {str(e).strip().splitlines()[0]}") from e
            finally:
                c.rollback()

    def execute(self, statements: list[tuple[str, tuple[Any, ...]]], *,
                database: str | None = None) -> int:
        """Run statements in one transaction; return the rows they changed."""
        with contextlib.closing(self._conn().connect(database or self.databases[0])) as c:
            changed = 0
            try:
                with c.transaction():
                    for text, params in statements:
                        changed += c.execute(text, params).rowcount
            except psycopg.Error as e:
                raise SourceError(f"update failed, nothing was changed: "
                                  f"{str(e).strip().splitlines()[0]}") from e
            c.commit()
            return changed

    # -- probe
    def probe(self) -> ProbeResult:
        try:
            conn = self._conn()
            with contextlib.closing(conn.connect(self.databases[0], autocommit=True)) as c:
                version = str(c.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
                size = int(c.execute("SELECT coalesce(sum(pg_database_size(datname)), 0) FROM "
                                     "pg_database WHERE datname = ANY(%s)",
                                     (self.databases,)).fetchone()[0])  # type: ignore[index]
            return ProbeResult(True, f"PostgreSQL {version}", size, f"{conn.where}")
        except (SourceError, UsageError) as e:
            return ProbeResult(False, "", None, str(e))

    def describe_target(self, target: Target | None = None) -> str:
        conn = self._conn(target) if target_server(target) else None
        where = conn.where if conn else f"{self.host}:{self.port}"
        dbs = self._db_map(target, self.databases)
        names = ", ".join(dbs.values())
        extra = " and its roles (merged)" if self.globals else ""
        return f"PostgreSQL {where}: database(s) {names} (replaced as a whole){extra}"

    # -- fingerprint
    def fingerprint(self, *, target: Target | None = None) -> Fingerprint:
        conn = self._conn(target)
        fp = Fingerprint()
        for label, db in self._db_map(target, self.databases).items():
            with contextlib.closing(conn.connect(db)) as c:
                c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                only = self._table_filter(c) if self.tables else None
                sub = fingerprint_db(c, label, only, checksums=self.checksums)
                c.rollback()
            fp.counts.update(sub.counts)
            fp.digests.update(sub.digests)
        return fp

    def _table_filter(self, c: psycopg.Connection[Any]) -> set[tuple[str, str]]:
        with c.cursor() as cur:
            have = set(list_tables(cur))
        out = set()
        for spec in self.tables or []:
            out |= match_table(spec, have)
        return out

    # -- backup
    def backup(self, sink: ArtifactSink) -> ComponentResult:
        conn = self._conn()
        major, server_version = self._server_major(conn)
        tools = self._tools_for(major)
        artifacts: list[ArtifactInfo] = []
        fp = Fingerprint()
        extra: dict[str, Any] = {"databases": {}}
        if self.globals:
            artifacts.append(self._dump_globals(conn, tools, sink))
        for db in self.databases:
            arts, sub, facts = self._dump_database(conn, tools, db, sink)
            artifacts.extend(arts)
            fp.counts.update(sub.counts)
            fp.digests.update(sub.digests)
            extra["databases"][db] = facts
        return ComponentResult(artifacts=artifacts, fingerprint=fp,
                               versions={"server": f"PostgreSQL {server_version}",
                                         "pg_dump": tools.version},
                               extra=extra)

    def _dump_globals(self, conn: Conn, tools: Tools, sink: ArtifactSink) -> ArtifactInfo:
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([tools["pg_dumpall"], "--globals-only", "--no-password",
                                     "-l", "postgres"], stdout=subprocess.PIPE, stderr=err,
                                    env=conn.env("postgres"))
            assert proc.stdout is not None
            try:
                info = sink.add_stream(GLOBALS, cast(BinaryIO, proc.stdout))
            finally:
                proc.stdout.close()
            run_checked(proc, "pg_dumpall --globals-only", err)
        return info

    def _dump_database(self, conn: Conn, tools: Tools, db: str, sink: ArtifactSink
                       ) -> tuple[list[ArtifactInfo], Fingerprint, dict[str, Any]]:
        with contextlib.closing(conn.connect(db)) as c:
            c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = c.execute(
                "SELECT pg_export_snapshot(), CASE WHEN pg_is_in_recovery() THEN "
                "pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text, "
                "pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, "
                "pg_get_userbyid(d.datdba), now()::text "
                "FROM pg_database d WHERE d.datname = current_database()").fetchone()
            assert row is not None
            snapshot, lsn, encoding, collate, ctype, owner, at = row
            only = self._table_filter(c) if self.tables else None
            if only is not None and not only:
                raise UsageError(f"{db}: none of the tables {', '.join(self.tables or [])} "
                                 "exist")
            with c.cursor() as cur:
                all_tables = list_tables(cur)
            facts = {"wal_lsn": lsn, "snapshot_time": at, "encoding": encoding,
                     "collate": collate, "ctype": ctype, "owner": owner,
                     "tables": [list(t) for t in all_tables
                                if only is None or t in only]}
            args = [tools["pg_dump"], "--no-password", "-Z0", f"--snapshot={snapshot}"]
            for schema, table in sorted(only or ()):
                args.append(f"--table={table_pattern(schema, table)}")
            fp_box: dict[str, Any] = {}

            def take_fingerprint() -> None:
                try:
                    fp_box["fp"] = fingerprint_db(c, db, only, checksums=self.checksums)
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                    fp_box["error"] = e

            # pg_dump imports the snapshot while this transaction stays open; the fingerprint
            # is read in it concurrently, on the other connection's server process.
            fp_thread = threading.Thread(target=take_fingerprint, name="sv-pg-fingerprint")
            fp_thread.start()
            try:
                arts = self._run_dump(conn, args, db, sink)
            finally:
                fp_thread.join()
            if "error" in fp_box:
                raise SourceError(f"{db}: reading the fingerprint failed: {fp_box['error']}")
            c.rollback()
        meta = json.dumps(facts, indent=1, sort_keys=True).encode()
        arts.append(sink.add_stream(_meta_name(db), io.BytesIO(meta)))
        return arts, fp_box["fp"], facts

    def _run_dump(self, conn: Conn, args: list[str], db: str, sink: ArtifactSink
                  ) -> list[ArtifactInfo]:
        with tempfile.TemporaryFile() as err:
            if self.format == "custom":
                proc = subprocess.Popen([*args, "-Fc"], stdout=subprocess.PIPE,
                                        stderr=err, env=conn.env(db))
                assert proc.stdout is not None
                try:
                    info = sink.add_stream(_dump_name(db, "custom"), cast(BinaryIO, proc.stdout))
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
                finally:
                    proc.stdout.close()
                run_checked(proc, f"pg_dump of {db}", err)
                return [info]
            # Directory format: pg_dump writes the folder itself (needed for parallel jobs).
            with tempfile.TemporaryDirectory(prefix="stackvault-pgdump-") as tmp:
                out = Path(tmp) / "dump"
                proc = subprocess.Popen([*args, "-Fd", "-j", str(self.jobs), "-f", str(out)],
                                        stdout=subprocess.DEVNULL, stderr=err, env=conn.env(db))
                run_checked(proc, f"pg_dump of {db}", err)
                return [sink.add_path(_dump_name(db, "directory"), out)]

    # -- restore
    def restore(self, source: ArtifactSource, *, target: Target | None = None,
                tables: list[str] | None = None, force: bool = False) -> None:
        if tables is not None and not tables:
            raise UsageError("an empty table list restores nothing")
        names = source.names()
        dbs = [n[len("databases/"):-len(".json")] for n in names
               if n.startswith("databases/") and n.endswith(".json")]
        if not dbs:
            raise SourceCorrupt("the snapshot holds no database of this component")
        conn = self._conn(target)
        major, _ = self._server_major(conn)
        tools = self._tools_for(major)
        mapping = self._db_map(target, dbs)
        metas = {db: _read_json(source, _meta_name(db)) for db in dbs}
        if tables:
            picks = pick_tables(tables, metas)
            for db in sorted({d for d, _ in picks}):
                wanted = {t for d, t in picks if d == db}
                self._restore_tables(source, conn, tools, db, mapping[db], metas[db], wanted,
                                     force)
            return
        for dest in mapping.values():  # fail fast, before any work
            if not force:
                refuse_if_in_use(conn, dest)
        if self.globals and GLOBALS in names and not (target and "database_prefix" in target):
            self._restore_globals(source, conn, tools)
        for db, dest in mapping.items():
            scratch = self._restore_to_scratch(source, conn, tools, db, metas[db])
            try:
                switch_over(conn, scratch, dest, force)
            except BaseException:
                drop_database(conn, scratch)
                raise

    def _restore_to_scratch(self, source: ArtifactSource, conn: Conn, tools: Tools, db: str,
                            meta: Mapping[str, Any]) -> str:
        """pg_restore the snapshot's `db` into a new scratch database; return its name."""
        scratch = f"{db[:30]}{SCRATCH}{secrets.token_hex(4)}"
        create_database(conn, scratch, meta)
        try:
            self._pg_restore(source, conn, tools, db, scratch)
        except BaseException:
            drop_database(conn, scratch)
            raise
        return scratch

    def _pg_restore(self, source: ArtifactSource, conn: Conn, tools: Tools, db: str,
                    into: str) -> None:
        names = source.names()
        base = [tools["pg_restore"], "--no-password", "--exit-on-error", "-d", into]
        with tempfile.TemporaryFile() as err:
            if _dump_name(db, "custom") in names:
                proc = subprocess.Popen([*base, "-Fc"], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=err,
                                        env=conn.env(into))
                assert proc.stdin is not None
                try:
                    with source.open(_dump_name(db, "custom")) as f:
                        pump(f, proc.stdin)  # raises at EOF if the artifact is damaged
                except BrokenPipeError:
                    pass  # pg_restore stopped early: its exit status and message say why
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
                finally:
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
                run_checked(proc, f"pg_restore of {db}", err)
                return
            if _dump_name(db, "directory") not in names:
                raise SourceCorrupt(f"the snapshot holds no dump of database {db}")
            with tempfile.TemporaryDirectory(prefix="stackvault-pgrestore-") as tmp:
                folder = Path(tmp) / "dump"
                source.extract(_dump_name(db, "directory"), folder)
                proc = subprocess.Popen([*base, "-Fd", "-j", str(self.jobs), str(folder)],
                                        stdout=subprocess.DEVNULL, stderr=err,
                                        env=conn.env(into))
                run_checked(proc, f"pg_restore of {db}", err)

    def _restore_globals(self, source: ArtifactSource, conn: Conn, tools: Tools) -> None:
        """Replay roles and tablespaces; roles that exist already are kept (and altered)."""
        with tempfile.TemporaryFile() as script, tempfile.TemporaryFile() as err:
            with source.open(GLOBALS) as f:
                pump(f, script)
            script.seek(0)
            proc = subprocess.Popen([tools["psql"], "-X", "-q", "--no-password", "-d",
                                     "postgres"], stdin=script, stdout=subprocess.DEVNULL,
                                    stderr=err, env=conn.env("postgres"))
            proc.wait()
            err.seek(0)
            problems = [ln for ln in err.read().decode("utf-8", "replace").splitlines()
                        if "ERROR" in ln and "already exists" not in ln]
            if problems or proc.returncode not in (0,):
                raise SourceError("restoring roles (globals) failed: "
                                  + "; ".join(problems[:3] or [f"psql exit {proc.returncode}"]))

    def _restore_tables(self, source: ArtifactSource, conn: Conn, tools: Tools, db: str,
                        dest: str, meta: Mapping[str, Any], wanted: set[tuple[str, str]],
                        force: bool) -> None:
        """Refill (or create) `wanted` tables of `dest` from the snapshot's `db`: through a
        scratch database, then one transaction for tables that exist at the target and one
        pg_restore (single transaction) for those that do not."""
        if not database_exists(conn, dest):
            create_database(conn, dest, meta)
        scratch = self._restore_to_scratch(source, conn, tools, db, meta)
        try:
            with contextlib.closing(conn.connect(dest)) as tc:
                with tc.cursor() as cur:
                    have = set(list_tables(cur))
                tc.rollback()
            existing = sorted(wanted & have)
            missing = sorted(wanted - have)
            if existing:
                refill_tables(conn, scratch, dest, existing)
            if missing:
                self._copy_new_tables(conn, tools, scratch, dest, missing, have)
        finally:
            drop_database(conn, scratch)

    def _copy_new_tables(self, conn: Conn, tools: Tools, scratch: str, dest: str,
                         tables: list[tuple[str, str]], have: set[tuple[str, str]]) -> None:
        """Create `tables` (absent at `dest`) with their data, indexes, constraints and
        triggers, in one transaction (pg_dump -t from the scratch database, pg_restore
        --single-transaction). Their schemas are created if missing; a foreign key to a table
        that exists neither at the target nor among `tables` is left out."""
        present = have | set(tables)
        with contextlib.closing(conn.connect(scratch)) as sc:
            fks = sc.execute(
                "SELECT n.nspname, c.relname, k.conname, fn.nspname, f.relname "
                "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_class f ON f.oid = k.confrelid "
                "JOIN pg_namespace fn ON fn.oid = f.relnamespace WHERE k.contype = 'f'"
            ).fetchall()
            sc.rollback()
        skip = {f" FK CONSTRAINT {s} {t} {k} " for s, t, k, fs, ft in fks
                if (s, t) in tables and (fs, ft) not in present}
        names = ", ".join(f"{s}.{t}" for s, t in tables)
        with tempfile.TemporaryDirectory(prefix="stackvault-pgtables-") as tmp, \
                tempfile.TemporaryFile() as err:
            archive, listing = Path(tmp) / "tables.dump", Path(tmp) / "tables.list"
            run_checked(subprocess.Popen(
                [tools["pg_dump"], "--no-password", "-Z0", "-Fc", "-f", str(archive),
                 *(f"--table={table_pattern(s, t)}" for s, t in tables)],
                stdout=subprocess.DEVNULL, stderr=err, env=conn.env(scratch)),
                f"pg_dump of {names} from the snapshot", err)
            toc = subprocess.run([tools["pg_restore"], "-l", str(archive)], capture_output=True,
                                 text=True, check=True).stdout
            listing.write_text("".join(ln + "\n" for ln in toc.splitlines()
                                       if not any(k in ln + " " for k in skip)))
            created = create_schemas(conn, dest, sorted({s for s, _ in tables}))
            try:
                run_checked(subprocess.Popen(
                    [tools["pg_restore"], "--no-password", "--exit-on-error",
                     "--single-transaction", "-L", str(listing), "-d", dest, str(archive)],
                    stdout=subprocess.DEVNULL, stderr=err, env=conn.env(dest)),
                    f"restoring {names}", err)
            except BaseException:
                drop_schemas(conn, dest, created)
                raise


def _read_json(source: ArtifactSource, name: str) -> dict[str, Any]:
    with source.open(name) as f:
        data = f.read()
        f.read()  # EOF: verification
    try:
        return dict(json.loads(data))
    except ValueError as e:
        raise SourceCorrupt(f"{name} in the snapshot is not valid JSON: {e}") from e
