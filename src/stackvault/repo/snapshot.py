"""Snapshot documents: what a backup recorded, and how to find one by id, prefix or 'latest'."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class Snapshot:
    time: datetime
    hostname: str
    username: str
    paths: list[str]
    tree: str
    tags: list[str] = field(default_factory=list)
    parent: str | None = None
    program_version: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    original: str | None = None
    kind: str = "files"
    extra: dict[str, Any] = field(default_factory=dict)
    id: str = ""  # BLAKE3 of the stored document; not part of it

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("id")
        d["time"] = self.time.isoformat()
        d["version"] = 1
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], snap_id: str) -> Snapshot:
        return cls(
            time=datetime.fromisoformat(d["time"]),
            hostname=d["hostname"],
            username=d.get("username", ""),
            paths=list(d["paths"]),
            tree=d["tree"],
            tags=list(d.get("tags", [])),
            parent=d.get("parent"),
            program_version=d.get("program_version", ""),
            summary=dict(d.get("summary", {})),
            original=d.get("original"),
            kind=d.get("kind", "files"),
            extra=dict(d.get("extra", {})),
            id=snap_id,
        )

    @property
    def short_id(self) -> str:
        return self.id[:8]


def now() -> datetime:
    return datetime.now(UTC)
