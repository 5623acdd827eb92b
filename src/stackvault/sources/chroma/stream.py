"""The chroma artifact format (framed pages of records) and the digests of a collection.

A collection's artifact (`collections/NNNN.svchroma`, NNNN its position in `index.json`):

    MAGIC  b"stackvault-chroma 1\\n"
    frame  kind (1 byte) + payload length (u32, big endian) + payload, where kind is
      b"H"  header, JSON: {"format", "collection": {"name", "id", "metadata", "configuration",
            "schema"}, "count"} (count: records when the backup started; informative)
      b"P"  a page of records: a u32 length + JSON {"ids", "documents", "metadatas", "uris",
            "dim"}, then the embeddings as float32 little endian, len(ids) * dim values
      b"E"  trailer, JSON: {"records", "digest", "embeddings", "samples"}; a stream without
            it is truncated and refused
    then end of stream.

JSON is UTF-8 (`ensure_ascii=False`); metadata values keep their JSON type (str, int, float,
bool, null); a chromadb SparseVector is stored as its `to_dict()` form, which chromadb turns
back into one. `index.json` lists the collections in order: {"format", "chromadb",
"collections": [{"name", "artifact", "records"}]}.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from stackvault.errors import SourceCorrupt

MAGIC = b"stackvault-chroma 1\n"
FORMAT = "stackvault-chroma"
INDEX = "index.json"
_U32 = struct.Struct(">I")
_MOD = 1 << 256
MAX_FRAME = 1 << 31


def artifact_name(i: int) -> str:
    return f"collections/{i:04d}.svchroma"


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      default=_json_default).encode("utf-8")


def _json_default(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):  # chromadb.SparseVector
        return to_dict()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"metadata value of type {type(value).__name__} cannot be stored")


def frame(kind: bytes, payload: bytes) -> bytes:
    return kind + _U32.pack(len(payload)) + payload


def page_frame(ids: list[str], documents: list[Any], metadatas: list[Any], uris: list[Any],
               emb: np.ndarray) -> bytes:
    dim = int(emb.shape[1]) if emb.ndim == 2 else 0
    head = dumps({"ids": ids, "documents": documents, "metadatas": metadatas, "uris": uris,
                  "dim": dim})
    body = emb.astype("<f4", copy=False).tobytes() if dim else b""
    return frame(b"P", _U32.pack(len(head)) + head + body)


class Reader:
    """Frames of one collection artifact, checked for shape (the sink checks the bytes)."""

    def __init__(self, f: BinaryIO, what: str) -> None:
        self.f = f
        self.what = what

    def _exact(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise SourceCorrupt(f"{self.what} is truncated")
        return data

    def frames(self) -> Iterator[tuple[str, Any]]:
        """("header", dict), ("page", (ids, documents, metadatas, uris, embeddings)) ...,
        ("end", dict); raises SourceCorrupt for anything else."""
        if self.f.read(len(MAGIC)) != MAGIC:
            raise SourceCorrupt(f"{self.what} is not a stackvault chroma stream")
        seen_header = False
        while True:
            kind = self.f.read(1)
            if not kind:
                raise SourceCorrupt(f"{self.what} is truncated (no end record)")
            (n,) = _U32.unpack(self._exact(4))
            if n > MAX_FRAME:
                raise SourceCorrupt(f"{self.what}: a record claims {n} bytes")
            payload = self._exact(n)
            try:
                if kind == b"H" and not seen_header:
                    seen_header = True
                    yield "header", json.loads(payload)
                elif kind == b"P" and seen_header:
                    yield "page", _page(payload)
                elif kind == b"E" and seen_header:
                    end = json.loads(payload)
                    if self.f.read(1):
                        raise SourceCorrupt(f"{self.what}: data after the end record")
                    yield "end", end
                    return
                else:
                    raise SourceCorrupt(f"{self.what}: unexpected record {kind!r}")
            except (ValueError, KeyError, TypeError) as e:
                raise SourceCorrupt(f"{self.what}: malformed {kind!r} record ({e})") from None


def _page(payload: bytes) -> tuple[list[str], list[Any], list[Any], list[Any], np.ndarray]:
    (n,) = _U32.unpack(payload[:4])
    head = json.loads(payload[4:4 + n])
    ids, dim = head["ids"], int(head["dim"])
    body = payload[4 + n:]
    if len(body) != len(ids) * dim * 4 or not all(
            len(head[k]) == len(ids) for k in ("documents", "metadatas", "uris")):
        raise ValueError("sizes do not match")
    emb = np.frombuffer(body, dtype="<f4").reshape(len(ids), dim) if dim else \
        np.zeros((len(ids), 0), dtype="<f4")
    return ids, head["documents"], head["metadatas"], head["uris"], emb


# --- digests ----------------------------------------------------------------------------------


def space_of(configuration: Any, metadata: Any) -> str:
    """The distance function: hnsw/spann configuration first, then legacy metadata."""
    for key in ("hnsw", "spann"):
        part = (configuration or {}).get(key) or {}
        if isinstance(part, dict) and part.get("space"):
            return str(part["space"])
    return str((metadata or {}).get("hnsw:space") or "l2")


def settings_digest(metadata: Any, configuration: Any) -> str:
    """The collection's metadata and index configuration (no embedding function: the
    adapter never uses one, and its representation differs between client modes)."""
    conf = {k: v for k, v in (configuration or {}).items()
            if k not in ("embedding_function",) and v is not None}
    return hashlib.sha256(b"stackvault-chroma-settings-v1\n"
                          + dumps({"metadata": metadata or None, "configuration": conf})
                          ).hexdigest()


def stable(value: Any) -> Any:
    """`value` with every float replaced by ["f", its mantissa rounded to 24 bits]: chromadb
    stores metadata floats as float64 but may return them one ulp off, differently on every
    write; rounding 29 bits away makes that invisible except within 2**-29 of a rounding
    edge. The exponent is kept, and so are the types (int, float and bool stay apart)."""
    if isinstance(value, float):
        if math.isnan(value):
            return ["f", "nan"]
        bits = struct.unpack("<Q", struct.pack("<d", abs(value)))[0]
        return ["f", ("-" if math.copysign(1.0, value) < 0 else "")
                + format((bits + (1 << 28)) >> 29, "x")]
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [stable(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    return stable(to_dict()) if callable(to_dict) else value


class Digest:
    """Order-independent digests of a collection's records (see `ChromaSource`): the sum
    modulo 2**256 of one SHA-256 per record, so no memory per record is needed."""

    def __init__(self, space: str) -> None:
        self.exact = space != "cosine"
        self.records = 0
        self._content = 0
        self._emb = 0

    def add(self, ids: list[str], documents: list[Any], metadatas: list[Any], uris: list[Any],
            emb: np.ndarray) -> None:
        e32 = np.asarray(emb, dtype="<f4")
        sig = e32 if self.exact else np.sign(e32).astype(np.int8)
        for i, rid in enumerate(ids):
            self.records += 1
            h = hashlib.sha256(dumps([rid, documents[i], stable(metadatas[i]), uris[i]]))
            self._content = (self._content + int.from_bytes(h.digest(), "big")) % _MOD
            key = rid.encode("utf-8")
            row = sig[i].tobytes() if sig.ndim == 2 else b""
            h = hashlib.sha256(_U32.pack(len(key)) + key + row)
            self._emb = (self._emb + int.from_bytes(h.digest(), "big")) % _MOD

    def content(self) -> str:
        return hashlib.sha256(b"stackvault-chroma-records-v1\n%d\n" % self.records
                              + self._content.to_bytes(32, "big")).hexdigest()

    def embeddings(self) -> str:
        kind = b"f32" if self.exact else b"sign"
        return hashlib.sha256(b"stackvault-chroma-embeddings-v1 " + kind + b"\n%d\n"
                              % self.records + self._emb.to_bytes(32, "big")).hexdigest()
