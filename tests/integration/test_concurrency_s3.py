"""Concurrency and flaky networks on S3 (SeaweedFS), docs/design.md "Locks and concurrency":
two hosts back up into one repository while a third party forgets and prunes, all with
--retry-lock so they take turns; every snapshot committed restores byte-identical and check
passes. A backup that loaded the index before a prune ran does not reference what the prune
deleted. Transient S3 errors (injected by FaultyStorage under RetryStorage) change nothing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from stackvault.repo.archiver import run_backup
from stackvault.repo.crypto import TEST_KDF
from stackvault.repo.prune import prune
from stackvault.repo.repository import Repository
from stackvault.storage import FaultyStorage, RetryStorage
from stackvault.storage.s3 import S3Storage
from support.driver import forget_keep_last
from support.reliability import (
    PASSWORD,
    Manifest,
    SourceTree,
    assert_consistent,
    manifest,
    open_repo,
    run_driver,
    spawn,
    verify_restore,
)

pytestmark = pytest.mark.s3

SEED = int(os.environ.get("STACKVAULT_CONCURRENCY_SEED", "777"))
ROUNDS = 3


def _url(seaweed: str, bucket: str) -> str:
    return f"s3:{seaweed}/{bucket}/repo"


def _init(url: str) -> None:
    run_driver(url, "init", "--pack-size", str(512 << 10), "--small-chunks").ok()


class TwoHosts:
    """Source folders of host A and host B: each its own data plus a shared folder with
    identical content (changed identically in both, so both store the same new blobs), and
    a file of its own that flips between two contents every round: what a prune deletes
    (the host's snapshot before last, forgotten) is what the concurrent backup stores
    again."""

    def __init__(self, base: Path, seed: int) -> None:
        self.a = SourceTree(base / "host-a", seed, size_mb=8)
        self.b = SourceTree(base / "host-b", seed + 1, size_mb=6)
        self.rng = random.Random(f"{seed}-shared")
        self.flip = {t.root: [self.rng.randbytes(1 << 20) for _ in range(2)]
                     for t in (self.a, self.b)}
        self.round = 0
        self.versions: dict[str, Manifest] = {}

    def _shared(self) -> None:
        data = self.rng.randbytes(1 << 20)
        for tree in (self.a, self.b):
            folder = tree.root / "shared"
            folder.mkdir(exist_ok=True)
            (folder / "common.bin").write_bytes(data)
            (tree.root / "flip.bin").write_bytes(self.flip[tree.root][self.round % 2])
        self.round += 1

    def create(self) -> tuple[Manifest, Manifest]:
        self.a.create()
        self.b.create()
        self._shared()
        return manifest(self.a.root), manifest(self.b.root)

    def mutate(self) -> tuple[Manifest, Manifest]:
        self.a.mutate()
        self.b.mutate()
        self._shared()
        return manifest(self.a.root), manifest(self.b.root)

    def source(self, sid: str, repo: Repository) -> Path:
        host = repo.load_snapshot(sid).hostname
        return self.a.root if host == "host-a" else self.b.root


def _verify(url: str, hosts: TwoHosts, workdir: Path) -> None:
    repo = open_repo(url)
    present = set(repo.snapshot_ids())
    assert present == set(hosts.versions), (
        f"unexpected {sorted(present - set(hosts.versions))}, "
        f"lost {sorted(set(hosts.versions) - present)}")
    for sid in sorted(present):
        verify_restore(repo, sid, hosts.versions[sid], hosts.source(sid, repo), workdir)
    assert_consistent(open_repo(url))


def test_two_hosts_back_up_while_a_third_prunes(seaweed: str, s3_bucket: str,
                                                tmp_path: Path) -> None:
    url = _url(seaweed, s3_bucket)
    _init(url)
    rng = random.Random(SEED)
    hosts = TwoHosts(tmp_path, SEED)
    ma, mb = hosts.create()
    hosts.versions[run_driver(url, "--host", "host-a", "backup", str(hosts.a.root)).ok()
                   .snapshot or ""] = ma
    hosts.versions[run_driver(url, "--host", "host-b", "backup", str(hosts.b.root)).ok()
                   .snapshot or ""] = mb

    for rnd in range(ROUNDS):
        ma, mb = hosts.mutate()
        jobs = {
            "a": ["--host", "host-a", "--retry-lock", "120", "backup", str(hosts.a.root)],
            "b": ["--host", "host-b", "--retry-lock", "120", "backup", str(hosts.b.root)],
            "prune": ["--retry-lock", "120", "forget-keep-last", "1"],
        }
        order = list(jobs)
        rng.shuffle(order)
        procs = {}
        for name in order:  # staggered by a few (seeded) milliseconds, in a seeded order
            procs[name] = spawn(url, *jobs[name])
            time.sleep(rng.uniform(0, 0.3))
        results = {}
        for name, p in procs.items():
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, f"round {rnd}: {name} failed ({p.returncode}):\n{err}"
            results[name] = out
        for name, m in (("a", ma), ("b", mb)):
            sid = next(line.split()[1] for line in results[name].splitlines()
                       if line.startswith("SNAPSHOT "))
            hosts.versions[sid] = m
        forgot = next(line.split(" ", 1)[1] for line in results["prune"].splitlines()
                      if line.startswith("FORGOT "))
        for sid in json.loads(forgot):
            del hosts.versions[sid]
        print(f"round {rnd}: started {order}; forgot {len(json.loads(forgot))}")
        _verify(url, hosts, tmp_path)

    # A final prune removes the duplicates the concurrent backups stored: no warnings left.
    run_driver(url, "prune").ok()
    assert_consistent(open_repo(url), allow_unreferenced=False)
    _verify(url, hosts, tmp_path)


def test_backup_that_loaded_the_index_before_a_prune(seaweed: str, s3_bucket: str,
                                                     tmp_path: Path) -> None:
    """The backup has read the index (it started, then waited for the prune's lock, or it is
    a long-lived Repository object); meanwhile another process forgets the snapshot holding
    some data and prunes it away; then the backup stores that very data again. It must not
    deduplicate against the deleted blobs (which would commit a snapshot that cannot be
    restored)."""
    url = _url(seaweed, s3_bucket)
    _init(url)
    src = SourceTree(tmp_path / "src", SEED + 5, size_mb=8)
    versions: dict[str, Manifest] = {}
    m = src.create()  # cycle.bin holds content 0; versions 1 and 2 hold contents 1 and 2
    for _ in range(3):
        versions[run_backup(open_repo(url), paths=[str(src.root)]).snapshot.id] = m
        m = src.mutate()
    assert src.version == 3  # cycle.bin holds content 0 again: only the oldest snapshot had it

    waiting = open_repo(url)
    waiting.load_index()  # the backup has loaded the index...
    for sid in forget_keep_last(open_repo(url), 2, 0):  # ...another host forgets and prunes
        del versions[sid]
    assert len(versions) == 2
    plan = json.loads(run_driver(url, "prune").ok().value("PRUNED") or "{}")
    assert plan["packs_delete"] > 0
    snap = run_backup(waiting, paths=[str(src.root)]).snapshot  # ...then it runs
    versions[snap.id] = m
    assert_consistent(open_repo(url))
    repo = open_repo(url)
    for sid in versions:
        verify_restore(repo, sid, versions[sid], src.root, tmp_path)


@pytest.mark.parametrize("faults", [{"fail_rate": 0.2}, {"fail_rate": 0.1, "timeout_rate": 0.1}],
                         ids=["failures", "lost-responses"])
def test_transient_s3_errors(seaweed: str, s3_bucket: str, tmp_path: Path,
                             faults: dict[str, float], caplog: pytest.LogCaptureFixture) -> None:
    """Every S3 call fails (or its response is lost) with the given probability; RetryStorage
    retries. Backup, forget + prune and restore all succeed and restore byte-identical."""
    caplog.set_level(logging.ERROR, logger="stackvault.storage")  # hundreds of retry warnings
    injected: dict[str, int] = {}

    def flaky(seed: int) -> RetryStorage:
        faulty = FaultyStorage(S3Storage(seaweed, s3_bucket, "repo"), seed=seed,
                               **faults)  # type: ignore[arg-type]
        faulty_stores.append(faulty)
        # 12 attempts: a call fails for good with probability 0.2**12, i.e. never here.
        return RetryStorage(faulty, attempts=12, base_delay=0.002, max_delay=0.02)

    faulty_stores: list[FaultyStorage] = []
    repo = Repository.init(flaky(SEED), PASSWORD, kdf=TEST_KDF, pack_size=256 << 10,
                           chunker={"min": 16 << 10, "avg": 64 << 10, "max": 256 << 10})
    src = SourceTree(tmp_path / "src", SEED + 9, size_mb=8)
    versions: dict[str, Manifest] = {}
    m = src.create()
    for i in range(3):
        repo = Repository.open(flaky(SEED + 10 + i), PASSWORD)
        versions[run_backup(repo, paths=[str(src.root)]).snapshot.id] = m
        m = src.mutate()
    repo = Repository.open(flaky(SEED + 20), PASSWORD)
    for sid in forget_keep_last(repo, 2, 0):
        del versions[sid]
    prune(Repository.open(flaky(SEED + 21), PASSWORD))
    repo = Repository.open(flaky(SEED + 22), PASSWORD)
    for sid, expected in versions.items():
        verify_restore(repo, sid, expected, src.root, tmp_path)
    for f in faulty_stores:
        for op, n in f.injected.items():
            injected[op] = injected.get(op, 0) + n
    print(f"\ninjected faults per operation: {injected}")
    for op in ("put", "get", "list", "delete"):  # (stat is called once, by init)
        assert injected[op] > 0, f"no fault was injected into {op}: the test proves little"
    # Seen through a storage without faults, the repository is intact.
    assert_consistent(open_repo(_url(seaweed, s3_bucket)), allow_unreferenced=False)
    shutil.rmtree(tmp_path / "src")
