"""SQLite adapter: online backup-API copy, per-table fingerprints, checked atomic restore."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
import stat
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

from stackvault.errors import (
    SourceCorrupt,
    SourceError,
    SourceInUse,
    SourceUnavailable,
    UsageError,
)
from stackvault.sources.base import (
    ArtifactSink,
    ArtifactSource,
    ComponentResult,
    Fingerprint,
    ProbeResult,
    Target,
    remove_scratch_path,
    scratch_folder,
)

ARTIFACT = "db.sqlite3"
SCHEMA_KEY = "sqlite_master"  # digest of the schema; no user table can have this name
BUSY_TIMEOUT = 30.0  # how long a backup waits for a writer to release its lock
IN_USE_TIMEOUT = 0.5  # how long a restore waits for exclusive access before calling it in use
SIDECARS = ("-wal", "-shm", "-journal")
_VIRTUAL = re.compile(r"^\s*CREATE\s+VIRTUAL\s+TABLE", re.IGNORECASE)


class _Text(bytes):
    """A TEXT value's raw bytes (our text_factory), so that it hashes apart from a BLOB."""

    __slots__ = ()


def _s(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _uri(path: Path | str, **params: str) -> str:
    uri = Path(os.path.abspath(path)).as_uri()
    return uri + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


def _connect(path: Path | str, *, mode: str = "rw",
             timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """Open in autocommit mode. `mode`: "rw" (an existing database, never created), "rwc"
    (created if missing), or "immutable" (a private copy: read-only, no locks, no -wal)."""
    params = {"immutable": "1"} if mode == "immutable" else {"mode": mode}
    try:
        con = sqlite3.connect(_uri(path, **params), uri=True, timeout=timeout,
                              isolation_level=None)
    except sqlite3.Error as e:
        raise SourceUnavailable(f"{path}: cannot open the SQLite database: {e}",
                                hint="check the path and its permissions") from e
    con.text_factory = _Text
    return con


def _unlink(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_sidecars(path: Path | str) -> None:
    for suffix in SIDECARS:
        _unlink(f"{path}{suffix}")


def check_integrity(path: Path | str, what: str) -> None:
    """Run `PRAGMA integrity_check` on a private (unshared) database file; raise
    SourceCorrupt with the first problems found unless it says "ok"."""
    try:
        with closing(_connect(path, mode="immutable")) as con:
            problems = [_s(r[0]) for r in con.execute("PRAGMA integrity_check(20)")]
    except sqlite3.DatabaseError as e:
        problems = [str(e)]
    if problems != ["ok"]:
        detail = "; ".join(problems)
        raise SourceCorrupt(f"{what} failed PRAGMA integrity_check: {detail[:600]}",
                            hint="nothing was written from it; use another snapshot")


# --- fingerprints ---------------------------------------------------------------------------


def _encode(v: Any) -> bytes:
    if v is None:
        return b"n"
    if isinstance(v, int):
        return b"i%d;" % v
    if isinstance(v, float):
        return b"r" + v.hex().encode() + b";"
    if isinstance(v, _Text):
        return b"t%d:" % len(v) + v
    return b"b%d:" % len(v) + bytes(v)


def _table_layout(con: sqlite3.Connection, schema: str, table: str
                  ) -> tuple[list[str], list[str], str | None, list[str]]:
    """(all columns incl. generated, insertable columns, rowid alias to select or None, the
    columns to order by). A rowid table is ordered by rowid; WITHOUT ROWID by primary key."""
    info = con.execute(f"PRAGMA {schema}.table_xinfo({_q(table)})").fetchall()
    # cid, name, type, notnull, dflt_value, pk, hidden (0 normal, 2/3 generated)
    cols = [_s(r[1]) for r in info if r[6] != 1]
    insertable = [_s(r[1]) for r in info if r[6] == 0]
    pks = sorted((r[5], _s(r[1]), _s(r[2]).upper()) for r in info if r[5])
    lowered = {c.lower() for c in cols}
    alias = next((a for a in ("rowid", "_rowid_", "oid") if a not in lowered), None)
    rowid_table = True
    if alias is not None:
        try:
            con.execute(f"SELECT {alias} FROM {schema}.{_q(table)} LIMIT 0")
        except sqlite3.OperationalError:
            rowid_table = False  # WITHOUT ROWID
    if rowid_table and alias is not None:
        return cols, insertable, alias, [alias]
    order = [name for _, name, _ in pks] or cols
    return cols, insertable, None, order


def _integer_pk(con: sqlite3.Connection, schema: str, table: str) -> bool:
    """Whether the table has an INTEGER PRIMARY KEY column (an alias of its rowid)."""
    info = con.execute(f"PRAGMA {schema}.table_xinfo({_q(table)})").fetchall()
    pks = [r for r in info if r[5]]
    return len(pks) == 1 and _s(pks[0][2]).upper() == "INTEGER"


def _table_digest(con: sqlite3.Connection, table: str) -> tuple[int, str]:
    cols, _, alias, order = _table_layout(con, "main", table)
    h = hashlib.sha256(json.dumps(cols).encode() + b"\n")
    select = ([alias] if alias else []) + [_q(c) for c in cols]
    cur = con.execute(f"SELECT {', '.join(select)} FROM main.{_q(table)} "
                      f"ORDER BY {', '.join(c if c == alias else _q(c) for c in order)}")
    n = 0
    while rows := cur.fetchmany(512):
        for row in rows:
            h.update(b"".join(map(_encode, row)) + b"\n")
        n += len(rows)
    return n, h.hexdigest()


def _schema_digest(con: sqlite3.Connection) -> str:
    h = hashlib.sha256()
    for row in con.execute("SELECT type, name, tbl_name, sql FROM main.sqlite_master "
                           "ORDER BY type, name"):
        h.update(b"".join(map(_encode, row)) + b"\n")
    for pragma in ("user_version", "application_id"):
        h.update(b"%s=%d\n" % (pragma.encode(), con.execute(f"PRAGMA {pragma}").fetchone()[0]))
    return h.hexdigest()


def fingerprint_connection(con: sqlite3.Connection) -> Fingerprint:
    """Rows per table (`counts`) and, in `digests`, a SHA-256 per table over its column names
    and its rows (rowid first, if any) in rowid or primary-key order, every value tagged with
    its storage class, plus the schema's digest under "sqlite_master". Read in one
    transaction, so it describes one consistent state. Virtual tables are skipped (their
    shadow tables are ordinary tables and are included)."""
    fp = Fingerprint()
    con.execute("BEGIN")
    try:
        tables = [(_s(name), _s(sql or b"")) for name, sql in con.execute(
            "SELECT name, sql FROM main.sqlite_master WHERE type = 'table' ORDER BY name")]
        fp.digests[SCHEMA_KEY] = _schema_digest(con)
        for name, sql in tables:
            if _VIRTUAL.match(sql):
                continue
            fp.counts[name], fp.digests[name] = _table_digest(con, name)
    finally:
        con.execute("ROLLBACK")
    return fp


# --- in use? --------------------------------------------------------------------------------


def _processes_with_open(path: Path) -> list[str]:
    """Best effort, Linux: processes (that we may inspect) with the file open."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    key = (st.st_dev, st.st_ino)
    holders: list[str] = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                fst = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (fst.st_dev, fst.st_ino) == key:
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                holders.append(f"pid {pid} ({comm})")
                break
    return holders


def in_use(path: Path) -> str | None:
    """Why the database at `path` is in use, or None if we could get exclusive access.

    Two checks: processes holding the file open (Linux /proc, same user or root; this is the
    only way to see an idle connection in rollback-journal mode, which holds no lock), then an
    exclusive lock (`locking_mode=EXCLUSIVE` + `BEGIN EXCLUSIVE`, waiting IN_USE_TIMEOUT):
    it fails while any connection has a transaction open, and in WAL mode while any
    connection is open at all."""
    holders = _processes_with_open(path)
    if holders:
        return "open in " + ", ".join(holders)
    with closing(_connect(path, mode="rw", timeout=IN_USE_TIMEOUT)) as con:
        try:
            con.execute("PRAGMA locking_mode=EXCLUSIVE")
            con.execute("BEGIN EXCLUSIVE")
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            con.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                return f"another connection holds it ({e})"
            raise SourceError(f"{path}: cannot check whether it is in use: {e}",
                              hint="check its permissions, or force the restore") from e
        except sqlite3.DatabaseError as e:
            raise SourceError(f"{path} is not a SQLite database ({e}); refusing to replace it",
                              hint="check the target path, or force the restore") from e
    return None


# --- the adapter ----------------------------------------------------------------------------


class SqliteSource:
    """A SQLite database file.

    Backup: SQLite's online backup API copies every page inside one read transaction into a
    temporary file in the system temp folder (or `tmp_dir`). This temporary copy is the only
    way to get a consistent copy of a live database: reading the file's bytes while the
    application writes captures torn pages and misses what is still in the -wal file, and the
    backup API can only write into another database. In WAL mode writers carry on during the
    copy; in rollback-journal mode they wait for it (their busy timeout must cover it). The
    copy must pass `PRAGMA integrity_check`, is fingerprinted, stored as `db.sqlite3`, deleted.

    Restore: extract to a temporary file next to the target, `PRAGMA integrity_check` it,
    refuse if the target is in use (see `in_use`) unless forced, `os.replace` it over the
    target (keeping the target's mode and owner), then delete the old file's -wal, -shm and
    -journal. With `tables`, those tables (with their indexes, triggers and AUTOINCREMENT
    counters) are replaced inside the target in one transaction instead.
    """

    type: ClassVar[str] = "sqlite"

    def __init__(self, path: str | os.PathLike[str], force_restore: bool = False, *,
                 tmp_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.force_restore = force_restore
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else None

    # -- inspection
    def probe(self) -> ProbeResult:
        version = sqlite3.sqlite_version
        if not self.path.is_file():
            return ProbeResult(False, version, None, f"{self.path}: no such database file")
        size = sum(os.path.getsize(f"{self.path}{s}") for s in ("", "-wal")
                   if os.path.exists(f"{self.path}{s}"))
        try:
            with closing(_connect(self.path, timeout=IN_USE_TIMEOUT)) as con:
                tables = con.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
                mode = _s(con.execute("PRAGMA journal_mode").fetchone()[0])
        except (sqlite3.Error, SourceUnavailable) as e:
            return ProbeResult(False, version, size, f"{self.path}: {e}")
        return ProbeResult(True, version, size, f"{tables} tables, journal_mode={mode}")

    def _target_path(self, target: Target | None) -> Path:
        if target is None:
            return self.path
        if set(target) != {"path"}:
            raise UsageError(f"a sqlite restore target takes exactly 'path', got {sorted(target)}",
                             hint="e.g. --to db=/tmp/scratch.sqlite3")
        return Path(target["path"])

    # -- integrity rules (stackvault integrity)
    def query(self, sql_text: str, params: tuple[Any, ...] = (), *,
              database: str | None = None) -> list[tuple[Any, ...]]:
        """Rows of a query, read-only."""
        try:
            with closing(_connect(self.path, mode="ro")) as con:
                return [tuple(_s(v) if isinstance(v, bytes) else v for v in row)
                        for row in con.execute(sql_text, params).fetchall()]
        except sqlite3.Error as e:
            raise SourceError(f"{self.path}: query failed: {e}") from e

    def execute(self, statements: list[tuple[str, tuple[Any, ...]]], *,
                database: str | None = None) -> int:
        """Run statements in one transaction; return the rows they changed."""
        try:
            with closing(_connect(self.path)) as con:
                con.execute("BEGIN IMMEDIATE")
                try:
                    changed = sum(con.execute(t, p).rowcount for t, p in statements)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                return changed
        except sqlite3.Error as e:
            raise SourceError(f"{self.path}: update failed, nothing was changed: {e}") from e

    # -- drills
    def scratch_target(self, label: str) -> Target:
        return {"path": str(scratch_folder(label) / self.path.name)}

    def remove_target(self, target: Target) -> None:
        path = self._target_path(target)
        _remove_sidecars(path)
        remove_scratch_path(path)

    def run_probe(self, probe: Mapping[str, Any], *, target: Target | None = None) -> str:
        """`{"sql": QUERY}`: the first column of the first row, as text ('' if no row)."""
        if set(probe) != {"sql"}:
            raise UsageError(f"a sqlite probe runs `sql`; got {', '.join(sorted(probe))}")
        path = self._target_path(target)
        try:
            with closing(_connect(path, mode="ro")) as con:
                row = con.execute(str(probe["sql"])).fetchone()
        except sqlite3.Error as e:
            raise SourceError(f"{path}: probe query failed: {e}") from e
        return "" if row is None or row[0] is None else _s(row[0]) if isinstance(
            row[0], bytes) else str(row[0])

    def describe_target(self, target: Target | None = None) -> str:
        path = self._target_path(target)
        if path.exists():
            return f"SQLite database {path} ({path.stat().st_size} bytes): replaced"
        return f"SQLite database {path} (does not exist): created"

    def fingerprint(self, *, target: Target | None = None) -> Fingerprint:
        path = self._target_path(target)
        if not path.is_file():
            raise SourceUnavailable(f"{path}: no such database file")
        try:
            with closing(_connect(path)) as con:
                return fingerprint_connection(con)
        except sqlite3.DatabaseError as e:
            raise SourceCorrupt(f"{path}: cannot read it: {e}") from e

    # -- backup
    def backup(self, sink: ArtifactSink) -> ComponentResult:
        if not self.path.is_file():
            raise SourceUnavailable(f"{self.path}: no such database file",
                                    hint="check the path in stackvault.yaml")
        fd, name = tempfile.mkstemp(prefix="stackvault-sqlite-", suffix=".sqlite3",
                                    dir=self.tmp_dir)
        os.close(fd)
        copy = Path(name)
        try:
            self._copy_to(copy)
            check_integrity(copy, f"the copy of {self.path}")
            with closing(_connect(copy, mode="immutable")) as con:
                fp = fingerprint_connection(con)
                extra = self._facts(con, copy)
            info = sink.add_path(ARTIFACT, copy)
        finally:
            _unlink(copy)
            _remove_sidecars(copy)
        return ComponentResult([info], fp, {"sqlite": sqlite3.sqlite_version}, extra)

    def _copy_to(self, copy: Path) -> None:
        with closing(_connect(self.path)) as src, closing(sqlite3.connect(copy)) as dst:
            try:
                # Take the read lock through the busy handler (waits up to BUSY_TIMEOUT for a
                # writer), then copy every page in one step inside that read transaction.
                src.execute("BEGIN")
                src.execute("SELECT count(*) FROM sqlite_master").fetchone()
                src.backup(dst)
                src.execute("ROLLBACK")
            except sqlite3.OperationalError as e:
                raise SourceError(f"{self.path}: could not copy it: {e}",
                                  hint="a writer kept it locked; retry, or pause the writer "
                                       "with a pre-backup hook") from e
            except sqlite3.DatabaseError as e:
                raise SourceCorrupt(f"{self.path}: cannot read it: {e}",
                                    hint="run PRAGMA integrity_check on it; restore from the "
                                         "last good snapshot") from e
        os.chmod(copy, stat.S_IMODE(os.stat(self.path).st_mode))

    def _facts(self, con: sqlite3.Connection, copy: Path) -> dict[str, Any]:
        with open(copy, "rb") as f:
            header = f.read(100)

        def pragma(name: str) -> Any:
            value = con.execute(f"PRAGMA {name}").fetchone()[0]
            return _s(value) if isinstance(value, bytes) else value

        return {"path": os.path.abspath(self.path),
                "journal": "wal" if len(header) > 18 and header[18] == 2 else "rollback",
                **{p: pragma(p) for p in ("page_size", "page_count", "freelist_count",
                                          "user_version", "application_id", "encoding")}}

    # -- restore
    def restore(self, source: ArtifactSource, *, target: Target | None = None,
                tables: list[str] | None = None, force: bool = False) -> None:
        dest = self._target_path(target)
        if dest.is_symlink():  # replace the database, not the link to it
            dest = Path(os.path.realpath(dest))
        force = force or self.force_restore
        if tables is not None and not tables:
            raise UsageError("an empty table list restores nothing")
        if ARTIFACT not in source.names():
            raise SourceCorrupt(f"the snapshot holds no {ARTIFACT} for this component")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.stackvault-restore-{secrets.token_hex(4)}"
        try:
            source.extract(ARTIFACT, tmp)
            check_integrity(tmp, f"the snapshot's {ARTIFACT}")
            if tables:
                self._restore_tables(tmp, dest, tables, force)
            else:
                self._replace(tmp, dest, force)
        finally:
            _unlink(tmp)
            _remove_sidecars(tmp)

    def _refuse_if_in_use(self, dest: Path) -> None:
        reason = in_use(dest)
        if reason:
            raise SourceInUse(f"{dest} is in use: {reason}",
                              hint="stop the application using it (or pause it with a hook), "
                                   "or force the restore")

    def _replace(self, tmp: Path, dest: Path, force: bool) -> None:
        if os.path.lexists(dest):
            if not force:
                self._refuse_if_in_use(dest)  # closing the check's connection ends the WAL
            else:
                _remove_sidecars(dest)  # a stale -wal must never meet the new file
            st = os.stat(dest)
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError:
                pass
        os.replace(tmp, dest)
        # Whatever still carries the old name now is stale: processes that kept the old file
        # open (forced restore) write to the unlinked inode, never to the new file.
        _remove_sidecars(dest)

    def _restore_tables(self, art: Path, dest: Path, tables: Iterable[str],
                        force: bool) -> None:
        tables = list(dict.fromkeys(tables))
        created = not os.path.lexists(dest)
        if not created and not force:
            self._refuse_if_in_use(dest)
        try:
            with closing(_connect(dest, mode="rwc" if created else "rw")) as con:
                con.execute("ATTACH DATABASE ? AS art", (_uri(art, immutable="1"),))
                self._check_tables(con, tables)
                con.execute("PRAGMA foreign_keys=OFF")
                con.execute("BEGIN IMMEDIATE")
                try:
                    for table in tables:
                        self._copy_table(con, table)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("DETACH DATABASE art")
        except sqlite3.Error as e:
            if created:
                _unlink(dest)
                _remove_sidecars(dest)
            raise SourceError(f"restoring {', '.join(tables)} into {dest} failed: {e}; "
                              "the database was left as it was") from e
        except BaseException:
            if created:
                _unlink(dest)
                _remove_sidecars(dest)
            raise

    @staticmethod
    def _check_tables(con: sqlite3.Connection, tables: list[str]) -> None:
        have = {_s(n): _s(sql or b"") for n, sql in con.execute(
            "SELECT name, sql FROM art.sqlite_master WHERE type = 'table'")}
        for table in tables:
            if table.startswith("sqlite_"):
                raise UsageError(f"{table} is SQLite's own table; restore whole databases "
                                 "to get it back")
            if table not in have:
                user = sorted(n for n in have if not n.startswith("sqlite_"))
                raise UsageError(f"table {table!r} is not in the snapshot; it has: "
                                 f"{', '.join(user) or 'no tables'}")
            if _VIRTUAL.match(have[table]):
                raise UsageError(f"{table} is a virtual table; restore the whole database")

    @staticmethod
    def _copy_table(con: sqlite3.Connection, table: str) -> None:
        sql = con.execute("SELECT sql FROM art.sqlite_master WHERE type = 'table' AND name = ?",
                          (table,)).fetchone()[0]
        con.execute(f"DROP TABLE IF EXISTS main.{_q(table)}")
        con.execute(_s(sql))  # an unqualified CREATE TABLE goes to main
        _, insertable, alias, _ = _table_layout(con, "art", table)
        cols = [_q(c) for c in insertable]
        if alias and not _integer_pk(con, "art", table):
            cols.insert(0, alias)  # keep rowids: other data may refer to them
        collist = ", ".join(cols)
        con.execute(f"INSERT INTO main.{_q(table)} ({collist}) "
                    f"SELECT {collist} FROM art.{_q(table)}")
        for (extra_sql,) in con.execute(
                "SELECT sql FROM art.sqlite_master WHERE tbl_name = ? AND type IN "
                "('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name",
                (table,)).fetchall():
            con.execute(_s(extra_sql))
        has_seq = con.execute("SELECT count(*) FROM art.sqlite_master WHERE name = "
                              "'sqlite_sequence'").fetchone()[0]
        seq = has_seq and con.execute("SELECT seq FROM art.sqlite_sequence WHERE name = ?",
                                      (table,)).fetchone()
        if seq:  # an AUTOINCREMENT table: its CREATE made main.sqlite_sequence exist
            con.execute("DELETE FROM main.sqlite_sequence WHERE name = ?", (table,))
            con.execute("INSERT INTO main.sqlite_sequence (name, seq) VALUES (?, ?)",
                        (table, seq[0]))
