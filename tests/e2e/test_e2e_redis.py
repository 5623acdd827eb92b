"""A Redis component end to end: stackvault.yaml with a password-protected redis-server (its
password in an environment variable, never printed), backup, FLUSHALL, `restore --yes` with
verification, refusal of a non-empty target without --force, and `restore --to` into a second
server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PASSWORD, SV, base_env

from support.redis_server import RedisServer, start, stop

REDIS_PASSWORD = "e2e-Redis-Pw-Hotel-3391"


def fill(server: RedisServer) -> None:
    r = server.client()
    r.mset({f"session:{i}": f"user-{i}".encode() * 10 for i in range(500)})
    for i in range(0, 500, 10):
        r.expire(f"session:{i}", 7200)
    r.rpush("queue", *[f"job-{i}" for i in range(300)])
    r.hset("config", mapping={"model": "all-minilm", "chunk": "512"})
    r.zadd("ranking", {"a": 1, "b": 2.5})
    r.sadd("tags", "x", "y", b"\xff\x00")
    r.xadd("events", {"kind": "ingest"}, id="1-1")
    r.xgroup_create("events", "workers", id="0")
    server.client(2).set(b"bin\x00key", bytes(range(256)) * 100)


def snapshot_of(server: RedisServer, dbs: tuple[int, ...] = (0, 2)) -> dict[int, Any]:
    """Each key's type, content and TTL presence (not DUMP payloads: a set's DUMP order
    depends on the server process's hash seed)."""
    read = {b"string": lambda r, k: r.get(k), b"list": lambda r, k: r.lrange(k, 0, -1),
            b"set": lambda r, k: sorted(r.smembers(k)), b"hash": lambda r, k: r.hgetall(k),
            b"zset": lambda r, k: r.zrange(k, 0, -1, withscores=True),
            b"stream": lambda r, k: (r.xrange(k), r.xinfo_groups(k))}
    out = {}
    for db in dbs:
        r = server.client(db)
        out[db] = {k: (r.type(k), read[r.type(k)](r, k), r.pttl(k) >= 0)
                   for k in r.scan_iter()}
    return out


@pytest.fixture
def redis_stack(tmp_path: Path) -> Iterator[tuple[SV, RedisServer, RedisServer]]:
    started: list[RedisServer] = []
    try:
        started.append(start(tmp_path / "redis-a", password=REDIS_PASSWORD))
        started.append(start(tmp_path / "redis-b", password=REDIS_PASSWORD))
        a, b = started
        (tmp_path / "stackvault.yaml").write_text(f"""
version: 1
repository:
  location: {tmp_path / "repo"}
components:
  cache:
    type: redis
    url: {a.url}
    password_env: CACHE_REDIS_PASSWORD
""")
        sv = SV(None, base_env(STACKVAULT_PASSWORD=PASSWORD,
                               CACHE_REDIS_PASSWORD=REDIS_PASSWORD,
                               STACKVAULT_CONFIG=str(tmp_path / "stackvault.yaml")))
        sv.ok("init")
        yield sv, a, b
    finally:
        for s in started:
            stop(s)


def test_backup_flush_restore_and_restore_elsewhere(
        redis_stack: tuple[SV, RedisServer, RedisServer]) -> None:
    sv, a, b = redis_stack
    fill(a)
    before = snapshot_of(a)
    out = sv.json("backup")
    assert out["complete"] is True and list(out["components"]) == ["cache"]

    a.client().flushall()
    plan = sv.json("restore", "--dry-run")
    assert "Redis redis://127.0.0.1" in plan["plan"]["steps"][0]["target_description"]
    report = sv.json("restore", "--yes")
    assert report["ok"] is True and report["components"][0]["verified"] is True
    assert snapshot_of(a) == before

    # The server holds keys now: a restore over it needs --force.
    a.client().set("written after the backup", "1")
    refused = sv("--json", "restore", "--yes", "--no-safety-snapshot")
    assert refused.rc != 0 and "--force" in refused.text + refused.err
    assert a.client().get("written after the backup") == b"1"
    forced = sv.json("restore", "--yes", "--force", "--no-safety-snapshot")
    assert forced["ok"] is True
    assert snapshot_of(a) == before

    elsewhere = sv.json("restore", "--component", "cache", "--to", f"cache={b.url}", "--yes")
    assert elsewhere["ok"] is True and elsewhere["safety_snapshot"] is None
    assert snapshot_of(b) == before


def _redis_servers() -> set[int]:
    """PIDs of the redis-server processes running now (not zombies waiting for PID 1 to
    reap them: a stopped daemonized server is not our child)."""
    out = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")")[-1]
                if name == "redis-server" and state.split()[0] != "Z":
                    out.add(int(proc.name))
            except (OSError, ValueError):
                pass
    return out


def test_drill_restores_into_a_throwaway_server_with_a_probe(
        redis_stack: tuple[SV, RedisServer, RedisServer], tmp_path: Path) -> None:
    sv, a, _ = redis_stack
    fill(a)
    cfg = tmp_path / "stackvault.yaml"
    cfg.write_text(cfg.read_text() + "drill:\n  probes:\n    - component: cache\n"
                   "      key: config\n      expect: hash\n")
    sv.ok("backup")
    before_servers, live = _redis_servers(), snapshot_of(a)
    a.client().set("written after the backup", "1")
    out = sv.json("drill")
    assert out["ok"] is True, out
    assert out["components"][0]["verified"] is True
    assert "127.0.0.1" in out["components"][0]["target"] and str(a.port) not in \
        out["components"][0]["target"]
    assert out["probes"][0]["found"] == "hash"
    assert _redis_servers() == before_servers  # the throwaway server is gone
    assert a.client().get("written after the backup") == b"1"  # the live server untouched
    del live
