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
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, ClassVar, cast
from urllib.parse import unquote, urlsplit

from stackvault.errors import (
    SourceCorrupt,
    SourceError,
    SourceInUse,
    SourceUnavailable,
    UsageError,
)
from stackvault.sources.base import (
    ArtifactInfo,
    ArtifactSink,
    ArtifactSource,
    ComponentResult,
    Fingerprint,
    ProbeResult,
    Target,
)

try:  # psycopg is a dependency of stackvault; keep the error readable if it is broken
    import psycopg
    from psycopg import sql
except ImportError as _e:  # pragma: no cover - exercised only on broken installs
    raise UsageError("the postgres source needs psycopg, which is not installed",
                     hint="pip install 'psycopg[binary]'") from _e

GLOBALS = "globals.sql"
COPY_BLOCK = 1 << 20
# Session settings that make text output of values independent of server and user defaults.
_STABLE_OUTPUT = ("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; "
                  "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; "
                  "SET bytea_output = 'hex'; SET synchronize_seqscans = off")
_BIN_CANDIDATES = ("/usr/lib/postgresql/{major}/bin",  # Debian, Ubuntu
                   "/usr/pgsql-{major}/bin",  # RHEL and friends (PGDG)
                   "/opt/homebrew/opt/postgresql@{major}/bin",
                   "/usr/local/opt/postgresql@{major}/bin")
_SCRATCH = "__sv_restore_"
_OLD = "__sv_old_"


def _dump_name(db: str, fmt: str) -> str:
    return f"databases/{db}.{'dump' if fmt == 'custom' else 'dir'}"


def _meta_name(db: str) -> str:
    return f"databases/{db}.json"


# --- connection settings ------------------------------------------------------------------


@dataclass(frozen=True)
class Conn:
    """Where and as whom to connect; the password is kept out of repr and messages."""

    host: str
    port: int
    user: str
    password: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}" if not self.host.startswith("/") else self.host

    def kwargs(self, dbname: str) -> dict[str, Any]:
        kw: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user,
                              "dbname": dbname, "connect_timeout": 10,
                              "application_name": "stackvault"}
        if self.password is not None:
            kw["password"] = self.password
        return kw

    def env(self, dbname: str) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: never a password on a command line."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                   PGDATABASE=dbname, PGCONNECT_TIMEOUT="10", PGAPPNAME="stackvault")
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, dbname: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(**self.kwargs(dbname), autocommit=autocommit)
        except psycopg.OperationalError as e:
            raise _connect_error(e, self, dbname) from None


def _connect_error(e: Exception, conn: Conn, dbname: str) -> SourceError:
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    low = str(e).lower()
    if "password authentication failed" in low or "no password supplied" in low or \
            "authentication failed" in low:
        return SourceUnavailable(
            f"PostgreSQL at {conn.where}: authentication failed for user {conn.user!r}",
            hint="check the user and the password_env/password_file of this component")
    if "does not exist" in low and "database" in low:
        return SourceUnavailable(f"PostgreSQL at {conn.where}: database {dbname!r} does not "
                                 "exist", hint="check `databases` in stackvault.yaml")
    if "connection refused" in low or "could not connect" in low or "timeout" in low or \
            "could not translate host name" in low or "no such file" in low:
        return SourceUnavailable(f"cannot reach PostgreSQL at {conn.where}: {text}",
                                 hint="check host and port in stackvault.yaml and that the "
                                      "server is running")
    return SourceUnavailable(f"PostgreSQL at {conn.where}: {text}")


def _read_password(password_env: str | None, password_file: Path | None) -> str | None:
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise UsageError(f"the environment variable {password_env} (password_env) is not "
                             "set", hint=f"export {password_env}=... before running stackvault")
        return value
    if password_file:
        try:
            lines = Path(password_file).read_text().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read password_file {password_file}: {e.strerror}") from e
        return lines[0] if lines else ""
    return None


# --- client tools -----------------------------------------------------------------------


