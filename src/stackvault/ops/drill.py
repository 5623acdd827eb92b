"""Restore drills: restore a stack snapshot into scratch targets, check it, measure RTO and RPO
against the targets, always clean up, and keep the report in the repository.

A drill never touches a live store: every component is restored into a scratch target (the
config's `drill.targets`, else one its adapter makes: a temporary file or folder, a scratch
database, a collection prefix), and a target that describes the live store is refused.
"""

from __future__ import annotations

import html
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from stackvault.errors import StackVaultError, UsageError
from stackvault.ops.sources_from_config import make_source, parse_target
from stackvault.ops.stack_restore import RestorePlan, plan_restore, restore_stack
from stackvault.progress import Progress, no_progress
from stackvault.repo.repository import Repository
from stackvault.sources.base import Drillable

DRILLS_FOLDER = "drills"


@dataclass
class ComponentDrill:
    component: str
    type: str
    target: str  # the scratch target's description
    ok: bool = False
    verified: bool = False
    seconds: float = 0.0
    differences: list[str] = field(default_factory=list)
    error: str | None = None
    rto_target: int | None = None  # seconds
    rpo_target: int | None = None

    @property
    def rto_ok(self) -> bool | None:
        return None if self.rto_target is None else self.seconds <= self.rto_target


@dataclass
class ProbeOutcome:
    name: str
    component: str
    ok: bool
    expected: str | None
    found: str | None
    error: str | None = None


@dataclass
class DrillReport:
    started: str
    snapshot: str
    snapshot_time: str
    components: list[ComponentDrill]
    probes: list[ProbeOutcome]
    rto_seconds: float  # the whole stack, in dependency order
    rpo_seconds: float  # now minus the snapshot's time
    newest_age_seconds: float  # now minus the newest stack snapshot's time
    cleanup_errors: list[str] = field(default_factory=list)
    id: str | None = None

    @property
    def failures(self) -> list[str]:
        out = []
        for c in self.components:
            if not c.ok:
                out.append(f"{c.component}: restore failed: {c.error}")
            elif not c.verified:
                out.append(f"{c.component}: did not verify: {'; '.join(c.differences[:3])}")
            if c.rto_ok is False:
                out.append(f"{c.component}: restore took {c.seconds:.1f}s, RTO target "
                           f"{c.rto_target}s")
            if c.rpo_target is not None and self.newest_age_seconds > c.rpo_target:
                out.append(f"{c.component}: newest snapshot is {self.newest_age_seconds:.0f}s "
                           f"old, RPO target {c.rpo_target}s")
        out += [f"probe {p.name}: " + (p.error or f"expected {p.expected!r}, found {p.found!r}")
                for p in self.probes if not p.ok]
        out += [f"cleanup: {e}" for e in self.cleanup_errors]
        return out

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["failures"] = self.failures
        for c, cd in zip(self.components, d["components"], strict=True):
            cd["rto_ok"] = c.rto_ok
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DrillReport:
        return cls(started=d["started"], snapshot=d["snapshot"], snapshot_time=d["snapshot_time"],
                   components=[ComponentDrill(**{k: v for k, v in c.items() if k != "rto_ok"})
                               for c in d.get("components", [])],
                   probes=[ProbeOutcome(**p) for p in d.get("probes", [])],
                   rto_seconds=d["rto_seconds"], rpo_seconds=d["rpo_seconds"],
                   newest_age_seconds=d["newest_age_seconds"],
                   cleanup_errors=list(d.get("cleanup_errors", [])), id=d.get("id"))


def _drill_settings(config: Any) -> tuple[dict[str, str], list[Any]]:
    drill = getattr(config, "drill", None)
    if drill is None:
        return {}, []
    return dict(getattr(drill, "targets", {}) or {}), list(getattr(drill, "probes", []) or [])


def _probe_spec(probe: Any) -> dict[str, Any]:
    """The store-specific part of a probe (what `run_probe` gets)."""
    data = probe.model_dump(exclude_none=True) if hasattr(probe, "model_dump") else dict(probe)
    return {k: v for k, v in data.items() if k not in ("name", "component", "expect")}


