"""Maintenance commands: check, forget, prune, copy."""

from __future__ import annotations

import re
from typing import Any

import typer
from rich.markup import escape

from stackvault.cli.cmd_browse import filtered
from stackvault.cli.context import Ctx, human
from stackvault.errors import ExitCode, StackVaultError, UsageError
from stackvault.repo.check import check as check_repo
from stackvault.repo.copy import copy_snapshots
from stackvault.repo.lock import Lock
from stackvault.repo.prune import prune as prune_repo
from stackvault.repo.repository import Repository
from stackvault.repo.retention import EmptyPolicyError, KeepPolicy, parse_duration, plan
from stackvault.storage import open_storage


def register(app: typer.Typer) -> None:
    app.command("check")(check)
    app.command("forget")(forget)
    app.command("prune")(prune)
    app.command("copy")(copy)


def parse_seconds(text: str) -> float:
    """'90', '90s', '5m', '1h' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "0")
    if not m:
        raise UsageError(f"bad duration {text!r}", hint="use e.g. 30s, 5m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


class CheckFailed(StackVaultError):
    exit_code = ExitCode.ERROR


def check(
    ctx: typer.Context,
    read_data: bool = typer.Option(False, "--read-data", help="Also read and verify all data."),
    read_data_subset: str = typer.Option(None, "--read-data-subset", help="Read and verify a "
                                         "subset of the data: N% (random) or k/n (a slice)."),
) -> None:
    """Check the repository's structure, and with --read-data its data. Exit 1 on damage."""
    c: Ctx = ctx.obj
    repo = c.open_repo()
    with c.progress("check") as progress:
        rep = check_repo(repo, read_data=read_data, subset=read_data_subset, progress=progress)
    if c.opts.json:
        c.emit(rep.to_dict())
    else:
        for p in rep.warnings:
            c.warn(f"{p.object}: {p.message}")
        for p in rep.errors:
            affected = (f" (affects snapshots: {', '.join(s[:8] for s in p.snapshots)})"
                        if p.snapshots else "")
            c.err.print(f"error: {p.object}: {p.message}{affected}", markup=False,
                        highlight=False)
        read = f", {rep.packs_read} packs read" if rep.packs_read else ""
        c.info(f"checked {rep.snapshots} snapshots, {rep.packs} packs{read}: "
               + ("no errors" if rep.ok else f"{len(rep.errors)} error(s)"))
    if not rep.ok:
        raise CheckFailed(f"the repository has {len(rep.errors)} error(s)",
                          hint="see docs/recovery.md; `stackvault repair index` rebuilds a "
                          "damaged index")


