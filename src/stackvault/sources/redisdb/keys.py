"""Reading keys in batches (SCAN, then TYPE/PTTL/DUMP/content in one MULTI/EXEC)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import redis

from stackvault.sources.redisdb.fingerprint import _CONTENT_CMDS, _content, _DbDigest
from stackvault.sources.redisdb.settings import BATCH_KEYS

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