def run_drill(repo: Repository, config: Any, *, ref: str = "latest",
              components: list[str] | None = None, progress: Progress = no_progress,
              retry_lock: float = 0.0) -> DrillReport:
    """Restore `ref` into scratch targets, verify, probe, time it; remove the targets after."""
    started = datetime.now(UTC)
    label = f"{started:%Y%m%d%H%M%S}_{secrets.token_hex(2)}"
    names = list(components or config.components)
    given, probes = _drill_settings(config)
    sources = {n: make_source(n, config.components[n]) for n in names
               if n in config.components}
    targets: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in config.components:
            raise UsageError(f"unknown component {name!r}",
                             hint=f"the config has: {', '.join(config.components)}")
        source = sources[name]
        if not isinstance(source, Drillable):
            raise UsageError(f"{name}: the {config.components[name].type} source cannot be "
                             "drilled yet (it has no scratch targets)")
        if name in given:
            target = dict(parse_target(config.components[name], given[name]))
            if source.describe_target(target) == source.describe_target(None):
                raise UsageError(f"drill.targets.{name} is the live store; a drill restores "
                                 "into scratch targets only")
        else:
            target = dict(source.scratch_target(label))
        targets[name] = target
    plan: RestorePlan | None = None
    outcomes: list[ComponentDrill] = []
    probe_results: list[ProbeOutcome] = []
    cleanup: list[str] = []
    t0 = time.monotonic()
    try:
        plan = plan_restore(repo, config, ref=ref, selectors=names, targets=targets)
        if plan.overwrites():
            raise UsageError("a drill would overwrite a live store; refusing")
        report = restore_stack(repo, config, plan, safety=False, force=False,
                               progress=progress, retry_lock=retry_lock)
        rto = time.monotonic() - t0
        by_name = {o.component: o for o in report.outcomes}
        for step in plan.steps:
            o = by_name[step.component]
            comp = config.components[step.component]
            outcomes.append(ComponentDrill(
                component=step.component, type=step.type, target=step.target_description,
                ok=o.ok, verified=o.verified, seconds=round(o.seconds, 3),
                differences=list(o.differences), error=o.error,
                rto_target=comp.targets.rto, rpo_target=comp.targets.rpo))
        for i, probe in enumerate(probes):
            if probe.component not in targets:
                continue
            name = getattr(probe, "name", None) or f"{probe.component}#{i + 1}"
            try:
                found = sources[probe.component].run_probe(  # type: ignore[attr-defined]
                    _probe_spec(probe), target=targets[probe.component])
                expected = getattr(probe, "expect", None)
                if expected is None:
                    ok = bool(found)
                elif getattr(probe, "search", None) is not None:  # one of the result ids
                    ok = str(expected) in found.split(",")
                else:
                    ok = found == str(expected)
                probe_results.append(ProbeOutcome(name, probe.component, ok,
                                                  None if expected is None else str(expected),
                                                  found))
            except StackVaultError as e:
                probe_results.append(ProbeOutcome(name, probe.component, False,
                                                  getattr(probe, "expect", None), None, str(e)))
    finally:
        for name, target in targets.items():
            try:
                sources[name].remove_target(target)  # type: ignore[attr-defined]
            except Exception as e:  # noqa: BLE001 - reported, the others still cleaned
                cleanup.append(f"{name}: {e}")
    assert plan is not None
    now = datetime.now(UTC)
    stacks = [s for s in repo.list_snapshots() if s.kind == "stack" and "safety" not in s.tags]
    newest = max((s.time for s in stacks), default=plan.snapshot.time)
    return DrillReport(
        started=started.isoformat(), snapshot=plan.snapshot.id,
        snapshot_time=plan.snapshot.time.isoformat(), components=outcomes,
        probes=probe_results, rto_seconds=round(rto, 3),
        rpo_seconds=round((now - plan.snapshot.time).total_seconds(), 1),
        newest_age_seconds=round((now - newest).total_seconds(), 1),
        cleanup_errors=cleanup)


# --- history ----------------------------------------------------------------------------------


