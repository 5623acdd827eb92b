"""Backup, restore, dump, metadata cache, dedup, diff, stats, copy, forget + prune and check,
through the engine's Python API, on MemoryStorage and LocalStorage."""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackvault.errors import (
    IntegrityError,
    RepositoryError,
    RepositoryLocked,
    SnapshotNotFound,
    StorageError,
    UsageError,
)
from stackvault.repo import archiver as archiver_mod
from stackvault.repo import repository as repository_mod
from stackvault.repo import writer as writer_mod
from stackvault.repo.archiver import run_backup
from stackvault.repo.check import check
from stackvault.repo.copy import copy_snapshots
from stackvault.repo.crypto import TEST_KDF
from stackvault.repo.lock import Lock
from stackvault.repo.pack import DATA, TREE
from stackvault.repo.prune import plan_prune, prune
from stackvault.repo.repository import Repository, pack_name
from stackvault.repo.restorer import dump, iter_selected, restore, selected
from stackvault.repo.retention import KeepPolicy, plan
from stackvault.repo.snapshot import Snapshot, now
from stackvault.repo.stats import diff, stats
from stackvault.repo.tree import DIR, FILE, SYMLINK, Node
from stackvault.repo.writer import BlobWriter
from stackvault.storage.local import LocalStorage
from stackvault.storage.memory import MemoryStorage

PW = "pw"
HOST = "test-host"
CHUNKER = {"min": 1024, "avg": 4096, "max": 16384}  # chunks of ~1-16 KiB
PACK = 32 * 1024  # several packs from a few hundred KiB
TEXT = b"".join(b"%06d the quick brown fox jumps over the lazy dog\n" % i for i in range(3000))
BASE_NS = 1_600_000_000_000_000_000


# ==================================================================== helpers


def new_repo(storage: Any = None, password: str | None = PW, **kw: Any) -> Repository:
    kw.setdefault("kdf", TEST_KDF)
    kw.setdefault("chunker", CHUNKER)
    kw.setdefault("pack_size", PACK)
    return Repository.init(storage if storage is not None else MemoryStorage(), password, **kw)


def reopen(repo: Repository, password: str | None = PW) -> Repository:
    return Repository.open(repo.storage, password, insecure_no_password=password is None)


def backup(repo: Repository, *paths: Path | str, **kw: Any) -> Snapshot:
    kw.setdefault("hostname", HOST)
    res = run_backup(repo, paths=[str(p) for p in paths], **kw)
    assert res.errors == []
    return res.snapshot


def under(target: Path, src: Path | str) -> Path:
    """Where a backed-up absolute path lands below a restore target."""
    return target / str(src).lstrip("/")


def do_restore(repo: Repository, snap: Snapshot, target: Path, **kw: Any) -> Any:
    res = restore(repo, snap, str(target), workers=2, **kw)
    assert res.errors == []
    return res


