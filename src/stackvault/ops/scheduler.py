"""The scheduler core: when each job of the `schedule:` section runs next (cron in a time zone,
jitter), missed runs, no overlap, the run history; `stackvault serve` drives it with `tick()`.

Contract, for `serve` and the tests:

- Time comes only from the injected `now` (an aware datetime); jobs run only through the
  injected `run(job)`, each on its own thread, so a long backup does not hold up a drill.
- A cron time is a wall-clock time in the schedule's time zone. A wall-clock time that happens
  twice (autumn) runs once, at its first occurrence; one that does not exist (spring) runs
  when the clock has been put forward, shifted by the change (02:30 -> 03:30), and never twice.
- Jitter is a fixed offset per job (from a hash of its name): stable across runs, restarts and
  machines, so tests and `schedule list` show the real times.
- One job never runs twice at once: each run holds an exclusive lock file in the state folder
  (an `flock`, so it holds across processes too). A run that is due while the previous one is
  still going is skipped and recorded as `skipped`.
- A run is missed when its time (plus jitter) passed more than `grace` ago without the
  scheduler firing it (it was not running, or the machine slept). `missed: run_once` runs one
  catch-up for any number of missed runs; `skip` records them as `missed` and waits. A job seen
  for the first time (or whose cron or time zone changed) starts counting from now.
- A run that raises is recorded as `failed` and nothing else stops. A run that was going when
  the scheduler stopped is recorded as `failed` (interrupted) when it starts again.
- State (per job: the last cron time dealt with, the last run and the last success; the check
  coverage) is a JSON file in the state folder, replaced atomically after each change.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo

from croniter import croniter

from stackvault.config.schedule_schema import (
    CheckJob,
    PruneJob,
    ScheduleConfig,
    ScheduledJob,
    subset_slices,
)
from stackvault.statefile import replace_json

STATE_FILE = "schedule-state.json"
STATE_VERSION = 1
DEFAULT_GRACE = timedelta(minutes=5)
# Missed runs counted at most this far (a minutely job down for a year is "10000+ missed").
MAX_COUNTED = 10_000

Outcome = Literal["running", "success", "failed", "skipped", "missed"]


# --------------------------------------------------------------------------- time


class CronSchedule:
    """A 5-field cron expression read as wall-clock time in a time zone."""

    def __init__(self, expr: str, timezone: str) -> None:
        self.expr = expr
        self.timezone = timezone
        self.tz = ZoneInfo(timezone)

    def next_after(self, after: datetime) -> datetime:
        """The first cron time strictly after ``after`` (aware), as an aware UTC datetime."""
        local = after.astimezone(self.tz).replace(tzinfo=None)
        it = croniter(self.expr, local)
        while True:
            wall: datetime = it.get_next(datetime)
            # fold=0: the first of a repeated time; a non-existent time moves forward.
            instant = wall.replace(tzinfo=self.tz).astimezone(UTC)
            if instant > after:
                return instant

    def times(self, after: datetime) -> Iterator[datetime]:
        """Cron times after ``after``, ascending (endless)."""
        t = after
        while True:
            t = self.next_after(t)
            yield t


def jitter_offset(job: str, jitter_seconds: int | None) -> timedelta:
    """The fixed delay of ``job``: from a hash of its name, 0 .. jitter_seconds."""
    if not jitter_seconds:
        return timedelta(0)
    h = int.from_bytes(hashlib.sha256(f"stackvault-schedule:{job}".encode()).digest()[:8],
                       "big")
    return timedelta(seconds=h % (jitter_seconds + 1))


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job."""

    name: str
    cron: str
    timezone: str
    jitter_seconds: int = 0
    missed: Literal["run_once", "skip"] = "run_once"

    @property
    def schedule(self) -> CronSchedule:
        return CronSchedule(self.cron, self.timezone)

    @property
    def offset(self) -> timedelta:
        return jitter_offset(self.name, self.jitter_seconds)


