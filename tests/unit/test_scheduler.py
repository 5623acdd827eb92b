"""The scheduler core with a controllable clock and a recording runner: jobs fire when due
(across a DST change), jitter is bounded and stable, no overlap, the missed-run policy, failing
jobs, state across restarts, the check coverage cycle; the schedule's config validation."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from stackvault.config.schedule_schema import ScheduleConfig, subset_slices
from stackvault.ops.schedule_install import NotExpressible, cron_field_values, oncalendar
from stackvault.ops.scheduler import CronSchedule, JobSpec, Scheduler, jitter_offset, job_command

BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    """The injected clock: moved by the test only. Kept in UTC, so that moving it is real
    elapsed time (adding to a Berlin datetime would add wall-clock time, through DST gaps)."""

    def __init__(self, start: datetime) -> None:
        self.t = start

    @property
    def t(self) -> datetime:
        return self._t

    @t.setter
    def t(self, value: datetime) -> None:
        self._t = value.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)


class Recorder:
    """The injected runner: records each job it is asked to run; may fail or block."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, datetime]] = []
        self.fail: set[str] = set()
        self.block: dict[str, threading.Event] = {}
        self.clock: Clock | None = None
        self.entered = threading.Event()

    def __call__(self, job: str) -> None:
        self.calls.append((job, self.clock() if self.clock else datetime.now(UTC)))
        self.entered.set()
        if job in self.block:
            assert self.block[job].wait(10), "test runner was never released"
        if job in self.fail:
            raise RuntimeError(f"{job} broke")


def make(tmp_path: Path, jobs: list[JobSpec], clock: Clock, rec: Recorder,
         **kw: object) -> Scheduler:
    rec.clock = clock
    return Scheduler(jobs, tmp_path / "state", rec, now=clock, **kw)  # type: ignore[arg-type]


def run_for(s: Scheduler, clock: Clock, until: datetime, step: timedelta) -> None:
    """Tick every ``step`` until ``until``, letting each run finish (a serve loop, fast)."""
    until = until.astimezone(UTC)
    while clock.t < until:
        clock.t = min(clock.t + step, until)
        s.tick()
        assert s.wait(10)


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


# --------------------------------------------------------------------------- firing, DST


def test_jobs_fire_when_due_across_days_and_a_dst_change(tmp_path: Path) -> None:
    # 2024-03-31 02:00 CET -> 03:00 CEST in Berlin; 02:30 does not exist that night.
    clock = Clock(berlin(2024, 3, 29, 12, 0))
    rec = Recorder()
    s = make(tmp_path, [JobSpec("backup", "30 2 * * *", "Europe/Berlin"),
                        JobSpec("integrity", "0 */6 * * *", "Europe/Berlin")], clock, rec)
    run_for(s, clock, berlin(2024, 4, 2, 12, 0), timedelta(minutes=1))
    backups = [t.astimezone(BERLIN) for job, t in rec.calls if job == "backup"]
    assert [(t.day, t.hour, t.minute) for t in backups] == [
        (30, 2, 30), (31, 3, 30), (1, 2, 30), (2, 2, 30)]  # once a night, 02:30 -> 03:30
    assert backups[0].utcoffset() == timedelta(hours=1)
    assert backups[2].utcoffset() == timedelta(hours=2)
    integrity = [t.astimezone(BERLIN).hour for job, t in rec.calls if job == "integrity"]
    assert integrity == [18] + [0, 6, 12, 18] * 3 + [0, 6, 12]
    assert all(r.outcome == "success" for r in s.history)
    assert len(s.history) == len(rec.calls)


def test_a_wall_clock_time_repeated_in_autumn_runs_once(tmp_path: Path) -> None:
    # 2024-10-27 03:00 CEST -> 02:00 CET: 02:30 happens twice.
    clock = Clock(berlin(2024, 10, 26, 12, 0))
    rec = Recorder()
    s = make(tmp_path, [JobSpec("backup", "30 2 * * *", "Europe/Berlin")], clock, rec)
    run_for(s, clock, berlin(2024, 10, 28, 12, 0), timedelta(minutes=1))
    runs = [t.astimezone(BERLIN) for _, t in rec.calls]
    assert [(t.day, t.hour, t.minute, t.utcoffset()) for t in runs] == [
        (27, 2, 30, timedelta(hours=2)), (28, 2, 30, timedelta(hours=1))]


