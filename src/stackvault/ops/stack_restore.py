"""Stack restore: plan, safety snapshot, dependency-ordered restore, fingerprint verification."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stackvault.errors import PartialFailure, SnapshotNotFound, StackVaultError, UsageError
from stackvault.ops.repo_artifacts import RepoArtifactSource
from stackvault.ops.sources_from_config import make_source, parse_target
from stackvault.ops.stack_backup import backup_stack
from stackvault.progress import Progress, no_progress
from stackvault.repo.repository import Repository
from stackvault.repo.snapshot import Snapshot
from stackvault.sources.base import Fingerprint

SAFETY_TAG = "safety"


@dataclass
class RestoreStep:
    component: str
    type: str
    layer: int
    target: dict[str, Any] | None  # None: the component's own target from the config
    target_description: str
    artifacts: list[str]
    tables: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RestorePlan:
    snapshot: Snapshot
    steps: list[RestoreStep]

    @property
    def layers(self) -> list[list[RestoreStep]]:
        out: dict[int, list[RestoreStep]] = {}
        for s in self.steps:
            out.setdefault(s.layer, []).append(s)
        return [out[k] for k in sorted(out)]

    def overwrites(self) -> list[RestoreStep]:
        """Steps that restore onto the configured (production) target."""
        return [s for s in self.steps if s.target is None]

    def to_dict(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot.id, "time": self.snapshot.time.isoformat(),
                "steps": [s.to_dict() for s in self.steps]}


@dataclass
class StepOutcome:
    component: str
    ok: bool
    seconds: float
    verified: bool = False
    differences: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StackRestoreReport:
    plan: RestorePlan
    safety_snapshot: str | None
    outcomes: list[StepOutcome]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(o.ok and o.verified for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "snapshot": self.plan.snapshot.id,
                "safety_snapshot": self.safety_snapshot, "seconds": round(self.seconds, 3),
                "components": [o.to_dict() for o in self.outcomes]}


def manifest_of(snap: Snapshot) -> dict[str, Any]:
    manifest = snap.extra.get("manifest")
    if snap.kind != "stack" or not isinstance(manifest, dict):
        raise SnapshotNotFound(f"snapshot {snap.short_id} is not a stack snapshot",
                               hint="restore files snapshots with `restore ID --target DIR`")
    return manifest


def pick_snapshot(repo: Repository, ref: str, at: datetime | None,
                  components: list[str]) -> Snapshot:
    """`latest`, an id, or the newest snapshot at or before ``at`` that holds every requested
    component intact. Safety snapshots (taken before a restore) are skipped unless named."""
    if ref != "latest" and at is None:
        return repo.find_snapshot(ref)
    for snap in reversed(repo.list_snapshots()):
        if snap.kind != "stack" or (at is not None and snap.time > at):
            continue
        if SAFETY_TAG in snap.tags:
            continue  # the state before a restore: only ever chosen by its id
        comps = manifest_of(snap)["components"]
        if all(comps.get(c, {}).get("status") == "ok" for c in components):
            return snap
    when = f" at or before {at.isoformat()}" if at else ""
    raise SnapshotNotFound(f"no stack snapshot{when} holds {', '.join(components)} intact",
                           hint="list snapshots with `stackvault snapshots`")


def parse_selectors(selectors: list[str]) -> dict[str, list[str] | None]:
    """['db', 'app.users', 'app.docs'] -> {'db': None, 'app': ['users', 'docs']}."""
    out: dict[str, list[str] | None] = {}
    for sel in selectors:
        name, _, table = sel.partition(".")
        if not name:
            raise UsageError(f"bad --component {sel!r}", hint="use NAME or NAME.TABLE")
        if not table:
            out[name] = None
        elif out.get(name, []) is not None:
            out.setdefault(name, [])
            out[name].append(table)  # type: ignore[union-attr]
    return out


def plan_restore(repo: Repository, config: Any, *, ref: str = "latest",
                 at: datetime | None = None, selectors: list[str] | None = None,
                 to: dict[str, str] | None = None,
                 targets: dict[str, dict[str, Any]] | None = None) -> RestorePlan:
    """Which snapshot, which components in which order, into which targets. `to` holds
    `--to` texts; `targets` ready-made targets (drills) and wins over `to`."""
    from stackvault.config.schema import restore_order

    chosen = parse_selectors(selectors or [])
    names = list(chosen) or list(config.components)
    unknown = [n for n in names if n not in config.components]
    if unknown:
        raise UsageError(f"unknown component(s): {', '.join(unknown)}",
                         hint=f"the config has: {', '.join(config.components)}")
    for name in to or {}:
        if name not in names:
            raise UsageError(f"--to names {name!r}, which is not being restored")
    snap = pick_snapshot(repo, ref, at, names)
    comps = manifest_of(snap)["components"]
    if not chosen:  # everything the snapshot holds intact
        names = [n for n in names if comps.get(n, {}).get("status") == "ok"]
    missing = [n for n in names if comps.get(n, {}).get("status") != "ok"]
    if missing:
        raise SnapshotNotFound(f"snapshot {snap.short_id} does not hold "
                               f"{', '.join(missing)} intact")
    steps = []
    for layer_no, layer in enumerate(restore_order(config)):
        for name in layer:
            if name not in names:
                continue
            comp = config.components[name]
            target = (dict(targets[name]) if targets and name in targets else
                      dict(parse_target(comp, to[name])) if to and name in to else None)
            source = make_source(name, comp)
            steps.append(RestoreStep(
                component=name, type=comp.type, layer=layer_no, target=target,
                target_description=source.describe_target(target),
                artifacts=[a["name"] for a in comps[name].get("artifacts", [])],
                tables=chosen.get(name)))
    return RestorePlan(snap, steps)


def _expected(fp: dict[str, Any], tables: list[str] | None) -> Fingerprint:
    expected = Fingerprint.from_dict(fp)
    if tables:
        keep = set(tables)

        def wanted(key: str) -> bool:
            return any(key == t or key.endswith("." + t) for t in keep)

        expected = expected.restrict(k for k in (expected.counts.keys()
                                                 | expected.digests.keys()) if wanted(k))
    return expected


def restore_stack(repo: Repository, config: Any, plan: RestorePlan, *, safety: bool = True,
                  force: bool = False, progress: Progress = no_progress,
                  retry_lock: float = 0.0) -> StackRestoreReport:
    """Carry out a plan: safety snapshot first (of what will be overwritten), then each
    dependency layer (its components concurrently), then verify fingerprints."""
    start = time.monotonic()
    safety_id = None
    overwrites = [s.component for s in plan.overwrites()]
    if safety and overwrites:
        res = backup_stack(repo, config, components=overwrites, retry_lock=retry_lock,
                           tags=[SAFETY_TAG, f"before-restore-{plan.snapshot.short_id}"])
        safety_id = res.snapshot.id
    manifest = manifest_of(plan.snapshot)["components"]
    outcomes: list[StepOutcome] = []
    failed: set[str] = set()

    def one(step: RestoreStep) -> StepOutcome:
        comp = config.components[step.component]
        deps = set(getattr(comp, "depends_on", []) or [])
        if deps & failed:
            return StepOutcome(step.component, False, 0.0,
                               error=f"skipped: {', '.join(sorted(deps & failed))} failed")
        t0 = time.monotonic()
        try:
            source = make_source(step.component, comp)
            source.restore(RepoArtifactSource(repo, plan.snapshot, step.component),
                           target=step.target, tables=step.tables, force=force)
            took = time.monotonic() - t0
            expected = _expected(manifest[step.component].get("fingerprint", {}), step.tables)
            found = source.fingerprint(target=step.target)
            if step.tables:  # only the restored tables are expected to match
                found = found.restrict(expected.counts.keys() | expected.digests.keys())
            if not expected.digests:  # backed up without checksums: compare what there is
                found.digests.clear()
            diffs = expected.compare(found)
            return StepOutcome(step.component, True, took, verified=not diffs,
                               differences=diffs)
        except StackVaultError as exc:
            return StepOutcome(step.component, False, time.monotonic() - t0, error=str(exc))

    for layer in plan.layers:
        with ThreadPoolExecutor(max(1, len(layer)), thread_name_prefix="sv-restore") as ex:
            results = list(ex.map(one, layer))
        for r in results:
            progress({"event": "restore_component", "component": r.component, "ok": r.ok})
            if not (r.ok and r.verified):
                failed.add(r.component)
        outcomes.extend(results)
    report = StackRestoreReport(plan, safety_id, outcomes, time.monotonic() - start)
    return report


def raise_if_failed(report: StackRestoreReport) -> None:
    if report.ok:
        return
    bad = [o.component for o in report.outcomes if not (o.ok and o.verified)]
    hint = (f"the state before the restore is in safety snapshot {report.safety_snapshot[:8]}"
            if report.safety_snapshot else None)
    raise PartialFailure(f"restore of {', '.join(bad)} failed or did not verify", hint=hint)