def set_mtime(path: bytes | str | Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def make_tree(root: Path, seed: int) -> dict[str, int]:
    """A tree with nested and empty folders, empty/unicode/non-UTF-8 names, symlinks (also
    dangling), several modes, ns mtimes, and files spanning many chunks and packs."""
    rng = random.Random(seed)
    broot = os.fsencode(root)
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    (root / "a" / "empty_sub").mkdir()
    files: dict[str, bytes] = {
        "empty": b"",
        "a/small.txt": b"hello\n",
        "a/b/text.txt": TEXT[: rng.randrange(1000, 20000)],
        "a/b/c/deep.bin": rng.randbytes(rng.randrange(1, 5000)),
        "ünïcødé – 日本語.txt": "grüße, 世界\n".encode(),
        "big.bin": rng.randbytes(200_000 + rng.randrange(1000)),
        "a/big-text.log": TEXT * 2,
        "dup1": b"D" * 100 + rng.randbytes(20_000),
    }
    files["a/dup2"] = files["dup1"]
    modes = [0o600, 0o640, 0o644, 0o755, 0o444, 0o700]
    for i, (name, data) in enumerate(sorted(files.items())):
        p = root / name
        p.write_bytes(data)
        p.chmod(modes[i % len(modes)])
    # Non-UTF-8 names (kept with surrogateescape), a file and a folder.
    os.mkdir(os.path.join(broot, b"dir-\xfe\xfd"), 0o750)
    for bname, data in ((b"latin1-\xe9t\xe9.bin", b"latin-1 name"),
                        (b"dir-\xfe\xfd/inner-\xff", rng.randbytes(3000))):
        with open(os.path.join(broot, bname), "wb") as f:
            f.write(data)
    # Symlinks: relative, to a folder, dangling, absolute, non-UTF-8 target.
    os.symlink("a/small.txt", root / "link-to-small")
    os.symlink("b", root / "a" / "link-to-dir")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("/nonexistent/absolute/target", root / "a" / "abs-link")
    os.symlink(b"target-\xff\xfe", os.path.join(broot, b"link-bad-target"))
    os.chmod(root / "a" / "b", 0o750)
    # Distinct ns mtimes everywhere; folders last and deepest first.
    paths: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(broot, topdown=False):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            paths.append(os.path.join(dirpath, n))
        paths.append(dirpath)
    for bp in paths:
        set_mtime(bp, BASE_NS + rng.randrange(10**17))
    n_files = sum(1 for bp in paths if stat.S_ISREG(os.lstat(bp).st_mode))
    n_links = sum(1 for bp in paths if stat.S_ISLNK(os.lstat(bp).st_mode))
    n_dirs = sum(1 for bp in paths if stat.S_ISDIR(os.lstat(bp).st_mode)) - 1  # without root
    return {"files": n_files, "symlinks": n_links, "dirs": n_dirs}


def tree_diff(a: Path | str | bytes, b: Path | str | bytes, *,
              check_root: bool = True) -> list[str]:
    """Every difference between two trees: names, types, modes, mtimes, contents, targets."""
    out: list[str] = []
    ba, bb = os.fsencode(a), os.fsencode(b)

    def meta(pa: bytes, pb: bytes) -> None:
        sa, sb = os.lstat(pa), os.lstat(pb)
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            out.append(f"type {pa!r}")
            return
        if not stat.S_ISLNK(sa.st_mode) and stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
            out.append(f"mode {pa!r} {oct(sa.st_mode)} {oct(sb.st_mode)}")
        if sa.st_mtime_ns != sb.st_mtime_ns:
            out.append(f"mtime {pa!r} {sa.st_mtime_ns} {sb.st_mtime_ns}")
        if (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
            out.append(f"owner {pa!r}")
        if stat.S_ISREG(sa.st_mode):
            with open(pa, "rb") as fa, open(pb, "rb") as fb:
                if fa.read() != fb.read():
                    out.append(f"content {pa!r}")
        elif stat.S_ISLNK(sa.st_mode):
            if os.readlink(pa) != os.readlink(pb):
                out.append(f"target {pa!r}")
        elif stat.S_ISDIR(sa.st_mode):
            walk(pa, pb)

    def walk(da: bytes, db: bytes) -> None:
        na, nb = sorted(os.listdir(da)), sorted(os.listdir(db))
        if na != nb:
            out.append(f"names in {da!r}: {set(na) ^ set(nb)}")
        for n in sorted(set(na) & set(nb)):
            meta(os.path.join(da, n), os.path.join(db, n))

    if check_root:
        meta(ba, bb)
    else:
        walk(ba, bb)
    return out


def storage_state(storage: Any) -> dict[str, bytes]:
    return {o.name: storage.get(o.name) for o in storage.list()}


def stored_size(repo: Repository) -> int:
    return sum(repo.list_packs().values())


@pytest.fixture(params=["memory", "local"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        return MemoryStorage()
    return LocalStorage(tmp_path / "repo", create=True)


@pytest.fixture
def repo(storage: Any) -> Repository:
    return new_repo(storage)


@pytest.fixture
def mem_repo() -> Repository:
    return new_repo()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    make_tree(root, seed=1)
    return root


# ==================================================================== backup + restore


def test_roundtrip_generated_tree(repo: Repository, tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    counts = make_tree(root, seed=11)
    res = run_backup(repo, paths=[str(root)], hostname=HOST, tags=["b", "a", "b"])
    assert res.errors == []
    snap = res.snapshot
    assert snap.paths == [str(root)]
    assert snap.tags == ["a", "b"]
    assert snap.hostname == HOST and snap.parent is None
    assert snap.summary["files_new"] == counts["files"]
    assert snap.summary["files_changed"] == snap.summary["files_unmodified"] == 0
    assert snap.summary["errors"] == 0
    assert snap.summary["packs_written"] >= 5
    assert list(repo.storage.list("locks/")) == []

    r = reopen(repo)
    loaded = r.load_snapshot(snap.id)
    assert loaded.to_dict() == snap.to_dict()
    out = tmp_path / "out"
    result = do_restore(r, loaded, out)
    assert tree_diff(root, under(out, root)) == []
    assert result.files == counts["files"]
    assert result.symlinks == counts["symlinks"]
    # the root of the backup and every folder above it are folders too ('/' is not)
    assert result.dirs == counts["dirs"] + len(root.parts) - 1
    assert result.bytes == sum(p.stat().st_size for p in root.rglob("*")
                               if p.is_file() and not p.is_symlink())


def test_tree_nodes_record_metadata(mem_repo: Repository, src: Path) -> None:
    snap = backup(mem_repo, src)
    rel = str(src).lstrip("/")
    nodes = dict(mem_repo.walk(snap.tree))
    big = nodes[f"{rel}/big.bin"]
    st_big = os.lstat(src / "big.bin")
    assert big.type == FILE and big.size == st_big.st_size
    assert (big.mode, big.mtime_ns, big.uid, big.gid, big.inode, big.ctime_ns) == (
        stat.S_IMODE(st_big.st_mode), st_big.st_mtime_ns, st_big.st_uid, st_big.st_gid,
        st_big.st_ino, st_big.st_ctime_ns)
    assert nodes[f"{rel}/empty"].content == [] and nodes[f"{rel}/empty"].size == 0
    assert nodes[f"{rel}/empty_dir"].type == DIR
    assert mem_repo.load_tree(nodes[f"{rel}/empty_dir"].subtree or "") == []
    assert nodes[f"{rel}/dangling"].type == SYMLINK
    assert nodes[f"{rel}/dangling"].target == "does/not/exist"
    assert nodes[f"{rel}/a/link-to-dir"].type == SYMLINK  # not followed
    assert nodes[f"{rel}/link-bad-target"].target == os.fsdecode(b"target-\xff\xfe")
    latin1 = os.fsdecode(b"latin1-\xe9t\xe9.bin")
    bad_dir, inner = os.fsdecode(b"dir-\xfe\xfd"), os.fsdecode(b"inner-\xff")
    assert f"{rel}/{latin1}" in nodes
    assert f"{rel}/{bad_dir}/{inner}" in nodes
    # identical files share their blobs
    assert nodes[f"{rel}/dup1"].content == nodes[f"{rel}/a/dup2"].content
    # tree listings are sorted by name
    for _path, node in nodes.items():
        if node.type == DIR and node.subtree:
            names = [n.name for n in mem_repo.load_tree(node.subtree)]
            assert names == sorted(names)


def test_large_file_spans_chunks_and_packs(mem_repo: Repository, src: Path,
                                           tmp_path: Path) -> None:
    snap = backup(mem_repo, src)
    node = dict(mem_repo.walk(snap.tree))[f"{str(src).lstrip('/')}/big.bin"]
    assert len(node.content) >= 10
    locs = [mem_repo.index.get(bytes.fromhex(h)) for h in node.content]
    assert all(loc is not None and loc.type == DATA for loc in locs)
    assert len({loc.pack for loc in locs if loc}) >= 3
    assert sum(loc.raw_length for loc in locs if loc) == node.size
    for loc in locs:
        assert loc is not None and CHUNKER["max"] >= loc.raw_length
    out = io.BytesIO()
    r = reopen(mem_repo)
    assert dump(r, snap, f"{src}/big.bin", out) == node.size
    assert out.getvalue() == (src / "big.bin").read_bytes()


def test_restore_from_snapshot_of_several_and_nested_paths(mem_repo: Repository, src: Path,
                                                           tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_bytes(b"x" * 5000)
    # src/a is inside src: src covers it
    snap = backup(mem_repo, src / "a", other, src)
    assert snap.paths == sorted([str(src / "a"), str(other), str(src)])
    out = tmp_path / "out"
    do_restore(mem_repo, snap, out)
    assert tree_diff(src, under(out, src)) == []
    assert tree_diff(other, under(out, other)) == []


def test_backup_of_single_file_and_symlink(mem_repo: Repository, src: Path,
                                           tmp_path: Path) -> None:
    snap = backup(mem_repo, src / "a" / "small.txt", src / "dangling")
    out = tmp_path / "out"
    do_restore(mem_repo, snap, out)
    assert (under(out, src) / "a" / "small.txt").read_bytes() == b"hello\n"
    assert os.readlink(under(out, src) / "dangling") == "does/not/exist"
    assert sorted(os.listdir(under(out, src))) == ["a", "dangling"]


def test_backup_missing_path_is_usage_error(mem_repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        run_backup(mem_repo, paths=[str(tmp_path / "nope")], hostname=HOST)
    assert mem_repo.snapshot_ids() == []
    assert list(mem_repo.storage.list("locks/")) == []


def test_special_files_are_skipped_with_an_error(mem_repo: Repository, tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / "f").write_bytes(b"data")
    os.mkfifo(root / "fifo")
    res = run_backup(mem_repo, paths=[str(root)], hostname=HOST)
    assert len(res.errors) == 1 and "fifo" in res.errors[0]
    assert res.snapshot.summary["errors"] == 1
    names = [n.name for n in mem_repo.load_tree(
        dict(mem_repo.walk(res.snapshot.tree))[str(root).lstrip("/")].subtree or "")]
    assert names == ["f"]


def test_restore_into_existing_target_overwrites(mem_repo: Repository, src: Path,
                                                 tmp_path: Path) -> None:
    snap = backup(mem_repo, src)
    out = tmp_path / "out"
    do_restore(mem_repo, snap, out)
    (under(out, src) / "big.bin").write_bytes(b"garbage that is longer " * 100_000)
    (under(out, src) / "a" / "small.txt").write_bytes(b"")
    do_restore(mem_repo, snap, out)
    assert tree_diff(src, under(out, src)) == []


# ==================================================================== --include


@pytest.mark.parametrize(("path", "includes", "expected"), [
    ("a/b", None, (True, True)),
    ("a/b", [], (True, True)),
    ("a", ["a/b"], (False, True)),
    ("a/b", ["a/b"], (True, True)),
    ("a/b/c", ["a/b"], (True, True)),
    ("a/bc", ["a/b"], (False, False)),
    ("ab", ["a"], (False, False)),
    ("x", ["a/b"], (False, False)),
    ("a/b", ["/a/b/"], (True, True)),
    ("anything", ["/"], (True, True)),
    ("a/x.txt", ["*.txt"], (True, True)),
    ("a", ["*.txt"], (False, True)),
    ("a/x.bin", ["a/*.txt"], (False, True)),
    ("a/x.txt", ["a/*.txt"], (True, True)),
    ("a/b/x.txt", ["a/?/x.txt"], (True, True)),
    ("a/b", ["x/y", "a"], (True, True)),
])
def test_selected(path: str, includes: list[str] | None, expected: tuple[bool, bool]) -> None:
    assert selected(path, includes) == expected


def test_iter_selected_yields_folders_on_the_way(mem_repo: Repository, src: Path) -> None:
    snap = backup(mem_repo, src)
    rel = str(src).lstrip("/")
    got = [(p, n.type) for p, n, _w in iter_selected(mem_repo, snap.tree, [f"{rel}/a/b/c"])]
    parts = rel.split("/")
    above = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    assert got == ([(p, DIR) for p in above] + [(f"{rel}/a", DIR), (f"{rel}/a/b", DIR),
                   (f"{rel}/a/b/c", DIR), (f"{rel}/a/b/c/deep.bin", FILE)])
    everything = list(iter_selected(mem_repo, snap.tree, None))
    assert [(p, n) for p, n, _w in everything] == list(mem_repo.walk(snap.tree))


def test_restore_include_prefix(mem_repo: Repository, src: Path, tmp_path: Path) -> None:
    snap = backup(mem_repo, src)
    rel = str(src).lstrip("/")
    out = tmp_path / "out"
    do_restore(mem_repo, snap, out, includes=[f"{rel}/a/b", f"/{rel}/dup1"])
    base = under(out, src)
    assert sorted(os.listdir(base)) == ["a", "dup1"]
    assert os.listdir(base / "a") == ["b"]
    assert tree_diff(src / "a" / "b", base / "a" / "b") == []
    assert (base / "dup1").read_bytes() == (src / "dup1").read_bytes()


def test_restore_include_glob(mem_repo: Repository, src: Path, tmp_path: Path) -> None:
    snap = backup(mem_repo, src)
    out = tmp_path / "out"
    res = do_restore(mem_repo, snap, out, includes=["*.txt"])
    got = sorted(str(p.relative_to(under(out, src))) for p in under(out, src).rglob("*")
                 if not p.is_dir())
    assert got == ["a/b/text.txt", "a/small.txt", "ünïcødé – 日本語.txt"]
    assert res.files == 3 and res.symlinks == 0
    for name in got:
        assert (under(out, src) / name).read_bytes() == (src / name).read_bytes()
    # a glob on one folder level
    out2 = tmp_path / "out2"
    do_restore(mem_repo, snap, out2, includes=[f"{str(src).lstrip('/')}/a/*.log"])
    assert [p.name for p in under(out2, src).rglob("*") if p.is_file()] == ["big-text.log"]


def test_restore_include_nothing_matches(mem_repo: Repository, src: Path,
                                         tmp_path: Path) -> None:
    snap = backup(mem_repo, src)
    with pytest.raises(SnapshotNotFound):
        restore(mem_repo, snap, str(tmp_path / "out"), includes=["no/such/path"])


# ==================================================================== stdin and dump


def test_stdin_backup_and_dump(mem_repo: Repository, tmp_path: Path) -> None:
    data = random.Random(5).randbytes(120_000) + TEXT
    res = run_backup(mem_repo, stdin=io.BytesIO(data), stdin_name="db.sql", hostname=HOST)
    snap = res.snapshot
    assert snap.paths == ["/db.sql"]
    assert snap.summary["files_new"] == 1
    r = reopen(mem_repo)
    out = io.BytesIO()
    assert dump(r, r.load_snapshot(snap.id), "db.sql", out) == len(data)
    assert out.getvalue() == data
    out2 = io.BytesIO()
    dump(r, snap, "/db.sql", out2)
    assert out2.getvalue() == data
    node = r.load_tree(snap.tree)[0]
    assert node.name == "db.sql" and node.size == len(data) and len(node.content) > 5
    do_restore(r, snap, tmp_path / "out")
    assert (tmp_path / "out" / "db.sql").read_bytes() == data
    # a second stream of the same data adds no data blobs
    res2 = run_backup(mem_repo, stdin=io.BytesIO(data), stdin_name="db.sql", hostname=HOST)
    assert res2.snapshot.summary["blobs_new"] == 1  # the new tree only
    assert res2.snapshot.parent is None


def test_stdin_empty_stream(mem_repo: Repository) -> None:
    snap = run_backup(mem_repo, stdin=io.BytesIO(b""), stdin_name="empty",
                      hostname=HOST).snapshot
    out = io.BytesIO()
    assert dump(mem_repo, snap, "empty", out) == 0 and out.getvalue() == b""


def test_dump_errors(mem_repo: Repository, src: Path) -> None:
    snap = backup(mem_repo, src)
    with pytest.raises(SnapshotNotFound, match="not a file|is a dir"):
        dump(mem_repo, snap, f"{src}/a", io.BytesIO())
    with pytest.raises(SnapshotNotFound):
        dump(mem_repo, snap, f"{src}/missing", io.BytesIO())
    with pytest.raises(SnapshotNotFound):
        dump(mem_repo, snap, f"{src}/a/small.txt/below", io.BytesIO())
    out = io.BytesIO()
    dump(mem_repo, snap, f"{src}/ünïcødé – 日本語.txt", out)
    assert out.getvalue() == "grüße, 世界\n".encode()


# ==================================================================== metadata cache


class OpenSpy:
    """Records which files the archiver opens (the metadata cache must avoid reading)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, path: Any, *args: Any, **kw: Any) -> Any:
        self.paths.append(os.fsdecode(path))
        return open(path, *args, **kw)


@pytest.fixture
def open_spy(monkeypatch: pytest.MonkeyPatch) -> OpenSpy:
    spy = OpenSpy()
    monkeypatch.setattr(archiver_mod, "open", spy, raising=False)
    return spy


def test_metadata_cache_unchanged_tree(mem_repo: Repository, src: Path,
                                       open_spy: OpenSpy) -> None:
    first = backup(mem_repo, src)
    n_files = first.summary["files_new"]
    assert len(open_spy.paths) == n_files
    open_spy.paths.clear()
    r = reopen(mem_repo)  # a new process: the cache comes from the parent snapshot
    second = backup(r, src)
    assert open_spy.paths == []
    s = second.summary
    assert second.parent == first.id
    assert (s["files_new"], s["files_changed"], s["files_unmodified"]) == (0, 0, n_files)
    assert s["blobs_new"] == 0 and s["data_added"] == 0 and s["packs_written"] == 0
    assert second.tree == first.tree


def test_metadata_cache_rereads_only_touched_file(mem_repo: Repository, src: Path,
                                                  tmp_path: Path, open_spy: OpenSpy) -> None:
    first = backup(mem_repo, src)
    n_files = first.summary["files_new"]
    small = src / "a" / "small.txt"
    old_mtime = small.stat().st_mtime_ns
    small.write_bytes(b"HELLO\n")  # same size, new content
    set_mtime(small, old_mtime + 1)
    open_spy.paths.clear()
    second = backup(mem_repo, src)
    assert open_spy.paths == [str(small)]
    s = second.summary
    assert (s["files_new"], s["files_changed"], s["files_unmodified"]) == (0, 1, n_files - 1)
    assert second.parent == first.id
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    do_restore(mem_repo, first, out1)
    do_restore(mem_repo, second, out2)
    assert (under(out1, src) / "a" / "small.txt").read_bytes() == b"hello\n"
    assert tree_diff(src, under(out2, src)) == []
    # touching (mtime only) re-reads the file but stores no new data blob
    set_mtime(src / "big.bin", BASE_NS)
    open_spy.paths.clear()
    data_blobs = sum(1 for _b, loc in mem_repo.index.items() if loc.type == DATA)
    third = backup(mem_repo, src)
    assert open_spy.paths == [str(src / "big.bin")]
    assert third.summary["files_changed"] == 1
    assert third.summary["blobs_dup"] >= 10
    assert sum(1 for _b, loc in mem_repo.index.items() if loc.type == DATA) == data_blobs


def test_metadata_cache_new_file_counts_as_new(mem_repo: Repository, src: Path,
                                               open_spy: OpenSpy) -> None:
    first = backup(mem_repo, src)
    (src / "a" / "new").write_bytes(b"new file")
    open_spy.paths.clear()
    second = backup(mem_repo, src)
    assert open_spy.paths == [str(src / "a" / "new")]
    s = second.summary
    assert (s["files_new"], s["files_changed"]) == (1, 0)
    assert s["files_unmodified"] == first.summary["files_new"]


def test_metadata_cache_needs_same_host_and_paths(mem_repo: Repository, src: Path,
                                                  open_spy: OpenSpy) -> None:
    first = backup(mem_repo, src)
    open_spy.paths.clear()
    other_host = backup(mem_repo, src, hostname="other-host")
    assert other_host.parent is None
    assert other_host.summary["files_unmodified"] == 0
    assert len(open_spy.paths) == first.summary["files_new"]
    assert other_host.summary["data_added"] == 0  # but still deduplicated
    explicit = backup(mem_repo, src, hostname="third", parent=first.id[:10])
    assert explicit.parent == first.id
    assert explicit.summary["files_unmodified"] == first.summary["files_new"]


def test_metadata_cache_ignores_blobs_missing_from_index(mem_repo: Repository, src: Path,
                                                         open_spy: OpenSpy) -> None:
    """If the parent's blobs are gone (pruned meanwhile), its files are read again."""
    first = backup(mem_repo, src)
    mem_repo.storage.delete(f"snapshots/{first.id}")
    prune(mem_repo)  # removes every pack
    assert mem_repo.list_packs() == {}
    r = reopen(mem_repo)
    parent_id = r.save_snapshot(first)  # the parent document is back, its data is not
    open_spy.paths.clear()
    second = backup(r, src)
    assert second.parent == parent_id
    assert second.summary["files_unmodified"] == 0
    assert len(open_spy.paths) == first.summary["files_new"]
    r.storage.delete(f"snapshots/{parent_id}")
    assert check(reopen(r), read_data=True).ok


# ==================================================================== dedup


def test_dedup_copy_of_same_data(mem_repo: Repository, src: Path, tmp_path: Path) -> None:
    first = backup(mem_repo, src)
    size1 = stored_size(mem_repo)
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, symlinks=True)
    second = backup(mem_repo, copy)
    s = second.summary
    assert s["files_new"] == first.summary["files_new"]
    data_blobs_new = s["blobs_new"] - (s["dirs"] + 10)  # tree blobs at most one per folder
    assert data_blobs_new <= 0
    assert s["blobs_dup"] > 20
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    assert s["data_added"] < 0.05 * total
    assert stored_size(mem_repo) - size1 < 0.05 * size1
    out = tmp_path / "out"
    do_restore(reopen(mem_repo), second, out)
    assert tree_diff(copy, under(out, copy)) == []


def test_dedup_within_one_backup(mem_repo: Repository, tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    data = random.Random(9).randbytes(100_000)
    for i in range(5):
        (root / f"copy{i}").write_bytes(data)
    block = random.Random(10).randbytes(40_000)
    (root / "repeated").write_bytes(block * 4)  # CDC finds the same cuts in every repeat
    snap = backup(mem_repo, root)
    node = dict(mem_repo.walk(snap.tree))[f"{str(root).lstrip('/')}/repeated"]
    assert len(set(node.content)) < len(node.content) * 0.5  # one blob, several offsets
    assert snap.summary["data_added"] < len(data) * 1.1 + 2 * len(block)
    assert stored_size(mem_repo) < len(data) * 1.3 + 2 * len(block)
    do_restore(mem_repo, snap, tmp_path / "out")
    assert tree_diff(root, under(tmp_path / "out", root)) == []


def test_second_repository_does_not_share_ids(src: Path) -> None:
    a, b = new_repo(), new_repo()
    sa, sb = backup(a, src), backup(b, src)
    blobs_a = {bid for bid, _loc in a.index.items()}
    blobs_b = {bid for bid, _loc in b.index.items()}
    assert not blobs_a & blobs_b
    assert sa.tree != sb.tree


# ==================================================================== diff


def test_diff(mem_repo: Repository, src: Path) -> None:
    a = backup(mem_repo, src)
    (src / "a" / "added.txt").write_bytes(b"new")
    (src / "newdir" / "sub").mkdir(parents=True)
    (src / "newdir" / "sub" / "f").write_bytes(b"f")
    os.remove(src / "dup1")
    shutil.rmtree(src / "a" / "b" / "c")
    (src / "big.bin").write_bytes(b"changed content")
    os.chmod(src / "a" / "small.txt", 0o601)
    os.remove(src / "dangling")
    os.symlink("elsewhere", src / "dangling")
    os.remove(src / "empty")
    os.mkdir(src / "empty")
    b = backup(mem_repo, src)
    p = str(src)
    assert sorted(diff(mem_repo, a, b)) == sorted([
        ("+", f"/{p.lstrip('/')}/a/added.txt"),
        ("+", f"/{p.lstrip('/')}/newdir/"),
        ("+", f"/{p.lstrip('/')}/newdir/sub/"),
        ("+", f"/{p.lstrip('/')}/newdir/sub/f"),
        ("-", f"/{p.lstrip('/')}/dup1"),
        ("-", f"/{p.lstrip('/')}/a/b/c/"),
        ("-", f"/{p.lstrip('/')}/a/b/c/deep.bin"),
        ("M", f"/{p.lstrip('/')}/big.bin"),
        ("M", f"/{p.lstrip('/')}/dangling"),
        ("U", f"/{p.lstrip('/')}/a/small.txt"),
        ("T", f"/{p.lstrip('/')}/empty"),
    ])
    assert diff(mem_repo, a, a) == []
    back = diff(mem_repo, b, a)
    assert ("-", f"/{p.lstrip('/')}/a/added.txt") in back
    assert ("+", f"/{p.lstrip('/')}/dup1") in back


# ==================================================================== stats


def test_stats_consistent(mem_repo: Repository, src: Path) -> None:
    s1 = backup(mem_repo, src)
    st1 = stats(mem_repo, [s1])
    files = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]
    files += [Path(os.fsdecode(os.path.join(os.fsencode(src), b"dir-\xfe\xfd", b"inner-\xff"))),
              Path(os.fsdecode(os.path.join(os.fsencode(src), b"latin1-\xe9t\xe9.bin")))]
    files = list({str(p): p for p in files}.values())
    total = sum(os.lstat(p).st_size for p in files)
    assert st1.snapshots == 1
    assert st1.files == s1.summary["files_new"] == len(files)
    assert st1.restore_size == total
    # unique plaintext: every referenced blob once (dup1 = a/dup2 counted once)
    blobs = {bytes.fromhex(s1.tree)}
    for _p, n in mem_repo.walk(s1.tree):
        blobs.update(bytes.fromhex(h) for h in n.content)
        if n.subtree:
            blobs.add(bytes.fromhex(n.subtree))
    assert st1.blobs == len(blobs)
    unique = sum(loc.raw_length for b in blobs if (loc := mem_repo.index.get(b)))
    assert st1.unique_size == unique
    assert st1.unique_size < total + 50_000
    assert st1.stored_size == stored_size(mem_repo) and st1.packs == len(mem_repo.list_packs())
    assert st1.dedup_ratio > 1  # dup1 and a/dup2 share data (trees make up for little)

    s2 = backup(mem_repo, src, tags=["second"])
    st2 = stats(mem_repo, [s1, s2])
    assert st2.snapshots == 2
    assert st2.files == 2 * st1.files and st2.restore_size == 2 * total
    assert st2.unique_size == st1.unique_size and st2.blobs == st1.blobs
    assert st2.dedup_ratio == pytest.approx(2 * st1.dedup_ratio)
    assert st2.dedup_ratio > 1.9
    assert st2.stored_size == st1.stored_size
    d = st2.to_dict()
    assert d["dedup_ratio"] == round(st2.dedup_ratio, 3)
    assert 0 < d["space_saving"] < 1
    assert d["compression_ratio"] > 0.9  # text compresses, random does not
    empty = stats(mem_repo, [])
    assert (empty.snapshots, empty.files, empty.restore_size, empty.dedup_ratio) == (0, 0, 0, 1.0)


# ==================================================================== copy


def test_copy_then_restore(storage: Any, src: Path, tmp_path: Path) -> None:
    source = new_repo()
    s1 = backup(source, src)
    (src / "a" / "more").write_bytes(random.Random(3).randbytes(30_000))
    s2 = backup(source, src, tags=["t"])
    dst = new_repo(storage, "other password", pack_size=64 * 1024,
                   chunker={"min": 2048, "avg": 8192, "max": 32768})
    res = copy_snapshots(source, dst, source.list_snapshots())
    assert [c[0] for c in res.copied] == [s1.id, s2.id] and res.skipped == []
    assert list(dst.storage.list("locks/")) == []

    d = reopen(dst, "other password")
    snaps = d.list_snapshots()
    assert [s.original for s in snaps] == [s1.id, s2.id]
    assert [s.id for s in snaps] == [c[1] for c in res.copied]
    for orig, copied in zip([s1, s2], snaps, strict=True):
        assert (copied.time, copied.paths, copied.tags, copied.hostname) == (
            orig.time, orig.paths, orig.tags, orig.hostname)
        assert copied.tree != orig.tree  # ids are keyed per repository
    out = tmp_path / "out"
    do_restore(d, snaps[1], out)
    assert tree_diff(src, under(out, src)) == []
    out1 = tmp_path / "out1"
    do_restore(d, snaps[0], out1)
    assert not (under(out1, src) / "a" / "more").exists()
    assert (under(out1, src) / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert check(d, read_data=True).ok

    # a second copy skips what is there and writes nothing
    before = {k: v for k, v in storage_state(dst.storage).items() if not k.startswith("locks/")}
    res2 = copy_snapshots(source, reopen(dst, "other password"), source.list_snapshots())
    assert res2.copied == [] and sorted(res2.skipped) == sorted([s1.id, s2.id])
    after = {k: v for k, v in storage_state(dst.storage).items() if not k.startswith("locks/")}
    assert after == before

    # a new snapshot is copied alone, deduplicated against what was copied before
    (src / "a" / "third").write_bytes(b"third")
    s3 = backup(source, src)
    size_before = stored_size(dst)
    res3 = copy_snapshots(source, reopen(dst, "other password"), source.list_snapshots())
    assert [c[0] for c in res3.copied] == [s3.id] and len(res3.skipped) == 2
    assert stored_size(dst) - size_before < 20_000

    # copying a copy keeps the original id, so it is recognised downstream
    third = new_repo()
    copy_snapshots(d, third, d.list_snapshots()[:1])
    res4 = copy_snapshots(source, third, source.list_snapshots())
    assert s1.id in res4.skipped and len(res4.copied) == 2


# ==================================================================== forget + prune


def forget(repo: Repository, policy: KeepPolicy) -> list[str]:
    groups = plan(repo.list_snapshots(), policy)
    removed = [s.id for g in groups for s in g.remove]
    for sid in removed:
        repo.storage.delete(f"snapshots/{sid}")
    return removed


def test_forget_and_prune(storage: Any, tmp_path: Path) -> None:
    repo = new_repo(storage)
    root = tmp_path / "src"
    root.mkdir()
    (root / "shared.txt").write_bytes(TEXT)
    snaps = []
    for i in range(3):
        (root / "unique.bin").write_bytes(random.Random(100 + i).randbytes(120_000))
        set_mtime(root / "unique.bin", BASE_NS + i)
        snaps.append(backup(repo, root))
    keep_src = tmp_path / "kept"
    shutil.copytree(root, keep_src, symlinks=True)
    size_before = stored_size(repo)

    removed = forget(repo, KeepPolicy(last=1))
    assert sorted(removed) == sorted([snaps[0].id, snaps[1].id])
    assert repo.snapshot_ids() == [snaps[2].id]
    p = prune(repo)
    assert p.delete and p.blobs_unused > 0
    assert p.bytes_freed > 200_000
    size_after = stored_size(repo)
    assert size_after < size_before - 200_000
    assert size_after <= 120_000 * 1.2 + len(TEXT)
    assert list(repo.storage.list("locks/")) == []

    # the kept snapshot restores byte-identical, through a new and through the same object
    for r in (reopen(repo), repo):
        out = tmp_path / f"out-{id(r)}"
        do_restore(r, r.load_snapshot(snaps[2].id), out)
        assert tree_diff(keep_src, under(out, root), check_root=False) == []
        out2 = io.BytesIO()
        dump(r, r.load_snapshot(snaps[2].id), f"{root}/unique.bin", out2)
        assert out2.getvalue() == (keep_src / "unique.bin").read_bytes()
    r = reopen(repo)
    rep = check(r, read_data=True)
    assert rep.ok and rep.warnings == []
    # nothing left to prune
    again, _ctx = plan_prune(r)
    assert (again.delete, again.repack, again.blobs_unused) == ([], [], 0)


def test_prune_repacks_partly_used_packs(tmp_path: Path) -> None:
    repo = new_repo(pack_size=1 << 20)  # every data blob of a backup in one pack
    root = tmp_path / "src"
    root.mkdir()
    keep = random.Random(1).randbytes(60_000)
    drop = random.Random(2).randbytes(60_000)
    (root / "keep.bin").write_bytes(keep)
    (root / "drop.bin").write_bytes(drop)
    first = backup(repo, root)
    os.remove(root / "drop.bin")
    second = backup(repo, root)
    repo.storage.delete(f"snapshots/{first.id}")

    before, _ = plan_prune(reopen(repo))
    assert len(before.repack) == 1 and before.delete  # first's tree pack is all unused
    mixed = before.repack[0]
    size_before = stored_size(repo)
    p = prune(repo)
    assert p.repack == [mixed]
    assert mixed not in repo.list_packs()
    assert stored_size(repo) < size_before - 50_000
    r = reopen(repo)
    node = dict(r.walk(second.tree))[f"{str(root).lstrip('/')}/keep.bin"]
    new_packs = {r.index.get(bytes.fromhex(h)).pack for h in node.content}
    assert mixed not in new_packs and new_packs <= set(r.list_packs())
    for rr in (r, repo):
        out = io.BytesIO()
        dump(rr, rr.load_snapshot(second.id), f"{root}/keep.bin", out)
        assert out.getvalue() == keep
    do_restore(r, second, tmp_path / "out")
    assert (under(tmp_path / "out", root) / "keep.bin").read_bytes() == keep
    assert check(r, read_data=True).ok
    again, _ = plan_prune(r)
    assert (again.repack, again.delete, again.bytes_unused) == ([], [], 0)
    # old index documents are gone: the new ones supersede them
    assert len(list(r.storage.list("index/"))) == 1


def test_prune_max_unused_threshold_keeps_pack(tmp_path: Path) -> None:
    repo = new_repo(pack_size=1 << 20)
    root = tmp_path / "src"
    root.mkdir()
    (root / "keep.bin").write_bytes(random.Random(1).randbytes(60_000))
    (root / "drop.bin").write_bytes(random.Random(2).randbytes(6_000))
    first = backup(repo, root)
    os.remove(root / "drop.bin")
    backup(repo, root)
    repo.storage.delete(f"snapshots/{first.id}")
    p = prune(repo, max_unused=0.5)
    assert p.repack == [] and p.keep
    assert p.bytes_unused > 0
    assert check(reopen(repo), read_data=True).ok


def test_prune_dry_run_changes_nothing(mem_repo: Repository, src: Path) -> None:
    first = backup(mem_repo, src)
    os.remove(src / "big.bin")
    backup(mem_repo, src)
    mem_repo.storage.delete(f"snapshots/{first.id}")
    mem_repo.storage.put("data/ff/" + "ff" * 32, b"left by an interrupted backup")
    before = storage_state(mem_repo.storage)
    dry = prune(mem_repo, dry_run=True)
    assert storage_state(mem_repo.storage) == before
    assert dry.delete and "ff" * 32 in dry.delete
    real = prune(reopen(mem_repo))
    assert real.to_dict() == dry.to_dict()
    assert storage_state(mem_repo.storage) != before
    assert "ff" * 32 not in mem_repo.list_packs()


def test_prune_without_garbage_deletes_nothing(mem_repo: Repository, src: Path) -> None:
    snap = backup(mem_repo, src)
    packs = mem_repo.list_packs()
    p = prune(mem_repo)
    assert (p.delete, p.repack, p.bytes_freed) == ([], [], 0)
    assert mem_repo.list_packs() == packs
    assert mem_repo.snapshot_ids() == [snap.id]


def test_prune_refuses_with_damaged_snapshot(mem_repo: Repository, src: Path) -> None:
    snap = backup(mem_repo, src)
    raw = mem_repo.storage.get(f"snapshots/{snap.id}")
    mem_repo.storage.delete(f"snapshots/{snap.id}")
    mem_repo.storage.put(f"snapshots/{snap.id}", raw[:-2])
    before = storage_state(mem_repo.storage)
    with pytest.raises(RepositoryError, match="cannot be read"):
        prune(mem_repo)
    after = storage_state(mem_repo.storage)
    assert after == before


# ==================================================================== check and damage


def test_check_clean_repository(mem_repo: Repository, src: Path) -> None:
    backup(mem_repo, src)
    for kw in ({}, {"read_data": True}, {"subset": "50%", "seed": 1}, {"subset": "1/2"}):
        rep = check(reopen(mem_repo), **kw)
        assert rep.ok, rep.to_dict()
        assert rep.snapshots == 1 and rep.warnings == []
    rep = check(mem_repo, read_data=True)
    assert rep.packs_read == rep.packs == len(mem_repo.list_packs())
    assert rep.blobs_checked == len(mem_repo.index)


def test_damaged_pack_detected_by_check_and_restore(mem_repo: Repository, src: Path,
                                                    tmp_path: Path) -> None:
    snap = backup(mem_repo, src)
    node = dict(mem_repo.walk(snap.tree))[f"{str(src).lstrip('/')}/big.bin"]
    bid = bytes.fromhex(node.content[3])
    loc = mem_repo.index.get(bid)
    assert loc is not None
    name = pack_name(loc.pack)
    raw = bytearray(mem_repo.storage.get(name))
    raw[loc.offset + 50] ^= 0x10
    mem_repo.storage.delete(name)
    mem_repo.storage.put(name, bytes(raw))
    r = reopen(mem_repo)
    assert check(r).ok  # structure is fine; only reading the data finds it
    rep = check(r, read_data=True)
    assert not rep.ok
    objs = {p.object for p in rep.errors}
    assert f"blob {bid.hex()}" in objs and name in objs
    assert all(p.snapshots == [snap.id] for p in rep.errors)
    res = restore(r, snap, str(tmp_path / "out"), workers=2)
    assert res.errors and any(bid.hex() in e for e in res.errors)
    with pytest.raises(IntegrityError, match=bid.hex()):
        dump(r, snap, f"{src}/big.bin", io.BytesIO())


def test_missing_and_unindexed_packs(mem_repo: Repository, src: Path) -> None:
    snap = backup(mem_repo, src)
    some = next(loc.pack for _b, loc in mem_repo.index.items() if loc.type == DATA)
    mem_repo.storage.delete(pack_name(some))
    mem_repo.storage.put("data/ee/" + "ee" * 32, b"junk")
    rep = check(reopen(mem_repo))
    assert [p.object for p in rep.errors] == [pack_name(some)]
    assert rep.errors[0].snapshots == [snap.id]
    assert [p.object for p in rep.warnings] == [pack_name("ee" * 32)]


def test_missing_tree_pack_names_tree_and_snapshot(mem_repo: Repository, src: Path) -> None:
    snap = backup(mem_repo, src)
    tree_packs = {loc.pack for _b, loc in mem_repo.index.items() if loc.type == TREE}
    for pid in tree_packs:
        mem_repo.storage.delete(pack_name(pid))
    rep = check(reopen(mem_repo))
    objs = {p.object for p in rep.errors}
    assert {pack_name(pid) for pid in tree_packs} <= objs
    assert f"tree {snap.tree}" in objs
    assert all(p.snapshots == [snap.id] for p in rep.errors)
    before = storage_state(mem_repo.storage)
    with pytest.raises(RepositoryError, match="refusing to prune"):
        prune(mem_repo)  # it cannot see what the snapshot uses
    assert storage_state(mem_repo.storage) == before


def test_snapshot_with_missing_blob_reported(mem_repo: Repository, src: Path) -> None:
    snap = backup(mem_repo, src)
    for o in list(mem_repo.storage.list("index/")):
        mem_repo.storage.delete(o.name)
    rep = check(reopen(mem_repo))
    assert not rep.ok
    assert any(p.object == f"blob {snap.tree}" and p.snapshots == [snap.id]
               for p in rep.errors)


# ==================================================================== property test

_name_chars = "abcXYZ019_-. äöü日本€"
_text_names = st.text(alphabet=_name_chars, min_size=1, max_size=8)
_byte_names = st.binary(min_size=1, max_size=6).filter(lambda b: b"\x00" not in b).map(
    os.fsdecode)
_names = st.one_of(_text_names, _byte_names).filter(
    lambda n: n not in (".", "..") and "/" not in n and "\x00" not in n)
_mtimes = st.integers(min_value=0, max_value=4_000_000_000 * 10**9)
_file = st.tuples(st.just("file"),
                  st.one_of(st.binary(max_size=2000),
                            st.integers(0, 40_000).map(lambda n: random.Random(n).randbytes(n)),
                            st.integers(0, 30_000).map(lambda n: TEXT[:n])),
                  st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o4755]), _mtimes)
_link = st.tuples(st.just("link"), st.one_of(_text_names, _byte_names), _mtimes)
_trees = st.recursive(
    st.one_of(_file, _link),
    lambda children: st.tuples(st.just("dir"), st.dictionaries(_names, children, max_size=4),
                               st.sampled_from([0o755, 0o700, 0o750]), _mtimes),
    max_leaves=12,
)


def _build(path: str, spec: Any) -> None:
    kind = spec[0]
    if kind == "file":
        with open(path, "wb") as f:
            f.write(spec[1])
        os.chmod(path, spec[2])
        set_mtime(path, spec[3])
    elif kind == "link":
        os.symlink(spec[1], path)
        set_mtime(path, spec[2])
    else:
        os.mkdir(path)
        for name, child in spec[1].items():
            _build(os.path.join(path, name), child)
        os.chmod(path, spec[2])
        set_mtime(path, spec[3])


@pytest.fixture(scope="module")
def prop_repo() -> Iterator[Repository]:
    yield new_repo()


@settings(max_examples=int(os.environ.get("SV_PROP_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tree=st.dictionaries(_names, _trees, max_size=5))
def test_property_random_trees_roundtrip(prop_repo: Repository, tree: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "src")
        _build(root, ("dir", tree, 0o755, BASE_NS))
        snap = backup(prop_repo, root)
        out = os.path.join(tmp, "out")
        restore(prop_repo, snap, out, workers=2)
        assert tree_diff(root, os.path.join(out, root.lstrip("/"))) == []


def test_tree_blobs_and_data_blobs_in_separate_packs(mem_repo: Repository, src: Path) -> None:
    backup(mem_repo, src)
    types: dict[str, set[int]] = {}
    for _bid, loc in mem_repo.index.items():
        types.setdefault(loc.pack, set()).add(loc.type)
    assert all(len(t) == 1 for t in types.values())
    assert {TREE} in types.values() and {DATA} in types.values()


# ==================================================================== concurrency with others


def test_backup_after_another_process_pruned(mem_repo: Repository, tmp_path: Path) -> None:
    """A backup must not deduplicate against blobs that a prune deleted after this process
    loaded its index (e.g. while it waited for the lock)."""
    root = tmp_path / "src"
    root.mkdir()
    data = random.Random(4).randbytes(50_000)
    (root / "f").write_bytes(data)
    first = backup(mem_repo, root)
    mem_repo.load_index()  # this process knows the blobs of `first`
    other = reopen(mem_repo)  # another process forgets `first` and prunes its data
    other.storage.delete(f"snapshots/{first.id}")
    prune(other)
    assert mem_repo.list_packs() == {}
    second = backup(mem_repo, tmp_path / "src", hostname="other-host")
    r = reopen(mem_repo)
    assert check(r).ok
    out = io.BytesIO()
    dump(r, second, f"{root}/f", out)
    assert out.getvalue() == data


def test_copy_after_destination_was_pruned(src: Path, tmp_path: Path) -> None:
    source, dst = new_repo(), new_repo()
    s1 = backup(source, src)
    copy_snapshots(source, dst, [s1])
    dst.load_index()
    other = reopen(dst)
    for sid in other.snapshot_ids():
        other.storage.delete(f"snapshots/{sid}")
    prune(other)
    res = copy_snapshots(source, dst, [s1])
    assert len(res.copied) == 1
    r = reopen(dst)
    assert check(r, read_data=True).ok
    do_restore(r, r.load_snapshot(res.copied[0][1]), tmp_path / "out")
    assert tree_diff(src, under(tmp_path / "out", src)) == []


def test_locks_exclude_prune_and_backup(mem_repo: Repository, src: Path) -> None:
    with Lock(reopen(mem_repo), exclusive=True).acquire(), pytest.raises(RepositoryLocked):
        run_backup(mem_repo, paths=[str(src)], hostname=HOST)
    assert mem_repo.snapshot_ids() == []
    with Lock(reopen(mem_repo), exclusive=False).acquire():
        with pytest.raises(RepositoryLocked):
            prune(mem_repo)
        backup(mem_repo, src)  # shared locks coexist
    assert list(mem_repo.storage.list("locks/")) == []


# ==================================================================== restore safety


def test_restore_over_old_restore_never_writes_through_symlinks(mem_repo: Repository,
                                                                tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"precious")
    root = tmp_path / "src"
    root.mkdir()
    os.symlink(outside / "precious", root / "x")
    os.symlink(outside, root / "d")
    first = backup(mem_repo, root)
    os.remove(root / "x")
    os.remove(root / "d")
    (root / "x").write_bytes(b"new content of x")
    (root / "d").mkdir()
    (root / "d" / "precious").write_bytes(b"overwritten")
    second = backup(mem_repo, root)
    out = tmp_path / "out"
    do_restore(mem_repo, first, out)
    assert os.readlink(under(out, root) / "x") == str(outside / "precious")
    do_restore(mem_repo, second, out)
    assert (outside / "precious").read_bytes() == b"precious"
    assert os.listdir(outside) == ["precious"]
    assert tree_diff(root, under(out, root)) == []


def test_restore_refuses_unsafe_names(mem_repo: Repository, tmp_path: Path) -> None:
    for bad in ("..", ".", "a/b", ""):
        with BlobWriter(mem_repo) as w:
            bid, raw = mem_repo.save_tree([Node(name=bad, type=FILE, mode=0o644)])
            w.save_now(TREE, raw)
            w.flush()
        snap = Snapshot(time=now(), hostname=HOST, username="u", paths=["/x"],
                        tree=bid.hex())
        with pytest.raises(IntegrityError, match="unsafe"):
            restore(mem_repo, snap, str(tmp_path / "out"))
    assert not (tmp_path / "b").exists()


# ==================================================================== snapshots, index batches


def test_find_snapshot(mem_repo: Repository, src: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    a = backup(mem_repo, src, tags=["x"])
    b = backup(mem_repo, other, hostname="h2")
    c = backup(mem_repo, src, tags=["x", "y"])
    assert mem_repo.find_snapshot("latest").id == c.id
    assert mem_repo.find_snapshot("latest", host="h2").id == b.id
    assert mem_repo.find_snapshot("latest", paths=[str(src)]).id == c.id
    assert mem_repo.find_snapshot("latest", tags=["x"]).id == c.id
    with pytest.raises(SnapshotNotFound):
        mem_repo.find_snapshot("latest", host=HOST, paths=[str(other)])
    assert mem_repo.find_snapshot(a.id[:12]).id == a.id
    with pytest.raises(SnapshotNotFound, match="no snapshot"):
        mem_repo.find_snapshot("zzzz")
    with pytest.raises(SnapshotNotFound):
        mem_repo.find_snapshot("")
    ids = sorted(mem_repo.snapshot_ids())
    shared = os.path.commonprefix(ids[:2])
    if shared:
        with pytest.raises(SnapshotNotFound, match="ambiguous"):
            mem_repo.find_snapshot(shared)
    assert [s.id for s in mem_repo.list_snapshots()] == [a.id, b.id, c.id]
    assert c.parent == a.id


def test_many_index_documents(monkeypatch: pytest.MonkeyPatch, src: Path,
                              tmp_path: Path) -> None:
    monkeypatch.setattr(writer_mod, "INDEX_FLUSH_ENTRIES", 8)
    monkeypatch.setattr(repository_mod, "INDEX_BATCH_ENTRIES", 8)
    repo = new_repo()
    first = backup(repo, src)
    n_index = len(list(repo.storage.list("index/")))
    assert n_index >= 3
    r = reopen(repo)
    r.load_index()
    assert len(r.loaded_index_ids) == n_index and len(r.index) == len(repo.index)
    os.remove(src / "big.bin")
    second = backup(r, src)
    r.storage.delete(f"snapshots/{first.id}")
    prune(r)
    r2 = reopen(repo)
    assert check(r2, read_data=True).ok
    r2.load_index()
    assert len(r2.loaded_index_ids) == len(list(r2.storage.list("index/"))) >= 2
    do_restore(r2, second, tmp_path / "out")
    assert tree_diff(src, under(tmp_path / "out", src)) == []


class FailingPacks:
    """MemoryStorage that refuses pack uploads after ``allow`` of them while armed."""

    def __init__(self, allow: int) -> None:
        self.inner = MemoryStorage()
        self.allow = allow
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, name: str, data: bytes) -> None:
        if self.armed and name.startswith("data/"):
            if self.allow <= 0:
                raise StorageError(f"injected failure storing {name}")
            self.allow -= 1
        self.inner.put(name, data)


def test_retry_after_failed_backup_in_same_process(src: Path, tmp_path: Path) -> None:
    storage = FailingPacks(allow=3)
    repo = new_repo(storage)
    storage.armed = True
    with pytest.raises(StorageError):
        run_backup(repo, paths=[str(src)], hostname=HOST)
    assert repo.snapshot_ids() == [] and list(storage.list("locks/")) == []
    leftover = set(repo.list_packs())
    assert leftover  # packs of the failed run, in no index
    storage.armed = False
    snap = backup(repo, src)  # the same Repository object
    r = reopen(repo)
    rep = check(r, read_data=True)
    assert rep.ok, rep.to_dict()
    assert {p.object for p in rep.warnings} == {pack_name(p) for p in leftover}
    prune(r)  # removes the leftovers and must not take data of `snap` with them
    assert not leftover & set(r.list_packs())
    r2 = reopen(repo)
    assert check(r2, read_data=True).ok
    do_restore(r2, snap, tmp_path / "out")
    assert tree_diff(src, under(tmp_path / "out", src)) == []


def test_concurrent_backups(tmp_path: Path) -> None:
    storage = MemoryStorage()
    new_repo(storage)
    roots = []
    for i in range(2):
        root = tmp_path / f"src{i}"
        root.mkdir()
        (root / "shared").write_bytes(TEXT)
        (root / "own").write_bytes(random.Random(i).randbytes(60_000))
        roots.append(root)
    snaps: list[Snapshot] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            snaps.append(backup(Repository.open(storage, PW), roots[i], hostname=f"h{i}"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(snaps) == 2
    r = Repository.open(storage, PW)
    assert check(r, read_data=True).ok
    for snap in snaps:
        out = tmp_path / f"out-{snap.hostname}"
        do_restore(r, snap, out)
        root = roots[int(snap.hostname[1:])]
        assert tree_diff(root, under(out, root)) == []
