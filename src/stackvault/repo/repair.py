"""Rebuild the index from pack headers alone, replacing every existing index document."""

from __future__ import annotations

from typing import Any

from stackvault.errors import IntegrityError, ObjectNotFound
from stackvault.repo.pack import PackEntry
from stackvault.repo.repository import Repository, pack_name, parallel_map


def rebuild_index(repo: Repository) -> dict[str, Any]:
    """Read every pack's header and write a fresh index; call under an exclusive lock.

    Packs whose header is damaged are left out (and reported); their blobs then show up
    as missing in `check`, naming the snapshots affected.
    """
    old_ids = [o.name.split("/", 1)[1] for o in repo.storage.list("index/")]
    stored = repo.list_packs()

    def header(pid: str) -> list[PackEntry]:
        return repo.read_pack_header(pid, stored[pid])

    packs: list[tuple[str, int, list[PackEntry]]] = []
    damaged: list[str] = []
    for pid, result in parallel_map(header, sorted(stored)):
        if isinstance(result, IntegrityError | ObjectNotFound):
            damaged.append(pack_name(pid))
        elif isinstance(result, Exception):
            raise result
        else:
            packs.append((pid, stored[pid], result))
    new_ids = repo.write_index_batched(packs, old_ids)
    for doc_id in old_ids:
        if doc_id not in new_ids:
            repo.storage.delete(f"index/{doc_id}")
    repo.reload_index()
    return {"packs": len(packs), "blobs": sum(len(p[2]) for p in packs),
            "damaged_packs": damaged, "index_files": new_ids}
