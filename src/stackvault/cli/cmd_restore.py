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
    snapshot: str = typer.Argument(..., help="Snapshot id (prefix) or 'latest'."),
    target: str = typer.Option(..., "--target", "-t", help="Folder to restore into."),
    include: list[str] = typer.Option([], "--include", "-i", help="Restore only this path "
                                      "or glob (repeatable)."),
    host: str = typer.Option(None, "--host", help="With 'latest': of this host."),
    path: list[str] = typer.Option([], "--path", help="With 'latest': of these paths."),
    tag: list[str] = typer.Option([], "--tag", help="With 'latest': with these tags."),
) -> None:
    """Restore a snapshot into a folder; paths inside it keep their full snapshot path."""
    c: Ctx = ctx.obj
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
