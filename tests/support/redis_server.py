"""Throwaway `redis-server` instances on free loopback ports, for tests.

Usable outside pytest too::

    from support.redis_server import redis_server      # with tests/ on sys.path
    with redis_server(tmp_dir) as server:
        print(server.url)

Each server runs daemonized in its own folder with no persistence (`--save ''
--appendonly no`) and `repl-diskless-sync-delay 0` (so `redis-cli --rdb` starts at once), and
is stopped by the PID from its pidfile, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
MISSING = ("redis-server and redis-cli are needed: apt-get install redis-server redis-tools"
           if REDIS_SERVER is None or REDIS_CLI is None else None)


@dataclass
class RedisServer:
    port: int
    folder: Path
    pid: int
    password: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self, db: int = 0):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                           protocol=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped by its parent (init: not us)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def start(folder: Path, *, password: str | None = None, extra: tuple[str, ...] = ()
          ) -> RedisServer:
    """Start one server in `folder` (created); return once it answers PING."""
    if MISSING:
        raise RuntimeError(MISSING)
    assert REDIS_SERVER is not None
    folder.mkdir(parents=True, exist_ok=True)
    pidfile = folder / "redis.pid"
    for _ in range(5):
        port = free_port()
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
                "--save", "", "--appendonly", "no", "--daemonize", "yes",
                "--pidfile", str(pidfile), "--logfile", str(folder / "redis.log"),
                "--repl-diskless-sync-delay", "0", *extra]
        if password is not None:
            args += ["--requirepass", password]
        subprocess.run(args, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if pidfile.exists():
                with contextlib.suppress(ValueError):
                    pid = int(pidfile.read_text().strip())
                    server = RedisServer(port, folder, pid, password)
                    try:
                        server.client().ping()
                        return server
                    except Exception:
                        if not _alive(pid):
                            break  # the port was taken meanwhile: try another
            time.sleep(0.02)
        else:
            raise RuntimeError(f"redis-server in {folder} did not start: "
                               f"{(folder / 'redis.log').read_text()[-1000:]}")
        pidfile.unlink(missing_ok=True)
    raise RuntimeError("no free port for redis-server")


def stop(server: RedisServer) -> None:
    """SIGTERM by PID, then SIGKILL if it is still there after 10 s."""
    try:
        os.kill(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while _alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(server.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGKILL)


@contextlib.contextmanager
def redis_server(folder: Path, *, password: str | None = None,
                 extra: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    server = start(folder, password=password, extra=extra)
    try:
        yield server
    finally:
        stop(server)
