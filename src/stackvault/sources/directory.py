"""Artifacts as plain files in a folder, with SHA256SUMS: the sink and source of tests, export."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from stackvault.errors import SourceCorrupt, SourceUnavailable, UsageError
from stackvault.sources.base import (
    ArtifactInfo,
    Excluder,
    TreeDigest,
    hash_stream,
    validate_name,
    walk_tree,
)

INDEX = ".stackvault-artifacts.json"
SUMS = "SHA256SUMS"
INDEX_VERSION = 1


def _read_error(path: str, e: OSError) -> SourceUnavailable:
    return SourceUnavailable(f"{path}: cannot read: {e.strerror}",
                             hint="fix its permissions or exclude it")


def _copy_file(src: str, dst: str) -> tuple[int, str]:
    """Copy a file's content, mode and times while hashing it; return (bytes, SHA-256)."""
    try:
        f = open(src, "rb")  # noqa: SIM115 - closed below; open errors are the source's
    except OSError as e:
        raise _read_error(src, e) from e
    with f, open(dst, "xb") as out:
        result = hash_stream(f, out)
    shutil.copystat(src, dst)
    return result


def copy_tree(src: str, dst: str, exclude: Callable[[str], bool] | None = None
              ) -> tuple[TreeDigest, list[tuple[str, str]]]:
    """Copy folder `src` into the existing empty folder `dst` (files, folders, symlinks, modes
    and times), hashing as it goes; return the tree digest and (relative path, SHA-256) of
    every regular file."""
    td = TreeDigest()
    sums: list[tuple[str, str]] = []
    dirs: list[tuple[str, str]] = [(src, dst)]
    for e in walk_tree(src, exclude):
        out = os.path.join(dst, e.rel)
        if e.kind == "d":
            os.mkdir(out)
            td.add_dir(e.rel)
            dirs.append((e.path, out))
        elif e.kind == "l":
            target = os.readlink(e.path)
            os.symlink(target, out)
            td.add_symlink(e.rel, target)
        else:
            size, digest = _copy_file(e.path, out)
            td.add_file(e.rel, size, digest)
            sums.append((e.rel, digest))
    for s, d in reversed(dirs):  # after their content, which changes their mtime
        shutil.copystat(s, d)
    return td, sums


