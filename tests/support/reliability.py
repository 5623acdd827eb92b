"""Helpers for the reliability tests: seeded source trees with per-version manifests, running
the driver (tests/support/driver.py) as a real process, and verifying a repository
(check --read-data, byte-identical restores) afterwards."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackvault.repo.check import CheckReport, check
from stackvault.repo.repository import Repository
from stackvault.repo.restorer import restore
from stackvault.storage import LocalStorage, open_storage
from stackvault.storage.base import Storage

PROJECT = Path(__file__).resolve().parents[2]
PASSWORD = "test-password"
UNREFERENCED = "not in any index"  # the one warning a crash may leave behind
MIB = 1 << 20

_WORDS = [
    "vector", "embedding", "backup", "restore", "snapshot", "index", "pack", "blob", "chunk",
    "tree", "deduplicate", "encrypt", "compress", "verify", "prune", "forget", "lock",
    "storage", "bucket", "object", "retrieval", "model", "document", "query", "answer",
    "context", "window", "token", "latency", "throughput", "replica", "shard",
]


# --- source trees ------------------------------------------------------------------------

Manifest = dict[str, tuple[Any, ...]]


def manifest(root: Path) -> Manifest:
    """Every entry below ``root``: files by SHA-256, size, mode, mtime; dirs; symlinks."""
    out: Manifest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, st.st_mtime_ns)
            else:
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while block := f.read(MIB):
                        h.update(block)
                out[rel] = ("file", h.hexdigest(), st.st_size, mode, st.st_mtime_ns)
    return out


class SourceTree:
    """A generated folder of about ``size_mb`` MiB that changes with every version.

    Mix: large incompressible files, compressible text, a run of zeros (dedup inside a
    file), nested folders with tiny and empty files, an empty folder, symlinks (one
    dangling) and a non-ASCII name. Each ``mutate`` rewrites about a quarter of the
    bytes, edits files in place, appends, deletes, adds, renames a link, and sets
    ``cycle.bin`` to one of three contents, so data forgotten earlier comes back later.
    """

    def __init__(self, root: Path, seed: int, size_mb: int = 36) -> None:
        self.root = root
        self.seed = seed
        self.scale = size_mb / 36
        self.version = 0
        rng = random.Random(f"{seed}-cycle")
        self._cycle = [rng.randbytes(int(1.5 * MIB * self.scale)) for _ in range(3)]

    def _n(self, nbytes: float) -> int:
        return max(1, int(nbytes * self.scale))

    def _text(self, rng: random.Random, nbytes: int) -> bytes:
        words = rng.choices(_WORDS, k=nbytes // 7 + 1)
        return " ".join(words).encode()[:nbytes]

    def _write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def create(self) -> Manifest:
        rng = random.Random(f"{self.seed}-v0")
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            self._write(f"big/b{i}.bin", rng.randbytes(self._n(6 * MIB)))
        for i in range(8):
            size = self._n(rng.randint(512 << 10, 2 * MIB))
            self._write(f"media/m{i}.bin", rng.randbytes(size))
        for i in range(16):
            size = self._n(rng.randint(100_000, 400_000))
            self._write(f"text/t{i:02}.txt", self._text(rng, size))
        self._write("zeros.bin", bytes(self._n(2 * MIB)))
        self._write("cycle.bin", self._cycle[0])
        for i in range(6):
            self._write(f"nested/a/b/c/small{i}.dat", rng.randbytes(rng.randint(1, 10_000)))
        self._write("nested/a/empty.dat", b"")
        self._write("nested/résumé ✓.txt", b"non-ASCII name\n")
        (self.root / "nested/empty-dir").mkdir(parents=True, exist_ok=True)
        os.symlink("text/t00.txt", self.root / "link-to-text")
        os.symlink("does/not/exist", self.root / "dangling-link")
        os.chmod(self.root / "media/m0.bin", 0o600)
        return manifest(self.root)

    def mutate(self) -> Manifest:
        """Move to the next version; return its manifest."""
        self.version += 1
        v = self.version
        rng = random.Random(f"{self.seed}-v{v}")
        self._write(f"big/b{v % 3}.bin", rng.randbytes(self._n(6 * MIB)))  # rewritten
        other = self.root / f"big/b{(v + 1) % 3}.bin"  # edited in place
        with open(other, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(rng.randrange(0, max(1, size - 65536)))
            f.write(rng.randbytes(65536))
        with open(self.root / f"media/m{v % 8}.bin", "ab") as f:  # appended
            f.write(rng.randbytes(200_000))
        texts = sorted(p.name for p in (self.root / "text").iterdir())
        for name in rng.sample(texts, min(3, len(texts))):
            self._write(f"text/{name}", self._text(rng, rng.randint(100_000, 300_000)))
        if len(texts) > 12:
            (self.root / "text" / rng.choice(texts)).unlink()
        self._write(f"text/new-v{v}.txt", self._text(rng, rng.randint(20_000, 100_000)))
        self._write("cycle.bin", self._cycle[v % 3])
        link = self.root / "link-to-text"
        link.unlink()
        os.symlink(f"text/new-v{v}.txt", link)
        os.chmod(self.root / "media/m1.bin", 0o640 if v % 2 else 0o644)
        extra = self.root / "extra"
        if v % 3 == 0 and extra.exists():
            shutil.rmtree(extra)
        self._write(f"extra/v{v}/note.txt", f"version {v}\n".encode())
        return manifest(self.root)


# --- repositories ------------------------------------------------------------------------


def open_repo(location: str | Path | Storage, password: str = PASSWORD) -> Repository:
    """A freshly opened repository (its own in-memory index)."""
    if isinstance(location, Path):
        storage: Storage = LocalStorage(location)
    elif isinstance(location, str):
        storage = open_storage(location)
    else:
        storage = location
    return Repository.open(storage, password)


def assert_consistent(repo: Repository, *, allow_unreferenced: bool = True) -> CheckReport:
    """check --read-data finds no error; the only allowed warning is an unreferenced pack."""
    report = check(repo, read_data=True)
    assert not report.errors, "check found errors:\n" + "\n".join(
        f"  {p.object}: {p.message} (snapshots {p.snapshots})" for p in report.errors)
    for w in report.warnings:
        assert allow_unreferenced and UNREFERENCED in w.message, f"unexpected warning {w}"
    return report


def verify_restore(repo: Repository, snap_id: str, expected: Manifest, source: Path,
                   workdir: Path) -> None:
    """Restore one snapshot into a new folder and compare it with the version's manifest."""
    target = workdir / f"restore-{snap_id[:12]}-{time.monotonic_ns()}"
    try:
        result = restore(repo, repo.load_snapshot(snap_id), str(target))
        assert not result.errors, f"restore of {snap_id[:12]} reported {result.errors[:3]}"
        got = manifest(target / os.path.abspath(source).lstrip("/"))
        assert_same_manifest(got, expected, snap_id)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def assert_same_manifest(got: Manifest, expected: Manifest, what: str) -> None:
    if got == expected:
        return
    missing = sorted(expected.keys() - got.keys())[:5]
    extra = sorted(got.keys() - expected.keys())[:5]
    differ = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])[:5]
    detail = [f"{k}: {got[k]} != {expected[k]}" for k in differ]
    raise AssertionError(f"restore of {what[:12]} differs from its source: missing {missing}, "
                         f"extra {extra}, different {detail}")


