"""Restore of snapshot trees to disk, one pass over the packs; dump of one file to a stream."""

from __future__ import annotations

import fnmatch
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from stackvault.errors import IntegrityError, SnapshotNotFound, StackVaultError
from stackvault.progress import Progress, no_progress
from stackvault.repo.index import BlobLocation
from stackvault.repo.repository import Repository, pack_name
from stackvault.repo.snapshot import Snapshot
from stackvault.repo.tree import DIR, FILE, SYMLINK, Node

MAX_GAP = 1 << 20  # read through gaps smaller than this instead of issuing another request



@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


def _safe_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise IntegrityError(f"refusing unsafe file name {name!r} in snapshot tree")
    return name


def selected(path: str, includes: list[str] | None) -> tuple[bool, bool]:
    """Return (restore this node, descend into it) for a snapshot path like 'a/b/c'."""
    if not includes:
        return True, True
    p = "/" + path
    take = descend = False
    for pat in includes:
        pat = "/" + pat.strip("/") if pat != "/" else "/"
        if pat == "/" or p == pat or p.startswith(pat + "/") or fnmatch.fnmatch(p, pat):
            return True, True
        if pat.startswith(p + "/") or any(ch in pat for ch in "*?["):
            descend = True
    return take, descend


def iter_selected(repo: Repository, tree_id: str, includes: list[str] | None,
                  prefix: str = "") -> Iterator[tuple[str, Node, bool]]:
    """Yield (path, node, wanted) below a tree; dirs on the way to a wanted node are yielded."""
    for node in repo.load_tree(tree_id):
        path = f"{prefix}/{_safe_name(node.name)}" if prefix else _safe_name(node.name)
        take, descend = selected(path, includes)
        if node.type == DIR and node.subtree and descend:
            sub = list(iter_selected(repo, node.subtree, None if take else includes, path))
            if take or any(w for _p, _n, w in sub):
                yield path, node, True
                yield from sub
        elif take:
            yield path, node, True


