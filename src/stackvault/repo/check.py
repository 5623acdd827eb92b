"""Repository check: structure, and optionally every (or a sample of) pack's data."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import blake3

from stackvault.errors import IntegrityError, ObjectNotFound, StackVaultError, UsageError
from stackvault.progress import Progress
from stackvault.repo import crypto as kc
from stackvault.repo.pack import parse_header
from stackvault.repo.repository import Repository, pack_name, parallel_map
from stackvault.repo.tree import DIR, FILE


@dataclass
class Problem:
    object: str  # e.g. "data/ab/ab12..", "index/..", "snapshots/..", "keys/..", "blob .."
    message: str
    snapshots: list[str] = field(default_factory=list)  # ids of snapshots affected

    def to_dict(self) -> dict[str, Any]:
        return {"object": self.object, "message": self.message, "snapshots": self.snapshots}


@dataclass
class CheckReport:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "snapshots": self.snapshots, "packs": self.packs,
            "packs_read": self.packs_read, "blobs_checked": self.blobs_checked,
            "errors": [p.to_dict() for p in self.errors],
            "warnings": [p.to_dict() for p in self.warnings],
        }


def parse_subset(spec: str) -> tuple[str, float, int]:
    """'10%' -> ('pct', 0.10, 0); '2/5' -> ('slice', 2, 5)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", spec.strip())
    if m and 0 < float(m.group(1)) <= 100:
        return "pct", float(m.group(1)) / 100, 0
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if m and 1 <= int(m.group(1)) <= int(m.group(2)):
        return "slice", int(m.group(1)), int(m.group(2))
    raise UsageError(f"bad --read-data-subset {spec!r}",
                     hint="use a percentage like 10% or a slice like 2/5")


