"""Writing keys into a target with RESTORE ... REPLACE, in pipelined batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from stackvault.errors import (
    SourceError,
)
from stackvault.sources.redisdb.conn import RedisUrl
from stackvault.sources.redisdb.settings import BATCH_KEYS

# --- restore into a target ---------------------------------------------------------------------


@dataclass
class _Progress:
    """What a restore has written so far, for the message when it fails."""

    done: dict[int, int] = field(default_factory=dict)  # target db -> keys restored
    current: int | None = None

    def text(self) -> str:
        if not any(self.done.values()):
            return "no key was written"
        parts = [f"{n} keys into db {db}" + (" (that db incomplete)" if db == self.current
                                             else "")
                 for db, n in self.done.items() if n or db == self.current]
        return ("restored before the failure: " + ", ".join(parts)
                + "; the backup's other keys are not in the target")


class _Writer:
    """RESTOREs keys into a target server's databases in pipelined batches."""

    def __init__(self, make_client: Callable[[int], redis.Redis], url: RedisUrl) -> None:
        self.make_client = make_client
        self.url = url
        self.progress = _Progress()
        self._client: redis.Redis | None = None
        self.db: int | None = None
        self._batch: list[tuple[bytes, int, bytes]] = []
        self._batch_bytes = 0

    def select(self, db: int) -> None:
        self.flush()
        self._client = self.make_client(db)
        self.db = db
        self.progress.current = db
        self.progress.done.setdefault(db, 0)

    def add(self, key: bytes, pttl: int, payload: bytes) -> None:
        self._batch.append((key, pttl, payload))
        self._batch_bytes += len(payload)
        if len(self._batch) >= BATCH_KEYS or self._batch_bytes >= 32 << 20:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        assert self._client is not None and self.db is not None
        with self._client.pipeline(transaction=False) as p:
            for key, pttl, payload in self._batch:
                # RESTORE's ttl is relative; 0 means "no expiry", so a key due now gets 1 ms
                p.restore(key, max(pttl, 1) if pttl >= 0 else 0, payload, replace=True)
            results = p.execute(raise_on_error=False)
        for (key, _, _), r in zip(self._batch, results, strict=True):
            if isinstance(r, Exception):
                hint = None
                if "payload version" in str(r) or "checksum" in str(r):
                    hint = ("either the backup is damaged, or the target Redis is older "
                            "than the one backed up (a DUMP payload restores only into the "
                            "same or a newer version)")
                raise SourceError(f"RESTORE of key {key[:80]!r} into db {self.db} of "
                                  f"{self.url.address} failed: {r}", hint=hint)
            self.progress.done[self.db] += 1
        self._batch.clear()
        self._batch_bytes = 0

    def finish(self) -> None:
        self.flush()
        self.progress.current = None