def tool_version(path: Path) -> tuple[int, str]:
    """(major, full version text) of a PostgreSQL client program."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise UsageError(f"cannot run {path}: {e}") from e
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not m:
        raise UsageError(f"cannot tell the version of {path} from {out!r}")
    return int(m.group(1)), m.group(0)


@dataclass(frozen=True)
class Tools:
    bin_dir: Path
    major: int
    version: str

    def __getitem__(self, program: str) -> str:
        return str(self.bin_dir / program)


def find_tools(server_major: int, pg_bin_dir: Path | None) -> Tools:
    """pg_dump & co. for a server of `server_major`: from `pg_bin_dir` if given (must not be
    older than the server), else the first install of exactly that major version found."""
    if pg_bin_dir is not None:
        if not (Path(pg_bin_dir) / "pg_dump").is_file():
            raise UsageError(f"there is no pg_dump in pg_bin_dir {pg_bin_dir}",
                             hint="point pg_bin_dir at the bin folder of a PostgreSQL "
                                  f"{server_major} installation")
        major, version = tool_version(Path(pg_bin_dir) / "pg_dump")
        if major < server_major:
            raise UsageError(f"version mismatch: pg_dump {version} in {pg_bin_dir} cannot "
                             f"dump a PostgreSQL {server_major} server",
                             hint=f"install the PostgreSQL {server_major} client tools and "
                                  "point pg_bin_dir at them")
        return Tools(Path(pg_bin_dir), major, version)
    seen: list[str] = []
    candidates = [Path(p.format(major=server_major)) for p in _BIN_CANDIDATES]
    on_path = shutil.which("pg_dump")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    for d in candidates:
        if (d / "pg_dump").is_file() and (d / "pg_restore").is_file():
            major, version = tool_version(d / "pg_dump")
            if major == server_major:
                return Tools(d, major, version)
            seen.append(f"{version} in {d}")
    found = f" (found only pg_dump {', '.join(seen)})" if seen else ""
    raise UsageError(f"no pg_dump/pg_restore for PostgreSQL {server_major} on this "
                     f"machine{found}",
                     hint=f"install them (Debian/Ubuntu: apt-get install postgresql-client-"
                          f"{server_major}) or set pg_bin_dir to their folder")


def _run_checked(proc: subprocess.Popen[bytes], what: str, stderr_file: IO[bytes]) -> None:
    rc = proc.wait()
    if rc != 0:
        stderr_file.seek(0)
        lines = [ln for ln in stderr_file.read().decode("utf-8", "replace").splitlines()
                 if ln.strip()]
        detail = "; ".join(lines[-3:]) or f"exit status {rc}"
        raise SourceError(f"{what} failed: {detail}")


# --- fingerprints ---------------------------------------------------------------------------


def _tables(cur: psycopg.Cursor[Any]) -> list[tuple[str, str]]:
    cur.execute("""
        SELECT n.nspname, c.relname FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND c.relpersistence <> 't'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
        ORDER BY 1, 2""")
    return [(s, t) for s, t in cur.fetchall()]


def fingerprint_db(conn: psycopg.Connection[Any], label: str,
                   only: set[tuple[str, str]] | None = None) -> Fingerprint:
    """Rows per table and an order-independent checksum per table, keys `label.schema.table`.
    Runs in the connection's current transaction (so, in an exported snapshot, it describes
    exactly what pg_dump dumps). Sequences are left out: their values are not transactional,
    so no snapshot pins them (pg_dump reads them when it gets to them).

    The checksum is the sum (as numeric, so no overflow) of a 64-bit hash per row:
    `hash_record_extended` (per-type hash functions; no text conversion) where every column
    type has one, else the hash of the row's text form under fixed output settings.
    """
    fp = Fingerprint()
    with conn.cursor() as cur:
        cur.execute(_STABLE_OUTPUT)
        for schema, table in _tables(cur):
            if only is not None and (schema, table) not in only:
                continue
            rel = sql.Identifier(schema, table)
            key = f"{label}.{schema}.{table}"
            try:
                with conn.transaction():
                    cur.execute(sql.SQL("SELECT count(*), coalesce(sum(hash_record_extended(t, 0)"
                                        "::numeric), 0)::text FROM ONLY {} t").format(rel))
                    count, digest = cur.fetchone()  # type: ignore[misc]
            except psycopg.errors.UndefinedFunction:
                cur.execute(sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)"
                                    "::numeric), 0)::text FROM ONLY {} t").format(rel))
                count, digest = cur.fetchone()  # type: ignore[misc]
            fp.counts[key] = int(count)
            fp.digests[key] = str(digest)
    return fp


# --- the adapter ----------------------------------------------------------------------------


class PostgresSource:
    """One PostgreSQL server: `databases` (each one custom- or directory-format dump plus a
    small JSON of its properties) and optionally the roles (`globals.sql`)."""

    type: ClassVar[str] = "postgres"

    def __init__(self, *, databases: list[str], host: str = "localhost", port: int = 5432,
                 user: str = "postgres", password_env: str | None = None,
                 password_file: Path | None = None, globals: bool = False,
                 format: str = "custom", jobs: int = 1, pg_bin_dir: Path | None = None,
                 tables: list[str] | None = None) -> None:
        self.databases = list(databases)
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
        over = _target_server(target)
        return Conn(host=over.get("host", self.host), port=int(over.get("port", self.port)),
                    user=over.get("user", self.user),
                    password=_read_password(self.password_env, self.password_file))

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
        wanted = _target_db(target)
        if wanted is None:
            return {n: n for n in names}
        if len(names) != 1:
            raise UsageError(f"--to names one database ({wanted}) but the component has "
                             f"{len(names)}: {', '.join(names)}",
                             hint="give the databases in stackvault.yaml one per component, "
                                  "or restore without --to")
        return {names[0]: wanted}

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
        conn = self._conn(target) if _target_server(target) else None
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
                sub = fingerprint_db(c, label, only)
                c.rollback()
            fp.counts.update(sub.counts)
            fp.digests.update(sub.digests)
        return fp

    def _table_filter(self, c: psycopg.Connection[Any]) -> set[tuple[str, str]]:
        with c.cursor() as cur:
            have = set(_tables(cur))
        out = set()
        for spec in self.tables or []:
            out |= _match_table(spec, have)
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
            _run_checked(proc, "pg_dumpall --globals-only", err)
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
                all_tables = _tables(cur)
            facts = {"wal_lsn": lsn, "snapshot_time": at, "encoding": encoding,
                     "collate": collate, "ctype": ctype, "owner": owner,
                     "tables": [list(t) for t in all_tables
                                if only is None or t in only]}
            args = [tools["pg_dump"], "--no-password", "-Z0", f"--snapshot={snapshot}"]
            for schema, table in sorted(only or ()):
                args.append(f"--table={_pattern(schema, table)}")
            fp_box: dict[str, Any] = {}

            def take_fingerprint() -> None:
                try:
                    fp_box["fp"] = fingerprint_db(c, db, only)
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
                _run_checked(proc, f"pg_dump of {db}", err)
                return [info]
            # Directory format: pg_dump writes the folder itself (needed for parallel jobs).
            with tempfile.TemporaryDirectory(prefix="stackvault-pgdump-") as tmp:
                out = Path(tmp) / "dump"
                proc = subprocess.Popen([*args, "-Fd", "-j", str(self.jobs), "-f", str(out)],
                                        stdout=subprocess.DEVNULL, stderr=err, env=conn.env(db))
                _run_checked(proc, f"pg_dump of {db}", err)
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
            picks = _pick_tables(tables, metas)
            for db in sorted({d for d, _ in picks}):
                wanted = {t for d, t in picks if d == db}
                self._restore_tables(source, conn, tools, db, mapping[db], metas[db], wanted,
                                     force)
            return
        for dest in mapping.values():  # fail fast, before any work
            if not force:
                _refuse_if_in_use(conn, dest)
        if self.globals and GLOBALS in names:
            self._restore_globals(source, conn, tools)
        for db, dest in mapping.items():
            scratch = self._restore_to_scratch(source, conn, tools, db, metas[db])
            try:
                _switch_over(conn, scratch, dest, force)
            except BaseException:
                _drop_database(conn, scratch)
                raise

    def _restore_to_scratch(self, source: ArtifactSource, conn: Conn, tools: Tools, db: str,
                            meta: Mapping[str, Any]) -> str:
        """pg_restore the snapshot's `db` into a new scratch database; return its name."""
        scratch = f"{db[:30]}{_SCRATCH}{secrets.token_hex(4)}"
        _create_database(conn, scratch, meta)
        try:
            self._pg_restore(source, conn, tools, db, scratch)
        except BaseException:
            _drop_database(conn, scratch)
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
                        _pump(f, proc.stdin)  # raises at EOF if the artifact is damaged
                except BrokenPipeError:
                    pass  # pg_restore stopped early: its exit status and message say why
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
                finally:
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
                _run_checked(proc, f"pg_restore of {db}", err)
                return
            if _dump_name(db, "directory") not in names:
                raise SourceCorrupt(f"the snapshot holds no dump of database {db}")
            with tempfile.TemporaryDirectory(prefix="stackvault-pgrestore-") as tmp:
                folder = Path(tmp) / "dump"
                source.extract(_dump_name(db, "directory"), folder)
                proc = subprocess.Popen([*base, "-Fd", "-j", str(self.jobs), str(folder)],
                                        stdout=subprocess.DEVNULL, stderr=err,
                                        env=conn.env(into))
                _run_checked(proc, f"pg_restore of {db}", err)

    def _restore_globals(self, source: ArtifactSource, conn: Conn, tools: Tools) -> None:
        """Replay roles and tablespaces; roles that exist already are kept (and altered)."""
        with tempfile.TemporaryFile() as script, tempfile.TemporaryFile() as err:
            with source.open(GLOBALS) as f:
                _pump(f, script)
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
        if not _database_exists(conn, dest):
            _create_database(conn, dest, meta)
        scratch = self._restore_to_scratch(source, conn, tools, db, meta)
        try:
            with contextlib.closing(conn.connect(dest)) as tc:
                with tc.cursor() as cur:
                    have = set(_tables(cur))
                tc.rollback()
            existing = sorted(wanted & have)
            missing = sorted(wanted - have)
            if existing:
                _refill_tables(conn, scratch, dest, existing)
            if missing:
                self._copy_new_tables(conn, tools, scratch, dest, missing, have)
        finally:
            _drop_database(conn, scratch)

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
            _run_checked(subprocess.Popen(
                [tools["pg_dump"], "--no-password", "-Z0", "-Fc", "-f", str(archive),
                 *(f"--table={_pattern(s, t)}" for s, t in tables)],
                stdout=subprocess.DEVNULL, stderr=err, env=conn.env(scratch)),
                f"pg_dump of {names} from the snapshot", err)
            toc = subprocess.run([tools["pg_restore"], "-l", str(archive)], capture_output=True,
                                 text=True, check=True).stdout
            listing.write_text("".join(ln + "\n" for ln in toc.splitlines()
                                       if not any(k in ln + " " for k in skip)))
            created = _create_schemas(conn, dest, sorted({s for s, _ in tables}))
            try:
                _run_checked(subprocess.Popen(
                    [tools["pg_restore"], "--no-password", "--exit-on-error",
                     "--single-transaction", "-L", str(listing), "-d", dest, str(archive)],
                    stdout=subprocess.DEVNULL, stderr=err, env=conn.env(dest)),
                    f"restoring {names}", err)
            except BaseException:
                _drop_schemas(conn, dest, created)
                raise


