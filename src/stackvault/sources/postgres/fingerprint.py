"""Fingerprints of PostgreSQL databases: exact rows and a content checksum per table."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from stackvault.sources.base import Fingerprint

# Session settings that make text output of values independent of server and user defaults.
STABLE_OUTPUT = ("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; "
                 "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; "
                 "SET bytea_output = 'hex'; SET synchronize_seqscans = off")


def list_tables(cur: psycopg.Cursor[Any]) -> list[tuple[str, str]]:
    cur.execute("""
        SELECT n.nspname, c.relname FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND c.relpersistence <> 't'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
        ORDER BY 1, 2""")
    return [(s, t) for s, t in cur.fetchall()]


def fingerprint_db(conn: psycopg.Connection[Any], label: str,
                   only: set[tuple[str, str]] | None = None, *,
                   checksums: bool = True) -> Fingerprint:
    """Rows per table and an order-independent checksum per table, keys `label.schema.table`.
    Runs in the connection's current transaction (so, in an exported snapshot, it describes
    exactly what pg_dump dumps). Sequences are left out: their values are not transactional,
    so no snapshot pins them (pg_dump reads them when it gets to them).

    The checksum is the sum (as numeric, so no overflow) of a 64-bit hash per row:
    `hash_record_extended` (per-type hash functions; no text conversion) where every column
    type has one, else the hash of the row's text form under fixed output settings. Without
    `checksums`, only the row counts (a cheaper scan).
    """
    fp = Fingerprint()
    with conn.cursor() as cur:
        cur.execute(STABLE_OUTPUT)
        for schema, table in list_tables(cur):
            if only is not None and (schema, table) not in only:
                continue
            rel = sql.Identifier(schema, table)
            key = f"{label}.{schema}.{table}"
            if not checksums:
                cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(rel))
                fp.counts[key] = int(cur.fetchone()[0])  # type: ignore[index]
                continue
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
