"""Tasks of `stackvault serve`: backups, drills, checks, integrity runs and restores started by
the scheduler or the API, each run as its own process (`python -m stackvault.serve.runner`).

Why processes: a job that crashes, leaks memory or is killed takes nothing else down; the API
stays responsive (no GIL shared with a backup); and a job outlives a restart of the service.

Each task is a JSON record `tasks/<id>.json` in the state folder. The runner process owns it
while the task runs (status, pid, exit code, result, error) and replaces it atomically; its
progress goes to `tasks/<id>.progress` and its output to `tasks/<id>.out` / `.err`. The
service only reads them, except to settle tasks whose process is gone:

- a task whose runner exited without finishing its record (killed, crashed) is `failed` with
  the exit status;
- at start (`recover()`), a `running` task whose process is still alive is watched again
  (resumed), and one whose process is gone is `failed` ("interrupted: ...") -- never lost.

One task of a kind at a time: `start()` refuses a second (`TaskConflict`), and the runner
holds an `flock` on `locks/task-<kind>.lock` while it runs, which also holds across service
restarts.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackvault.statefile import replace_json

TASK_KINDS = ("backup", "prune", "check", "drill", "integrity", "restore")
FINAL = ("succeeded", "failed")


class TaskConflict(Exception):
    """A task of this kind is already queued or running."""

    def __init__(self, running: Task) -> None:
        super().__init__(f"a {running.kind} task is already {running.status} ({running.id})")
        self.running = running


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Task:
    id: str
    kind: str
    args: list[str]  # the `stackvault` arguments after `-c CONFIG --json`
    who: str
    created: str
    status: str = "queued"  # queued, running, succeeded, failed
    started: str | None = None
    finished: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    error: str | None = None
    result: Any = None  # the command's --json output
    progress: dict[str, Any] | None = None
    resumed: bool = False  # watched again after a service restart

    @property
    def done(self) -> bool:
        return self.status in FINAL

    @property
    def seconds(self) -> float | None:
        if not self.started:
            return None
        end = datetime.fromisoformat(self.finished) if self.finished else datetime.now(UTC)
        return round((end - datetime.fromisoformat(self.started)).total_seconds(), 3)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def read_task(path: Path) -> Task:
    return Task.from_dict(json.loads(path.read_text(encoding="utf-8")))


def write_task(path: Path, task: Task) -> None:
    replace_json(path, task.to_dict())


def cli_error(stderr: str) -> str | None:
    """The error a `stackvault` run printed (`error: ...` and its `hint:`), else its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(("error:", "internal error:")):
            msg = lines[i].split(":", 1)[1].strip()
            hints = [ln.removeprefix("hint:").strip() for ln in lines[i + 1:]
                     if ln.startswith("hint:")]
            return "; ".join([msg, *hints])
    return lines[-1] if lines else None


def last_json(stdout: str) -> Any:
    """The last JSON document a `stackvault --json` run printed on a line of its own."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def pid_runs(pid: int | None, marker: str) -> bool:
    """Whether process ``pid`` is alive and is the runner of ``marker`` (its record path)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and marker.encode() in cmdline


