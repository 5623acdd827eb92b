"""The data-source contract: DataSource, ArtifactSink, ArtifactSource and what flows between."""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal, Protocol, runtime_checkable

from stackvault.errors import SourceUnavailable, UsageError

ArtifactKind = Literal["stream", "file", "tree"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = ("stream", "file", "tree")
HASH_BLOCK = 1 << 20


# --- what flows between layers ------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactInfo:
    """One stored artifact of a component, as recorded in the snapshot manifest.

    `name` is a relative POSIX path (see `validate_name`); `size` is the byte length of a
    stream or file, or the total bytes of the regular files of a tree; `sha256` is the hex
    SHA-256 of the content of a stream or file, or the `TreeDigest` of a tree; `files` is the
    number of regular files (1 for a stream or a file).
    """

    name: str
    size: int
    sha256: str
    kind: ArtifactKind
    files: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256,
                "kind": self.kind, "files": self.files}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArtifactInfo:
        kind = d["kind"]
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        return cls(name=validate_name(str(d["name"])), size=int(d["size"]),
                   sha256=str(d["sha256"]), kind=kind, files=int(d.get("files", 1)))


@dataclass
class Fingerprint:
    """What a component's data looks like, for checking a restore or a drill against a backup.

    `counts` are exact numbers (rows per table, keys per db, files, bytes); `digests` are
    content checksums (per table, per artifact). Keys are chosen by each adapter and must be
    the same for a live store and for the backup of it.
    """

    counts: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())),
                "digests": dict(sorted(self.digests.items()))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fingerprint:
        return cls(counts={str(k): int(v) for k, v in d.get("counts", {}).items()},
                   digests={str(k): str(v) for k, v in d.get("digests", {}).items()})

    def restrict(self, keys: Iterable[str]) -> Fingerprint:
        """The part of this fingerprint about `keys` only (e.g. the tables restored)."""
        wanted = set(keys)
        return Fingerprint(counts={k: v for k, v in self.counts.items() if k in wanted},
                           digests={k: v for k, v in self.digests.items() if k in wanted})

    def compare(self, other: Fingerprint) -> list[str]:
        """Differences from this (expected) fingerprint to `other` (found); empty if equal."""
        out: list[str] = []
        for key in sorted(self.counts.keys() | other.counts.keys()):
            want, got = self.counts.get(key), other.counts.get(key)
            if want is None:
                out.append(f"count of {key}: not expected, found {got}")
            elif got is None:
                out.append(f"count of {key}: expected {want}, missing")
            elif want != got:
                out.append(f"count of {key}: expected {want}, found {got}")
        for key in sorted(self.digests.keys() | other.digests.keys()):
            want_d, got_d = self.digests.get(key), other.digests.get(key)
            if want_d is None:
                out.append(f"content of {key}: not expected, found")
            elif got_d is None:
                out.append(f"content of {key}: expected, missing")
            elif want_d != got_d:
                out.append(f"content of {key}: differs")
        return out


@dataclass(frozen=True)
class ProbeResult:
    """Whether a store can be reached, its server or library version, and its size if known."""

    reachable: bool
    version: str
    size_bytes: int | None
    detail: str


@dataclass
class ComponentResult:
    """What one component's backup produced: its artifacts, fingerprint, tool/server versions
    and adapter-specific facts (e.g. a WAL position) for the snapshot manifest."""

    artifacts: list[ArtifactInfo]
    fingerprint: Fingerprint
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"artifacts": [a.to_dict() for a in self.artifacts],
                "fingerprint": self.fingerprint.to_dict(),
                "versions": dict(self.versions), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ComponentResult:
        return cls(artifacts=[ArtifactInfo.from_dict(a) for a in d.get("artifacts", [])],
                   fingerprint=Fingerprint.from_dict(d.get("fingerprint", {})),
                   versions={str(k): str(v) for k, v in d.get("versions", {}).items()},
                   extra=dict(d.get("extra", {})))


# --- the Protocols --------------------------------------------------------------------------


class ArtifactSink(Protocol):
    """Where a backup puts its output. Each name may be added once per sink.

    Implementations: `DirectorySink` (plain folder; tests, export) and, later, the repository
    (one snapshot subtree per component).
    """

    def add_stream(self, name: str, stream: BinaryIO) -> ArtifactInfo:
        """Store everything read from `stream` (until EOF) as a file artifact, streamed: no
        temporary copy. Returns its size and SHA-256. The caller closes the stream."""
        ...

    def add_path(self, name: str, path: Path, *, exclude: Sequence[str] = ()) -> ArtifactInfo:
        """Store a file (kind "file") or a folder (kind "tree") from disk. A symlink given as
        `path` is followed; symlinks inside a folder are stored as symlinks; sockets, FIFOs
        and devices are skipped. `exclude` holds patterns as understood by `Excluder`."""
        ...