def save_drill(repo: Repository, report: DrillReport) -> str:
    """Keep the report in the repository (encrypted, like snapshots); return its id."""
    report.id = repo.save_doc("drill", report.to_dict(), DRILLS_FOLDER)
    return report.id


def list_drills(repo: Repository) -> list[DrillReport]:
    """Every drill report in the repository, oldest first."""
    out = []
    for obj in repo.storage.list(f"{DRILLS_FOLDER}/"):
        doc_id = obj.name.split("/", 1)[1]
        d = repo.load_doc("drill", DRILLS_FOLDER, doc_id)
        d["id"] = doc_id
        out.append(DrillReport.from_dict(d))
    out.sort(key=lambda r: r.started)
    return out


# --- reports ----------------------------------------------------------------------------------


def _fmt_target(seconds: int | None) -> str:
    return "—" if seconds is None else f"{seconds}s"


def markdown(report: DrillReport) -> str:
    lines = [f"# Restore drill {report.started}",
             "",
             f"**{'PASSED' if report.ok else 'FAILED'}** — snapshot `{report.snapshot[:8]}` "
             f"({report.snapshot_time}); whole stack restored in **{report.rto_seconds:.2f}s** "
             f"(RTO); RPO now {report.rpo_seconds:.0f}s, newest snapshot "
             f"{report.newest_age_seconds:.0f}s old.",
             "",
             "| component | restored into | restore | RTO target | verified |",
             "|---|---|---|---|---|"]
    for c in report.components:
        state = "yes" if c.ok and c.verified else ("NO" if c.ok else f"FAILED: {c.error}")
        lines.append(f"| {c.component} ({c.type}) | {c.target} | {c.seconds:.2f}s | "
                     f"{_fmt_target(c.rto_target)} | {state} |")
    if report.probes:
        lines += ["", "| probe | component | expected | found | result |", "|---|---|---|---|---|"]
        for p in report.probes:
            lines.append(f"| {p.name} | {p.component} | {p.expected or '(anything)'} | "
                         f"{p.found if p.error is None else p.error} | "
                         f"{'ok' if p.ok else 'FAILED'} |")
    if report.failures:
        lines += ["", "## What failed", ""] + [f"- {f}" for f in report.failures]
    lines += ["", "Scratch targets were removed after the drill"
              + (" (with errors, see above)." if report.cleanup_errors else ".")]
    return "\n".join(lines) + "\n"


def to_html(report: DrillReport) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(c.component)} ({esc(c.type)})</td><td>{esc(c.target)}</td>"
        f"<td>{c.seconds:.2f}s</td><td>{_fmt_target(c.rto_target)}</td>"
        f"<td>{'yes' if c.ok and c.verified else 'NO'}</td></tr>" for c in report.components)
    probes = "".join(
        f"<tr><td>{esc(p.name)}</td><td>{esc(p.component)}</td><td>{esc(p.expected or '')}"
        f"</td><td>{esc(p.found or p.error or '')}</td><td>{'ok' if p.ok else 'FAILED'}</td></tr>"
        for p in report.probes)
    fails = "".join(f"<li>{esc(f)}</li>" for f in report.failures)
    probe_table = (f'<table border="1"><tr><th>probe</th><th>component</th><th>expected</th>'
                   f'<th>found</th><th>result</th></tr>{probes}</table>' if probes else "")
    title = f"Restore drill {esc(report.started)}"
    return f"""<!doctype html><meta charset="utf-8"><title>{title}</title>
<h1>Restore drill {esc(report.started)}: {'PASSED' if report.ok else 'FAILED'}</h1>
<p>Snapshot {esc(report.snapshot[:8])} ({esc(report.snapshot_time)}); whole stack restored in
{report.rto_seconds:.2f}s (RTO); RPO now {report.rpo_seconds:.0f}s; newest snapshot
{report.newest_age_seconds:.0f}s old.</p>
<table border="1"><tr><th>component</th><th>restored into</th><th>restore</th>
<th>RTO target</th><th>verified</th></tr>{rows}</table>
{probe_table}
{f'<h2>What failed</h2><ul>{fails}</ul>' if fails else ''}
"""
