"""Crash safety (docs/design.md, "Write order and crash safety", "Locks"): a backup or a prune
killed with SIGKILL at any moment leaves a repository that checks clean (apart from
unreferenced packs), whose every committed snapshot restores byte-identical, and on which the
next backup and prune work without a manual unlock.

The victim is a real process (tests/support/driver.py) on a LocalStorage repository with
small packs (256 KiB) and small chunks, so a backup writes dozens of packs. Kill moments are
seeded (STACKVAULT_CRASH_SEED) random delays between 0 and the measured duration of an
uninterrupted run, counted from the moment the driver has opened the repository.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from stackvault.errors import ExitCode, RepositoryLocked
from stackvault.repo.archiver import run_backup
from stackvault.repo.lock import STALE_AFTER, list_locks, remove_locks
from stackvault.repo.prune import prune
from stackvault.storage import LocalStorage
from support.driver import forget_keep_last
from support.reliability import (
    DriverRun,
    Manifest,
    SourceTree,
    assert_consistent,
    kill,
    names,
    open_repo,
    run_and_kill,
    run_driver,
    spawn,
    timed_run,
    verify_all,
    verify_restore,
)

SEED = int(os.environ.get("STACKVAULT_CRASH_SEED", "20240611"))
BACKUP_KILLS = 15
PRUNE_KILLS = 10
KEEP = 3  # forget-keep-last between rounds: bounds the snapshots to verify


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    run_driver(repo, "init", "--pack-size", str(256 << 10), "--small-chunks").ok()
    return repo


def _state(storage: LocalStorage) -> dict[str, set[str]]:
    return {f: names(storage, f + "/") for f in ("snapshots", "index", "data", "locks")}


def _dead_locks_are_stale(repo_dir: Path, run: DriverRun, dead: set[int]) -> int:
    """Locks left behind by killed drivers (this one and earlier ones; nothing removes them
    but `unlock`): all from this host and from reaped pids, so all stale. Returns how many
    the driver just killed left."""
    dead.add(run.pid)
    locks, bad = list_locks(open_repo(repo_dir))
    assert not bad
    for lk in locks:
        assert lk.pid in dead, f"{lk.describe()} is not from a killed driver"
        assert lk.stale(), f"{lk.describe()} of a dead process is not considered stale"
    return sum(lk.pid == run.pid for lk in locks)


def test_sigkill_during_backup(tmp_path: Path, repo_dir: Path) -> None:
    rng = random.Random(f"{SEED}-backup")
    storage = LocalStorage(repo_dir)
    src = SourceTree(tmp_path / "src", SEED)
    versions: dict[str, Manifest] = {}

    first = src.create()
    versions[timed_run(repo_dir, "backup", str(src.root)).snapshot or ""] = first
    current = src.mutate()
    calibration = timed_run(repo_dir, "backup", str(src.root))
    versions[calibration.snapshot or ""] = current
    full = calibration.seconds  # READY -> exit of an uninterrupted incremental backup

    outcomes: Counter[str] = Counter()
    locks_left = 0
    dead: set[int] = set()
    for _ in range(BACKUP_KILLS):
        current = src.mutate()
        before = _state(storage)
        run = run_and_kill(repo_dir, "backup", str(src.root), delay=rng.uniform(0, full))
        assert not run.crashed, run.stderr
        after = _state(storage)

        # Nothing committed earlier is gone; at most the one new snapshot appeared.
        assert before["snapshots"] <= after["snapshots"]
        assert before["index"] <= after["index"] and before["data"] <= after["data"]
        new = after["snapshots"] - before["snapshots"]
        assert len(new) <= 1
        if new:
            sid = new.pop().split("/", 1)[1]
            versions[sid] = current
            assert run.snapshot in (None, sid)
        if not run.killed:
            run.ok()
            outcomes["finished"] += 1
        elif new:
            outcomes["killed after the snapshot"] += 1
        elif after["index"] - before["index"]:
            outcomes["killed after the index"] += 1
        elif after["data"] - before["data"]:
            outcomes["killed while writing packs"] += 1
        else:
            outcomes["killed before writing data"] += 1
        if run.killed:
            locks_left += _dead_locks_are_stale(repo_dir, run, dead)

        # The repository is consistent and every committed snapshot restores.
        assert_consistent(open_repo(repo_dir))
        verify_all(repo_dir, versions, src.root, tmp_path)

        # The next exclusive operation ignores the dead process's lock (no unlock needed)
        # and cleans up; then the next backup works and restores.
        cleanup = run_driver(repo_dir, "forget-keep-last", str(KEEP)).ok()
        for sid in json.loads(cleanup.value("FORGOT") or "[]"):
            del versions[sid]
        nxt = run_driver(repo_dir, "backup", str(src.root)).ok()
        assert nxt.snapshot
        versions[nxt.snapshot] = current
        verify_restore(open_repo(repo_dir), nxt.snapshot, current, src.root, tmp_path)

    print(f"\nbackup kills (seed {SEED}, full run {full:.2f}s): {dict(outcomes)}; "
          f"dead locks left behind: {locks_left}")
    # The kills must really have interrupted backups half-way, or this proves nothing.
    interrupted = outcomes["killed while writing packs"] + outcomes["killed after the index"]
    assert interrupted >= 3, outcomes
    assert locks_left >= 3

    # After the last cleanup nothing is left over: no errors and no warnings at all.
    assert_consistent(open_repo(repo_dir), allow_unreferenced=False)
    verify_all(repo_dir, versions, src.root, tmp_path)


def test_sigkill_during_prune(tmp_path: Path, repo_dir: Path) -> None:
    rng = random.Random(f"{SEED}-prune")
    storage = LocalStorage(repo_dir)
    src = SourceTree(tmp_path / "src", SEED + 1)
    versions: dict[str, Manifest] = {}

    def backup(m: Manifest) -> str:
        snap = run_backup(open_repo(repo_dir), paths=[str(src.root)]).snapshot
        versions[snap.id] = m
        return snap.id

    def forget() -> None:
        for sid in forget_keep_last(open_repo(repo_dir), KEEP, 0):
            del versions[sid]

    backup(src.create())
    for _ in range(5):
        backup(src.mutate())
    forget()
    full = timed_run(repo_dir, "prune").seconds

    phases: Counter[str] = Counter()
    dead: set[int] = set()
    for _ in range(PRUNE_KILLS):
        backup(src.mutate())
        backup(src.mutate())
        forget()
        before = _state(storage)
        run = run_and_kill(repo_dir, "prune", delay=rng.uniform(0, full * 1.2))
        assert not run.crashed, run.stderr
        after = _state(storage)
        assert after["snapshots"] == before["snapshots"]  # prune never touches snapshots
        if not run.killed:
            run.ok()
            phases["finished"] += 1
        elif before["data"] - after["data"]:
            phases["killed while deleting packs"] += 1
        elif before["index"] - after["index"]:
            phases["killed while deleting old index files"] += 1
        elif after["index"] - before["index"]:
            phases["killed after writing the new index"] += 1
        elif after["data"] - before["data"]:
            phases["killed while repacking"] += 1
        else:
            phases["killed while planning"] += 1
        if run.killed:
            _dead_locks_are_stale(repo_dir, run, dead)

        assert_consistent(open_repo(repo_dir))
        verify_all(repo_dir, versions, src.root, tmp_path)

        # The next backup takes a shared lock: the dead prune's exclusive lock must not
        # block it. It works and restores.
        current = src.mutate()
        sid = backup(current)
        verify_restore(open_repo(repo_dir), sid, current, src.root, tmp_path)

    print(f"\nprune kills (seed {SEED}, full run {full:.2f}s): {dict(phases)}")
    assert sum(n for p, n in phases.items() if p not in ("finished", "killed while planning")) >= 3

    # An uninterrupted prune cleans up what the interrupted ones left: no warnings at all.
    run_driver(repo_dir, "prune").ok()
    assert_consistent(open_repo(repo_dir), allow_unreferenced=False)
    verify_all(repo_dir, versions, src.root, tmp_path)


def _can_unshare() -> bool:
    try:
        r = subprocess.run(["unshare", "--uts", "sh", "-c", "hostname sv-probe && hostname"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.strip() == "sv-probe"


def test_fresh_lock_of_killed_process_on_another_host_blocks_prune(
    tmp_path: Path, repo_dir: Path
) -> None:
    """A lock from another host cannot be checked for a live process: until it is 30 minutes
    old, prune refuses (exit 11) and only `unlock --remove-all` clears it."""
    if not _can_unshare():
        pytest.skip("needs `unshare --uts` (root) to run the victim under another host name")
    other = "sv-other-host"
    # The victim runs in its own UTS namespace, so socket.gethostname() is `other` there.
    prefix = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', other]
    storage = LocalStorage(repo_dir)
    src = SourceTree(tmp_path / "src", SEED + 2)
    first = src.create()
    base = run_driver(repo_dir, "backup", str(src.root)).ok()
    versions: dict[str, Manifest] = {base.snapshot or "": first}
    current = src.mutate()

    lock = None
    for _attempt in range(5):
        before = names(storage, "snapshots/")
        p = spawn(repo_dir, "backup", str(src.root), prefix=prefix)
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            if names(storage, "locks/"):  # the victim holds its lock: kill it now
                kill(p)
                break
            time.sleep(0.002)
        p.communicate()
        for new in names(storage, "snapshots/") - before:  # it was faster than us
            versions[new.split("/", 1)[1]] = current
        locks, _bad = list_locks(open_repo(repo_dir))
        if locks:
            (lock,) = locks
            break
    assert lock is not None, "could not kill the victim while it held its lock"
    assert lock.hostname == other and not lock.exclusive
    assert not lock.stale(), "a fresh lock from another host must not count as stale"
    assert lock.stale(now=lock.time + STALE_AFTER + timedelta(minutes=1))

    # The next prune fails, as a process and through the API, naming the holder.
    r = run_driver(repo_dir, "prune")
    assert r.returncode == ExitCode.LOCKED == 11, r.stderr
    assert other in r.stderr and not r.crashed
    with pytest.raises(RepositoryLocked, match=other):
        prune(open_repo(repo_dir))
    # A backup (shared lock) may run next to another host's shared lock.
    nxt = run_driver(repo_dir, "backup", str(src.root)).ok()
    versions[nxt.snapshot or ""] = current
    # `unlock` removes only stale locks: this one stays; `unlock --remove-all` clears it.
    repo = open_repo(repo_dir)
    assert remove_locks(repo) == []
    assert [lk.id for lk in list_locks(repo)[0]] == [lock.id]
    assert remove_locks(repo, all_locks=True) == [lock.id]
    run_driver(repo_dir, "prune").ok()
    assert_consistent(open_repo(repo_dir), allow_unreferenced=False)
    verify_all(repo_dir, versions, src.root, tmp_path)
