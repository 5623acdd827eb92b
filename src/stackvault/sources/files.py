"""Files adapter: folders and single files as artifacts, restored by swapping in a checked copy."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from stackvault.errors import SourceError, SourceUnavailable, UsageError
from stackvault.sources.base import (
    ArtifactInfo,
    ArtifactSink,
    ArtifactSource,
    ComponentResult,
    Excluder,
    Fingerprint,
    ProbeResult,
    Target,
    TreeEntry,
    hash_file,
    remove_scratch_path,
    scratch_folder,
    tree_digest,
    validate_name,
    walk_tree,
)
from stackvault.sources.directory import remove_path


class FilesSource:
    """Files and folders, each stored as one artifact named after its absolute path without
    the leading `/` (`/etc/app` -> `etc/app`), so a snapshot tree mirrors the paths.

    A configured path that is a symlink is followed; symlinks inside folders are kept as
    symlinks. `exclude` patterns follow `Excluder`, relative to each configured folder.
    Fingerprint: `counts` files and bytes, `digests` one per artifact (the file's SHA-256 or
    the folder's TreeDigest), computed from what the sink stored, not from a second read.

    Restore, per artifact: extract to a temporary sibling (verified), then swap it in with two
    renames, so a folder is never half restored. All artifacts are extracted before the first
    swap. Entries of the current folder that match `exclude` are moved into the restored
    folder, not deleted. `force` changes nothing: there is no "in use" for plain files.
    """

    type: ClassVar[str] = "files"

    def __init__(self, paths: Sequence[str | os.PathLike[str]],
                 exclude: Sequence[str] = ()) -> None:
        if isinstance(paths, str | os.PathLike) or not paths:
            raise UsageError("the files source needs a list of one or more paths")
        self.exclude = list(exclude)
        self._excluder = Excluder(self.exclude)
        self.items: list[tuple[str, Path]] = []
        for p in sorted({os.path.abspath(p) for p in paths}):
            if p == "/":
                raise UsageError("refusing to back up / as a files component",
                                 hint="list the folders that hold your data")
            if any(p.startswith(f"{q}/") for _, q in self._paths()):
                continue  # inside a path already listed: covered by it
            self.items.append((validate_name(p.lstrip("/")), Path(p)))

    def _paths(self) -> list[tuple[str, str]]:
        return [(n, str(p)) for n, p in self.items]

    def _base(self, target: Target | None) -> Path | None:
        if target is None:
            return None
        if set(target) != {"path"}:
            raise UsageError(f"a files restore target takes exactly 'path' (a folder), got "
                             f"{sorted(target)}")
        return Path(target["path"])

    def _where(self, name: str, base: Path | None) -> Path:
        return Path("/", name) if base is None else base / name

    # -- inspection
    def probe(self) -> ProbeResult:
        missing = [str(p) for _, p in self.items if not p.exists()]
        if missing:
            return ProbeResult(False, "", None, f"missing: {', '.join(missing)}")
        size = files = 0
        try:
            for _, p in self.items:
                if p.is_file():
                    size, files = size + p.stat().st_size, files + 1
                    continue
                for e in walk_tree(p, self._excluder or None):
                    if e.kind == "f":
                        size, files = size + e.st.st_size, files + 1
        except SourceUnavailable as e:
            return ProbeResult(False, "", None, str(e))
        return ProbeResult(True, "", size, f"{len(self.items)} paths, {files} files")

    # -- drills
    def scratch_target(self, label: str) -> Target:
        return {"path": str(scratch_folder(label))}

    def remove_target(self, target: Target) -> None:
        base = self._base(target)
        if base is not None:
            remove_scratch_path(base)

    def run_probe(self, probe: Mapping[str, Any], *, target: Target | None = None) -> str:
        """`{"file": PATH}`: the SHA-256 of that file (as backed up: an absolute path) under
        the target, or '' if it is missing."""
        if set(probe) != {"file"}:
            raise UsageError(f"a files probe checks a `file`; got {', '.join(sorted(probe))}")
        where = self._where(str(probe["file"]).lstrip("/"), self._base(target))
        return hash_file(where)[1] if where.is_file() else ""

    def describe_target(self, target: Target | None = None) -> str:
        base = self._base(target)
        if base is None:
            return "files " + ", ".join(str(p) for _, p in self.items) + ": replaced"
        return f"folder {base}: " + ", ".join(n for n, _ in self.items) + " restored under it"

    def fingerprint(self, *, target: Target | None = None) -> Fingerprint:
        base = self._base(target)
        fp = Fingerprint(counts={"files": 0, "bytes": 0})
        for name, _ in self.items:
            where = self._where(name, base)
            if where.is_dir():
                td = tree_digest(where, self._excluder or None)
                fp.counts["files"] += td.files
                fp.counts["bytes"] += td.size
                fp.digests[name] = td.hexdigest()
            elif where.is_file():
                size, digest = hash_file(where)
                fp.counts["files"] += 1
                fp.counts["bytes"] += size
                fp.digests[name] = digest
        return fp

    # -- backup
    def backup(self, sink: ArtifactSink) -> ComponentResult:
        artifacts: list[ArtifactInfo] = []
        for name, path in self.items:
            if not path.exists():
                raise SourceUnavailable(f"{path}: no such file or folder",
                                        hint="fix the paths of this component in stackvault.yaml")
            artifacts.append(sink.add_path(name, path, exclude=self.exclude))
        fp = Fingerprint(counts={"files": sum(a.files for a in artifacts),
                                 "bytes": sum(a.size for a in artifacts)},
                         digests={a.name: a.sha256 for a in artifacts})
        return ComponentResult(artifacts, fp, {},
                               {"paths": {n: str(p) for n, p in self.items},
                                "exclude": self.exclude})

    # -- restore
    def restore(self, source: ArtifactSource, *, target: Target | None = None,
                tables: list[str] | None = None, force: bool = False) -> None:
        if tables:
            raise UsageError("the files source has no tables; restore the whole component")
        base = self._base(target)
        token = secrets.token_hex(4)
        staged: list[tuple[Path, Path]] = []
        try:
            for name in source.names():
                dest = self._where(validate_name(name), base)
                if dest.is_symlink():  # restore into what the configured symlink points to
                    dest = Path(os.path.realpath(dest))
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.parent / f".{dest.name}.stackvault-restore-{token}"
                staged.append((tmp, dest))
                source.extract(name, tmp)
            done: list[str] = []
            for tmp, dest in staged:
                try:
                    self._swap(tmp, dest, token)
                except OSError as e:
                    rest = [str(d) for _, d in staged[len(done):]]
                    raise SourceError(
                        f"restoring {dest} failed: {e}; restored: {', '.join(done) or 'none'}; "
                        f"not restored: {', '.join(rest)}") from e
                done.append(str(dest))
        finally:
            for tmp, _ in staged:
                remove_path(tmp)

    def _swap(self, tmp: Path, dest: Path, token: str) -> None:
        if not os.path.lexists(dest):
            os.rename(tmp, dest)
            return
        if tmp.is_dir() and dest.is_dir():
            self._carry_excluded(dest, tmp)
        old = dest.parent / f".{dest.name}.stackvault-old-{token}"
        os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except BaseException:
            os.rename(old, dest)
            raise
        remove_path(old)

    def _carry_excluded(self, current: Path, restored: Path) -> None:
        """Move the excluded entries of the current folder into the restored one."""
        if not self._excluder:
            return
        excluded: list[TreeEntry] = []
        for _ in walk_tree(current, self._excluder, on_excluded=excluded.append):
            pass
        for e in excluded:
            into = os.path.join(restored, e.rel)
            if os.path.lexists(into):
                continue  # the snapshot has it (patterns changed since): keep the snapshot's
            os.makedirs(os.path.dirname(into), exist_ok=True)
            os.rename(e.path, into)
