"""Redis adapter: a logical SCAN+DUMP stream or the server's RDB, encoding-free fingerprints."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar
from urllib.parse import urlsplit

import redis
import redis.exceptions as rex

from stackvault.errors import (
    SourceCorrupt,
    SourceError,
    SourceInUse,
    SourceUnavailable,
    StackVaultError,
    UsageError,
)
from stackvault.sources.base import (
    ArtifactSink,
    ArtifactSource,
    ComponentResult,
    Fingerprint,
    GeneratorReader,
    ProbeResult,
    Target,
)

LOGICAL_ARTIFACT = "keys.svredis"
RDB_ARTIFACT = "dump.rdb"
BATCH_KEYS = 256  # keys per SCAN call and per MULTI/EXEC (memory: a batch of values)
CONNECT_TIMEOUT = 5.0
IO_TIMEOUT = 300.0  # a DUMP or RESTORE of a very large key can take a while
READY_TIMEOUT = 600.0  # how long a throwaway redis-server may take to load an RDB
INSTALL_HINT = ("install the Redis tools: apt-get install redis-tools redis-server (Debian, "
                "Ubuntu), or set redis_bin_dir to the folder that holds them")

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


# --- fingerprints -----------------------------------------------------------------------------
#
# Per database: `db<N>.keys` (keys), `db<N>.expires` (keys with a TTL) and the digest `db<N>`.
# Each key's record is hashed on its own: its name, type, whether it has a TTL (not its value)
# and its logical content, with every value length-prefixed: a string's bytes; a list's items
# in order; a set's members sorted; a sorted set's (member, score as float.hex()) in rank
# order; a hash's (field, value) pairs sorted; a stream's entries, last id, entries-added,
# max-deleted id and consumer groups (last-delivered id, entries-read, pending entries with
# their consumer and delivery count, consumers with their pending ids) -- times are left out;
# any other (module) type: its DUMP payload. The database digest is SHA-256 over the key
# count and the sum modulo 2**256 of the per-key SHA-256 values, so that it does not depend
# on SCAN order and needs no memory per key. Internal encodings (listpack, intset, ...) never
# enter it, so a store and the copy RESTOREd from it match even if Redis re-encodes.

_CONTENT_CMDS: dict[bytes, Callable[[bytes], tuple[Any, ...]]] = {
    b"string": lambda k: ("GET", k),
    b"list": lambda k: ("LRANGE", k, 0, -1),
    b"set": lambda k: ("SMEMBERS", k),
    b"zset": lambda k: ("ZRANGE", k, 0, -1, "WITHSCORES"),
    b"hash": lambda k: ("HGETALL", k),
    b"stream": lambda k: ("XINFO", "STREAM", k, "FULL", "COUNT", 0),
}
_MOD = 1 << 256


def _lp(data: bytes) -> bytes:
    return b"%d:" % len(data) + data


def _b(v: Any) -> bytes:
    if v is None:
        return b"~"
    if isinstance(v, bytes):
        return _lp(v)
    if isinstance(v, int):
        return b"i%d;" % v
    return _lp(str(v).encode())


def _as_dict(v: Any) -> dict[bytes, Any]:
    if isinstance(v, dict):
        return {k if isinstance(k, bytes) else str(k).encode(): x for k, x in v.items()}
    return dict(zip(v[0::2], v[1::2], strict=True))


def _stream_content(info: Any) -> bytes:
    d = _as_dict(info)
    out = [b"S"]
    for k in (b"length", b"last-generated-id", b"max-deleted-entry-id", b"entries-added"):
        out.append(_lp(k) + _b(d.get(k)))
    entries = d.get(b"entries") or []
    out.append(b"e%d;" % len(entries))
    for entry_id, fields in entries:
        out.append(_b(entry_id) + b"%d;" % len(fields) + b"".join(map(_b, fields)))
    groups = sorted((_as_dict(g) for g in d.get(b"groups") or []), key=lambda g: g[b"name"])
    out.append(b"g%d;" % len(groups))
    for g in groups:
        out.append(b"".join(_b(g.get(k)) for k in (b"name", b"last-delivered-id",
                                                    b"entries-read", b"pel-count")))
        for p in g.get(b"pending") or []:  # [id, consumer, delivery time, delivery count]
            out.append(b"p" + _b(p[0]) + _b(p[1]) + _b(p[3]))
        consumers = sorted((_as_dict(c) for c in g.get(b"consumers") or []),
                           key=lambda c: c[b"name"])
        for c in consumers:
            out.append(b"c" + _b(c.get(b"name")) + _b(c.get(b"pel-count")))
            out.extend(b"q" + _b(p[0]) + _b(p[2]) for p in c.get(b"pending") or [])
    return b"".join(out)


def _content(type_: bytes, value: Any) -> bytes:
    """The canonical bytes of a key's logical content (see the comment above)."""
    if type_ == b"string":
        return _lp(value)
    if type_ == b"list":
        return b"%d;" % len(value) + b"".join(map(_lp, value))
    if type_ == b"set":
        return b"%d;" % len(value) + b"".join(map(_lp, sorted(value)))
    if type_ == b"zset":
        pairs = zip(value[0::2], value[1::2], strict=True)
        return b"%d;" % (len(value) // 2) + b"".join(
            _lp(m) + float(s).hex().encode() + b";" for m, s in pairs)
    if type_ == b"hash":
        items = sorted(_as_dict(value).items())
        return b"%d;" % len(items) + b"".join(_lp(k) + _lp(v) for k, v in items)
    if type_ == b"stream":
        return _stream_content(value)
    return _lp(value)  # a module's type: its DUMP payload