def remove_path(path: Path | str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _sums_line(rel: str, digest: str) -> bytes:
    """One line of GNU `sha256sum` output, escaped the way `sha256sum -c` expects."""
    name = os.fsencode(rel)
    if b"\\" in name or b"\n" in name:
        name = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
        return b"\\" + digest.encode() + b"  " + name + b"\n"
    return digest.encode() + b"  " + name + b"\n"


class DirectorySink:
    """An ArtifactSink that writes each artifact under one new or empty folder: a stream or
    file as `DIR/name`, a tree as the folder `DIR/name/`. It keeps `SHA256SUMS` (every regular
    file; `sha256sum -c SHA256SUMS` accepts it) and `.stackvault-artifacts.json` (the
    ArtifactInfo list that DirectorySource verifies against) up to date after each artifact.
    Nothing is visible under its final name before it is complete."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise UsageError(f"{self.root} exists and is not an empty folder",
                             hint="choose a new or empty folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts: list[ArtifactInfo] = []
        self._sums: list[tuple[str, str]] = []
        self._write_index()

    def _dest(self, name: str) -> Path:
        validate_name(name)
        for a in self.artifacts:
            if a.name == name or name.startswith(a.name + "/") or a.name.startswith(name + "/"):
                raise UsageError(f"artifact {name!r} overlaps artifact {a.name!r}, already added")
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    def _tmp(self) -> Path:
        return self.root / f".stackvault-tmp-{uuid.uuid4().hex}"

    def add_stream(self, name: str, stream: BinaryIO) -> ArtifactInfo:
        dest = self._dest(name)
        tmp = self._tmp()
        try:
            with open(tmp, "xb") as out:
                size, digest = hash_stream(stream, out)
            os.replace(tmp, dest)
        except BaseException:
            remove_path(tmp)
            raise
        return self._added(ArtifactInfo(name, size, digest, "stream"), [(name, digest)])

    def add_path(self, name: str, path: Path, *, exclude: Sequence[str] = ()) -> ArtifactInfo:
        excluder = Excluder(exclude)
        try:
            st = os.stat(path)
        except OSError as e:
            raise SourceUnavailable(f"{path}: {e.strerror}",
                                    hint="check the path to back up") from e
        dest = self._dest(name)
        tmp = self._tmp()
        try:
            if stat.S_ISREG(st.st_mode):
                size, digest = _copy_file(os.fspath(path), os.fspath(tmp))
                info = ArtifactInfo(name, size, digest, "file")
                sums = [(name, digest)]
            elif stat.S_ISDIR(st.st_mode):
                os.mkdir(tmp)
                td, rel_sums = copy_tree(os.fspath(path), os.fspath(tmp),
                                         excluder if excluder else None)
                info = ArtifactInfo(name, td.size, td.hexdigest(), "tree", files=td.files)
                sums = [(f"{name}/{rel}", digest) for rel, digest in rel_sums]
            else:
                raise UsageError(f"{path} is neither a file nor a folder")
            os.replace(tmp, dest)
        except BaseException:
            remove_path(tmp)
            raise
        return self._added(info, sums)

    def _added(self, info: ArtifactInfo, sums: list[tuple[str, str]]) -> ArtifactInfo:
        self.artifacts.append(info)
        self._sums.extend(sums)
        self._write_index()
        return info

    def _write_index(self) -> None:
        self._write(SUMS, b"".join(_sums_line(r, d) for r, d in sorted(self._sums)))
        index = {"version": INDEX_VERSION, "artifacts": [a.to_dict() for a in self.artifacts]}
        self._write(INDEX, json.dumps(index, indent=1).encode() + b"\n")

    def _write(self, name: str, data: bytes) -> None:
        tmp = self._tmp()
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)


class _VerifyingReader(io.RawIOBase):
    """Reads a file and checks its size and SHA-256 when EOF is reached."""

    def __init__(self, f: BinaryIO, info: ArtifactInfo, where: str) -> None:
        self._f = f
        self._info = info
        self._where = where
        self._h = hashlib.sha256()
        self._n = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        n = len(data)
        if n:
            b[:n] = data
            self._h.update(data)
            self._n += n
        elif not self._verified:
            got = self._h.hexdigest()
            if (self._n, got) != (self._info.size, self._info.sha256):
                raise SourceCorrupt(
                    f"artifact {self._info.name!r} in {self._where} is damaged: "
                    f"read {self._n} bytes with SHA-256 {got}, the backup recorded "
                    f"{self._info.size} bytes with {self._info.sha256}",
                    hint="restore from another snapshot or export")
            self._verified = True
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class DirectorySource:
    """An ArtifactSource over a folder written by DirectorySink; every read is verified
    against the recorded size and SHA-256."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        try:
            doc = json.loads((self.root / INDEX).read_text())
        except FileNotFoundError as e:
            raise SourceUnavailable(f"{self.root} is not an artifact folder (no {INDEX})") from e
        except (OSError, ValueError) as e:
            raise SourceCorrupt(f"{self.root / INDEX}: unreadable: {e}") from e
        if doc.get("version") != INDEX_VERSION:
            raise SourceCorrupt(f"{self.root / INDEX}: unknown version {doc.get('version')!r}")
        self._infos = {a.name: a for a in map(ArtifactInfo.from_dict, doc["artifacts"])}

    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> ArtifactInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise UsageError(f"no artifact {name!r} in {self.root}; it has: "
                             f"{', '.join(self._infos) or 'none'}") from None

    def _path(self, name: str) -> str:
        path = os.path.join(self.root, name)
        root = os.path.realpath(self.root)
        parent = os.path.realpath(os.path.dirname(path))
        if os.path.commonpath([root, parent]) != root:
            raise SourceCorrupt(f"artifact {name!r} points outside {self.root}")
        return path

    def open(self, name: str) -> BinaryIO:
        info = self.info(name)
        if info.kind == "tree":
            raise UsageError(f"artifact {name!r} is a folder; extract it instead")
        try:
            f = open(self._path(name), "rb")  # noqa: SIM115 - owned by the reader
        except FileNotFoundError as e:
            raise SourceCorrupt(f"artifact {name!r} is missing from {self.root}") from e
        return io.BufferedReader(_VerifyingReader(f, info, str(self.root)), 1 << 20)

    def extract(self, name: str, dest: Path) -> None:
        info = self.info(name)
        src = self._path(name)
        if os.path.lexists(dest):
            raise UsageError(f"{dest} already exists; extract needs a new path")
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        try:
            if info.kind == "tree":
                if not os.path.isdir(src) or os.path.islink(src):
                    raise SourceCorrupt(f"artifact {name!r} is missing from {self.root}")
                os.mkdir(dest)
                td, _ = copy_tree(src, os.fspath(dest))
                got = (td.size, td.hexdigest())
            else:
                if not os.path.isfile(src):
                    raise SourceCorrupt(f"artifact {name!r} is missing from {self.root}")
                got = _copy_file(src, os.fspath(dest))
            if got != (info.size, info.sha256):
                raise SourceCorrupt(
                    f"artifact {name!r} in {self.root} is damaged: {got[0]} bytes with SHA-256 "
                    f"{got[1]}, the backup recorded {info.size} bytes with {info.sha256}",
                    hint="restore from another snapshot or export")
        except BaseException:
            remove_path(dest)
            raise
