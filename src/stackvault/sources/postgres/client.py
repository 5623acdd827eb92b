"""Connecting to PostgreSQL (libpq via psycopg 3, passwords kept out of argv and messages)
and finding the client programs (pg_dump & co.) that match a server's major version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import psycopg

from stackvault.errors import SourceError, SourceUnavailable, UsageError

COPY_BLOCK = 1 << 20
BIN_CANDIDATES = ("/usr/lib/postgresql/{major}/bin",  # Debian, Ubuntu
                  "/usr/pgsql-{major}/bin",  # RHEL and friends (PGDG)
                  "/opt/homebrew/opt/postgresql@{major}/bin",
                  "/usr/local/opt/postgresql@{major}/bin")


@dataclass(frozen=True)
class Conn:
    """Where and as whom to connect; the password is kept out of repr and messages."""

    host: str
    port: int
    user: str
    password: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}" if not self.host.startswith("/") else self.host

    def kwargs(self, dbname: str) -> dict[str, Any]:
        kw: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user,
                              "dbname": dbname, "connect_timeout": 10,
                              "application_name": "stackvault"}
        if self.password is not None:
            kw["password"] = self.password
        return kw

    def env(self, dbname: str) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: never a password on a command line."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                   PGDATABASE=dbname, PGCONNECT_TIMEOUT="10", PGAPPNAME="stackvault")
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, dbname: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(**self.kwargs(dbname), autocommit=autocommit)
        except psycopg.OperationalError as e:
            raise connect_error(e, self, dbname) from None


def connect_error(e: Exception, conn: Conn, dbname: str) -> SourceError:
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    low = str(e).lower()
    if "password authentication failed" in low or "no password supplied" in low or \
            "authentication failed" in low:
        return SourceUnavailable(
            f"PostgreSQL at {conn.where}: authentication failed for user {conn.user!r}",
            hint="check the user and the password_env/password_file of this component")
    if "does not exist" in low and "database" in low:
        return SourceUnavailable(f"PostgreSQL at {conn.where}: database {dbname!r} does not "
                                 "exist", hint="check `databases` in stackvault.yaml")
    if "connection refused" in low or "could not connect" in low or "timeout" in low or \
            "could not translate host name" in low or "no such file" in low:
        return SourceUnavailable(f"cannot reach PostgreSQL at {conn.where}: {text}",
                                 hint="check host and port in stackvault.yaml and that the "
                                      "server is running")
    return SourceUnavailable(f"PostgreSQL at {conn.where}: {text}")


def read_password(password_env: str | None, password_file: Path | None) -> str | None:
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise UsageError(f"the environment variable {password_env} (password_env) is not "
                             "set", hint=f"export {password_env}=... before running stackvault")
        return value
    if password_file:
        try:
            lines = Path(password_file).read_text().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read password_file {password_file}: {e.strerror}") from e
        return lines[0] if lines else ""
    return None


def tool_version(path: Path) -> tuple[int, str]:
    """(major, full version text) of a PostgreSQL client program."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise UsageError(f"cannot run {path}: {e}") from e
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not m:
        raise UsageError(f"cannot tell the version of {path} from {out!r}")
    return int(m.group(1)), m.group(0)


@dataclass(frozen=True)
class Tools:
    bin_dir: Path
    major: int
    version: str

    def __getitem__(self, program: str) -> str:
        return str(self.bin_dir / program)


def find_tools(server_major: int, pg_bin_dir: Path | None) -> Tools:
    """pg_dump & co. for a server of `server_major`: from `pg_bin_dir` if given (must not be
    older than the server), else the first install of exactly that major version found."""
    if pg_bin_dir is not None:
        if not (Path(pg_bin_dir) / "pg_dump").is_file():
            raise UsageError(f"there is no pg_dump in pg_bin_dir {pg_bin_dir}",
                             hint="point pg_bin_dir at the bin folder of a PostgreSQL "
                                  f"{server_major} installation")
        major, version = tool_version(Path(pg_bin_dir) / "pg_dump")
        if major < server_major:
            raise UsageError(f"version mismatch: pg_dump {version} in {pg_bin_dir} cannot "
                             f"dump a PostgreSQL {server_major} server",
                             hint=f"install the PostgreSQL {server_major} client tools and "
                                  "point pg_bin_dir at them")
        return Tools(Path(pg_bin_dir), major, version)
    seen: list[str] = []
    candidates = [Path(p.format(major=server_major)) for p in BIN_CANDIDATES]
    on_path = shutil.which("pg_dump")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    for d in candidates:
        if (d / "pg_dump").is_file() and (d / "pg_restore").is_file():
            major, version = tool_version(d / "pg_dump")
            if major == server_major:
                return Tools(d, major, version)
            seen.append(f"{version} in {d}")
    found = f" (found only pg_dump {', '.join(seen)})" if seen else ""
    raise UsageError(f"no pg_dump/pg_restore for PostgreSQL {server_major} on this "
                     f"machine{found}",
                     hint=f"install them (Debian/Ubuntu: apt-get install postgresql-client-"
                          f"{server_major}) or set pg_bin_dir to their folder")


def run_checked(proc: subprocess.Popen[bytes], what: str, stderr_file: IO[bytes]) -> None:
    rc = proc.wait()
    if rc != 0:
        stderr_file.seek(0)
        lines = [ln for ln in stderr_file.read().decode("utf-8", "replace").splitlines()
                 if ln.strip()]
        detail = "; ".join(lines[-3:]) or f"exit status {rc}"
        raise SourceError(f"{what} failed: {detail}")


def pump(src: BinaryIO, dst: IO[bytes]) -> None:
    while block := src.read(COPY_BLOCK):
        dst.write(block)
