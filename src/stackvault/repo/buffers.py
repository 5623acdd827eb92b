"""A small pool of large reusable buffers, so big allocations are not churned per block or pack.

Fresh multi-megabyte allocations for every read block and pack cost page faults and leave the
allocator's arenas fragmented (peak memory grows with the data); reusing a few buffers keeps
both flat.
"""

from __future__ import annotations

import threading


class BufferPool:
    """Keeps up to ``keep`` returned buffers of ``size`` bytes for reuse. Never blocks: when
    none is free a new one is made (callers bound how many are in use)."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def give(self, buf: bytearray) -> None:
        if len(buf) < self.size:
            return
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)
