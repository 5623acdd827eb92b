"""What every command needs: global options, password lookup, opening the repository, output."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from stackvault.errors import UsageError
from stackvault.progress import Progress as ProgressFn
from stackvault.progress import no_progress
from stackvault.repo.crypto import KdfParams
from stackvault.repo.repository import Repository
from stackvault.statefile import replace_json
from stackvault.storage import open_storage


@dataclass
class Options:
    """Global options, from flags or the environment (flags win)."""

    repo: str | None = None
    config: str | None = None  # -c/--config: the stack's config file (see config/loader.py)
    password_file: str | None = None
    password_command: str | None = None
    insecure_no_password: bool = False
    json: bool = False
    quiet: bool = False
    retry_lock: float = 0.0
    traceback: bool = False
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


class Ctx:
    """Per-invocation context handed to every command."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        # markup=False: file names, tags and paths are data; "[x]" in them is not a style.
        self.out = Console(soft_wrap=True, highlight=False, markup=False)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

    # ------------------------------------------------------------------ repository
    def repo_url(self, url: str | None = None, env_name: str = "STACKVAULT_REPOSITORY") -> str:
        url = url or self.opts.env.get(env_name)
        if not url:
            raise UsageError("no repository given",
                             hint=f"pass -r/--repo LOCATION or set {env_name}")
        return url

    def password(self, *, prefix: str = "STACKVAULT", file: str | None = None,
                 command: str | None = None, confirm: bool = False,
                 prompt: str = "repository password") -> str:
        pw = self._read_password(prefix, file, command, confirm, prompt)
        if confirm and not pw:  # a new password (init, key add/passwd) must not be empty
            raise UsageError("an empty password is not allowed",
                             hint=f"check {prefix}_PASSWORD / {prefix}_PASSWORD_FILE / "
                             f"{prefix}_PASSWORD_COMMAND")
        return pw

    def _read_password(self, prefix: str, file: str | None, command: str | None,
                       confirm: bool, prompt: str) -> str:
        env = self.opts.env
        file = file or env.get(f"{prefix}_PASSWORD_FILE")
        command = command or env.get(f"{prefix}_PASSWORD_COMMAND")
        if f"{prefix}_PASSWORD" in env:
            return env[f"{prefix}_PASSWORD"]
        if file:
            try:
                with open(file, encoding="utf-8") as f:
                    return f.readline().rstrip("\r\n")  # the first line (docs/configuration.md)
            except OSError as exc:
                raise UsageError(f"cannot read password file {file}: {exc.strerror}") from None
        if command:
            proc = subprocess.run(command, shell=True, capture_output=True, text=True)
            if proc.returncode != 0:
                raise UsageError(f"password command failed with exit code {proc.returncode}",
                                 hint="check --password-command")
            return proc.stdout.rstrip("\r\n")
        if sys.stdin.isatty():
            pw = getpass.getpass(f"enter {prompt}: ")
            if confirm and getpass.getpass(f"enter {prompt} again: ") != pw:
                raise UsageError("the passwords do not match")
            if not pw:
                raise UsageError("an empty password is not allowed")
            return pw
        raise UsageError(
            "no password given",
            hint=f"set {prefix}_PASSWORD, {prefix}_PASSWORD_FILE or {prefix}_PASSWORD_COMMAND",
        )

    def open_repo(self, url: str | None = None) -> Repository:
        if not (url or self.opts.repo or self.opts.env.get("STACKVAULT_REPOSITORY")):
            stack = self.stack_config()
            if stack is not None:  # the repository named in stackvault.yaml
                from stackvault.cli.cmd_stack import open_stack_repo

                return open_stack_repo(self, stack)
        storage = open_storage(self.repo_url(url or self.opts.repo))
        password = None if self.opts.insecure_no_password else self.password(
            file=self.opts.password_file, command=self.opts.password_command)
        return Repository.open(storage, password,
                               insecure_no_password=self.opts.insecure_no_password)

    def stack_config(self) -> object | None:
        """The stack config if one is named (-c, STACKVAULT_CONFIG) or in this folder."""
        if not (self.opts.config or self.opts.env.get("STACKVAULT_CONFIG")
                or os.path.exists("stackvault.yaml")):
            return None
        from stackvault.cli.cmd_stack import load_stack_config

        return load_stack_config(self)

    def kdf_from_env(self) -> KdfParams | None:
        """STACKVAULT_KDF='t,m,p' overrides the default Argon2id cost (tests, slow machines)."""
        spec = self.opts.env.get("STACKVAULT_KDF")
        if not spec:
            return None
        try:
            t, m, p = (int(x) for x in spec.split(","))
        except ValueError:
            raise UsageError(f"bad STACKVAULT_KDF {spec!r}",
                             hint="use T,M,P (passes, KiB, lanes), e.g. 3,65536,4") from None
        return KdfParams(t=t, m=m, p=p)

    # ------------------------------------------------------------------ output
    def emit(self, data: Any) -> None:
        """Print a command's result as JSON (with --json)."""
        sys.stdout.write(json.dumps(data, default=str, indent=None) + "\n")
        sys.stdout.flush()

    def info(self, text: str) -> None:
        if not self.opts.quiet and not self.opts.json:
            self.out.print(text)

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {escape(text)}", markup=True)

    @contextmanager
    def progress(self, label: str) -> Iterator[ProgressFn]:
        """A progress callback: a bar with rate and ETA on a terminal, nothing otherwise; with
        STACKVAULT_PROGRESS_FILE set (by `stackvault serve` for its tasks), the latest event
        is also written there as JSON, at most twice a second."""
        file = self.opts.env.get("STACKVAULT_PROGRESS_FILE")
        if file:
            yield progress_file_writer(file, label)
            return
        if self.opts.quiet or self.opts.json or not self.err.is_terminal:
            yield no_progress
            return
        bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn(), console=self.err,
                       transient=True)
        task = bar.add_task(label, total=None)

        def update(event: dict[str, Any]) -> None:
            if "bytes_done" in event:
                bar.update(task, completed=event["bytes_done"], total=event.get("bytes_total"))
            elif "packs_done" in event:
                bar.update(task, completed=event["packs_done"], total=event.get("packs_total"))

        with bar:
            yield update


def progress_file_writer(path: str, label: str, every: float = 0.5) -> ProgressFn:
    """A progress callback that replaces ``path`` with the latest event (atomically)."""
    import time

    last = [0.0]

    def update(event: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] < every:
            return
        last[0] = now
        try:
            replace_json(path, {"label": label, **event})
        except OSError:
            return  # progress is a courtesy: never fail the job for it

    return update


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