# --- restore helpers --------------------------------------------------------------------


def _pump(src: BinaryIO, dst: IO[bytes]) -> None:
    while block := src.read(COPY_BLOCK):
        dst.write(block)


def _read_json(source: ArtifactSource, name: str) -> dict[str, Any]:
    with source.open(name) as f:
        data = f.read()
        f.read()  # EOF: verification
    try:
        return dict(json.loads(data))
    except ValueError as e:
        raise SourceCorrupt(f"{name} in the snapshot is not valid JSON: {e}") from e


def _pattern(schema: str, table: str) -> str:
    """A pg_dump --table pattern matching exactly schema.table (quoted: no wildcards)."""
    return '"{}"."{}"'.format(schema.replace('"', '""'), table.replace('"', '""'))


def _match_table(spec: str, have: set[tuple[str, str]]) -> set[tuple[str, str]]:
    schema, _, table = spec.rpartition(".")
    if schema:
        return {(schema, table)} & have
    return {(s, t) for s, t in have if t == table and s == "public"} or \
        {(s, t) for s, t in have if t == table}


def _pick_tables(specs: list[str], metas: Mapping[str, Mapping[str, Any]]
                 ) -> list[tuple[str, tuple[str, str]]]:
    """Resolve `table`, `schema.table` or `db.schema.table` against the snapshot's tables."""
    out: list[tuple[str, tuple[str, str]]] = []
    for spec in specs:
        hits: list[tuple[str, tuple[str, str]]] = []
        for db, meta in metas.items():
            have = {(str(s), str(t)) for s, t in meta.get("tables", [])}
            if spec.startswith(db + ".") and spec.count(".") >= 2:
                hits += [(db, st) for st in _match_table(spec[len(db) + 1:], have)]
            else:
                hits += [(db, st) for st in _match_table(spec, have)]
        hits = list(dict.fromkeys(hits))
        if not hits:
            known = sorted(f"{s}.{t}" for m in metas.values() for s, t in m.get("tables", []))
            raise UsageError(f"table {spec!r} is not in the snapshot; it has: "
                             f"{', '.join(known[:20]) or 'no tables'}")
        if len(hits) > 1:
            raise UsageError(f"table {spec!r} is ambiguous: "
                             f"{', '.join(f'{d}.{s}.{t}' for d, (s, t) in hits)}",
                             hint="name it as database.schema.table")
        out.extend(hits)
    return out


