"""The `schedule:` section of stackvault.yaml: when backup, forget+prune, check, drill and
integrity run (cron expressions in a time zone, jitter, the policy for missed runs)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import AfterValidator, BaseModel, Field

from stackvault.config.base import Duration, Loc, NonEmptyStr, TypeDoc, _error, _Model

JOB_NAMES = ("backup", "prune", "check", "drill", "integrity")
MissedPolicy = Literal["run_once", "skip"]


def _cron(value: str) -> str:
    from croniter import croniter

    fields = value.split()
    if len(fields) != 5:
        raise _error("cron", f"a cron expression has 5 fields (minute hour day-of-month month "
                     f"day-of-week), e.g. '30 2 * * *'; this one has {len(fields)}")
    if not croniter.is_valid(" ".join(fields)):
        raise _error("cron", "not a valid cron expression: each of the 5 fields (minute "
                     "0-59, hour 0-23, day-of-month 1-31, month 1-12, day-of-week 0-7) is *, "
                     "a number, a range a-b, a list a,b or a step */n")
    return " ".join(fields)


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        hint = ""
        close = [z for z in available_timezones() if z.lower() == value.lower()]
        if close:
            hint = f" (did you mean {close[0]}?)"
        raise _error("timezone", f"unknown time zone{hint}: use an IANA name such as UTC, "
                     "Europe/Berlin or America/New_York") from None
    return value


def _subset(value: str) -> str:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", value.strip())
    if m is None or not 0 < float(m.group(1)) <= 100:
        raise _error("read_data_subset", "a percentage of the repository's data read per "
                     "run, more than 0% and at most 100%, e.g. 5%")
    return value.strip()


Cron = Annotated[str, AfterValidator(_cron), TypeDoc("cron expression")]
TimeZone = Annotated[str, AfterValidator(_timezone), TypeDoc("time zone")]
Percent = Annotated[str, AfterValidator(_subset), TypeDoc("percentage")]


def subset_slices(subset: str) -> int:
    """'5%' -> 20: how many runs read the whole repository once (the slices of a cycle)."""
    percent = float(subset.rstrip("%"))
    return max(1, -int(-100 // percent))  # ceil(100 / percent)


class ScheduledJob(_Model):
    """When one job runs."""

    cron: Cron = Field(description="When it runs: a 5-field cron expression (minute hour "
                       "day-of-month month day-of-week) in the schedule's `timezone`.",
                       examples=["30 2 * * *"])
    jitter: Duration | None = Field(
        None, description="Start up to this much later than the cron time, by a fixed offset "
                          "per job (the same on every run and on every machine with the same "
                          "job), so that many hosts do not all start at once.",
        examples=["10m"])
    missed: MissedPolicy = Field(
        "run_once", description="Runs missed while the scheduler was not running: `run_once` "
                                "runs one catch-up as soon as it is back (however many were "
                                "missed), `skip` records them as missed and waits for the next "
                                "time.")


class BackupJob(ScheduledJob):
    """`stackvault backup` of the whole stack."""


class PruneJob(ScheduledJob):
    """`stackvault forget --prune` with a retention policy (the `keep_*` settings are the
    `--keep-*` options of `forget`; at least one is needed)."""

    keep_last: int = Field(0, ge=0, description="Keep the N newest snapshots.")
    keep_hourly: int = Field(0, ge=0, description="Keep the newest of each of N hours.")
    keep_daily: int = Field(0, ge=0, description="Keep the newest of each of N days.",
                            examples=[7])
    keep_weekly: int = Field(0, ge=0, description="Keep the newest of each of N weeks.",
                             examples=[4])
    keep_monthly: int = Field(0, ge=0, description="Keep the newest of each of N months.",
                              examples=[12])
    keep_yearly: int = Field(0, ge=0, description="Keep the newest of each of N years.")
    keep_within: Duration | None = Field(None, description="Keep every snapshot within this "
                                         "long of the newest.", examples=["2d"])
    keep_tag: list[NonEmptyStr] = Field(default_factory=list, description="Keep snapshots "
                                        "with any of these tags.", examples=[["release"]])

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        keeps = [k for k, v in data.items() if k.startswith("keep_") and v not in (0, None, [])]
        if not keeps:
            return [((), "a prune job needs a retention policy: give at least one of "
                         "keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, "
                         "keep_yearly, keep_within, keep_tag")]
        return []


class CheckJob(ScheduledJob):
    """`stackvault check`, reading part of the data on each run so that the whole repository
    is read over a cycle."""

    read_data_subset: Percent | None = Field(
        None, description="Read and verify this share of the data on each run: 5% reads the "
                          "whole repository over 20 runs. The scheduler reads a different "
                          "slice each time and tracks the coverage; crontab and systemd "
                          "installs, which keep no state, read a random sample each run. "
                          "Default: only the structure is checked.", examples=["5%"])


class DrillJob(ScheduledJob):
    """`stackvault drill` of the latest snapshot."""


class IntegrityJob(ScheduledJob):
    """`stackvault integrity check` (the rules of the `integrity:` section)."""


class ScheduleConfig(_Model):
    """When StackVault's jobs run, for `stackvault serve` and for the crontab lines or systemd
    timers that `stackvault schedule install` writes. A job without an entry is not
    scheduled."""

    timezone: TimeZone = Field(default="UTC", description="The IANA time zone the cron expressions "
                               "are read in; daylight-saving changes are handled.",
                               examples=["Europe/Berlin"])
    backup: BackupJob | None = Field(default=None, description="Back up the stack.")
    prune: PruneJob | None = Field(default=None, description="Forget snapshots by a "
                                   "retention policy and prune the repository.")
    check: CheckJob | None = Field(default=None, description="Check the repository.")
    drill: DrillJob | None = Field(default=None, description="Run a restore drill.")
    integrity: IntegrityJob | None = Field(default=None, description="Run the integrity rules.")

    def jobs(self) -> dict[str, ScheduledJob]:
        """The scheduled jobs, by name, in a fixed order."""
        return {name: job for name in JOB_NAMES
                if (job := getattr(self, name)) is not None}


DOC_SECTIONS: list[tuple[str, str, type[BaseModel], bool]] = [
    ("schedule", "schedule", ScheduleConfig, False),
    ("schedule.backup", "schedule-backup", BackupJob, False),
    ("schedule.prune", "schedule-prune", PruneJob, False),
    ("schedule.check", "schedule-check", CheckJob, False),
    ("schedule.drill", "schedule-drill", DrillJob, False),
    ("schedule.integrity", "schedule-integrity", IntegrityJob, False),
]