def job_specs(schedule: ScheduleConfig) -> list[JobSpec]:
    return [JobSpec(name, job.cron, schedule.timezone, job.jitter or 0, job.missed)
            for name, job in schedule.jobs().items()]


# --------------------------------------------------------------------------- commands


def job_command(name: str, job: ScheduledJob, *, check_slice: str | None = None) -> list[str]:
    """The `stackvault` arguments (after `-c CONFIG`) that run a job. ``check_slice`` ('3/20')
    replaces the check job's percentage with the scheduler's rotating slice."""
    if name == "backup":
        return ["backup"]
    if name == "prune":
        assert isinstance(job, PruneJob)
        args = ["forget", "--prune"]
        for key in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            value = getattr(job, f"keep_{key}")
            if value:
                args += [f"--keep-{key}", str(value)]
        if job.keep_within:
            from stackvault.config.base import format_duration

            args += ["--keep-within", format_duration(job.keep_within)]
        for tag in job.keep_tag:
            args += ["--keep-tag", tag]
        return args
    if name == "check":
        assert isinstance(job, CheckJob)
        subset = check_slice or job.read_data_subset
        return ["check", "--read-data-subset", subset] if subset else ["check"]
    if name == "drill":
        return ["drill"]
    if name == "integrity":
        return ["integrity", "check"]
    raise ValueError(f"unknown job {name!r}")


# --------------------------------------------------------------------------- history


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


def _parse(text: str | None) -> datetime | None:
    return None if not text else datetime.fromisoformat(text)


@dataclass
class Run:
    """One entry of the history: a run (going or done), a skipped one or missed ones."""

    job: str
    scheduled: datetime  # the cron time (without jitter) this entry is for
    outcome: Outcome
    started: datetime | None = None
    finished: datetime | None = None
    error: str | None = None
    catch_up: bool = False  # a run for missed times (`missed: run_once`)
    missed: int = 0  # cron times missed before this entry (counted up to MAX_COUNTED)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("scheduled", "started", "finished"):
            d[key] = _iso(getattr(self, key))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        return cls(job=d["job"], scheduled=_parse(d["scheduled"]) or datetime.min,
                   outcome=d["outcome"], started=_parse(d.get("started")),
                   finished=_parse(d.get("finished")), error=d.get("error"),
                   catch_up=bool(d.get("catch_up")), missed=int(d.get("missed", 0)))


@dataclass(frozen=True)
class Due:
    """What `tick()` would do for a job at some instant."""

    job: str
    scheduled: datetime  # the latest cron time that has come
    action: Literal["run", "skip_missed"]
    catch_up: bool = False
    missed: int = 0


# --------------------------------------------------------------------------- per-job lock


class JobLock:
    """An exclusive, non-blocking `flock` on `locks/JOB.lock` in the state folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+b")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------- scheduler


@dataclass
class _JobState:
    cron: str
    timezone: str
    last_slot: datetime
    running: dict[str, Any] | None = None
    last_run: dict[str, Any] | None = None
    last_success: str | None = None


@dataclass
class CheckCoverage:
    """The check job's read-data cycle: `slices` runs read the whole repository once."""

    slices: int
    next_slice: int = 1
    done: list[int] = field(default_factory=list)
    cycle: int = 1
    cycle_started: str | None = None
    last_complete: str | None = None

    @property
    def fraction(self) -> float:
        """How much of the repository the current cycle has read (0..1)."""
        return len(set(self.done)) / self.slices

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fraction": round(self.fraction, 4)}


