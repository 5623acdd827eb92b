"""Checks of a collection being restored: records read back, and sample queries answered again.

A sample query (recorded at backup time: a stored record's embedding, the ids and distances
of its top k) passes when the restored collection answers it the same, or else when every id
it answered is restored with an embedding at the recorded distance from the query (recomputed
here with the collection's distance function). chromadb's HNSW search is approximate: an
index built from the same records in another order may answer another top k, so agreement of
the index is accepted but not required; the restored records' values are what must match.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from stackvault.errors import SourceCorrupt
from stackvault.sources.chroma.stream import dumps

EMB_RTOL = 1e-5  # per vector: max |restored - backed up| <= EMB_RTOL * max |backed up|
META_RTOL = 1e-12  # metadata floats
DIST_TOL = 1e-4  # sample query distances, relative to max(1, |distance|)

Page = tuple[list[str], list[Any], list[Any], list[Any], np.ndarray]


def check_page(page: Page, back: Any, what: str) -> Page:
    """Compare one page as written with what chromadb returns for its ids: documents,
    metadatas and uris equal, embeddings within EMB_RTOL. Returns the page as read back
    (in the written order), for the digests."""
    ids, docs, metas, uris, emb = page
    pos = {rid: i for i, rid in enumerate(back["ids"])}
    missing = [rid for rid in ids if rid not in pos]
    if missing or len(pos) != len(ids):
        raise SourceCorrupt(f"{what}: {len(missing)} records were not stored "
                            f"(e.g. {missing[:3]})")
    order = [pos[rid] for rid in ids]

    def col(key: str) -> list[Any]:
        value = back.get(key)
        return [value[i] for i in order] if value is not None else [None] * len(ids)

    b_docs, b_uris = col("documents"), col("uris")
    b_metas = [m or None for m in col("metadatas")]
    for i, rid in enumerate(ids):
        if b_docs[i] != docs[i] or b_uris[i] != uris[i] \
                or not _close(_plain(b_metas[i]), _plain(metas[i] or None)):
            raise SourceCorrupt(f"{what}: record {rid!r} reads back differently")
    raw = back.get("embeddings")
    b_emb = (np.asarray(raw, dtype="<f4").reshape(len(ids), -1)[order] if raw is not None
             and len(ids) else np.zeros((len(ids), 0), dtype="<f4"))
    if b_emb.shape != emb.shape:
        raise SourceCorrupt(f"{what}: embeddings read back with shape {b_emb.shape}, "
                            f"expected {emb.shape}")
    if emb.shape[1]:
        err = np.abs(b_emb.astype(np.float64) - emb).max(axis=1)
        scale = np.abs(emb.astype(np.float64)).max(axis=1)
        bad = np.nonzero(err > EMB_RTOL * scale)[0]
        if len(bad):
            raise SourceCorrupt(f"{what}: the embedding of {ids[int(bad[0])]!r} reads back "
                                f"differently (by {float(err[bad[0]]):.3g})")
    return ids, b_docs, b_metas, b_uris, b_emb


def _plain(value: Any) -> Any:
    """Metadata as JSON-like values (a SparseVector as its dict)."""
    return json.loads(dumps(value))


def _close(a: Any, b: Any) -> bool:
    """Equal, with the same types, except floats within META_RTOL (chromadb may return a
    metadata float one float64 ulp off)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=META_RTOL) or (a != a and b != b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _near(want: float, got: float) -> bool:
    return abs(want - got) <= DIST_TOL * max(1.0, abs(want))


def same_answer(want_ids: list[str], want_d: list[float], got_ids: list[str],
                got_d: list[float]) -> bool:
    """Whether a query answers the same: the same number of results, distances equal rank by
    rank within DIST_TOL, and the same ids, except that results tied (within DIST_TOL) with
    the last one may differ (which of equally distant records comes first is arbitrary)."""
    if len(want_ids) != len(got_ids):
        return False
    if not all(_near(a, b) for a, b in zip(want_d, got_d, strict=True)):
        return False
    if not want_d:
        return True
    edge = want_d[-1] - DIST_TOL * max(1.0, abs(want_d[-1]))
    sure_want = {i for i, d in zip(want_ids, want_d, strict=True) if d < edge}
    sure_got = {i for i, d in zip(got_ids, got_d, strict=True) if d < edge}
    return sure_want == sure_got


def distances(space: str, query: Any, emb: Any) -> np.ndarray | None:
    """chromadb's distance from `query` to each row of `emb`, in float64: `l2` the squared
    euclidean distance, `ip` 1 - dot product, `cosine` 1 - cosine similarity (a zero vector
    at distance 1, as hnswlib has it). None for a distance function not known here."""
    q = np.asarray(query, dtype=np.float64)
    e = np.asarray(emb, dtype=np.float64).reshape(-1, len(q))
    if space == "l2":
        return np.asarray(((e - q) ** 2).sum(axis=1))
    if space == "ip":
        return np.asarray(1.0 - e @ q)
    if space == "cosine":
        norms = np.linalg.norm(e, axis=1) * np.linalg.norm(q)
        return np.asarray(1.0 - (e @ q) / np.where(norms > 0, norms, 1.0))
    return None


def exact_answer(col: Any, space: str, sample: dict[str, Any]) -> bool:
    """Whether every id the backup answered is in `col`, at the recorded distance (within
    DIST_TOL) from the query, recomputed from its restored embedding."""
    want = list(sample["ids"])
    got = col.get(ids=want, include=["embeddings"])
    emb = got.get("embeddings")
    have = dict(zip(got["ids"], emb if emb is not None else [None] * len(got["ids"]),
                    strict=True))
    recorded = [float(x) for x in sample["distances"]]
    if len(recorded) != len(want) or any(have.get(rid) is None for rid in want):
        return False
    d = distances(space, sample["embedding"], [have[rid] for rid in want])
    return d is not None and all(_near(a, float(b)) for a, b in zip(recorded, d, strict=True))


def check_samples(col: Any, samples: list[dict[str, Any]], space: str, what: str) -> None:
    """Ask the restored collection the backup's sample queries; SourceCorrupt unless each is
    answered the same (`same_answer`) or, failing that, passes `exact_answer`. The first
    alone is not a rule: chromadb's HNSW search is approximate, and an index built from the
    same records in another order may find another top k (measured: 100,000 random
    384-dimensional vectors). The records' values are what must be the same, not the index's
    path to them."""
    for s in samples:
        k = len(s["ids"])
        if not k:
            continue
        res = col.query(query_embeddings=[s["embedding"]], n_results=k, include=["distances"])
        got_ids = list(res["ids"][0])
        got_d = [float(x) for x in res["distances"][0]]
        if not same_answer(list(s["ids"]), [float(x) for x in s["distances"]], got_ids, got_d) \
                and not exact_answer(col, space, s):
            raise SourceCorrupt(f"{what}: a sample query's records {s['ids']} are not all "
                                f"there at the distances the backup found ({space} distance; "
                                f"the restored index answers {got_ids})")
