"""Blob encoding (compress + encrypt) and the pack file format: blobs, encrypted header, length."""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import blake3
import zstandard

from stackvault.errors import IntegrityError
from stackvault.repo.crypto import Crypto

DATA = 0
TREE = 1
BLOB_TYPES = {DATA: "data", TREE: "tree"}

_ENTRY = struct.Struct("<BII32s")  # type, stored length, raw length, id
_TRAILER = struct.Struct("<I")
HEADER_AAD = b"stackvault:packheader"

FLAG_RAW = 0
FLAG_ZSTD = 1
_SAMPLE = 64 * 1024
_MIN_GAIN = 0.98  # keep compression only if it saves at least 2%


@dataclass(frozen=True)
class PackEntry:
    """Where one blob lives inside a pack."""

    id: bytes
    type: int
    offset: int
    length: int  # stored (encrypted) length
    raw_length: int  # plaintext length


class BlobCodec:
    """Turns plaintext into stored blobs and back. Thread-safe (per-thread zstd contexts)."""

    def __init__(self, crypto: Crypto, level: int = 3, id_key: bytes | None = None) -> None:
        """``id_key``: the repository's blob id key. Without encryption nothing authenticates
        a blob, so decode then re-hashes the plaintext and compares it with the id."""
        self.crypto = crypto
        self.level = level
        self.id_key = id_key
        self._local = threading.local()

    def _cctx(self, level: int) -> zstandard.ZstdCompressor:
        attr = f"c{level}"
        c = getattr(self._local, attr, None)
        if c is None:
            c = zstandard.ZstdCompressor(level=level)
            setattr(self._local, attr, c)
        return c

    def _dctx(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def compress(self, data: bytes | memoryview) -> bytes:
        """Return ``flag || body``: zstd if it pays, else the raw bytes."""
        n = len(data)
        if n >= 4 * _SAMPLE:
            mid = n // 2
            sample = data[mid : mid + _SAMPLE]
            if len(self._cctx(1).compress(sample)) >= _MIN_GAIN * len(sample):
                return b"\x00" + data
        if n > 64:
            body = self._cctx(self.level).compress(data)
            if len(body) < _MIN_GAIN * n:
                return b"\x01" + body
        return b"\x00" + data

    def encode(self, blob_id: bytes, data: bytes | memoryview) -> bytes:
        return self.crypto.seal(self.compress(data), blob_id)

    def decode(self, blob_id: bytes, stored: bytes | memoryview, raw_length: int) -> bytes:
        payload = self.crypto.open(stored, blob_id, f"blob {blob_id.hex()}")
        if not payload:
            raise IntegrityError(f"blob {blob_id.hex()}: empty (damaged)")
        flag = payload[0]
        if flag == FLAG_RAW:
            out = payload[1:]
        elif flag == FLAG_ZSTD:
            try:
                out = self._dctx().decompress(payload[1:], max_output_size=raw_length)
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"blob {blob_id.hex()}: bad zstd frame ({exc})") from None
        else:
            raise IntegrityError(f"blob {blob_id.hex()}: unknown compression flag {flag}")
        if len(out) != raw_length:
            raise IntegrityError(
                f"blob {blob_id.hex()}: length {len(out)} does not match index ({raw_length})"
            )
        if (not self.crypto.encrypted and self.id_key is not None
                and blake3.blake3(out, key=self.id_key).digest() != blob_id):
            raise IntegrityError(f"blob {blob_id.hex()}: content does not match its id (damaged)")
        return out


class PackBuilder:
    """Accumulates encoded blobs of one type into a pack body; not thread-safe.

    Blobs are written into ``buf`` (a reusable buffer from a pool, or a fresh one), which
    grows only if a pack outgrows it.
    """

    def __init__(self, blob_type: int, buf: bytearray | None = None) -> None:
        self.type = blob_type
        self.buf = buf if buf is not None else bytearray()
        self.size = 0
        self.entries: list[PackEntry] = []

    def _write(self, data: bytes | memoryview) -> None:
        end = self.size + len(data)
        if end <= len(self.buf):
            self.buf[self.size:end] = data
        else:
            del self.buf[self.size:]
            self.buf += data
        self.size = end

    def add(self, blob_id: bytes, stored: bytes, raw_length: int) -> None:
        self.entries.append(PackEntry(blob_id, self.type, self.size, len(stored), raw_length))
        self._write(stored)

    def __len__(self) -> int:
        return self.size

    def finish(self, crypto: Crypto) -> tuple[str, memoryview, list[PackEntry]]:
        """Return (pack id, a view of the pack's bytes inside ``buf``, entries)."""
        header = b"".join(
            _ENTRY.pack(e.type, e.length, e.raw_length, e.id) for e in self.entries
        )
        sealed = crypto.seal(header, HEADER_AAD)
        self._write(sealed)
        self._write(_TRAILER.pack(len(sealed)))
        data = memoryview(self.buf)[: self.size]
        return blake3.blake3(data).hexdigest(), data, self.entries


def trailer_size() -> int:
    return _TRAILER.size


def parse_header(crypto: Crypto, pack_id: str, tail: bytes, pack_size: int) -> list[PackEntry]:
    """Parse a pack's entries from its tail bytes (which must include the whole header)."""
    if len(tail) < _TRAILER.size:
        raise IntegrityError(f"pack {pack_id}: too short")
    (hlen,) = _TRAILER.unpack(tail[-_TRAILER.size :])
    if hlen + _TRAILER.size > min(len(tail), pack_size):
        raise IntegrityError(f"pack {pack_id}: header length {hlen} out of range")
    sealed = tail[-_TRAILER.size - hlen : -_TRAILER.size]
    header = crypto.open(sealed, HEADER_AAD, f"pack {pack_id} header")
    if len(header) % _ENTRY.size:
        raise IntegrityError(f"pack {pack_id}: header has a partial entry")
    entries = []
    offset = 0
    for i in range(0, len(header), _ENTRY.size):
        btype, length, raw_length, bid = _ENTRY.unpack_from(header, i)
        if btype not in BLOB_TYPES:
            raise IntegrityError(f"pack {pack_id}: unknown blob type {btype}")
        entries.append(PackEntry(bid, btype, offset, length, raw_length))
        offset += length
    if offset + hlen + _TRAILER.size != pack_size:
        raise IntegrityError(f"pack {pack_id}: header does not cover the pack's blobs")
    return entries


def header_read_size(entries_guess: int = 64) -> int:
    """How many tail bytes to fetch to usually get a whole header in one read."""
    return _TRAILER.size + 28 + _ENTRY.size * entries_guess
