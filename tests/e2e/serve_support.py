"""A small real stack (SQLite + files) and a real `stackvault serve` process for the API,
dashboard and resilience tests. The server runs on a free loopback port and is stopped by
PID; task processes it started (they outlive it on purpose) are stopped by PID too."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from e2e_support import CLI, PASSWORD, SV, base_env

from support.receivers import free_port


def make_stack(d: Path, extra: str = "", *, pre_hook: str | None = None,
               files_path: Path | None = None) -> SV:
    """stackvault.yaml for an SQLite database and a folder, an initialised repository."""
    db = d / "app.db"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE docs(id INTEGER PRIMARY KEY, title TEXT, body BLOB);")
    con.executemany("INSERT INTO docs(title, body) VALUES (?, ?)",
                    [(f"Dokument {i} – ünïcødé", os.urandom(200)) for i in range(500)])
    con.commit()
    con.close()
    conf = files_path or d / "conf"
    if files_path is None:
        conf.mkdir()
        (conf / "settings.yaml").write_text("chunk_size: 512\n")
    hooks = (f"hooks:\n  pre:\n    - command: {json.dumps(pre_hook)}\n" if pre_hook else "")
    (d / "stackvault.yaml").write_text(f"""\
version: 1
repository:
  location: {d / "repo"}
{hooks}components:
  app_db:
    type: sqlite
    path: {db}
    targets: {{rto: 1m, rpo: 1h}}
  config:
    type: files
    paths: [{conf}]
    depends_on: [app_db]
{extra}""")
    sv = SV(None, base_env(STACKVAULT_PASSWORD=PASSWORD,
                           STACKVAULT_CONFIG=str(d / "stackvault.yaml")))
    sv.ok("init")
    return sv


def rows(db: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT * FROM docs ORDER BY id").fetchall()
    finally:
        con.close()


def token(sv: SV, scope: str, name: str | None = None) -> str:
    return str(sv.json("token", "create", "--name", name or scope, "--scope", scope)["token"])


class Server:
    """`stackvault serve` as a user starts it; `stop()` ends it by PID."""

    def __init__(self, sv: SV, state: Path | None = None) -> None:
        self.sv = sv
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(sv.env["STACKVAULT_CONFIG"]).parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Server:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, "serve", "--listen", f"127.0.0.1:{self.port}", "--refresh", "1",
                 "--status-every", "5"], env=self.sv.env, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n"
                                     + self.log.read_text())
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("serve did not answer /health:\n" + self.log.read_text())

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def client(self, tok: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def wait_task(c: httpx.Client, task_id: str, timeout: float = 120,
              until: tuple[str, ...] = ("succeeded", "failed")) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = c.get(f"/api/v1/tasks/{task_id}").json()
        if t["status"] in until:
            return dict(t)
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} still {t['status']} after {timeout}s: {t}")


def wait_for(fn: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def stop_tasks(state: Path) -> None:
    """Stop task processes still running after a test (they outlive the server)."""
    for rec in (state / "tasks").glob("*.json"):
        try:
            t = json.loads(rec.read_text())
        except (OSError, ValueError):
            continue
        if t.get("status") == "running" and t.get("pid"):
            try:
                os.kill(int(t["pid"]), signal.SIGKILL)
            except ProcessLookupError:
                pass


__all__ = ["PASSWORD", "Server", "make_stack", "rows", "stop_tasks", "token", "wait_for",
           "wait_task"]