def test_cron_schedule_next_after_is_strict_and_zone_aware() -> None:
    sched = CronSchedule("0 9 * * 1-5", "America/New_York")
    friday = datetime(2024, 3, 8, 14, 0, tzinfo=UTC)  # 09:00 EST
    assert sched.next_after(friday) == datetime(2024, 3, 11, 13, 0, tzinfo=UTC)  # EDT now
    assert sched.next_after(friday - timedelta(seconds=1)) == friday


def test_next_runs_lists_the_coming_starts(tmp_path: Path) -> None:
    clock = Clock(berlin(2024, 1, 1, 0, 0))
    s = make(tmp_path, [JobSpec("backup", "0 3 * * *", "Europe/Berlin"),
                        JobSpec("drill", "0 6 * * 6", "Europe/Berlin")], clock, Recorder())
    nxt = s.next_runs(3)
    assert [t.astimezone(BERLIN).day for t in nxt["backup"]] == [1, 2, 3]
    assert [t.astimezone(BERLIN).day for t in nxt["drill"]] == [6, 13, 20]
    assert s.due(clock.t) == []


# --------------------------------------------------------------------------- jitter


def test_jitter_stays_within_bounds_and_is_stable(tmp_path: Path) -> None:
    offsets = {job: jitter_offset(job, 600) for job in ("backup", "prune", "check", "drill")}
    assert all(timedelta(0) <= o <= timedelta(seconds=600) for o in offsets.values())
    assert len(set(offsets.values())) > 1  # spread, not one shared delay
    assert offsets == {job: jitter_offset(job, 600) for job in offsets}  # stable
    assert jitter_offset("backup", 0) == timedelta(0)

    clock = Clock(berlin(2024, 5, 1, 0, 0))
    rec = Recorder()
    spec = JobSpec("backup", "0 3 * * *", "Europe/Berlin", jitter_seconds=600)
    s = make(tmp_path, [spec], clock, rec)
    planned = s.next_runs(2)["backup"]
    run_for(s, clock, berlin(2024, 5, 3, 0, 0), timedelta(seconds=30))
    slots = [berlin(2024, 5, 1, 3, 0), berlin(2024, 5, 2, 3, 0)]
    for (_, started), slot, plan in zip(rec.calls, slots, planned, strict=True):
        assert slot <= started <= slot + timedelta(seconds=600)
        assert started - slot - spec.offset < timedelta(seconds=30)  # one tick late at most
        assert plan == slot + spec.offset
    assert [r.scheduled for r in s.history] == slots  # recorded against the cron time


# --------------------------------------------------------------------------- no overlap


def test_a_run_still_going_when_the_next_is_due_is_skipped_and_recorded(tmp_path: Path) -> None:
    clock = Clock(berlin(2024, 6, 1, 0, 59))
    rec = Recorder()
    release = threading.Event()
    rec.block["backup"] = release
    s = make(tmp_path, [JobSpec("backup", "0 * * * *", "Europe/Berlin"),
                        JobSpec("drill", "30 * * * *", "Europe/Berlin")], clock, rec)
    clock.t = berlin(2024, 6, 1, 1, 0)
    [first] = s.tick()
    assert rec.entered.wait(5) and s.running() == ["backup"]
    clock.t = berlin(2024, 6, 1, 1, 30)
    assert [r.job for r in s.tick()] == ["drill"]  # other jobs are not held up
    clock.t = berlin(2024, 6, 1, 2, 0)
    [second] = s.tick()
    assert (second.job, second.outcome, second.scheduled) == ("backup", "skipped",
                                                               berlin(2024, 6, 1, 2, 0))
    assert second.error == "the previous run is still going"
    release.set()
    assert s.wait(10)
    assert first.outcome == "success"
    assert [job for job, _ in rec.calls].count("backup") == 1
    clock.t = berlin(2024, 6, 1, 3, 0)
    new = {r.job: r for r in s.tick()}  # the drill of 02:30 was missed: its catch-up too
    assert (new["backup"].outcome, new["drill"].catch_up) == ("running", True)
    assert s.wait(10)
    assert [job for job, _ in rec.calls].count("backup") == 2


