"""Copy snapshots into a second repository (the offsite copy), re-encrypting with its keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from stackvault.progress import Progress
from stackvault.repo.lock import Lock
from stackvault.repo.pack import DATA, TREE
from stackvault.repo.repository import Repository
from stackvault.repo.snapshot import Snapshot
from stackvault.repo.tree import DIR, FILE, Node
from stackvault.repo.writer import BlobWriter


@dataclass
class CopyResult:
    copied: list[tuple[str, str]] = field(default_factory=list)  # (source id, new id)
    skipped: list[str] = field(default_factory=list)  # already in the destination


def copy_snapshots(src: Repository, dst: Repository, snaps: list[Snapshot], *,
                   retry_lock: float = 0.0, progress: Progress | None = None) -> CopyResult:
    """Copy snapshots. Blob ids are keyed per repository, so trees are rewritten with the
    destination's ids; chunk boundaries stay those of the source."""
    progress = progress or (lambda _e: None)
    result = CopyResult()
    src.load_index()
    with Lock(dst, exclusive=False).acquire(retry_for=retry_lock) as lock:
        dst.reload_index()  # under the lock: never deduplicate against pruned packs
        done = {s.original or s.id for s in dst.list_snapshots()}
        memo: dict[str, str] = {}  # source tree id -> destination tree id
        blob_map: dict[str, str] = {}
        with BlobWriter(dst) as writer:

            def copy_tree(tid: str) -> str:
                if tid in memo:
                    return memo[tid]
                nodes: list[Node] = []
                for node in src.load_tree(tid):
                    if node.type == FILE:
                        ids = []
                        for h in node.content:
                            if h not in blob_map:
                                data = src.load_blob(bytes.fromhex(h))
                                blob_map[h] = writer.save(DATA, data).result().hex()
                            ids.append(blob_map[h])
                        node = Node(**{**node.__dict__, "content": ids})
                    elif node.type == DIR and node.subtree:
                        node = Node(**{**node.__dict__, "subtree": copy_tree(node.subtree)})
                    nodes.append(node)
                blob_id, raw = dst.save_tree(nodes)
                writer.save_now(TREE, raw)
                memo[tid] = blob_id.hex()
                return memo[tid]

            for n, snap in enumerate(snaps, 1):
                if snap.id in done or (snap.original and snap.original in done):
                    result.skipped.append(snap.id)
                    continue
                tree = copy_tree(snap.tree)
                writer.flush()
                lock.check_valid()
                new = Snapshot(**{**snap.__dict__, "tree": tree, "parent": None,
                                  "original": snap.original or snap.id, "id": ""})
                dst.save_snapshot(new)
                result.copied.append((snap.id, new.id))
                progress({"event": "copy", "snapshots_done": n, "snapshots_total": len(snaps)})
    return result
