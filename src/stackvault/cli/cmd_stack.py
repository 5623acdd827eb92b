"""Stack commands: `backup` and `restore` of the components in stackvault.yaml, and `export`."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from stackvault.cli.context import Ctx, human
from stackvault.errors import PartialFailure, UsageError
from stackvault.repo.repository import Repository
from stackvault.storage import open_storage


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("show")(show)


def load_stack_config(c: Ctx) -> Any:
    """The stack config from -c, STACKVAULT_CONFIG or ./stackvault.yaml."""
    from stackvault.config.loader import find_config, load_config

    return load_config(find_config(c.opts.config, c.opts.env))


def stack_repo_settings(c: Ctx, config: Any) -> tuple[str, str | None]:
    """Repository location and password: flags and environment first, else the config's."""
    url = c.opts.repo or c.opts.env.get("STACKVAULT_REPOSITORY") or config.repository.location
    env = c.opts.env
    from_cli = (c.opts.password_file or c.opts.password_command
                or any(k in env for k in ("STACKVAULT_PASSWORD", "STACKVAULT_PASSWORD_FILE",
                                          "STACKVAULT_PASSWORD_COMMAND")))
    if c.opts.insecure_no_password:
        return url, None
    if from_cli:
        return url, c.password(file=c.opts.password_file, command=c.opts.password_command)
    return url, _config_password(config.repository, env)


def open_stack_repo(c: Ctx, config: Any) -> Repository:
    url, password = stack_repo_settings(c, config)
    return Repository.open(open_storage(url), password,
                           insecure_no_password=c.opts.insecure_no_password)


def _config_password(r: Any, env: dict[str, str]) -> str:
    if r.password_file is not None:
        try:
            with open(r.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read the password file named in the config: "
                             f"{exc.strerror}") from None
    if r.password_command is not None:
        cmd = r.password_command
        proc = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True)
        if proc.returncode != 0:
            raise UsageError(f"the config's password_command failed (exit {proc.returncode})")
        return proc.stdout.splitlines()[0] if proc.stdout else ""
    var = r.password_env or "STACKVAULT_PASSWORD"
    if var not in env:
        raise UsageError(f"the repository password is not set: the config reads it from ${var}",
                         hint=f"export {var}=... (or use password_file in the config)")
    return env[var]


def stack_backup(c: Ctx, components: list[str], tags: list[str], host: str | None) -> None:
    from stackvault.ops.notify import job as notify_job
    from stackvault.ops.stack_backup import backup_stack

    config = load_stack_config(c)
    with notify_job(config, "backup", env=c.opts.env) as job:
        repo = open_stack_repo(c, config)
        with c.progress("backup") as progress:
            res = backup_stack(repo, config, components=components or None, tags=tags,
                               hostname=host, progress=progress, retry_lock=c.opts.retry_lock)
        job.record(snapshot=res.snapshot.id, complete=res.complete,
                   components={o.name: "ok" if o.ok else "failed" for o in res.components},
                   errors=[f"{o.name}: {o.error}" for o in res.components if not o.ok])
    snap = res.snapshot
    if c.opts.json:
        c.emit({"snapshot": snap.id, "complete": res.complete,
                "components": {o.name: {"ok": o.ok, "error": o.error,
                                        "seconds": round((o.finished - o.started)
                                                         .total_seconds(), 3)}
                               for o in res.components},
                "summary": snap.summary})
    else:
        for o in res.components:
            took = (o.finished - o.started).total_seconds()
            if o.ok:
                size = sum(a.get("size", 0) for a in o.manifest.get("artifacts", []))
                c.info(f"  {o.name:<16} ok      {human(size):>10}  {took:6.2f}s")
            else:
                c.err.print(f"  {o.name:<16} FAILED  {o.error}", markup=False)
        c.info(f"stack snapshot {snap.short_id} saved "
               f"({human(snap.summary['data_added_stored'])} added)")
    if not res.complete:
        raise PartialFailure(
            f"snapshot {snap.short_id} is incomplete: "
            + ", ".join(o.name for o in res.components if not o.ok) + " failed",
            hint="it is tagged 'partial'; fix the failure and back up again")


