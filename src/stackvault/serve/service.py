"""The long-running side of `stackvault serve`: the scheduler loop, tasks, and what the API,
the dashboard and /metrics read (refreshed in the background, so requests never wait for a
repository or a database).

Threads: `loop` ticks the scheduler every second and refreshes the views every
`refresh_seconds` (or at once after a task ends); status probes run on their own slower
cycle. Requests only read the latest views under a lock.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackvault import __version__
from stackvault.errors import StackVaultError
from stackvault.ops import audit
from stackvault.serve.tasks import Task, TaskConflict, TaskManager, cli_error, last_json
from stackvault.serve.tokens import TokenStore

STATE_ENV = "STACKVAULT_STATE_DIR"
STATE_DIR_NAME = "stackvault-state"
INTEGRITY_REPORT = "integrity-report.json"  # the newest `integrity check` report


def default_state_dir(config: Any, env: dict[str, str]) -> Path:
    """STACKVAULT_STATE_DIR, else `stackvault-state/` next to the config file."""
    if env.get(STATE_ENV):
        return Path(env[STATE_ENV])
    source = getattr(config, "source", None)
    return (Path(source).resolve().parent if source else Path.cwd()) / STATE_DIR_NAME


def snapshot_view(s: Any) -> dict[str, Any]:
    """A stack snapshot as the API and the dashboard show it."""
    manifest = s.extra.get("manifest", {}) if s.kind == "stack" else {}
    comps = {}
    for name, c in manifest.get("components", {}).items():
        seconds = None
        if c.get("started") and c.get("finished"):
            seconds = round((datetime.fromisoformat(c["finished"])
                             - datetime.fromisoformat(c["started"])).total_seconds(), 3)
        comps[name] = {"type": c.get("type"), "status": c.get("status"),
                       "bytes": sum(int(a.get("size", 0)) for a in c.get("artifacts", [])),
                       "seconds": seconds, "error": c.get("error")}
    return {"id": s.id, "short_id": s.short_id, "time": s.time.isoformat(), "kind": s.kind,
            "hostname": s.hostname, "tags": s.tags, "summary": s.summary,
            "complete": manifest.get("complete"), "components": comps}


@dataclass
class Views:
    """What requests read: replaced whole by the refreshers."""

    snapshots: list[dict[str, Any]]
    repository: dict[str, Any]
    drills: list[dict[str, Any]]
    refreshed: str | None = None
    manifests: dict[str, Any] | None = None


class Service:
    """One `stackvault serve`: config, state folder, tokens, tasks, scheduler and views."""

    def __init__(self, config: Any, config_path: Path, *, env: dict[str, str] | None = None,
                 state_dir: Path | None = None, refresh_seconds: float = 30.0,
                 status_seconds: float = 60.0, tick_seconds: float = 1.0) -> None:
        from stackvault.ops.scheduler import Scheduler

        self.config = config
        self.config_path = Path(config_path).resolve()
        self.env = dict(os.environ if env is None else env)
        self.state_dir = Path(state_dir or default_state_dir(config, self.env))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.tokens = TokenStore.in_state_dir(self.state_dir)
        self.audit_path = audit.default_path(config, self.env)
        self.refresh_seconds = refresh_seconds
        self.status_seconds = status_seconds
        self.tick_seconds = tick_seconds
        self.started = datetime.now(UTC)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._repo: Any = None
        self.views = Views([], {"reachable": None}, [])
        self.status: dict[str, Any] | None = None
        self.tasks = TaskManager(self.state_dir, self.config_path, self.env,
                                 on_finish=self._task_finished)
        self.scheduler = (Scheduler.from_config(config.schedule, self.state_dir, self._run_job)
                          if config.schedule.jobs() else None)
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Settle tasks left from before a restart, then start the background threads."""
        self.tasks.recover()
        for target, name in ((self._loop, "sv-loop"), (self._status_loop, "sv-status")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        for t in self._threads:
            t.join(timeout=10)
        with self._lock:
            if self._repo is not None:
                self._repo.close()
                self._repo = None

    def _loop(self) -> None:
        next_refresh = 0.0
        while not self._stop.is_set():
            if self.scheduler is not None:
                try:
                    self.scheduler.tick()
                except Exception as exc:  # noqa: BLE001 - the loop must go on
                    self._log(f"scheduler: {type(exc).__name__}: {exc}")
            if self._dirty.is_set() or time.monotonic() >= next_refresh:
                self._dirty.clear()
                self.refresh()
                next_refresh = time.monotonic() + self.refresh_seconds
            self._dirty.wait(self.tick_seconds)

    def _status_loop(self) -> None:
        while not self._stop.is_set():
            self.refresh_status()
            self._stop.wait(self.status_seconds)

    def _log(self, message: str) -> None:
        print(f"stackvault serve: {message}", flush=True)

    # ------------------------------------------------------------------ views

    def _open_repo(self) -> Any:
        from stackvault.cli.cmd_stack import open_stack_repo
        from stackvault.cli.context import Ctx, Options

        return open_stack_repo(Ctx(Options(config=str(self.config_path), env=self.env)),
                               self.config)

    def refresh(self) -> None:
        """Re-read snapshots, drills and repository figures; keep the last good views and
        record the error when the repository cannot be read."""
        from stackvault.ops.drill import list_drills
        from stackvault.ops.stack_restore import SAFETY_TAG

        try:
            with self._lock:
                if self._repo is None:
                    self._repo = self._open_repo()
                repo = self._repo
                # A missing folder lists as empty: ask for the repository's config object.
                repo.storage.stat("config")
                snaps = [s for s in repo.list_snapshots() if s.kind == "stack"]  # oldest first
                packs = repo.list_packs()
                drills = [d.to_dict() for d in list_drills(repo)]
            size = sum(packs.values())
            regular = [s for s in snaps if SAFETY_TAG not in s.tags]
            protected = sum(int(s.summary.get("bytes_read", 0)) for s in regular)
            repository = {"reachable": True, "location": _safe_location(repo),
                          "snapshots": len(regular), "size_bytes": size,
                          "protected_bytes": protected,
                          "dedup_ratio": round(protected / size, 3) if size else None,
                          "error": None}
            views = Views([snapshot_view(s) for s in snaps], repository, drills,
                          datetime.now(UTC).isoformat(),
                          {s.id: s.extra.get("manifest") for s in snaps})
            self.views = views
            self._copy_audit(repo)
        except Exception as exc:  # noqa: BLE001 - any storage error: shown, retried later
            with self._lock:
                if self._repo is not None:
                    try:
                        self._repo.close()
                    except Exception:  # noqa: BLE001
                        pass
                    self._repo = None
            old = self.views
            self.views = Views(old.snapshots, {**old.repository, "reachable": False,
                                               "error": str(exc)}, old.drills, old.refreshed,
                               old.manifests)
            self._log(f"repository not readable: {exc}")

    def _copy_audit(self, repo: Any) -> None:
        try:
            audit.copy_to_repo(repo, self.audit_path, self.state_dir)
        except (StackVaultError, OSError) as exc:
            self._log(f"could not copy the audit log into the repository: {exc}")

    def refresh_status(self) -> None:
        """Probe the components (no lock held: probes can be slow), then add what the
        repository says under the lock that guards the shared open repository."""
        from stackvault.ops.status import StackStatus, add_repository, probe_components

        try:
            status = StackStatus(probe_components(self.config))
            try:
                with self._lock:
                    if self._repo is None:
                        self._repo = self._open_repo()
                    add_repository(status, self.config, self._repo)
            except StackVaultError as exc:
                status.repository = {"reachable": False, "error": str(exc)}
            st = status.to_dict()
        except Exception as exc:  # noqa: BLE001 - shown as the status's error
            st = {"ok": False, "problems": [f"status failed: {exc}"], "components": [],
                  "repository": {}, "last_drill": None}
        st["checked"] = datetime.now(UTC).isoformat()
        self.status = st

    # ------------------------------------------------------------------ tasks

    def _run_job(self, job: str) -> None:
        """The scheduler's runner: start the job as a task and wait for it."""
        from stackvault.ops.scheduler import job_command

        slice_ = self.scheduler.check_slice() if self.scheduler and job == "check" else None
        args = job_command(job, self.config.schedule.jobs()[job], check_slice=slice_)
        try:
            task = self.tasks.start(job, args, "scheduler")
        except TaskConflict as exc:
            raise RuntimeError(str(exc)) from None
        done = self.tasks.wait(task.id)
        if done is None or done.status != "succeeded":
            raise RuntimeError(done.error if done else "the task's record disappeared")

    def _task_finished(self, task: Task) -> None:
        self._dirty.set()
        if task.exit_code is None and task.status == "failed":
            # The command never reached its end (killed, interrupted by a restart): it sent
            # no notification of its own.
            from stackvault.ops.notify import notify

            notify(self.config, task.kind, "failure",
                   {"task": task.id, "errors": [task.error or "failed"]}, env=self.env,
                   warn=self._log)
            audit.append(self.audit_path, f"task {task.kind}", "failed",
                         {"task": task.id, "error": task.error}, who="stackvault serve")

    def plan_restore(self, args: list[str], timeout: float = 300) -> Any:
        """The plan of `stackvault restore ARGS --dry-run`, as its JSON (run as a child
        process, like every task). Raises StackVaultError with the command's message."""
        import subprocess
        import sys

        proc = subprocess.run([sys.executable, "-m", "stackvault", "-c", str(self.config_path),
                               "--json", *args, "--dry-run"], capture_output=True, text=True,
                              env=self.env, timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise StackVaultError(cli_error(proc.stderr)
                                  or f"the plan failed (exit {proc.returncode})")
        out = last_json(proc.stdout)
        if not isinstance(out, dict):
            raise StackVaultError("the plan printed nothing")
        return out.get("plan")

    # ------------------------------------------------------------------ facts

    def manifest(self, snapshot_id: str) -> Any:
        return (self.views.manifests or {}).get(snapshot_id)

    def targets(self) -> dict[str, dict[str, int | None]]:
        """Per component: the RTO and RPO targets (seconds) from the config."""
        return {name: {"rto": c.targets.rto, "rpo": c.targets.rpo}
                for name, c in self.config.components.items()}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "version": __version__,
                "uptime_seconds": round((datetime.now(UTC) - self.started).total_seconds(), 1)}

    def schedule_view(self) -> dict[str, Any]:
        if self.scheduler is None:
            return {"timezone": self.config.schedule.timezone, "jobs": {}, "coverage": None}
        nxt = self.scheduler.next_runs(1)
        last = self.scheduler.last_runs()
        cov = self.scheduler.coverage
        return {"timezone": self.config.schedule.timezone,
                "jobs": {name: {"next_run": nxt[name][0].isoformat(), **last.get(name, {})}
                         for name in self.scheduler.jobs},
                "running": self.scheduler.running(),
                "coverage": cov.to_dict() if cov else None}

    def integrity_view(self) -> dict[str, Any] | None:
        """The newest integrity report (written by every `integrity check`, from the
        scheduler, the API or a shell)."""
        import json

        try:
            return dict(json.loads((self.state_dir / INTEGRITY_REPORT).read_text("utf-8")))
        except (OSError, ValueError):
            return None


def _safe_location(repo: Any) -> str:
    """The repository's location without credentials."""
    loc = str(getattr(repo.storage, "location", ""))
    if "@" in loc and "://" in loc:
        scheme, rest = loc.split("://", 1)
        loc = f"{scheme}://{rest.split('@', 1)[1]}"
    return loc