def _key_hash(key: bytes, type_: bytes, has_ttl: bool, content: bytes) -> int:
    h = hashlib.sha256(_lp(key) + _lp(type_) + (b"T" if has_ttl else b"P"))
    h.update(content)
    return int.from_bytes(h.digest(), "big")


@dataclass
class _DbDigest:
    keys: int = 0
    expires: int = 0
    total: int = 0

    def add(self, key: bytes, type_: bytes, has_ttl: bool, content: bytes) -> None:
        self.keys += 1
        self.expires += has_ttl
        self.total = (self.total + _key_hash(key, type_, has_ttl, content)) % _MOD

    def hexdigest(self) -> str:
        return hashlib.sha256(b"stackvault-redis-db-v1\n%d\n" % self.keys
                              + self.total.to_bytes(32, "big")).hexdigest()


def _fingerprint_of(digests: Mapping[int, _DbDigest],
                    labels: Mapping[int, int] | None = None) -> Fingerprint:
    fp = Fingerprint()
    for db, d in digests.items():
        name = f"db{(labels or {}).get(db, db)}"
        fp.counts[f"{name}.keys"] = d.keys
        fp.counts[f"{name}.expires"] = d.expires
        fp.digests[name] = d.hexdigest()
    return fp


# --- connections and errors -------------------------------------------------------------------


@dataclass(frozen=True)
class RedisUrl:
    """A parsed redis:// or rediss:// URL (never with credentials in it)."""

    host: str
    port: int
    db: int | None
    tls: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def text(self, db: int | None = -2) -> str:
        """The URL (without credentials); `db`: another database number, or None for
        none."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        db = self.db if db == -2 else db
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}" + (
            f"/{db}" if db is not None and db >= 0 else "")


_URL_FORMS = "redis://HOST[:PORT][/DB] or rediss://HOST[:PORT][/DB] (TLS)"


def parse_url(text: str) -> RedisUrl:
    """Parse a Redis URL; refuse credentials in it (without echoing them)."""
    if not isinstance(text, str):
        raise UsageError(f"a Redis URL is text: {_URL_FORMS}")
    if re.search(r"://[^/?#]*@", text):
        raise UsageError("credentials do not belong in the Redis URL",
                         hint="give `username` and `password_env` (or `password_file`) in "
                              "stackvault.yaml instead")
    try:
        parts = urlsplit(text)
        port = parts.port or 6379
    except ValueError:
        raise UsageError(f"{text!r} is not a Redis URL; use {_URL_FORMS}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname \
            or parts.query or parts.fragment:
        raise UsageError(f"{text!r} is not a Redis URL; use {_URL_FORMS}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise UsageError(f"{text!r}: the path of a Redis URL is a database number")
    return RedisUrl(parts.hostname, port, int(path) if path else None,
                    parts.scheme == "rediss")


@contextmanager
def _redis_errors(url: RedisUrl, doing: str) -> Iterator[None]:
    """Turn redis-py's exceptions into StackVault errors (no password is ever in them)."""
    try:
        yield
    except rex.AuthenticationError as e:
        raise SourceUnavailable(
            f"Redis at {url.address}: authentication failed while {doing} ({e})",
            hint="check `username` and the password named by password_env/password_file; "
                 "leave both out if the server has no password") from None
    except rex.NoPermissionError as e:
        raise SourceError(f"Redis at {url.address}: permission denied while {doing}: {e}",
                          hint="the ACL user needs SCAN, TYPE, PTTL, DUMP and read commands "
                               "(backup), RESTORE, DBSIZE and FLUSHDB (restore)") from None
    except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
        raise SourceUnavailable(f"cannot reach Redis at {url.address} while {doing}: {e}",
                                hint="check that the server runs and the url in "
                                     "stackvault.yaml (host, port, redis:// or rediss://)"
                                ) from None
    except rex.ResponseError as e:
        if "NOAUTH" in str(e):
            raise SourceUnavailable(f"Redis at {url.address}: authentication failed while "
                                    f"{doing} ({e})",
                                    hint="set password_env or password_file") from None
        raise SourceError(f"Redis at {url.address}: {doing} failed: {e}") from None


