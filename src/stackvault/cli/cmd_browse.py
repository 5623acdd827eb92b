"""Read-only commands: snapshots, ls, diff, stats, dump."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.table import Table

from stackvault.cli.context import Ctx, human
from stackvault.repo.restorer import dump as dump_file
from stackvault.repo.restorer import find_node
from stackvault.repo.snapshot import Snapshot
from stackvault.repo.stats import diff as diff_snapshots
from stackvault.repo.stats import stats as repo_stats
from stackvault.repo.tree import DIR


def register(app: typer.Typer) -> None:
    app.command("snapshots")(snapshots)
    app.command("ls")(ls)
    app.command("diff")(diff)
    app.command("stats")(stats)
    app.command("dump")(dump)


def snapshot_json(s: Snapshot) -> dict[str, Any]:
    return {"id": s.id, "short_id": s.short_id, "time": s.time.isoformat(),
            "hostname": s.hostname, "username": s.username, "paths": s.paths, "tags": s.tags,
            "tree": s.tree, "parent": s.parent, "original": s.original, "kind": s.kind,
            "summary": s.summary}


def filtered(snaps: list[Snapshot], host: str | None, tags: list[str],
             paths: list[str]) -> list[Snapshot]:
    return [s for s in snaps if (not host or s.hostname == host)
            and set(tags) <= set(s.tags) and (not paths or set(paths) <= set(s.paths))]


def snapshots(
    ctx: typer.Context,
    host: str = typer.Option(None, "--host", help="Only snapshots of this host."),
    tag: list[str] = typer.Option([], "--tag", help="Only snapshots with this tag."),
    path: list[str] = typer.Option([], "--path", help="Only snapshots of this path."),
) -> None:
    """List snapshots, oldest first."""
    c: Ctx = ctx.obj
    repo = c.open_repo()
    errors: list = []
    snaps = filtered(repo.list_snapshots(errors), host, tag, path)
    for sid, exc in errors:
        c.warn(f"snapshot {sid[:12]} cannot be read: {exc}")
    if c.opts.json:
        c.emit([snapshot_json(s) for s in snaps])
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "Time", "Host", "Tags", "Paths", "Size"):
        table.add_column(col)
    for s in snaps:
        table.add_row(s.short_id, s.time.astimezone().strftime("%Y-%m-%d %H:%M:%S"), s.hostname,
                      ",".join(s.tags), "\n".join(s.paths),
                      human(s.summary.get("bytes_read", 0)))
    c.out.print(table)
    c.out.print(f"{len(snaps)} snapshot(s)")


def ls(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id (prefix) or 'latest'."),
    path: str = typer.Argument("/", help="List below this path."),
    long: bool = typer.Option(False, "--long", "-l", help="Show mode, size and time."),
) -> None:
    """List the files in a snapshot."""
    c: Ctx = ctx.obj
    repo = c.open_repo()
    snap = repo.find_snapshot(snapshot)
    prefix = "/".join(p for p in path.split("/") if p)
    tree = snap.tree
    if prefix:
        node = find_node(repo, snap, prefix)
        tree = node.subtree if node.type == DIR and node.subtree else ""
    rows: list[dict[str, Any]] = []
    if prefix and node.type != DIR:  # `ls SNAPSHOT /path/to/file` shows that file
        rows.append({"path": "/" + prefix, "type": node.type, "mode": oct(node.mode),
                     "size": node.size, "mtime_ns": node.mtime_ns, "target": node.target})
    if tree:
        for p, node in repo.walk(tree, prefix):
            rows.append({"path": "/" + p, "type": node.type, "mode": oct(node.mode),
                         "size": node.size, "mtime_ns": node.mtime_ns, "target": node.target})
    if c.opts.json:
        c.emit(rows)
        return
    for r in rows:
        if long:
            c.out.print(f"{r['type'][0]} {r['mode']:>6} {r['size']:>12}  {r['path']}")
        else:
            c.out.print(r["path"])


def diff(ctx: typer.Context, a: str = typer.Argument(..., help="First snapshot."),
         b: str = typer.Argument(..., help="Second snapshot.")) -> None:
    """Show what changed between two snapshots (+ added, - removed, M content, U metadata)."""
    c: Ctx = ctx.obj
    repo = c.open_repo()
    changes = diff_snapshots(repo, repo.find_snapshot(a), repo.find_snapshot(b))
    if c.opts.json:
        c.emit([{"change": ch, "path": p} for ch, p in changes])
        return
    for ch, p in changes:
        c.out.print(f"{ch} {p}", markup=False)
    counts = {k: sum(1 for ch, _ in changes if ch == k) for k in "+-MTU"}
    c.out.print(f"{counts['+']} added, {counts['-']} removed, {counts['M']} modified, "
                f"{counts['U']} metadata only, {counts['T']} type changed")


def stats(ctx: typer.Context, snapshot: list[str] = typer.Argument(
        None, help="Snapshots to count (default: all).")) -> None:
    """Show sizes: what a restore would write, unique data, stored bytes, dedup ratio."""
    c: Ctx = ctx.obj
    repo = c.open_repo()
    snaps = ([repo.find_snapshot(s) for s in snapshot] if snapshot else repo.list_snapshots())
    st = repo_stats(repo, snaps)
    if c.opts.json:
        c.emit(st.to_dict())
        return
    c.out.print(f"snapshots:          {st.snapshots}")
    c.out.print(f"files:              {st.files}")
    c.out.print(f"restore size (raw): {human(st.restore_size)}")
    c.out.print(f"unique data:        {human(st.unique_size)}")
    c.out.print(f"stored size:        {human(st.stored_size)} in {st.packs} packs")
    c.out.print(f"dedup ratio:        {st.dedup_ratio:.2f}x")
    c.out.print(f"compression ratio:  {st.compression_ratio:.2f}x")


def dump(ctx: typer.Context, snapshot: str = typer.Argument(..., help="Snapshot or 'latest'."),
         path: str = typer.Argument(..., help="Path of a file inside the snapshot.")) -> None:
    """Write one file from a snapshot to standard output."""
    c: Ctx = ctx.obj
    repo = c.open_repo()
    dump_file(repo, repo.find_snapshot(snapshot), path, sys.stdout.buffer)
    sys.stdout.buffer.flush()
