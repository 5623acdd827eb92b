"""Backup of files, folders, symlinks and streams into trees of chunked, deduplicated blobs."""

from __future__ import annotations

import io
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pyfastcdc

from stackvault import __version__
from stackvault.errors import UsageError
from stackvault.progress import Progress, no_progress
from stackvault.repo.buffers import BufferPool
from stackvault.repo.crypto import _username
from stackvault.repo.lock import Lock
from stackvault.repo.pack import DATA, TREE
from stackvault.repo.repository import Repository
from stackvault.repo.snapshot import Snapshot, now
from stackvault.repo.tree import DIR, FILE, SYMLINK, Node
from stackvault.repo.writer import BlobWriter

READ_BLOCK = 4 << 20



@dataclass
class BackupResult:
    snapshot: Snapshot
    errors: list[str] = field(default_factory=list)


@dataclass
class _Counters:
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs: int = 0
    bytes_read: int = 0
    total_size: int = 0
    total_bytes_estimate: int | None = None


def make_chunker(repo: Repository) -> pyfastcdc.FastCDC:
    c = repo.config["chunker"]
    return pyfastcdc.FastCDC(
        avg_size=int(c["avg"]), min_size=int(c["min"]), max_size=int(c["max"]),
        seed=int(c["seed"]),
    )


