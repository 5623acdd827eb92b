"""Artifact sink and source backed by the repository: component artifacts as files of one tree."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from stackvault.errors import IntegrityError, SnapshotNotFound, SourceCorrupt, UsageError
from stackvault.progress import Progress, no_progress
from stackvault.repo.archiver import Archiver, _Pending
from stackvault.repo.repository import Repository
from stackvault.repo.restorer import iter_content
from stackvault.repo.restorer import restore as restore_tree
from stackvault.repo.snapshot import Snapshot
from stackvault.repo.tree import DIR, FILE, Node
from stackvault.repo.writer import BlobWriter
from stackvault.sources.base import ArtifactInfo, Excluder, tree_digest


class _HashingReader(io.RawIOBase):
    """Passes a stream through while counting and SHA-256-hashing it (the manifest's checksum)."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        readinto = getattr(self.inner, "readinto", None)
        if readinto is not None:
            n = readinto(b) or 0
        else:
            data = self.inner.read(len(b))
            n = len(data)
            b[:n] = data
        if n:
            self.sha256.update(b[:n])
            self.size += n
        return n


class RepoSink:
    """ArtifactSink that streams one component's artifacts into the repository."""

    def __init__(self, repo: Repository, writer: BlobWriter,
                 progress: Progress = no_progress) -> None:
        self.arch = Archiver(repo, writer, progress=progress)
        self.root: dict[str, Any] = {}  # name -> Node | _Pending | dict (a folder on the way)
        self.artifacts: list[ArtifactInfo] = []

    def _place(self, name: str, item: Node | _Pending) -> None:
        """Put an artifact at its relative path ('srv/app/config' makes folders srv, app)."""
        parts = [p for p in name.split("/") if p]
        folder = self.root
        for part in parts[:-1]:
            folder = folder.setdefault(part, {})
            if not isinstance(folder, dict):
                raise UsageError(f"artifact {name!r} lies inside another artifact")
        if parts[-1] in folder:
            raise UsageError(f"artifact {name!r} was added twice")
        (item.node if isinstance(item, _Pending) else item).name = parts[-1]
        folder[parts[-1]] = item

    def add_stream(self, name: str, stream: BinaryIO) -> ArtifactInfo:
        reader = _HashingReader(stream)
        futures, size = self.arch._chunk_stream(reader)  # noqa: SLF001 - same package family
        node = Node(name=name, type=FILE, mode=0o600, mtime_ns=time.time_ns(), uid=os.getuid(),
                    gid=os.getgid(), size=size)
        self._place(name, _Pending(node, futures))
        info = ArtifactInfo(name, size, reader.sha256.hexdigest(), "stream")
        self.artifacts.append(info)
        return info

    def add_path(self, name: str, path: Path, *, exclude: Sequence[str] = ()) -> ArtifactInfo:
        st = os.stat(path)  # a symlink given as the artifact itself is followed
        if os.path.isdir(path):
            excluder = Excluder(exclude) if exclude else None
            self.arch.exclude, self.arch.exclude_root = excluder, str(path)
            self.arch.skip_special_quietly = True
            c = self.arch.c
            size0, files0 = c.total_size, c.files_new + c.files_changed + c.files_unmodified
            try:
                subtree = self.arch._dir(str(path), None)  # noqa: SLF001
            finally:
                self.arch.exclude = None
            size = c.total_size - size0
            files = c.files_new + c.files_changed + c.files_unmodified - files0
            self._place(name, Node(name=name, type=DIR, mode=st.st_mode & 0o7777,
                                   mtime_ns=st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid,
                                   subtree=subtree))
            info = ArtifactInfo(name, size, tree_digest(path, excluder).hexdigest(), "tree",
                                files=files)
        else:
            with open(path, "rb", buffering=0) as f:
                reader = _HashingReader(f)
                futures, size = self.arch._chunk_stream(reader, st.st_size)  # noqa: SLF001
            self._place(name, _Pending(Node(name=name, type=FILE, mode=st.st_mode & 0o7777,
                                            mtime_ns=st.st_mtime_ns, uid=st.st_uid,
                                            gid=st.st_gid, size=size), futures))
            info = ArtifactInfo(name, size, reader.sha256.hexdigest(), "file")
        self.artifacts.append(info)
        return info

    def tree(self) -> str:
        """Save the component's folder (and the folders on the way to nested artifacts)."""

        def save(folder: dict[str, Any]) -> str:
            items: list[Node | _Pending] = []
            for name, item in sorted(folder.items()):
                if isinstance(item, dict):
                    items.append(Node(name=name, type=DIR, mode=0o700,
                                      mtime_ns=time.time_ns(), subtree=save(item)))
                else:
                    items.append(item)
            return self.arch._save_tree(items)  # noqa: SLF001

        return save(self.root)

    @property
    def errors(self) -> list[str]:
        return self.arch.errors


class _BlobReader(io.RawIOBase):
    """A file of a snapshot as a stream (blobs are loaded a few ahead)."""

    def __init__(self, repo: Repository, content: list[str],
                 expect: tuple[int, str] | None = None, what: str = "") -> None:
        self._blobs = iter_content(repo, content)
        self._buf = memoryview(b"")
        self._expect = expect  # (size, sha256) from the manifest, checked at EOF
        self._what = what
        self._sha = hashlib.sha256()
        self._size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            nxt = next(self._blobs, None)
            if nxt is None:
                self._check()
                return 0
            self._buf = memoryview(nxt)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._sha.update(self._buf[:n])
        self._size += n
        self._buf = self._buf[n:]
        return n

    def _check(self) -> None:
        if self._expect is None:
            return
        size, digest = self._expect
        self._expect = None
        if (self._size, self._sha.hexdigest()) != (size, digest):
            raise SourceCorrupt(f"{self._what}: content does not match the snapshot's manifest "
                                f"({self._size} bytes read, {size} recorded)")

    def close(self) -> None:
        self._blobs.close()  # type: ignore[attr-defined]
        super().close()


class RepoArtifactSource:
    """ArtifactSource reading one component's artifacts out of a stack snapshot."""

    def __init__(self, repo: Repository, snap: Snapshot, component: str) -> None:
        self.repo = repo
        self.snap = snap
        self.component = component
        folder = next((n for n in repo.load_tree(snap.tree)
                       if n.name == component and n.type == DIR), None)
        if folder is None or not folder.subtree:
            raise SnapshotNotFound(f"snapshot {snap.short_id} has no component {component!r}",
                                   hint="list its components with `stackvault ls`")
        self._tree = folder.subtree
        manifest = snap.extra.get("manifest", {}).get("components", {}).get(component, {})
        self._artifacts = {a["name"]: a for a in manifest.get("artifacts", [])}
        self._names = sorted(self._artifacts)

    def names(self) -> list[str]:
        return list(self._names)

    def _node(self, name: str) -> Node:
        tree: str | None = self._tree
        node: Node | None = None
        for part in [p for p in name.split("/") if p]:
            node = next((n for n in self.repo.load_tree(tree) if n.name == part),
                        None) if tree else None
            if node is None:
                raise SnapshotNotFound(
                    f"component {self.component!r} of snapshot {self.snap.short_id} has no "
                    f"artifact {name!r}", hint=f"it has: {', '.join(self.names())}")
            tree = node.subtree if node.type == DIR else None
        if node is None:
            raise SnapshotNotFound(f"bad artifact name {name!r}")
        return node

    def open(self, name: str) -> BinaryIO:
        node = self._node(name)
        if node.type != FILE:
            raise SnapshotNotFound(f"artifact {name!r} is a folder, not a stream")
        art = self._artifacts.get(name, {})
        expect = (int(art["size"]), str(art["sha256"])) if art.get("sha256") else None
        return io.BufferedReader(
            _BlobReader(self.repo, node.content, expect,
                        f"artifact {name!r} of {self.component!r}"), buffer_size=1 << 20)

    def extract(self, name: str, dest: Path) -> None:
        """Write a file artifact to ``dest``, or a folder artifact as the folder ``dest``.
        It is built under a temporary name beside ``dest`` and renamed into place at the
        end, so a failure leaves nothing at ``dest``."""
        node = self._node(name)
        dest = Path(dest)
        if dest.exists() or dest.is_symlink():
            raise UsageError(f"{dest} exists already; extract needs a new path")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.stackvault-{os.getpid()}-{time.time_ns()}")
        try:
            if node.type == FILE:
                with self.open(name) as src, open(tmp, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.chmod(tmp, node.mode or 0o600)
            else:
                sub = Snapshot(time=self.snap.time, hostname=self.snap.hostname, username="",
                               paths=[], tree=node.subtree or "", id=self.snap.id)
                result = restore_tree(self.repo, sub, str(tmp))
                if result.errors:
                    raise IntegrityError(f"artifact {name!r} could not be restored: "
                                         + "; ".join(result.errors[:3]))
                # A folder's manifest digest is taken in a second pass over the live folder
                # (see docs/stack.md), so it is not enforced here; its blobs are authenticated.
            os.replace(tmp, dest)
        except BaseException:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            raise
