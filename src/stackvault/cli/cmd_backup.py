"""The `backup` command: paths or a stream into one snapshot."""

from __future__ import annotations

import sys

import typer

from stackvault.cli.context import Ctx, human
from stackvault.errors import PartialFailure, UsageError
from stackvault.repo.archiver import run_backup


def register(app: typer.Typer) -> None:
    app.command("backup")(backup)


def backup(
    ctx: typer.Context,
    paths: list[str] = typer.Argument(None, help="Files and folders to back up."),
    tag: list[str] = typer.Option([], "--tag", help="Tag the snapshot (repeatable)."),
    host: str = typer.Option(None, "--host", help="Record this host name instead of ours."),
    stdin: bool = typer.Option(False, "--stdin", help="Back up what arrives on standard input."),
    stdin_name: str = typer.Option("stdin", "--stdin-name", help="File name for --stdin data."),
    parent: str = typer.Option(None, "--parent", help="Snapshot whose metadata decides which "
                               "files are unchanged (default: the latest of this host+paths)."),
    component: list[str] = typer.Option([], "--component", help="Stack backup: only this "
                                        "component of stackvault.yaml (repeatable)."),
) -> None:
    """Back up the stack of stackvault.yaml (no paths), or files, folders or standard input."""
    c: Ctx = ctx.obj
    if stdin and paths:
        raise UsageError("give either paths or --stdin, not both")
    if not stdin and not paths:
        from stackvault.cli.cmd_stack import stack_backup

        stack_backup(c, component, tag, host)
        return
    if component:
        raise UsageError("--component is for stack backups (without paths)")
    if stdin and ("/" in stdin_name or stdin_name in ("", ".", "..")):
        raise UsageError(f"bad --stdin-name {stdin_name!r}", hint="use a plain file name")
    repo = c.open_repo()
    with c.progress("backup") as progress:
        result = run_backup(
            repo, paths=None if stdin else list(paths), stdin=sys.stdin.buffer if stdin else None,
            stdin_name=stdin_name, tags=tag, hostname=host, parent=parent, progress=progress,
            retry_lock=c.opts.retry_lock)
    snap, s = result.snapshot, result.snapshot.summary
    for err in result.errors:
        c.warn(err)
    if c.opts.json:
        c.emit({"snapshot": snap.id, "summary": s, "errors": result.errors})
    else:
        c.info(f"files: {s['files_new']} new, {s['files_changed']} changed, "
               f"{s['files_unmodified']} unmodified")
        c.info(f"added: {human(s['data_added'])} ({human(s['data_added_stored'])} stored) "
               f"of {human(s['bytes_read'])} processed in {s['duration_s']:.2f}s")
        c.info(f"snapshot {snap.short_id} saved")
    if result.errors:
        raise PartialFailure(f"snapshot {snap.short_id} was saved, but {len(result.errors)} "
                             "item(s) could not be read (listed above)",
                             hint="fix their permissions or exclude them, then back up again")