def test_the_job_lock_holds_across_scheduler_instances(tmp_path: Path) -> None:
    """Two schedulers on one state folder (e.g. two `serve`s) never run a job twice."""
    clock = Clock(berlin(2024, 6, 1, 0, 0))
    rec, rec2 = Recorder(), Recorder()
    release = threading.Event()
    rec.block["backup"] = release
    spec = JobSpec("backup", "0 * * * *", "Europe/Berlin")
    a = make(tmp_path, [spec], clock, rec)
    b = make(tmp_path, [spec], clock, rec2)
    clock.t = berlin(2024, 6, 1, 1, 0)
    a.tick()
    assert rec.entered.wait(5)
    assert [r.outcome for r in b.tick()] == ["skipped"]
    release.set()
    assert a.wait(10) and b.wait(10)
    assert rec2.calls == []


# --------------------------------------------------------------------------- missed runs


def _downtime(tmp_path: Path, missed: str) -> tuple[Scheduler, Recorder, Clock]:
    spec = JobSpec("backup", "0 3 * * *", "Europe/Berlin", missed=missed)  # type: ignore[arg-type]
    clock = Clock(berlin(2024, 2, 1, 12, 0))
    rec = Recorder()
    s = make(tmp_path, [spec], clock, rec)
    run_for(s, clock, berlin(2024, 2, 2, 12, 0), timedelta(minutes=5))
    assert len(rec.calls) == 1
    # Down from 2 Feb 12:00 to 5 Feb 10:00: the runs of the 3rd, 4th and 5th are missed.
    clock.t = berlin(2024, 2, 5, 10, 0)
    rec2 = Recorder()
    return make(tmp_path, [spec], clock, rec2), rec2, clock


def test_run_once_runs_exactly_one_catch_up_after_downtime(tmp_path: Path) -> None:
    s, rec, clock = _downtime(tmp_path, "run_once")
    [run] = s.tick()
    assert (run.outcome, run.catch_up, run.missed, run.scheduled) == (
        "running", True, 3, berlin(2024, 2, 5, 3, 0))
    assert s.wait(10)
    assert len(rec.calls) == 1
    run_for(s, clock, berlin(2024, 2, 6, 12, 0), timedelta(minutes=5))
    assert [t.astimezone(BERLIN).day for _, t in rec.calls] == [5, 6]  # then on time again
    assert [r.catch_up for r in s.history] == [True, False]


def test_skip_runs_nothing_for_missed_times_and_records_them(tmp_path: Path) -> None:
    s, rec, clock = _downtime(tmp_path, "skip")
    [entry] = s.tick()
    assert (entry.outcome, entry.missed, entry.started) == ("missed", 3, None)
    assert s.wait(10) and rec.calls == []
    run_for(s, clock, berlin(2024, 2, 6, 12, 0), timedelta(minutes=5))
    assert [t.astimezone(BERLIN).day for _, t in rec.calls] == [6]


def test_a_new_job_does_not_count_the_past_as_missed(tmp_path: Path) -> None:
    clock = Clock(berlin(2024, 2, 5, 10, 0))
    rec = Recorder()
    s = make(tmp_path, [JobSpec("backup", "0 3 * * *", "Europe/Berlin")], clock, rec)
    assert s.tick() == [] and rec.calls == []


def test_a_late_tick_within_grace_is_on_time_not_a_catch_up(tmp_path: Path) -> None:
    clock = Clock(berlin(2024, 2, 1, 0, 0))
    rec = Recorder()
    s = make(tmp_path, [JobSpec("backup", "0 3 * * *", "Europe/Berlin", missed="skip")],
             clock, rec, grace=timedelta(minutes=5))
    clock.t = berlin(2024, 2, 1, 3, 4)
    [run] = s.tick()
    assert (run.outcome, run.catch_up, run.missed) == ("running", False, 0)
    assert s.wait(10)


# --------------------------------------------------------------------------- failures, restart


