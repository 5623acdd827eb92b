"""A throwaway redis-server on a free loopback port: loads an RDB so that it can be read."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
import redis.exceptions as rex

from stackvault.errors import (
    SourceCorrupt,
    SourceError,
)
from stackvault.sources.redisdb.settings import (
    CONNECT_TIMEOUT,
    IO_TIMEOUT,
    RDB_ARTIFACT,
    READY_TIMEOUT,
)

# --- throwaway redis-server -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its parent, e.g. init, to reap it
    does not: a daemonized server is not our child)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class _Throwaway:
    """A private redis-server on a free loopback port in `folder`, loading `folder/dump.rdb`
    if present; stopped by its PID."""

    def __init__(self, server_bin: str, folder: Path, *, username: str | None = None,
                 password: str | None = None) -> None:
        self.server_bin = server_bin
        self.folder = folder
        self.pid: int | None = None
        self.port = 0
        self.username, self.password = username, password

    def _log_tail(self) -> str:
        try:
            lines = (self.folder / "redis.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(line.split(" * ", 1)[-1].split(" # ", 1)[-1] for line in lines[-4:])

    def start(self) -> redis.Redis:
        pidfile = self.folder / "redis.pid"
        for _attempt in range(3):
            pidfile.unlink(missing_ok=True)  # a failed attempt's
            self.port = _free_port()
            cmd = [self.server_bin, *self._auth_config(),
                   "--bind", "127.0.0.1", "--port", str(self.port),
                   "--dir", str(self.folder), "--dbfilename", RDB_ARTIFACT,
                   "--save", "", "--appendonly", "no", "--daemonize", "yes",
                   "--pidfile", str(pidfile), "--logfile", str(self.folder / "redis.log"),
                   "--protected-mode", "yes"]
            res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if res.returncode != 0:
                raise SourceError(f"could not start {self.server_bin}: "
                                  f"{(res.stderr or res.stdout).strip()[:400]}")
            deadline = time.monotonic() + 30
            while self.pid is None:  # the file may exist a moment before it holds the PID
                try:
                    self.pid = int(pidfile.read_text().strip())
                except (OSError, ValueError):
                    if time.monotonic() > deadline:
                        raise SourceError(f"{self.server_bin} did not start: "
                                          f"{self._log_tail()}") from None
                    time.sleep(0.02)
            client = self.client()
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                try:
                    client.ping()
                    return client
                except rex.BusyLoadingError:
                    pass
                except rex.ConnectionError:
                    if not _pid_alive(self.pid):
                        break  # e.g. the port was taken meanwhile, or the RDB is unreadable
                if time.monotonic() > deadline:
                    self.stop()
                    raise SourceError(f"the throwaway redis-server did not load the RDB "
                                      f"within {READY_TIMEOUT:.0f}s")
                time.sleep(0.05)
            log = self._log_tail()
            self.pid = None
            if "Address already in use" not in log:
                raise SourceCorrupt(f"a throwaway redis-server could not load the RDB: {log}",
                                    hint="a Redis older than the one that wrote it cannot "
                                         "read it: use a redis-server at least as new "
                                         "(redis_bin_dir)")
        raise SourceError("could not start a throwaway redis-server: no free port")

    def _auth_config(self) -> list[str]:
        """A config file (mode 0600, never the command line) giving the throwaway server the
        same credentials as the real one, so the component's settings reach it unchanged."""
        if self.password is None:
            return []
        conf = self.folder / "auth.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            if self.username and self.username != "default":
                f.write(f"user {self.username} on >{self.password} ~* &* +@all\n")
            f.write(f"requirepass {self.password}\n")
        return [str(conf)]

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, protocol=2,
                           username=self.username, password=self.password,
                           socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=IO_TIMEOUT)

    def stop(self) -> None:
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


