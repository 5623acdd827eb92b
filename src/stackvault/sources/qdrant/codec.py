"""Qdrant points as JSON lines: exact ids, float32 vectors in base64, digests, sample searches."""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

from stackvault.errors import SourceCorrupt
from stackvault.sources.base import Fingerprint

POINTS_FORMAT = "stackvault-qdrant-points"
MANIFEST_FORMAT = "stackvault-qdrant"
FORMAT_VERSION = 1
MANIFEST = "collections.json"
TOP = 5  # results per sample search
_F32 = np.dtype("<f4")
_MOD = 1 << 256


def points_artifact(index: int) -> str:
    """Artifact name of the points of the manifest's collection number `index` (names of
    collections can hold any character, so they never become artifact names)."""
    return f"points/{index:04d}.jsonl"


def _b64(a: Any) -> str:
    return base64.b64encode(np.asarray(a, dtype=_F32).tobytes()).decode("ascii")


def _f32(text: str) -> np.ndarray:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % 4:
        raise ValueError("float32 data of a length not a multiple of 4")
    return np.frombuffer(raw, dtype=_F32)


def encode_vectors(vector: Any) -> dict[str, dict[str, Any]]:
    """The vectors of a record as returned by the store -> {name: encoded}; the unnamed
    vector is named "". Dense: `{"f32": B64}`; multivector: `{"f32": B64, "rows": R}` (rows
    concatenated); sparse: `{"indices": [..], "f32": B64}` sorted by index."""
    if vector is None:
        return {}
    if not isinstance(vector, Mapping):
        vector = {"": vector}
    out: dict[str, dict[str, Any]] = {}
    for name, v in vector.items():
        if hasattr(v, "indices"):
            order = sorted(range(len(v.indices)), key=lambda i: v.indices[i])
            out[name] = {"indices": [int(v.indices[i]) for i in order],
                         "f32": _b64([v.values[i] for i in order])}
        elif len(v) and isinstance(v[0], list | tuple | np.ndarray):
            out[name] = {"f32": _b64(np.asarray(v, dtype=np.float64).ravel()), "rows": len(v)}
        else:
            out[name] = {"f32": _b64(v)}
    return out


def decode_vectors(enc: Mapping[str, Any], unnamed: bool) -> Any:
    """Encoded vectors -> what `PointStruct(vector=...)` takes (a list for a collection with
    one unnamed vector)."""
    from qdrant_client import models

    out: dict[str, Any] = {}
    for name, e in enc.items():
        values = _f32(e["f32"])
        if "indices" in e:
            indices = [int(i) for i in e["indices"]]
            if len(indices) != len(values):
                raise ValueError(f"sparse vector {name!r}: {len(indices)} indices, "
                                 f"{len(values)} values")
            out[name] = models.SparseVector(indices=indices, values=values.tolist())
        elif "rows" in e:
            rows = int(e["rows"])
            if rows <= 0 or len(values) % rows:
                raise ValueError(f"multivector {name!r}: {len(values)} values in {rows} rows")
            out[name] = values.reshape(rows, -1).tolist()
        else:
            out[name] = values.tolist()
    if unnamed and set(out) == {""}:
        return out[""]
    return out


