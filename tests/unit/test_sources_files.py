"""The files data source: folders and single files through DirectorySink/DirectorySource;
restore to the original paths (excluded entries kept) or into another folder; a damaged
artifact restores nothing."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from stackvault.errors import SourceCorrupt, SourceUnavailable, UsageError
from stackvault.sources.base import DataSource
from stackvault.sources.directory import DirectorySink, DirectorySource
from stackvault.sources.files import FilesSource

EXCLUDE = ["*.tmp", "cache"]


def make_stack(root: Path, seed: int = 3) -> tuple[Path, Path, Path]:
    """A config folder, an uploads folder and a single .env file."""
    rnd = random.Random(seed)
    config = root / "etc" / "app"
    (config / "conf.d").mkdir(parents=True)
    (config / "app.yaml").write_text("name: démo ✓\nport: 8080\n")
    (config / "conf.d" / "10-extra.yaml").write_text("x: 1\n")
    (config / "current.yaml").symlink_to("app.yaml")
    uploads = root / "srv" / "uploads"
    for i in range(20):
        sub = uploads / f"user-{i % 4}" / ("日本" if i % 2 else "docs")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file {i}.bin").write_bytes(rnd.randbytes(rnd.randint(0, 40_000)))
    (uploads / "empty-dir").mkdir()
    (uploads / "cache").mkdir()
    (uploads / "cache" / "thumb.png").write_bytes(b"cached")
    (uploads / "user-0" / "partial.tmp").write_text("in flight")
    env = root / "srv" / ".env"
    env.write_text("SECRET=s3cr3t\n")
    os.chmod(env, 0o600)
    return config, uploads, env


def snapshot(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d",)
            else:
                out[rel] = ("f", p.read_bytes(), p.stat().st_mode & 0o777)
    return out


def test_round_trip_to_the_original_paths(tmp_path: Path) -> None:
    config, uploads, env = make_stack(tmp_path / "host")
    src = FilesSource([config, uploads, env, config / "conf.d"], exclude=EXCLUDE)
    assert isinstance(src, DataSource)
    assert [p for _, p in src.items] == [config, uploads.parent / ".env", uploads]
    assert src.items[0][0] == str(config).lstrip("/")  # names mirror the absolute paths
    expected = snapshot(tmp_path / "host")
    result = src.backup(DirectorySink(tmp_path / "out"))
    assert [a.kind for a in result.artifacts] == ["tree", "file", "tree"]
    assert result.fingerprint.counts["files"] == 2 + 1 + 20
    assert src.fingerprint().compare(result.fingerprint) == []

    (uploads / "user-1" / "日本" / "file 1.bin").unlink()  # damage: delete, change, add
    (config / "app.yaml").write_text("name: broken\n")
    (config / "new.yaml").write_text("not in the backup\n")
    env.write_text("SECRET=leaked-and-rotated\n")
    (uploads / "cache" / "new-thumb.png").write_bytes(b"newer cache")
    diffs = result.fingerprint.compare(src.fingerprint())
    assert f"content of {config.as_posix().lstrip('/')}: differs" in diffs

    src.restore(DirectorySource(tmp_path / "out"))
    assert src.fingerprint().compare(result.fingerprint) == []
    now = snapshot(tmp_path / "host")
    assert now.pop("srv/uploads/cache/new-thumb.png") == ("f", b"newer cache", 0o644)
    assert now == expected  # excluded entries (cache, *.tmp) were kept, not deleted
    assert not [p for p in (tmp_path / "host").rglob("*") if "stackvault" in p.name]


def test_restore_into_another_folder(tmp_path: Path) -> None:
    config, uploads, env = make_stack(tmp_path / "host")
    src = FilesSource([config, env, uploads], exclude=EXCLUDE)
    result = src.backup(DirectorySink(tmp_path / "out"))
    before = snapshot(tmp_path / "host")
    target = {"path": str(tmp_path / "scratch")}
    assert src.describe_target(target).startswith(f"folder {tmp_path / 'scratch'}")
    src.restore(DirectorySource(tmp_path / "out"), target=target)
    assert snapshot(tmp_path / "host") == before  # the originals were not touched
    assert src.fingerprint(target=target).compare(result.fingerprint) == []
    restored = tmp_path / "scratch" / str(config).lstrip("/")
    assert snapshot(restored) == snapshot(config)
    assert (tmp_path / "scratch" / str(env).lstrip("/")).stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "scratch" / str(uploads).lstrip("/") / "cache").exists()


def test_damaged_artifact_restores_nothing(tmp_path: Path) -> None:
    config, uploads, env = make_stack(tmp_path / "host")
    src = FilesSource([config, uploads, env])
    src.backup(DirectorySink(tmp_path / "out"))
    (config / "app.yaml").write_text("changed after the backup\n")
    env.write_text("SECRET=changed\n")
    before = snapshot(tmp_path / "host")
    victim = next((tmp_path / "out").rglob("file 7.bin"))
    victim.write_bytes(victim.read_bytes() + b"!")
    with pytest.raises(SourceCorrupt, match="damaged"):
        src.restore(DirectorySource(tmp_path / "out"))
    assert snapshot(tmp_path / "host") == before  # not even the intact artifacts
    assert not [p for p in (tmp_path / "host").rglob("*") if "stackvault" in p.name]


def test_symlinked_paths_are_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "settings.ini").write_text("a=1\n")
    link = tmp_path / "current"
    link.symlink_to(real)
    src = FilesSource([link])
    result = src.backup(DirectorySink(tmp_path / "out"))
    assert result.artifacts[0].kind == "tree" and result.artifacts[0].files == 1
    (real / "settings.ini").write_text("a=2\n")
    src.restore(DirectorySource(tmp_path / "out"))
    assert link.is_symlink() and (real / "settings.ini").read_text() == "a=1\n"


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="list of one or more"):
        FilesSource([])
    with pytest.raises(UsageError, match="list of one or more"):
        FilesSource(str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="refusing to back up /"):
        FilesSource(["/"])
    src = FilesSource([tmp_path / "missing"])
    probe = src.probe()
    assert not probe.reachable and "missing" in probe.detail
    with pytest.raises(SourceUnavailable, match="no such file"):
        src.backup(DirectorySink(tmp_path / "out"))
    with pytest.raises(UsageError, match="no tables"):
        src.restore(DirectorySource(tmp_path / "out"), tables=["t"])
    with pytest.raises(UsageError, match="exactly 'path'"):
        src.fingerprint(target={"dir": "x"})


def test_probe_counts_files(tmp_path: Path) -> None:
    config, uploads, env = make_stack(tmp_path / "host")
    probe = FilesSource([config, uploads, env], exclude=EXCLUDE).probe()
    assert probe.reachable and probe.detail == "3 paths, 23 files"
    assert probe.size_bytes == sum(p.stat().st_size for p in (tmp_path / "host").rglob("*")
                                   if p.is_file() and not p.is_symlink()
                                   and "cache" not in p.parts and p.suffix != ".tmp")
