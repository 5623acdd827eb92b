"""Prune: repack partly used packs, then delete unused packs, never before the new index
is durable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stackvault.errors import RepositoryError, StackVaultError
from stackvault.progress import Progress
from stackvault.repo.index import decode_index
from stackvault.repo.lock import Lock
from stackvault.repo.pack import PackEntry
from stackvault.repo.repository import Repository, pack_name, parallel_map
from stackvault.repo.tree import DIR, FILE
from stackvault.repo.writer import BlobWriter


@dataclass
class PrunePlan:
    keep: list[str] = field(default_factory=list)
    repack: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # unused or unindexed packs
    bytes_total: int = 0
    bytes_unused: int = 0
    bytes_freed: int = 0  # after repacking and deleting
    blobs_used: int = 0
    blobs_unused: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "packs_keep": len(self.keep), "packs_repack": len(self.repack),
            "packs_delete": len(self.delete), "bytes_total": self.bytes_total,
            "bytes_unused": self.bytes_unused, "bytes_freed": self.bytes_freed,
            "blobs_used": self.blobs_used, "blobs_unused": self.blobs_unused,
        }


def used_blobs(repo: Repository) -> set[bytes]:
    """Every blob reachable from every snapshot. Refuses to guess when anything is unreadable."""
    errors: list[tuple[str, Exception]] = []
    snaps = repo.list_snapshots(errors)
    if errors:
        raise RepositoryError(
            f"{len(errors)} snapshot(s) cannot be read (e.g. {errors[0][0][:12]}: {errors[0][1]}); "
            "pruning now could delete data they use",
            hint="run `stackvault check` and remove or repair the damaged snapshots first",
        )
    used: set[bytes] = set()
    for snap in snaps:
        stack = [snap.tree]
        while stack:
            tid = stack.pop()
            bid = bytes.fromhex(tid)
            if bid in used:
                continue
            used.add(bid)
            try:
                nodes = repo.load_tree(tid)
            except StackVaultError as exc:
                raise RepositoryError(
                    f"tree {tid[:12]} of snapshot {snap.short_id} cannot be read ({exc}); "
                    "refusing to prune", hint="run `stackvault check`") from None
            for node in nodes:
                if node.type == FILE:
                    used.update(bytes.fromhex(h) for h in node.content)
                elif node.type == DIR and node.subtree:
                    stack.append(node.subtree)
    return used


def _load_pack_entries(
    repo: Repository,
) -> tuple[dict[str, tuple[int, list[PackEntry]]], list[str]]:
    ids = [o.name.split("/", 1)[1] for o in repo.storage.list("index/")]
    packs: dict[str, tuple[int, list[PackEntry]]] = {}
    for doc_id, result in parallel_map(
        lambda i: decode_index(repo.load_raw_doc("index", "index", i)), ids
    ):
        if isinstance(result, Exception):
            raise RepositoryError(
                f"index {doc_id[:12]} cannot be read ({result}); pruning now could delete "
                "data it describes", hint="run `stackvault repair index` first")
        for pid, size, entries in result:
            packs.setdefault(pid, (size, entries))
    return packs, ids


def plan_prune(repo: Repository, max_unused: float = 0.05) -> tuple[PrunePlan, dict[str, Any]]:
    used = used_blobs(repo)
    packs, index_ids = _load_pack_entries(repo)
    stored = repo.list_packs()
    plan = PrunePlan()
    owner: dict[bytes, str] = {}  # the one pack that keeps each used blob
    for pid in sorted(packs):
        if pid not in stored:
            continue
        for e in packs[pid][1]:
            if e.id in used and e.id not in owner:
                owner[e.id] = pid
    missing = used - owner.keys()
    if missing:  # an unindexed pack (lost or damaged index file) may hold them: keep it all
        raise RepositoryError(
            f"{len(missing)} blob(s) used by snapshots are in no indexed, stored pack (e.g. "
            f"{min(missing).hex()[:12]}); pruning now could delete the packs that hold them",
            hint="run `stackvault repair index`, then `stackvault check`; forget the "
            "snapshots check names if their data is really lost")
    for pid, size in stored.items():
        plan.bytes_total += size
        if pid not in packs:
            plan.delete.append(pid)
            plan.bytes_freed += size
            continue
        entries = packs[pid][1]
        live = [e for e in entries if owner.get(e.id) == pid]
        unused_bytes = sum(e.length for e in entries if owner.get(e.id) != pid)
        plan.blobs_used += len(live)
        plan.blobs_unused += len(entries) - len(live)
        plan.bytes_unused += unused_bytes
        if not live:
            plan.delete.append(pid)
            plan.bytes_freed += size
        elif unused_bytes > max_unused * size:
            plan.repack.append(pid)
            plan.bytes_freed += unused_bytes
        else:
            plan.keep.append(pid)
    return plan, {"packs": packs, "owner": owner, "index_ids": index_ids, "stored": stored}


def prune(repo: Repository, *, max_unused: float = 0.05, dry_run: bool = False,
          retry_lock: float = 0.0, progress: Progress | None = None) -> PrunePlan:
    progress = progress or (lambda _e: None)
    with Lock(repo, exclusive=True).acquire(retry_for=retry_lock) as lock:
        repo.reload_index()  # what others wrote before we held the lock
        plan, ctx = plan_prune(repo, max_unused)
        if dry_run:
            return plan
        packs = ctx["packs"]
        owner: dict[bytes, str] = ctx["owner"]

        # 1. Copy the live blobs of partly used packs into new packs.
        new_packs: list[tuple[str, int, list[PackEntry]]] = []
        if plan.repack:
            with BlobWriter(repo, dedup_index=False, index_new_packs=False) as writer:
                for n, pid in enumerate(plan.repack, 1):
                    data = repo.storage.get(pack_name(pid))
                    for e in packs[pid][1]:
                        if owner.get(e.id) != pid:
                            continue
                        stored = data[e.offset: e.offset + e.length]
                        repo.codec.decode(e.id, stored, e.raw_length)  # never copy damage
                        writer.save_stored(e.type, e.id, stored, e.raw_length)
                    progress({"event": "prune", "packs_done": n, "packs_total": len(plan.repack)})
                writer.flush()
                new_packs = writer.written_packs
        # 2. Write a complete new index: kept packs and new packs.
        keep = [(pid, packs[pid][0], packs[pid][1]) for pid in plan.keep] + new_packs
        new_ids = repo.write_index_batched(keep, ctx["index_ids"])
        lock.check_valid()
        # 3. Only now delete the old index documents, 4. then the packs nobody needs.
        for doc_id in ctx["index_ids"]:
            if doc_id not in new_ids:
                repo.storage.delete(f"index/{doc_id}")
        for pid in plan.delete + plan.repack:
            repo.storage.delete(pack_name(pid))
        repo.reload_index()  # repacked blobs moved: drop their old locations
    return plan
