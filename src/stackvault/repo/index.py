"""The blob index: which pack holds each blob, in memory and as index documents."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from stackvault.repo.pack import PackEntry


@dataclass(frozen=True)
class BlobLocation:
    pack: str
    type: int
    offset: int
    length: int
    raw_length: int


class Index:
    """Union of index documents plus what this process stored. Thread-safe for adds."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, BlobLocation] = {}
        self._packs: dict[str, int] = {}  # pack id -> size
        self._lock = threading.Lock()

    def add_pack(self, pack_id: str, size: int, entries: Iterable[PackEntry]) -> None:
        with self._lock:
            self._packs[pack_id] = size
            for e in entries:
                # Keep the first location seen; any copy is valid.
                self._blobs.setdefault(
                    e.id, BlobLocation(pack_id, e.type, e.offset, e.length, e.raw_length)
                )

    def get(self, blob_id: bytes) -> BlobLocation | None:
        return self._blobs.get(blob_id)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    @property
    def packs(self) -> dict[str, int]:
        return self._packs

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        return iter(self._blobs.items())


def encode_index(packs: list[tuple[str, int, list[PackEntry]]], supersedes: list[str]) -> bytes:
    doc = {
        "packs": [
            {
                "id": pid,
                "size": size,
                "blobs": [[e.id.hex(), e.type, e.offset, e.length, e.raw_length] for e in entries],
            }
            for pid, size, entries in packs
        ],
        "supersedes": supersedes,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_index(raw: bytes) -> list[tuple[str, int, list[PackEntry]]]:
    doc = json.loads(raw)
    out = []
    for p in doc["packs"]:
        entries = [
            PackEntry(bytes.fromhex(b[0]), int(b[1]), int(b[2]), int(b[3]), int(b[4]))
            for b in p["blobs"]
        ]
        out.append((p["id"], int(p["size"]), entries))
    return out