class TaskManager:
    """Starts, lists and settles tasks (see the module doc)."""

    def __init__(self, state_dir: Path, config_path: Path, env: dict[str, str], *,
                 on_finish: Callable[[Task], None] | None = None, keep: int = 500) -> None:
        self.dir = Path(state_dir) / "tasks"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.locks = Path(state_dir) / "locks"
        self.config_path = Path(config_path).resolve()
        self.env = dict(env)
        self.on_finish = on_finish
        self.keep = keep
        self._lock = threading.RLock()
        self._cache: dict[str, tuple[float, Task]] = {}
        self._resumed: set[str] = set()

    # ------------------------------------------------------------------ records

    def path(self, task_id: str) -> Path:
        return self.dir / f"{task_id}.json"

    def get(self, task_id: str) -> Task | None:
        if not task_id.isalnum():
            return None
        path = self.path(task_id)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        with self._lock:
            hit = self._cache.get(task_id)
            if hit is None or hit[0] != mtime:
                try:
                    hit = (mtime, read_task(path))
                except (OSError, ValueError):
                    return hit[1] if hit else None  # replaced under us: the last good one
                self._cache[task_id] = hit
        task = hit[1]
        task.resumed = task.resumed or task_id in self._resumed
        if task.status == "running":
            task.progress = self._progress(task_id) or task.progress
        return task

    def _progress(self, task_id: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.dir.joinpath(f"{task_id}.progress").read_text()))
        except (OSError, ValueError):
            return None

    def recent(self, kind: str | None = None, limit: int = 100) -> list[Task]:
        """Newest first."""
        ids = sorted((p.stem for p in self.dir.glob("*.json")), reverse=True)
        out = []
        for tid in ids:
            t = self.get(tid)
            if t is not None and (kind is None or t.kind == kind):
                out.append(t)
                if len(out) >= limit:
                    break
        return out

    def active(self) -> list[Task]:
        return [t for t in self.recent(limit=self.keep) if not t.done]

    # ------------------------------------------------------------------ running

    def start(self, kind: str, args: list[str], who: str) -> Task:
        if kind not in TASK_KINDS:
            raise ValueError(f"unknown task kind {kind!r}")
        with self._lock:
            for t in self.active():
                if t.kind == kind:
                    raise TaskConflict(t)
            # Sortable ids: time first, then randomness.
            tid = f"{datetime.now(UTC):%Y%m%d%H%M%S%f}{secrets.token_hex(3)}"
            task = Task(tid, kind, list(args), who, now_iso())
            path = self.path(tid)
            write_task(path, task)
            env = {**self.env, "STACKVAULT_PROGRESS_FILE": str(self.dir / f"{tid}.progress"),
                   "STACKVAULT_AUDIT_WHO": f"{who} via stackvault serve"}
            with open(self.dir / f"{tid}.out", "wb") as out, \
                    open(self.dir / f"{tid}.err", "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "stackvault.serve.runner", str(path),
                     str(self.config_path), str(self.locks)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                    start_new_session=True)  # outlives the service; not hit by its Ctrl-C
            threading.Thread(target=self._watch_child, args=(tid, proc), daemon=True,
                             name=f"sv-task-{kind}").start()
        self._prune_old()
        return self.get(tid) or task

    def wait(self, task_id: str, timeout: float | None = None) -> Task | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            t = self.get(task_id)
            if t is None or t.done:
                return t
            if deadline is not None and time.monotonic() > deadline:
                return t
            time.sleep(0.1)

    def _watch_child(self, tid: str, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        self._settle(tid, f"the task's process ended with status {code} before it finished")

    def _watch_pid(self, tid: str, pid: int) -> None:
        marker = str(self.path(tid))
        while pid_runs(pid, marker):
            time.sleep(0.5)
        self._settle(tid, "the task's process ended before it finished")

    def _settle(self, tid: str, why: str) -> None:
        """After the runner is gone: fail the record if the runner did not finish it."""
        path = self.path(tid)
        with self._lock:
            try:
                task = read_task(path)
            except (OSError, ValueError):
                return
            if not task.done:
                task.status, task.finished, task.error = "failed", now_iso(), why
                write_task(path, task)
        self._report(task)

    def _report(self, task: Task) -> None:
        if self.on_finish is not None:
            try:
                self.on_finish(task)
            except Exception:  # noqa: BLE001 - a reporting failure must not stop the rest
                pass

    def recover(self) -> list[Task]:
        """At start: resume watching tasks whose runner still runs, fail the others.
        Returns the tasks failed here."""
        failed = []
        for task in self.active():
            if pid_runs(task.pid, str(self.path(task.id))):
                # Not written to the record: its runner owns it and rewrites it at the end.
                self._resumed.add(task.id)
                threading.Thread(target=self._watch_pid, args=(task.id, task.pid),
                                 daemon=True, name=f"sv-task-{task.kind}").start()
                continue
            task.status, task.finished = "failed", now_iso()
            task.error = ("interrupted: the service stopped while the task was "
                          + ("queued" if task.started is None else "running"))
            write_task(self.path(task.id), task)
            failed.append(task)
            self._report(task)
        return failed

    def _prune_old(self) -> None:
        """Keep the newest ``keep`` finished tasks' files."""
        done = [t for t in self.recent(limit=10 * self.keep) if t.done]
        for t in done[self.keep:]:
            for suffix in (".json", ".out", ".err", ".progress"):
                try:
                    (self.dir / f"{t.id}{suffix}").unlink()
                except FileNotFoundError:
                    pass
            self._cache.pop(t.id, None)
