"""The `integrity:` section of stackvault.yaml: rules that hold across stores (chunk rows and
vectors, records and objects, key mappings, stuck jobs, custom SQL)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from stackvault.config.base import (
    Duration,
    Loc,
    Name,
    NonEmptyStr,
    TypeDoc,
    _error,
    _given,
    _Model,
)

ID = "{id}"


def _template(value: str) -> str:
    if value.count(ID) != 1:
        raise _error("template", "a pattern holds `{id}` exactly once, e.g. doc:{id} or "
                     "uploads/{id}.pdf")
    return value


Template = Annotated[str, AfterValidator(_template), TypeDoc("pattern with {id}")]


def template_regex(template: str) -> re.Pattern[str]:
    """`doc:{id}:owner` -> a regex whose group `id` is the id of a matching key."""
    before, _, after = template.partition(ID)
    return re.compile(f"^{re.escape(before)}(?P<id>.+?){re.escape(after)}$", re.DOTALL)


class Locator(_Model):
    """Where a rule reads ids from: one of `sql`, `collection` or `pattern`."""

    component: Name = Field(description="The component that holds them.", examples=["app-db"])
    sql: NonEmptyStr | None = Field(
        None, description="postgres, sqlite: a query; its first column holds the ids.",
        examples=["SELECT id FROM chunks"])
    database: NonEmptyStr | None = Field(
        None, description="postgres: the database `sql` runs in (default: the first).")
    collection: NonEmptyStr | None = Field(
        None, description="qdrant, chroma: the point/record ids of this collection.",
        examples=["chunks"])
    pattern: Template | None = Field(
        None, description="redis: keys matching this pattern; s3: object keys (below the "
                          "first bucket/prefix) matching it. `{id}` marks the id.",
        examples=["uploads/{id}.pdf"])

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        if len(_given(data, "sql", "collection", "pattern")) != 1:
            return [((), "give exactly one of `sql`, `collection` or `pattern`")]
        return []


class _Rule(_Model):
    name: NonEmptyStr = Field(description="The rule's name, in reports.",
                              examples=["every chunk has a vector"])
    severity: Literal["warning", "critical"] = Field(
        "critical", description="How bad a finding is: `warning` or `critical` (exit codes "
                                "20 and 21 of `integrity check`).")


class ReferencesRule(_Rule):
    """Ids in `source` must exist in `target` and the other way round: orphans are target
    ids without a source (e.g. vectors without a chunk row), missing are source ids without a
    target (e.g. chunk rows without a vector)."""

    type: Literal["references"] = Field(description="references: ids must exist on both "
                                        "sides.")
    source: Locator = Field(description="The records (usually SQL rows).")
    target: Locator = Field(description="What they point to (vectors, objects, keys).")
    delete_orphans: bool = Field(False, description="`integrity fix` deletes orphans from "
                                 "`target` (a collection, keys or objects; not SQL rows).")


class MappingRule(_Rule):
    """Keys that come in sets: every key matching `pattern` needs the key `requires` for the
    same id; `relink` says where to find the missing partner so the link can be rebuilt."""

    type: Literal["mapping"] = Field(description="mapping: redis keys that come in sets.")
    component: Name = Field(description="The redis component.", examples=["cache"])
    pattern: Template = Field(description="Keys that need a partner.",
                              examples=["manager:{id}:owner"])
    requires: Template = Field(description="The partner each needs.",
                               examples=["manager:{id}:dataset"])
    relink: Locator | None = Field(
        None, description="Where the partner's value is found: for an id, the key (or "
                          "object key) matching this locator's pattern is written into the "
                          "missing partner by `integrity fix`.")


class StuckJobsRule(_Rule):
    """Rows of a job table left in a processing state for longer than `older_than`."""

    type: Literal["stuck_jobs"] = Field(description="stuck_jobs: jobs stuck in a state.")
    component: Name = Field(description="The postgres or sqlite component.",
                            examples=["app-db"])
    database: NonEmptyStr | None = Field(None, description="postgres: the database.")
    table: NonEmptyStr = Field(description="The job table.", examples=["jobs"])
    id_column: NonEmptyStr = Field("id", description="Its key column.")
    state_column: NonEmptyStr = Field("state", description="The column holding the state.")
    stuck_states: list[NonEmptyStr] = Field(["processing"], min_length=1,
                                            description="States that must not last.")
    updated_column: NonEmptyStr = Field(
        "updated_at", description="When the row last changed (a timestamp; in SQLite, ISO "
                                  "text or Unix seconds).")
    older_than: Duration = Field(description="How long a job may stay in such a state.",
                                 examples=["30m"])
    reset_to: NonEmptyStr = Field("pending", description="The state `integrity fix` "
                                  "puts them back in.")
    retries_column: NonEmptyStr | None = Field(None, description="A retry counter that "
                                               "`fix` raises by one.", examples=["retries"])
    message_column: NonEmptyStr | None = Field(None, description="A text column `fix` "
                                               "writes why into.", examples=["error"])


class CustomRule(_Rule):
    """An SQL query that must return no rows (each row returned is a finding)."""

    type: Literal["custom"] = Field(description="custom: a query that must return nothing.")
    component: Name = Field(description="The postgres or sqlite component.",
                            examples=["app-db"])
    database: NonEmptyStr | None = Field(None, description="postgres: the database.")
    sql: NonEmptyStr = Field(description="The query.", examples=[
        "SELECT id FROM chunks WHERE document_id NOT IN (SELECT id FROM documents)"])


Rule = Annotated[ReferencesRule | MappingRule | StuckJobsRule | CustomRule,
                 Field(discriminator="type")]
RULE_TYPES = {"references": ReferencesRule, "mapping": MappingRule,
              "stuck_jobs": StuckJobsRule, "custom": CustomRule}


class IntegrityConfig(_Model):
    """Rules `stackvault integrity check` runs and `integrity fix` repairs."""

    rules: list[Rule] = Field(default_factory=list, description="The rules, in order.")
    reset_keep: dict[Name, list[NonEmptyStr]] = Field(
        default_factory=dict,
        description="For `stackvault reset soft`: per SQL component, the tables a soft reset "
                    "keeps (e.g. users, settings).", examples=[{"app-db": ["users"]}])


def rule_components(rule: Any) -> set[str]:
    """The components a rule reads (and a fix may change)."""
    out = {getattr(rule, "component", None)}
    for part in ("source", "target", "relink"):
        loc = getattr(rule, part, None)
        if loc is not None:
            out.add(loc.component)
    return {c for c in out if c}


def integrity_problems(components: Any, integrity: Any) -> list[tuple[Loc, str]]:
    """Rules that name components the config does not have (found on the raw mapping)."""
    if not isinstance(components, dict) or not isinstance(integrity, dict):
        return []
    rules = integrity.get("rules")
    known = ", ".join(sorted(k for k in components if isinstance(k, str)))
    out: list[tuple[Loc, str]] = []
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        places: list[tuple[Loc, Any]] = [(("component",), rule.get("component"))]
        places += [((part, "component"), rule[part].get("component"))
                   for part in ("source", "target", "relink") if isinstance(rule.get(part), dict)]
        for loc, name in places:
            if isinstance(name, str) and name not in components:
                out.append((("integrity", "rules", i, *loc),
                            f"unknown component '{name}' (the config has: {known})"))
    keep = integrity.get("reset_keep")
    for name in keep if isinstance(keep, dict) else []:
        if name not in components:
            out.append((("integrity", "reset_keep", name),
                        f"unknown component '{name}' (the config has: {known})"))
    return out
