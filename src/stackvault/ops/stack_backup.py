"""Stack backup: every component of stackvault.yaml into one snapshot with a manifest."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stackvault import __version__
from stackvault.errors import StackVaultError, UsageError
from stackvault.ops.hooks import run_hook
from stackvault.ops.repo_artifacts import RepoSink
from stackvault.ops.sources_from_config import make_source
from stackvault.progress import Progress, no_progress
from stackvault.repo.crypto import _username
from stackvault.repo.lock import Lock
from stackvault.repo.pack import TREE
from stackvault.repo.repository import Repository
from stackvault.repo.snapshot import Snapshot
from stackvault.repo.tree import DIR, Node
from stackvault.repo.writer import BlobWriter

MANIFEST_VERSION = 1
PARALLEL_COMPONENTS = 2  # components backed up at once (each adapter may use more threads)


@dataclass
class ComponentOutcome:
    name: str
    type: str
    ok: bool
    started: datetime
    finished: datetime
    error: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    tree: str | None = None


@dataclass
class StackBackupResult:
    snapshot: Snapshot
    components: list[ComponentOutcome]

    @property
    def complete(self) -> bool:
        return all(c.ok for c in self.components)


def _now() -> datetime:
    return datetime.now(UTC)


def backup_stack(
    repo: Repository,
    config: Any,
    *,
    components: list[str] | None = None,
    tags: list[str] | None = None,
    hostname: str | None = None,
    progress: Progress = no_progress,
    retry_lock: float = 0.0,
) -> StackBackupResult:
    """Back up the selected components (default: all) into one stack snapshot.

    A failing component does not stop the others: the snapshot is committed with what
    succeeded, marked incomplete and tagged ``partial`` (see docs/design.md).
    """
    names = list(components or config.components.keys())
    unknown = [n for n in names if n not in config.components]
    if unknown:
        raise UsageError(f"unknown component(s): {', '.join(unknown)}",
                         hint=f"the config has: {', '.join(config.components)}")
    hostname = hostname or socket.gethostname()
    start = _now()
    for hook in config.hooks.pre:
        run_hook(hook, where="stack pre-backup hook")
    outcomes: list[ComponentOutcome] = []
    with Lock(repo, exclusive=False).acquire(retry_for=retry_lock) as lock:
        repo.reload_index()
        with BlobWriter(repo) as writer:

            def one(name: str) -> ComponentOutcome:
                comp = config.components[name]
                began = _now()
                sink = RepoSink(repo, writer, progress)
                try:
                    for hook in comp.hooks.pre:
                        run_hook(hook, where=f"{name}: pre-backup hook")
                    try:
                        result = make_source(name, comp).backup(sink)
                    finally:
                        for hook in comp.hooks.post:
                            run_hook(hook, where=f"{name}: post-backup hook")
                    if sink.errors:
                        raise StackVaultError(f"{name}: {len(sink.errors)} item(s) unreadable: "
                                              + "; ".join(sink.errors[:3]))
                    tree = sink.tree()
                except Exception as exc:  # noqa: BLE001 - recorded per component, reported
                    return ComponentOutcome(name, comp.type, False, began, _now(),
                                            error=str(exc))
                ended = _now()
                return ComponentOutcome(
                    name, comp.type, True, began, ended, tree=tree,
                    manifest={
                        "versions": result.versions,
                        "artifacts": [a.to_dict() for a in result.artifacts],
                        "fingerprint": result.fingerprint.to_dict(),
                        "extra": result.extra,
                    })

            with ThreadPoolExecutor(PARALLEL_COMPONENTS, thread_name_prefix="sv-comp") as ex:
                outcomes = list(ex.map(one, names))
            nodes = [Node(name=o.name, type=DIR, mode=0o700,
                          mtime_ns=int(o.finished.timestamp() * 1e9), subtree=o.tree)
                     for o in outcomes if o.ok and o.tree]
            root_id, raw = repo.save_tree(nodes)
            writer.save_now(TREE, raw)
            writer.flush()  # every component's data and trees, then the root: all durable
        lock.check_valid()
        complete = all(o.ok for o in outcomes)
        manifest = {
            "version": MANIFEST_VERSION,
            "complete": complete,
            "config_sha256": config.sha256,
            "components": {
                o.name: {"type": o.type, "status": "ok" if o.ok else "failed", "error": o.error,
                         "started": o.started.isoformat(), "finished": o.finished.isoformat(),
                         **o.manifest}
                for o in outcomes
            },
        }
        snap = Snapshot(
            time=start, hostname=hostname, username=_username(),
            paths=sorted(f"/{o.name}" for o in outcomes if o.ok), tree=root_id.hex(),
            tags=sorted(set(tags or []) | (set() if complete else {"partial"})),
            program_version=f"stackvault {__version__}", kind="stack",
            extra={"manifest": manifest},
            summary={"components_ok": sum(o.ok for o in outcomes),
                     "components_failed": sum(not o.ok for o in outcomes),
                     "data_added": writer.stats.bytes_new,
                     "data_added_stored": writer.stats.bytes_stored,
                     "bytes_read": sum(a.get("size", 0) for o in outcomes if o.ok
                                       for a in o.manifest.get("artifacts", [])),
                     "duration_s": round((_now() - start).total_seconds(), 3)},
        )
        repo.save_snapshot(snap)
    for hook in config.hooks.post:
        run_hook(hook, where="stack post-backup hook")
    return StackBackupResult(snap, outcomes)
