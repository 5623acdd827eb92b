"""Export a component's artifacts as plain files with a SHA256SUMS, for standard tools."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from stackvault.errors import IntegrityError, UsageError
from stackvault.ops.repo_artifacts import RepoArtifactSource
from stackvault.ops.stack_restore import manifest_of
from stackvault.repo.repository import Repository
from stackvault.repo.snapshot import Snapshot


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def export_component(repo: Repository, snap: Snapshot, component: str,
                     out: Path) -> dict[str, Any]:
    """Write every artifact of ``component`` into ``out`` (which must be empty or new) and a
    ``SHA256SUMS`` that `sha256sum -c SHA256SUMS` accepts inside ``out``."""
    manifest = manifest_of(snap)["components"].get(component)
    if manifest is None or manifest.get("status") != "ok":
        raise UsageError(f"snapshot {snap.short_id} holds no intact component {component!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty", hint="export into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    source = RepoArtifactSource(repo, snap, component)
    expected = {a["name"]: a for a in manifest.get("artifacts", [])}
    for name in source.names():
        source.extract(name, out / name)
        want = expected.get(name, {}).get("sha256")
        if want and (out / name).is_file() and _sha256(out / name) != want:
            raise IntegrityError(f"artifact {name!r} does not match the manifest's SHA-256")
    lines = []
    for dirpath, _dirs, files in sorted(os.walk(out)):
        for f in sorted(files):
            p = Path(dirpath) / f
            if p.is_symlink() or p.name == "SHA256SUMS":
                continue
            lines.append(f"{_sha256(p)}  {p.relative_to(out)}\n")
    (out / "SHA256SUMS").write_text("".join(lines))
    return {"component": component, "snapshot": snap.id, "out": str(out), "files": len(lines)}
