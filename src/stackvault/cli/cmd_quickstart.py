"""`stackvault quickstart`: back up, damage, restore and verify an embedded RAG stack."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import typer

from stackvault.cli.context import Ctx, human
from stackvault.errors import StackVaultError, UsageError


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)


class QuickstartFailed(StackVaultError):
    pass


def quickstart(ctx: typer.Context, workdir: str = typer.Option(
        None, "--workdir", help="Where to build the stack, its stackvault.yaml and the "
        "repository (default: a new temporary folder).")) -> None:
    """Build a small RAG stack (SQLite, Qdrant local mode, ChromaDB folder, source files),
    back it up into an encrypted repository, damage it, restore it, verify it."""
    from stackvault.config.loader import load_config
    from stackvault.ops import quickstart as qs
    from stackvault.ops.drill import run_drill, save_drill
    from stackvault.ops.stack_backup import backup_stack
    from stackvault.ops.stack_restore import plan_restore, restore_stack
    from stackvault.repo.repository import Repository
    from stackvault.storage import open_storage

    c: Ctx = ctx.obj
    base = Path(workdir or tempfile.mkdtemp(prefix="stackvault-quickstart-")).absolute()
    if base.exists() and any(base.iterdir()):
        raise UsageError(f"{base} is not empty", hint="give a new or empty --workdir")
    base.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Any] = {"workdir": str(base)}

    stack, took = qs.timed(lambda: qs.build_stack(base / "stack"))
    repo_dir, password_file = base / "repo", base / "repository-password"
    config_path = qs.write_config(stack, repo_dir, password_file)
    c.info(f"stack:     {stack.root} ({len(stack.chunks)} chunks in SQLite, Qdrant and "
           f"ChromaDB, {len(list(stack.sources.iterdir()))} source files) built in {took:.1f}s")
    c.info(f"config:    {config_path}")
    config = load_config(config_path)
    password = password_file.read_text().splitlines()[0]
    repo = Repository.init(open_storage(str(repo_dir), create=True), password,
                           kdf=c.kdf_from_env())
    c.info(f"repository: {repo_dir} (encrypted; password in {password_file})")

    before = qs.observe(stack)
    backup, took = qs.timed(lambda: backup_stack(repo, config))
    if not backup.complete:
        bad = "; ".join(f"{o.name}: {o.error}" for o in backup.components if not o.ok)
        raise QuickstartFailed(f"the backup failed: {bad}")
    snap = backup.snapshot
    steps["backup"] = {"snapshot": snap.id, "seconds": round(took, 3),
                       "stored": snap.summary["data_added_stored"],
                       "read": snap.summary["bytes_read"]}
    c.info(f"backup:    stack snapshot {snap.short_id}: {human(snap.summary['bytes_read'])} "
           f"read, {human(snap.summary['data_added_stored'])} stored, {took:.1f}s")

    what = qs.damage(stack)
    steps["damage"] = what
    for line in what:
        c.info(f"damage:    {line}")
    damaged = qs.observe(stack)

    plan = plan_restore(repo, config)
    report = restore_stack(repo, config, plan, safety=True, force=True)
    after = qs.observe(stack)
    same = after == before
    steps["restore"] = report.to_dict()
    steps["identical_to_before"] = same
    steps["damage_seen"] = damaged != before
    drill = run_drill(repo, config, ref=snap.id)
    save_drill(repo, drill)
    steps["drill"] = drill.to_dict()
    ok = report.ok and same and drill.ok
    if c.opts.json:
        c.emit({"ok": ok, **steps})
    else:
        c.info(f"safety:    snapshot {str(report.safety_snapshot)[:8]} holds the damaged state")
        for o in report.outcomes:
            state = "verified" if o.ok and o.verified else ("NOT verified" if o.ok else "FAILED")
            c.info(f"restore:   {o.component:<8} {state:<12} {o.seconds:6.2f}s")
        c.info(f"restore:   the whole stack in {report.seconds:.2f}s (the measured RTO; the "
               f"safety snapshot included)")
        verdict = "every store is identical to before the damage" if same else "MISMATCH"
        c.info(f"verify:    {verdict} (rows, points, records, search results, files)")
        c.info(f"drill:     {'passed' if drill.ok else 'FAILED'}: snapshot {snap.short_id} "
               f"restored into scratch targets and verified in {drill.rto_seconds:.2f}s, "
               "scratch targets removed")
        c.info(f"try:       stackvault -c {config_path} show    (then: status, drills, "
               "restore --dry-run)")
    if not ok:
        diffs = sorted(k for k in before if before[k] != after.get(k))
        raise QuickstartFailed("the restored stack differs from the original in: "
                               + (", ".join(diffs) or "verification")
                               + ("" if drill.ok else "; the drill failed: "
                                  + "; ".join(drill.failures[:3])))
