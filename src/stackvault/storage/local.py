"""Object storage in a folder on local disk (or a mounted NAS): one file per object."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat as stat_mod
from collections.abc import Iterator
from pathlib import Path

from stackvault.errors import (
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StorageFull,
    TransientStorageError,
)
from stackvault.storage.base import ObjectInfo, check_name
from stackvault.storage.memory import check_prefix, check_range

TMP_DIR = "tmp"  # in-flight puts live here; never listed, reserved as a name

_FULL = {errno.ENOSPC, errno.EDQUOT}
_TRANSIENT = {errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR}
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}
_DIR_SYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


class LocalStorage:
    """Objects as files under ``root``: ``data/ab/ab12...`` is ``root/data/ab/ab12...``.

    put writes ``root/tmp/<random>``, fsyncs it, hard-links it to its name (the link fails
    if the name exists, which gives put-if-absent without a lock), removes the temporary
    name and fsyncs the folder. A crash leaves at most an unlisted file in ``tmp/``.

    Folders, the root included, are made on demand by put (``create=True`` makes the root
    at once). Reads of a missing root find nothing: the repository layer reads ``config``
    before it writes anything, so an unmounted disk shows as "no repository".
    """

    def __init__(self, root: Path | str, *, create: bool = False) -> None:
        self.root = Path(root).expanduser().absolute()
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _os_error(e, "create folder", str(self.root)) from e

    @property
    def location(self) -> str:
        return f"local:{self.root}"

    # --- helpers ---------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        check_name(name)
        if name.split("/", 1)[0] == TMP_DIR:
            raise StorageError(f"invalid object name {name!r}: {TMP_DIR}/ is reserved")
        return self.root.joinpath(*name.split("/"))

    def _make_dirs(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents (the root too), each made durable."""
        if folder.is_dir():
            return
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.root.parent)
        current = self.root
        for part in folder.relative_to(self.root).parts:
            child = current / part
            try:
                os.mkdir(child)
            except FileExistsError:
                pass  # already there (or a file: the link below then fails with ENOTDIR)
            else:
                _fsync_dir(current)
            current = child

    # --- Storage ---------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview) -> None:
        final = self._path(name)
        tmp_dir = self.root / TMP_DIR
        tmp = tmp_dir / f"{secrets.token_hex(12)}.tmp"
        try:
            try:
                self._make_dirs(tmp_dir)
                with open(tmp, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self._make_dirs(final.parent)
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    if final.is_dir():
                        raise StorageError(
                            f"cannot store {name!r} in {self.location}: a folder of that name "
                            "exists"
                        ) from None
                    raise ObjectExists(
                        f"object {name!r} already exists in {self.location}"
                    ) from None
                except OSError as e:
                    if e.errno in _NO_HARD_LINKS:
                        raise StorageError(
                            f"cannot store {name!r} in {self.location}: {e.strerror}",
                            hint="the file system does not support hard links, which local "
                            "storage needs for put-if-absent; use ext4, xfs, btrfs, zfs or NFS",
                        ) from e
                    raise
                _fsync_dir(final.parent)
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.EEXIST):
                    raise StorageError(
                        f"cannot store {name!r} in {self.location}: part of its path is an "
                        "object, not a folder"
                    ) from e
                raise _os_error(e, "put", name) from e
        finally:
            with contextlib.suppress(OSError):  # best effort: a leftover is never listed
                os.unlink(tmp)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        check_range(name, offset, length)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                end = size if length is None else offset + length
                if offset > size or end > size:
                    raise StorageError(
                        f"range offset={offset} length={length} is past the end of {name!r} "
                        f"({size} bytes)"
                    )
                f.seek(offset)
                data = f.read(end - offset)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"object {name!r} not found in {self.location}") from None
        except OSError as e:
            raise _os_error(e, "get", name) from e
        if len(data) != end - offset:
            raise StorageError(f"short read of {name!r} in {self.location}")
        return data

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"object {name!r} not found in {self.location}") from None
        except OSError as e:
            raise _os_error(e, "stat", name) from e
        if not stat_mod.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"object {name!r} not found in {self.location}")
        return ObjectInfo(name, st.st_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        folder = prefix.rpartition("/")[0]  # start the walk at the deepest folder named
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        yield from self._walk(start, folder, prefix)

    def _walk(self, directory: Path, rel: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise _os_error(e, "list", prefix) from e
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            if not rel and entry.name == TMP_DIR:
                continue
            if not (name.startswith(prefix) or prefix.startswith(name + "/")):
                continue
            try:
                if entry.is_dir():  # follows symlinks: data/ may live on another disk
                    yield from self._walk(Path(entry.path), name, prefix)
                elif entry.is_file() and name.startswith(prefix):
                    yield ObjectInfo(name, entry.stat().st_size)
            except FileNotFoundError:
                continue  # deleted while we were listing
            except OSError as e:
                raise _os_error(e, "list", prefix) from e

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as e:
            if e.errno == errno.EPERM and path.is_dir():
                return  # some systems report EPERM for unlink() of a folder
            raise _os_error(e, "delete", name) from e

    def close(self) -> None:
        pass


def _fsync_dir(path: Path) -> None:
    """Make the folder's entries (a new link or subfolder) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _DIR_SYNC_UNSUPPORTED:  # file systems that can't sync folders
            raise
    finally:
        os.close(fd)


def _os_error(e: OSError, op: str, name: str) -> StorageError:
    what = f"{op} {name!r}: {e.strerror or e}"
    if e.errno in _FULL:
        return StorageFull(f"no space left: {what}", hint="free space or use another disk")
    if e.errno in _TRANSIENT:
        return TransientStorageError(what)
    if e.errno in (errno.EACCES, errno.EPERM):
        return StorageError(what, hint="check the permissions of the repository folder")
    if e.errno == errno.EROFS:
        return StorageError(what, hint="the file system is mounted read-only")
    return StorageError(what)