class ArtifactSource(Protocol):
    """What a restore reads: the artifacts of one component of one snapshot.

    Content is verified against what the backup stored: a damaged artifact raises
    `errors.SourceCorrupt` (or the repository's `IntegrityError`), never returns bad data
    silently. `open` can only check at the end of the stream, so callers must read to EOF
    before trusting the data; `extract` checks before returning.
    """

    def names(self) -> list[str]:
        """The artifact names, in the order they were added."""
        ...

    def open(self, name: str) -> BinaryIO:
        """A stream of a "stream" or "file" artifact; raises at EOF if it does not verify."""
        ...

    def extract(self, name: str, dest: Path) -> None:
        """Materialise an artifact at `dest` (which must not exist; its parent is created):
        a file, or a folder for a "tree". On failure nothing is left at `dest`."""
        ...


Target = Mapping[str, Any]


@runtime_checkable
class DataSource(Protocol):
    """One adapter per kind of store. Constructed from the component's config options
    (keyword arguments); must not touch the store before a method is called."""

    type: ClassVar[str]

    def probe(self) -> ProbeResult:
        """Reach the store cheaply; never raises for an unreachable store (says so instead)."""
        ...

    def backup(self, sink: ArtifactSink) -> ComponentResult:
        """Write a consistent backup into `sink`; the result's fingerprint describes exactly
        the data stored, not the live store afterwards."""
        ...

    def fingerprint(self, *, target: Target | None = None) -> Fingerprint:
        """Fingerprint the live store, or `target` (as accepted by `restore`) if given."""
        ...

    def restore(self, source: ArtifactSource, *, target: Target | None = None,
                tables: list[str] | None = None, force: bool = False) -> None:
        """Restore into the original store or `target`; only `tables` if given (adapters
        without tables raise UsageError). Refuses (errors.SourceInUse) to overwrite a store in
        use unless `force`. Leaves the target as it was on any failure before the final
        switch-over."""
        ...

    def describe_target(self, target: Target | None = None) -> str:
        """One line for a restore plan: what `restore(target=...)` would overwrite."""
        ...


@runtime_checkable
class Drillable(Protocol):
    """What a restore drill needs beyond `DataSource`: a scratch target that is never the live
    store, its removal, and the store-native probes the user declares in `drill.probes`."""

    def scratch_target(self, label: str) -> Target:
        """A new target for a drill (a temporary file or folder, a scratch database, a
        collection prefix...) that `restore(target=...)` accepts; never the live store."""
        ...

    def remove_target(self, target: Target) -> None:
        """Delete what a drill restored into `target` (a target from `scratch_target` or given
        in `drill.targets`). Idempotent."""
        ...

    def run_probe(self, probe: Mapping[str, Any], *, target: Target | None = None) -> str:
        """Run one probe (e.g. `{"sql": "SELECT count(*) FROM documents"}`) against `target`
        and return what it found, as text. UsageError for a probe kind this store lacks."""
        ...


def secret_from_env(var: str | None, setting: str) -> str | None:
    """The secret held by environment variable `var` (None when no variable is configured);
    a configured but unset variable is an error naming the setting, never the value."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise UsageError(f"environment variable {var} ({setting}) is not set",
                         hint=f"export {var}=... before running stackvault")
    return value


DRILL_PREFIX = "stackvault-drill-"


def scratch_folder(label: str) -> Path:
    """A new empty temporary folder for a drill's file-based targets."""
    return Path(tempfile.mkdtemp(prefix=f"{DRILL_PREFIX}{label}-"))


