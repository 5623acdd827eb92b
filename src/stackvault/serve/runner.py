"""Runs one task of `stackvault serve` in its own process (see tasks.py):

    python -m stackvault.serve.runner TASK_RECORD CONFIG LOCK_DIR

It takes the kind's lock, marks the record running (with its pid), runs
`stackvault -c CONFIG --json ARGS...` in this process, and writes the outcome into the
record: exit code, the command's JSON output as `result`, the error message. The record is
only ever replaced whole (write to a temporary file, rename).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from stackvault.ops.scheduler import JobLock
from stackvault.serve.tasks import cli_error, last_json, now_iso, read_task, write_task


def run(record: Path, config: Path, lock_dir: Path) -> int:
    task = read_task(record)
    lock = JobLock(lock_dir / f"task-{task.kind}.lock")
    if not lock.try_acquire():
        task.status, task.finished = "failed", now_iso()
        task.error = f"another {task.kind} task holds its lock (it is still running)"
        write_task(record, task)
        return 11
    try:
        task.status, task.started, task.pid = "running", now_iso(), os.getpid()
        write_task(record, task)
        from stackvault.cli.main import main

        code = main(["-c", str(config), "--json", *task.args])
        sys.stdout.flush()
        sys.stderr.flush()
        out = record.with_suffix(".out").read_text(encoding="utf-8", errors="replace")
        err = record.with_suffix(".err").read_text(encoding="utf-8", errors="replace")
        task = read_task(record)
        task.exit_code, task.result = code, last_json(out)
        task.status = "succeeded" if code == 0 else "failed"
        task.error = None if code == 0 else (cli_error(err) or f"exit code {code}")
        task.finished = now_iso()
        task.progress = None
        write_task(record, task)
        return code
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
