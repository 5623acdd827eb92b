"""ChromaDB adapter: collections of a PersistentClient folder or a server, paged into streams."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import chromadb
import numpy as np

from stackvault.errors import SourceCorrupt, SourceError, SourceInUse, StackVaultError, UsageError
from stackvault.sources.base import (
    ArtifactSink,
    ArtifactSource,
    ComponentResult,
    Fingerprint,
    GeneratorReader,
    ProbeResult,
    Target,
    remove_scratch_path,
    scratch_folder,
)
from stackvault.sources.chroma.conn import (
    Rename,
    Store,
    check_name,
    errors,
    open_client,
    parse_target,
    token,
)
from stackvault.sources.chroma.stream import (
    FORMAT,
    INDEX,
    MAGIC,
    Digest,
    Reader,
    artifact_name,
    dumps,
    frame,
    page_frame,
    settings_digest,
    space_of,
)
from stackvault.sources.chroma.verify import check_page, check_samples

__all__ = ["INDEX", "MAGIC", "ChromaSource", "Reader", "artifact_name"]

INCLUDE = ["embeddings", "documents", "metadatas", "uris"]
SAMPLES = 3  # sample queries per collection, with embeddings of stored records
TOP_K = 5
TEMP_PREFIX = "svtmp-"


@dataclass
class _Scanned:
    """What a scan of one collection found (filled while its artifact streams)."""

    digest: Digest
    queries: list[list[float]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)


class ChromaSource:
    """ChromaDB collections, through the chromadb client: a PersistentClient folder (`path`)
    or a server (`host`, `port`, `ssl`, a token from `token_env`); every collection or the
    configured `collections`. No embedding function is ever used (none is passed, so chromadb
    never downloads a model): records keep the embeddings they have.

    Backup: per collection one stream artifact (`collections/NNNN.svchroma`, format in
    `stream.py`) with its name, metadata, configuration and schema, then its records in pages
    of `batch_size` (`get` with limit/offset: ids, embeddings as float32, documents,
    metadatas, uris), then a trailer with the record count, digests and the results of a few
    sample queries (the embeddings of stored records, top 5 ids and distances). Memory holds
    one page and a 64-bit hash per id (to drop an id that paging returns twice). It is not a
    point-in-time image: records written during the backup may or may not be in it.
    `index.json` lists the collections.

    Restore: every collection is first built under a temporary name (`svtmp-...`): created
    with the backed-up schema (else configuration) and metadata, each page added and read back
    (documents, metadatas and uris equal, embeddings within a relative 1e-5), counts and
    digests checked against the trailer and the sample queries checked (see `verify.py`:
    their records at the recorded distances; HNSW search being approximate, the restored
    index need not answer the same). Only when all are built does the switch-over delete the
    collections they replace and rename each with `collection.modify(name=...)`; on any
    failure before it the temporary collections are deleted and the target is as it was. A
    target collection holding records is refused (SourceInUse) unless forced.

    Fingerprint, per collection NAME (the backup's name, also when restored under another):
    `counts[NAME]` records; `digests[NAME]` ids, documents, metadatas and uris;
    `digests["embeddings.NAME"]` the embeddings: their exact float32 values, except in cosine
    collections, where chromadb's normalisation moves values by a few float32 ulps on every
    write, so only each component's sign counts there (the restore's read-back check and the
    sample queries cover the values); `digests["settings.NAME"]` metadata and configuration.
    Each digest sums one SHA-256 per record modulo 2**256: order does not matter.
    """

    type: ClassVar[str] = "chroma"

    def __init__(self, path: str | Path | None = None, host: str | None = None,
                 port: int = 8000, ssl: bool = False, token_env: str | None = None,
                 tenant: str = "default_tenant", database: str = "default_database",
                 collections: Sequence[str] | None = None, batch_size: int = 500,
                 force_restore: bool = False) -> None:
        if (path is None) == (host is None):
            raise UsageError("a chroma component needs exactly one of `path` (a "
                             "PersistentClient folder) and `host` (a server)")
        if token_env and path is not None:
            raise UsageError("token_env is for a server (`host`), not a folder")
        if batch_size < 1:
            raise UsageError("batch_size must be at least 1")
        self.store = Store(path=Path(path).expanduser().absolute() if path else None,
                           host=host, port=int(port), ssl=bool(ssl), tenant=tenant,
                           database=database)
        self.token_env = token_env
        self.collections = [check_name(c) for c in collections] if collections else None
        self.batch_size = int(batch_size)
        self.force_restore = force_restore
        self._restored: tuple[Store, Rename, dict[str, str]] | None = None

    # -- helpers
    def _client(self, store: Store, *, create: bool = False) -> Any:
        auth = token(self.token_env) if store.host is not None else None
        return open_client(store, auth, create=create)

    def _target(self, target: Target | None) -> tuple[Store, Rename]:
        return (self.store, Rename()) if target is None else parse_target(target, self.store)

    def _names(self, client: Any, store: Store) -> list[str]:
        with errors(store, "listing collections"):
            live = sorted(c if isinstance(c, str) else c.name for c in client.list_collections())
        if self.collections is None:
            return [n for n in live if not n.startswith(TEMP_PREFIX)]
        missing = [n for n in self.collections if n not in live]
        if missing:
            raise SourceError(f"{store.text()}: no collection {', '.join(missing)}",
                              hint=f"it has: {', '.join(live) or 'none'}")
        return list(self.collections)

    def _pages(self, col: Any, store: Store
               ) -> Iterator[tuple[list[str], list[Any], list[Any], list[Any], np.ndarray]]:
        seen: set[int] = set()
        offset = 0
        while True:
            with errors(store, f"reading collection {col.name}"):
                got = col.get(limit=self.batch_size, offset=offset, include=INCLUDE)
            ids = list(got["ids"])
            if not ids:
                return
            offset += len(ids)
            n = len(ids)
            docs = _column(got, "documents", n)
            metas = [m or None for m in _column(got, "metadatas", n)]
            uris = _column(got, "uris", n)
            raw = got.get("embeddings")
            emb = (np.asarray(raw, dtype="<f4").reshape(n, -1) if raw is not None and n
                   else np.zeros((n, 0), dtype="<f4"))
            keep = []
            for i, rid in enumerate(ids):
                h = hash(rid)
                if h not in seen:
                    seen.add(h)
                    keep.append(i)
            if len(keep) != n:
                ids, docs, metas, uris = ([x[i] for i in keep] for x in (ids, docs, metas, uris))
                emb = emb[keep]
            yield ids, docs, metas, uris, emb
            if n < self.batch_size:
                return

    # -- inspection
    def probe(self) -> ProbeResult:
        try:
            client = self._client(self.store)
            with errors(self.store, "probing"):
                version = str(client.get_version())
                names = self._names(client, self.store)
                counts = {n: client.get_collection(n, embedding_function=None).count()
                          for n in names}
        except StackVaultError as e:
            return ProbeResult(False, "", None, str(e).split("\n", 1)[0])
        size = None
        if self.store.path is not None:
            size = sum(p.stat().st_size for p in self.store.path.rglob("*") if p.is_file())
        held = ", ".join(f"{n} {c} records" for n, c in counts.items()) or "no collections"
        return ProbeResult(True, version, size, f"{self.store.text()}: {held}")

    def describe_target(self, target: Target | None = None) -> str:
        store, rename = self._target(target)
        names = self.collections
        where = store.text()
        naming = "" if rename.pattern is None else f", renamed by {rename.pattern!r}"
        if names is None:
            return (f"{where}: the backup's collections{naming} are replaced (ones holding "
                    "records only with --force)")
        try:
            client = self._client(store, create=True)
            with errors(store, "describing the target"):
                live = {c if isinstance(c, str) else c.name for c in client.list_collections()}
                held = []
                for n in names:
                    final = rename.apply(n, len(names))
                    count = (client.get_collection(final, embedding_function=None).count()
                             if final in live else 0)
                    held.append(f"{final}: {count} records")
        except StackVaultError as e:
            return f"{where} (not reachable now: {str(e).splitlines()[0]})"
        return (f"{where} ({', '.join(held)}): replaced by the backup (ones holding records "
                "only with --force)")

    def fingerprint(self, *, target: Target | None = None) -> Fingerprint:
        store, rename = self._target(target)
        client = self._client(store)
        if self._restored is not None and self._restored[:2] == (store, rename):
            mapping = dict(self._restored[2])
        else:
            with errors(store, "listing collections"):
                live = [c if isinstance(c, str) else c.name for c in client.list_collections()]
            mapping = {}
            for n in live:
                orig = rename.original(n)
                if orig is not None and not n.startswith(TEMP_PREFIX) and (
                        self.collections is None or orig in self.collections):
                    mapping[n] = orig
        fp = Fingerprint()
        for final, orig in sorted(mapping.items()):
            with errors(store, f"opening collection {final}"):
                col = client.get_collection(final, embedding_function=None)
                conf, meta = _conf(col), col.metadata
            d = Digest(space_of(conf, meta))
            for page in self._pages(col, store):
                d.add(*page)
            _put(fp, orig, d, settings_digest(meta, conf))
        return fp

    # -- drills
    def scratch_target(self, label: str) -> Target:
        """A folder store drills into a new temporary folder; a server store into collections
        renamed `svdrill-<label>-<name>` on the same server."""
        if self.store.path is not None:
            return {"to": str(scratch_folder(label) / "chroma")}
        return {"to": f"#svdrill-{label.replace('_', '-')}-*"}

    def remove_target(self, target: Target) -> None:
        store, rename = self._target(target)
        if store.path is not None:
            remove_scratch_path(store.path)
            return
        if rename.pattern is None:
            raise UsageError("refusing to remove the collections of a drill target without a "
                             "rename pattern (it would be the live store)")
        client = self._client(store)
        with errors(store, "removing the drill's collections"):
            for c in client.list_collections():
                name = c if isinstance(c, str) else c.name
                if rename.original(name) is not None:
                    client.delete_collection(name)

    def run_probe(self, probe: Mapping[str, Any], *, target: Target | None = None) -> str:
        """`{"search": {"collection", "near_id", "top"}}`: the ids of the `top` records nearest
        to the stored embedding of `near_id`, comma-separated."""
        if set(probe) != {"search"}:
            raise UsageError(f"a chroma probe runs a `search`; got {', '.join(sorted(probe))}")
        spec = probe["search"]
        store, rename = self._target(target)
        name = rename.apply(str(spec["collection"]), 1 if rename.pattern and "*" not in
                            rename.pattern else 2)
        client = self._client(store)
        with errors(store, f"searching {name}"):
            col = client.get_collection(name, embedding_function=None)
            got = col.get(ids=[str(spec["near_id"])], include=["embeddings"])
            if not got["ids"]:
                return ""
            res = col.query(query_embeddings=[list(got["embeddings"][0])],
                            n_results=int(spec.get("top", 5)), include=[])
        return ",".join(str(i) for i in res["ids"][0])

    # -- integrity rules and reset
    def ids(self, collection: str) -> list[str]:
        client = self._client(self.store)
        with errors(self.store, f"listing the ids of {collection}"):
            col = client.get_collection(check_name(collection), embedding_function=None)
            out: list[str] = []
            page = max(self.batch_size * 10, 50_000)  # ids only: large pages are cheap
            while True:
                got = col.get(limit=page, offset=len(out), include=[])
                out += list(got["ids"])
                if len(got["ids"]) < page:
                    return out

    def delete_ids(self, collection: str, ids: Sequence[str]) -> int:
        client = self._client(self.store)
        with errors(self.store, f"deleting from {collection}"):
            col = client.get_collection(check_name(collection), embedding_function=None)
            for start in range(0, len(ids), 1000):
                col.delete(ids=[str(i) for i in ids[start:start + 1000]])
        return len(ids)

    def empty(self) -> int:
        """`stackvault reset`: delete every record of the component's collections (the
        collections and their settings stay)."""
        client = self._client(self.store)
        removed = 0
        for name in self._names(client, self.store):
            removed += self.delete_ids(name, self.ids(name))
        return removed

    # -- backup
    def backup(self, sink: ArtifactSink) -> ComponentResult:
        client = self._client(self.store)
        with errors(self.store, "connecting"):
            version = str(client.get_version())
        names = self._names(client, self.store)
        artifacts = []
        fp = Fingerprint()
        entries = []
        samples: dict[str, Any] = {}
        for i, name in enumerate(names):
            scanned: dict[str, Any] = {}
            reader = io.BufferedReader(GeneratorReader(self._stream(client, name, scanned)),
                                       buffer_size=1 << 20)
            try:
                artifacts.append(sink.add_stream(artifact_name(i), reader))
            finally:
                reader.close()
            s: _Scanned = scanned["scan"]
            _put(fp, name, s.digest, scanned["settings"])
            entries.append({"name": name, "artifact": artifact_name(i),
                            "records": s.digest.records})
            samples[name] = [{"ids": q["ids"]} for q in s.samples]
        index = dumps({"format": FORMAT, "chromadb": chromadb.__version__, "server": version,
                       "collections": entries})
        artifacts.append(sink.add_stream(INDEX, io.BytesIO(index)))
        where = (str(self.store.path) if self.store.path is not None
                 else self.store.text().split(" ", 2)[2])
        extra = {"store": where, "collections": {e["name"]: e["records"] for e in entries},
                 "sample_queries": samples}
        return ComponentResult(artifacts, fp, {"chromadb": chromadb.__version__,
                                               "chroma": version}, extra)

    def _stream(self, client: Any, name: str, out: dict[str, Any]) -> Iterator[bytes]:
        store = self.store
        with errors(store, f"opening collection {name}"):
            col = client.get_collection(name, embedding_function=None)
            conf, meta = _conf(col), col.metadata
            schema = col.schema.serialize_to_json() if getattr(col, "schema", None) else None
            count = col.count()
        scan = out["scan"] = _Scanned(Digest(space_of(conf, meta)))
        out["settings"] = settings_digest(meta, conf)
        header = {"format": FORMAT, "count": count, "collection": {
            "name": name, "id": str(col.id), "metadata": meta, "configuration": conf,
            "schema": schema}}
        yield MAGIC + frame(b"H", dumps(header))
        for ids, docs, metas, uris, emb in self._pages(col, store):
            if not scan.queries and emb.shape[1]:
                picks = sorted({0, len(ids) // 2, len(ids) - 1})[:SAMPLES]
                scan.queries = [[float(x) for x in emb[i]] for i in picks]
            scan.digest.add(ids, docs, metas, uris, emb)
            yield page_frame(ids, docs, metas, uris, emb)
        k = min(TOP_K, scan.digest.records)
        for q in scan.queries:
            with errors(store, f"querying collection {name}"):
                res = col.query(query_embeddings=[q], n_results=k, include=["distances"])
            scan.samples.append({"embedding": q, "ids": list(res["ids"][0]),
                                 "distances": [float(x) for x in res["distances"][0]]})
        yield frame(b"E", dumps({"records": scan.digest.records,
                                 "digest": scan.digest.content(),
                                 "embeddings": scan.digest.embeddings(),
                                 "samples": scan.samples}))

    # -- restore
    def restore(self, source: ArtifactSource, *, target: Target | None = None,
                tables: list[str] | None = None, force: bool = False) -> None:
        store, rename = self._target(target)
        client = self._client(store, create=True)
        with source.open(INDEX) as f:
            raw = f.read()
        try:
            index = json.loads(raw)
            entries = [(str(e["name"]), str(e["artifact"])) for e in index["collections"]]
        except (ValueError, KeyError, TypeError) as e:
            raise SourceCorrupt(f"the snapshot's {INDEX} is malformed ({e})") from None
        if tables:
            known = [n for n, _ in entries]
            unknown = [t for t in tables if t not in known]
            if unknown:
                raise UsageError(f"the snapshot has no collection {', '.join(unknown)}",
                                 hint=f"it has: {', '.join(known) or 'none'}")
            entries = [e for e in entries if e[0] in tables]
        finals = {n: rename.apply(n, len(entries)) for n, _ in entries}
        if len(set(finals.values())) != len(finals):
            raise UsageError("two collections would be restored under the same name")
        with errors(store, "checking the target"):
            live = {c if isinstance(c, str) else c.name for c in client.list_collections()}
            busy = {f: n for f in finals.values() if f in live
                    and (n := client.get_collection(f, embedding_function=None).count())}
        if busy and not (force or self.force_restore):
            held = ", ".join(f"{f} holds {n} records" for f, n in busy.items())
            raise SourceInUse(f"{store.text()}: {held}; refusing to overwrite",
                              hint="pass --force to `stackvault restore` (or set "
                                   "force_restore: true on the component) to replace them; "
                                   "or restore under other names with --to NAME='#restored-*'")
        temps: list[tuple[str, str]] = []
        try:
            for name, art in entries:
                temp = f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{len(temps):04d}"
                temps.append((temp, finals[name]))
                self._build(client, store, source, art, name, temp)
        except BaseException:
            for temp, _ in temps:
                try:
                    client.delete_collection(temp)
                except Exception:  # noqa: BLE001 - never created, or already gone
                    pass
            raise
        with errors(store, "switching the restored collections in"):
            for temp, final in temps:  # the switch-over
                if final in live:
                    client.delete_collection(final)
                client.get_collection(temp, embedding_function=None).modify(name=final)
        self._restored = (store, rename, {finals[n]: n for n, _ in entries})

    def _build(self, client: Any, store: Store, source: ArtifactSource, art: str, name: str,
               temp: str) -> None:
        what = f"the snapshot's {art} ({name})"
        with source.open(art) as f:
            col = None
            digest: Digest | None = None
            for kind, value in Reader(f, what).frames():
                if kind == "header":
                    c = value.get("collection") or {}
                    if c.get("name") != name:
                        raise SourceCorrupt(f"{what} holds collection {c.get('name')!r}")
                    conf, meta = c.get("configuration") or {}, c.get("metadata") or None
                    digest = Digest(space_of(conf, meta))
                    col = _create(client, store, temp, c.get("schema"), conf, meta)
                elif kind == "page":
                    assert col is not None and digest is not None
                    ids, docs, metas, uris, emb = value
                    with errors(store, f"restoring collection {name}"):
                        col.add(ids=ids, embeddings=emb if emb.shape[1] else None,
                                documents=_opt(docs), metadatas=_opt(metas), uris=_opt(uris))
                        back = col.get(ids=ids, include=INCLUDE)
                    digest.add(*check_page(value, back, what))
                else:
                    assert col is not None and digest is not None
                    if value.get("records") != digest.records \
                            or value.get("digest") != digest.content() \
                            or value.get("embeddings") != digest.embeddings():
                        raise SourceCorrupt(f"{what}: the records read back do not match "
                                            "the backup's count and digests")
                    with errors(store, f"checking collection {name}"):
                        if col.count() != digest.records:
                            raise SourceCorrupt(f"{what}: {col.count()} records restored, "
                                                f"{digest.records} expected")
                        check_samples(col, value.get("samples") or [],
                                      space_of(_conf(col), col.metadata), what)


def _create(client: Any, store: Store, name: str, schema: Any, conf: dict[str, Any],
            meta: Any) -> Any:
    with errors(store, f"creating collection {name}"):
        if any(str(k).startswith("hnsw:") for k in (meta or {})):
            # created the legacy way (index settings as metadata): so again, as chromadb
            # refuses those keys together with a schema or a configuration
            return client.create_collection(name, metadata=meta, embedding_function=None)
        if schema:
            from chromadb.api.types import Schema

            return client.create_collection(name, schema=Schema.deserialize_from_json(schema),
                                            metadata=meta, embedding_function=None)
        config = {k: v for k, v in conf.items()
                  if k in ("hnsw", "spann") and isinstance(v, dict)}
        return client.create_collection(name, configuration=config or None, metadata=meta,
                                        embedding_function=None)


def _conf(col: Any) -> dict[str, Any]:
    conf = getattr(col, "configuration_json", None) or getattr(col, "configuration", None)
    return dict(conf or {})


def _column(got: Any, key: str, n: int) -> list[Any]:
    value = got.get(key)
    return list(value) if value is not None else [None] * n


def _opt(values: list[Any]) -> list[Any] | None:
    return None if all(v is None for v in values) else values


def _put(fp: Fingerprint, name: str, d: Digest, settings: str) -> None:
    fp.counts[name] = d.records
    fp.digests[name] = d.content()
    fp.digests[f"embeddings.{name}"] = d.embeddings()
    fp.digests[f"settings.{name}"] = settings