def test_a_failing_job_is_recorded_and_the_next_still_runs(tmp_path: Path) -> None:
    clock = Clock(berlin(2024, 7, 1, 0, 0))
    rec = Recorder()
    rec.fail.add("check")
    s = make(tmp_path, [JobSpec("check", "0 1 * * *", "Europe/Berlin"),
                        JobSpec("backup", "0 2 * * *", "Europe/Berlin")], clock, rec)
    run_for(s, clock, berlin(2024, 7, 3, 0, 0), timedelta(minutes=10))
    outcomes = [(r.job, r.outcome, r.error) for r in s.history]
    assert outcomes == [("check", "failed", "RuntimeError: check broke"),
                        ("backup", "success", None)] * 2
    failed = s.history[0]
    assert failed.started is not None and failed.finished is not None
    assert failed.to_dict()["scheduled"] == "2024-06-30T23:00:00+00:00"
    last = s.last_runs()
    assert last["check"]["last_run"]["outcome"] == "failed"
    assert last["check"]["last_success"] is None
    assert last["backup"]["last_success"] is not None


def test_state_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock(berlin(2024, 8, 1, 0, 0))
    rec = Recorder()
    spec = JobSpec("backup", "0 * * * *", "Europe/Berlin")
    s = make(tmp_path, [spec], clock, rec)
    run_for(s, clock, berlin(2024, 8, 1, 3, 30), timedelta(minutes=1))
    assert len(rec.calls) == 3
    state = json.loads((tmp_path / "state" / "schedule-state.json").read_text())
    assert state["jobs"]["backup"]["last_slot"] == "2024-08-01T01:00:00+00:00"  # 03:00 CEST
    # A new scheduler on the same folder, 20 minutes later: nothing is re-run or missed.
    clock.advance(minutes=20)
    rec2 = Recorder()
    s2 = make(tmp_path, [spec], clock, rec2)
    assert s2.tick() == []
    assert s2.last_runs()["backup"]["last_run"]["outcome"] == "success"
    run_for(s2, clock, berlin(2024, 8, 1, 4, 30), timedelta(minutes=1))
    assert [t.astimezone(BERLIN).hour for _, t in rec2.calls] == [4]


def test_a_run_cut_short_by_a_restart_is_reported_failed(tmp_path: Path) -> None:
    clock = Clock(berlin(2024, 8, 1, 0, 0))
    spec = JobSpec("backup", "0 * * * *", "Europe/Berlin")
    state = tmp_path / "state"
    make(tmp_path, [spec], clock, Recorder())
    doc = json.loads((state / "schedule-state.json").read_text())
    doc["jobs"]["backup"]["running"] = {  # what a scheduler killed mid-run leaves behind
        "job": "backup", "scheduled": "2024-07-31T23:00:00+00:00", "outcome": "running",
        "started": "2024-07-31T23:00:00+00:00", "finished": None, "error": None,
        "catch_up": False, "missed": 0}
    (state / "schedule-state.json").write_text(json.dumps(doc))
    s = make(tmp_path, [spec], clock, Recorder())
    [entry] = s.history
    assert (entry.job, entry.outcome) == ("backup", "failed")
    assert entry.error is not None and "interrupted" in entry.error
    assert s.last_runs()["backup"]["last_run"]["outcome"] == "failed"


def test_a_changed_cron_starts_counting_afresh(tmp_path: Path) -> None:
    clock = Clock(berlin(2024, 9, 1, 0, 0))
    make(tmp_path, [JobSpec("backup", "0 3 * * *", "Europe/Berlin")], clock, Recorder())
    clock.t = berlin(2024, 9, 5, 0, 0)
    rec = Recorder()
    s = make(tmp_path, [JobSpec("backup", "0 4 * * *", "Europe/Berlin")], clock, rec)
    assert s.tick() == []


# --------------------------------------------------------------------------- check coverage


def test_check_reads_a_new_slice_each_run_and_tracks_the_cycle(tmp_path: Path) -> None:
    clock = Clock(berlin(2024, 1, 1, 0, 0))
    slices: list[str | None] = []
    s: Scheduler | None = None

    def runner(job: str) -> None:
        assert s is not None
        slices.append(s.check_slice())

    s = Scheduler([JobSpec("check", "0 5 * * *", "Europe/Berlin")], tmp_path / "state",
                  runner, now=clock, check_subset="25%")
    run_for(s, clock, berlin(2024, 1, 6, 0, 0), timedelta(minutes=10))
    assert slices == ["1/4", "2/4", "3/4", "4/4", "1/4"]
    assert s.coverage is not None
    assert (s.coverage.cycle, s.coverage.done, s.coverage.fraction) == (2, [1], 0.25)
    assert s.coverage.last_complete is not None
    s2 = Scheduler([JobSpec("check", "0 5 * * *", "Europe/Berlin")], tmp_path / "state",
                   runner, now=clock, check_subset="25%")
    assert s2.check_slice() == "2/4"  # kept across restarts
    assert subset_slices("5%") == 20 and subset_slices("30%") == 4


