"""`stackvault schedule list|install`: the next runs of the config's `schedule:` section, and
crontab lines or systemd timers for machines that run no `stackvault serve`."""

from __future__ import annotations

import getpass
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from stackvault.cli.cmd_stack import load_stack_config
from stackvault.cli.context import Ctx
from stackvault.errors import PartialFailure, UsageError

schedule_app = typer.Typer(help="When the config's jobs run: list the next runs, or install "
                                "them as crontab lines or systemd timers.",
                           no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")


def _jobs(config: Any) -> dict[str, Any]:
    jobs: dict[str, Any] = config.schedule.jobs()
    if not jobs:
        raise UsageError("the config schedules no jobs",
                         hint="add a `schedule:` section (see docs/scheduling.md)")
    return jobs


@schedule_app.command("list")
def list_(
    ctx: typer.Context,
    count: int = typer.Option(3, "--count", "-n", min=1, max=100,
                              help="How many next runs to show per job."),
) -> None:
    """Each scheduled job: its cron expression, time zone, command and next runs."""
    from zoneinfo import ZoneInfo

    from stackvault.config.base import format_duration
    from stackvault.ops.scheduler import job_command, job_specs

    c: Ctx = ctx.obj
    config = load_stack_config(c)
    jobs = _jobs(config)
    tz = ZoneInfo(config.schedule.timezone)
    now = datetime.now(UTC)
    out: list[dict[str, Any]] = []
    for spec in job_specs(config.schedule):
        times = spec.schedule.times(now - spec.offset)
        runs = [(next(times) + spec.offset).astimezone(tz) for _ in range(count)]
        job = jobs[spec.name]
        out.append({"job": spec.name, "cron": spec.cron, "timezone": spec.timezone,
                    "jitter": format_duration(spec.jitter_seconds) if spec.jitter_seconds
                    else None,
                    "jitter_offset_seconds": int(spec.offset.total_seconds()),
                    "missed": spec.missed, "command": job_command(spec.name, job),
                    "next_runs": [t.isoformat() for t in runs]})
    if c.opts.json:
        c.emit({"timezone": config.schedule.timezone, "jobs": out})
        return
    for j in out:
        jitter = f", jitter {j['jitter']} (+{j['jitter_offset_seconds']}s)" if j["jitter"] else ""
        command: list[str] = j["command"]
        c.out.print(f"{j['job']}: {j['cron']} ({j['timezone']}{jitter}, missed: {j['missed']})"
                    f"  stackvault {shlex.join(command)}", markup=False)
        for t in j["next_runs"]:
            c.out.print(f"  {t}", markup=False)


@schedule_app.command("install")
def install(
    ctx: typer.Context,
    cron: bool = typer.Option(False, "--cron", help="Crontab lines (printed, or --write)."),
    systemd: bool = typer.Option(False, "--systemd", help="A systemd .service and .timer per "
                                 "job, written into --dir."),
    user: bool = typer.Option(False, "--user", help="For a user's own crontab (`crontab -e`) "
                              "or systemd user units; default: /etc/cron.d format (with a "
                              "user column), or system units."),
    write: Path | None = typer.Option(None, "--write", help="--cron: write the lines to this "
                                      "file instead of printing them."),
    directory: Path | None = typer.Option(None, "--dir", help="--systemd: the folder for the "
                                          "units, e.g. /etc/systemd/system or "
                                          "~/.config/systemd/user."),
) -> None:
    """Write the schedule as crontab lines or systemd timers, for machines that run no
    `stackvault serve`. Each runs `stackvault -c CONFIG <job>` with the config's absolute
    path."""
    from stackvault.ops import schedule_install as si

    c: Ctx = ctx.obj
    if cron == systemd:
        raise UsageError("give exactly one of --cron or --systemd")
    if systemd and directory is None:
        raise UsageError("--systemd needs --dir DIR", hint="e.g. --dir /etc/systemd/system")
    if cron and directory is not None or systemd and write is not None:
        raise UsageError("--write goes with --cron, --dir with --systemd")
    config = load_stack_config(c)
    _jobs(config)
    if config.source is None:
        raise UsageError("the config was not loaded from a file")
    program = si.stackvault_program()
    config_path = Path(config.source).resolve()
    if cron:
        text = si.crontab(config.schedule, program, config_path,
                          user=None if user else getpass.getuser())
        if write is None:
            sys.stdout.write(text)
        else:
            write.write_text(text, encoding="utf-8")
            c.info(f"wrote {write}")
        local = si.local_timezone_name()
        if local is not None and local != config.schedule.timezone:
            c.warn(f"the schedule's time zone is {config.schedule.timezone} but this "
                   f"machine's is {local}: the lines set CRON_TZ, which cronie honours but "
                   "Debian's cron ignores")
        if c.opts.json and write is not None:
            c.emit({"written": str(write)})
        return
    assert directory is not None
    result = si.write_systemd(config.schedule, program, config_path, directory)
    if c.opts.json:
        c.emit({"written": [str(p) for p in result.written],
                "not_expressible": result.not_expressible})
    else:
        for p in result.written:
            c.info(f"wrote {p}")
        timers = " ".join(p.name for p in result.written if p.suffix == ".timer")
        if timers:
            scope = "--user " if user else ""
            c.info(f"enable with: systemctl {scope}daemon-reload && "
                   f"systemctl {scope}enable --now {timers}")
    for job, why in result.not_expressible.items():
        c.err.print(f"error: schedule.{job}.cron cannot be written as a systemd OnCalendar: "
                    f"{why}; no timer written for it (use --cron or `stackvault serve`)",
                    markup=False)
    if result.not_expressible:
        raise PartialFailure(f"{len(result.not_expressible)} job(s) got no timer")
