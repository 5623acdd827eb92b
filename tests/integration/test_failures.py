"""Failures a user meets, each reported as its documented error and exit code (docs/exit-codes.md),
quickly and without a traceback, and leaving the repository as it was: a wrong password, a
missing repository, an unreachable S3 endpoint, a full disk."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest

from stackvault.errors import (
    ExitCode,
    RepositoryNotFound,
    StorageFull,
    StorageUnavailable,
    WrongPassword,
)
from stackvault.repo.archiver import run_backup
from stackvault.repo.crypto import TEST_KDF
from stackvault.repo.prune import prune
from stackvault.repo.repository import Repository
from stackvault.storage import LocalStorage, RetryStorage, open_storage
from stackvault.storage.s3 import S3Storage
from support.reliability import (
    PASSWORD,
    SourceTree,
    assert_consistent,
    manifest,
    open_repo,
    run_driver,
    tmpfs,
    verify_restore,
)


def _init(path: Path, **kw: object) -> Repository:
    return Repository.init(LocalStorage(path, create=True), PASSWORD, kdf=TEST_KDF, **kw)  # type: ignore[arg-type]


# --- wrong password ----------------------------------------------------------------------


def test_wrong_password(tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    _init(repo_dir).add_key("another-password", TEST_KDF)
    with pytest.raises(WrongPassword) as exc:
        Repository.open(LocalStorage(repo_dir), "not-the-password")
    assert exc.value.exit_code == ExitCode.WRONG_PASSWORD == 12
    assert exc.value.hint  # says what to do next
    r = run_driver(repo_dir, "--password", "not-the-password", "backup", str(tmp_path))
    assert r.returncode == 12 and not r.crashed
    assert "wrong password" in r.stderr
    # Both real passwords still work.
    for password in (PASSWORD, "another-password"):
        Repository.open(LocalStorage(repo_dir), password)


# --- missing repository ------------------------------------------------------------------


def test_missing_repository(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for where in (empty, tmp_path / "does-not-exist"):
        with pytest.raises(RepositoryNotFound) as exc:
            Repository.open(LocalStorage(where), PASSWORD)
        assert exc.value.exit_code == ExitCode.NO_REPOSITORY == 10
        assert str(where) in str(exc.value)
        r = run_driver(where, "prune")
        assert r.returncode == 10 and not r.crashed, r.stderr
        assert "there is no repository" in r.stderr
    assert not (tmp_path / "does-not-exist").exists(), "opening must not create anything"
    assert os.listdir(empty) == []


@pytest.mark.s3
def test_missing_repository_in_empty_bucket(seaweed: str, s3_bucket: str) -> None:
    with pytest.raises(RepositoryNotFound):
        Repository.open(open_storage(f"s3:{seaweed}/{s3_bucket}/no/repo/here"), PASSWORD)


# --- unreachable S3 ------------------------------------------------------------------------


def _dead_port() -> int:
    """A loopback port where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_s3(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_dead_port()}"
    storage = RetryStorage(S3Storage(endpoint, "bucket", connect_timeout=2, read_timeout=5),
                           attempts=3, base_delay=0.05)
    start = time.monotonic()
    with pytest.raises(StorageUnavailable) as exc:
        Repository.open(storage, PASSWORD)
    assert time.monotonic() - start < 10
    err = exc.value
    assert err.exit_code == ExitCode.STORAGE_UNAVAILABLE == 13
    assert "failed after 3 attempts" in str(err) and endpoint in str(err)
    assert err.hint and "unreachable" in err.hint
    with pytest.raises(StorageUnavailable):
        Repository.init(storage, PASSWORD, kdf=TEST_KDF)

    # As a process: exit code 13, retry warnings and one error, no traceback.
    start = time.monotonic()
    r = run_driver(f"s3:{endpoint}/bucket", "--attempts", "3", "backup", str(tmp_path))
    assert time.monotonic() - start < 20
    assert r.returncode == 13 and not r.crashed, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "failed after 3 attempts" in errors[0]
    assert "READY" not in r.stdout


# --- full disk -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with tmpfs(tmp_path / "disk", "8m") as path:
            yield path
    except subprocess.CalledProcessError as e:
        pytest.skip(f"mount -t tmpfs is not permitted here: {e.stderr.strip()}")


def test_full_disk(tmp_path: Path, small_disk: Path) -> None:
    repo_dir = small_disk / "repo"
    _init(repo_dir, pack_size=1 << 20)
    src = SourceTree(tmp_path / "src", 99, size_mb=1)  # ~1 MiB: fits
    first = src.create()
    snap = run_backup(open_repo(repo_dir), paths=[str(src.root)]).snapshot

    rng = random.Random(7)
    (src.root / "huge").mkdir()
    for i in range(3):  # 24 MiB of incompressible data cannot fit in 8 MiB
        (src.root / "huge" / f"h{i}.bin").write_bytes(rng.randbytes(8 << 20))
    with pytest.raises(StorageFull) as exc:
        run_backup(open_repo(repo_dir), paths=[str(src.root)])
    assert exc.value.exit_code == ExitCode.STORAGE_FULL == 14
    # The same as a process: exit code 14, no traceback.
    r = run_driver(repo_dir, "backup", str(src.root))
    assert r.returncode == 14 and not r.crashed, r.stderr
    assert "no space left" in r.stderr

    # Nothing half-written: no snapshot, no lock, no temporary file; the repository checks
    # clean apart from the packs that did fit; the earlier snapshot restores.
    storage = LocalStorage(repo_dir)
    assert [o.name for o in storage.list("snapshots/")] == [f"snapshots/{snap.id}"]
    assert list(storage.list("locks/")) == []
    assert os.listdir(repo_dir / "tmp") == []
    report = assert_consistent(open_repo(repo_dir))
    assert report.warnings, "the packs written before the disk was full are unreferenced"
    verify_restore(open_repo(repo_dir), snap.id, first, src.root, tmp_path)

    # Prune frees the space on the full disk; then a backup that fits works.
    prune(open_repo(repo_dir))
    assert_consistent(open_repo(repo_dir), allow_unreferenced=False)
    for f in (src.root / "huge").iterdir():
        f.unlink()
    (src.root / "huge" / "small.bin").write_bytes(rng.randbytes(1 << 20))
    second = manifest(src.root)
    snap2 = run_backup(open_repo(repo_dir), paths=[str(src.root)]).snapshot
    repo = open_repo(repo_dir)
    verify_restore(repo, snap2.id, second, src.root, tmp_path)
    verify_restore(repo, snap.id, first, src.root, tmp_path)
    assert os.listdir(repo_dir / "tmp") == []
