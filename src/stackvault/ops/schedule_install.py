"""The schedule as crontab lines or systemd .service/.timer units (`stackvault schedule
install`), including the translation of cron expressions into systemd OnCalendar values."""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stackvault.config.base import format_duration
from stackvault.config.schedule_schema import ScheduleConfig, ScheduledJob
from stackvault.ops.scheduler import jitter_offset, job_command

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_SYSTEMD_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
# (low, high, names) of minute, hour, day of month, month, day of week.
_FIELDS: list[tuple[int, int, list[str]]] = [(0, 59, []), (0, 23, []), (1, 31, []),
                                             (1, 12, _MONTHS), (0, 7, _DAYS)]


def stackvault_program() -> list[str]:
    """How cron or systemd start this StackVault: the `stackvault` script next to this
    Python, else `python -m stackvault`."""
    script = Path(sys.executable).parent / "stackvault"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "stackvault"]


def local_timezone_name() -> str | None:
    """This machine's IANA time zone, when it can be told (TZ, /etc/timezone, /etc/localtime)."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    try:
        return Path("/etc/timezone").read_text(encoding="utf-8").strip() or None
    except OSError:
        pass
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return None
    m = re.search(r"zoneinfo/(.+)$", target)
    return m.group(1) if m else None


def command_line(name: str, job: ScheduledJob, program: list[str], config: Path) -> list[str]:
    return [*program, "-c", str(config), "--quiet", *job_command(name, job)]


# --------------------------------------------------------------------------- crontab


def crontab(schedule: ScheduleConfig, program: list[str], config: Path, *,
            user: str | None) -> str:
    """Crontab text: one line per job; ``user`` adds the user column of /etc/cron.d files."""
    lines = ["# StackVault schedule, written by `stackvault schedule install --cron` from",
             f"# {config}. cron does not run missed jobs (the `missed:` policy needs",
             "# `stackvault serve` or --systemd); jitter is the job's fixed offset (a sleep).",
             f"CRON_TZ={schedule.timezone}"]
    for name, job in schedule.jobs().items():
        cmd = shlex.join(command_line(name, job, program, config))
        delay = int(jitter_offset(name, job.jitter).total_seconds())
        if delay:
            cmd = f"sleep {delay} && {cmd}"
        cmd = cmd.replace("%", "\\%")  # a bare % ends a cron command
        who = f" {user}" if user else ""
        lines.append(f"{job.cron}{who} {cmd}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- systemd


class NotExpressible(ValueError):
    """A cron expression systemd's OnCalendar cannot say."""


def _value(text: str, names: list[str], low: int) -> int:
    if text.isdigit():
        return int(text)
    if text.lower() in names:
        return names.index(text.lower()) + (low if names is _MONTHS else 0)
    raise NotExpressible(f"'{text}' is not a plain value (L, W, # and ? have no OnCalendar "
                         "form)")


def cron_field_values(text: str, index: int) -> set[int]:
    """One cron field -> the set of values it matches (day of week: 0 = Sunday)."""
    low, high, names = _FIELDS[index]
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() else None
        if step_text and step is None:
            raise NotExpressible(f"'{part}' has a step that is not a number")
        if rng == "*":
            a, b = low, high
        elif "-" in rng:
            a_text, b_text = rng.split("-", 1)
            a, b = _value(a_text, names, low), _value(b_text, names, low)
        else:
            a = _value(rng, names, low)
            b = high if step else a
        if not low <= a <= high or not low <= b <= high or a > b:
            raise NotExpressible(f"'{part}' is out of range")
        out.update(range(a, b + 1, step or 1))
    if index == 4 and 7 in out:
        out = (out - {7}) | {0}
    return out


def _restricted(text: str) -> bool:
    # cron's rule: a day field counts only when it does not start with '*'.
    return not text.startswith("*")


def oncalendar(cron: str, timezone: str) -> list[str]:
    """A cron expression -> the OnCalendar= values (several when both day fields are given:
    cron runs when either matches, systemd when all do). Raises NotExpressible."""
    fields = cron.split()
    minute, hour, dom, month, dow = (cron_field_values(f, i) for i, f in enumerate(fields))

    def join(values: set[int], full: range) -> str:
        return "*" if values == set(full) else ",".join(f"{v:02d}" for v in sorted(values))

    time = f"{join(hour, range(24))}:{join(minute, range(60))}:00"
    months = join(month, range(1, 13))
    days = ",".join(_SYSTEMD_DAYS[d] for d in sorted(dow))
    by_dom = f"*-{months}-{join(dom, range(1, 32))} {time} {timezone}"
    by_dow = f"{days} *-{months}-* {time} {timezone}"
    if _restricted(fields[2]) and _restricted(fields[4]):
        return [by_dom, by_dow]
    if _restricted(fields[4]) and dow != set(range(7)):
        return [by_dow]
    return [by_dom]


def _systemd_quote(arg: str) -> str:
    arg = arg.replace("%", "%%")  # systemd specifiers
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class SystemdResult:
    written: list[Path] = field(default_factory=list)
    not_expressible: dict[str, str] = field(default_factory=dict)


def systemd_units(name: str, job: ScheduledJob, timezone: str, program: list[str],
                  config: Path) -> tuple[str, str]:
    """(service, timer) text for one job. Raises NotExpressible."""
    calendars = oncalendar(job.cron, timezone)
    exec_start = " ".join(_systemd_quote(a) for a in command_line(name, job, program, config))
    service = "\n".join([
        "# Written by `stackvault schedule install --systemd`.",
        "[Unit]",
        f"Description=StackVault {name} ({config})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        "# The repository password, when the config names an environment variable:",
        "# EnvironmentFile=/etc/stackvault/stackvault.env",
        f"ExecStart={exec_start}",
        ""])
    timer = ["# Written by `stackvault schedule install --systemd`.",
             f"# cron: {job.cron} ({timezone})",
             "[Unit]",
             f"Description=StackVault {name} on its schedule",
             "",
             "[Timer]",
             *[f"OnCalendar={cal}" for cal in calendars],
             f"Unit=stackvault-{name}.service",
             f"Persistent={'true' if job.missed == 'run_once' else 'false'}"]
    if job.jitter:
        # systemd picks its own fixed delay (per machine and timer) within the jitter.
        timer += [f"RandomizedDelaySec={format_duration(job.jitter)}",
                  "FixedRandomDelay=true"]
    timer += ["", "[Install]", "WantedBy=timers.target", ""]
    return service, "\n".join(timer)


def write_systemd(schedule: ScheduleConfig, program: list[str], config: Path,
                  directory: Path) -> SystemdResult:
    """Write `stackvault-JOB.service` and `.timer` per job into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    result = SystemdResult()
    for name, job in schedule.jobs().items():
        try:
            service, timer = systemd_units(name, job, schedule.timezone, program, config)
        except NotExpressible as exc:
            result.not_expressible[name] = f"'{job.cron}': {exc}"
            continue
        for suffix, text in ((".service", service), (".timer", timer)):
            path = directory / f"stackvault-{name}{suffix}"
            path.write_text(text, encoding="utf-8")
            result.written.append(path)
    return result
