"""The redis data source against real redis-server instances (started here on loopback ports):
both modes, every type (string, list, set, zset, hash, stream with consumer groups), binary
keys and values, a 5 MiB value, TTLs, several databases, restore into a second server compared
key by key, database mapping, refusal of non-empty targets, bad input (unreachable, wrong
password, missing binaries, corrupted and truncated artifacts) and the config schema."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackvault.config.loader import check_text
from stackvault.config.schema import StackConfig
from stackvault.errors import (
    SourceCorrupt,
    SourceError,
    SourceInUse,
    SourceUnavailable,
    UsageError,
)
from stackvault.sources.base import DataSource
from stackvault.sources.directory import DirectorySink, DirectorySource
from stackvault.sources.redisdb import (
    LOGICAL_ARTIFACT,
    MAGIC,
    RDB_ARTIFACT,
    RedisSource,
    _Reader,
)
from stackvault.sources.registry import get_source_class
from support.redis_server import RedisServer, start, stop

MODES = ["logical", "rdb"]
DBS = [0, 1, 3]
BIG = 5 << 20
TTL_MS = 3_600_000
PASSWORD = "redis-Pw-Test-Golf-4417"


# --- servers --------------------------------------------------------------------------------


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """Two throwaway servers: a source and a restore target."""
    started: list[RedisServer] = []
    try:
        started.append(start(tmp_path / "redis-a"))
        started.append(start(tmp_path / "redis-b"))
        yield started[0], started[1]
    finally:
        for s in started:
            stop(s)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[RedisServer]:
    """A server with requirepass."""
    server = start(tmp_path / "redis-locked", password=PASSWORD)
    try:
        yield server
    finally:
        stop(server)


# --- data -----------------------------------------------------------------------------------


def fill(server: RedisServer, seed: int = 7, big: bool = True) -> None:
    """Every type, in several databases: binary keys and values, TTLs, a large value, large
    collections (hashtable/quicklist/skiplist encodings) and small ones (listpack/intset)."""
    rnd = random.Random(seed)
    for db in DBS:
        r = server.client(db)
        p = r.pipeline(transaction=False)
        for i in range(700):
            p.set(f"str:{i}".encode(), rnd.randbytes(rnd.randint(0, 200)))
        for i in range(0, 700, 7):
            p.pexpire(f"str:{i}".encode(), TTL_MS + i)
        p.set(b"bin\x00key\xff\xfe", b"\x00\x01\x02binary\xff")
        p.set(b"", b"empty key name")
        p.set(b"empty value", b"")
        p.set("ünïcødé ключ 🙂".encode(), "värde".encode())
        p.set(b"int", b"12345")
        p.rpush(b"list:small", b"a", b"b", b"\x00", b"a")
        p.rpush(b"list:big", *[rnd.randbytes(30) for _ in range(5000)])
        p.sadd(b"set:ints", *range(100))
        p.sadd(b"set:big", *[rnd.randbytes(12) for _ in range(3000)])
        p.zadd(b"zset:small", {b"a": 1.5, b"b": -2, b"\xff": float("inf"), b"c": 0.1})
        p.zadd(b"zset:big", {rnd.randbytes(10): rnd.uniform(-1e6, 1e6) for _ in range(2000)})
        p.hset(b"hash:small", mapping={b"f1": b"v1", b"\x00": b"\xff"})
        p.hset(b"hash:big", mapping={f"field{i}".encode(): rnd.randbytes(40)
                                     for i in range(3000)})
        p.pexpire(b"hash:big", TTL_MS)
        p.pexpire(b"list:small", TTL_MS)
        p.execute()
        for i in range(50):
            r.xadd(b"stream", {b"n": str(i).encode(), b"bin": rnd.randbytes(8)},
                   id=f"{1000 + i}-{i % 3}")
        r.xgroup_create(b"stream", b"workers", id="0")
        r.xgroup_create(b"stream", b"audit", id="1010-0")
        got = r.xreadgroup(b"workers", b"alice", {b"stream": ">"}, count=10)
        r.xreadgroup(b"workers", b"bob", {b"stream": ">"}, count=5)
        r.xack(b"stream", b"workers", *[e[0] for e in got[0][1][:4]])
        r.xdel(b"stream", b"1020-2")
        r.xadd(b"stream:empty", {b"x": b"y"}, id="5-0")
        r.xdel(b"stream:empty", b"5-0")
        if big and db == 0:
            r.set(b"big value", rnd.randbytes(BIG))


def state(server: RedisServer, dbs: list[int] = DBS) -> dict[int, dict[bytes, Any]]:
    """Every key of `dbs` with its type, content and TTL presence, read with plain commands."""
    out: dict[int, dict[bytes, Any]] = {}
    for db in dbs:
        r = server.client(db)
        keys: dict[bytes, Any] = {}
        for key in r.scan_iter(count=500):
            t = r.type(key)
            if t == b"string":
                v: Any = r.get(key)
            elif t == b"list":
                v = r.lrange(key, 0, -1)
            elif t == b"set":
                v = sorted(r.smembers(key))
            elif t == b"zset":
                v = r.zrange(key, 0, -1, withscores=True)
            elif t == b"hash":
                v = sorted(r.hgetall(key).items())
            elif t == b"stream":
                groups = sorted((g["name"], g["consumers"], g["pending"], g["last-delivered-id"])
                                for g in r.xinfo_groups(key))
                pending = {g[0]: [(p["message_id"], p["consumer"], p["times_delivered"])
                                  for p in r.xpending_range(key, g[0], "-", "+", 1000)]
                           for g in groups}
                info = r.xinfo_stream(key)
                v = (r.xrange(key), groups, pending, info["last-generated-id"],
                     info.get("entries-added"))
            else:
                raise AssertionError(f"unexpected type {t!r}")
            keys[key] = (t, v, r.pttl(key) >= 0)
        out[db] = keys
    return out


def ttls(server: RedisServer, db: int = 0) -> dict[bytes, int]:
    r = server.client(db)
    return {k: r.pttl(k) for k in r.scan_iter(count=500) if r.pttl(k) >= 0}


def backup(src: RedisSource, folder: Path) -> Any:
    return src.backup(DirectorySink(folder))


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_into_a_second_server(servers: tuple[RedisServer, RedisServer],
                                         tmp_path: Path, mode: str) -> None:
    a, b = servers
    fill(a)
    before, before_ttl = state(a), ttls(a)
    src = RedisSource(a.url, mode=mode, tmp_dir=tmp_path)
    assert isinstance(src, DataSource)
    res = backup(src, tmp_path / "art")
    [art] = res.artifacts
    assert art.name == (LOGICAL_ARTIFACT if mode == "logical" else RDB_ARTIFACT)
    assert art.kind == "stream" and art.size > BIG
    assert res.extra["mode"] == mode and res.extra["databases"] == DBS
    assert res.versions["redis"].startswith("7") or res.versions["redis"]
    # The backup's fingerprint describes the data: equal to the live, unchanged store's.
    assert res.fingerprint.to_dict() == src.fingerprint().to_dict()
    assert res.fingerprint.counts["db0.keys"] == len(before[0])
    assert res.fingerprint.counts["db0.expires"] == sum(v[2] for v in before[0].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "redis-a", "redis-b"]

    target = {"url": b.url}
    assert "replaced" in src.describe_target(target)
    src.restore(DirectorySource(tmp_path / "art"), target=target)
    assert state(b) == before  # key by key: type, content, TTL presence
    after_ttl = ttls(b)
    assert after_ttl.keys() == before_ttl.keys()
    for k, ms in before_ttl.items():  # the TTL it had left, give or take the test's duration
        assert ms - 120_000 < after_ttl[k] <= ms, k
    assert src.fingerprint(target=target).compare(res.fingerprint) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "redis-a", "redis-b"]


@pytest.mark.parametrize("mode", MODES)
def test_restore_in_place_after_flush(servers: tuple[RedisServer, RedisServer],
                                      tmp_path: Path, mode: str) -> None:
    a, _ = servers
    fill(a, big=False)
    before = state(a)
    src = RedisSource(a.url, mode=mode, tmp_dir=tmp_path)
    res = backup(src, tmp_path / "art")
    a.client().flushall()
    assert src.fingerprint().to_dict() == {"counts": {}, "digests": {}}
    src.restore(DirectorySource(tmp_path / "art"))
    assert state(a) == before
    assert src.fingerprint().compare(res.fingerprint) == []


def test_fingerprint_sees_content_and_ttl_changes(servers: tuple[RedisServer, RedisServer],
                                                  tmp_path: Path) -> None:
    a, _ = servers
    fill(a, big=False)
    src = RedisSource(a.url)
    fp = src.fingerprint()
    r = a.client(1)
    r.hset(b"hash:small", b"f1", b"changed")
    assert src.fingerprint().compare(fp) == ["content of db1: differs"]
    r.hset(b"hash:small", b"f1", b"v1")
    assert src.fingerprint().compare(fp) == []
    r.persist(b"list:small")  # TTL presence is part of it
    diffs = src.fingerprint().compare(fp)
    assert "content of db1: differs" in diffs and any("db1.expires" in d for d in diffs)
    r.pexpire(b"list:small", 5_000_000)  # its value is not
    assert src.fingerprint().compare(fp) == []
    r.xack(b"stream", b"workers", r.xpending_range(b"stream", b"workers", "-", "+", 1)[0][
        "message_id"])  # so is a stream's pending list
    assert src.fingerprint().compare(fp) == ["content of db1: differs"]


def test_configured_databases_and_mapping_into_another_db(
        servers: tuple[RedisServer, RedisServer], tmp_path: Path) -> None:
    a, b = servers
    fill(a, big=False)
    before = state(a, [3])[3]
    src = RedisSource(a.url + "/3")  # the url's database: only that one
    res = backup(src, tmp_path / "art")
    assert res.extra["databases"] == [3]
    assert set(res.fingerprint.counts) == {"db3.keys", "db3.expires"}
    target = {"url": b.url + "/5"}
    src.restore(DirectorySource(tmp_path / "art"), target=target)
    assert state(b, [5])[5] == before
    assert b.client(3).dbsize() == 0
    assert src.fingerprint(target=target).compare(res.fingerprint) == []
    # A fresh adapter (no restore remembered) labels a db-URL target by the configured db.
    assert RedisSource(a.url, databases=[3]).fingerprint(target=target).compare(
        res.fingerprint) == []

    multi = RedisSource(a.url, databases=[0, 1])
    backup(multi, tmp_path / "multi")
    with pytest.raises(UsageError, match="names only database 2") as err:
        multi.restore(DirectorySource(tmp_path / "multi"), target={"url": b.url + "/2"})
    assert "redis://127.0.0.1" in str(err.value.hint)


# --- refusing, forcing ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_non_empty_target_is_refused_unless_forced(servers: tuple[RedisServer, RedisServer],
                                                   tmp_path: Path, mode: str) -> None:
    a, b = servers
    fill(a, big=False)
    src = RedisSource(a.url, mode=mode, tmp_dir=tmp_path)
    res = backup(src, tmp_path / "art")
    b.client(1).set(b"newer", b"data")
    b.client(9).set(b"other db", b"untouched")
    target = {"url": b.url}
    with pytest.raises(SourceInUse, match="db 1 holds 1 keys") as err:
        src.restore(DirectorySource(tmp_path / "art"), target=target)
    assert "--force" in str(err.value.hint) and "force_restore" in str(err.value.hint)
    assert b.client(0).dbsize() == 0 and b.client(1).get(b"newer") == b"data"

    src.restore(DirectorySource(tmp_path / "art"), target=target, force=True)
    assert b.client(1).get(b"newer") is None  # the database is what the backup holds
    assert b.client(9).get(b"other db") == b"untouched"  # others are left alone
    assert src.fingerprint(target=target).compare(res.fingerprint) == []
    forced = RedisSource(a.url, mode=mode, force_restore=True, tmp_dir=tmp_path)
    forced.restore(DirectorySource(tmp_path / "art"), target=target)  # the config's switch


def test_tables_are_refused(servers: tuple[RedisServer, RedisServer], tmp_path: Path) -> None:
    a, _ = servers
    a.client().set(b"k", b"v")
    src = RedisSource(a.url)
    backup(src, tmp_path / "art")
    with pytest.raises(UsageError, match="restored whole"):
        src.restore(DirectorySource(tmp_path / "art"), tables=["k"])


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_unreachable_server(tmp_path: Path, mode: str) -> None:
    from support.redis_server import free_port

    port = free_port()
    src = RedisSource(f"redis://127.0.0.1:{port}", mode=mode)
    probe = src.probe()
    assert probe.reachable is False and f"127.0.0.1:{port}" in probe.detail
    with pytest.raises(SourceUnavailable, match=f"127.0.0.1:{port}") as err:
        backup(src, tmp_path / "art")
    assert "server runs" in str(err.value.hint)
    assert "not reachable" in src.describe_target()
    with pytest.raises(SourceUnavailable):
        src.fingerprint()


@pytest.mark.parametrize("mode", MODES)
def test_passwords(locked: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   mode: str) -> None:
    monkeypatch.setenv("SV_TEST_REDIS_PW", "wrong-" + PASSWORD)
    wrong = RedisSource(locked.url, password_env="SV_TEST_REDIS_PW", mode=mode)
    with pytest.raises(SourceUnavailable, match="authentication failed") as err:
        backup(wrong, tmp_path / "wrong")
    assert PASSWORD not in str(err.value) and "password" in str(err.value.hint)
    assert wrong.probe().reachable is False
    with pytest.raises(SourceUnavailable, match="authentication failed"):
        backup(RedisSource(locked.url, mode=mode), tmp_path / "none")
    monkeypatch.delenv("SV_TEST_REDIS_PW")
    with pytest.raises(UsageError, match="SV_TEST_REDIS_PW"):
        backup(wrong, tmp_path / "unset")

    locked.client().set(b"k", b"v")
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    good = RedisSource(locked.url, password_file=tmp_path / "pw", mode=mode, tmp_dir=tmp_path)
    assert good.probe().reachable is True
    res = backup(good, tmp_path / "art")
    assert res.fingerprint.counts["db0.keys"] == 1
    locked.client().flushall()
    good.restore(DirectorySource(tmp_path / "art"))
    assert locked.client().get(b"k") == b"v"


def test_missing_binaries(servers: tuple[RedisServer, RedisServer], tmp_path: Path) -> None:
    a, _ = servers
    a.client().set(b"k", b"v")
    empty = tmp_path / "no-bin"
    empty.mkdir()
    src = RedisSource(a.url, mode="rdb", redis_bin_dir=empty)
    with pytest.raises(UsageError, match="redis-cli not found") as err:
        backup(src, tmp_path / "art")
    assert "apt-get install redis-tools redis-server" in str(err.value.hint)
    backup(RedisSource(a.url, mode="rdb", tmp_dir=tmp_path), tmp_path / "rdb")
    with pytest.raises(UsageError, match="redis-server not found"):
        src.restore(DirectorySource(tmp_path / "rdb"))
    # logical mode needs no binary at all
    res = backup(RedisSource(a.url, redis_bin_dir=empty), tmp_path / "logical")
    assert res.fingerprint.counts["db0.keys"] == 1


def test_corrupted_payload_is_rejected(servers: tuple[RedisServer, RedisServer],
                                       tmp_path: Path) -> None:
    a, b = servers
    value = random.Random(3).randbytes(1000)  # incompressible: stored as is in the DUMP
    a.client().set(b"key", value)
    src = RedisSource(a.url)
    backup(src, tmp_path / "art")
    art = tmp_path / "art" / LOGICAL_ARTIFACT
    data = bytearray(art.read_bytes())
    data[data.index(value[100:200]) + 3] ^= 0x01
    art.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="RESTORE of key b'key'.*no key was written"):
        src.restore(DirectorySource(tmp_path / "art"), target={"url": b.url})
    assert b.client().dbsize() == 0


def test_stream_reader_refuses_truncation_and_garbage() -> None:
    def read(data: bytes) -> list[tuple[str, Any]]:
        return list(_Reader(io.BytesIO(data), "test stream").records())

    with pytest.raises(SourceCorrupt, match="bad magic"):
        read(b"REDIS0010" + b"\0" * 20)
    meta = b'{"databases": [0], "format": 1}'
    head = MAGIC + b"M" + len(meta).to_bytes(4, "big") + meta + b"D" + (0).to_bytes(4, "big")
    with pytest.raises(SourceCorrupt, match="truncated"):
        read(head + b"K" + (3).to_bytes(4, "big") + b"ke")
    with pytest.raises(SourceCorrupt, match="truncated"):
        read(head)  # no end record
    with pytest.raises(SourceCorrupt, match="unknown record"):
        read(head + b"Z")
    end = b'{"keys": {"0": 0}}'
    ok = head + b"E" + len(end).to_bytes(4, "big") + end
    assert [k for k, _ in read(ok)] == ["meta", "db", "end"]
    with pytest.raises(SourceCorrupt, match="after the end"):
        read(ok + b"x")


def test_bad_urls_and_targets() -> None:
    for url in ("redis://:pw@127.0.0.1:6379", "redis://user:pw@host", "http://host",
                "redis://host/x", "redis://"):
        with pytest.raises(UsageError) as err:
            RedisSource(url)
        assert "pw" not in str(err.value).replace("password", "")
    src = RedisSource("rediss://cache.internal:6380/2")
    assert src.url.tls and src.url.port == 6380 and src.databases == [2]
    with pytest.raises(UsageError, match="exactly 'url'"):
        src.describe_target({"path": "/tmp/x"})
    with pytest.raises(UsageError, match="one place"):
        RedisSource("redis://h/1", databases=[2])
    assert get_source_class("redis") is RedisSource


# --- config ---------------------------------------------------------------------------------


def _config(**redis: Any) -> dict[str, Any]:
    return {"version": 1, "repository": {"location": "/tmp/repo"},
            "components": {"cache": {"type": "redis", **redis}}}


def test_config_schema() -> None:
    cfg = StackConfig.model_validate(_config(url="redis://127.0.0.1:6390", mode="rdb",
                                             databases=[0, 2], password_env="REDIS_PW"))
    comp = cfg.components["cache"]
    assert comp.type == "redis" and comp.mode == "rdb"  # type: ignore[union-attr]
    from stackvault.ops.sources_from_config import make_source, parse_target

    src = make_source("cache", comp)
    assert isinstance(src, RedisSource) and src.databases == [0, 2]
    assert parse_target(comp, "redis://127.0.0.1:6391/0") == {"url": "redis://127.0.0.1:6391/0"}
    defaults = StackConfig.model_validate(_config()).components["cache"]
    assert defaults.url == "redis://localhost:6379" and defaults.mode == "logical"  # type: ignore[union-attr]

    for bad, words in (("url: 'redis://:hunter2-secret@h:1'", "credentials"),
                       ("password: hunter2-secret", "never written"),
                       ("{url: 'redis://h/1', databases: [1]}", "one place"),
                       ("{password_env: A, password_file: /x}", "at most one"),
                       ("mode: aof", "logical"), ("databases: [-1]", "0"),
                       ("url: 'http://h:1'", "redis://HOST")):
        text = ("version: 1\nrepository: {location: /tmp/repo}\ncomponents:\n"
                f"  cache: {{type: redis, {bad.strip('{}')}}}\n")
        result = check_text(text)
        shown = "\n".join(map(str, result.problems))
        assert not result.ok and words in shown, (bad, shown)
        assert "hunter2-secret" not in shown
