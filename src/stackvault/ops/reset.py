"""`stackvault reset soft|hard`: empty a stack's data stores, after a safety snapshot.

soft keeps the tables named in `integrity.reset_keep` (users, settings...); hard empties
every table. SQL tables are emptied (not dropped): the schema stays. Redis databases are
flushed, buckets/prefixes emptied, vector collections emptied by their adapters. `files`
components (configuration) are never reset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stackvault.errors import PartialFailure, UsageError
from stackvault.ops.sources_from_config import make_source
from stackvault.repo.repository import Repository

_PG_TABLES = ("SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
              "('pg_catalog', 'information_schema') ORDER BY 1, 2")
_SQLITE_TABLES = ("SELECT name, name FROM sqlite_master WHERE type = 'table' AND name NOT "
                  "LIKE 'sqlite\\_%' ESCAPE '\\' AND sql NOT LIKE 'CREATE VIRTUAL%' "
                  "ORDER BY name")


@dataclass
class ResetStep:
    component: str
    type: str
    description: str
    run: Callable[[], int] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "type": self.type,
                "description": self.description}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _kept(table: tuple[str, str], keep: list[str]) -> bool:
    schema, name = table
    return name in keep or f"{schema}.{name}" in keep


def _sql_step(name: str, comp: Any, source: Any, keep: list[str]) -> ResetStep:
    if comp.type == "postgres":
        steps = []
        names = []
        for db in comp.databases:
            tables = [t for t in source.query(_PG_TABLES, database=db) if not _kept(t, keep)]
            if tables:
                rels = ", ".join(f"{_q(s)}.{_q(t)}" for s, t in tables)
                steps.append((db, f"TRUNCATE {rels} RESTART IDENTITY"))
                names += [f"{db}.{s}.{t}" for s, t in tables]

        def run() -> int:
            for db, statement in steps:
                source.execute([(statement, ())], database=db)
            return len(names)
    else:
        tables = [t for t in source.query(_SQLITE_TABLES) if not _kept(t, keep)]
        names = [t for t, _ in tables]
        statements: list[tuple[str, tuple[Any, ...]]] = [(f"DELETE FROM {_q(t)}", ())
                                                        for t in names]
        if any(t for t, _ in source.query("SELECT name, 1 FROM sqlite_master WHERE name = "
                                          "'sqlite_sequence'")):
            statements.append(("DELETE FROM sqlite_sequence WHERE name IN ("
                               + ", ".join("?" for _ in names) + ")", tuple(names)))

        def run() -> int:
            source.execute(statements)
            return len(names)
    kept = f"; keeps {', '.join(keep)}" if keep else ""
    what = (f"empty {len(names)} table(s): {', '.join(names[:8])}"
            + (" …" if len(names) > 8 else "") + kept) if names else "no table to empty"
    return ResetStep(name, comp.type, what, run)


def plan_reset(config: Any, mode: str, components: list[str] | None = None) -> list[ResetStep]:
    names = components or [n for n, c in config.components.items() if c.type != "files"]
    unknown = [n for n in names if n not in config.components]
    if unknown:
        raise UsageError(f"unknown component(s): {', '.join(unknown)}")
    keep_all = config.integrity.reset_keep if mode == "soft" else {}
    plan = []
    for name in names:
        comp = config.components[name]
        source = make_source(name, comp)
        if comp.type == "files":
            raise UsageError(f"{name}: files components (configuration) are never reset")
        if comp.type in ("postgres", "sqlite"):
            plan.append(_sql_step(name, comp, source, list(keep_all.get(name, []))))
        elif hasattr(source, "empty"):
            if keep_all.get(name):
                raise UsageError(f"integrity.reset_keep.{name}: only SQL components keep "
                                 "tables")
            plan.append(ResetStep(name, comp.type, "empty every database/location/collection "
                                  "of the component", source.empty))
        else:
            raise UsageError(f"{name}: a {comp.type} component cannot be reset yet")
    return plan


def run_reset(repo: Repository, config: Any, plan: list[ResetStep], *,
              retry_lock: float = 0.0) -> tuple[str, list[dict[str, Any]]]:
    """Safety snapshot of the planned components, then every step; returns (safety id,
    what each step did)."""
    from stackvault.ops.stack_backup import backup_stack
    from stackvault.ops.stack_restore import SAFETY_TAG

    res = backup_stack(repo, config, components=[s.component for s in plan],
                       retry_lock=retry_lock, tags=[SAFETY_TAG, "before-reset"])
    if not res.complete:
        raise PartialFailure("the safety snapshot failed; nothing was reset",
                             hint="; ".join(f"{o.name}: {o.error}" for o in res.components
                                            if not o.ok))
    done = []
    for step in plan:
        done.append({**step.to_dict(), "changed": int(step.run() or 0)})
    return res.snapshot.id, done
