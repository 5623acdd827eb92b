"""Redis adapter: a logical SCAN+DUMP stream or the server's RDB, encoding-free fingerprints."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

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
    ProbeResult,
    Target,
)
from stackvault.sources.redisdb.conn import RedisUrl, _keyspace, _redis_errors, parse_url
from stackvault.sources.redisdb.fingerprint import _DbDigest, _fingerprint_of
from stackvault.sources.redisdb.keys import _digest_db, _read_batch, _scan
from stackvault.sources.redisdb.settings import (
    CONNECT_TIMEOUT,
    INSTALL_HINT,
    IO_TIMEOUT,
    LOGICAL_ARTIFACT,
    RDB_ARTIFACT,
)
from stackvault.sources.redisdb.stream import (
    _U32,
    FORMAT,
    MAGIC,
    _json_record,
    _key_record,
    _Reader,
    _stream_of,
)
from stackvault.sources.redisdb.throwaway import _Throwaway
from stackvault.sources.redisdb.writer import _Writer

_SCRATCH_KEYS = ("scratch_pid", "scratch_dir")  # a drill's throwaway server

__all__ = ["LOGICAL_ARTIFACT", "MAGIC", "RDB_ARTIFACT", "RedisSource", "_Reader"]


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
        if "url" not in target or set(target) - {"url", *_SCRATCH_KEYS}:
            raise UsageError(f"a redis restore target takes exactly 'url', got {sorted(target)}",
                             hint="e.g. --to cache=redis://127.0.0.1:6390/0")
        return parse_url(str(target["url"]))

    # -- integrity rules (stackvault integrity): strings in the first configured database
    def _db0(self) -> redis.Redis:
        db = self.url.db if self.url.db is not None else (self.databases or [0])[0]
        return self._client(self.url, db)

    def scan_keys(self, glob: str) -> list[str]:
        """Keys matching a SCAN pattern (`*`, `?`, `[...]`), decoded as UTF-8."""
        with _redis_errors(self.url, "scanning keys"):
            return [k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else str(k)
                    for k in self._db0().scan_iter(match=glob, count=1000)]

    def get_values(self, keys: list[str]) -> list[str | None]:
        with _redis_errors(self.url, "reading keys"):
            raw = self._db0().mget(keys) if keys else []
        return [None if v is None else v.decode("utf-8", "surrogateescape")
                if isinstance(v, bytes) else str(v) for v in raw]

    def set_values(self, values: Mapping[str, str]) -> None:
        with _redis_errors(self.url, "writing keys"):
            if values:
                self._db0().mset(dict(values))

    def empty(self) -> int:
        """`stackvault reset`: FLUSHDB every configured (else every non-empty) database;
        return the keys removed."""
        with _redis_errors(self.url, "emptying"):
            client = self._client(self.url)
            dbs = list(self.databases) if self.databases is not None else list(
                _keyspace(client))
            removed = 0
            for db in dbs:
                c = self._client(self.url, db)
                removed += int(c.dbsize())
                c.flushdb()
            return removed

    def delete_keys(self, keys: list[str]) -> int:
        with _redis_errors(self.url, "deleting keys"):
            return int(self._db0().delete(*keys)) if keys else 0

    # -- drills
    def scratch_target(self, label: str) -> Target:
        """A throwaway redis-server (this machine's redis-server, or redis_bin_dir's) on a free
        loopback port with the component's credentials: the drill never writes to a live
        Redis. Removed by `remove_target`."""
        folder = Path(tempfile.mkdtemp(prefix=f"stackvault-drill-{label}-redis-",
                                       dir=self.tmp_dir))
        server = _Throwaway(self._bin("redis-server"), folder, username=self.username,
                            password=self._password())
        try:
            server.start()
        except BaseException:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return {"url": f"redis://127.0.0.1:{server.port}", "scratch_pid": server.pid,
                "scratch_dir": str(folder)}

    def remove_target(self, target: Target) -> None:
        """Stop a drill's throwaway server; a target given in drill.targets is emptied of
        the databases the drill restored into (FLUSHDB)."""
        if "scratch_pid" in target:
            server = _Throwaway("", Path(str(target["scratch_dir"])))
            server.pid = int(target["scratch_pid"])
            server.stop()
            shutil.rmtree(str(target["scratch_dir"]), ignore_errors=True)
            return
        url = self._target(target)
        with _redis_errors(url, "cleaning up the drill target"):
            for db in ([url.db] if url.db is not None else
                       list(self.databases or _keyspace(self._client(url)))):
                self._client(url, db).flushdb()

    def run_probe(self, probe: Mapping[str, Any], *, target: Target | None = None) -> str:
        """`{"key": KEY}`: the key's type ('' if it does not exist)."""
        if set(probe) != {"key"}:
            raise UsageError(f"a redis probe checks a `key`; got {', '.join(sorted(probe))}")
        url = self._target(target)
        with _redis_errors(url, "probing"):
            found = self._client(url, url.db or 0).type(str(probe["key"]))
        text = found.decode() if isinstance(found, bytes) else str(found)
        return "" if text == "none" else text

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
