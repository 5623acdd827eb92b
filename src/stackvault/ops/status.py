"""`stackvault status`: is every component reachable, is its last backup fresh enough, did the
last drill pass, is the repository there and how full is it. For cron and monitoring: the
result says whether anything needs attention."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from stackvault.errors import StackVaultError
from stackvault.ops.sources_from_config import make_source
from stackvault.ops.stack_restore import SAFETY_TAG
from stackvault.repo.repository import Repository


@dataclass
class ComponentStatus:
    name: str
    type: str
    reachable: bool
    version: str
    size_bytes: int | None
    detail: str
    last_backup: str | None = None  # ISO time of the newest snapshot holding it intact
    last_backup_age_s: float | None = None
    rpo_target_s: int | None = None

    @property
    def problems(self) -> list[str]:
        out = []
        if not self.reachable:
            out.append(f"{self.name}: not reachable ({self.detail})")
        if self.last_backup is None:
            out.append(f"{self.name}: never backed up")
        elif (self.rpo_target_s is not None and self.last_backup_age_s is not None
              and self.last_backup_age_s > self.rpo_target_s):
            out.append(f"{self.name}: last backup {self.last_backup_age_s / 3600:.1f}h old, "
                       f"RPO target {self.rpo_target_s / 3600:.1f}h")
        return out


@dataclass
class StackStatus:
    components: list[ComponentStatus]
    repository: dict[str, Any] = field(default_factory=dict)
    last_drill: dict[str, Any] | None = None

    @property
    def problems(self) -> list[str]:
        out = [p for c in self.components for p in c.problems]
        if not self.repository.get("reachable"):
            out.append(f"repository: not reachable ({self.repository.get('error')})")
        if self.last_drill is not None and not self.last_drill["ok"]:
            out.append(f"last drill ({self.last_drill['started'][:16]}) failed")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ok": not self.problems, "problems": self.problems,
                "components": [asdict(c) for c in self.components],
                "repository": self.repository, "last_drill": self.last_drill}


def _component(name: str, comp: Any) -> ComponentStatus:
    try:
        probe = make_source(name, comp).probe()
        return ComponentStatus(name, comp.type, probe.reachable, probe.version,
                               probe.size_bytes, probe.detail,
                               rpo_target_s=comp.targets.rpo)
    except StackVaultError as e:
        return ComponentStatus(name, comp.type, False, "", None, str(e),
                               rpo_target_s=comp.targets.rpo)


def stack_status(config: Any, open_repo: Any) -> StackStatus:
    """Probe every component (concurrently) and the repository (`open_repo()` opens it)."""
    status = StackStatus(probe_components(config))
    try:
        repo: Repository = open_repo()
    except StackVaultError as e:
        status.repository = {"reachable": False, "error": str(e)}
        return status
    add_repository(status, config, repo)
    return status


def probe_components(config: Any) -> list[ComponentStatus]:
    """Every component's reachability, version and size, probed concurrently."""
    names = list(config.components)
    with ThreadPoolExecutor(min(8, max(1, len(names))), thread_name_prefix="sv-status") as ex:
        return list(ex.map(lambda n: _component(n, config.components[n]), names))


def add_repository(status: StackStatus, config: Any, repo: Repository) -> None:
    """Fill in each component's last backup, the repository's figures and the last drill."""
    comps = status.components
    now = datetime.now(UTC)
    snaps = [s for s in repo.list_snapshots() if s.kind == "stack" and SAFETY_TAG not in s.tags]
    for c in comps:
        for snap in reversed(snaps):
            entry = snap.extra.get("manifest", {}).get("components", {}).get(c.name, {})
            if entry.get("status") == "ok":
                c.last_backup = snap.time.isoformat()
                c.last_backup_age_s = round((now - snap.time).total_seconds(), 1)
                break
    packs = repo.list_packs()
    size = sum(packs.values())
    protected = sum(int(s.summary.get("bytes_read", 0)) for s in snaps)
    status.repository = {"reachable": True, "snapshots": len(snaps), "size_bytes": size,
                         "protected_bytes": protected,
                         "ratio": round(protected / size, 2) if size else None,
                         "free_bytes": _free_space(config.repository.location)}
    from stackvault.ops.drill import list_drills

    drills = list_drills(repo)
    if drills:
        last = drills[-1]
        status.last_drill = {"started": last.started, "ok": last.ok,
                             "rto_seconds": last.rto_seconds, "snapshot": last.snapshot}


def _free_space(location: str) -> int | None:
    """Free bytes where a local repository lives; None for object stores (they do not say)."""
    if "://" in location or location.startswith(("s3:", "memory:")):
        return None
    path = location.removeprefix("local:")
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