def _keyspace(client: redis.Redis) -> dict[int, int]:
    """Non-empty databases -> key count, from INFO keyspace."""
    info = client.info("keyspace")
    out = {}
    for name, value in info.items():
        if isinstance(name, str) and name.startswith("db") and name[2:].isdigit():
            out[int(name[2:])] = int(value["keys"]) if isinstance(value, dict) else 0
    return dict(sorted(out.items()))


# --- throwaway redis-server -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its parent, e.g. init, to reap it
    does not: a daemonized server is not our child)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class _Throwaway:
    """A private redis-server on a free loopback port in `folder`, loading `folder/dump.rdb`
    if present; stopped by its PID."""

    def __init__(self, server_bin: str, folder: Path) -> None:
        self.server_bin = server_bin
        self.folder = folder
        self.pid: int | None = None
        self.port = 0

    def _log_tail(self) -> str:
        try:
            lines = (self.folder / "redis.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(line.split(" * ", 1)[-1].split(" # ", 1)[-1] for line in lines[-4:])

    def start(self) -> redis.Redis:
        pidfile = self.folder / "redis.pid"
        for _attempt in range(3):
            pidfile.unlink(missing_ok=True)  # a failed attempt's
            self.port = _free_port()
            cmd = [self.server_bin, "--bind", "127.0.0.1", "--port", str(self.port),
                   "--dir", str(self.folder), "--dbfilename", RDB_ARTIFACT,
                   "--save", "", "--appendonly", "no", "--daemonize", "yes",
                   "--pidfile", str(pidfile), "--logfile", str(self.folder / "redis.log"),
                   "--protected-mode", "yes"]
            res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if res.returncode != 0:
                raise SourceError(f"could not start {self.server_bin}: "
                                  f"{(res.stderr or res.stdout).strip()[:400]}")
            deadline = time.monotonic() + 30
            while self.pid is None:  # the file may exist a moment before it holds the PID
                try:
                    self.pid = int(pidfile.read_text().strip())
                except (OSError, ValueError):
                    if time.monotonic() > deadline:
                        raise SourceError(f"{self.server_bin} did not start: "
                                          f"{self._log_tail()}") from None
                    time.sleep(0.02)
            client = self.client()
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                try:
                    client.ping()
                    return client
                except rex.BusyLoadingError:
                    pass
                except rex.ConnectionError:
                    if not _pid_alive(self.pid):
                        break  # e.g. the port was taken meanwhile, or the RDB is unreadable
                if time.monotonic() > deadline:
                    self.stop()
                    raise SourceError(f"the throwaway redis-server did not load the RDB "
                                      f"within {READY_TIMEOUT:.0f}s")
                time.sleep(0.05)
            log = self._log_tail()
            self.pid = None
            if "Address already in use" not in log:
                raise SourceCorrupt(f"a throwaway redis-server could not load the RDB: {log}",
                                    hint="a Redis older than the one that wrote it cannot "
                                         "read it: use a redis-server at least as new "
                                         "(redis_bin_dir)")
        raise SourceError("could not start a throwaway redis-server: no free port")

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, protocol=2,
                           socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=IO_TIMEOUT)

    def stop(self) -> None:
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- batches of keys --------------------------------------------------------------------------


@dataclass
class _Key:
    key: bytes
    type: bytes
    pttl: int  # -1: no expiry
    payload: bytes | None  # DUMP, when asked for
    content: bytes  # canonical, for the fingerprint


