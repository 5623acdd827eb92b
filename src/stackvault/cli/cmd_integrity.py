"""`stackvault integrity check|fix`, `stackvault reset soft|hard` and `stackvault audit
verify`: the runbook operations on a stack's stores."""

from __future__ import annotations

import sys
from typing import Any

import typer

from stackvault.cli.cmd_stack import load_stack_config, open_stack_repo
from stackvault.cli.context import Ctx
from stackvault.errors import (
    IntegrityCritical,
    IntegrityWarning,
    PartialFailure,
    StackVaultError,
    UsageError,
)

integrity_app = typer.Typer(help="Rules across stores: check them, fix what they find.",
                            no_args_is_help=True)
audit_app = typer.Typer(help="The audit log of changes StackVault made.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(integrity_app, name="integrity")
    app.add_typer(audit_app, name="audit")
    app.command("reset")(reset)


def _print_results(c: Ctx, results: list[Any], plan: bool) -> None:
    from stackvault.ops.integrity import overall

    for r in results:
        counts = ", ".join(f"{n} {k}" for k, n in r.to_dict()["counts"].items())
        c.out.print(f"{r.status.upper():<9} {r.name} ({r.type})"
                    + (f": {counts}" if counts else "") + (f": {r.error}" if r.error else ""),
                    markup=False)
        for f in r.findings[:5]:
            c.out.print(f"          {f.kind} {f.id}  {f.detail}", markup=False)
        if len(r.findings) > 5:
            c.out.print(f"          … {len(r.findings) - 5} more (--json lists 20)",
                        markup=False)
        if plan:
            for s in r.fixes:
                c.out.print(f"  fix:    {s.description}", markup=False)
            for n in r.not_fixable:
                c.out.print(f"  manual: {n}", markup=False)
    c.out.print(f"overall: {overall(results)}", markup=False)


def _exit_for(results: list[Any]) -> None:
    from stackvault.ops.integrity import overall

    state = overall(results)
    if state == "critical":
        raise IntegrityCritical("integrity check: critical findings",
                                hint="see the report; `stackvault integrity fix` shows the plan")
    if state == "warning":
        raise IntegrityWarning("integrity check: warnings",
                               hint="see the report; `stackvault integrity fix` shows the plan")


@integrity_app.command("check")
def integrity_check(ctx: typer.Context, rule: list[str] = typer.Option(
        [], "--rule", help="Run only this rule (repeatable).")) -> None:
    """Run the config's integrity rules; each is healthy, warning or critical. Exit 0, 20
    (warnings) or 21 (critical)."""
    from stackvault.ops.integrity import check, overall
    from stackvault.ops.notify import job as notify_job

    c: Ctx = ctx.obj
    config = load_stack_config(c)
    with notify_job(config, "integrity", env=c.opts.env) as job:
        results = check(config, rule or None)
        job.record(status=overall(results), errors=[
            f"{r.name}: {r.status}" + (f" ({r.error})" if r.error else "")
            for r in results if r.status != "healthy"])
    report = {"status": overall(results), "rules": [r.to_dict() for r in results]}
    _keep_report(c, config, report)
    if c.opts.json:
        c.emit(report)
    else:
        _print_results(c, results, plan=False)
    _exit_for(results)


def _keep_report(c: Ctx, config: Any, report: dict[str, Any]) -> None:
    """The newest report, for `stackvault serve` (its dashboard and /metrics)."""
    from datetime import UTC, datetime

    from stackvault.serve.service import INTEGRITY_REPORT, default_state_dir
    from stackvault.statefile import replace_json

    path = default_state_dir(config, c.opts.env) / INTEGRITY_REPORT
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_json(path, {**report, "finished": datetime.now(UTC).isoformat()})
    except OSError as exc:
        c.warn(f"could not keep the report in {path}: {exc.strerror}")


@integrity_app.command("fix")
def integrity_fix(
    ctx: typer.Context,
    apply: bool = typer.Option(False, "--apply", help="Carry out the plan (after a safety "
                               "snapshot of the components it changes); without it, only "
                               "show the plan."),
    rule: list[str] = typer.Option([], "--rule", help="Only this rule (repeatable)."),
    no_safety: bool = typer.Option(False, "--no-safety-snapshot",
                                   help="Skip the safety snapshot (not recommended)."),
) -> None:
    """Show what fixing the findings would do; with --apply, do it and record it in the audit
    log."""
    from stackvault.ops import audit
    from stackvault.ops.integrity import apply_fixes, check, touched

    c: Ctx = ctx.obj
    config = load_stack_config(c)
    results = check(config, rule or None)
    steps = [s.to_dict() for r in results for s in r.fixes]
    if not apply:
        if c.opts.json:
            c.emit({"dry_run": True, "plan": steps,
                    "rules": [r.to_dict() for r in results]})
        else:
            _print_results(c, results, plan=True)
            c.info("dry run: nothing was changed; run with --apply to carry out the fixes"
                   if steps else "nothing to fix")
        return
    safety = None
    components = touched(config, results)
    log = audit.default_path(config, c.opts.env)
    if steps and not no_safety:
        from stackvault.ops.stack_backup import backup_stack
        from stackvault.ops.stack_restore import SAFETY_TAG

        repo = open_stack_repo(c, config)
        res = backup_stack(repo, config, components=components, retry_lock=c.opts.retry_lock,
                           tags=[SAFETY_TAG, "before-integrity-fix"])
        if not res.complete:
            raise PartialFailure("the safety snapshot failed; nothing was changed",
                                 hint="; ".join(f"{o.name}: {o.error}"
                                                for o in res.components if not o.ok))
        safety = res.snapshot.id
    try:
        done = apply_fixes(results)
    except StackVaultError as e:
        audit.append(log, "integrity fix", "failed", {"error": str(e), "safety_snapshot":
                                                      safety, "components": components})
        raise
    audit.append(log, "integrity fix", "ok", {"steps": done, "safety_snapshot": safety,
                                             "components": components})
    if c.opts.json:
        c.emit({"applied": done, "safety_snapshot": safety, "audit_log": str(log)})
    else:
        for d in done:
            c.info(f"done: {d['description']} ({d['changed']} changed)")
        if safety:
            c.info(f"safety snapshot {safety[:8]} holds the state before "
                   f"(stackvault restore {safety[:8]} --yes to go back)")
        c.info(f"recorded in {log}")


@audit_app.command("verify")
def audit_verify(ctx: typer.Context, repo: bool = typer.Option(
        False, "--repo", help="Check the copies in the repository instead (written by "
        "`stackvault serve` and `audit copy`); each must verify, and the local log must "
        "begin with each copy of it (other hosts' copies: their chain only).")) -> None:
    """Check the audit log's hash chain: a changed, inserted or removed line is found."""
    from stackvault.ops import audit

    c: Ctx = ctx.obj
    config = load_stack_config(c)
    log = audit.default_path(config, c.opts.env)
    if repo:
        _verify_copies(c, config, log)
        return
    n, problems = audit.verify(log)
    if c.opts.json:
        c.emit({"entries": n, "ok": not problems, "problems": problems, "path": str(log)})
    elif not problems:
        c.info(f"{log}: {n} entries, chain intact")
    if problems:
        raise StackVaultError(f"{log}: the audit log was changed: " + "; ".join(problems[:5]),
                              hint="compare with the copy in the repository "
                                   "(stackvault audit verify --repo) or a backup")


def _verify_copies(c: Ctx, config: Any, log: Any) -> None:
    from stackvault.ops import audit

    repo = open_stack_repo(c, config)
    try:
        copies = audit.repo_copies(repo)
    finally:
        repo.close()
    problems: list[str] = []
    entries = 0
    local = log.read_bytes() if log.exists() else b""
    first = local.split(b"\n", 1)[0]
    ours = 0
    for doc_id, data in copies:
        n, bad = audit.verify_lines(data.decode("utf-8", "replace").splitlines())
        problems += [f"copy {doc_id[:8]}: {p}" for p in bad]
        # Hosts sharing a repository each copy their own log: a copy is of this log when
        # it starts with the same first entry, and then the local log must continue it.
        if not first or data.split(b"\n", 1)[0] != first:
            continue
        ours += 1
        entries = max(entries, n)
        if not local.startswith(data):
            problems.append(f"copy {doc_id[:8]}: the local log does not begin with it (lines "
                            "were changed or removed since it was copied)")
    if not ours:
        problems.append(f"the repository holds no copy of {log}")
    if c.opts.json:
        c.emit({"copies": ours, "other_logs": len(copies) - ours, "entries": entries,
                "ok": not problems, "problems": problems})
    elif not problems:
        c.info(f"{ours} cop{'y' if ours == 1 else 'ies'} of this log in the repository, "
               f"{entries} entries, chain intact, the local log continues it"
               + (f"; {len(copies) - ours} of other hosts' logs, intact"
                  if len(copies) > ours else ""))
    if problems:
        raise StackVaultError("audit log copies: " + "; ".join(problems[:5]))


@audit_app.command("copy")
def audit_copy(ctx: typer.Context) -> None:
    """Copy the audit log into the repository now (`stackvault serve` does it by itself)."""
    from stackvault.ops import audit
    from stackvault.serve.service import default_state_dir

    c: Ctx = ctx.obj
    config = load_stack_config(c)
    log = audit.default_path(config, c.opts.env)
    repo = open_stack_repo(c, config)
    try:
        doc = audit.copy_to_repo(repo, log, default_state_dir(config, c.opts.env))
    finally:
        repo.close()
    if c.opts.json:
        c.emit({"copied": doc is not None, "id": doc})
    else:
        c.info(f"copied {log} into the repository" if doc else "the copy is up to date")


def reset(
    ctx: typer.Context,
    mode: str = typer.Argument(..., help="soft (keeps integrity.reset_keep tables) or hard."),
    component: list[str] = typer.Option([], "--component", help="Only this component "
                                        "(repeatable); default: every resettable one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be emptied."),
    confirm: str | None = typer.Option(None, "--confirm", help="Type the confirmation "
                                       "without a terminal: exactly 'reset soft' or "
                                       "'reset hard'."),
) -> None:
    """Empty the stack's data stores (SQL tables, Redis databases, buckets, collections)
    after a typed confirmation and a safety snapshot."""
    from stackvault.ops import audit
    from stackvault.ops.reset import plan_reset, run_reset

    c: Ctx = ctx.obj
    if mode not in ("soft", "hard"):
        raise UsageError(f"reset {mode!r}: say soft or hard")
    config = load_stack_config(c)
    plan = plan_reset(config, mode, component or None)
    if c.opts.json and dry_run:
        c.emit({"dry_run": True, "plan": [s.to_dict() for s in plan]})
        return
    if not c.opts.json:
        for s in plan:
            c.out.print(f"  {s.component} ({s.type}): {s.description}", markup=False)
    if dry_run:
        c.info("dry run: nothing was changed")
        return
    phrase = f"reset {mode}"
    if confirm is None:
        if not sys.stdin.isatty():
            raise UsageError("a reset empties stores and needs a typed confirmation",
                             hint=f"run it on a terminal, or pass --confirm '{phrase}'")
        confirm = typer.prompt(f"type '{phrase}' to go ahead")
    if confirm.strip() != phrase:
        raise UsageError("the confirmation did not match; nothing was changed")
    repo = open_stack_repo(c, config)
    safety, done = run_reset(repo, config, plan, retry_lock=c.opts.retry_lock)
    audit.append(audit.default_path(config, c.opts.env), f"reset {mode}", "ok",
                 {"safety_snapshot": safety, "steps": done})
    if c.opts.json:
        c.emit({"safety_snapshot": safety, "done": done})
    else:
        c.info(f"safety snapshot {safety[:8]} holds the state before "
               f"(stackvault restore {safety[:8]} --yes to go back)")