# --------------------------------------------------------------------------- config, commands


def test_schedule_config_validates_cron_and_timezone() -> None:
    ok = ScheduleConfig.model_validate({"timezone": "Europe/Berlin",
                                        "backup": {"cron": "30  2 * * *", "jitter": "10m"},
                                        "prune": {"cron": "0 4 * * 0", "keep_daily": 7}})
    assert ok.backup is not None and ok.backup.cron == "30 2 * * *"
    assert ok.backup.jitter == 600 and ok.backup.missed == "run_once"
    assert list(ok.jobs()) == ["backup", "prune"]
    with pytest.raises(ValidationError) as exc:
        ScheduleConfig.model_validate({"timezone": "Mars/Olympus",
                                       "backup": {"cron": "61 * * * *"},
                                       "check": {"cron": "* * * *"},
                                       "drill": {"cron": "0 1 * * *", "missed": "later"},
                                       "prune": {"cron": "0 4 * * 0"}})
    locs = {tuple(e["loc"]) for e in exc.value.errors()}
    assert {("timezone",), ("backup", "cron"), ("check", "cron"), ("drill", "missed"),
            ("prune",)} <= locs
    with pytest.raises(ValidationError, match="did you mean Europe/Berlin"):
        ScheduleConfig.model_validate({"timezone": "europe/berlin"})


def test_job_commands() -> None:
    cfg = ScheduleConfig.model_validate({
        "prune": {"cron": "0 4 * * 0", "keep_daily": 7, "keep_monthly": 12,
                  "keep_within": "2d", "keep_tag": ["release"]},
        "check": {"cron": "0 5 * * *", "read_data_subset": "5%"},
        "backup": {"cron": "0 1 * * *"}, "drill": {"cron": "0 6 * * 6"},
        "integrity": {"cron": "0 7 * * *"}})
    jobs = cfg.jobs()
    assert job_command("prune", jobs["prune"]) == [
        "forget", "--prune", "--keep-daily", "7", "--keep-monthly", "12",
        "--keep-within", "2d", "--keep-tag", "release"]
    assert job_command("check", jobs["check"]) == ["check", "--read-data-subset", "5%"]
    assert job_command("check", jobs["check"], check_slice="3/20")[-1] == "3/20"
    assert job_command("backup", jobs["backup"]) == ["backup"]
    assert job_command("drill", jobs["drill"]) == ["drill"]
    assert job_command("integrity", jobs["integrity"]) == ["integrity", "check"]


@pytest.mark.parametrize(("cron", "calendars"), [
    ("30 2 * * *", ["*-*-* 02:30:00 UTC"]),
    ("*/20 8-10 * * 1-5", ["Mon,Tue,Wed,Thu,Fri *-*-* 08,09,10:00,20,40:00 UTC"]),
    ("0 5 1,15 * 1", ["*-*-01,15 05:00:00 UTC", "Mon *-*-* 05:00:00 UTC"]),
    ("0 0 1 jan,jul *", ["*-01,07-01 00:00:00 UTC"]),
    ("0 12 * * 0,7", ["Sun *-*-* 12:00:00 UTC"]),
])
def test_cron_to_oncalendar(cron: str, calendars: list[str]) -> None:
    assert oncalendar(cron, "UTC") == calendars


@pytest.mark.parametrize("cron", ["0 3 L * *", "0 3 * * 5#2", "0 3 15W * *"])
def test_cron_without_an_oncalendar_form_is_refused(cron: str) -> None:
    with pytest.raises(NotExpressible):
        oncalendar(cron, "UTC")


def test_cron_field_values() -> None:
    assert cron_field_values("5/15", 0) == {5, 20, 35, 50}
    assert cron_field_values("mon-fri", 4) == {1, 2, 3, 4, 5}
