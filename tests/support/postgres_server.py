"""Throwaway PostgreSQL servers for tests and benchmarks: initdb into a temp folder, start on a
free loopback port, stop by PID.

Two builds are available here: Debian's PostgreSQL 15 (/usr/lib/postgresql/15/bin) and the
`pgserver` wheel's PostgreSQL 16 with pgvector (its own initdb/pg_ctl/pg_dump). initdb refuses
to run as root, so as root every server command runs as the `postgres` user on a folder it
owns (see shared/SERVICES.md).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")


def pgserver_bin_dir() -> Path | None:
    """The pgserver wheel's bin folder (PostgreSQL 16 + pgvector), if that wheel is installed."""
    try:
        import pgserver  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return path if (path / "pg_ctl").is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    bin_dir: Path
    root: Path
    port: int
    pid: int

    host = "127.0.0.1"
    user = "postgres"

    @property
    def major(self) -> int:
        out = subprocess.run([str(self.bin_dir / "postgres"), "--version"], check=True,
                             capture_output=True, text=True).stdout
        return int(out.split()[-1].split(".")[0])

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL with this server's psql; return its unaligned, tuples-only output."""
        proc = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", dbname, "-c", sql],
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout.strip()


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def start_postgres(bin_dir: Path, root: Path, *, settings: dict[str, str] | None = None
                   ) -> PgServer:
    """initdb + start a server under `root` (created), trust auth, listening on 127.0.0.1."""
    root.mkdir(parents=True, exist_ok=True)
    data, sock = root / "data", root / "sock"
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                                 "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "-N"]),
                   check=True, capture_output=True)
    port = free_port()
    opts = {"listen_addresses": "127.0.0.1", "port": str(port),
            "unix_socket_directories": str(sock), "fsync": "off",
            "synchronous_commit": "off", "full_page_writes": "off",
            **(settings or {})}
    opt_text = " ".join(f"-c {k}={v}" for k, v in opts.items())
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opt_text,
                                 "-l", str(root / "server.log"), "-w", "-t", "60", "start"]),
                   check=True, capture_output=True)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return PgServer(bin_dir=bin_dir, root=root, port=port, pid=pid)


def stop_postgres(server: PgServer, timeout: float = 30.0) -> None:
    """Fast shutdown by PID (SIGINT), SIGKILL after `timeout`; then remove its folder."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(server.pid, 0)
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)
    shutil.rmtree(server.root, ignore_errors=True)


@contextlib.contextmanager
def postgres(bin_dir: Path, *, settings: dict[str, str] | None = None) -> Iterator[PgServer]:
    root = Path(tempfile.mkdtemp(prefix="sv-pg-"))
    server = start_postgres(bin_dir, root, settings=settings)
    try:
        yield server
    finally:
        stop_postgres(server)
