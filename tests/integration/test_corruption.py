"""Damage detection (docs/design.md, "Check", "Threat model"): flipping bytes in any one stored
object is found by ``check --read-data``, which names exactly that object and the snapshots
that use it; snapshots that do not use it still restore byte-identical; nothing restores
silently wrong. A damaged (or lost) index is rebuilt from the pack headers.

One repository (LocalStorage, 256 KiB packs, small chunks, two keys) with four snapshots is
built once: X, Y (shares a file and small blobs with X), X' (X changed: shares most of X)
and Z (its own data). Each test damages a copy of it. The reference model of which
snapshot uses which blob, and which blob lives in which pack and index file, is taken from
the intact repository (pack headers and index documents read directly).
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stackvault.errors import (
    ExitCode,
    IntegrityError,
    RepositoryError,
    StackVaultError,
    WrongPassword,
)
from stackvault.repo import writer
from stackvault.repo.archiver import run_backup
from stackvault.repo.check import CheckReport, Problem, check
from stackvault.repo.crypto import TEST_KDF
from stackvault.repo.index import decode_index
from stackvault.repo.lock import Lock
from stackvault.repo.prune import prune
from stackvault.repo.repository import Repository, pack_name
from stackvault.repo.restorer import restore
from stackvault.repo.tree import DIR, FILE
from stackvault.storage import LocalStorage
from support.reliability import (
    PASSWORD,
    Manifest,
    SourceTree,
    assert_consistent,
    manifest,
    open_repo,
    verify_restore,
)

SEED = int(os.environ.get("STACKVAULT_CORRUPTION_SEED", "4242"))
SECOND_PASSWORD = "second-password"


@dataclass
class Model:
    """The intact repository: what uses what."""

    path: Path
    sources: dict[str, Path]  # snapshot id -> source folder
    manifests: dict[str, Manifest]
    snap_blobs: dict[str, set[bytes]] = field(default_factory=dict)
    pack_blobs: dict[str, set[bytes]] = field(default_factory=dict)
    pack_type: dict[str, int] = field(default_factory=dict)
    index_blobs: dict[str, set[bytes]] = field(default_factory=dict)
    index_packs: dict[str, set[str]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # key id -> password

    def users(self, blobs: set[bytes]) -> set[str]:
        return {sid for sid, used in self.snap_blobs.items() if used & blobs}


def _walk(repo: Repository, tree: str, out: set[bytes]) -> None:
    out.add(bytes.fromhex(tree))
    for node in repo.load_tree(tree):
        if node.type == FILE:
            out.update(bytes.fromhex(h) for h in node.content)
        elif node.type == DIR and node.subtree:
            _walk(repo, node.subtree, out)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    base = tmp_path_factory.mktemp("corruption")
    path = base / "repo"
    repo = Repository.init(LocalStorage(path, create=True), PASSWORD, kdf=TEST_KDF,
                           pack_size=256 << 10,
                           chunker={"min": 16 << 10, "avg": 64 << 10, "max": 256 << 10})
    second_key = repo.add_key(SECOND_PASSWORD, TEST_KDF)
    shared = random.Random(f"{SEED}-shared").randbytes(1 << 20)
    x = SourceTree(base / "x", SEED, size_mb=6)
    y = SourceTree(base / "y", SEED + 1, size_mb=4)
    z = SourceTree(base / "z", SEED + 2, size_mb=3)
    sources: dict[str, Path] = {}
    manifests: dict[str, Manifest] = {}

    def backup(tree: SourceTree) -> None:
        snap = run_backup(open_repo(path), paths=[str(tree.root)]).snapshot
        sources[snap.id] = tree.root
        manifests[snap.id] = manifest(tree.root)

    for tree in (x, y, z):
        tree.create()
    for tree in (y, z):  # an empty folder is the same tree blob everywhere: keep it in X only
        (tree.root / "nested" / "empty-dir").rmdir()
    for tree in (x, y):
        (tree.root / "shared").mkdir()
        (tree.root / "shared" / "common.bin").write_bytes(shared)
    # Index files every ~40 blobs (instead of 50,000) so that a backup writes several, and
    # some list only data packs, as a large backup does.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "INDEX_FLUSH_ENTRIES", 40)
        backup(x)
        backup(y)
        x.mutate()
        backup(x)
        backup(z)

    m = Model(path, sources, manifests)
    repo = open_repo(path)
    repo.load_index()
    for sid in sources:
        m.snap_blobs[sid] = set()
        _walk(repo, repo.load_snapshot(sid).tree, m.snap_blobs[sid])
    for pid, size in repo.list_packs().items():
        entries = repo.read_pack_header(pid, size)
        m.pack_blobs[pid] = {e.id for e in entries}
        (m.pack_type[pid],) = {e.type for e in entries}
    for o in repo.storage.list("index/"):
        iid = o.name.split("/", 1)[1]
        packs = decode_index(repo.load_raw_doc("index", "index", iid))
        m.index_packs[iid] = {pid for pid, _size, _entries in packs}
        m.index_blobs[iid] = {e.id for _pid, _size, entries in packs for e in entries}
    first_key = repo.key_name.split("/", 1)[1] if repo.key_name else ""
    m.keys = {first_key: PASSWORD, second_key: SECOND_PASSWORD}
    # The model is what it should be: the repository is intact and the test is meaningful.
    assert_consistent(repo, allow_unreferenced=False)
    assert len(m.index_blobs) > 4 and len(m.snap_blobs) == 4
    assert m.users(m.snap_blobs[list(sources)[0]]) == set(sources)  # some blobs are shared
    return m


def _copy(model: Model, tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(model.path, dst)
    return dst


def _flip(path: Path, rng: random.Random, count: int = 3, *, skip_whitespace: bool = False) -> None:
    """XOR ``count`` seeded positions with a random non-zero byte, in place."""
    data = bytearray(path.read_bytes())
    positions = [i for i in range(len(data)) if not (skip_whitespace and data[i] in b" \n\r\t")]
    for pos in rng.sample(positions, count):
        data[pos] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


def _pick(rng: random.Random, candidates: dict[str, set[str]], everyone: set[str],
          min_users: int = 1) -> str:
    """An object used by some (at least ``min_users``), but not all, snapshots."""
    ok = sorted(k for k, users in candidates.items()
                if len(users) >= min_users and users != everyone)
    assert ok, f"the fixture has no object used by {min_users}+ but not all snapshots"
    return rng.choice(ok)


def _objects(problems: list[Problem]) -> set[str]:
    return {p.object for p in problems}


def _restores_or_says_so(repo: Repository, model: Model, sid: str, tmp_path: Path) -> str:
    """A snapshot that uses damaged data restores right or reports an error; never wrong."""
    target = tmp_path / f"loud-{sid[:12]}"
    try:
        result = restore(repo, repo.load_snapshot(sid), str(target))
    except StackVaultError:
        return "raised"
    if result.errors:
        shutil.rmtree(target, ignore_errors=True)
        return "reported"
    got = manifest(target / os.path.abspath(model.sources[sid]).lstrip("/"))
    shutil.rmtree(target, ignore_errors=True)
    assert got == model.manifests[sid], f"snapshot {sid[:12]} restored silently wrong"
    return "intact"


def _unaffected_restore(repo: Repository, model: Model, affected: set[str], tmp_path: Path) -> None:
    others = sorted(set(model.sources) - affected)
    assert others, "every snapshot is affected: the case proves nothing"
    for sid in others:
        verify_restore(repo, sid, model.manifests[sid], model.sources[sid], tmp_path)
    for sid in sorted(affected):
        _restores_or_says_so(repo, model, sid, tmp_path)


def _check_pack_damage(model: Model, tmp_path: Path, blob_type: int, seed: str,
                       min_users: int = 1) -> CheckReport:
    rng = random.Random(seed)
    everyone = set(model.sources)
    candidates = {pid: model.users(blobs) for pid, blobs in model.pack_blobs.items()
                  if model.pack_type[pid] == blob_type}
    pid = _pick(rng, candidates, everyone, min_users)
    path = _copy(model, tmp_path)
    _flip(path / pack_name(pid), rng)

    repo = open_repo(path)
    report = check(repo, read_data=True)
    name = pack_name(pid)
    in_pack = {f"{kind} {b.hex()}" for b in model.pack_blobs[pid] for kind in ("blob", "tree")}
    assert name in _objects(report.errors)
    assert _objects(report.errors) <= {name} | in_pack, "check blames objects that are intact"
    for p in report.errors:
        if p.object == name:
            assert set(p.snapshots) == candidates[pid], p
        else:  # one blob of the pack: the snapshots that use that blob
            users = model.users({bytes.fromhex(p.object.split()[-1])})
            if blob_type == 0:
                assert set(p.snapshots) == users, p
            else:  # a tree below another damaged tree: who uses it cannot be known
                assert set(p.snapshots) <= users and (p.snapshots or p.object.startswith("blob")), p
    assert not report.warnings
    _unaffected_restore(open_repo(path), model, candidates[pid], tmp_path)
    return report


def test_damaged_data_pack(model: Model, tmp_path: Path) -> None:
    """A pack shared by two or three snapshots: all of them are named, the others restore."""
    _check_pack_damage(model, tmp_path, 0, f"{SEED}-data", min_users=2)


def test_damaged_tree_pack(model: Model, tmp_path: Path) -> None:
    _check_pack_damage(model, tmp_path, 1, f"{SEED}-tree", min_users=2)


@pytest.mark.parametrize("trial", range(4))
def test_damaged_packs_more_seeds(model: Model, tmp_path: Path, trial: int) -> None:
    """Other seeds hit other packs and other places in them (blob, header, trailer)."""
    _check_pack_damage(model, tmp_path, trial % 2, f"{SEED}-pack-{trial}")


def _damage_index(model: Model, tmp_path: Path) -> tuple[Path, str, set[str]]:
    rng = random.Random(f"{SEED}-index")
    candidates = {iid: model.users(blobs) for iid, blobs in model.index_blobs.items()}
    iid = _pick(rng, candidates, set(model.sources))
    path = _copy(model, tmp_path)
    _flip(path / "index" / iid, rng)
    return path, iid, candidates[iid]


def test_damaged_index(model: Model, tmp_path: Path) -> None:
    path, iid, affected = _damage_index(model, tmp_path)
    repo = open_repo(path)
    report = check(repo, read_data=True)
    listed = {f"{kind} {b.hex()}" for b in model.index_blobs[iid] for kind in ("blob", "tree")}
    (index_problem,) = [p for p in report.errors if p.object == f"index/{iid}"]
    assert set(index_problem.snapshots) == affected, "the snapshots relying on the index"
    assert _objects(report.errors) <= {f"index/{iid}"} | listed
    for p in report.errors:
        if p.object != f"index/{iid}":
            assert set(p.snapshots) <= model.users({bytes.fromhex(p.object.split()[-1])}), p
    # The packs it described are now unindexed; nothing else is.
    assert {w.object for w in report.warnings} == {pack_name(p) for p in model.index_packs[iid]}
    _unaffected_restore(open_repo(path), model, affected, tmp_path)
    # Prune must not take those packs for leftovers of an interrupted backup.
    packs_before = set(LocalStorage(path).list("data/"))
    with pytest.raises(RepositoryError):
        prune(open_repo(path))
    assert set(LocalStorage(path).list("data/")) == packs_before


def _rebuild(path: Path) -> dict:
    from stackvault.repo.repair import rebuild_index

    repo = open_repo(path)
    with Lock(repo, exclusive=True).acquire():
        return rebuild_index(repo)


def test_damaged_index_rebuilt_from_pack_headers(model: Model, tmp_path: Path) -> None:
    path, iid, _affected = _damage_index(model, tmp_path)
    result = _rebuild(path)
    assert not result["damaged_packs"]
    assert not (path / "index" / iid).exists()
    assert_consistent(open_repo(path), allow_unreferenced=False)
    repo = open_repo(path)
    for sid in model.sources:
        verify_restore(repo, sid, model.manifests[sid], model.sources[sid], tmp_path)


def test_lost_index_prune_refuses_then_rebuilt(model: Model, tmp_path: Path) -> None:
    """An index file that is gone (not damaged): its packs look like leftovers of an
    interrupted backup, but snapshots use their blobs. Prune must not delete them."""
    rng = random.Random(f"{SEED}-lost-index")
    # One that lists data packs only: no tree is lost, so nothing else stops the prune.
    candidates = {iid: model.users(blobs) for iid, blobs in model.index_blobs.items()
                  if all(model.pack_type[p] == 0 for p in model.index_packs[iid])}
    iid = _pick(rng, candidates, set(model.sources))
    path = _copy(model, tmp_path)
    (path / "index" / iid).unlink()

    report = check(open_repo(path), read_data=True)
    assert report.errors and all(p.object.split()[0] in ("blob", "tree") for p in report.errors)
    assert set().union(*(p.snapshots for p in report.errors)) == candidates[iid]
    packs_before = {o.name for o in LocalStorage(path).list("data/")}
    with pytest.raises(RepositoryError):
        prune(open_repo(path))
    assert {o.name for o in LocalStorage(path).list("data/")} == packs_before, \
        "prune deleted packs that hold data of snapshots"
    _rebuild(path)
    assert_consistent(open_repo(path), allow_unreferenced=False)
    repo = open_repo(path)
    for sid in model.sources:
        verify_restore(repo, sid, model.manifests[sid], model.sources[sid], tmp_path)


def test_damaged_snapshot(model: Model, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-snapshot")
    sid = rng.choice(sorted(model.sources))
    path = _copy(model, tmp_path)
    _flip(path / "snapshots" / sid, rng)
    report = check(open_repo(path), read_data=True)
    assert [(p.object, p.snapshots) for p in report.errors] == [(f"snapshots/{sid}", [sid])]
    assert not report.warnings
    _unaffected_restore(open_repo(path), model, {sid}, tmp_path)
    with pytest.raises(IntegrityError):
        open_repo(path).load_snapshot(sid)
    # prune refuses while a snapshot cannot be read (it could delete the data it uses)
    with pytest.raises(RepositoryError, match="cannot be read"):
        prune(open_repo(path))


def test_damaged_key_file(model: Model, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-key")
    damaged = rng.choice(sorted(model.keys))
    (intact,) = set(model.keys) - {damaged}
    path = _copy(model, tmp_path)
    # Whitespace in the JSON is not part of the key; change only bytes that mean something.
    _flip(path / "keys" / damaged, rng, skip_whitespace=True)

    repo = open_repo(path, model.keys[intact])
    assert repo.key_name == f"keys/{intact}"
    report = check(repo, read_data=True)
    assert [(p.object, p.snapshots) for p in report.errors] == [(f"keys/{damaged}", [])]
    assert not report.warnings
    for sid in sorted(model.sources):
        verify_restore(repo, sid, model.manifests[sid], model.sources[sid], tmp_path)
    # The damaged key's password no longer opens anything, and the error says why.
    with pytest.raises(WrongPassword, match="damaged") as exc:
        open_repo(path, model.keys[damaged])
    assert exc.value.exit_code == ExitCode.WRONG_PASSWORD


def test_damaged_config(model: Model, tmp_path: Path) -> None:
    """Without the config nothing can be read (it holds the blob id key and chunker seed):
    the repository refuses to open, naming the config, and does not claim a wrong
    password. Putting back an intact copy (objects are immutable) recovers everything."""
    rng = random.Random(f"{SEED}-config")
    path = _copy(model, tmp_path)
    intact = (path / "config").read_bytes()
    _flip(path / "config", rng)
    for password in model.keys.values():
        with pytest.raises(IntegrityError, match=r"^config\b") as exc:
            open_repo(path, password)
        assert not isinstance(exc.value, WrongPassword)
        assert exc.value.exit_code == ExitCode.ERROR
    (path / "config").write_bytes(intact)
    assert_consistent(open_repo(path), allow_unreferenced=False)
