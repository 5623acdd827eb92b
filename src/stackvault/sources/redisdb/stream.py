"""The logical stream format of a Redis backup (`keys.svredis`): records and a checked
reader."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

from stackvault.errors import (
    SourceCorrupt,
)
from stackvault.sources.base import (
    GeneratorReader,
)

# --- the logical stream format ----------------------------------------------------------------
#
# A logical backup is one artifact, `keys.svredis`: the magic bytes then records, each a tag
# byte and big-endian fields:
#
#   magic  b"SVREDIS\x01"                                       (format version 1)
#   b"M"   u32 length, JSON    first record: {"format": 1, "redis_version", "databases",
#                              "created" (Unix time)}
#   b"D"   u32 db              the following keys belong to this database
#   b"K"   u32 key length, key, i64 PTTL in ms at backup time (-1: no expiry),
#          u64 payload length, payload (the server's DUMP of the key, with its own CRC64)
#   b"E"   u32 length, JSON    last record: {"keys": {"<db>": count}}; a stream without it
#                              is truncated and refused
#
# Nothing follows "E". Keys appear at most once; a database may have no keys (D then D or E).

MAGIC = b"SVREDIS\x01"
FORMAT = 1
_U32 = struct.Struct(">I")
_KEY_FIXED = struct.Struct(">qQ")


def _json_record(tag: bytes, obj: Any) -> bytes:
    data = json.dumps(obj, sort_keys=True).encode()
    return tag + _U32.pack(len(data)) + data


def _key_record(key: bytes, pttl: int, payload: bytes) -> bytes:
    return (b"K" + _U32.pack(len(key)) + key + _KEY_FIXED.pack(pttl, len(payload)) + payload)


class _Reader:
    """Parses a logical stream (see the format above) from a binary file object."""

    def __init__(self, f: BinaryIO, what: str) -> None:
        self.f = f
        self.what = what

    def _exact(self, n: int) -> bytes:
        chunks = []
        left = n
        while left:
            chunk = self.f.read(min(left, 1 << 20))
            if not chunk:
                raise SourceCorrupt(f"{self.what} is truncated",
                                    hint="use another snapshot")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _json(self) -> Any:
        (n,) = _U32.unpack(self._exact(4))
        try:
            return json.loads(self._exact(n))
        except ValueError as e:
            raise SourceCorrupt(f"{self.what}: bad metadata record: {e}") from e

    def records(self) -> Iterator[tuple[str, Any]]:
        """("meta", dict), ("db", int), ("key", (key, pttl, payload)), ("end", dict)."""
        if self._exact(len(MAGIC)) != MAGIC:
            raise SourceCorrupt(f"{self.what} is not a StackVault Redis stream (bad magic)")
        tag = self._exact(1)
        if tag != b"M":
            raise SourceCorrupt(f"{self.what}: no metadata record")
        meta = self._json()
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SourceCorrupt(f"{self.what}: unknown format {meta!r:.80}",
                                hint="restore it with the StackVault version that wrote it")
        yield "meta", meta
        while True:
            tag = self._exact(1)
            if tag == b"D":
                yield "db", _U32.unpack(self._exact(4))[0]
            elif tag == b"K":
                (klen,) = _U32.unpack(self._exact(4))
                key = self._exact(klen)
                pttl, plen = _KEY_FIXED.unpack(self._exact(_KEY_FIXED.size))
                yield "key", (key, pttl, self._exact(plen))
            elif tag == b"E":
                yield "end", self._json()
                if self.f.read(1):
                    raise SourceCorrupt(f"{self.what}: data after the end record")
                return
            else:
                raise SourceCorrupt(f"{self.what}: unknown record {tag!r}")


def _stream_of(chunks: Iterator[bytes]) -> BinaryIO:
    return io.BufferedReader(GeneratorReader(chunks), buffer_size=1 << 20)