def forget(
    ctx: typer.Context,
    snapshot: list[str] = typer.Argument(None, help="Forget these snapshots explicitly."),
    keep_last: int = typer.Option(0, "--keep-last", help="Keep the N newest."),
    keep_hourly: int = typer.Option(0, "--keep-hourly", help="Keep the newest of N hours."),
    keep_daily: int = typer.Option(0, "--keep-daily", help="Keep the newest of N days."),
    keep_weekly: int = typer.Option(0, "--keep-weekly", help="Keep the newest of N weeks."),
    keep_monthly: int = typer.Option(0, "--keep-monthly", help="Keep the newest of N months."),
    keep_yearly: int = typer.Option(0, "--keep-yearly", help="Keep the newest of N years."),
    keep_within: str = typer.Option(None, "--keep-within", help="Keep all within this "
                                    "duration of the newest, e.g. 7d, 1y2m."),
    keep_tag: list[str] = typer.Option([], "--keep-tag", help="Keep snapshots with this tag."),
    group_by: str = typer.Option("host,paths", "--group-by", help="Apply the policy per group "
                                 "of: host, paths, tags (comma-separated; '' = one group)."),
    host: str = typer.Option(None, "--host", help="Only consider this host's snapshots."),
    tag: list[str] = typer.Option([], "--tag", help="Only consider snapshots with this tag."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show the plan, delete nothing."),
    prune_after: bool = typer.Option(False, "--prune", help="Run prune afterwards."),
) -> None:
    """Remove snapshots by a retention policy; each kept snapshot is shown with its reasons."""
    c: Ctx = ctx.obj
    repo = c.open_repo()
    with Lock(repo, exclusive=True).acquire(c.opts.retry_lock):
        snaps = filtered(repo.list_snapshots(), host, tag, [])
        if snapshot:
            # Resolved without reading, so that a damaged snapshot can be forgotten too.
            remove = {repo.resolve_snapshot_id(s) for s in snapshot}
            groups_out: list[dict[str, Any]]
            by_id = {s.id: s for s in snaps}
            groups_out = [{"key": {}, "keep": [], "remove": [
                {"id": sid, "time": by_id[sid].time.isoformat() if sid in by_id else "?"}
                for sid in sorted(remove)]}]
        else:
            fields = [{"host": "hostname"}.get(f.strip(), f.strip())
                      for f in group_by.split(",") if f.strip()]
            try:
                policy = KeepPolicy(
                    last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
                    monthly=keep_monthly, yearly=keep_yearly,
                    within=parse_duration(keep_within) if keep_within else None,
                    tags=frozenset(keep_tag))
                groups = plan(snaps, policy, group_by=fields)
            except EmptyPolicyError:
                raise UsageError("no policy given: refusing to forget every snapshot",
                                 hint="give --keep-* options or snapshot ids") from None
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            remove = set()
            groups_out = []
            for grp in groups:
                groups_out.append({
                    "key": grp.key,
                    "keep": [{"id": d.snapshot.id, "time": d.snapshot.time.isoformat(),
                              "reasons": list(d.reasons)} for d in grp.decisions if d.keep],
                    "remove": [{"id": d.snapshot.id, "time": d.snapshot.time.isoformat()}
                               for d in grp.decisions if not d.keep],
                })
                remove |= {d.snapshot.id for d in grp.decisions if not d.keep}
        if not c.opts.json:
            for g in groups_out:
                if g["key"]:
                    c.out.print(f"[bold]group {escape(str(g['key']))}[/bold]", markup=True)
                for k in g["keep"]:
                    c.out.print(f"  keep    {k['id'][:8]}  {k['time'][:19]}  "
                                f"{', '.join(k['reasons'])}", markup=False)
                for r in g["remove"]:
                    c.out.print(f"  remove  {r['id'][:8]}  {r['time'][:19]}", markup=False)
        if not dry_run:
            for sid in sorted(remove):
                repo.storage.delete(f"snapshots/{sid}")
    pruned = _prune(c, repo, 0.05, False, emit=False) if prune_after and not dry_run else None
    if c.opts.json:  # one JSON document, the prune result included (docs/exit-codes.md)
        c.emit({"dry_run": dry_run, "groups": groups_out, "removed": sorted(remove),
                **({"prune": pruned} if pruned is not None else {})})
    else:
        verb = "would remove" if dry_run else "removed"
        c.info(f"{verb} {len(remove)} snapshot(s)")


def prune(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show what would be done."),
    max_unused: str = typer.Option("5%", "--max-unused", help="Repack packs with more unused "
                                   "space than this."),
) -> None:
    """Delete data no snapshot uses: repack partly used packs, remove unused ones."""
    c: Ctx = ctx.obj
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", max_unused.strip())
    if not m or float(m.group(1)) > 100:
        raise UsageError(f"bad --max-unused {max_unused!r}", hint="use a percentage like 5%")
    _prune(c, c.open_repo(), float(m.group(1)) / 100, dry_run)


def _prune(c: Ctx, repo: Repository, max_unused: float, dry_run: bool,
           emit: bool = True) -> dict:
    with c.progress("prune") as progress:
        p = prune_repo(repo, max_unused=max_unused, dry_run=dry_run,
                       retry_lock=c.opts.retry_lock, progress=progress)
    result = {"dry_run": dry_run, **p.to_dict()}
    if c.opts.json:
        if emit:
            c.emit(result)
        return result
    verb = "would" if dry_run else "did"
    c.info(f"packs: {len(p.keep)} kept, {len(p.repack)} repacked, {len(p.delete)} deleted "
           f"({verb} free {human(p.bytes_freed)} of {human(p.bytes_total)})")
    return result


def copy(
    ctx: typer.Context,
    snapshot: list[str] = typer.Argument(None, help="Snapshots to copy (default: all)."),
    to: str = typer.Option(None, "--to", help="Destination repository (or "
                           "STACKVAULT_TO_REPOSITORY)."),
    to_password_file: str = typer.Option(None, "--to-password-file", help="Destination "
                                         "password file (or STACKVAULT_TO_PASSWORD[_FILE])."),
) -> None:
    """Copy snapshots to a second repository (offsite); already copied ones are skipped."""
    c: Ctx = ctx.obj
    src = c.open_repo()
    dst_url = c.repo_url(to, "STACKVAULT_TO_REPOSITORY")
    dst = Repository.open(open_storage(dst_url),
                          c.password(prefix="STACKVAULT_TO", file=to_password_file,
                                     prompt="destination password"))
    snaps = [src.find_snapshot(s) for s in snapshot] if snapshot else src.list_snapshots()
    with c.progress("copy") as progress:
        res = copy_snapshots(src, dst, snaps, retry_lock=c.opts.retry_lock, progress=progress)
    if c.opts.json:
        c.emit({"copied": [{"source": a, "copy": b} for a, b in res.copied],
                "skipped": res.skipped})
    else:
        for a, b in res.copied:
            c.info(f"copied {a[:8]} -> {b[:8]}")
        c.info(f"{len(res.copied)} copied, {len(res.skipped)} already present")
