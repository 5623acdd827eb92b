"""Qdrant adapter: collections (config, payload indexes, aliases, points) as streamed JSON lines."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from qdrant_client import QdrantClient, models

from stackvault.errors import SourceCorrupt, SourceError, SourceInUse, SourceUnavailable, UsageError
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
from stackvault.sources.qdrant.codec import (
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_FORMAT,
    POINTS_FORMAT,
    TOP,
    CollectionDigest,
    answer,
    decode_vectors,
    encode_vectors,
    fingerprint_of,
    point_line,
    points_artifact,
    read_points,
)
from stackvault.sources.qdrant.store import (
    Rename,
    Store,
    api_key,
    config_of,
    create_args,
    errors,
    index_schema,
    opened,
    parse_target,
    schema_of,
)

__all__ = ["MANIFEST", "QdrantSource", "points_artifact"]

EXACT = models.SearchParams(exact=True, quantization=models.QuantizationSearchParams(ignore=True))


def _client_version() -> str:
    return metadata.version("qdrant-client")


class QdrantSource:
    """Collections of a Qdrant server (`url`, API key from `api_key_env`) or of a local-mode
    folder (`path`, what `QdrantClient(path=...)` opens), through qdrant-client.

    Artifacts (see docs/stack.md, "Qdrant", for the full format):

    - `points/NNNN.jsonl`, one per collection (NNNN: its place in the manifest): UTF-8 JSON
      lines. A header `{"format": "stackvault-qdrant-points", "version": 1, "collection":
      NAME}`; one line per point `{"id": ID, "payload": {...}, "vector": {NAME: ENC}}` (ids
      as the store gives them: integers or UUID strings; the unnamed vector is named "";
      ENC is `{"f32": B64}` for a dense vector, `{"f32": B64, "rows": R}` for a multivector,
      `{"indices": [...], "f32": B64}` for a sparse one, B64 being little-endian float32,
      Qdrant's own precision); an end record `{"end": true, "points": N}`. Points are
      scrolled `batch_size` at a time and streamed: memory holds one batch.
    - `collections.json`, written last: `{"format": "stackvault-qdrant", "version": 1,
      "mode": "server"|"local", "collections": [{"name", "artifact", "config" (the store's
      CollectionConfig as JSON), "payload_schema", "aliases", "points", "content",
      "searches"}]}`.

    Fingerprint: see `codec.fingerprint_of`; the sample searches are `sample_queries`
    points chosen by id hash, each searched with every vector it has (top 5 ids).

    Restore: refuses collections (or aliases) that already exist at the target unless
    forced; reads and checks every selected points stream first (framing, counts, digest,
    the artifact's SHA-256) without writing; then creates each collection with its
    configuration, payload indexes, points and aliases. Any failure deletes the collections
    this restore created: nothing is left half restored.
    """

    type: ClassVar[str] = "qdrant"

    def __init__(self, url: str | None = None, path: str | Path | None = None,
                 api_key_env: str | None = None, collections: Sequence[str] | None = None,
                 batch_size: int = 256, sample_queries: int = 3,
                 force_restore: bool = False) -> None:
        if (url is None) == (path is None):
            raise UsageError("give exactly one of `url` (a Qdrant server) and `path` (a "
                             "local-mode folder)")
        if path is not None and api_key_env is not None:
            raise UsageError("api_key_env is for a server (`url`), not a local folder")
        if isinstance(collections, str):
            raise UsageError("`collections` is a list of collection names")
        if batch_size < 1 or sample_queries < 0:
            raise UsageError("batch_size must be at least 1 and sample_queries at least 0")
        self.store = Store(url=url.rstrip("/") if url else None,
                           path=Path(path).expanduser().absolute() if path is not None
                           else None)
        self.api_key_env = api_key_env
        self.collections = list(dict.fromkeys(collections)) if collections else None
        self.batch_size = batch_size
        self.sample_queries = sample_queries
        self.force_restore = force_restore
        # (store, rename, {target name: backup name}) of the last restore, for fingerprint()
        self._restored: tuple[Store, Rename, dict[str, str]] | None = None

    def _open(self, store: Store, *, create: bool = False) -> Any:
        return opened(store, api_key(self.api_key_env) if store.url else None, create=create)

    # -- reading a store
    def _names(self, client: QdrantClient) -> list[str]:
        have = sorted(c.name for c in client.get_collections().collections)
        if self.collections is None:
            return have
        missing = [c for c in self.collections if c not in have]
        if missing:
            raise SourceUnavailable(f"{self.store.text()}: no collection "
                                    f"{', '.join(map(repr, missing))}",
                                    hint=f"it has: {', '.join(have) or 'no collections'}")
        return list(self.collections)

    @staticmethod
    def _aliases(client: QdrantClient) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a in client.get_aliases().aliases:
            out.setdefault(a.collection_name, []).append(a.alias_name)
        return {k: sorted(v) for k, v in out.items()}

    def _scroll(self, client: QdrantClient, name: str, digest: CollectionDigest
                ) -> Iterator[bytes]:
        """The points stream of a collection, adding each point to `digest`."""
        yield json.dumps({"format": POINTS_FORMAT, "version": FORMAT_VERSION,
                          "collection": name}, ensure_ascii=False).encode() + b"\n"
        offset = None
        while True:
            records, offset = client.scroll(name, limit=self.batch_size, offset=offset,
                                            with_payload=True, with_vectors=True)
            out = []
            for r in records:
                payload = r.payload if r.payload is not None else {}
                vectors = encode_vectors(r.vector)
                digest.add(r.id, payload, vectors)
                out.append(point_line(r.id, payload, vectors))
            yield b"".join(out)
            if offset is None:
                break
        yield json.dumps({"end": True, "points": digest.points}).encode() + b"\n"

    def _searches(self, client: QdrantClient, store: Store, name: str,
                  digest: CollectionDigest) -> list[list[Any]]:
        """[[sample id, vector name, answer ids], ...] for the sample points. A server is
        asked for an exact search: its HNSW index is approximate, and a restored copy (indexed
        anew, or not yet) could answer otherwise. Local mode always searches exactly."""
        params = EXACT if store.url else None
        out = []
        for pid, enc in digest.samples():
            vectors = decode_vectors(enc, unnamed=False)
            for vname in sorted(vectors):
                query = vectors[vname]
                if isinstance(query, models.SparseVector) and not query.indices:
                    continue
                hits = client.query_points(name, query=query, using=vname or None,
                                           limit=TOP + 1, with_payload=False,
                                           search_params=params).points
                out.append([pid, vname, answer(hits)])
        return out

    def _state(self, client: QdrantClient, store: Store, name: str,
               sink: ArtifactSink | None = None, artifact: str = ""
               ) -> tuple[dict[str, Any], Any]:
        """What the manifest and the fingerprint say about a collection (and its points
        stream in `sink`, if given)."""
        info = client.get_collection(name)
        digest = CollectionDigest(self.sample_queries)
        art = None
        if sink is not None:
            stream = GeneratorReader(self._scroll(client, name, digest))
            try:
                art = sink.add_stream(artifact, stream)  # type: ignore[arg-type]
            finally:
                stream.close()
        else:
            for _ in self._scroll(client, name, digest):
                pass
        return {"name": name, "artifact": artifact, "config": config_of(info),
                "payload_schema": schema_of(info), "points": digest.points,
                "content": digest.content,
                "searches": self._searches(client, store, name, digest)}, art

    # -- inspection
    def probe(self) -> ProbeResult:
        version = f"qdrant-client {_client_version()}"
        try:
            with self._open(self.store) as client, errors(self.store, "probing"):
                names = self._names(client)
                points = sum(int(client.count(n, exact=True).count) for n in names)
        except (SourceError, UsageError) as e:
            return ProbeResult(False, version, None, str(e).split("\n", 1)[0])
        return ProbeResult(True, version, None, f"{self.store.text()}: {len(names)} "
                           f"collection(s), {points} points")

    def describe_target(self, target: Target | None = None) -> str:
        store, rename = parse_target(target, self.store)
        which = ("the backup's collections" if rename.pattern is None else
                 f"collections named {rename.pattern!r}")
        return (f"{store.text()}: {which} recreated with their points and aliases "
                "(existing ones only with --force)")

    def fingerprint(self, *, target: Target | None = None) -> Fingerprint:
        store, rename = parse_target(target, self.store)
        with self._open(store) as client, errors(store, "fingerprinting"):
            have = sorted(c.name for c in client.get_collections().collections)
            if self._restored is not None and self._restored[:2] == (store, rename):
                mapping = {t: b for t, b in self._restored[2].items() if t in have}
            else:
                mapping = {}
                for t in have:
                    b = rename.original(t)
                    if b is None and self.collections and len(self.collections) == 1 \
                            and t == rename.pattern:
                        b = self.collections[0]
                    if b is not None and (self.collections is None or b in self.collections):
                        mapping[t] = b
            states = {b: self._state(client, store, t)[0] for t, b in mapping.items()}
        return fingerprint_of(states)

    # -- drills
    def scratch_target(self, label: str) -> Target:
        """Local mode drills into a new temporary folder; a server into collections named
        `svdrill_<label>_<name>` on the same server."""
        if self.store.path is not None:
            return {"to": str(scratch_folder(label) / "qdrant")}
        return {"to": f"prefix:svdrill_{label}_"}

    def remove_target(self, target: Target) -> None:
        store, rename = parse_target(target, self.store)
        if store.path is not None and store.path != self.store.path:
            remove_scratch_path(store.path)
            return
        if rename.pattern is None or "*" not in rename.pattern:
            raise UsageError("refusing to remove the collections of a drill target without a "
                             "prefix (it would be the live store)")
        with self._open(store) as client, errors(store, "removing the drill's collections"):
            for c in client.get_collections().collections:
                if rename.original(c.name) is not None:
                    client.delete_collection(c.name)

    def run_probe(self, probe: Mapping[str, Any], *, target: Target | None = None) -> str:
        """`{"search": {"collection", "near_id", "top"}}`: the ids of the `top` points
        nearest to the stored (first) vector of `near_id`, comma-separated."""
        if set(probe) != {"search"}:
            raise UsageError(f"a qdrant probe runs a `search`; got {', '.join(sorted(probe))}")
        spec = probe["search"]
        store, rename = parse_target(target, self.store)
        name = rename.new(str(spec["collection"]))
        point_id = _point_id(spec["near_id"])
        with self._open(store) as client, errors(store, f"searching {name}"):
            got = client.retrieve(name, [point_id], with_vectors=True)
            if not got:
                return ""
            vector = got[0].vector
            using = None
            if isinstance(vector, dict):
                using, vector = next(iter(sorted(vector.items())))
            hits = client.query_points(name, query=vector, using=using,
                                       limit=int(spec.get("top", 5))).points
        return ",".join(str(h.id) for h in hits)

    # -- integrity rules and reset
    def ids(self, collection: str) -> list[str]:
        out: list[str] = []
        with self._open(self.store) as client, errors(self.store, f"listing {collection}"):
            offset = None
            while True:
                records, offset = client.scroll(collection, limit=10_000, offset=offset,
                                                with_payload=False, with_vectors=False)
                out += [str(r.id) for r in records]
                if offset is None:
                    return out

    def delete_ids(self, collection: str, ids: Sequence[str]) -> int:
        points = [_point_id(i) for i in ids]
        with self._open(self.store) as client, errors(self.store, f"deleting from {collection}"):
            for start in range(0, len(points), 1000):
                client.delete(collection, points_selector=models.PointIdsList(
                    points=points[start:start + 1000]))
        return len(points)

    def empty(self) -> int:
        """`stackvault reset`: delete every point of the component's collections (the
        collections, their settings and aliases stay)."""
        with self._open(self.store) as client:
            names = self._names(client)
        return sum(self.delete_ids(n, self.ids(n)) for n in names)

    # -- backup
    def backup(self, sink: ArtifactSink) -> ComponentResult:
        with self._open(self.store) as client, errors(self.store, "backup"):
            names = self._names(client)
            aliases = self._aliases(client)
            entries = []
            arts = []
            for i, name in enumerate(names):
                entry, art = self._state(client, self.store, name, sink, points_artifact(i))
                entry["aliases"] = aliases.get(name, [])
                entries.append(entry)
                arts.append(art)
            server = "" if self.store.path else str(getattr(client.info(), "version", ""))
        manifest = {"format": MANIFEST_FORMAT, "version": FORMAT_VERSION,
                    "mode": "local" if self.store.path else "server",
                    "qdrant-client": _client_version(), "collections": entries}
        arts.append(sink.add_stream(MANIFEST, io.BytesIO(
            json.dumps(manifest, ensure_ascii=False, indent=1).encode())))
        versions = {"qdrant-client": _client_version()}
        if server:
            versions["server"] = server
        extra = {"store": self.store.text(), "collections": names,
                 "points": {e["name"]: e["points"] for e in entries},
                 "aliases": {e["name"]: e["aliases"] for e in entries if e["aliases"]},
                 "searches": {e["name"]: e["searches"] for e in entries}}
        return ComponentResult(arts, fingerprint_of({e["name"]: e for e in entries}),
                               versions, extra)

    # -- restore
    @staticmethod
    def _manifest(source: ArtifactSource) -> dict[str, Any]:
        if MANIFEST not in source.names():
            raise SourceCorrupt(f"the snapshot holds no {MANIFEST} for this component")
        with source.open(MANIFEST) as f:
            raw = f.read()  # to EOF: verified against the snapshot
        try:
            manifest = json.loads(raw)
            entries = manifest["collections"]
            for e in entries:
                for key in ("name", "artifact", "config", "payload_schema", "aliases",
                            "points", "content"):
                    e[key]  # noqa: B018 - a KeyError says which is missing
        except (ValueError, KeyError, TypeError) as e:
            raise SourceCorrupt(f"the snapshot's {MANIFEST} cannot be read: {e!r}") from e
        if manifest.get("format") != MANIFEST_FORMAT \
                or int(manifest.get("version", 0)) > FORMAT_VERSION:
            raise SourceCorrupt(f"{MANIFEST} is not a version {FORMAT_VERSION} "
                                f"{MANIFEST_FORMAT} manifest",
                                hint="restore it with the StackVault version that wrote it")
        return dict(manifest)

    @staticmethod
    def _select(entries: list[dict[str, Any]], tables: list[str] | None) -> list[dict[str, Any]]:
        if tables is None:
            return entries
        if not tables:
            raise UsageError("an empty selection restores nothing")
        names = [e["name"] for e in entries]
        unknown = [t for t in tables if t not in names]
        if unknown:
            raise UsageError(f"the snapshot holds no collection {', '.join(map(repr, unknown))}",
                             hint=f"it has: {', '.join(names)}")
        return [e for e in entries if e["name"] in tables]

    def _points(self, source: ArtifactSource, entry: dict[str, Any]
                ) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
        what = f"the snapshot's points of collection {entry['name']!r}"
        if entry["artifact"] not in source.names():
            raise SourceCorrupt(f"{what} ({entry['artifact']}) are missing")
        with source.open(entry["artifact"]) as f:
            yield from read_points(f, what, entry["name"])

    def _check(self, source: ArtifactSource, entry: dict[str, Any]) -> None:
        """Read a collection's points stream to its end without writing anything: framing,
        vector encodings, count and content digest against the manifest."""
        digest = CollectionDigest(0)
        for pid, payload, enc in self._points(source, entry):
            try:
                decode_vectors(enc, unnamed=False)
            except (ValueError, KeyError, TypeError) as e:
                raise SourceCorrupt(f"collection {entry['name']!r}, point {pid!r}: "
                                    f"bad vector: {e}") from None
            digest.add(pid, payload, enc)
        if digest.points != entry["points"] or digest.content != entry["content"]:
            raise SourceCorrupt(f"the snapshot's points of collection {entry['name']!r} do "
                                f"not match its manifest ({digest.points} points, "
                                f"{entry['points']} expected, or other content)")

    def restore(self, source: ArtifactSource, *, target: Target | None = None,
                tables: list[str] | None = None, force: bool = False) -> None:
        store, rename = parse_target(target, self.store)
        force = force or self.force_restore
        entries = self._select(self._manifest(source)["collections"], tables)
        dests = {e["name"]: rename.new(e["name"], len(entries)) for e in entries}
        if len(set(dests.values())) != len(dests):
            raise UsageError("two collections would get the same name in the target")
        with self._open(store, create=True) as client, errors(store, "restoring"):
            have = {c.name for c in client.get_collections().collections}
            aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
            wanted_aliases = {rename.new(a): dests[e["name"]] for e in entries
                              for a in e["aliases"]} if rename.keeps_aliases else {}
            busy = sorted(d for d in dests.values() if d in have or d in aliases)
            busy += sorted(a for a, c in wanted_aliases.items()
                           if a in aliases and aliases[a] != c)
            if busy and not force:
                raise SourceInUse(f"{store.text()} already has {', '.join(map(repr, busy))}; "
                                  "refusing to overwrite",
                                  hint="pass --force to `stackvault restore` (or set "
                                       "force_restore: true on the component) to replace "
                                       "them; or restore under other names with --to "
                                       "NAME=prefix:restored_")
            for e in entries:  # everything is checked before anything is written
                self._check(source, e)
            self._write(client, store, source, entries, dests, wanted_aliases, have, aliases)
        self._restored = (store, rename, {d: b for b, d in dests.items()})

    def _write(self, client: QdrantClient, store: Store, source: ArtifactSource,
               entries: list[dict[str, Any]], dests: dict[str, str],
               wanted_aliases: dict[str, str], have: set[str], aliases: dict[str, str]) -> None:
        created: list[str] = []
        replaced: list[str] = []
        try:
            for e in entries:
                dest = dests[e["name"]]
                if dest in aliases:
                    client.update_collection_aliases(change_aliases_operations=[
                        models.DeleteAliasOperation(
                            delete_alias=models.DeleteAlias(alias_name=dest))])
                if dest in have:
                    client.delete_collection(dest)
                    replaced.append(dest)
                client.create_collection(dest, **create_args(e["config"]))
                created.append(dest)
                with warnings.catch_warnings():  # local mode: "Payload indexes have no effect"
                    warnings.simplefilter("ignore", UserWarning)
                    for field_name, info in e["payload_schema"].items():
                        client.create_payload_index(dest, field_name, index_schema(info))
                self._load(client, source, e, dest)
            aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
            ops: list[Any] = []
            for alias, dest in sorted(wanted_aliases.items()):
                if alias in aliases:
                    ops.append(models.DeleteAliasOperation(
                        delete_alias=models.DeleteAlias(alias_name=alias)))
                ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(
                    collection_name=dest, alias_name=alias)))
            if ops:
                client.update_collection_aliases(change_aliases_operations=ops)
            found = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
            lost = [a for a, d in wanted_aliases.items() if found.get(a) != d]
            if lost:
                raise SourceError(f"aliases {', '.join(lost)} were not created")
        except BaseException as exc:
            undone = []
            for dest in created:
                try:
                    client.delete_collection(dest)
                    undone.append(dest)
                except Exception:  # noqa: BLE001, S112 - the first error is the one to report
                    continue
            note = (f"; the {len(undone)} collection(s) this restore created were deleted, "
                    "nothing is left half restored")
            if replaced:
                note += (f"; {', '.join(replaced)} had been replaced (--force) and are gone: "
                         "restore them from the safety snapshot taken before this restore")
            if isinstance(exc, SourceError | UsageError):
                raise type(exc)(f"{exc.args[0]}{note}", hint=exc.hint) from exc
            if isinstance(exc, Exception):
                raise SourceError(f"{store.text()}: restoring failed: {exc}{note}") from exc
            raise

    def _load(self, client: QdrantClient, source: ArtifactSource, entry: dict[str, Any],
              dest: str) -> None:
        vectors = entry["config"].get("params", {}).get("vectors")
        unnamed = isinstance(vectors, dict) and "size" in vectors
        batch: list[models.PointStruct] = []
        for pid, payload, enc in self._points(source, entry):
            batch.append(models.PointStruct(id=pid, payload=payload,
                                            vector=decode_vectors(enc, unnamed)))
            if len(batch) >= self.batch_size:
                client.upsert(dest, points=batch, wait=True)
                batch = []
        if batch:
            client.upsert(dest, points=batch, wait=True)
        count = int(client.count(dest, exact=True).count)
        if count != entry["points"]:
            raise SourceError(f"collection {dest!r} holds {count} points after the restore, "
                              f"{entry['points']} expected")


def _point_id(value: Any) -> Any:
    """Qdrant ids are unsigned integers or UUIDs; ids compared as text turn back into ints."""
    text = str(value)
    return int(text) if text.isdigit() else text
