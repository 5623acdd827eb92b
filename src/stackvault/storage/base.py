"""The object-store interface every storage backend implements, with its guarantees."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its name (relative, '/'-separated) and size in bytes."""

    name: str
    size: int


@runtime_checkable
class Storage(Protocol):
    """A flat namespace of immutable objects addressed by '/'-separated names.

    Names are relative (``data/ab/ab12...``), never start with '/', never contain '..'.
    Objects are immutable: there is no overwrite. The repository layer only ever writes
    objects whose name is derived from their content, or unique random names (locks),
    so put-if-absent is the only write it needs.

    Guarantees every backend must give (checked by tests/conformance):

    - ``put`` is atomic: a reader sees either no object or the whole object, never a
      prefix, also if the writer is killed mid-way. It is durable when it returns
      (fsync on local disk; a 200 from S3). If the name exists it raises ObjectExists
      and leaves the existing object untouched (put-if-absent).
    - ``get`` returns exactly ``length`` bytes from ``offset`` (``length=None``: to the end)
      or raises ObjectNotFound; a range past the end raises StorageError.
    - ``list`` yields every object whose name starts with ``prefix`` that existed before
      the call started (read-after-write and list-after-write consistency). Order is not
      specified. Temporary files of in-flight puts are never listed.
    - ``delete`` is idempotent: deleting a missing object is not an error.
    - Methods raise TransientStorageError for failures worth retrying (timeouts,
      connection resets, 5xx/throttling), StorageFull when out of space, and StorageError
      otherwise. Retrying is the job of the RetryStorage wrapper, not of backends.
    - Every method may be called concurrently from several threads.
    """

    @property
    def location(self) -> str:
        """A printable description of where the objects live, with secrets removed."""
        ...

    def put(self, name: str, data: bytes | memoryview) -> None: ...

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, name: str) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, name: str) -> None: ...

    def close(self) -> None: ...


def check_name(name: str) -> str:
    """Reject names that could escape the namespace; return the name unchanged."""
    from stackvault.errors import StorageError

    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise StorageError(f"invalid object name {name!r}")
    return name
