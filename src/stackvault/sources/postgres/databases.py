"""Database-level steps of a restore: scratch databases, the atomic switch-over, refilling
tables in one transaction, and who is connected."""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

from stackvault.errors import SourceError, SourceInUse
from stackvault.sources.postgres.client import Conn

SCRATCH = "__sv_restore_"
OLD = "__sv_old_"


def database_exists(conn: Conn, name: str) -> bool:
    with contextlib.closing(conn.connect("postgres", autocommit=True)) as c:
        return c.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                         (name,)).fetchone() is not None


def create_database(conn: Conn, name: str, meta: Mapping[str, Any]) -> None:
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


def create_schemas(conn: Conn, db: str, schemas: list[str]) -> list[str]:
    """Create the schemas missing in `db`; return those created."""
    created = []
    with contextlib.closing(conn.connect(db, autocommit=True)) as c:
        for schema in schemas:
            if c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                         (schema,)).fetchone() is None:
                c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                created.append(schema)
    return created


def drop_schemas(conn: Conn, db: str, schemas: list[str]) -> None:
    with contextlib.suppress(SourceError, psycopg.Error), \
            contextlib.closing(conn.connect(db, autocommit=True)) as c:
        for schema in schemas:
            c.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(schema)))


def drop_database(conn: Conn, name: str) -> None:
    with contextlib.suppress(SourceError, psycopg.Error), \
            contextlib.closing(conn.connect("postgres", autocommit=True)) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def sessions(c: psycopg.Connection[Any], db: str) -> list[str]:
    rows = c.execute("SELECT usename, coalesce(application_name, ''), "
                     "coalesce(client_addr::text, 'local') FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (db,)).fetchall()
    return [f"{u}@{a}" + (f" ({app})" if app else "") for u, app, a in rows]


def refuse_if_in_use(conn: Conn, db: str) -> None:
    with contextlib.closing(conn.connect("postgres", autocommit=True)) as c:
        who = sessions(c, db)
    if who:
        raise SourceInUse(f"database {db} has {len(who)} open connection(s): "
                          f"{', '.join(who[:5])}",
                          hint="stop the application (or pause it with a hook), or force the "
                               "restore (--force), which disconnects them")


def switch_over(conn: Conn, scratch: str, dest: str, force: bool) -> None:
    """Put `scratch` in the place of `dest`: rename dest away, rename scratch, drop the old.
    If the second rename fails the first is undone, so `dest` is never missing."""
    old = f"{dest[:30]}{OLD}{secrets.token_hex(4)}"
    with contextlib.closing(conn.connect("postgres", autocommit=True)) as c:
        exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                           (dest,)).fetchone() is not None
        if exists:
            for attempt in range(5):
                who = sessions(c, dest)
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


def refill_tables(conn: Conn, scratch: str, dest: str,
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
