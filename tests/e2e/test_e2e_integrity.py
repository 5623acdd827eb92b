"""Integrity across stores, end to end: a stack with planted damage in real PostgreSQL,
SQLite, Redis, Qdrant (local mode), ChromaDB (a folder) and SeaweedFS (orphan and missing
vectors, dangling and orphan objects, broken mappings, stuck jobs, a custom rule).
`integrity check` finds exactly what was planted, `integrity fix` shows the plan and changes
nothing, `fix --apply` repairs exactly the fixable part after a safety snapshot and records
it in the audit log, a second check finds only what cannot be fixed automatically, and
restoring the safety snapshot brings the damage back. Then `reset soft` and `audit verify`."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from e2e_support import PASSWORD, SV, base_env

from support.postgres_server import DEBIAN_PG15, PgServer, postgres
from support.redis_server import RedisServer, start, stop
from support.seaweed import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with postgres(DEBIAN_PG15) as server:
        yield server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start(tmp_path / "redis")
    yield server
    stop(server)


def s3(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, verify=False, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(region_name="us-east-1", s3={"addressing_style": "path"}))


@pytest.fixture
def damaged(tmp_path: Path, pg: PgServer, redis_server: RedisServer, seaweed: str
            ) -> tuple[SV, Path, str, RedisServer, Any, str]:
    db = f"rag_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {db}")
    with psycopg.connect(pg.dsn(db), autocommit=True) as c:
        c.execute("""
            CREATE TABLE documents (id int PRIMARY KEY, object_key text);
            CREATE TABLE chunks (id int PRIMARY KEY, doc_id int);
            CREATE TABLE jobs (id int PRIMARY KEY, state text, updated_at timestamptz,
                               retries int DEFAULT 0, error text);
            CREATE TABLE users (id int PRIMARY KEY, name text);
            INSERT INTO users VALUES (1, 'admin');
            INSERT INTO documents VALUES (1, 'a.pdf'), (2, 'b.pdf'), (3, 'gone.pdf');
            INSERT INTO chunks SELECT g, 1 + g % 3 FROM generate_series(1, 10) g;
            INSERT INTO chunks VALUES (11, 99);                         -- custom rule: no doc
            INSERT INTO jobs VALUES
                (1, 'processing', now() - interval '2 hours', 0, NULL),  -- stuck
                (2, 'processing', now() - interval '3 hours', 4, NULL),  -- stuck
                (3, 'processing', now() - interval '1 minute', 0, NULL), -- running
                (4, 'pending', now() - interval '5 hours', 0, NULL);     -- waiting
        """)
    sq = tmp_path / "queue.db"
    con = sqlite3.connect(sq)
    con.executescript("""
        CREATE TABLE tasks (id INTEGER PRIMARY KEY, state TEXT, updated_at TEXT);
        INSERT INTO tasks VALUES (1, 'processing', datetime('now', '-3 hours')),
                                 (2, 'processing', datetime('now', '-1 minutes')),
                                 (3, 'done', datetime('now', '-9 hours'));
    """)
    con.commit()
    con.close()
    r = redis_server.client()
    for i in range(1, 12):
        if i not in (5, 6, 7):  # missing vectors
            r.set(f"chunkvec:{i}", f"vec-{i}")
    r.set("chunkvec:900", "orphan")
    r.set("chunkvec:901", "orphan")
    for m in (1, 2, 3, 4):
        r.set(f"manager:{m}:owner", f"user{m}")
    r.set("manager:1:dataset", "datasets/1.parquet")
    r.set("manager:2:dataset", "datasets/2.parquet")  # 3 and 4 are broken
    vectors(tmp_path)
    client = s3(seaweed)
    bucket = f"t-rag-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    for key in ("uploads/a.pdf", "uploads/b.pdf", "uploads/stray1.pdf", "uploads/stray2.pdf",
                "datasets/1.parquet", "datasets/2.parquet", "datasets/3.parquet"):
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    (tmp_path / "stackvault.yaml").write_text(f"""
version: 1
repository:
  location: {tmp_path / "repo"}
components:
  app-db:
    type: postgres
    host: 127.0.0.1
    port: {pg.port}
    databases: [{db}]
  queue:
    type: sqlite
    path: {sq}
  cache:
    type: redis
    url: {redis_server.url}
  qdrant:
    type: qdrant
    path: {tmp_path / "qdrant"}
  chroma:
    type: chroma
    path: {tmp_path / "chroma"}
  media:
    type: s3
    endpoint_url: {seaweed}
    buckets: [{bucket}]
    access_key_env: RAG_S3_ACCESS
    secret_key_env: RAG_S3_SECRET
