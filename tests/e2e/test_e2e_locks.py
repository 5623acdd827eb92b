"""Locks seen from the command line: a held lock stops prune (exit 11), --retry-lock waits,
`unlock` removes only stale locks. The live lock is held by this test process through the
Python API, as another StackVault process on this host would hold it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import PASSWORD, SV

from stackvault.repo.lock import Lock
from stackvault.repo.repository import Repository
from stackvault.storage import open_storage


def _open(sv: SV) -> Repository:
    return Repository.open(open_storage(sv.repo or ""), PASSWORD)


@pytest.fixture
def held(repo: SV) -> Iterator[Lock]:
    lk = Lock(_open(repo), exclusive=True).acquire()
    try:
        yield lk
    finally:
        lk.release()


def _lock_files(sv: SV) -> list[str]:
    d = Path(sv.repo or "") / "locks"
    return sorted(os.listdir(d)) if d.is_dir() else []


def test_exclusive_lock_stops_prune_and_backup(repo: SV, held: Lock, tmp_path: Path) -> None:
    res = repo("prune")
    assert res.rc == 11, str(res)
    assert "exclusive lock" in res.err
    assert f"pid {os.getpid()}" in res.err and socket.gethostname() in res.err
    assert "--retry-lock" in res.err  # says what to do
    src = tmp_path / "src"
    src.mkdir()
    res = repo("backup", str(src))
    assert res.rc == 11, str(res)
    assert _lock_files(repo) == [held.lock_id]  # the failed commands left no lock behind


def test_retry_lock_waits_for_the_holder(repo: SV, held: Lock) -> None:
    timer = threading.Timer(1.0, held.release)
    timer.start()
    try:
        start = time.monotonic()
        res = repo("--retry-lock", "3s", "prune", "--json")
        took = time.monotonic() - start
    finally:
        timer.cancel()
        timer.join()
    assert res.rc == 0, str(res)
    assert took >= 0.9
    assert _lock_files(repo) == []


def test_retry_lock_gives_up(repo: SV, held: Lock) -> None:
    start = time.monotonic()
    res = repo("--retry-lock", "1s", "prune")
    assert res.rc == 11, str(res)
    assert time.monotonic() - start >= 0.9


def test_shared_lock_lets_backups_run_but_not_prune(repo: SV, tmp_path: Path) -> None:
    lk = Lock(_open(repo), exclusive=False).acquire()  # like a running backup
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_text("f")
        assert repo("backup", str(src)).rc == 0
        res = repo("prune")
        assert res.rc == 11, str(res)
        assert "shared lock" in res.err
    finally:
        lk.release()


STALE = """
import os, sys
from stackvault.repo.lock import Lock
from stackvault.repo.repository import Repository
from stackvault.storage import open_storage
lk = Lock(Repository.open(open_storage(sys.argv[1]), os.environ["STACKVAULT_PASSWORD"]),
          exclusive=True).acquire()
print(lk.lock_id, flush=True)
os._exit(0)  # die holding the lock, as a crashed process would
"""


def test_unlock_removes_stale_locks_only(repo: SV) -> None:
    proc = subprocess.run([sys.executable, "-c", STALE, repo.repo or ""], env=repo.env,
                          capture_output=True, text=True, check=True)
    stale_id = proc.stdout.strip()
    assert _lock_files(repo) == [stale_id]
    live = Lock(_open(repo), exclusive=False).acquire()
    try:
        res = repo.json("unlock")
        assert res["removed"] == [stale_id]
        assert _lock_files(repo) == [live.lock_id]  # a live lock is not touched
        assert repo.json("unlock", "--remove-all")["removed"] == [live.lock_id]
        assert _lock_files(repo) == []
    finally:
        live.release()