def _read_batch(client: redis.Redis, keys: Sequence[bytes], *, dump: bool) -> list[_Key]:
    """Read `keys` atomically (one MULTI/EXEC): type, PTTL, content, DUMP if asked. Keys gone
    meanwhile are left out; a key whose type changed between the two steps is read again."""
    with client.pipeline(transaction=False) as p:
        for k in keys:
            p.type(k)
        types = [t if isinstance(t, bytes) else str(t).encode() for t in p.execute()]
    out: list[_Key] = []
    retry: list[bytes] = []
    with client.pipeline(transaction=True) as p:
        todo = [(k, t) for k, t in zip(keys, types, strict=True) if t != b"none"]
        for k, t in todo:
            p.type(k)
            p.pttl(k)
            if dump or t not in _CONTENT_CMDS:
                p.dump(k)
            if t in _CONTENT_CMDS:
                p.execute_command(*_CONTENT_CMDS[t](k))
        results = p.execute(raise_on_error=False) if todo else []
    i = 0
    for k, t in todo:
        now_type, pttl = results[i], results[i + 1]
        i += 2
        payload = None
        if dump or t not in _CONTENT_CMDS:
            payload = results[i]
            i += 1
        value = payload
        if t in _CONTENT_CMDS:
            value = results[i]
            i += 1
        if now_type == b"none" or pttl == -2:
            continue  # deleted or expired meanwhile
        if now_type != t:  # replaced by another type between TYPE and MULTI: read it again
            retry.append(k)
            continue
        for r in (now_type, pttl, payload, value):
            if isinstance(r, Exception):
                raise r
        out.append(_Key(k, t, int(pttl), payload, _content(t, value)))
    if retry:
        out.extend(_read_batch(client, retry, dump=dump))
    return out


def _scan(client: redis.Redis, seen: set[bytes]) -> Iterator[list[bytes]]:
    """Batches of keys from SCAN, each key once (SCAN may return a key twice while the
    keyspace is resized; `seen` holds a 16-byte hash per key to drop those)."""
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, count=BATCH_KEYS)
        fresh: list[bytes] = []
        for k in keys:
            k = k if isinstance(k, bytes) else str(k).encode()
            h = hashlib.blake2b(k, digest_size=16).digest()
            if h not in seen:
                seen.add(h)
                fresh.append(k)
        if fresh:
            yield fresh
        if cursor == 0:
            return


def _digest_db(client: redis.Redis) -> _DbDigest:
    d = _DbDigest()
    for keys in _scan(client, set()):
        for item in _read_batch(client, keys, dump=False):
            d.add(item.key, item.type, item.pttl >= 0, item.content)
    return d


# --- restore into a target ---------------------------------------------------------------------


@dataclass
class _Progress:
    """What a restore has written so far, for the message when it fails."""

    done: dict[int, int] = field(default_factory=dict)  # target db -> keys restored
    current: int | None = None

    def text(self) -> str:
        if not any(self.done.values()):
            return "no key was written"
        parts = [f"{n} keys into db {db}" + (" (that db incomplete)" if db == self.current
                                             else "")
                 for db, n in self.done.items() if n or db == self.current]
        return ("restored before the failure: " + ", ".join(parts)
                + "; the backup's other keys are not in the target")


class _Writer:
    """RESTOREs keys into a target server's databases in pipelined batches."""

    def __init__(self, make_client: Callable[[int], redis.Redis], url: RedisUrl) -> None:
        self.make_client = make_client
        self.url = url
        self.progress = _Progress()
        self._client: redis.Redis | None = None
        self.db: int | None = None
        self._batch: list[tuple[bytes, int, bytes]] = []
        self._batch_bytes = 0

    def select(self, db: int) -> None:
        self.flush()
        self._client = self.make_client(db)
        self.db = db
        self.progress.current = db
        self.progress.done.setdefault(db, 0)

    def add(self, key: bytes, pttl: int, payload: bytes) -> None:
        self._batch.append((key, pttl, payload))
        self._batch_bytes += len(payload)
        if len(self._batch) >= BATCH_KEYS or self._batch_bytes >= 32 << 20:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        assert self._client is not None and self.db is not None
        with self._client.pipeline(transaction=False) as p:
            for key, pttl, payload in self._batch:
                # RESTORE's ttl is relative; 0 means "no expiry", so a key due now gets 1 ms
                p.restore(key, max(pttl, 1) if pttl >= 0 else 0, payload, replace=True)
            results = p.execute(raise_on_error=False)
        for (key, _, _), r in zip(self._batch, results, strict=True):
            if isinstance(r, Exception):
                hint = None
                if "payload version" in str(r) or "checksum" in str(r):
                    hint = ("either the backup is damaged, or the target Redis is older "
                            "than the one backed up (a DUMP payload restores only into the "
                            "same or a newer version)")
                raise SourceError(f"RESTORE of key {key[:80]!r} into db {self.db} of "
                                  f"{self.url.address} failed: {r}", hint=hint)
            self.progress.done[self.db] += 1
        self._batch.clear()
        self._batch_bytes = 0

    def finish(self) -> None:
        self.flush()
        self.progress.current = None


