"""Storage wrappers: retries with backoff, read-only access, and fault injection for tests."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from stackvault import errors
from stackvault.errors import (
    ObjectExists,
    ObjectNotFound,
    StorageUnavailable,
    TransientStorageError,
)
from stackvault.storage.base import ObjectInfo, Storage

log = logging.getLogger("stackvault.storage")

T = TypeVar("T")

ALL_OPS = ("put", "get", "stat", "list", "delete")


class _Wrapper:
    """What every wrapper passes through unchanged from the storage it wraps."""

    inner: Storage

    @property
    def parallel_uploads(self) -> int:
        return int(getattr(self.inner, "parallel_uploads", 1))

    @property
    def location(self) -> str:
        return self.inner.location

    def close(self) -> None:
        self.inner.close()


class RetryStorage(_Wrapper):
    """Retries TransientStorageError with exponential backoff and jitter.

    Attempt ``n`` (from 1) that fails waits ``min(max_delay, base_delay * 2**(n-1))``
    scaled by a random factor in [0.5, 1] before the next one; after ``attempts`` failures
    it raises StorageUnavailable naming the operation and the object. Permanent errors
    (ObjectNotFound, ObjectExists, StorageFull, other StorageError) pass through at once.

    A put whose response was lost may have landed: when a retry then finds the object,
    it is compared with what we wrote, and an identical object counts as success.
    A list that fails half-way restarts and skips the names it already yielded.
    """

    def __init__(
        self,
        inner: Storage,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._rng = rng or random.Random()


    def delay(self, failures: int) -> float:
        """How long to wait after the ``failures``-th consecutive failure."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (failures - 1)))
        return ceiling * self._rng.uniform(0.5, 1.0)

    def call(self, op: str, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` under this retry policy (also usable for non-Storage calls)."""
        for failures in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientStorageError as e:
                if failures >= self.attempts:
                    raise self._give_up(op, name, e) from e
                wait = self.delay(failures)
                log.warning(
                    "%s %r on %s failed (attempt %d of %d), retrying in %.1fs: %s",
                    op, name, self.location, failures, self.attempts, wait, _first_line(e),
                )  # fmt: skip
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _give_up(self, op: str, name: str, e: Exception) -> StorageUnavailable:
        return StorageUnavailable(
            f"{op} {name!r} on {self.location} failed after {self.attempts} attempts: "
            f"{_first_line(e)}",
            hint="the storage is unreachable or keeps failing: check the network and the "
            "storage service, then run the command again",
        )

    def put(self, name: str, data: bytes | memoryview) -> None:
        failed_before = False

        def attempt() -> None:
            nonlocal failed_before
            try:
                self.inner.put(name, data)
            except TransientStorageError:
                failed_before = True
                raise
            except ObjectExists:
                if not failed_before or not self._same_object(name, data):
                    raise
                log.info("put %r: an earlier attempt had stored it after all", name)

        self.call("put", name, attempt)

    def _same_object(self, name: str, data: bytes | memoryview) -> bool:
        try:
            if self.inner.stat(name).size != len(data):
                return False
            return self.inner.get(name) == data
        except ObjectNotFound:
            return False

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.call("get", name, lambda: self.inner.get(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self.call("stat", name, lambda: self.inner.stat(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        seen: set[str] = set()
        failures = 0
        while True:
            try:
                for info in self.inner.list(prefix):
                    if info.name in seen:
                        continue
                    seen.add(info.name)
                    failures = 0  # progress: count failures afresh
                    yield info
                return
            except TransientStorageError as e:
                failures += 1
                if failures >= self.attempts:
                    raise self._give_up("list", prefix, e) from e
                wait = self.delay(failures)
                log.warning(
                    "list %r on %s failed (attempt %d of %d), retrying in %.1fs: %s",
                    prefix, self.location, failures, self.attempts, wait, _first_line(e),
                )  # fmt: skip
                self._sleep(wait)

    def delete(self, name: str) -> None:
        self.call("delete", name, lambda: self.inner.delete(name))



class ReadOnlyStorage(_Wrapper):
    """Refuses put and delete with errors.ReadOnlyStorage; reads pass through."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner


    def put(self, name: str, data: bytes | memoryview) -> None:
        raise errors.ReadOnlyStorage(f"cannot store {name!r}: {self.location} is opened read-only")

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        raise errors.ReadOnlyStorage(f"cannot delete {name!r}: {self.location} is opened read-only")


class FaultyStorage(_Wrapper):
    """Injects TransientStorageError, deterministically from a seeded RNG. For tests.

    - ``fail_rate``: probability that a call fails before reaching the inner storage.
    - ``timeout_rate``: probability that a call *is carried out* but the caller still gets
      a timeout (a lost response), e.g. a put that landed although it seemed to fail.
    - ``fail_next``: the next N calls of ``fail_ops`` fail whatever the rates.
    - ``delay``: seconds every call is slowed down by (through ``sleep``).
    A failing ``list`` yields a random part of the listing first, then raises.
    ``injected`` counts the faults per operation; ``calls`` counts the calls.
    """

    def __init__(
        self,
        inner: Storage,
        *,
        fail_rate: float = 0.0,
        seed: int = 0,
        fail_ops: Iterable[str] = ALL_OPS,
        timeout_rate: float = 0.0,
        fail_next: int | None = None,
        delay: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.fail_rate = fail_rate
        self.timeout_rate = timeout_rate
        self.fail_ops = frozenset(fail_ops)
        unknown = self.fail_ops - set(ALL_OPS)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; known: {ALL_OPS}")
        self.fail_next = fail_next or 0
        self.delay = delay
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.calls: dict[str, int] = dict.fromkeys(ALL_OPS, 0)
        self.injected: dict[str, int] = dict.fromkeys(ALL_OPS, 0)


    def _decide(self, op: str) -> str | None:
        """'fail' (before the call), 'timeout' (after it) or None."""
        if self.delay:
            self._sleep(self.delay)
        with self._lock:
            self.calls[op] += 1
            if op not in self.fail_ops:
                return None
            outcome = None
            if self.fail_next > 0:
                self.fail_next -= 1
                outcome = "fail"
            else:
                roll = self._rng.random()
                if roll < self.fail_rate:
                    outcome = "fail"
                elif roll < self.fail_rate + self.timeout_rate:
                    outcome = "timeout"
            if outcome:
                self.injected[op] += 1
            return outcome

    def _run(self, op: str, name: str, fn: Callable[[], T]) -> T:
        outcome = self._decide(op)
        if outcome == "fail":
            raise TransientStorageError(f"injected failure: {op} {name!r}")
        result = fn()
        if outcome == "timeout":
            raise TransientStorageError(f"injected timeout after {op} {name!r} was carried out")
        return result

    def put(self, name: str, data: bytes | memoryview) -> None:
        self._run("put", name, lambda: self.inner.put(name, data))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._run("get", name, lambda: self.inner.get(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self._run("stat", name, lambda: self.inner.stat(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        outcome = self._decide("list")
        items = list(self.inner.list(prefix))
        if outcome:
            with self._lock:
                cut = self._rng.randint(0, len(items))
            yield from items[:cut]
            raise TransientStorageError(f"injected failure: list {prefix!r} after {cut} items")
        yield from items

    def delete(self, name: str) -> None:
        self._run("delete", name, lambda: self.inner.delete(name))


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