def check(repo: Repository, *, read_data: bool = False, subset: str | None = None,
          progress: Progress | None = None, seed: int | None = None) -> CheckReport:
    rep = CheckReport()
    progress = progress or (lambda _e: None)

    # Keys: every key file must be intact (the one we opened with obviously is).
    for name, raw in parallel_map(repo.storage.get, [o.name for o in repo.storage.list("keys/")]):
        if isinstance(raw, Exception):
            rep.errors.append(Problem(name, f"unreadable: {raw}"))
            continue
        try:
            kc.parse_key_file(raw, name)
        except IntegrityError as exc:
            rep.errors.append(Problem(name, str(exc)))

    # Index documents.
    repo.load_index()
    index_problems = [Problem(f"index/{doc_id}", str(index_exc))
                      for doc_id, index_exc in repo.index_errors]
    rep.errors.extend(index_problems)

    # Snapshots and the trees they reach.
    snap_errors: list[tuple[str, Exception]] = []
    snaps = repo.list_snapshots(snap_errors)
    for sid, snap_exc in snap_errors:
        rep.errors.append(Problem(f"snapshots/{sid}", str(snap_exc), [sid]))
    rep.snapshots = len(snaps)
    users: dict[bytes, set[str]] = defaultdict(set)  # blob id -> snapshot ids
    bad_trees: dict[bytes, str] = {}
    memo: dict[bytes, frozenset[bytes]] = {}

    def reachable(tid: bytes) -> frozenset[bytes]:
        """Every blob id below (and including) a tree; trees are shared, so memoised."""
        if tid in memo:
            return memo[tid]
        out = {tid}
        if tid in repo.index:
            try:
                for node in repo.load_tree(tid.hex()):
                    if node.type == FILE:
                        out.update(bytes.fromhex(h) for h in node.content)
                    elif node.type == DIR and node.subtree:
                        out |= reachable(bytes.fromhex(node.subtree))
            except StackVaultError as exc:
                bad_trees[tid] = str(exc)
        memo[tid] = frozenset(out)
        return memo[tid]

    for snap in snaps:
        for b in reachable(bytes.fromhex(snap.tree)):
            users[b].add(snap.id)
    unindexed_users: set[str] = set()
    for b, sids in users.items():
        if b not in repo.index:
            unindexed_users |= sids
            rep.errors.append(Problem(f"blob {b.hex()}", "referenced but not in any index",
                                      sorted(sids)))
    # An unreadable index file hides the blobs it lists: the snapshots that use blobs missing
    # from the index rely on it (on one of them, if several index files are damaged).
    for problem in index_problems:
        problem.snapshots = sorted(unindexed_users)
    for b, msg in bad_trees.items():
        rep.errors.append(Problem(f"tree {b.hex()}", msg, sorted(users[b])))
    pack_blobs: dict[str, list[bytes]] = defaultdict(list)
    for b, loc in repo.index.items():
        pack_blobs[loc.pack].append(b)

    def snaps_of_pack(pid: str) -> list[str]:
        return sorted(set().union(*(users.get(b, set()) for b in pack_blobs[pid])))

    # Packs: every indexed pack must exist with the indexed size.
    stored = repo.list_packs()
    rep.packs = len(stored)
    for pid, size in repo.index.packs.items():
        if pid not in stored:
            rep.errors.append(Problem(pack_name(pid), "pack is missing from storage",
                                      snaps_of_pack(pid)))
        elif stored[pid] != size:
            rep.errors.append(Problem(pack_name(pid),
                                      f"size {stored[pid]} differs from the index ({size})",
                                      snaps_of_pack(pid)))
    for pid in stored.keys() - repo.index.packs.keys():
        if index_problems or unindexed_users:  # it may hold the blobs the index lacks
            rep.warnings.append(Problem(pack_name(pid), "pack is not in any index (the index "
                                        "is damaged or incomplete: run `repair index`)"))
            continue
        rep.warnings.append(Problem(pack_name(pid), "pack is not in any index (left by an "
                                    "interrupted backup or prune; `prune` removes it)"))

    # Data.
    if read_data or subset:
        todo = sorted(pid for pid in repo.index.packs if pid in stored)
        if subset:
            kind, frac_or_k, n = parse_subset(subset)
            if kind == "pct":
                rng = random.Random(seed)
                count = max(1, round(len(todo) * frac_or_k))
                todo = sorted(rng.sample(todo, count)) if todo else []
            else:
                todo = [p for p in todo if int(p[:8], 16) % n == int(frac_or_k) - 1]
        done = [0]

        def read_pack(pid: str) -> list[tuple[str, str]]:
            problems = _read_pack(repo, pid, pack_blobs[pid])
            done[0] += 1
            progress({"event": "check", "packs_done": done[0], "packs_total": len(todo)})
            return problems

        with ThreadPoolExecutor(4) as ex:
            for pid, problems in zip(todo, ex.map(read_pack, todo), strict=True):
                rep.packs_read += 1
                for obj, msg in problems:
                    affected = (snaps_of_pack(pid) if obj == pack_name(pid)
                                else sorted(users.get(bytes.fromhex(obj.split()[-1]), ())))
                    rep.errors.append(Problem(obj, msg, affected))
        rep.blobs_checked = sum(len(pack_blobs[p]) for p in todo)
    return rep


def _read_pack(repo: Repository, pid: str, blobs: list[bytes]) -> list[tuple[str, str]]:
    """Download one pack and verify its id, its header and every indexed blob in it."""
    name = pack_name(pid)
    try:
        data = repo.storage.get(name)
    except ObjectNotFound:
        return [(name, "pack is missing from storage")]
    problems: list[tuple[str, str]] = []
    if blake3.blake3(data).hexdigest() != pid:
        problems.append((name, "content does not match its id (damaged)"))
    try:
        entries = parse_header(repo.crypto, pid, data, len(data))
    except IntegrityError as exc:
        problems.append((name, f"header: {exc}"))
        entries = []
    indexed = {b: loc for b in blobs if (loc := repo.index.get(b)) is not None}
    for e in entries:
        loc = indexed.get(e.id)
        if loc is not None and (loc.offset, loc.length) != (e.offset, e.length):
            problems.append((f"blob {e.id.hex()}", f"pack {pid[:12]}: header and index disagree"))
    for bid, loc in indexed.items():
        try:
            plain = repo.codec.decode(bid, data[loc.offset: loc.offset + loc.length],
                                      loc.raw_length)
            if repo.blob_id(plain) != bid:
                problems.append((f"blob {bid.hex()}", "content does not match its id"))
        except IntegrityError as exc:
            problems.append((f"blob {bid.hex()}", f"in pack {pid[:12]}: {exc}"))
    return problems
