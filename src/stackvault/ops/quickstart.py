"""`stackvault quickstart`: a small but real RAG stack from embedded stores, backed up, damaged,
restored and verified. No server, no network.

The stack: a folder of source documents; a SQLite database of documents and their chunks; a
Qdrant collection (local mode) and a ChromaDB collection (persistent folder) holding one
embedding per chunk. Embeddings are deterministic synthetic vectors (hashed words), so the
quickstart needs no model; searches still find chunks that share words with the query.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackvault.errors import UsageError

DIM = 64
COLLECTION = "chunks"
WORDS = ("vector", "index", "chunk", "embedding", "query", "answer", "model", "context",
         "retrieval", "backup", "restore", "document", "section", "paragraph", "token",
         "latency", "cache", "bucket", "cluster", "replica", "shard", "postgres", "redis",
         "qdrant", "chroma", "minio", "prompt", "rerank", "score", "recall", "precision",
         "drill", "snapshot", "schedule", "retention")
TOPICS = ("Backups", "Restores", "Retrieval", "Embeddings", "Operations", "Storage")


def embed(text: str) -> list[float]:
    """A deterministic unit vector for `text`: the sum of one pseudo-random vector per word."""
    acc = [0.0] * DIM
    for word in text.lower().split():
        seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
        rnd = random.Random(seed)
        for i in range(DIM):
            acc[i] += rnd.uniform(-1.0, 1.0)
    norm = math.sqrt(sum(x * x for x in acc)) or 1.0
    return [x / norm for x in acc]


@dataclass
class Chunk:
    id: int
    doc_id: int
    ord: int
    text: str

    @property
    def vector(self) -> list[float]:
        return embed(self.text)


@dataclass
class Stack:
    """Where the quickstart stack lives, and what it holds."""

    root: Path
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    @property
    def db(self) -> Path:
        return self.root / "app.db"

    @property
    def qdrant(self) -> Path:
        return self.root / "qdrant"

    @property
    def chroma(self) -> Path:
        return self.root / "chroma"


def _need(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise UsageError(f"the quickstart's stack needs {module}, which is not installed",
                         hint=f"pip install 'stackvault[{extra}]' (README: set-up command "
                              "one)") from None


def build_stack(root: Path, *, documents: int = 24, seed: int = 11) -> Stack:
    """Write the source documents, the SQLite database and both vector collections."""
    qdrant_client = _need("qdrant_client", "qdrant")
    chromadb = _need("chromadb", "chroma")
    stack = Stack(root)
    rnd = random.Random(seed)
    stack.sources.mkdir(parents=True)
    with closing(sqlite3.connect(stack.db)) as con:
        con.executescript("""
            PRAGMA journal_mode = wal;
            CREATE TABLE documents (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL,
                                    title TEXT NOT NULL, sha256 TEXT NOT NULL);
            CREATE TABLE chunks (id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL
                                 REFERENCES documents(id), ord INTEGER NOT NULL,
                                 text TEXT NOT NULL);
            CREATE INDEX chunks_doc ON chunks (doc_id, ord);
        """)
        next_chunk = 1
        for d in range(1, documents + 1):
            title = f"{TOPICS[d % len(TOPICS)]} note {d}"
            paragraphs = [" ".join(rnd.choices(WORDS, k=rnd.randint(18, 40)))
                          for _ in range(rnd.randint(3, 8))]
            body = f"# {title}\n\n" + "\n\n".join(paragraphs) + "\n"
            path = stack.sources / f"note-{d:03d}.md"
            path.write_text(body, encoding="utf-8")
            con.execute("INSERT INTO documents VALUES (?, ?, ?, ?)",
                        (d, path.name, title, hashlib.sha256(body.encode()).hexdigest()))
            for o, text in enumerate(paragraphs):
                chunk = Chunk(next_chunk, d, o, text)
                stack.chunks.append(chunk)
                con.execute("INSERT INTO chunks VALUES (?, ?, ?, ?)",
                            (chunk.id, d, o, text))
                next_chunk += 1
        con.commit()
    (stack.sources / "settings.env").write_text("EMBEDDING_DIM=64\nCHUNK_SIZE=512\n")

    models = qdrant_client.models
    client = qdrant_client.QdrantClient(path=str(stack.qdrant))
    try:
        client.create_collection(COLLECTION, vectors_config=models.VectorParams(
            size=DIM, distance=models.Distance.COSINE))
        client.upsert(COLLECTION, points=[
            models.PointStruct(id=c.id, vector=c.vector,
                               payload={"doc_id": c.doc_id, "ord": c.ord, "text": c.text})
            for c in stack.chunks])
    finally:
        client.close()

    chroma = chromadb.PersistentClient(path=str(stack.chroma))
    col = chroma.create_collection(COLLECTION, embedding_function=None,
                                   metadata={"hnsw:space": "cosine"})
    col.add(ids=[str(c.id) for c in stack.chunks],
            embeddings=[c.vector for c in stack.chunks],
            documents=[c.text for c in stack.chunks],
            metadatas=[{"doc_id": c.doc_id, "ord": c.ord} for c in stack.chunks])
    return stack


def write_config(stack: Stack, repo: Path, password_file: Path) -> Path:
    """The quickstart's stackvault.yaml (the password lives in a 0600 file next to it)."""
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    path = stack.root.parent / "stackvault.yaml"
    path.write_text(f"""\
# Written by `stackvault quickstart`: a RAG stack of embedded stores.
version: 1
repository:
  location: {repo}
  password_file: {password_file}
components:
  app_db:
    type: sqlite
    path: {stack.db}
    targets: {{rto: 1m, rpo: 24h}}
  vectors:
    type: qdrant
    path: {stack.qdrant}
    depends_on: [app_db]
  chroma:
    type: chroma
    path: {stack.chroma}
    depends_on: [app_db]
  sources:
    type: files
    paths: [{stack.sources}]
""", encoding="utf-8")
    return path


