"""The repository: open/init, keys, encrypted documents, blob reads, snapshots (docs/design.md)."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import blake3
import zstandard

from stackvault import __version__
from stackvault.errors import (
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)
from stackvault.repo import crypto as kc
from stackvault.repo.index import Index, decode_index, encode_index
from stackvault.repo.pack import TREE, BlobCodec, PackEntry, parse_header
from stackvault.repo.snapshot import Snapshot
from stackvault.repo.tree import Node, decode_tree, encode_tree
from stackvault.storage.base import Storage

FORMAT_VERSION = 1
DEFAULT_CHUNKER = {"algorithm": "fastcdc2020", "min": 256 << 10, "avg": 384 << 10, "max": 4 << 20}
DEFAULT_PACK_SIZE = 16 << 20
INDEX_BATCH_ENTRIES = 50_000  # blobs per index document
IO_THREADS = 8  # parallel small reads (index/snapshot documents) against remote storage

T = TypeVar("T")


def parallel_map(fn: Callable[[str], T], names: Iterable[str]) -> list[tuple[str, T | Exception]]:
    """Apply fn to every name with a few threads; errors are returned, not raised."""

    def safe(name: str) -> tuple[str, T | Exception]:
        try:
            return name, fn(name)
        except Exception as exc:  # noqa: BLE001 - returned as data to the caller
            return name, exc

    names = list(names)
    if len(names) <= 1:
        return [safe(n) for n in names]
    with ThreadPoolExecutor(min(IO_THREADS, len(names))) as ex:
        return list(ex.map(safe, names))


class Repository:
    """An open repository. Create with :meth:`init` or :meth:`open`."""

    def __init__(
        self, storage: Storage, crypto: kc.Crypto, config: dict[str, Any], key_name: str | None
    ) -> None:
        self.storage = storage
        self.crypto = crypto
        self.config = config
        self.key_name = key_name
        self.id_key = bytes.fromhex(config["id_key"])
        self.codec = BlobCodec(crypto, int(config["compression"]["level"]), self.id_key)
        self.pack_size = int(config["pack_size"])
        self.index = Index()
        self.index_errors: list[tuple[str, Exception]] = []
        self.loaded_index_ids: list[str] = []
        self._tree_cache: OrderedDict[bytes, list[Node]] = OrderedDict()
        self._tree_lock = threading.Lock()
        self._index_loaded = False

    # ---------------------------------------------------------------- create / open
    @classmethod
    def init(
        cls,
        storage: Storage,
        password: str | None,
        *,
        kdf: kc.KdfParams | None = None,
        chunker: dict[str, int] | None = None,
        pack_size: int = DEFAULT_PACK_SIZE,
        compression_level: int = 3,
    ) -> Repository:
        if _exists(storage, "config"):
            raise RepositoryExists(
                f"a repository already exists at {storage.location}",
                hint="use it as it is, or choose another location",
            )
        config = {
            "version": FORMAT_VERSION,
            "id": os.urandom(32).hex(),
            "created": datetime.now(UTC).isoformat(),
            "chunker": {**DEFAULT_CHUNKER, **(chunker or {}),
                        "seed": (int.from_bytes(os.urandom(8), "little") >> 1) | 1},
            "id_key": os.urandom(32).hex(),
            "compression": {"algorithm": "zstd", "level": compression_level},
            "pack_size": pack_size,
            "encrypted": password is not None,
        }
        key_name = None
        if password is not None:
            master = os.urandom(32)
            raw = kc.make_key_file(master, password, kdf or kc.KdfParams())
            key_name = "keys/" + os.urandom(32).hex()
            storage.put(key_name, raw)
            crypto = kc.Crypto(master)
        else:
            crypto = kc.Crypto(None)
        body = json.dumps(config).encode()
        storage.put("config", crypto.seal(body, b"stackvault:config"))
        repo = cls(storage, crypto, config, key_name)
        repo._index_loaded = True
        return repo

    @classmethod
    def open(
        cls, storage: Storage, password: str | None, *, insecure_no_password: bool = False
    ) -> Repository:
        try:
            raw_config = storage.get("config")
        except ObjectNotFound:
            raise RepositoryNotFound(
                f"there is no repository at {storage.location}",
                hint="check the repository location, or create one with `stackvault init`",
            ) from None
        key_names = [o.name for o in storage.list("keys/")]
        if not key_names:
            if not insecure_no_password:
                raise UsageError(
                    "this repository is not encrypted",
                    hint="pass --insecure-no-password to use an unencrypted repository",
                )
            crypto = kc.Crypto(None)
            key_name = None
        else:
            if insecure_no_password or password is None:
                raise UsageError(
                    "this repository is encrypted and needs a password",
                    hint="set STACKVAULT_PASSWORD, STACKVAULT_PASSWORD_FILE or "
                    "--password-command",
                )
            crypto, key_name = _unlock(storage, key_names, password)
        try:
            config = json.loads(crypto.open(raw_config, b"stackvault:config", "config"))
        except (ValueError, UnicodeDecodeError):
            raise IntegrityError("config: not valid JSON (damaged)") from None
        if int(config.get("version", 0)) != FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository format version {config.get('version')} is not supported "
                f"by StackVault {__version__} (knows version {FORMAT_VERSION})",
                hint="upgrade StackVault",
            )
        return cls(storage, crypto, config, key_name)

    @property
    def id(self) -> str:
        return str(self.config["id"])

    def close(self) -> None:
        self.storage.close()

    # ---------------------------------------------------------------- keys
    def add_key(self, password: str, kdf: kc.KdfParams | None = None) -> str:
        master = self._master_key()
        name = "keys/" + os.urandom(32).hex()
        self.storage.put(name, kc.make_key_file(master, password, kdf or kc.KdfParams()))
        return name.split("/", 1)[1]

    def _master_key(self) -> bytes:
        if self.crypto.key is None:
            raise UsageError("an unencrypted repository has no keys")
        return self.crypto.key

    def list_keys(self) -> list[dict[str, Any]]:
        out = []
        names = [o.name for o in self.storage.list("keys/")]
        for name, doc in parallel_map(self.storage.get, names):
            kid = name.split("/", 1)[1]
            if isinstance(doc, Exception):
                out.append({"id": kid, "error": str(doc), "current": False})
                continue
            try:
                parsed = kc.parse_key_file(doc, kid)
                out.append({
                    "id": kid,
                    "current": name == self.key_name,
                    "created": parsed.get("created"),
                    "hostname": parsed.get("hostname"),
                    "username": parsed.get("username"),
                })
            except IntegrityError as exc:
                out.append({"id": kid, "error": str(exc), "current": False})
        return out

    def remove_key(self, key_id: str) -> None:
        names = [o.name for o in self.storage.list("keys/")]
        matches = [n for n in names if n.split("/", 1)[1].startswith(key_id)]
        if len(matches) != 1:
            raise UsageError(f"key id {key_id!r} matches {len(matches)} keys",
                             hint="give more characters of the id (see `stackvault key list`)")
        if matches[0] == self.key_name:
            raise UsageError("refusing to remove the key in use",
                             hint="open the repository with another key's password first")
        if len(names) <= 1:
            raise UsageError("refusing to remove the last key")
        self.storage.delete(matches[0])

    # ---------------------------------------------------------------- documents
    def save_doc(self, kind: str, obj: Any, folder: str) -> str:
        return self.save_raw_doc(kind, json.dumps(obj, separators=(",", ":")).encode(), folder)

    def save_raw_doc(self, kind: str, raw: bytes, folder: str) -> str:
        if kind == "index":
            raw = zstandard.ZstdCompressor(level=3).compress(raw)
        sealed = self.crypto.seal(raw, b"stackvault:" + kind.encode())
        doc_id = blake3.blake3(sealed).hexdigest()
        try:
            self.storage.put(f"{folder}/{doc_id}", sealed)
        except ObjectExists:
            pass  # same bytes, same id: already stored
        return doc_id

    def load_raw_doc(self, kind: str, folder: str, doc_id: str) -> bytes:
        data = self.storage.get(f"{folder}/{doc_id}")
        what = f"{kind} {doc_id}"
        if kind != "lock" and blake3.blake3(data).hexdigest() != doc_id:
            raise IntegrityError(f"{what}: content does not match its id (damaged)")
        raw = self.crypto.open(data, b"stackvault:" + kind.encode(), what)
        if kind == "index":
            try:
                raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 31)
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"{what}: bad compression ({exc})") from None
        return raw

    def load_doc(self, kind: str, folder: str, doc_id: str) -> Any:
        raw = self.load_raw_doc(kind, folder, doc_id)
        try:
            return json.loads(raw)
        except ValueError:
            raise IntegrityError(f"{kind} {doc_id}: not valid JSON (damaged)") from None

    # ---------------------------------------------------------------- index
    def load_index(self) -> None:
        """Load every index document. Damaged ones are recorded in ``index_errors``."""
        if self._index_loaded:
            return
        ids = [o.name.split("/", 1)[1] for o in self.storage.list("index/")]
        for doc_id, result in parallel_map(
            lambda i: decode_index(self.load_raw_doc("index", "index", i)), ids
        ):
            if isinstance(result, Exception):
                if not isinstance(result, IntegrityError | ValueError | KeyError):
                    raise result
                self.index_errors.append((doc_id, result))
                continue
            for pack_id, size, entries in result:
                self.index.add_pack(pack_id, size, entries)
            self.loaded_index_ids.append(doc_id)
        self._index_loaded = True

    def reload_index(self) -> None:
        """Forget the in-memory index and load it again from the index documents; needed
        after the index documents were replaced (prune), as blob locations have changed."""
        self.index = Index()
        self.index_errors = []
        self.loaded_index_ids = []
        self._index_loaded = False
        self.load_index()

    def write_index(self, packs: list[tuple[str, int, list[PackEntry]]],
                    supersedes: list[str] | None = None) -> str:
        return self.save_raw_doc("index", encode_index(packs, supersedes or []), "index")

    def write_index_batched(self, packs: list[tuple[str, int, list[PackEntry]]],
                            supersedes: list[str]) -> list[str]:
        """Write index documents of at most ~50,000 entries each (at least one document)."""
        ids: list[str] = []
        batch: list[tuple[str, int, list[PackEntry]]] = []
        count = 0
        for item in packs:
            batch.append(item)
            count += len(item[2])
            if count >= INDEX_BATCH_ENTRIES:
                ids.append(self.write_index(batch, supersedes))
                batch, count = [], 0
        if batch or not ids:
            ids.append(self.write_index(batch, supersedes))
        return ids

    def read_pack_header(self, pack_id: str, size: int) -> list[PackEntry]:
        name = pack_name(pack_id)
        want = min(size, 64 * 1024)
        tail = self.storage.get(name, size - want, want)
        try:
            return parse_header(self.crypto, pack_id, tail, size)
        except IntegrityError:
            if want == size:
                raise
            # The header may be larger than our first guess: read its exact length.
            hlen = int.from_bytes(tail[-4:], "little")
            if hlen + 4 > size:
                raise
            tail = self.storage.get(name, size - hlen - 4, hlen + 4)
            return parse_header(self.crypto, pack_id, tail, size)

    # ---------------------------------------------------------------- blobs
    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self.id_key).digest()

    def load_blob(self, blob_id: bytes) -> bytes:
        self.load_index()
        loc = self.index.get(blob_id)
        if loc is None:
            raise IntegrityError(f"blob {blob_id.hex()} is not in the index (missing data)")
        stored = self.storage.get(pack_name(loc.pack), loc.offset, loc.length)
        return self.codec.decode(blob_id, stored, loc.raw_length)

    def load_tree(self, tree_id: str) -> list[Node]:
        bid = bytes.fromhex(tree_id)
        with self._tree_lock:
            nodes = self._tree_cache.get(bid)
            if nodes is not None:
                self._tree_cache.move_to_end(bid)
                return nodes
        nodes = decode_tree(self.load_blob(bid))
        with self._tree_lock:
            self._tree_cache[bid] = nodes
            if len(self._tree_cache) > 4096:
                self._tree_cache.popitem(last=False)
        return nodes

    def walk(self, tree_id: str, prefix: str = "") -> Iterable[tuple[str, Node]]:
        """Yield (path, node) for every node below a tree, depth first, sorted by name."""
        for node in self.load_tree(tree_id):
            path = f"{prefix}/{node.name}" if prefix else node.name
            yield path, node
            if node.type == "dir" and node.subtree:
                yield from self.walk(node.subtree, path)

    # ---------------------------------------------------------------- snapshots
    def snapshot_ids(self) -> list[str]:
        return [o.name.split("/", 1)[1] for o in self.storage.list("snapshots/")]

    def load_snapshot(self, snap_id: str) -> Snapshot:
        return Snapshot.from_dict(self.load_doc("snapshot", "snapshots", snap_id), snap_id)

    def list_snapshots(self, errors: list[tuple[str, Exception]] | None = None) -> list[Snapshot]:
        """All readable snapshots, oldest first. Damaged ones go to ``errors`` if given."""
        out = []
        for sid, result in parallel_map(self.load_snapshot, self.snapshot_ids()):
            if isinstance(result, Exception):
                if not isinstance(result, IntegrityError | ValueError | KeyError):
                    raise result
                if errors is not None:
                    errors.append((sid, result))
                continue
            out.append(result)
        out.sort(key=lambda s: (s.time, s.id))
        return out

    def save_snapshot(self, snap: Snapshot) -> str:
        snap.id = self.save_doc("snapshot", snap.to_dict(), "snapshots")
        return snap.id

    def find_snapshot(
        self, ref: str, *, host: str | None = None, paths: list[str] | None = None,
        tags: list[str] | None = None,
    ) -> Snapshot:
        """Resolve 'latest' (optionally filtered) or an id prefix to one snapshot."""
        if ref == "latest":
            snaps = [s for s in self.list_snapshots() if _matches(s, host, paths, tags)]
            if not snaps:
                raise SnapshotNotFound("no snapshot matches 'latest'",
                                       hint="list snapshots with `stackvault snapshots`")
            return snaps[-1]
        return self.load_snapshot(self.resolve_snapshot_id(ref))

    def resolve_snapshot_id(self, ref: str) -> str:
        """The full id of the one snapshot whose id starts with ``ref`` (without reading it)."""
        ids = [i for i in self.snapshot_ids() if i.startswith(ref)] if ref else []
        if not ids:
            raise SnapshotNotFound(f"no snapshot with id {ref!r}",
                                   hint="list snapshots with `stackvault snapshots`")
        if len(ids) > 1:
            raise SnapshotNotFound(f"snapshot id {ref!r} is ambiguous ({len(ids)} match)",
                                   hint="give more characters of the id")
        return ids[0]

    def save_tree(self, nodes: list[Node]) -> tuple[bytes, bytes]:
        raw = encode_tree(nodes)
        return self.blob_id(raw), raw

    # ---------------------------------------------------------------- packs
    def list_packs(self) -> dict[str, int]:
        return {o.name.rsplit("/", 1)[1]: o.size for o in self.storage.list("data/")}


def pack_name(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


def _matches(s: Snapshot, host: str | None, paths: list[str] | None,
             tags: list[str] | None) -> bool:
    if host and s.hostname != host:
        return False
    if paths and sorted(s.paths) != sorted(paths):
        return False
    return not (tags and not set(tags) <= set(s.tags))


def _exists(storage: Storage, name: str) -> bool:
    try:
        storage.stat(name)
        return True
    except ObjectNotFound:
        return False


def prefetch_unlock(storage: Storage, password: str) -> None:
    """Derive the key-encryption keys of every key file, in the order ``_unlock`` tries them.

    Run on a background thread at start-up: Argon2id runs outside the GIL, so its ~0.2 s overlaps
    with importing the rest of the program. Errors are ignored; the real open reports them.
    """
    try:
        for name in sorted(o.name for o in storage.list("keys/")):
            doc = kc.parse_key_file(storage.get(name), name)
            kc.derive_cached(kc.kdf_of(doc), password, kc.unb64(doc["salt"]))
    except Exception:  # noqa: BLE001 - an optimisation only
        return


def _unlock(storage: Storage, key_names: list[str], password: str) -> tuple[kc.Crypto, str]:
    damaged: list[str] = []
    for name in sorted(key_names):
        try:
            doc = kc.parse_key_file(storage.get(name), name)
        except (IntegrityError, ObjectNotFound) as exc:
            damaged.append(str(exc))
            continue
        try:
            master = kc.open_key_file(doc, password)
        except WrongPassword:
            continue
        crypto = kc.Crypto(master)
        return crypto, name
    if damaged and len(damaged) == len(key_names):
        raise IntegrityError("every key file is damaged: " + "; ".join(damaged),
                             hint="restore the keys/ folder from a copy of the repository")
    raise WrongPassword(
        "wrong password: no key in the repository opens with it"
        + (f" ({len(damaged)} damaged key file(s) skipped)" if damaged else ""),
        hint="check STACKVAULT_PASSWORD / STACKVAULT_PASSWORD_FILE",
    )


__all__ = ["Repository", "pack_name", "TREE"]