class _Block:
    """A pooled read buffer and how many queued chunks still point into it."""

    def __init__(self, pool: BufferPool) -> None:
        self.pool = pool
        self.buf = pool.take()
        self._users = 1  # the reader itself, until it has cut the block and copied its tail
        self._lock = threading.Lock()

    def hold(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            free = self._users == 0
        if free:
            self.pool.give(self.buf)

    def done(self, _future: Future[bytes]) -> None:
        self.release()


class _Pending:
    """A file node whose content futures are not resolved yet."""

    def __init__(self, node: Node, futures: list[Future[bytes]]) -> None:
        self.node = node
        self.futures = futures

    def resolve(self) -> Node:
        self.node.content = [f.result().hex() for f in self.futures]
        return self.node


class Archiver:
    """Turns paths or a stream into a snapshot. One instance per backup run."""

    def __init__(self, repo: Repository, writer: BlobWriter, *, progress: Progress = no_progress,
                 parent: Snapshot | None = None) -> None:
        self.repo = repo
        self.writer = writer
        self.progress = progress
        self.parent = parent
        self.chunker = make_chunker(repo)
        # Optional exclusion (relative POSIX path below ``exclude_root`` -> skip it), and
        # whether sockets, FIFOs and devices are skipped silently instead of reported.
        self.exclude: Callable[[str], bool] | None = None
        self.exclude_root = ""
        self.skip_special_quietly = False
        self._blocks = BufferPool(READ_BLOCK + self.chunker.max_size, keep=4)
        self.errors: list[str] = []
        self.c = _Counters()
        self._last_progress = 0.0

    # ------------------------------------------------------------------ progress
    def _tick(self, path: str, force: bool = False) -> None:
        t = time.monotonic()
        if force or t - self._last_progress > 0.1:
            self._last_progress = t
            self.progress({
                "event": "backup", "path": path, "bytes_done": self.c.bytes_read,
                "bytes_total": self.c.total_bytes_estimate,
                "files_done": self.c.files_new + self.c.files_changed + self.c.files_unmodified,
            })

    # ------------------------------------------------------------------ content
    def _chunk_stream(self, f: BinaryIO | io.RawIOBase, size_hint: int | None = None
                      ) -> tuple[list[Future[bytes]], int]:
        """Queue every chunk of a stream; return the id futures and the bytes read.

        Small files are read whole. Streams and large files are read in large pooled blocks
        that the chunks point into (no copy per chunk); a block goes back to the pool when
        every chunk cut from it is stored. The last chunk of a block may be cut differently
        once more data arrives, so it is carried into the next block; every other cut is
        final (content or max size).
        """
        futures: list[Future[bytes]] = []
        if size_hint is not None and size_hint < READ_BLOCK:
            data = f.read()
            for ch in self.chunker.cut_buf(data):
                futures.append(self.writer.save(DATA, ch.data))
            self.c.bytes_read += len(data)
            self.c.total_size += len(data)
            return futures, len(data)
        size = 0
        carry = memoryview(b"")
        prev: _Block | None = None
        eof = False
        while not eof:
            block = _Block(self._blocks)
            view = memoryview(block.buf)
            view[: len(carry)] = carry
            filled = len(carry)
            carry.release()
            if prev is not None:
                prev.release()  # its carried tail is copied: it may go back to the pool
            while filled < len(view):
                n = f.readinto(view[filled:])  # type: ignore[union-attr]
                if not n:
                    eof = True
                    break
                filled += n
            carry = memoryview(b"")
            for ch in self.chunker.cut_buf(view[:filled]):
                if not eof and ch.offset + ch.length == filled:
                    carry = ch.data
                    break
                size += ch.length
                self.c.bytes_read += ch.length
                block.hold()
                fut = self.writer.save(DATA, ch.data)
                fut.add_done_callback(block.done)
                futures.append(fut)
            view.release()
            prev = block
        if prev is not None:
            prev.release()
        self.c.total_size += size
        return futures, size

    def _file_node(self, path: str, name: str, st: os.stat_result,
                   old: Node | None) -> Node | _Pending | None:
        node = Node(name=name, type=FILE, mode=stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns,
                    uid=st.st_uid, gid=st.st_gid, size=st.st_size, inode=st.st_ino,
                    ctime_ns=st.st_ctime_ns)
        if (old is not None and old.type == FILE and old.size == st.st_size
                and old.mtime_ns == st.st_mtime_ns and old.ctime_ns == st.st_ctime_ns
                and old.inode == st.st_ino
                and all(bytes.fromhex(b) in self.repo.index for b in old.content)):
            node.content = list(old.content)
            self.c.files_unmodified += 1
            self.c.bytes_read += st.st_size
            self.c.total_size += st.st_size
            return node
        try:
            with open(path, "rb", buffering=0) as f:
                futures, node.size = self._chunk_stream(f, st.st_size)
                st2 = os.fstat(f.fileno())
        except OSError as exc:
            self.errors.append(f"{path}: {exc.strerror or exc}")
            return None
        if st2.st_mtime_ns != st.st_mtime_ns or node.size != st.st_size:
            self.errors.append(f"{path}: file changed while it was read")
        if old is None:
            self.c.files_new += 1
        else:
            self.c.files_changed += 1
        return _Pending(node, futures)

    # ------------------------------------------------------------------ trees
    def _old_nodes(self, old_tree: str | None) -> dict[str, Node]:
        """The parent snapshot's nodes of this folder, by name (for the metadata cache)."""
        if not old_tree:
            return {}
        try:
            return {n.name: n for n in self.repo.load_tree(old_tree)}
        except Exception:  # noqa: BLE001 - the cache is an optimisation only
            return {}

    def _dir(self, path: str, old_tree: str | None) -> str:
        """Back up the folder at ``path``; return its tree id."""
        self.c.dirs += 1
        old_nodes = self._old_nodes(old_tree)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.errors.append(f"{path}: {exc.strerror or exc}")
            entries = []
        items: list[Node | _Pending] = []
        for entry in entries:
            if self.exclude is not None and self.exclude(
                    os.path.relpath(entry.path, self.exclude_root).replace(os.sep, "/")):
                continue
            node = self._entry(entry.path, entry.name, old_nodes.get(entry.name))
            if node is not None:
                items.append(node)
        return self._save_tree(items)

    def _entry(self, path: str, name: str, old: Node | None) -> Node | _Pending | None:
        try:
            st = os.lstat(path)
        except OSError as exc:
            self.errors.append(f"{path}: {exc.strerror or exc}")
            return None
        self._tick(path)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return self._file_node(path, name, st, old)
        if stat.S_ISDIR(mode):
            subtree = self._dir(path, old.subtree if old and old.type == DIR else None)
            return Node(name=name, type=DIR, mode=stat.S_IMODE(mode), mtime_ns=st.st_mtime_ns,
                        uid=st.st_uid, gid=st.st_gid, subtree=subtree)
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                self.errors.append(f"{path}: {exc.strerror or exc}")
                return None
            return Node(name=name, type=SYMLINK, mode=stat.S_IMODE(mode),
                        mtime_ns=st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid, target=target)
        if not self.skip_special_quietly:
            self.errors.append(f"{path}: skipped (not a file, folder or symlink)")
        return None

    def _save_tree(self, items: list[Node | _Pending]) -> str:
        nodes = [i.resolve() if isinstance(i, _Pending) else i for i in items]
        blob_id, raw = self.repo.save_tree(nodes)
        self.writer.save_now(TREE, raw)
        return blob_id.hex()

    # ------------------------------------------------------------------ entry points
    def backup_paths(self, paths: list[str]) -> str:
        """Build the snapshot's root tree mirroring the absolute paths; return its id."""
        abs_paths = sorted({os.path.abspath(p) for p in paths})
        for p in abs_paths:
            if not os.path.lexists(p):
                raise UsageError(f"{p}: no such file or folder", hint="check the path to back up")
        threading.Thread(target=self._estimate, args=(abs_paths,), daemon=True).start()
        root: dict[str, Any] = {}
        for p in abs_paths:
            cur = root
            parts = [x for x in p.split("/") if x]
            for part in parts[:-1]:
                nxt = cur.setdefault(part, {})
                if not isinstance(nxt, dict):
                    break  # an ancestor is itself backed up: it covers this path
                cur = nxt
            else:
                cur[parts[-1] if parts else ""] = p
        old_root = self.parent.tree if self.parent else None
        if "" in root:  # backing up "/" itself
            return self._dir("/", old_root)
        return self._virtual(root, "/", old_root)

    def _virtual(self, vdir: dict[str, Any], real: str, old_tree: str | None) -> str:
        old_nodes = self._old_nodes(old_tree)
        items: list[Node | _Pending] = []
        for name in sorted(vdir):
            child = vdir[name]
            path = os.path.join(real, name)
            old = old_nodes.get(name)
            if isinstance(child, str):
                node = self._entry(path, name, old)
                if node is not None:
                    items.append(node)
            else:
                st = os.stat(path)
                old_sub = old.subtree if old and old.type == DIR else None
                subtree = self._virtual(child, path, old_sub)
                items.append(Node(name=name, type=DIR, mode=stat.S_IMODE(st.st_mode),
                                  mtime_ns=st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid,
                                  subtree=subtree))
        return self._save_tree(items)

    def backup_stream(self, stream: BinaryIO, name: str) -> str:
        futures, size = self._chunk_stream(stream)
        node = Node(name=name, type=FILE, mode=0o600, mtime_ns=time.time_ns(), uid=os.getuid(),
                    gid=os.getgid(), size=size)
        self.c.files_new += 1
        return self._save_tree([_Pending(node, futures)])

    def _estimate(self, paths: list[str]) -> None:
        total = 0
        for p in paths:
            if os.path.isfile(p):
                total += os.lstat(p).st_size
                continue
            for dirpath, _dirs, files in os.walk(p):
                for f in files:
                    try:
                        st = os.lstat(os.path.join(dirpath, f))
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
        self.c.total_bytes_estimate = total


def run_backup(
    repo: Repository,
    *,
    paths: list[str] | None = None,
    stdin: BinaryIO | None = None,
    stdin_name: str = "stdin",
    tags: list[str] | None = None,
    hostname: str | None = None,
    parent: str | None = None,
    progress: Progress = no_progress,
    retry_lock: float = 0.0,
    extra: dict[str, Any] | None = None,
    kind: str = "files",
) -> BackupResult:
    """Back up paths or a stream under a shared lock and commit one snapshot."""
    hostname = hostname or socket.gethostname()
    start = now()
    with Lock(repo, exclusive=False).acquire(retry_for=retry_lock) as lock:
        # Load the index only under the lock: an index read earlier may name packs that a
        # prune deleted meanwhile, and deduplicating against them would lose data.
        repo.reload_index()
        snap_paths = ([f"/{stdin_name}"] if stdin is not None
                      else sorted({os.path.abspath(p) for p in paths or []}))
        parent_snap = _find_parent(repo, parent, hostname, snap_paths) if stdin is None else None
        with BlobWriter(repo) as writer:
            arch = Archiver(repo, writer, progress=progress, parent=parent_snap)
            if stdin is not None:
                tree = arch.backup_stream(stdin, stdin_name)
            else:
                tree = arch.backup_paths(paths or [])
            arch._tick("", force=True)
            writer.flush()
        lock.check_valid()
        c = arch.c
        snap = Snapshot(
            time=start, hostname=hostname, username=_username(), paths=snap_paths, tree=tree,
            tags=sorted(set(tags or [])), parent=parent_snap.id if parent_snap else None,
            program_version=f"stackvault {__version__}", kind=kind, extra=extra or {},
            summary={
                "files_new": c.files_new, "files_changed": c.files_changed,
                "files_unmodified": c.files_unmodified, "dirs": c.dirs,
                "bytes_read": c.bytes_read,
                "blobs_new": writer.stats.blobs_new, "blobs_dup": writer.stats.blobs_dup,
                "data_added": writer.stats.bytes_new,
                "data_added_stored": writer.stats.bytes_stored,
                "packs_written": writer.stats.packs, "errors": len(arch.errors),
                "duration_s": round((now() - start).total_seconds(), 3),
            },
        )
        repo.save_snapshot(snap)
    return BackupResult(snap, arch.errors)


def _find_parent(repo: Repository, parent: str | None, hostname: str,
                 paths: list[str]) -> Snapshot | None:
    if parent:
        return repo.find_snapshot(parent)
    candidates = [s for s in repo.list_snapshots()
                  if s.hostname == hostname and sorted(s.paths) == sorted(paths)]
    return candidates[-1] if candidates else None