# --- what the user would look at ------------------------------------------------------------


def observe(stack: Stack) -> dict[str, Any]:
    """A content summary of every store, to compare before damage and after the restore."""
    import chromadb
    import qdrant_client

    out: dict[str, Any] = {}
    with closing(sqlite3.connect(stack.db)) as con:
        out["sqlite"] = hashlib.sha256(repr([
            con.execute("SELECT * FROM documents ORDER BY id").fetchall(),
            con.execute("SELECT * FROM chunks ORDER BY id").fetchall()]).encode()).hexdigest()
    probe = stack.chunks[len(stack.chunks) // 2]
    client = qdrant_client.QdrantClient(path=str(stack.qdrant))
    try:
        if client.collection_exists(COLLECTION):
            out["qdrant_points"] = client.count(COLLECTION, exact=True).count
            hits = client.query_points(COLLECTION, query=probe.vector, limit=3).points
            out["qdrant_search"] = [h.id for h in hits]
        else:
            out["qdrant_points"], out["qdrant_search"] = 0, []
    finally:
        client.close()
    chroma = chromadb.PersistentClient(path=str(stack.chroma))
    names = [getattr(c, "name", c) for c in chroma.list_collections()]
    if COLLECTION in names:
        col: Any = chroma.get_collection(COLLECTION, embedding_function=None)
        out["chroma_records"] = col.count()
        res = col.query(query_embeddings=[probe.vector], n_results=3)
        out["chroma_search"] = res["ids"][0]
    else:
        out["chroma_records"], out["chroma_search"] = 0, []
    files = sorted(p for p in stack.sources.rglob("*") if p.is_file())
    out["files"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return out


def damage(stack: Stack) -> list[str]:
    """The "disaster": rows, points and a whole collection lost, a file deleted."""
    import chromadb
    import qdrant_client

    with closing(sqlite3.connect(stack.db)) as con:
        con.execute("DELETE FROM chunks WHERE id % 3 = 0")
        con.commit()
    client = qdrant_client.QdrantClient(path=str(stack.qdrant))
    try:
        ids: list[Any] = [c.id for c in stack.chunks if c.id % 2 == 0]
        client.delete(COLLECTION, points_selector=qdrant_client.models.PointIdsList(points=ids))
    finally:
        client.close()
    chromadb.PersistentClient(path=str(stack.chroma)).delete_collection(COLLECTION)
    victim = sorted(stack.sources.glob("note-*.md"))[0]
    victim.unlink()
    return ["SQLite: a third of the chunks deleted", "Qdrant: half of the points deleted",
            "ChromaDB: the collection dropped", f"files: {victim.name} deleted"]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0