integrity:
  reset_keep:
    app-db: [users]
  rules:
    - name: every chunk has a vector
      type: references
      source: {{component: app-db, sql: "SELECT id FROM chunks"}}
      target: {{component: cache, pattern: "chunkvec:{{id}}"}}
      delete_orphans: true
    - name: chunks have qdrant points
      type: references
      source: {{component: app-db, sql: "SELECT id FROM chunks"}}
      target: {{component: qdrant, collection: chunks}}
      delete_orphans: true
    - name: chunks have chroma records
      type: references
      source: {{component: app-db, sql: "SELECT id FROM chunks"}}
      target: {{component: chroma, collection: chunks}}
      delete_orphans: true
    - name: documents have their files
      type: references
      severity: warning
      source: {{component: app-db, sql: "SELECT object_key FROM documents"}}
      target: {{component: media, pattern: "uploads/{{id}}"}}
      delete_orphans: true
    - name: managers have datasets
      type: mapping
      component: cache
      pattern: "manager:{{id}}:owner"
      requires: "manager:{{id}}:dataset"
      relink: {{component: media, pattern: "datasets/{{id}}.parquet"}}
    - name: ingest jobs move on
      type: stuck_jobs
      component: app-db
      table: jobs
      older_than: 30m
      retries_column: retries
      message_column: error
    - name: queue tasks move on
      type: stuck_jobs
      component: queue
      table: tasks
      older_than: 1h
    - name: chunks belong to documents
      type: custom
      severity: warning
      component: app-db
      sql: SELECT id FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)
