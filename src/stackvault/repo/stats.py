"""Repository statistics (raw, stored, dedup ratio) and snapshot diffs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stackvault.repo.repository import Repository
from stackvault.repo.snapshot import Snapshot
from stackvault.repo.tree import DIR, FILE, Node


@dataclass
class Stats:
    snapshots: int
    files: int
    restore_size: int  # sum of file sizes over all snapshots (what a full restore of each writes)
    unique_size: int  # plaintext bytes of unique blobs referenced
    stored_size: int  # bytes of all packs in storage
    blobs: int
    packs: int

    @property
    def dedup_ratio(self) -> float:
        return self.restore_size / self.unique_size if self.unique_size else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_size / self.stored_size if self.stored_size else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["dedup_ratio"] = round(self.dedup_ratio, 3)
        d["compression_ratio"] = round(self.compression_ratio, 3)
        d["space_saving"] = (round(1 - self.stored_size / self.restore_size, 4)
                             if self.restore_size else 0)
        return d


def stats(repo: Repository, snaps: list[Snapshot]) -> Stats:
    repo.load_index()
    files = 0
    restore = 0
    blobs: set[bytes] = set()
    for snap in snaps:
        blobs.add(bytes.fromhex(snap.tree))
        for _path, node in repo.walk(snap.tree):
            if node.type == FILE:
                files += 1
                restore += node.size
                blobs.update(bytes.fromhex(h) for h in node.content)
            elif node.type == DIR and node.subtree:
                blobs.add(bytes.fromhex(node.subtree))
    unique = sum(loc.raw_length for b in blobs if (loc := repo.index.get(b)) is not None)
    packs = repo.list_packs()
    return Stats(len(snaps), files, restore, unique, sum(packs.values()), len(blobs), len(packs))


def diff(repo: Repository, a: Snapshot, b: Snapshot) -> list[tuple[str, str]]:
    """Return (change, path) pairs.

    change: '+' added, '-' removed, 'M' content, 'T' type, 'U' metadata.
    """
    out: list[tuple[str, str]] = []

    def walk(ta: str | None, tb: str | None, prefix: str) -> None:
        if ta == tb:
            return
        na = {n.name: n for n in repo.load_tree(ta)} if ta else {}
        nb = {n.name: n for n in repo.load_tree(tb)} if tb else {}
        for name in sorted(na.keys() | nb.keys()):
            path = f"{prefix}/{name}"
            x, y = na.get(name), nb.get(name)
            if x is None or y is None:
                node = y or x
                assert node is not None
                out.append(("+" if x is None else "-", path + ("/" if node.type == DIR else "")))
                if node.type == DIR:
                    walk(None if x is None else node.subtree, node.subtree if x is None else None,
                         path)
                continue
            if x.type != y.type:
                out.append(("T", path))
                continue
            if x.type == DIR:
                walk(x.subtree, y.subtree, path)
            elif _content(x) != _content(y):
                out.append(("M", path))
            elif (x.mode, x.mtime_ns, x.uid, x.gid) != (y.mode, y.mtime_ns, y.uid, y.gid):
                out.append(("U", path))

    walk(a.tree, b.tree, "")
    return out


def _content(n: Node) -> Any:
    return n.content if n.type == FILE else n.target