def restore(repo: Repository, snap: Snapshot, target: str, *, includes: list[str] | None = None,
            progress: Progress = no_progress, workers: int | None = None) -> RestoreResult:
    repo.load_index()
    result = RestoreResult()
    os.makedirs(target, exist_ok=True)
    dirs: list[tuple[str, Node]] = []
    files: list[tuple[str, Node]] = []
    links: list[tuple[str, Node]] = []
    for path, node, _w in iter_selected(repo, snap.tree, includes):
        dest = os.path.join(target, path)
        if node.type in (DIR, FILE) and os.path.islink(dest):
            os.unlink(dest)  # left by an earlier restore: never write through a symlink
        if node.type == DIR:
            os.makedirs(dest, exist_ok=True)
            dirs.append((dest, node))
        elif node.type == FILE:
            files.append((dest, node))
        elif node.type == SYMLINK:
            links.append((dest, node))
    if includes and not (dirs or files or links):
        raise SnapshotNotFound(f"nothing in snapshot {snap.short_id} matches {includes}",
                               hint="list its contents with `stackvault ls`")

    # Plan: which blob goes to which (file, offset); grouped by pack.
    by_pack: dict[str, dict[bytes, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    total = 0
    for fi, (dest, node) in enumerate(files):
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, node.size) if node.size else None
        finally:
            os.close(fd)
        offset = 0
        for hex_id in node.content:
            bid = bytes.fromhex(hex_id)
            loc = repo.index.get(bid)
            if loc is None:
                result.errors.append(f"{dest}: blob {hex_id} is missing from the repository")
                break
            by_pack[loc.pack][bid].append((fi, offset))
            offset += loc.raw_length
        total += node.size

    done = 0
    lock = threading.Lock()
    last = [0.0]

    def restore_pack(pack_id: str) -> None:
        nonlocal done
        wanted = by_pack[pack_id]
        locs: list[tuple[BlobLocation, bytes]] = sorted(
            ((loc, b) for b in wanted if (loc := repo.index.get(b)) is not None),
            key=lambda x: x[0].offset)
        # Read runs of nearby blobs with one request each.
        run: list[Any] = []
        items: list[tuple[BlobLocation, bytes] | None] = [*locs, None]
        for item in items:
            if item is not None and run:
                prev = run[-1][0]
                if item[0].offset - (prev.offset + prev.length) <= MAX_GAP:
                    run.append(item)
                    continue
            if run:
                start = run[0][0].offset
                end = run[-1][0].offset + run[-1][0].length
                data = memoryview(repo.storage.get(pack_name(pack_id), start, end - start))
                for loc, bid in run:
                    plain = repo.codec.decode(bid, data[loc.offset - start:
                                                        loc.offset - start + loc.length],
                                              loc.raw_length)
                    for fi, off in wanted[bid]:
                        fd = os.open(files[fi][0], os.O_WRONLY)
                        try:
                            os.pwrite(fd, plain, off)
                        finally:
                            os.close(fd)
                    with lock:
                        done += len(plain) * len(wanted[bid])
                        t = time.monotonic()
                        if t - last[0] > 0.1:
                            last[0] = t
                            progress({"event": "restore", "bytes_done": done,
                                      "bytes_total": total})
            run = [item] if item is not None else []

    n = workers or max(2, (os.cpu_count() or 2) + 1)
    with ThreadPoolExecutor(n, thread_name_prefix="sv-restore") as ex:
        for fut in [ex.submit(restore_pack, p) for p in by_pack]:
            try:
                fut.result()
            except StackVaultError as exc:
                result.errors.append(str(exc))
    progress({"event": "restore", "bytes_done": done, "bytes_total": total})

    for dest, node in files:
        _set_meta(dest, node, result)
        result.files += 1
        result.bytes += node.size
    for dest, node in links:
        try:
            if os.path.lexists(dest):
                os.unlink(dest)
            os.symlink(node.target or "", dest)
            if os.geteuid() == 0:
                os.lchown(dest, node.uid, node.gid)
            os.utime(dest, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
        except OSError as exc:
            result.errors.append(f"{dest}: {exc.strerror or exc}")
        result.symlinks += 1
    for dest, node in reversed(dirs):  # deepest first, so children don't touch parents' mtime
        _set_meta(dest, node, result)
        result.dirs += 1
    return result


def _set_meta(dest: str, node: Node, result: RestoreResult) -> None:
    try:
        if os.geteuid() == 0:
            os.chown(dest, node.uid, node.gid)
        os.chmod(dest, node.mode)
        os.utime(dest, ns=(node.mtime_ns, node.mtime_ns))
    except OSError as exc:
        result.errors.append(f"{dest}: {exc.strerror or exc}")


def find_node(repo: Repository, snap: Snapshot, path: str) -> Node:
    parts = [p for p in path.split("/") if p]
    tree: str | None = snap.tree
    node: Node | None = None
    for i, part in enumerate(parts):
        if tree is None:
            break
        node = next((n for n in repo.load_tree(tree) if n.name == part), None)
        if node is None:
            break
        tree = node.subtree if node.type == DIR else None
        if i == len(parts) - 1:
            return node
    raise SnapshotNotFound(f"{path!r} is not in snapshot {snap.short_id}",
                           hint="list its contents with `stackvault ls`")


def iter_content(repo: Repository, content: list[str], window: int = 8) -> Iterator[bytes]:
    """A file's blobs in order, loading up to ``window`` ahead on a few threads."""
    with ThreadPoolExecutor(4, thread_name_prefix="sv-read") as pool:
        pending: deque[Future[bytes]] = deque()
        for h in content:
            pending.append(pool.submit(repo.load_blob, bytes.fromhex(h)))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def dump(repo: Repository, snap: Snapshot, path: str, out: BinaryIO) -> int:
    """Write one file's content to ``out`` in order, reading ahead on a few threads."""
    node = find_node(repo, snap, path)
    if node.type != FILE:
        raise SnapshotNotFound(f"{path!r} is a {node.type}, not a file",
                               hint="give the path of a file")
    written = 0
    for data in iter_content(repo, node.content):
        out.write(data)
        written += len(data)
    return written
