"""The `restore` command: a snapshot (or part of it) into a folder."""

from __future__ import annotations

import time

import typer

from stackvault.cli.context import Ctx, human
from stackvault.errors import PartialFailure
from stackvault.repo.restorer import restore as restore_snapshot


def register(app: typer.Typer) -> None:
    app.command("restore")(restore)


def restore(
    ctx: typer.Context,
    snapshot: str = typer.Argument("latest", help="Snapshot id (prefix) or 'latest'."),
    target: str = typer.Option(None, "--target", "-t", help="Files snapshot: the folder to "
                               "restore into. Without it, a stack restore (stackvault.yaml)."),
    include: list[str] = typer.Option([], "--include", "-i", help="Restore only this path "
                                      "or glob (repeatable)."),
    host: str = typer.Option(None, "--host", help="With 'latest': of this host."),
    path: list[str] = typer.Option([], "--path", help="With 'latest': of these paths."),
    tag: list[str] = typer.Option([], "--tag", help="With 'latest': with these tags."),
    component: list[str] = typer.Option([], "--component", help="Stack restore: only this "
                                        "component, or NAME.TABLE (repeatable)."),
    to: list[str] = typer.Option([], "--to", help="Stack restore: NAME=TARGET restores that "
                                 "component elsewhere (a path, a database name)."),
    at: str = typer.Option(None, "--at", help="Stack restore: the newest snapshot at or "
                           "before this ISO time."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show the plan only."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    no_safety_snapshot: bool = typer.Option(False, "--no-safety-snapshot", help="Skip the "
                                            "safety snapshot of what will be overwritten."),
    force: bool = typer.Option(False, "--force", help="Overwrite targets that are in use."),
) -> None:
    """Restore a files snapshot into a folder, or (without --target) the stack's components."""
    c: Ctx = ctx.obj
    if target is None:
        from stackvault.cli.cmd_stack import stack_restore

        stack_restore(c, snapshot, component, to, at, dry_run, yes, no_safety_snapshot, force)
        return
    repo = c.open_repo()
    snap = repo.find_snapshot(snapshot, host=host, paths=path or None, tags=tag or None)
    start = time.monotonic()
    with c.progress("restore") as progress:
        res = restore_snapshot(repo, snap, target, includes=include or None, progress=progress)
    took = time.monotonic() - start
    for err in res.errors:
        c.warn(err)
    if c.opts.json:
        c.emit({"snapshot": snap.id, "target": target, "files": res.files, "dirs": res.dirs,
                "symlinks": res.symlinks, "bytes": res.bytes, "seconds": round(took, 3),
                "errors": res.errors})
    else:
        c.info(f"restored snapshot {snap.short_id}: {res.files} files, {res.dirs} folders, "
               f"{human(res.bytes)} in {took:.2f}s to {target}")
    if res.errors:
        raise PartialFailure(f"{len(res.errors)} item(s) could not be restored (listed above)",
                             hint="run `stackvault check --read-data` to find damaged data")