def _target_db(target: Target | None) -> str | None:
    if not target:
        return None
    if "url" in target:
        path = urlsplit(str(target["url"])).path.lstrip("/")
        return unquote(path) or None
    db = target.get("database")
    if db is None:
        return None
    text = str(db)
    if "://" in text:
        return _target_db({"url": text})
    return text


def _target_server(target: Target | None) -> dict[str, Any]:
    """host/port/user from a `postgresql://user@host:port/db` target (no password in it)."""
    if not target:
        return {}
    text = str(target.get("url") or target.get("database") or "")
    if "://" not in text:
        return {}
    parts = urlsplit(text)
    if parts.scheme not in ("postgres", "postgresql"):
        raise UsageError(f"a PostgreSQL target URL starts with postgresql://, not "
                         f"{parts.scheme}://")
    if parts.password:
        raise UsageError("the target URL holds a password; passwords never go on the "
                         "command line", hint="use the component's password_env or "
                                              "password_file")
    out: dict[str, Any] = {}
    if parts.hostname:
        out["host"] = parts.hostname
    if parts.port:
        out["port"] = parts.port
    if parts.username:
        out["user"] = unquote(parts.username)
    return out


def _database_exists(conn: Conn, name: str) -> bool:
    with contextlib.closing(conn.connect("postgres", autocommit=True)) as c:
        return c.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                         (name,)).fetchone() is not None


