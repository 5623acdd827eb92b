"""Repository locks: shared for writers, exclusive for prune.

Write-then-list, refreshed every 5 minutes, stale after 30 minutes.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from stackvault.errors import IntegrityError, ObjectNotFound, RepositoryError, RepositoryLocked
from stackvault.repo.crypto import _username
from stackvault.repo.repository import Repository

STALE_AFTER = timedelta(minutes=30)
REFRESH_EVERY = timedelta(minutes=5)


@dataclass
class LockInfo:
    id: str
    time: datetime
    exclusive: bool
    hostname: str
    username: str
    pid: int

    def stale(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        if now - self.time > STALE_AFTER:
            return True
        if self.hostname == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return (f"{kind} lock {self.id[:8]} held by {self.username}@{self.hostname} "
                f"(pid {self.pid}) since {self.time.isoformat(timespec='seconds')}")


def list_locks(repo: Repository) -> tuple[list[LockInfo], list[str]]:
    """Return readable locks and the names of unreadable ones."""
    locks, bad = [], []
    for o in repo.storage.list("locks/"):
        lid = o.name.split("/", 1)[1]
        try:
            d = repo.load_doc("lock", "locks", lid)
            locks.append(LockInfo(lid, datetime.fromisoformat(d["time"]), bool(d["exclusive"]),
                                  d["hostname"], d.get("username", ""), int(d["pid"])))
        except ObjectNotFound:
            continue  # released while we listed
        except (IntegrityError, KeyError, ValueError):
            bad.append(lid)
    return locks, bad


class Lock:
    """A held lock. Refreshes itself on a background thread until released."""

    def __init__(self, repo: Repository, exclusive: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.repo = repo
        self.exclusive = exclusive
        self.lock_id: str | None = None
        self._clock = clock
        self._last_refresh = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh_failed = False

    def _write(self) -> str:
        doc = {"time": datetime.now(UTC).isoformat(), "exclusive": self.exclusive,
               "hostname": socket.gethostname(), "username": _username(), "pid": os.getpid(),
               "nonce": os.urandom(8).hex()}
        return self.repo.save_doc("lock", doc, "locks")

    def _conflicts(self) -> list[LockInfo]:
        locks, _bad = list_locks(self.repo)
        return [lk for lk in locks if lk.id != self.lock_id and not lk.stale()
                and (self.exclusive or lk.exclusive)]

    def acquire(self, retry_for: float = 0.0) -> Lock:
        deadline = time.monotonic() + retry_for
        delay = 0.2
        while True:
            self.lock_id = self._write()
            conflicts = self._conflicts()
            if not conflicts:
                break
            self.repo.storage.delete(f"locks/{self.lock_id}")
            self.lock_id = None
            if time.monotonic() >= deadline:
                raise RepositoryLocked(
                    "the repository is locked: " + "; ".join(c.describe() for c in conflicts),
                    hint="wait for that process, retry with --retry-lock DURATION, or run "
                    "`stackvault unlock` if it is gone",
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())) * random.uniform(0.5, 1))
            delay = min(delay * 2, 10.0)
        self._last_refresh = self._clock()
        self._thread = threading.Thread(target=self._refresher, daemon=True, name="sv-lock")
        self._thread.start()
        return self

    def _refresher(self) -> None:
        while not self._stop.wait(REFRESH_EVERY.total_seconds()):
            self.refresh()

    def refresh(self) -> None:
        old = self.lock_id
        try:
            self.lock_id = self._write()
            if old:
                self.repo.storage.delete(f"locks/{old}")
            self._last_refresh = self._clock()
        except Exception:  # noqa: BLE001 - recorded; check_valid() turns it into an error
            self.refresh_failed = True

    def check_valid(self) -> None:
        """Raise if the lock may have been considered stale by another process."""
        if self._clock() - self._last_refresh > STALE_AFTER.total_seconds() * 0.9:
            raise RepositoryError(
                "the repository lock could not be refreshed for too long; another process may "
                "have treated it as stale, so nothing was committed",
                hint="run the command again",
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lock_id:
            self.repo.storage.delete(f"locks/{self.lock_id}")
            self.lock_id = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_locks(repo: Repository, *, all_locks: bool = False) -> list[str]:
    """Remove stale (or, with all_locks, every) lock; return the removed ids."""
    locks, bad = list_locks(repo)
    removed = []
    for lk in locks:
        if all_locks or lk.stale():
            repo.storage.delete(f"locks/{lk.id}")
            removed.append(lk.id)
    for lid in bad:
        repo.storage.delete(f"locks/{lid}")
        removed.append(lid)
    return removed