def verify_all(location: Path | str, versions: dict[str, Manifest], source: Path,
               workdir: Path) -> Repository:
    """Every snapshot in the repository is known and restores byte-identical to its
    version; nothing that should be there is missing. Returns the repository opened."""
    repo = open_repo(location)
    present = set(repo.snapshot_ids())
    assert present == set(versions), (
        f"snapshots differ: unexpected {sorted(present - set(versions))}, "
        f"lost {sorted(set(versions) - present)}")
    for sid in sorted(present):
        verify_restore(repo, sid, versions[sid], source, workdir)
    return repo


# --- the driver process ------------------------------------------------------------------


def driver_cmd(repo: str | Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.driver", "--repo", str(repo), *args]


@dataclass
class DriverRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # from READY (or start, if it never got ready) to exit
    killed: bool = False
    pid: int = 0

    def value(self, tag: str) -> str | None:
        for line in self.stdout.splitlines():
            if line.startswith(tag + " "):
                return line.split(" ", 1)[1]
        return None

    @property
    def snapshot(self) -> str | None:
        return self.value("SNAPSHOT")

    def ok(self) -> DriverRun:
        assert self.returncode == 0, f"driver failed ({self.returncode}):\n{self.stderr}"
        return self

    @property
    def crashed(self) -> bool:
        return "Traceback" in self.stderr


def spawn(repo: str | Path, *args: str, prefix: Sequence[str] = (),
          env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, *driver_cmd(repo, *args)], cwd=PROJECT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env,
    )


def run_driver(repo: str | Path, *args: str, timeout: float = 180,
               prefix: Sequence[str] = ()) -> DriverRun:
    start = time.monotonic()
    p = spawn(repo, *args, prefix=prefix)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(p)
        raise
    return DriverRun(p.returncode, out, err, time.monotonic() - start, pid=p.pid)


def kill(p: subprocess.Popen[str]) -> None:
    """SIGKILL a driver we started (by its pid) and reap it, so its pid is really gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signal.SIGKILL)
    p.wait()


def run_and_kill(repo: str | Path, *args: str, delay: float) -> DriverRun:
    """Start the driver, wait for READY, SIGKILL it ``delay`` seconds later (if still alive).

    A run that finished first is returned as it is (``killed`` False)."""
    p = spawn(repo, *args)
    assert p.stdout is not None and p.stderr is not None
    ready = p.stdout.readline()
    start = time.monotonic()
    killed = False
    if ready.strip() == "READY":
        deadline = start + delay
        while (left := deadline - time.monotonic()) > 0 and p.poll() is None:
            time.sleep(min(left, 0.002))
        if p.poll() is None:
            kill(p)
            killed = True
    out, err = p.communicate()
    return DriverRun(p.returncode, ready + out, err, time.monotonic() - start, killed, p.pid)


def timed_run(repo: str | Path, *args: str) -> DriverRun:
    """Run the driver to completion and measure from READY to exit."""
    r = run_and_kill(repo, *args, delay=3600)
    assert not r.killed
    return r.ok()


# --- storage listings ----------------------------------------------------------------------


def names(storage: Storage, prefix: str) -> set[str]:
    return {o.name for o in storage.list(prefix)}


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (root only); unmount afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True, text=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
