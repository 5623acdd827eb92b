"""`stackvault drill` (restore a stack snapshot into scratch targets, check, time, clean up),
`stackvault drills` (the history kept in the repository) and `stackvault status`."""

from __future__ import annotations

from pathlib import Path

import typer

from stackvault.cli.cmd_stack import _repo_for_reading, load_stack_config, open_stack_repo
from stackvault.cli.context import Ctx
from stackvault.errors import PartialFailure, UsageError


def register(app: typer.Typer) -> None:
    app.command("drill")(drill)
    app.command("drills")(drills)
    app.command("status")(status)


def drill(
    ctx: typer.Context,
    snapshot: str = typer.Argument("latest", help="Stack snapshot id (prefix) or 'latest'."),
    component: list[str] = typer.Option([], "--component", help="Drill only this component "
                                        "(repeatable); default: every component."),
    report: Path | None = typer.Option(None, "--report", help="Also write the report to this "
                                       "file: Markdown (.md) or HTML (.html)."),
) -> None:
    """Restore a snapshot into scratch targets, verify it, run the config's probes, measure
    RTO and RPO against the targets, remove the scratch targets, keep the report."""
    from stackvault.ops.drill import markdown, run_drill, save_drill, to_html
    from stackvault.ops.notify import job as notify_job

    c: Ctx = ctx.obj
    if report is not None and report.suffix.lower() not in (".md", ".html", ".htm"):
        raise UsageError(f"--report {report}: the file must end in .md or .html")
    config = load_stack_config(c)
    with notify_job(config, "drill", env=c.opts.env) as job:
        repo = open_stack_repo(c, config)
        with c.progress("drill") as progress:
            result = run_drill(repo, config, ref=snapshot, components=component or None,
                               progress=progress, retry_lock=c.opts.retry_lock)
        save_drill(repo, result)
        job.record(snapshot=result.snapshot, rto_seconds=result.rto_seconds,
                   rpo_seconds=result.rpo_seconds, errors=list(result.failures))
    if report is not None:
        text = to_html(result) if report.suffix.lower() != ".md" else markdown(result)
        report.write_text(text, encoding="utf-8")
    if c.opts.json:
        c.emit(result.to_dict())
    else:
        c.out.print(markdown(result), markup=False)
    if not result.ok:
        raise PartialFailure(f"the drill failed: {len(result.failures)} problem(s)",
                             hint=result.failures[0])


def drills(ctx: typer.Context) -> None:
    """List the restore drills kept in the repository: when, which snapshot, the measured RTO
    and RPO, and whether each passed."""
    from stackvault.ops.drill import list_drills

    c: Ctx = ctx.obj
    history = list_drills(_repo_for_reading(c))
    if c.opts.json:
        c.emit([r.to_dict() for r in history])
        return
    if not history:
        c.info("no drills yet: run `stackvault drill`")
        return
    c.out.print(f"{'started':<26} {'snapshot':<9} {'RTO':>8} {'RPO':>9}  result", markup=False)
    for r in history:
        c.out.print(f"{r.started[:25]:<26} {r.snapshot[:8]:<9} {r.rto_seconds:7.2f}s "
                    f"{r.rpo_seconds:8.0f}s  {'passed' if r.ok else 'FAILED'}", markup=False)


def status(ctx: typer.Context) -> None:
    """Each component (reachable, version, size, last backup against its RPO target), the last
    drill, the repository (reachable, size, ratio, free space). Exit 3 if anything needs
    attention, so cron and monitoring can call it."""
    from stackvault.cli.context import human
    from stackvault.ops.status import stack_status

    c: Ctx = ctx.obj
    config = load_stack_config(c)
    result = stack_status(config, lambda: open_stack_repo(c, config))
    if c.opts.json:
        c.emit(result.to_dict())
    else:
        for comp in result.components:
            size = human(comp.size_bytes) if comp.size_bytes is not None else "-"
            age = ("never" if comp.last_backup_age_s is None
                   else f"{comp.last_backup_age_s / 3600:.1f}h ago")
            state = "ok" if comp.reachable else "DOWN"
            c.out.print(f"  {comp.name:<16} {comp.type:<9} {state:<5} {comp.version[:28]:<28} "
                        f"{size:>10}  last backup {age}", markup=False)
        r = result.repository
        if r.get("reachable"):
            free = human(r["free_bytes"]) if r.get("free_bytes") is not None else "n/a"
            c.out.print(f"  repository: {r['snapshots']} stack snapshot(s), "
                        f"{human(r['size_bytes'])} stored for {human(r['protected_bytes'])} "
                        f"backed up ({r['ratio'] or '-'}×), {free} free", markup=False)
        if result.last_drill:
            d = result.last_drill
            c.out.print(f"  last drill: {d['started'][:19]} "
                        f"{'passed' if d['ok'] else 'FAILED'}, RTO {d['rto_seconds']:.1f}s",
                        markup=False)
        for p in result.problems:
            c.err.print(f"attention: {p}", markup=False)
    if result.problems:
        raise PartialFailure(f"{len(result.problems)} thing(s) need attention",
                             hint=result.problems[0])