def remove_scratch_path(path: Path) -> None:
    """Remove a drill's file or folder and, if it is one, the temporary folder made for it."""
    for p in (path, path.parent):
        if p.name.startswith(DRILL_PREFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --- names, exclusion, trees: shared definitions -------------------------------------------

RESERVED_NAMES = frozenset({"SHA256SUMS", ".stackvault-artifacts.json"})


def validate_name(name: str) -> str:
    """Check an artifact name: a non-empty relative POSIX path without `.`/`..` parts."""
    parts = name.split("/")
    if (not name or name.startswith("/") or "\0" in name or "\\" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise UsageError(f"invalid artifact name {name!r}",
                         hint="use a relative path like 'db.sqlite3' or 'etc/app'")
    if parts[0] in RESERVED_NAMES:
        raise UsageError(f"artifact name {name!r} is reserved")
    return name


class Excluder:
    """Exclusion patterns (fnmatch syntax, case-sensitive; `*` also matches `/`).

    A pattern without `/` matches an entry's name at any depth (`*.tmp`, `__pycache__`); a
    pattern with `/` matches the entry's path relative to the backed-up folder (`uploads/tmp`,
    `/cache/*` — a leading `/` anchors to that folder, which is the only way to anchor a bare
    name). A trailing `/` is ignored. An excluded folder is skipped with all its content.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = list(patterns)
        self._names: list[str] = []
        self._paths: list[str] = []
        for p in self.patterns:
            if not isinstance(p, str) or not p.strip("/"):
                raise UsageError(f"invalid exclude pattern {p!r}")
            if p.startswith("/") or "/" in p.rstrip("/"):
                self._paths.append(p.strip("/"))
            else:
                self._names.append(p.rstrip("/"))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __call__(self, rel: str) -> bool:
        """Whether the entry at `rel` (relative POSIX path) is excluded."""
        name = posixpath.basename(rel)
        return (any(fnmatchcase(name, p) for p in self._names)
                or any(fnmatchcase(rel, p) for p in self._paths))


@dataclass(frozen=True)
class TreeEntry:
    rel: str  # relative POSIX path, never empty
    kind: Literal["d", "f", "l"]
    path: str  # absolute path on disk
    st: os.stat_result


def walk_tree(root: Path | str, exclude: Callable[[str], bool] | None = None,
              on_excluded: Callable[[TreeEntry], None] | None = None) -> Iterator[TreeEntry]:
    """The entries under folder `root` in canonical order: depth first, the entries of each
    folder sorted by name (code point order), a folder before its content. Symlinks are not
    followed; sockets, FIFOs and devices are skipped. Unreadable folders raise."""

    def walk(dirpath: str, prefix: str) -> Iterator[TreeEntry]:
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            raise SourceUnavailable(f"{dirpath}: cannot list folder: {err.strerror}",
                                    hint="fix its permissions or exclude it") from err
        for e in entries:
            rel = f"{prefix}{e.name}"
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                kind: Literal["d", "f", "l"] = "d"
            elif stat.S_ISREG(st.st_mode):
                kind = "f"
            elif stat.S_ISLNK(st.st_mode):
                kind = "l"
            else:
                continue
            entry = TreeEntry(rel, kind, e.path, st)
            if exclude is not None and exclude(rel):
                if on_excluded is not None:
                    on_excluded(entry)
                continue
            yield entry
            if kind == "d":
                yield from walk(e.path, rel + "/")

    yield from walk(os.fspath(root), "")


class TreeDigest:
    """The SHA-256 that identifies a tree artifact's content (not its metadata).

    Over the entries in `walk_tree` order, it hashes one JSON line each (`json.dumps`
    defaults, ASCII): `["d", rel]`, `["f", rel, size, sha256_hex]` or `["l", rel, target]`,
    each followed by `\\n`. Names that are not UTF-8 are decoded with surrogateescape first.
    Modes, owners and times are not part of it.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.files = 0
        self.size = 0

    def _line(self, item: list[Any]) -> None:
        self._h.update(json.dumps(item).encode("ascii") + b"\n")

    def add_dir(self, rel: str) -> None:
        self._line(["d", rel])

    def add_file(self, rel: str, size: int, sha256: str) -> None:
        self.files += 1
        self.size += size
        self._line(["f", rel, size, sha256])

    def add_symlink(self, rel: str, target: str) -> None:
        self._line(["l", rel, target])

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class GeneratorReader(io.RawIOBase):
    """A read-only stream over an iterator of byte strings: what an adapter hands to
    `ArtifactSink.add_stream` when it produces its artifact piece by piece (no temp copy)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = memoryview(nxt)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        """Also close the generator, so its `finally` blocks run now."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


def hash_stream(f: BinaryIO, out: BinaryIO | None = None) -> tuple[int, str]:
    """Read `f` to EOF (copying to `out` if given); return (bytes, SHA-256 hex)."""
    h = hashlib.sha256()
    total = 0
    while chunk := f.read(HASH_BLOCK):
        h.update(chunk)
        if out is not None:
            out.write(chunk)
        total += len(chunk)
    return total, h.hexdigest()


def hash_file(path: Path | str) -> tuple[int, str]:
    """(bytes, SHA-256 hex) of a file, following symlinks."""
    with open(path, "rb") as f:
        return hash_stream(f)


def tree_digest(root: Path | str, exclude: Callable[[str], bool] | None = None) -> TreeDigest:
    """Hash a folder on disk the way a sink hashes the tree artifact made from it."""
    td = TreeDigest()
    for e in walk_tree(root, exclude):
        if e.kind == "d":
            td.add_dir(e.rel)
        elif e.kind == "l":
            td.add_symlink(e.rel, os.readlink(e.path))
        else:
            size, digest = hash_file(e.path)
            td.add_file(e.rel, size, digest)
    return td