def stack_restore(c: Ctx, snapshot: str, components: list[str], to: list[str],
                  at: str | None, dry_run: bool, yes: bool, no_safety: bool,
                  force: bool) -> None:
    from stackvault.ops.notify import job as notify_job
    from stackvault.ops.stack_restore import plan_restore, raise_if_failed, restore_stack

    config = load_stack_config(c)
    repo = open_stack_repo(c, config)
    targets: dict[str, str] = {}
    for item in to:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"bad --to {item!r}", hint="use --to NAME=TARGET")
        targets[name] = value
    when = None
    if at:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise UsageError(f"bad --at {at!r}",
                             hint="use an ISO time, e.g. 2026-11-21T23:00") from None
        if when.tzinfo is None:
            when = when.astimezone()
    plan = plan_restore(repo, config, ref=snapshot, at=when, selectors=components,
                        to=targets)
    if c.opts.json and dry_run:
        c.emit({"dry_run": True, "plan": plan.to_dict()})
        return
    if not c.opts.json or not yes:
        c.out.print(f"restore plan from stack snapshot {plan.snapshot.short_id} "
                    f"({plan.snapshot.time.astimezone():%Y-%m-%d %H:%M:%S}):", markup=False)
        for layer_no, layer in enumerate(plan.layers, 1):
            for s in layer:
                tables = f" tables {', '.join(s.tables)}" if s.tables else ""
                c.out.print(f"  {layer_no}. {s.component} ({s.type}){tables} -> "
                            f"{s.target_description}", markup=False)
        if plan.overwrites() and not no_safety:
            c.out.print("  a safety snapshot of "
                        + ", ".join(s.component for s in plan.overwrites())
                        + " is taken first", markup=False)
    if dry_run:
        c.info("dry run: nothing was changed")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("a restore overwrites data and needs confirmation",
                             hint="run it on a terminal, or pass --yes")
        if not typer.confirm("go ahead?", default=False):
            raise UsageError("restore cancelled; nothing was changed")
    with notify_job(config, "restore", env=c.opts.env) as job:
        with c.progress("restore") as progress:
            report = restore_stack(repo, config, plan, safety=not no_safety, force=force,
                                   progress=progress, retry_lock=c.opts.retry_lock)
        job.record(snapshot=plan.snapshot.id, seconds=round(report.seconds, 3),
                   errors=[f"{o.component}: {o.error or 'not verified'}"
                           for o in report.outcomes if not (o.ok and o.verified)])
    if c.opts.json:
        c.emit(report.to_dict())
    else:
        if report.safety_snapshot:
            c.info(f"safety snapshot {report.safety_snapshot[:8]} (the state before)")
        for o in report.outcomes:
            state = ("ok, verified" if o.ok and o.verified else
                     "restored, NOT verified" if o.ok else "FAILED")
            c.info(f"  {o.component:<16} {state:<22} {o.seconds:6.2f}s")
            for d in o.differences[:5] + ([o.error] if o.error else []):
                c.err.print(f"    {d}", markup=False)
        c.info(f"restore took {report.seconds:.2f}s (measured RTO)")
    raise_if_failed(report)


def export(
    ctx: typer.Context,
    snapshot: str = typer.Argument("latest", help="Stack snapshot id (prefix) or 'latest'."),
    component: str = typer.Option(..., "--component", help="The component to export."),
    out: str = typer.Option(..., "--out", help="A new or empty folder to write into."),
) -> None:
    """Write a component's artifacts as plain files plus a SHA256SUMS (`sha256sum -c`)."""
    from stackvault.ops.export import export_component
    from stackvault.ops.stack_restore import pick_snapshot

    c: Ctx = ctx.obj
    repo = _repo_for_reading(c)
    snap = pick_snapshot(repo, snapshot, None, [component])
    result = export_component(repo, snap, component, Path(out))
    if c.opts.json:
        c.emit(result)
    else:
        c.info(f"exported {component} of snapshot {snap.short_id}: {result['files']} file(s) "
               f"in {out}; check with: (cd {os.fspath(out)} && sha256sum -c SHA256SUMS)")


def _repo_for_reading(c: Ctx) -> Repository:
    """-r/STACKVAULT_REPOSITORY if given, else the repository of stackvault.yaml."""
    if c.opts.repo or "STACKVAULT_REPOSITORY" in c.opts.env:
        return c.open_repo()
    return open_stack_repo(c, load_stack_config(c))


def show(
    ctx: typer.Context,
    snapshot: str = typer.Argument("latest", help="Stack snapshot id (prefix) or 'latest'."),
) -> None:
    """Show a stack snapshot's manifest: per component its status, times, server and tool
    versions, artifacts (size, SHA-256), fingerprint size and facts such as a WAL position."""
    from stackvault.ops.stack_restore import manifest_of

    c: Ctx = ctx.obj
    repo = _repo_for_reading(c)
    if snapshot == "latest":
        stacks = [s for s in repo.list_snapshots() if s.kind == "stack"]
        if not stacks:
            raise UsageError("the repository holds no stack snapshot yet",
                             hint="run `stackvault backup` with a stackvault.yaml")
        snap = stacks[-1]
    else:
        snap = repo.find_snapshot(snapshot)
    manifest = manifest_of(snap)
    if c.opts.json:
        c.emit({"snapshot": snap.id, "time": snap.time.isoformat(), "tags": snap.tags,
                "hostname": snap.hostname, "manifest": manifest})
        return
    state = "complete" if manifest.get("complete") else "INCOMPLETE"
    c.out.print(f"stack snapshot {snap.short_id}  {snap.time.astimezone():%Y-%m-%d %H:%M:%S}"
                f"  {snap.hostname}  {state}"
                + (f"  tags: {', '.join(snap.tags)}" if snap.tags else ""), markup=False)
    for name, comp in manifest.get("components", {}).items():
        c.out.print(f"  {name} ({comp.get('type')}): {comp.get('status')}"
                    f"  {comp.get('started', '')} .. {comp.get('finished', '')}", markup=False)
        if comp.get("error"):
            c.out.print(f"    error: {comp['error']}", markup=False)
        for k, v in sorted(comp.get("versions", {}).items()):
            c.out.print(f"    {k}: {v}", markup=False)
        for a in comp.get("artifacts", []):
            c.out.print(f"    {a['name']:<40} {human(a['size']):>10}  sha256 {a['sha256'][:16]}",
                        markup=False)
        fp = comp.get("fingerprint", {})
        if fp.get("counts"):
            c.out.print(f"    fingerprint: {len(fp['counts'])} count(s), "
                        f"{len(fp.get('digests', {}))} digest(s)", markup=False)
        for db, facts in sorted(comp.get("extra", {}).get("databases", {}).items()):
            if isinstance(facts, dict) and facts.get("wal_lsn"):
                c.out.print(f"    {db}: WAL position {facts['wal_lsn']} at "
                            f"{facts.get('snapshot_time', '?')}", markup=False)