""")
    sv = SV(None, base_env(STACKVAULT_PASSWORD=PASSWORD,
                           STACKVAULT_CONFIG=str(tmp_path / "stackvault.yaml"),
                           RAG_S3_ACCESS=ACCESS_KEY, RAG_S3_SECRET=SECRET_KEY))
    sv.ok("init")
    return sv, tmp_path, db, redis_server, client, bucket


def vectors(root: Path) -> None:
    """Chunk vectors in Qdrant (local mode) and ChromaDB (a folder), each with planted orphans
    and missing ones. The clients are closed again: the CLI opens the folders itself."""
    import chromadb
    from qdrant_client import QdrantClient, models

    q = QdrantClient(path=str(root / "qdrant"))
    q.create_collection("chunks", vectors_config=models.VectorParams(
        size=4, distance=models.Distance.COSINE))
    ids = [i for i in range(1, 12) if i not in (8, 9)] + [700, 701, 702]
    q.upsert("chunks", points=[models.PointStruct(id=i, vector=[1.0, i, 0.5, -i],
                                                  payload={"chunk": i}) for i in ids])
    q.close()
    c = chromadb.PersistentClient(path=str(root / "chroma"))
    col = c.create_collection("chunks", embedding_function=None)
    ids = [i for i in range(1, 12) if i != 10] + [800]
    col.add(ids=[str(i) for i in ids], embeddings=[[1.0, float(i)] for i in ids])


def found(report: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for rule in report["rules"]:
        kinds: dict[str, list[str]] = {}
        for f in rule["findings"]:
            kinds.setdefault(f["kind"], []).append(f["id"])
        out[rule["name"]] = {k: sorted(v) for k, v in kinds.items()}
    return out


PLANTED = {
    "every chunk has a vector": {"orphan": ["900", "901"], "missing": ["5", "6", "7"]},
    "chunks have qdrant points": {"orphan": ["700", "701", "702"], "missing": ["8", "9"]},
    "chunks have chroma records": {"orphan": ["800"], "missing": ["10"]},
    "documents have their files": {"orphan": ["stray1.pdf", "stray2.pdf"],
                                   "missing": ["gone.pdf"]},
    "managers have datasets": {"unlinked": ["3", "4"]},
    "ingest jobs move on": {"stuck": ["1", "2"]},
    "queue tasks move on": {"stuck": ["1"]},
    "chunks belong to documents": {"row": ["11"]},
}
NOT_FIXABLE = {
    "every chunk has a vector": {"missing": ["5", "6", "7"]},
    "chunks have qdrant points": {"missing": ["8", "9"]},
    "chunks have chroma records": {"missing": ["10"]},
    "documents have their files": {"missing": ["gone.pdf"]},
    "managers have datasets": {"unlinked": ["4"]},
    "ingest jobs move on": {},
    "queue tasks move on": {},
    "chunks belong to documents": {"row": ["11"]},
}


def test_check_fix_recheck_and_roll_back(
        damaged: tuple[SV, Path, str, RedisServer, Any, str], pg: PgServer) -> None:
    sv, d, db, rs, client, bucket = damaged
    res = sv("--json", "integrity", "check")
    assert res.rc == 21, str(res)  # critical findings
    report = res.json()
    assert found(report) == PLANTED
    status = {r["name"]: r["status"] for r in report["rules"]}
    assert status["documents have their files"] == "warning"
    assert status["every chunk has a vector"] == "critical"

    plan = sv.json("integrity", "fix")
    assert plan["dry_run"] is True
    described = [s["description"] for s in plan["plan"]]
    assert "delete 2 orphan key(s) matching chunkvec:{id}" in described
    assert "delete 3 orphan point(s) from collection chunks" in described
    assert "delete 2 orphan object(s) matching uploads/{id}" in described
    assert any(s.startswith("relink 1 key(s)") for s in described)
    assert "reset 2 job(s) in jobs to pending, retries + 1, a message in error" in described
    assert rs.client().exists("chunkvec:900") == 1  # a plan changes nothing

    applied = sv.json("integrity", "fix", "--apply")
    safety = applied["safety_snapshot"]
    assert safety and {a["changed"] for a in applied["applied"]} == {1, 2, 3}
    r = rs.client()
    assert r.exists("chunkvec:900", "chunkvec:901") == 0
    assert r.get("manager:3:dataset") == b"datasets/3.parquet"
    assert r.exists("manager:4:dataset") == 0
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "uploads/stray1.pdf" not in keys and "uploads/a.pdf" in keys
    with psycopg.connect(pg.dsn(db)) as c:
        jobs = c.execute("SELECT id, state, retries, error IS NOT NULL FROM jobs ORDER BY id"
                         ).fetchall()
    assert jobs == [(1, "pending", 1, True), (2, "pending", 5, True),
                    (3, "processing", 0, False), (4, "pending", 0, False)]
    con = sqlite3.connect(d / "queue.db")
    assert con.execute("SELECT state FROM tasks ORDER BY id").fetchall() == [
        ("pending",), ("processing",), ("done",)]
    con.close()
    entries = [json.loads(line) for line in
               (d / "stackvault-audit.jsonl").read_text().splitlines()]
    assert entries[-1]["action"] == "integrity fix" and entries[-1]["outcome"] == "ok"
    assert entries[-1]["details"]["safety_snapshot"] == safety

    again = sv("--json", "integrity", "check")
    assert again.rc == 21
    assert found(again.json()) == NOT_FIXABLE
    healthy = sv("--json", "integrity", "check", "--rule", "ingest jobs move on",
                 "--rule", "queue tasks move on")
    assert healthy.rc == 0 and healthy.json()["status"] == "healthy"  # fully repaired rules

    # the safety snapshot brings the state before the fix back
    restored = sv.json("restore", safety, "--yes", "--force", "--no-safety-snapshot")
    assert restored["ok"] is True, restored
    assert found(sv("--json", "integrity", "check").json()) == PLANTED

    assert "chain intact" in sv.ok("audit", "verify").text


def test_reset_soft_keeps_tables_and_needs_the_typed_phrase(
        damaged: tuple[SV, Path, str, RedisServer, Any, str], pg: PgServer) -> None:
    sv, d, db, rs, client, bucket = damaged
    plan = sv.json("reset", "soft", "--dry-run")
    what = {s["component"]: s["description"] for s in plan["plan"]}
    assert "keeps users" in what["app-db"] and "users" not in what["app-db"].split("keeps")[0]
    refused = sv("reset", "soft")  # no terminal, no --confirm
    assert refused.rc == 2 and "--confirm 'reset soft'" in refused.err
    wrong = sv("reset", "soft", "--confirm", "reset hard")
    assert wrong.rc == 2 and "did not match" in wrong.err
    assert rs.client().dbsize() > 0
    out = sv.json("reset", "soft", "--confirm", "reset soft")
    assert out["safety_snapshot"]
    with psycopg.connect(pg.dsn(db)) as c:
        assert c.execute("SELECT count(*) FROM chunks").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM users").fetchone() == (1,)
    assert rs.client().dbsize() == 0
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)
    con = sqlite3.connect(d / "queue.db")
    assert con.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
    con.close()
    # the audit log records it and its chain holds; a changed line is found
    log = d / "stackvault-audit.jsonl"
    assert json.loads(log.read_text().splitlines()[-1])["action"] == "reset soft"
    sv.ok("audit", "verify")
    log.write_text(log.read_text().replace("reset soft", "reset hard"))
    bad = sv("audit", "verify")
    assert bad.rc == 1 and "changed" in bad.err
