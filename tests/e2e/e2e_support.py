"""Helpers for the end-to-end tests: run the `stackvault` CLI as a user would, build folders.

Every run goes through :func:`run_cli`, which also asserts that no secret handed to the
process (any environment variable whose name contains PASSWORD or SECRET) shows up in its
standard output or standard error.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Distinctive secrets: easy to find if they ever leak into output.
PASSWORD = "e2e-Pw-7kQz!Vault#Alpha-2281"
NEW_PASSWORD = "e2e-Pw-NewKey-Bravo-5530"
OTHER_PASSWORD = "e2e-Pw-Changed-Charlie-9174"
TO_PASSWORD = "e2e-Pw-Offsite-Delta-6402"
WRONG_PASSWORD = "e2e-Pw-Wrong-Echo-1139"

KDF = "1,1024,1"  # cheap Argon2id for tests; stored in the key files like any other parameters

_SCRIPT = Path(sys.executable).parent / "stackvault"
CLI: list[str] = ([str(_SCRIPT)] if _SCRIPT.is_file()
                  else [sys.executable, "-m", "stackvault.cli.main"])

SECRET_MARKERS = ("PASSWORD", "SECRET")


@dataclass
class Result:
    args: list[str]
    rc: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    def json(self) -> Any:
        try:
            return json.loads(self.out)
        except ValueError as exc:
            raise AssertionError(f"stdout of {self.args} is not one JSON document: {exc}\n"
                                 f"stdout: {self.text[:2000]}\nstderr: {self.err[:2000]}") from None

    def __str__(self) -> str:  # shown by failed assertions
        return (f"stackvault {' '.join(self.args)} -> exit {self.rc}\n"
                f"--- stdout ---\n{self.text[:3000]}\n--- stderr ---\n{self.err[:3000]}")


def base_env(**extra: str | None) -> dict[str, str]:
    """The caller's environment without StackVault variables, plus cheap KDF and ``extra``
    (a value of None removes the variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKVAULT_")}
    env["STACKVAULT_KDF"] = KDF
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("COLUMNS", None)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def assert_no_secret(res: Result, env: dict[str, str]) -> None:
    secrets = {v for k, v in env.items()
               if any(m in k.upper() for m in SECRET_MARKERS) and len(v) >= 6
               and not k.upper().endswith(("_FILE", "_COMMAND"))}  # where, not what
    secrets |= {PASSWORD, NEW_PASSWORD, OTHER_PASSWORD, TO_PASSWORD, WRONG_PASSWORD}
    for s in secrets:
        assert s.encode() not in res.out, f"secret leaked on stdout\n{res}"
        assert s not in res.err, f"secret leaked on stderr\n{res}"


def run_cli(args: list[str], *, env: dict[str, str], input: bytes | None = None,
            cwd: str | os.PathLike[str] | None = None, timeout: float = 120) -> Result:
    proc = subprocess.run(
        [*CLI, *args], env=env, input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True, cwd=cwd, timeout=timeout)
    res = Result(list(args), proc.returncode, proc.stdout,
                 proc.stderr.decode("utf-8", "replace"))
    assert_no_secret(res, env)
    return res


class SV:
    """``sv("snapshots", "--json")`` runs the CLI against ``self.repo`` with the password."""

    def __init__(self, repo: str | Path | None, env: dict[str, str]) -> None:
        self.repo = str(repo) if repo is not None else None
        self.env = env

    def with_repo(self, repo: str | Path) -> SV:
        return SV(repo, dict(self.env))

    def __call__(self, *args: str, env: dict[str, str | None] | None = None,
                 input: bytes | None = None, repo: bool = True,
                 cwd: str | os.PathLike[str] | None = None, timeout: float = 120) -> Result:
        e = dict(self.env)
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        full = (["-r", self.repo] if repo and self.repo else []) + list(args)
        return run_cli(full, env=e, input=input, cwd=cwd, timeout=timeout)

    def ok(self, *args: str, **kw: Any) -> Result:
        res = self(*args, **kw)
        assert res.rc == 0, str(res)
        return res

    def json(self, *args: str, **kw: Any) -> Any:
        return self.ok("--json", *args, **kw).json()


# ----------------------------------------------------------------------------- folders

FIXED_MTIME_NS = 1_600_000_000_123_456_789  # a past time with non-zero nanoseconds


def make_tree(root: Path, seed: int = 1, big_mb: int = 3) -> Path:
    """A folder a user might back up: nested dirs, unicode names, a symlink (and a dangling
    one), an empty file and an empty dir, an executable, a private file, a few MB of data."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "docs" / "nested" / "deep").mkdir(parents=True)
    (root / "docs" / "readme.md").write_text("# Readme\n" + "line of text\n" * 200)
    (root / "docs" / "nested" / "notes.txt").write_text("notes " * 1000)
    (root / "docs" / "nested" / "deep" / "leaf.txt").write_text("leaf\n")
    (root / "ünïcødé dir").mkdir()
    (root / "ünïcødé dir" / "日本語 ファイル.txt").write_text("こんにちは\n", encoding="utf-8")
    (root / "ünïcødé dir" / "émoji-🙂.bin").write_bytes(rng.randbytes(5000))
    (root / "empty.txt").write_bytes(b"")
    (root / "empty dir").mkdir()
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(rng.randbytes(big_mb << 20))
    (root / "data" / "compressible.log").write_bytes(b"2024-01-01 INFO request ok\n" * 40000)
    (root / "bin").mkdir()
    (root / "bin" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "run.sh", 0o755)
    (root / "private.key").write_bytes(rng.randbytes(64))
    os.chmod(root / "private.key", 0o600)
    os.symlink("docs/readme.md", root / "link-to-readme")
    os.symlink("does/not/exist", root / "dangling-link")
    # Fixed past times, files first, then folders bottom-up so children don't disturb them.
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for n in files:
            os.utime(os.path.join(dirpath, n), ns=(FIXED_MTIME_NS, FIXED_MTIME_NS),
                     follow_symlinks=False)
        for n in dirs:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.utime(p, ns=(FIXED_MTIME_NS + 1000, FIXED_MTIME_NS + 1000))
    os.utime(root, ns=(FIXED_MTIME_NS + 2000, FIXED_MTIME_NS + 2000))
    return root


def tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Relative path -> (type, mode, mtime_ns, content hash / link target / None)."""
    import hashlib

    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                            hashlib.sha256(p.read_bytes()).hexdigest())
    st = root.lstat()
    out["."] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def files_in(root: Path) -> list[str]:
    """Every regular file under root (relative paths)."""
    return sorted(str((Path(d) / n).relative_to(root)) for d, _dirs, names in os.walk(root)
                  for n in names if not os.path.islink(Path(d) / n))


def restored(target: Path, src: Path) -> Path:
    """Where `restore --target target` puts the snapshot path ``src`` (paths stay absolute)."""
    return target / str(src).lstrip("/")


def copy_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def pack_files(repo: Path) -> list[Path]:
    return sorted((repo / "data").glob("*/*"), key=lambda p: p.stat().st_size)
