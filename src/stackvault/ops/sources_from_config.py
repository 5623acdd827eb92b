"""Turn a component of stackvault.yaml into its data source adapter, and `--to` into a target."""

from __future__ import annotations

from typing import Any

from stackvault.sources.base import DataSource, Target
from stackvault.sources.registry import get_source_class

COMMON_FIELDS = {"type", "depends_on", "hooks", "targets"}
TARGET_KEY = {"sqlite": "path", "files": "path", "postgres": "database", "s3": "url",
              "redis": "url", "chroma": "to", "qdrant": "to"}


def make_source(name: str, component: Any) -> DataSource:
    """The adapter for ``component``: its class from the registry, built from the component's
    own options (every field but the ones all components share)."""
    cls: Any = get_source_class(component.type)
    options = {k: v for k, v in component.model_dump().items() if k not in COMMON_FIELDS}
    return cls(**options)


def parse_target(component: Any, text: str) -> Target:
    """`--to NAME=TEXT`: a path for files and SQLite, a database name for PostgreSQL,
    s3://BUCKET[/PREFIX] for S3, redis://HOST:PORT[/DB] for Redis, for ChromaDB
    `[FOLDER | http(s)://HOST:PORT][#RENAME]` (RENAME: e.g. `restored-*`, see docs/stack.md),
    for Qdrant `[FOLDER][#RENAME]`, `prefix:PREFIX` or `name:NAME`."""
    return {TARGET_KEY.get(component.type, "path"): text}
