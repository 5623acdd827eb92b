"""Which tables and which database a restore means: `--component NAME.TABLE` selectors and
`--to` targets (a database name or a postgresql:// URL without a password)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from stackvault.errors import UsageError
from stackvault.sources.base import Target


def table_pattern(schema: str, table: str) -> str:
    """A pg_dump --table pattern matching exactly schema.table (quoted: no wildcards)."""
    return '"{}"."{}"'.format(schema.replace('"', '""'), table.replace('"', '""'))


def match_table(spec: str, have: set[tuple[str, str]]) -> set[tuple[str, str]]:
    schema, _, table = spec.rpartition(".")
    if schema:
        return {(schema, table)} & have
    return {(s, t) for s, t in have if t == table and s == "public"} or \
        {(s, t) for s, t in have if t == table}


def pick_tables(specs: list[str], metas: Mapping[str, Mapping[str, Any]]
                 ) -> list[tuple[str, tuple[str, str]]]:
    """Resolve `table`, `schema.table` or `db.schema.table` against the snapshot's tables."""
    out: list[tuple[str, tuple[str, str]]] = []
    for spec in specs:
        hits: list[tuple[str, tuple[str, str]]] = []
        for db, meta in metas.items():
            have = {(str(s), str(t)) for s, t in meta.get("tables", [])}
            if spec.startswith(db + ".") and spec.count(".") >= 2:
                hits += [(db, st) for st in match_table(spec[len(db) + 1:], have)]
            else:
                hits += [(db, st) for st in match_table(spec, have)]
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


def target_db(target: Target | None) -> str | None:
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
        return target_db({"url": text})
    return text


def target_server(target: Target | None) -> dict[str, Any]:
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