def point_line(pid: Any, payload: Any, vectors: Mapping[str, Any]) -> bytes:
    """One point of a points stream (UTF-8 JSON, one line)."""
    return json.dumps({"id": pid, "payload": payload, "vector": vectors},
                      ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _canonical(pid: Any, payload: Any, vectors: Mapping[str, Any]) -> bytes:
    return json.dumps([pid, payload, vectors], sort_keys=True, ensure_ascii=True,
                      separators=(",", ":"), allow_nan=False).encode("ascii")


def _id_key(pid: Any) -> str:
    return hashlib.sha256(json.dumps(pid).encode()).hexdigest()


class CollectionDigest:
    """Order-independent digest of a collection's points, plus the sample points.

    `content`: the sum modulo 2**256 of the SHA-256 of each point's canonical JSON
    `[id, payload, vectors]` (keys sorted, ASCII, vectors as encoded by `encode_vectors`),
    as 64 hex digits: equal for the same points in any scroll order, memory O(1).
    Samples: the `samples` points whose id has the smallest SHA-256 of its JSON (a choice
    that depends only on the ids, so the live store and a restored copy pick the same ones).
    """

    def __init__(self, samples: int) -> None:
        self.points = 0
        self._sum = 0
        self._want = samples
        self._heap: list[tuple[str, int, Any, dict[str, Any]]] = []  # (-key, n, id, vectors)

    def add(self, pid: Any, payload: Any, vectors: dict[str, Any]) -> None:
        self.points += 1
        h = hashlib.sha256(_canonical(pid, payload, vectors)).digest()
        self._sum = (self._sum + int.from_bytes(h, "big")) % _MOD
        if self._want and vectors:
            key = _id_key(pid)
            item = (_neg(key), self.points, pid, vectors)
            if len(self._heap) < self._want:
                heapq.heappush(self._heap, item)
            elif item > self._heap[0]:
                heapq.heapreplace(self._heap, item)

    @property
    def content(self) -> str:
        return f"{self._sum:064x}"

    def samples(self) -> list[tuple[Any, dict[str, Any]]]:
        """(id, encoded vectors) of the sample points, smallest id hash first."""
        return [(pid, vec) for _, _, pid, vec in sorted(self._heap, reverse=True)]


def _neg(hexkey: str) -> str:
    """A string that sorts in reverse order of `hexkey` (a max-heap on a min-heap)."""
    return hexkey.translate(str.maketrans("0123456789abcdef", "fedcba9876543210"))


def answer(hits: Sequence[Any]) -> list[Any]:
    """The ids of a sample search's top TOP results (searched with limit TOP + 1), as a
    sorted list: a group of results tied (within 1e-6) with the first result beyond the top
    is left out, since which of them makes the cut depends on storage order."""
    top = list(hits[:TOP])
    if len(hits) > TOP:
        edge = float(hits[TOP].score)
        top = [h for h in top if abs(float(h.score) - edge) > 1e-6 * max(1.0, abs(edge))]
    return sorted((h.id for h in top), key=lambda i: (isinstance(i, str), str(i)))


def search_digest(results: Sequence[Any]) -> str:
    """SHA-256 over the JSON of `[[sample id, vector name, answer ids], ...]`."""
    return hashlib.sha256(json.dumps(list(results), sort_keys=True).encode()).hexdigest()


def fingerprint_of(collections: Mapping[str, Mapping[str, Any]]) -> Fingerprint:
    """Per collection NAME (its name in the backup): counts `points.NAME`; digests
    `content.NAME` (see CollectionDigest), `config.NAME` (SHA-256 of the canonical JSON of
    the configuration and payload indexes the store reports) and `search.NAME` (the answers
    of the sample searches, see `search_digest`)."""
    fp = Fingerprint()
    for name, c in collections.items():
        fp.counts[f"points.{name}"] = int(c["points"])
        fp.digests[f"content.{name}"] = str(c["content"])
        fp.digests[f"config.{name}"] = config_digest(c["config"], c["payload_schema"])
        fp.digests[f"search.{name}"] = search_digest(c["searches"])
    return fp


def config_digest(config: Any, payload_schema: Any) -> str:
    return hashlib.sha256(json.dumps([config, payload_schema], sort_keys=True,
                                     ensure_ascii=True).encode()).hexdigest()


# --- reading a points stream -------------------------------------------------------------------


def read_points(f: BinaryIO, what: str, collection: str
                ) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """(id, payload, encoded vectors) of each point of a points stream, checking its header
    and its end record (which must be the last line); raises SourceCorrupt."""
    header = _json(f.readline(), what, 1)
    if header.get("format") != POINTS_FORMAT or int(header.get("version", 0)) > FORMAT_VERSION:
        raise SourceCorrupt(f"{what} is not a version {FORMAT_VERSION} {POINTS_FORMAT} stream")
    if header.get("collection") != collection:
        raise SourceCorrupt(f"{what} holds collection {header.get('collection')!r}, the "
                            f"manifest says {collection!r}")
    n = 0
    line_no = 1
    while True:
        line = f.readline()
        line_no += 1
        if not line:
            raise SourceCorrupt(f"{what} ends after {n} points without its end record "
                                "(truncated)")
        rec = _json(line, what, line_no)
        if rec.get("end") is True:
            if int(rec.get("points", -1)) != n:
                raise SourceCorrupt(f"{what}: the end record counts {rec.get('points')} "
                                    f"points, the stream holds {n}")
            if f.read(1):
                raise SourceCorrupt(f"{what}: data after the end record")
            f.read()  # EOF: the artifact's own check against the snapshot
            return
        try:
            pid, payload, vectors = rec["id"], rec["payload"], rec["vector"]
        except KeyError as e:
            raise SourceCorrupt(f"{what} line {line_no}: no {e.args[0]!r}") from None
        if not (isinstance(pid, int) and not isinstance(pid, bool) or isinstance(pid, str)) \
                or not isinstance(payload, dict) or not isinstance(vectors, dict):
            raise SourceCorrupt(f"{what} line {line_no}: not a point")
        n += 1
        yield pid, payload, vectors


def _json(line: bytes, what: str, line_no: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as e:
        raise SourceCorrupt(f"{what} line {line_no} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise SourceCorrupt(f"{what} line {line_no} is not a JSON object")
    return value
