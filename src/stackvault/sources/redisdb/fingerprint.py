"""Fingerprints of Redis databases from keys' logical content (never DUMP bytes)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stackvault.sources.base import (
    Fingerprint,
)

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