class Scheduler:
    """Fires the jobs of a schedule at their times through ``run`` (see the module doc)."""

    def __init__(self, jobs: list[JobSpec], state_dir: Path, run: Callable[[str], None], *,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 grace: timedelta = DEFAULT_GRACE, check_subset: str | None = None,
                 history_size: int = 1000) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.state_dir = Path(state_dir)
        self._run = run
        self._now = now
        self.grace = grace
        self._lock = threading.RLock()  # guards state, history and threads
        self._history: deque[Run] = deque(maxlen=history_size)
        self._threads: dict[str, threading.Thread] = {}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state, coverage = self._load()
        self.coverage: CheckCoverage | None = None
        if check_subset and "check" in self.jobs:
            slices = subset_slices(check_subset)
            self.coverage = (coverage if coverage is not None and coverage.slices == slices
                             else CheckCoverage(slices))
        start = self._clock()
        for spec in jobs:
            st = self._state.get(spec.name)
            if st is None or (st.cron, st.timezone) != (spec.cron, spec.timezone):
                # New (or changed) job: count from now; nothing before counts as missed.
                self._state[spec.name] = _JobState(spec.cron, spec.timezone, start)
            elif st.running is not None:
                self._interrupted(spec.name, st)
        self._save()

    @classmethod
    def from_config(cls, schedule: ScheduleConfig, state_dir: Path,
                    run: Callable[[str], None], **kwargs: Any) -> Scheduler:
        check = schedule.check
        return cls(job_specs(schedule), state_dir, run,
                   check_subset=check.read_data_subset if check else None, **kwargs)

    # ------------------------------------------------------------------ queries

    def _clock(self) -> datetime:
        t = self._now()
        if t.tzinfo is None:
            raise ValueError("the scheduler's clock must return aware datetimes")
        return t.astimezone(UTC)

    def next_runs(self, n: int = 1, after: datetime | None = None
                  ) -> dict[str, list[datetime]]:
        """Per job, the next ``n`` times it will start (cron time + jitter), in UTC."""
        after = (after or self._clock()).astimezone(UTC)
        out: dict[str, list[datetime]] = {}
        for spec in self.jobs.values():
            # A start after `after` may belong to a cron time before it (jitter).
            base = max(self._state[spec.name].last_slot, after - spec.offset)
            times = spec.schedule.times(base)
            out[spec.name] = [next(times) + spec.offset for _ in range(n)]
        return out

    def due(self, now: datetime) -> list[Due]:
        """What `tick()` at ``now`` would do, job by job (nothing is changed)."""
        now = now.astimezone(UTC)
        out = []
        for spec in self.jobs.values():
            slots: list[datetime] = []
            for t in spec.schedule.times(self._state[spec.name].last_slot):
                if t + spec.offset > now or len(slots) > MAX_COUNTED:
                    break
                slots.append(t)
            if not slots:
                continue
            latest = slots[-1]
            on_time = now - (latest + spec.offset) <= self.grace
            missed = len(slots) - (1 if on_time else 0)
            if on_time:
                out.append(Due(spec.name, latest, "run", missed=missed))
            elif spec.missed == "run_once":
                out.append(Due(spec.name, latest, "run", catch_up=True, missed=missed))
            else:
                out.append(Due(spec.name, latest, "skip_missed", missed=missed))
        return out

    @property
    def history(self) -> list[Run]:
        """Runs, skipped and missed entries, oldest first (the latest `history_size`)."""
        with self._lock:
            return list(self._history)

    def running(self) -> list[str]:
        with self._lock:
            return sorted(n for n, t in self._threads.items() if t.is_alive())

    def last_runs(self) -> dict[str, dict[str, Any]]:
        """Per job: the last run and the time of the last success (kept across restarts)."""
        with self._lock:
            return {n: {"last_run": st.last_run, "last_success": st.last_success}
                    for n, st in self._state.items() if n in self.jobs}

    def check_slice(self) -> str | None:
        """The `--read-data-subset` slice ('3/20') the next check run reads, or None."""
        with self._lock:
            if self.coverage is None:
                return None
            return f"{self.coverage.next_slice}/{self.coverage.slices}"

    # ------------------------------------------------------------------ acting

    def tick(self) -> list[Run]:
        """Fire what is due now: start runs, record skipped and missed ones. Returns the new
        history entries."""
        now = self._clock()
        new: list[Run] = []
        with self._lock:
            for d in self.due(now):
                st = self._state[d.job]
                st.last_slot = d.scheduled
                if d.action == "skip_missed":
                    new.append(self._record(Run(d.job, d.scheduled, "missed", missed=d.missed,
                                                error=f"{d.missed} run(s) missed while the "
                                                      "scheduler was not running")))
                    continue
                lock = JobLock(self.state_dir / "locks" / f"{d.job}.lock")
                if not lock.try_acquire():
                    new.append(self._record(Run(
                        d.job, d.scheduled, "skipped", started=None, missed=d.missed,
                        error="the previous run is still going")))
                    continue
                run = Run(d.job, d.scheduled, "running", started=now, catch_up=d.catch_up,
                          missed=d.missed)
                st.running = run.to_dict()
                new.append(self._record(run))
                thread = threading.Thread(target=self._execute, args=(run, lock),
                                          name=f"stackvault-{d.job}", daemon=True)
                self._threads[d.job] = thread
                thread.start()
            self._save()
        return new

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the runs going now to finish; False if some still run after ``timeout``."""
        with self._lock:
            threads = list(self._threads.values())
        for t in threads:
            t.join(timeout)
        return not any(t.is_alive() for t in threads)

    def _execute(self, run: Run, lock: JobLock) -> None:
        error: str | None = None
        try:
            self._run(run.job)
        except BaseException as exc:  # noqa: BLE001 - a failing job must not stop the rest
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            with self._lock:
                run.finished = self._clock()
                run.outcome = "failed" if error else "success"
                run.error = error
                st = self._state[run.job]
                st.running = None
                st.last_run = run.to_dict()
                if not error:
                    st.last_success = _iso(run.finished)
                    if run.job == "check":
                        self._advance_coverage(run.finished)
                self._save()
                lock.release()

    def _advance_coverage(self, when: datetime) -> None:
        cov = self.coverage
        if cov is None:
            return
        if not cov.done:
            cov.cycle_started = _iso(when)
        if cov.next_slice not in cov.done:
            cov.done.append(cov.next_slice)
        if len(set(cov.done)) >= cov.slices:
            cov.last_complete = _iso(when)
            cov.cycle += 1
            cov.done = []
        cov.next_slice = cov.next_slice % cov.slices + 1

    def _record(self, run: Run) -> Run:
        self._history.append(run)
        return run

    def _interrupted(self, name: str, st: _JobState) -> None:
        lock = JobLock(self.state_dir / "locks" / f"{name}.lock")
        if not lock.try_acquire():
            return  # still running in another process
        lock.release()
        assert st.running is not None
        run = Run.from_dict(st.running)
        run.outcome = "failed"
        run.finished = self._clock()
        run.error = "interrupted: the scheduler stopped while the job was running"
        st.running = None
        st.last_run = run.to_dict()
        self._record(run)

    # ------------------------------------------------------------------ state file

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _load(self) -> tuple[dict[str, _JobState], CheckCoverage | None]:
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot read the scheduler state {self.state_path}: {exc}; "
                               "move it away to start afresh") from None
        jobs = {}
        for name, d in doc.get("jobs", {}).items():
            jobs[name] = _JobState(d["cron"], d["timezone"],
                                   _parse(d["last_slot"]) or datetime.now(UTC),
                                   d.get("running"), d.get("last_run"), d.get("last_success"))
        cov = doc.get("check_coverage")
        coverage = None
        if isinstance(cov, dict):
            cov.pop("fraction", None)
            coverage = CheckCoverage(**cov)
        return jobs, coverage

    def _save(self) -> None:
        doc = {"version": STATE_VERSION,
               "jobs": {n: {"cron": s.cron, "timezone": s.timezone,
                            "last_slot": _iso(s.last_slot), "running": s.running,
                            "last_run": s.last_run, "last_success": s.last_success}
                        for n, s in sorted(self._state.items())},
               "check_coverage": self.coverage.to_dict() if self.coverage else None}
        replace_json(self.state_path, doc, indent=2)
