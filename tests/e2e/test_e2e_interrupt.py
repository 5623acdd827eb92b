"""Ctrl-C / SIGTERM during a backup: exit 130, no snapshot, a repository that checks clean,
and the next backup works."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from e2e_support import CLI, SV, Result, assert_no_secret, copy_repo

FILES = 8
FILE_MB = 25  # 200 MB in all: a second or two of work on two cores


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("e2e-big") / "big"
    root.mkdir()
    low_nibbles = bytes(b & 0x0F for b in range(256))  # unique but compressible: zstd works
    for i in range(FILES):
        data = blake3.blake3(b"e2e-big-%d" % i).digest(length=FILE_MB << 20)
        (root / f"part-{i}.bin").write_bytes(data.translate(low_nibbles))
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_backup_commits_nothing(sig: signal.Signals, big_folder: Path,
                                            empty_template: Path, tmp_path: Path,
                                            env: dict[str, str]) -> None:
    repo_dir = copy_repo(empty_template, tmp_path / "repo")
    sv = SV(repo_dir, env)
    try:
        proc = subprocess.Popen([*CLI, "-r", str(repo_dir), "--json", "backup", str(big_folder)],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        locks = repo_dir / "locks"
        while not (locks.is_dir() and os.listdir(locks)):  # the backup has started
            assert proc.poll() is None, "backup ended before it took its lock"
            assert time.monotonic() < deadline, "backup did not start"
            time.sleep(0.01)
        time.sleep(0.25)  # let it write some packs
        assert proc.poll() is None, "backup finished before the signal; make the data bigger"
        proc.send_signal(sig)
        out, err_b = proc.communicate(timeout=60)
        res = Result(["backup"], proc.returncode, out, err_b.decode())
        assert_no_secret(res, env)
        assert res.rc == 130, str(res)
        assert "interrupted" in res.err
        assert res.out == b""  # no snapshot reported

        assert sv.json("snapshots") == []
        assert os.listdir(locks) == []  # the lock was released
        rep = sv.json("check")
        assert rep["ok"] is True and rep["errors"] == [], rep  # leftovers are only warnings

        again = sv.json("backup", str(big_folder))
        assert again["summary"]["files_new"] == FILES
        assert [s["id"] for s in sv.json("snapshots")] == [again["snapshot"]]
    finally:
        shutil.rmtree(repo_dir, ignore_errors=True)
