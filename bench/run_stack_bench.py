"""Redis, Qdrant and ChromaDB benchmark: StackVault against what operators run today.

    .venv/bin/python bench/run_stack_bench.py [--only redis,qdrant,chroma] [--repeat 3]
        [--redis-keys 1000000] [--points 100000] [--records 100000] [--json out.json]

Every StackVault figure is the whole CLI command as a user runs it (`stackvault -c CFG
--json backup|restore`, start-up and the default Argon2id key derivation included,
STACKVAULT_PASSWORD set, STACKVAULT_KDF unset), each first backup into a fresh repository.
Steps that are repeated run interleaved with their peer (peer, then StackVault, per round) and
the median is reported.

- **redis**: a throwaway redis-server (`--repl-diskless-sync-delay 0`) filled with
  `redis-cli --pipe`: 97 % strings of ~100 bytes, 1 % each hashes (10 fields), lists (10
  items) and sets (10 members). Peer: `redis-cli --rdb FILE` for the backup, a fresh
  redis-server loading that file (until PING answers and DBSIZE is right) for the restore.
  StackVault: a redis component in `mode: rdb` and in `mode: logical`, one repository each.
  Then the stored bytes the next backup adds after: no change; SET of every 100th key
  (scattered); 1 % of the key names in one range (clustered by name); a run of 1 % of the keys
  contiguous in the RDB's order and one contiguous in SCAN order (the logical stream's order);
  an EXPIRE on 1 % of the keys, and one more backup with no change after it. Restore: `stackvault
  restore --to cache=redis://SECOND --yes` into a second, empty throwaway server.
- **qdrant**: a qdrant-client local-mode folder with one collection of N points (384-d random
  float32, cosine, a small payload). **chroma**: a ChromaDB PersistentClient folder with one
  collection of N records (384-d, a ~150-character document, a small metadata; added 5,000 at
  a time, embedding_function=None). For both: `stackvault backup` against `tar -cf - FOLDER |
  zstd -3 > FILE` (no standard tool exists; copying the folder is what operators do), restore
  into a new folder (`--to NAME=FOLDER`) against `zstd -dc FILE | tar -xf -`, and the stored
  bytes a next backup adds after changing the payload/metadata of 1 % of the points: scattered
  (every 100th id) and clustered (the first 1 % of ids).

Setup (filling the stores) is not timed against anything but is reported. Diagnostics (the
adapters' read paths timed in-process) are reported beside the results to name slow paths.
Servers are stopped by PID; the temporary folder is removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from support import redis_server as rs  # noqa: E402

PASSWORD = "stackvault-bench-password"
STACKVAULT = Path(sys.executable).parent / "stackvault"
DIMS = 384
MB = 1_000_000
MIB = 1 << 20

CPU: dict[str, list[float]] = {}  # step -> CPU seconds (user+sys) of the command's processes


# --- helpers ------------------------------------------------------------------------------------


def timed(cmd: list[str], *, env: dict[str, str] | None = None, step: str | None = None,
          ok_codes: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Wall seconds and stdout of a command; with `step`, also record the CPU time of the
    command and every process it waited for (not daemonized servers)."""
    subprocess.run(["sync"], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in ok_codes:
        raise SystemExit(f"{cmd} failed ({proc.returncode}): {proc.stderr[-2000:]}"
                         f"{proc.stdout[-2000:]}")
    if step:
        CPU.setdefault(step, []).append(after.ru_utime - before.ru_utime
                                        + after.ru_stime - before.ru_stime)
    return took, proc.stdout


def shell(script: str) -> list[str]:
    return ["bash", "-o", "pipefail", "-c", script]


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def med(values: list[float]) -> float:
    return statistics.median(values)


def sv_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKVAULT_")}
    env["STACKVAULT_PASSWORD"] = PASSWORD  # STACKVAULT_KDF unset: the default Argon2id
    env["TMPDIR"] = str(work)  # rdb mode's temporary copy lands in the work folder
    return env


class Stack:
    """One stackvault.yaml with one component, and its own fresh repository."""

    def __init__(self, work: Path, name: str, component: str, body: str) -> None:
        self.cfg, self.repo = work / f"{name}.yaml", work / f"repo-{name}"
        self.component = component
        shutil.rmtree(self.repo, ignore_errors=True)
        self.cfg.write_text(f"version: 1\nrepository:\n  location: {self.repo}\n"
                            f"components:\n  {component}:\n{body}")
        self.env = sv_env(work)
        self.sv = [str(STACKVAULT), "-c", str(self.cfg), "--json"]
        subprocess.run([*self.sv, "init"], env=self.env, check=True, capture_output=True)

    def backup(self, step: str | None = None) -> tuple[float, dict[str, Any]]:
        took, out = timed([*self.sv, "backup"], env=self.env, step=step)
        report = json.loads(out)
        assert report["complete"], report
        return took, report

    def restore(self, to: str, step: str | None = None, *, may_fail: bool = False
                ) -> tuple[float, dict[str, Any]]:
        """With `may_fail`, a restore that fails or does not verify (exit 3) is returned
        (its report says why) instead of ending the benchmark."""
        took, out = timed([*self.sv, "restore", "--to", f"{self.component}={to}", "--yes"],
                          env=self.env, step=step, ok_codes=(0, 3) if may_fail else (0,))
        report = json.loads(out)
        assert report["ok"] or may_fail, report
        return took, report


def spawn(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` in a fresh interpreter (the stores' clients cache state per process and
    local Qdrant locks its folder), return its result."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


# --- Redis --------------------------------------------------------------------------------------


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def redis_key(i: int) -> bytes:
    kind = i % 100
    prefix = {1: b"h", 2: b"l", 3: b"s"}.get(kind, b"k")
    return b"%s:%07d" % (prefix, i)


def redis_string(rng: random.Random, i: int, rev: int) -> bytes:
    """~100 bytes of a JSON-ish cache entry (what many applications keep in Redis)."""
    return (b'{"id":%d,"rev":%d,"user":"u%06d","ts":%d,"token":"%s"}'
            % (i, rev, rng.randrange(1_000_000), 1_790_000_000 + rng.randrange(10_000_000),
               rng.randbytes(20).hex().encode()))


def redis_commands(indices: range | list[int], rev: int, seed: int) -> bytes:
    """RESP commands writing the keys `indices` at revision `rev` (rev 1: create; later
    revisions: a new string value, a changed hash field / list item / a new set member)."""
    rng = random.Random(seed * 1_000_003 + rev)
    out = []
    for i in indices:
        key, kind = redis_key(i), i % 100
        if kind == 1:
            if rev == 1:
                fields: list[bytes] = []
                for f in range(10):
                    fields += [b"field%d" % f, b"value-%d-%d-%s" % (i, f, rng.randbytes(4).hex()
                                                                   .encode())]
                out.append(_resp(b"HSET", key, *fields))
            else:
                out.append(_resp(b"HSET", key, b"field0", b"rev-%d-%d" % (rev, i)))
        elif kind == 2:
            if rev == 1:
                out.append(_resp(b"RPUSH", key, *(b"item-%d-%d" % (i, n) for n in range(10))))
            else:
                out.append(_resp(b"LSET", key, b"0", b"rev-%d-%d" % (rev, i)))
        elif kind == 3:
            if rev == 1:
                out.append(_resp(b"SADD", key, *(b"member-%d-%d" % (i, n) for n in range(10))))
            else:
                out.append(_resp(b"SADD", key, b"rev-%d-%d" % (rev, i)))
        else:
            out.append(_resp(b"SET", key, redis_string(rng, i, rev)))
    return b"".join(out)


def redis_pipe(server: rs.RedisServer, payload: bytes) -> float:
    """Mass insertion: `redis-cli --pipe` (the documented fast path); returns seconds."""
    assert rs.REDIS_CLI is not None
    t0 = time.perf_counter()
    proc = subprocess.run([rs.REDIS_CLI, "-p", str(server.port), "--pipe"], input=payload,
                          capture_output=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0 or b"errors: 0," not in proc.stdout:
        raise SystemExit(f"redis-cli --pipe failed: {proc.stdout[-500:]!r} {proc.stderr!r}")
    return took


def rdb_key_order(path: Path) -> list[bytes]:
    """The keys of an RDB file in the order it stores them (a minimal reader: the types a
    Redis 7.0 writes for strings, hashes, lists and sets; no modules, streams or zsets)."""
    data = memoryview(path.read_bytes())
    if bytes(data[:5]) != b"REDIS":
        raise ValueError("not an RDB file")
    pos = 9

    def length() -> tuple[int, bool]:
        nonlocal pos
        b = data[pos]
        kind = b >> 6
        if kind == 0:
            pos += 1
            return b & 0x3F, False
        if kind == 1:
            pos += 2
            return ((b & 0x3F) << 8) | data[pos - 1], False
        if kind == 2:
            if b == 0x80:
                pos += 5
                return int(struct.unpack(">I", data[pos - 4:pos])[0]), False
            pos += 9
            return int(struct.unpack(">Q", data[pos - 8:pos])[0]), False
        pos += 1
        return b & 0x3F, True

    def string(keep: bool = False) -> bytes:
        nonlocal pos
        n, special = length()
        if not special:
            pos += n
            return bytes(data[pos - n:pos]) if keep else b""
        if n in (0, 1, 2):  # an integer of 1, 2 or 4 bytes
            size = (1, 2, 4)[n]
            pos += size
            return str(int.from_bytes(data[pos - size:pos], "little", signed=True)).encode()
        if n == 3:  # LZF
            clen, _ = length()
            length()
            pos += clen
            if keep:
                raise ValueError("an LZF-compressed key name")
            return b""
        raise ValueError(f"unknown string encoding {n}")

    keys: list[bytes] = []
    while True:
        op = data[pos]
        pos += 1
        if op == 0xFF:
            return keys
        if op == 0xFA:
            string(), string()
        elif op == 0xFB:
            length(), length()
        elif op == 0xFE:
            length()
        elif op == 0xFC:
            pos += 8
        elif op == 0xFD:
            pos += 4
        elif op == 0xF8:
            length()
        elif op == 0xF9:
            pos += 1
        elif op in (0, 9, 10, 11, 12, 13, 16, 17, 20):  # one string value
            keys.append(string(keep=True))
            string()
        elif op in (1, 2, 14):  # a count, then strings
            keys.append(string(keep=True))
            for _ in range(length()[0]):
                string()
        elif op == 4:  # hash table: pairs
            keys.append(string(keep=True))
            for _ in range(2 * length()[0]):
                string()
        elif op == 18:  # quicklist 2: (container, listpack) per node
            keys.append(string(keep=True))
            for _ in range(length()[0]):
                length()
                string()
        else:
            raise ValueError(f"RDB type/opcode {op} is not handled by this reader")


def scan_order(server: rs.RedisServer) -> list[bytes]:
    client = server.client()
    cursor, out = 0, []
    while True:
        cursor, keys = client.scan(cursor, count=256)  # what the logical mode asks for
        out += keys
        if cursor == 0:
            return out


def redis_apply(server: rs.RedisServer, indices: list[int], rev: int, seed: int) -> None:
    redis_pipe(server, redis_commands(indices, rev, seed))


def bench_redis(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    assert rs.REDIS_CLI is not None
    n, seed = args.redis_keys, args.seed
    r: dict[str, Any] = {"keys": n}
    with rs.redis_server(work / "redis-src") as src, rs.redis_server(work / "redis-dst") as dst:
        client = src.client()
        r["redis_version"] = client.info("server")["redis_version"]
        t0 = time.perf_counter()
        payload = redis_commands(range(n), 1, seed)
        r["setup_generate_s"] = time.perf_counter() - t0
        r["setup_load_s"] = redis_pipe(src, payload)
        del payload
        assert client.dbsize() == n, client.dbsize()
        r["used_memory"] = int(client.info("memory")["used_memory"])
        print(f"redis: {n} keys loaded in {r['setup_load_s']:.1f} s "
              f"(generated in {r['setup_generate_s']:.1f} s), used_memory "
              f"{r['used_memory'] / MIB:.0f} MiB", file=sys.stderr)

        peer_rdb = work / "peer.rdb"
        peer_cmd = [rs.REDIS_CLI, "-p", str(src.port), "--rdb", str(peer_rdb)]

        def stacks(i: int) -> dict[str, Stack]:
            return {mode: Stack(work, f"redis-{mode}-{i}", "cache",
                                f"    type: redis\n    url: {src.url}\n    mode: {mode}\n")
                    for mode in ("rdb", "logical")}

        runs: dict[str, list[float]] = {}
        reports: dict[str, dict[str, Any]] = {}
        sv: dict[str, Stack] = {}
        for i in range(args.repeat):
            if sv:
                for s in sv.values():
                    shutil.rmtree(s.repo, ignore_errors=True)
            runs.setdefault("peer_rdb_s", []).append(timed(peer_cmd, step="redis-cli --rdb")[0])
            sv = stacks(i)
            for mode, s in sv.items():
                took, reports[mode] = s.backup(step=f"redis {mode} backup")
                runs.setdefault(f"{mode}_backup_s", []).append(took)
            print(f"redis round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}"
                                                       for k, v in runs.items()),
                  file=sys.stderr)
        r.update({k: med(v) for k, v in runs.items()})
        r["runs"] = runs
        r["peer_rdb_bytes"] = peer_rdb.stat().st_size
        for mode, rep in reports.items():
            r[f"{mode}_stream_bytes"] = rep["summary"]["bytes_read"]
            r[f"{mode}_first_stored"] = rep["summary"]["data_added_stored"]
            r[f"{mode}_repo_bytes"] = tree_bytes(sv[mode].repo)

        # Diagnostics: the adapters' read paths, timed in this process.
        from stackvault.sources.redisdb.keys import _digest_db
        t0 = time.perf_counter()
        _digest_db(src.client())
        r["diag_fingerprint_scan_s"] = time.perf_counter() - t0

        # The next backups: what each kind of change costs in stored bytes.
        every = list(range(0, n, 100))
        order_rdb = [int(k.split(b":")[1]) for k in rdb_key_order(peer_rdb)]
        order_scan = [int(k.split(b":")[1]) for k in scan_order(src)]
        run = n // 100
        variants: list[tuple[str, str, list[int] | None]] = [
            ("unchanged", "no change", None),
            ("scattered", "SET/HSET/... on every 100th key", every),
            ("name_clustered", "1 % of keys, one range of key names", list(range(run))),
            ("rdb_run", "1 % of keys, one run in the RDB's order",
             order_rdb[n // 2:n // 2 + run]),
            ("scan_run", "1 % of keys, one run in SCAN order", order_scan[n // 2:n // 2 + run]),
            ("ttl_set", "EXPIRE (1 day) on 1 % of keys (every 100th, offset 7)", None),
            ("ttl_unchanged", "no change (1 % of keys have a TTL)", None),
        ]
        r["changes"] = {}
        for rev, (label, what, indices) in enumerate(variants, start=2):
            if indices is not None:
                redis_apply(src, indices, rev, seed)
            if label == "ttl_set":
                redis_pipe(src, b"".join(_resp(b"EXPIRE", redis_key(i), b"86400")
                                         for i in range(7, n, 100)))
            if label == "ttl_unchanged":
                time.sleep(1.0)
            touched = (len(indices) if indices is not None
                       else len(range(7, n, 100)) if label == "ttl_set" else 0)
            row: dict[str, Any] = {"what": what, "keys": touched}
            for mode, s in sv.items():
                took, rep = s.backup()
                stored = rep["summary"]["data_added_stored"]
                row[mode] = {"s": took, "stored": stored,
                             "share": stored / r[f"{mode}_first_stored"]}
            r["changes"][label] = row
            print(f"redis change {label}: " + ", ".join(
                f"{m} {row[m]['stored'] / MIB:.1f} MiB ({row[m]['share'] * 100:.1f} %)"
                for m in sv), file=sys.stderr)

        # Restore. Peer: the RDB of the current state, loaded by a fresh redis-server.
        timed(peer_cmd)
        expect = int(client.dbsize())
        restore_runs: dict[str, list[float]] = {}
        for i in range(args.repeat):
            folder = work / f"redis-load-{i}"
            folder.mkdir()
            shutil.copyfile(peer_rdb, folder / "dump.rdb")
            subprocess.run(["sync"], check=True)
            t0 = time.perf_counter()
            server = rs.start(folder)
            try:
                while int(server.client().dbsize()) != expect:
                    time.sleep(0.01)
                restore_runs.setdefault("peer_load_s", []).append(time.perf_counter() - t0)
            finally:
                rs.stop(server)
                shutil.rmtree(folder, ignore_errors=True)
            for mode, s in sv.items():
                dst.client().flushall()
                took, rep = s.restore(dst.url, step=f"redis {mode} restore")
                assert int(dst.client().dbsize()) == expect
                restore_runs.setdefault(f"{mode}_restore_s", []).append(took)
                restore_runs.setdefault(f"{mode}_restore_only_s", []).append(
                    rep["components"][0]["seconds"])
            print(f"redis restore round {i + 1}: " + ", ".join(
                f"{k} {v[-1]:.2f}" for k, v in restore_runs.items()), file=sys.stderr)
        r.update({k: med(v) for k, v in restore_runs.items()})
        r["restore_runs"] = restore_runs
        dst.client().flushall()
        t0 = time.perf_counter()
        _digest_db(src.client())
        r["diag_fingerprint_scan_after_s"] = time.perf_counter() - t0
    return r


# --- Qdrant and ChromaDB (built and changed in child processes) ---------------------------------


def _vectors(n: int, seed: int, kind: str) -> Any:
    """`random`: standard-normal float32 (neighbours almost equidistant: the hardest case for
    an approximate index). `clustered`: n/50 random topic centres, each point a centre plus
    noise (cosine ~0.9 within a topic, ~0 across), closer to real text embeddings."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal((n, DIMS), dtype=np.float32)
    centres = rng.standard_normal((max(1, n // 50), DIMS), dtype=np.float32)
    noise = rng.standard_normal((n, DIMS), dtype=np.float32)
    return centres[rng.integers(0, len(centres), n)] + np.float32(0.35) * noise


_WORDS = ("backup", "restore", "vector", "index", "chunk", "document", "store", "query",
          "answer", "model", "token", "embedding", "search", "recall", "latency", "shard",
          "replica", "payload", "filter", "stack", "snapshot")


def _document(i: int) -> str:
    rng = random.Random(i)
    return " ".join(rng.choice(_WORDS) for _ in range(20))


def build_qdrant(folder: str, n: int, seed: int, batch: int, vectors: str
                 ) -> dict[str, float]:
    import warnings

    from qdrant_client import QdrantClient, models

    warnings.filterwarnings("ignore")  # local mode warns above 20,000 points
    vecs = _vectors(n, seed, vectors)
    t0 = time.perf_counter()
    client = QdrantClient(path=folder)
    client.create_collection("chunks", vectors_config=models.VectorParams(
        size=DIMS, distance=models.Distance.COSINE))
    for s in range(0, n, batch):
        ids = list(range(s, min(n, s + batch)))
        client.upsert("chunks", points=models.Batch(
            ids=ids, vectors=vecs[s:s + len(ids)].tolist(),
            payloads=[{"doc": i // 20, "chunk": i % 20, "lang": ("en", "de", "fr")[i % 3],
                       "title": f"Document {i // 20}", "rev": 1} for i in ids]))
    took = time.perf_counter() - t0
    client.close()
    return {"setup_s": took}


def change_qdrant(folder: str, ids: list[int], rev: int) -> None:
    import warnings

    from qdrant_client import QdrantClient

    warnings.filterwarnings("ignore")
    client = QdrantClient(path=folder)
    client.set_payload("chunks", payload={"rev": rev}, points=ids)
    client.close()


def diag_qdrant(folder: str, batch: int) -> dict[str, float]:
    """Opening the folder, and scrolling every point with vectors as the adapter does (its
    default batch_size, then 16 times larger: local mode sorts every id on each call)."""
    import warnings

    from qdrant_client import QdrantClient

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    client = QdrantClient(path=folder)
    out = {"open_s": time.perf_counter() - t0}
    for label, limit in (("scroll_s", batch), ("scroll_x16_s", batch * 16)):
        t0 = time.perf_counter()
        offset, count = None, 0
        while True:
            records, offset = client.scroll("chunks", limit=limit, offset=offset,
                                            with_payload=True, with_vectors=True)
            count += len(records)
            if offset is None:
                break
        out[label] = time.perf_counter() - t0
    client.close()
    return out


def _chroma(folder: str) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=folder, settings=Settings(anonymized_telemetry=False))


def build_chroma(folder: str, n: int, seed: int, batch: int, vectors: str
                 ) -> dict[str, float]:
    vecs = _vectors(n, seed, vectors)
    t0 = time.perf_counter()
    col = _chroma(folder).create_collection("chunks", embedding_function=None)
    for s in range(0, n, batch):
        ids = list(range(s, min(n, s + batch)))
        col.add(ids=[str(i) for i in ids], embeddings=vecs[s:s + len(ids)],
                documents=[_document(i) for i in ids],
                metadatas=[{"doc": i // 20, "chunk": i % 20, "lang": ("en", "de", "fr")[i % 3],
                            "rev": 1} for i in ids])
    return {"setup_s": time.perf_counter() - t0}


def change_chroma(folder: str, ids: list[int], rev: int) -> None:
    col = _chroma(folder).get_collection("chunks", embedding_function=None)
    for s in range(0, len(ids), 5000):
        part = ids[s:s + 5000]
        col.update(ids=[str(i) for i in part],
                   metadatas=[{"doc": i // 20, "chunk": i % 20,
                               "lang": ("en", "de", "fr")[i % 3], "rev": rev} for i in part])


def diag_chroma(folder: str, batch: int) -> dict[str, float]:
    """Reading every record with get(limit, offset) pages, as the adapter does (its default
    batch_size, then 10 times larger)."""
    t0 = time.perf_counter()
    col = _chroma(folder).get_collection("chunks", embedding_function=None)
    out: dict[str, float] = {"open_s": time.perf_counter() - t0}
    total = col.count()
    for label, limit in (("paged_s", batch), ("paged_x10_s", batch * 10)):
        t0 = time.perf_counter()
        for i, offset in enumerate(range(0, total, limit)):
            col.get(limit=limit, offset=offset,
                    include=["embeddings", "documents", "metadatas", "uris"])
            if i == 9 and label == "paged_s":
                out["first_10_pages_s"] = time.perf_counter() - t0
        out[label] = time.perf_counter() - t0
    out["pages"] = (total + batch - 1) // batch
    return out


def bench_vectors(kind: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`qdrant` or `chroma`: setup, backup vs tar|zstd, restore vs zstd -d|tar, changes."""
    n = args.points if kind == "qdrant" else args.records
    folder = work / kind
    build, change, diag = ((build_qdrant, change_qdrant, diag_qdrant) if kind == "qdrant"
                           else (build_chroma, change_chroma, diag_chroma))
    batch = 256 if kind == "qdrant" else 500  # the components' default batch_size
    r: dict[str, Any] = {"n": n, "dims": DIMS, "embeddings": args.embeddings}
    print(f"{kind}: building {n} points ({args.embeddings}) in {folder} ...", file=sys.stderr)
    r.update(spawn(build, str(folder), n, args.seed, args.build_batch, args.embeddings))
    r["folder_bytes"] = tree_bytes(folder)
    print(f"{kind}: setup {r['setup_s']:.0f} s, folder {r['folder_bytes'] / MIB:.0f} MiB",
          file=sys.stderr)
    body = f"    type: {kind}\n    path: {folder}\n"
    tarball = work / f"{kind}.tar.zst"
    tar_cmd = shell(f"tar -C {folder.parent} -cf - {folder.name} | zstd -3 -q > {tarball}")

    runs: dict[str, list[float]] = {}
    rep: dict[str, Any] = {}
    stack: Stack | None = None
    for i in range(args.repeat):
        if stack is not None:
            shutil.rmtree(stack.repo, ignore_errors=True)
        runs.setdefault("tar_zstd_s", []).append(timed(tar_cmd, step=f"{kind} tar|zstd")[0])
        stack = Stack(work, f"{kind}-{i}", "vectors", body)
        took, rep = stack.backup(step=f"{kind} backup")
        runs.setdefault("backup_s", []).append(took)
        print(f"{kind} round {i + 1}: tar|zstd {runs['tar_zstd_s'][-1]:.2f} s, "
              f"backup {took:.2f} s", file=sys.stderr)
    assert stack is not None
    r.update({k: med(v) for k, v in runs.items()})
    r["runs"] = runs
    r["tar_zstd_bytes"] = tarball.stat().st_size
    r["stream_bytes"] = rep["summary"]["bytes_read"]
    r["first_stored"] = rep["summary"]["data_added_stored"]
    r["backup_only_s"] = rep["components"]["vectors"]["seconds"]
    r["diag"] = spawn(diag, str(folder), batch)
    print(f"{kind} diagnostics: {r['diag']}", file=sys.stderr)

    restore_runs: dict[str, list[float]] = {}
    for i in range(args.restore_repeat):
        dest = work / f"{kind}-untar-{i}"
        dest.mkdir()
        took, _ = timed(shell(f"zstd -dc {tarball} | tar -C {dest} -xf -"),
                        step=f"{kind} zstd -d|tar")
        restore_runs.setdefault("untar_s", []).append(took)
        shutil.rmtree(dest)
        dest = work / f"{kind}-restored-{i}"
        took, report = stack.restore(str(dest), step=f"{kind} restore", may_fail=True)
        restore_runs.setdefault("restore_s", []).append(took)
        restore_runs.setdefault("restore_only_s", []).append(report["components"][0]["seconds"])
        if not report["ok"]:
            r.setdefault("restore_failures", []).append(
                report["components"][0].get("error") or report["components"][0])
        elif dest.exists():
            r["restored_folder_bytes"] = tree_bytes(dest)
        shutil.rmtree(dest, ignore_errors=True)
        print(f"{kind} restore round {i + 1}: untar {restore_runs['untar_s'][-1]:.2f} s, "
              f"restore {took:.2f} s{'' if report['ok'] else ' FAILED: ' + str(report)}",
              file=sys.stderr)
    r.update({k: med(v) for k, v in restore_runs.items()})
    r["restore_runs"] = restore_runs

    r["changes"] = {}
    field = "payload" if kind == "qdrant" else "metadata"
    unit = "point" if kind == "qdrant" else "record"
    for rev, (label, what, ids) in enumerate([
            ("scattered", f"{field} of every 100th {unit}", list(range(0, n, 100))),
            ("clustered", f"{field} of the first 1 % of ids", list(range(n // 100)))], start=2):
        spawn(change, str(folder), ids, rev)
        took, rep = stack.backup()
        stored = rep["summary"]["data_added_stored"]
        timed(tar_cmd)
        r["changes"][label] = {"what": what, "s": took, "stored": stored,
                               "share": stored / r["first_stored"],
                               "tar_zstd_bytes": tarball.stat().st_size}
        print(f"{kind} change {label}: {stored / MIB:.2f} MiB "
              f"({stored / r['first_stored'] * 100:.1f} %)", file=sys.stderr)
    return r


# --- report -------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×"


def mib(b: float) -> str:
    return f"{b / MIB:.1f} MiB"


def report_redis(r: dict[str, Any], repeat: int) -> list[str]:
    out = [f"Redis {r['redis_version']}, {r['keys']:,} keys (used_memory {mib(r['used_memory'])}; "
           f"RDB {mib(r['peer_rdb_bytes'])}); loaded with `redis-cli --pipe` in "
           f"{r['setup_load_s']:.1f} s (setup). Median of {repeat} interleaved runs.", "",
           "| step | peer | StackVault rdb | ratio | StackVault logical | ratio |",
           "|---|---:|---:|---:|---:|---:|"]
    p = r["peer_rdb_s"]
    out.append(f"| backup (peer: `redis-cli --rdb FILE`) | {p:.2f} s | {r['rdb_backup_s']:.2f} s "
               f"| {ratio(r['rdb_backup_s'], p)} | {r['logical_backup_s']:.2f} s | "
               f"{ratio(r['logical_backup_s'], p)} |")
    out.append(f"| throughput, keys/s | {r['keys'] / p:,.0f} | {r['keys'] / r['rdb_backup_s']:,.0f}"
               f" | | {r['keys'] / r['logical_backup_s']:,.0f} | |")
    out.append(f"| artifact (stream) size | {mib(r['peer_rdb_bytes'])} | "
               f"{mib(r['rdb_stream_bytes'])} | | {mib(r['logical_stream_bytes'])} | |")
    pb = r["peer_rdb_bytes"]
    out.append(f"| stored by the first backup | {mib(pb)} (the RDB) | "
               f"{mib(r['rdb_first_stored'])} | {ratio(r['rdb_first_stored'], pb)} | "
               f"{mib(r['logical_first_stored'])} | {ratio(r['logical_first_stored'], pb)} |")
    pl = r["peer_load_s"]
    out.append(f"| restore (peer: fresh redis-server loads the RDB) | {pl:.2f} s | "
               f"{r['rdb_restore_s']:.2f} s | {ratio(r['rdb_restore_s'], pl)} | "
               f"{r['logical_restore_s']:.2f} s | {ratio(r['logical_restore_s'], pl)} |")
    out.append(f"| restore without the verification | {pl:.2f} s | "
               f"{r['rdb_restore_only_s']:.2f} s | {ratio(r['rdb_restore_only_s'], pl)} | "
               f"{r['logical_restore_only_s']:.2f} s | "
               f"{ratio(r['logical_restore_only_s'], pl)} |")
    out += ["", "Stored bytes each next backup adds, in order, as a share of the first backup "
            "(target < 5 % for a 1 % change; the peer stores the whole RDB again every time):",
            "", "| change before the backup | keys | rdb: added | share | time | logical: "
            "added | share | time |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["changes"].values():
        cells = []
        for m in ("rdb", "logical"):
            c = row[m]
            cells.append(f"{mib(c['stored'])} | {c['share'] * 100:.1f} % | {c['s']:.2f} s")
        out.append(f"| {row['what']} | {row['keys']:,} | " + " | ".join(cells) + " |")
    out += ["", f"Diagnostics: the fingerprint scan alone (SCAN + TYPE/PTTL/content of every key "
            f"over redis-py, what rdb mode runs on its throwaway server and every restore runs "
            f"for the verification; logical mode runs it interleaved with DUMP) "
            f"{r['diag_fingerprint_scan_s']:.2f} s."]
    return out


def report_vectors(kind: str, r: dict[str, Any], repeat: int, restore_repeat: int
                   ) -> list[str]:
    name = "Qdrant local mode" if kind == "qdrant" else "ChromaDB PersistentClient"
    unit = "points" if kind == "qdrant" else "records"
    n, fb = r["n"], r["folder_bytes"]
    out = [f"{name}: {n:,} {unit} of {r['dims']} dims ({r['embeddings']} float32); folder "
           f"{mib(fb)}; setup (not timed "
           f"against anything) {r['setup_s']:.0f} s = {n / r['setup_s']:,.0f} {unit}/s. "
           f"Backup: median of {repeat}, restore: median of {restore_repeat}.", "",
           "| step | peer: `tar \\| zstd -3` | StackVault | ratio |", "|---|---:|---:|---:|"]
    t, b = r["tar_zstd_s"], r["backup_s"]
    out.append(f"| backup | {t:.2f} s | {b:.2f} s | {ratio(b, t)} |")
    out.append(f"| throughput, {unit}/s | {n / t:,.0f} | {n / b:,.0f} | |")
    out.append(f"| throughput, folder MB/s | {fb / MB / t:.1f} | {fb / MB / b:.1f} | |")
    out.append(f"| stream read by StackVault, MB/s | | {r['stream_bytes'] / MB / b:.1f} "
               f"({mib(r['stream_bytes'])} stream) | |")
    out.append(f"| stored | {mib(r['tar_zstd_bytes'])} | {mib(r['first_stored'])} | "
               f"{ratio(r['first_stored'], r['tar_zstd_bytes'])} |")
    u, rs_ = r["untar_s"], r["restore_s"]
    failed = " (**verification FAILED**, see below)" if r.get("restore_failures") else ""
    out.append(f"| restore into a new folder (peer: `zstd -dc \\| tar -x`) | {u:.2f} s | "
               f"{rs_:.2f} s{failed} | {ratio(rs_, u)} |")
    out.append(f"| restore throughput, {unit}/s | {n / u:,.0f} | {n / rs_:,.0f} | |")
    out.append(f"| restore without the verification | {u:.2f} s | {r['restore_only_s']:.2f} s"
               f" | {ratio(r['restore_only_s'], u)} |")
    for row in r["changes"].values():
        out.append(f"| next backup after changing the {row['what']}: added | "
                   f"{mib(row['tar_zstd_bytes'])} (all again) | {mib(row['stored'])} = "
                   f"{row['share'] * 100:.1f} % of the first ({row['s']:.2f} s) | target < 5 % |")
    for err in r.get("restore_failures", []):
        out += ["", f"Restore failed: {err}"]
    d = r["diag"]
    if kind == "qdrant":
        out += ["", f"Diagnostics (in-process, qdrant-client local mode): opening the folder "
                f"{d['open_s']:.2f} s; scrolling every point with vectors, 256 per call "
                f"(the adapter's default batch_size) {d['scroll_s']:.2f} s, 4,096 per call "
                f"{d.get('scroll_x16_s', float('nan')):.2f} s. StackVault's component time "
                f"in the backup {r['backup_only_s']:.2f} s."]
    else:
        out += ["", f"Diagnostics (in-process, chromadb): opening {d['open_s']:.2f} s; reading "
                f"every record with get(limit=500, offset) ({d['pages']} pages) "
                f"{d['paged_s']:.2f} s, of which the first 10 pages "
                f"{d.get('first_10_pages_s', float('nan')):.2f} s; with limit=5,000 "
                f"{d.get('paged_x10_s', float('nan')):.2f} s. StackVault's component time in "
                f"the backup {r['backup_only_s']:.2f} s."]
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "load_start": os.getloadavg(),
            "python": sys.version.split()[0], "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="redis,qdrant,chroma",
                    help="comma-separated sections: redis, qdrant, chroma")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the timed backups "
                    "(and of the Redis restores)")
    ap.add_argument("--restore-repeat", type=int, default=1,
                    help="rounds of the Qdrant/ChromaDB restores (slow in local mode)")
    ap.add_argument("--redis-keys", type=int, default=1_000_000)
    ap.add_argument("--points", type=int, default=100_000, help="Qdrant points")
    ap.add_argument("--records", type=int, default=100_000, help="ChromaDB records")
    ap.add_argument("--build-batch", type=int, default=5000,
                    help="points/records per upsert/add while filling the stores")
    ap.add_argument("--embeddings", choices=("random", "clustered"), default="random",
                    help="Qdrant/ChromaDB vectors: standard-normal, or topic clusters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="parent of the temporary folder (default: the system temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - {"redis", "qdrant", "chroma"}
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if "redis" in only and rs.MISSING:
        ap.error(rs.MISSING)
    for tool in ("tar", "zstd"):
        if ({"qdrant", "chroma"} & set(only)) and shutil.which(tool) is None:
            ap.error(f"{tool} is needed (apt-get install -y {tool})")
    work = Path(tempfile.mkdtemp(prefix="sv-stackbench-", dir=args.work_dir))
    results: dict[str, Any] = {"machine": machine(), "repeat": args.repeat,
                               "restore_repeat": args.restore_repeat}
    try:
        for section in only:
            t0 = time.perf_counter()
            results[section] = (bench_redis(args, work) if section == "redis"
                                else bench_vectors(section, args, work))
            results[section]["section_s"] = time.perf_counter() - t0
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["cpu_s"] = {k: med(v) for k, v in CPU.items()}
    results["machine"]["load_end"] = os.getloadavg()
    m = results["machine"]
    lines = [f"Run {m['date']}: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
             f"StackVault {m['commit']}; load average at start {m['load_start'][0]:.2f}, "
             f"at end {m['load_end'][0]:.2f}.", ""]
    for section in only:
        if section == "redis":
            lines += report_redis(results["redis"], args.repeat)
        else:
            lines += report_vectors(section, results[section], args.repeat,
                                    args.restore_repeat)
        lines.append("")
    lines.append("CPU seconds (user+sys) of the timed commands and the processes they waited "
                 "for (median): " + "; ".join(f"{k} {v:.2f}"
                                              for k, v in results["cpu_s"].items()))
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