def _create_database(conn: Conn, name: str, meta: Mapping[str, Any]) -> None:
    """CREATE DATABASE from template0 with the original's encoding and locale; its owner if
    that role exists here."""
    with contextlib.closing(conn.connect("postgres", autocommit=True)) as c:
        owner = meta.get("owner")
        has_owner = owner and c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                        (owner,)).fetchone()
        parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))]
        if meta.get("encoding"):
            parts.append(sql.SQL("ENCODING {}").format(sql.Literal(meta["encoding"])))
        if meta.get("collate") and meta.get("ctype"):
            parts.append(sql.SQL("LC_COLLATE {} LC_CTYPE {}").format(
                sql.Literal(meta["collate"]), sql.Literal(meta["ctype"])))
        if has_owner:
            parts.append(sql.SQL("OWNER {}").format(sql.Identifier(str(owner))))
        try:
            c.execute(sql.SQL(" ").join(parts))
        except psycopg.Error as e:
            raise SourceError(f"cannot create database {name}: {e}".strip(),
                              hint="the user needs CREATEDB; the locale must exist on the "
                                   "target server") from e


def _create_schemas(conn: Conn, db: str, schemas: list[str]) -> list[str]:
    """Create the schemas missing in `db`; return those created."""
    created = []
    with contextlib.closing(conn.connect(db, autocommit=True)) as c:
        for schema in schemas:
            if c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                         (schema,)).fetchone() is None:
                c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                created.append(schema)
    return created


def _drop_schemas(conn: Conn, db: str, schemas: list[str]) -> None:
    with contextlib.suppress(SourceError, psycopg.Error), \
            contextlib.closing(conn.connect(db, autocommit=True)) as c:
        for schema in schemas:
            c.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(schema)))