# --- the adapter -------------------------------------------------------------------------------


class RedisSource:
    """A Redis server (standalone; not Cluster): all its databases or the configured ones.

    `mode: logical` (default; works with managed Redis that forbid replication commands):
    SCAN each database, then per batch of keys one MULTI/EXEC reads TYPE, PTTL, DUMP and the
    logical content (for the fingerprint). Records stream through a generator-backed file
    object into one artifact, `keys.svredis` (format above): memory holds one batch plus a
    16-byte hash per key (to drop keys SCAN returns twice). Each batch is atomic, the whole
    backup is not a point-in-time image: keys written during it may or may not be in it.

    `mode: rdb`: `redis-cli --rdb -` asks the server for its snapshot over the replication
    protocol (a fork-consistent, point-in-time image of every database) and streams it into
    `dump.rdb`. The stream is also written to a temporary file that a throwaway
    redis-server loads to fingerprint the snapshot exactly, then both are removed. The server
    waits `repl-diskless-sync-delay` seconds (5 by default) before it starts sending.

    Restore, either artifact: refuses a target database that holds keys unless forced (then
    FLUSHDB first), and RESTOREs every key with REPLACE and the TTL it had left at backup
    time. An RDB is first loaded by a throwaway redis-server, from which every key is copied.
    """

    type: ClassVar[str] = "redis"

    def __init__(self, url: str = "redis://localhost:6379", username: str | None = None,
                 password_env: str | None = None,
                 password_file: str | os.PathLike[str] | None = None,
                 databases: Sequence[int] | None = None, mode: str = "logical",
                 redis_bin_dir: str | os.PathLike[str] | None = None,
                 force_restore: bool = False, *,
                 tmp_dir: str | os.PathLike[str] | None = None) -> None:
        self.url = parse_url(url)
        if password_env and password_file:
            raise UsageError("give at most one of password_env and password_file")
        if mode not in ("logical", "rdb"):
            raise UsageError(f"unknown Redis backup mode {mode!r}", hint="logical or rdb")
        if databases is not None and self.url.db is not None \
                and list(databases) != [self.url.db]:
            raise UsageError("the url names a database and `databases` names others",
                             hint="give the database in one place only")
        self.username = username
        self.password_env = password_env
        self.password_file = Path(password_file) if password_file is not None else None
        self.databases: list[int] | None = (
            sorted(set(databases)) if databases is not None
            else [self.url.db] if self.url.db is not None else None)
        self.mode = mode
        self.redis_bin_dir = Path(redis_bin_dir) if redis_bin_dir is not None else None
        self.force_restore = force_restore
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else None
        # target db -> backup db of the last restore, to label the target's fingerprint
        self._restored_map: dict[int, int] | None = None
        self._restored_target: RedisUrl | None = None

    # -- connections
    def _password(self) -> str | None:
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise UsageError(f"environment variable {self.password_env} (password_env of "
                                 "this Redis component) is not set")
            return value
        if self.password_file is not None:
            try:
                lines = self.password_file.read_text().splitlines()
            except OSError as e:
                raise UsageError(f"{self.password_file} (password_file): cannot read it: "
                                 f"{e.strerror}") from None
            if not lines or not lines[0]:
                raise UsageError(f"{self.password_file} (password_file) is empty")
            return lines[0]
        return None

    def _client(self, url: RedisUrl, db: int = 0) -> redis.Redis:
        return redis.Redis(host=url.host, port=url.port, db=db, username=self.username,
                           password=self._password(), ssl=url.tls, protocol=2,
                           socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=IO_TIMEOUT)

    def _bin(self, name: str) -> str:
        if self.redis_bin_dir is not None:
            path = self.redis_bin_dir / name
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
            raise UsageError(f"{name} not found in {self.redis_bin_dir} (redis_bin_dir)",
                             hint=INSTALL_HINT)
        found = shutil.which(name)
        if found is None:
            raise UsageError(f"{name} is not installed (not on PATH); the Redis rdb mode "
                             "needs it", hint=INSTALL_HINT)
        return found

    def _target(self, target: Target | None) -> RedisUrl:
        if target is None:
            return self.url
        if set(target) != {"url"}:
            raise UsageError(f"a redis restore target takes exactly 'url', got {sorted(target)}",
                             hint="e.g. --to cache=redis://127.0.0.1:6390/0")
        return parse_url(str(target["url"]))

    def _dbs(self, client: redis.Redis) -> list[int]:
        return list(self.databases) if self.databases is not None else list(_keyspace(client))

    # -- inspection
    def probe(self) -> ProbeResult:
        try:
            with _redis_errors(self.url, "probing"):
                client = self._client(self.url)
                info = client.info()
                space = _keyspace(client)
        except StackVaultError as e:
            return ProbeResult(False, "", None, str(e).split("\n", 1)[0])
        dbs = ", ".join(f"db{db} {n} keys" for db, n in space.items()) or "no keys"
        return ProbeResult(True, str(info.get("redis_version", "")),
                           int(info.get("used_memory", 0)) or None,
                           f"{self.url.text()}: {dbs}; mode {self.mode}")

    def describe_target(self, target: Target | None = None) -> str:
        url = self._target(target)
        where = f"Redis {url.text()}"
        try:
            with _redis_errors(url, "describing the target"):
                space = _keyspace(self._client(url))
        except StackVaultError as e:
            return f"{where} (not reachable now: {str(e).splitlines()[0]})"
        dbs = ([url.db] if url.db is not None else self.databases)
        if dbs is None:
            held = ", ".join(f"db {db}: {n} keys" for db, n in space.items()) or "empty"
            return (f"{where} ({held}): the backup's databases are replaced "
                    "(non-empty ones only with --force)")
        held = ", ".join(f"db {db}: {space.get(db, 0)} keys" for db in dbs)
        return f"{where} ({held}): replaced by the backup (non-empty ones only with --force)"

    def fingerprint(self, *, target: Target | None = None) -> Fingerprint:
        url = self._target(target)
        labels: dict[int, int] = {}
        with _redis_errors(url, "fingerprinting"):
            if self._restored_map is not None and self._restored_target == url:
                dbs = list(self._restored_map)
                labels = dict(self._restored_map)
            elif url.db is not None:
                dbs = [url.db]
                if self.databases is not None and len(self.databases) == 1:
                    labels = {url.db: self.databases[0]}
            else:
                dbs = self._dbs(self._client(url))
            return _fingerprint_of({db: _digest_db(self._client(url, db)) for db in dbs},
                                   labels)

    # -- backup
    def backup(self, sink: ArtifactSink) -> ComponentResult:
        if self.mode == "rdb":
            return self._backup_rdb(sink)
        return self._backup_logical(sink)

    def _backup_logical(self, sink: ArtifactSink) -> ComponentResult:
        with _redis_errors(self.url, "connecting"):
            client = self._client(self.url)
            info = client.info("server")
            dbs = self._dbs(client)
        version = str(info.get("redis_version", ""))
        digests: dict[int, _DbDigest] = {}

        def chunks() -> Iterator[bytes]:
            yield MAGIC + _json_record(b"M", {"format": FORMAT, "redis_version": version,
                                              "databases": dbs, "created": int(time.time())})
            for db in dbs:
                yield b"D" + _U32.pack(db)
                d = digests[db] = _DbDigest()
                db_client = self._client(self.url, db)
                with _redis_errors(self.url, f"reading db {db}"):
                    for keys in _scan(db_client, set()):
                        out = []
                        for item in _read_batch(db_client, keys, dump=True):
                            assert item.payload is not None
                            d.add(item.key, item.type, item.pttl >= 0, item.content)
                            out.append(_key_record(item.key, item.pttl, item.payload))
                        yield b"".join(out)
            yield _json_record(b"E", {"keys": {str(db): d.keys for db, d in digests.items()}})

        stream = _stream_of(chunks())
        try:
            info_art = sink.add_stream(LOGICAL_ARTIFACT, stream)
        finally:
            stream.close()
        extra = {"url": self.url.text(), "mode": "logical", "databases": dbs}
        return ComponentResult([info_art], _fingerprint_of(digests),
                               {"redis": version, "redis-py": redis.__version__}, extra)

    def _cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
        password = self._password()
        if password is not None:
            env["REDISCLI_AUTH"] = password  # never on the command line (visible in ps)
        return env

    def _backup_rdb(self, sink: ArtifactSink) -> ComponentResult:
        cli = self._bin("redis-cli")
        server_bin = self._bin("redis-server")
        with _redis_errors(self.url, "connecting"):
            client = self._client(self.url)
            version = str(client.info("server").get("redis_version", ""))
            try:
                delay = int(client.config_get("repl-diskless-sync-delay").get(
                    "repl-diskless-sync-delay") or -1)
            except rex.ResponseError:  # CONFIG is often disabled on managed servers
                delay = -1
        cmd = [cli, "-h", self.url.host, "-p", str(self.url.port)]
        if self.username:
            cmd += ["--user", self.username]
        if self.url.tls:
            cmd += ["--tls"]
        cmd += ["--no-auth-warning", "--rdb", "-"]
        work = Path(tempfile.mkdtemp(prefix="stackvault-redis-", dir=self.tmp_dir))
        throwaway = _Throwaway(server_bin, work)
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, env=self._cli_env())
            assert proc.stdout is not None and proc.stderr is not None
            err_chunks: list[bytes] = []
            err_reader = threading.Thread(target=lambda: err_chunks.append(
                proc.stderr.read() if proc.stderr else b""), daemon=True)
            err_reader.start()
            copy = open(work / RDB_ARTIFACT, "xb")  # noqa: SIM115 - closed below

            def chunks() -> Iterator[bytes]:
                assert proc.stdout is not None
                while chunk := proc.stdout.read(1 << 20):
                    copy.write(chunk)
                    yield chunk

            stream = _stream_of(chunks())
            try:
                info_art = sink.add_stream(RDB_ARTIFACT, stream)
            except BaseException:
                proc.kill()  # it may be blocked writing to a pipe nobody reads any more
                raise
            finally:
                stream.close()
                copy.close()
                rc = proc.wait()
                err_reader.join(10)
            err = b"".join(err_chunks).decode(errors="replace")
            if rc != 0 or "Transfer finished with success" not in err:
                raise self._rdb_error(err)
            server = throwaway.start()
            with _redis_errors(self.url, "fingerprinting the RDB"):
                dbs = self._dbs(server)
                digests = {db: _digest_db(throwaway.client(db)) for db in dbs}
        finally:
            throwaway.stop()
            shutil.rmtree(work, ignore_errors=True)
        extra: dict[str, Any] = {"url": self.url.text(), "mode": "rdb", "databases": dbs}
        if delay >= 0:
            extra["repl-diskless-sync-delay"] = delay
        return ComponentResult([info_art], _fingerprint_of(digests),
                               {"redis": version, "redis-cli": _cli_version(cli)}, extra)

    def _rdb_error(self, err: str) -> SourceError:
        lines = [ln for ln in err.splitlines() if ln.strip()
                 and not ln.startswith(("sending REPLCONF", "SYNC sent"))]
        text = " | ".join(lines)[-600:] or "no output"
        if "NOAUTH" in text or "WRONGPASS" in text or "AUTH failed" in text:
            return SourceUnavailable(f"Redis at {self.url.address}: authentication failed "
                                     f"(redis-cli --rdb: {text})",
                                     hint="check `username` and password_env/password_file")
        if "Could not connect" in text or "Connection refused" in text:
            return SourceUnavailable(f"cannot reach Redis at {self.url.address}: {text}",
                                     hint="check that the server runs and the url")
        return SourceError(f"redis-cli --rdb from {self.url.address} failed: {text}",
                           hint="managed Redis services often refuse SYNC: use `mode: "
                                "logical`; the ACL user needs the SYNC/PSYNC commands")

    # -- restore
    def restore(self, source: ArtifactSource, *, target: Target | None = None,
                tables: list[str] | None = None, force: bool = False) -> None:
        if tables is not None:
            raise UsageError("a Redis component is restored whole; single keys or key "
                             "patterns cannot be selected",
                             hint="restore it into a scratch server (--to NAME=redis://"
                                  "127.0.0.1:6390) and copy the keys you need from there")
        url = self._target(target)
        force = force or self.force_restore
        names = source.names()
        if LOGICAL_ARTIFACT in names:
            self._restore_logical(source, url, force)
        elif RDB_ARTIFACT in names:
            self._restore_rdb(source, url, force)
        else:
            raise SourceCorrupt("the snapshot holds no Redis artifact for this component "
                                f"(it has: {', '.join(names) or 'nothing'})")

    def _mapping(self, url: RedisUrl, backup_dbs: Sequence[int]) -> dict[int, int]:
        """backup db -> target db. A URL without a db keeps the numbers; with one, a backup of
        exactly one database goes into it."""
        if url.db is None or list(backup_dbs) == [url.db]:
            return {db: db for db in backup_dbs}
        if len(backup_dbs) == 1:
            return {backup_dbs[0]: url.db}
        raise UsageError(f"the backup holds databases {', '.join(map(str, backup_dbs))}; "
                         f"{url.text()} names only database {url.db}",
                         hint=f"leave the database out of the URL ({url.text(db=None)}) "
                              "to restore each into the database of the same number")

    def _prepare(self, url: RedisUrl, mapping: Mapping[int, int], force: bool) -> None:
        """Refuse (or, when forced, empty) target databases that hold keys."""
        with _redis_errors(url, "checking the target"):
            busy = {db: n for db in sorted(set(mapping.values()))
                    if (n := int(self._client(url, db).dbsize()))}
            if busy and not force:
                held = ", ".join(f"db {db} holds {n} keys" for db, n in busy.items())
                raise SourceInUse(f"Redis {url.text(db=None)}: {held}; refusing to overwrite",
                                  hint="pass --force to `stackvault restore` (or set "
                                       "force_restore: true on the component) to empty those "
                                       "databases and restore into them; or restore "
                                       "elsewhere with --to NAME=redis://HOST:PORT")
            for db in busy:
                self._client(url, db).flushdb()
        self._restored_map = {t: b for b, t in mapping.items()}
        self._restored_target = url

    def _restore_logical(self, source: ArtifactSource, url: RedisUrl, force: bool) -> None:
        writer = _Writer(lambda db: self._client(url, db), url)
        stream = source.open(LOGICAL_ARTIFACT)
        try:
            records = _Reader(stream, f"the snapshot's {LOGICAL_ARTIFACT}").records()
            _, meta = next(records)
            backup_dbs = [int(db) for db in meta.get("databases", [])]
            mapping = self._mapping(url, backup_dbs)
            self._prepare(url, mapping, force)
            try:
                with _redis_errors(url, "restoring"):
                    for kind, value in records:
                        if kind == "db":
                            if value not in mapping:
                                raise SourceCorrupt(f"the stream holds db {value}, which its "
                                                    "header does not list")
                            writer.select(mapping[value])
                        elif kind == "key":
                            if writer.db is None:
                                raise SourceCorrupt("a key before any database record")
                            writer.add(*value)
                        elif kind == "end":
                            writer.finish()
                            expected = {int(k): int(v) for k, v in value["keys"].items()}
                            got = {b: writer.progress.done.get(t, 0)
                                   for b, t in mapping.items()}
                            if expected != got:
                                raise SourceCorrupt(f"the stream announced {expected} keys "
                                                    f"per db but held {got}")
            except StackVaultError as e:
                raise type(e)(f"{e.args[0]}; {writer.progress.text()}", hint=e.hint) from e
        finally:
            stream.close()

    def _restore_rdb(self, source: ArtifactSource, url: RedisUrl, force: bool) -> None:
        server_bin = self._bin("redis-server")
        work = Path(tempfile.mkdtemp(prefix="stackvault-redis-", dir=self.tmp_dir))
        throwaway = _Throwaway(server_bin, work)
        try:
            source.extract(RDB_ARTIFACT, work / RDB_ARTIFACT)  # checked before it returns
            server = throwaway.start()
            backup_dbs = (list(self.databases) if self.databases is not None
                          else list(_keyspace(server)))
            mapping = self._mapping(url, backup_dbs)
            self._prepare(url, mapping, force)
            writer = _Writer(lambda db: self._client(url, db), url)
            try:
                with _redis_errors(url, "restoring"):
                    for b, t in mapping.items():
                        writer.select(t)
                        src = throwaway.client(b)
                        for keys in _scan(src, set()):
                            for item in _read_batch_dump_only(src, keys):
                                writer.add(*item)
                    writer.finish()
            except StackVaultError as e:
                raise type(e)(f"{e.args[0]}; {writer.progress.text()}", hint=e.hint) from e
        finally:
            throwaway.stop()
            shutil.rmtree(work, ignore_errors=True)


def _read_batch_dump_only(client: redis.Redis, keys: Iterable[bytes]
                          ) -> list[tuple[bytes, int, bytes]]:
    """(key, PTTL, DUMP) of each key still there (a private server: no MULTI needed)."""
    keys = list(keys)
    with client.pipeline(transaction=False) as p:
        for k in keys:
            p.pttl(k)
            p.dump(k)
        res = p.execute()
    return [(k, int(pttl), payload) for k, pttl, payload
            in zip(keys, res[0::2], res[1::2], strict=True)
            if payload is not None and pttl != -2]


def _cli_version(cli: str) -> str:
    try:
        out = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(r"(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else out.strip()
