"""In-memory object storage: a dict behind a lock, with the same semantics as the real backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from stackvault.errors import ObjectExists, ObjectNotFound, StorageError
from stackvault.storage.base import ObjectInfo, check_name


def check_prefix(prefix: str) -> str:
    """Validate a list prefix: '' or a partial name (a trailing '/' is allowed)."""
    if prefix:
        check_name(prefix.removesuffix("/"))
    return prefix


def check_range(name: str, offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise StorageError(f"invalid range offset={offset} length={length} for {name!r}")


def slice_range(name: str, data: bytes, offset: int, length: int | None) -> bytes:
    """Cut ``length`` bytes at ``offset`` out of a whole object; a range past the end raises."""
    size = len(data)
    end = size if length is None else offset + length
    if offset > size or end > size:
        raise StorageError(
            f"range offset={offset} length={length} is past the end of {name!r} ({size} bytes)"
        )
    return data[offset:end]


class MemoryStorage:
    """Objects in a dict. For unit tests and ``memory:NAME`` URLs; nothing is persisted.

    Like the local backend (and SeaweedFS), it refuses a name that is also used as a
    folder: storing ``a`` once ``a/b`` was stored, or ``a/b`` while ``a`` exists, raises
    StorageError. The repository layout never does that; this catches layout bugs in tests.
    """

    def __init__(self, name: str = "memory") -> None:
        self._name = name
        self._objects: dict[str, bytes] = {}
        self._folders: set[str] = set()  # every name ever used as a folder, as on disk
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return f"memory:{self._name}"

    def put(self, name: str, data: bytes | memoryview) -> None:
        check_name(name)
        blob = bytes(data)
        parents = _parents(name)
        with self._lock:
            if name in self._objects:
                raise ObjectExists(f"object {name!r} already exists in {self.location}")
            if name in self._folders:
                raise StorageError(f"cannot store {name!r}: a folder of that name exists")
            for parent in parents:
                if parent in self._objects:
                    raise StorageError(f"cannot store {name!r}: {parent!r} is an object")
            self._folders.update(parents)
            self._objects[name] = blob

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_name(name)
        check_range(name, offset, length)
        with self._lock:
            data = self._objects.get(name)
        if data is None:
            raise ObjectNotFound(f"object {name!r} not found in {self.location}")
        return slice_range(name, data, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        check_name(name)
        with self._lock:
            data = self._objects.get(name)
        if data is None:
            raise ObjectNotFound(f"object {name!r} not found in {self.location}")
        return ObjectInfo(name, len(data))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        with self._lock:
            found = [
                ObjectInfo(n, len(d)) for n, d in self._objects.items() if n.startswith(prefix)
            ]
        yield from found

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            self._objects.pop(name, None)

    def close(self) -> None:
        pass


def _parents(name: str) -> list[str]:
    """``a/b/c`` -> ``['a', 'a/b']``."""
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