def _drop_database(conn: Conn, name: str) -> None:
    with contextlib.suppress(SourceError, psycopg.Error), \
            contextlib.closing(conn.connect("postgres", autocommit=True)) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def _sessions(c: psycopg.Connection[Any], db: str) -> list[str]:
    rows = c.execute("SELECT usename, coalesce(application_name, ''), "
                     "coalesce(client_addr::text, 'local') FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (db,)).fetchall()
    return [f"{u}@{a}" + (f" ({app})" if app else "") for u, app, a in rows]


def _refuse_if_in_use(conn: Conn, db: str) -> None:
    with contextlib.closing(conn.connect("postgres", autocommit=True)) as c:
        who = _sessions(c, db)
    if who:
        raise SourceInUse(f"database {db} has {len(who)} open connection(s): "
                          f"{', '.join(who[:5])}",
                          hint="stop the application (or pause it with a hook), or force the "
                               "restore (--force), which disconnects them")


def _switch_over(conn: Conn, scratch: str, dest: str, force: bool) -> None:
    """Put `scratch` in the place of `dest`: rename dest away, rename scratch, drop the old.
    If the second rename fails the first is undone, so `dest` is never missing."""
    old = f"{dest[:30]}{_OLD}{secrets.token_hex(4)}"
    with contextlib.closing(conn.connect("postgres", autocommit=True)) as c:
        exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                           (dest,)).fetchone() is not None
        if exists:
            for attempt in range(5):
                who = _sessions(c, dest)
                if who and not force:
                    raise SourceInUse(f"database {dest} has {len(who)} open connection(s): "
                                      f"{', '.join(who[:5])}", hint="stop the application, or "
                                      "force the restore (--force), which disconnects them")
                if who:
                    c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (dest,))
                try:
                    c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(dest), sql.Identifier(old)))
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == 4:
                        raise SourceInUse(f"database {dest} is in use and could not be "
                                          "replaced") from None
                    threading.Event().wait(0.2 * (attempt + 1))
        try:
            c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(scratch), sql.Identifier(dest)))
        except psycopg.Error as e:
            if exists:
                c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(old), sql.Identifier(dest)))
            raise SourceError(f"could not put the restored database in place of {dest}: "
                              f"{e}") from e
        if exists:
            c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(old)))


def _refill_tables(conn: Conn, scratch: str, dest: str,
                   tables: list[tuple[str, str]]) -> None:
    """One transaction on `dest`: TRUNCATE the tables, COPY their rows from `scratch`, set
    their owned sequences to the snapshot's values."""
    with contextlib.closing(conn.connect(scratch)) as sc, \
            contextlib.closing(conn.connect(dest)) as dc:
        rels = [sql.Identifier(s, t) for s, t in tables]
        try:
            with dc.transaction():
                dc.execute("SET LOCAL lock_timeout = '60s'")
                dc.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(rels)))
                for rel in rels:
                    cols = [r[0] for r in sc.execute(
                        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                        "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' "
                        "ORDER BY attnum", (rel.as_string(sc),)).fetchall()]
                    collist = sql.SQL(", ").join(sql.Identifier(x) for x in cols)
                    with sc.cursor().copy(sql.SQL("COPY {} ({}) TO STDOUT (FORMAT binary)")
                                          .format(rel, collist)) as out, \
                            dc.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)")
                                             .format(rel, collist)) as into:
                        for block in out:
                            into.write(block)
                    for (seq,) in sc.execute(
                            "SELECT pg_get_serial_sequence(%s, attname) FROM pg_attribute "
                            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
                            " AND pg_get_serial_sequence(%s, attname) IS NOT NULL",
                            (rel.as_string(sc),) * 3).fetchall():
                        # `seq` comes quoted from the catalog: safe to splice in
                        row = sc.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
                            sql.SQL(seq))).fetchone()
                        assert row is not None
                        value, called = row
                        dc.execute("SELECT setval(%s::regclass, %s, %s)", (seq, value, called))
        except psycopg.errors.FeatureNotSupported as e:
            raise SourceError(f"cannot refill {', '.join(f'{s}.{t}' for s, t in tables)}: "
                              f"{str(e).splitlines()[0]}; nothing was changed",
                              hint="restore the tables that reference it too, or the whole "
                                   "database") from e
        except psycopg.Error as e:
            raise SourceError(f"restoring {', '.join(f'{s}.{t}' for s, t in tables)} into "
                              f"{dest} failed: {str(e).splitlines()[0]}; nothing was "
                              "changed") from e
        sc.rollback()

