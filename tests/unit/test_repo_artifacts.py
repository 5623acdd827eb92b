"""The repository-backed artifact sink and source: round trip, nested names, manifest checks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from stackvault.errors import SourceCorrupt, UsageError
from stackvault.ops.repo_artifacts import RepoArtifactSource, RepoSink
from stackvault.repo.crypto import TEST_KDF
from stackvault.repo.pack import TREE
from stackvault.repo.repository import Repository
from stackvault.repo.snapshot import Snapshot, now
from stackvault.repo.tree import DIR, Node
from stackvault.repo.writer import BlobWriter
from stackvault.storage.memory import MemoryStorage


def snapshot_of(tmp_path: Path) -> tuple[Repository, Snapshot, bytes]:
    repo = Repository.init(MemoryStorage(), "pw", kdf=TEST_KDF)
    stream = bytes(range(256)) * 5000
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f.txt").write_text("hello\n")
    with BlobWriter(repo) as writer:
        sink = RepoSink(repo, writer)
        a = sink.add_stream("dump/app.sql", io.BytesIO(stream))
        b = sink.add_path("srv/tree", tmp_path / "tree")
        with pytest.raises(UsageError):
            sink.add_stream("dump/app.sql", io.BytesIO(b"again"))
        comp = sink.tree()
        root_id, raw = repo.save_tree([Node(name="db", type=DIR, subtree=comp)])
        writer.save_now(TREE, raw)
        writer.flush()
    manifest = {"components": {"db": {"status": "ok", "artifacts": [
        {"name": a.name, "size": a.size, "sha256": a.sha256, "kind": a.kind},
        {"name": b.name, "size": b.size, "sha256": b.sha256, "kind": b.kind}]}}}
    snap = Snapshot(time=now(), hostname="h", username="u", paths=["/db"], tree=root_id.hex(),
                    kind="stack", extra={"manifest": manifest})
    repo.save_snapshot(snap)
    return repo, snap, stream


def test_round_trip_with_nested_names(tmp_path: Path) -> None:
    repo, snap, stream = snapshot_of(tmp_path)
    src = RepoArtifactSource(repo, snap, "db")
    assert src.names() == ["dump/app.sql", "srv/tree"]
    with src.open("dump/app.sql") as f:
        assert f.read() == stream
    src.extract("srv/tree", tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "f.txt").read_text() == "hello\n"
    with pytest.raises(UsageError):  # extract never writes over an existing path
        src.extract("srv/tree", tmp_path / "out")


def test_stream_not_matching_manifest_is_refused(tmp_path: Path) -> None:
    repo, snap, _stream = snapshot_of(tmp_path)
    arts = snap.extra["manifest"]["components"]["db"]["artifacts"]
    arts[0]["sha256"] = "0" * 64
    src = RepoArtifactSource(repo, snap, "db")
    with pytest.raises(SourceCorrupt), src.open("dump/app.sql") as f:
        f.read()
    with pytest.raises(SourceCorrupt):
        src.extract("dump/app.sql", tmp_path / "x.sql")
    assert not (tmp_path / "x.sql").exists()  # nothing left behind
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.sql")] == []
