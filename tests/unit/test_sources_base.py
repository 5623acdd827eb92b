"""The data-source contract: fingerprints and manifests' dataclasses, artifact names, exclusion,
tree digests, DirectorySink/DirectorySource (verified reads, SHA256SUMS), and the adapter
registry (built-ins, register(), plugins through entry points, install hints)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stackvault.errors import SourceCorrupt, SourceUnavailable, UsageError
from stackvault.sources import registry
from stackvault.sources.base import (
    ArtifactInfo,
    ComponentResult,
    DataSource,
    Excluder,
    Fingerprint,
    ProbeResult,
    tree_digest,
    validate_name,
)
from stackvault.sources.directory import DirectorySink, DirectorySource

# --- dataclasses ------------------------------------------------------------------------------


def test_fingerprint_round_trip_compare_and_restrict() -> None:
    fp = Fingerprint(counts={"users": 3, "docs": 10}, digests={"users": "a", "docs": "b"})
    assert Fingerprint.from_dict(fp.to_dict()) == fp
    assert fp.compare(Fingerprint.from_dict(fp.to_dict())) == []
    found = Fingerprint(counts={"users": 2, "extra": 1}, digests={"users": "a", "docs": "c",
                                                                   "extra": "x"})
    assert fp.compare(found) == [
        "count of docs: expected 10, missing",
        "count of extra: not expected, found 1",
        "count of users: expected 3, found 2",
        "content of docs: differs",
        "content of extra: not expected, found",
    ]
    assert fp.restrict(["users"]).compare(found.restrict(["users"])) == [
        "count of users: expected 3, found 2"]


def test_component_result_round_trip() -> None:
    result = ComponentResult(
        artifacts=[ArtifactInfo("db.sqlite3", 10, "ab" * 32, "file"),
                   ArtifactInfo("etc/app", 99, "cd" * 32, "tree", files=4)],
        fingerprint=Fingerprint({"t": 1}, {"t": "x"}), versions={"sqlite": "3.40.1"},
        extra={"journal": "wal"})
    assert ComponentResult.from_dict(result.to_dict()) == result
    with pytest.raises(ValueError, match="kind"):
        ArtifactInfo.from_dict({**result.artifacts[0].to_dict(), "kind": "pipe"})


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", "./a", "a/", "..", "a\\b",
                                  "SHA256SUMS", ".stackvault-artifacts.json/x"])
def test_invalid_artifact_names(name: str) -> None:
    with pytest.raises(UsageError):
        validate_name(name)


def test_valid_artifact_names() -> None:
    for name in ["db.sqlite3", "etc/app", "srv/données/.env", "a/SHA256SUMS"]:
        assert validate_name(name) == name


def test_excluder() -> None:
    ex = Excluder(["*.tmp", "__pycache__/", "/cache", "uploads/tmp/*"])
    assert ex("x.tmp") and ex("a/b/x.tmp") and ex("a/__pycache__")
    assert ex("cache") and not ex("a/cache")  # anchored
    assert ex("uploads/tmp/1") and not ex("uploads/tmp") and not ex("x/uploads/tmp/1")
    assert not ex("x.tmpl") and not Excluder([])
    with pytest.raises(UsageError):
        Excluder(["/"])


def test_protocol_is_structural() -> None:
    class Fake:
        type: ClassVar[str] = "fake"

        def probe(self) -> ProbeResult:
            return ProbeResult(True, "1", None, "")

        def backup(self, sink: Any) -> ComponentResult:
            raise NotImplementedError

        def fingerprint(self, *, target: Any = None) -> Fingerprint:
            return Fingerprint()

        def restore(self, source: Any, *, target: Any = None, tables: Any = None,
                    force: bool = False) -> None:
            return None

        def describe_target(self, target: Any = None) -> str:
            return "fake"

    assert isinstance(Fake(), DataSource)
    assert not isinstance(object(), DataSource)


# --- trees and the directory sink/source ------------------------------------------------------


def make_tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("hello\n")
    (root / "données ✓.bin").write_bytes(os.urandom(3000) * 50)
    (root / "sub" / "deeper" / "b").write_bytes(b"")
    (root / "sub" / "x.tmp").write_text("excluded")
    (root / "link").symlink_to("a.txt")
    (root / "dangling").symlink_to("/nonexistent/target")
    os.mkfifo(root / "fifo")  # skipped
    os.chmod(root / "a.txt", 0o640)
    return root


def listing(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d",)
            elif p.is_file():
                out[rel] = ("f", p.read_bytes(), p.stat().st_mode & 0o777)
    return out


def test_directory_sink_and_source_round_trip(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    sink = DirectorySink(tmp_path / "out")
    payload = os.urandom(3 << 20)
    s = sink.add_stream("dumps/stream.bin", io.BytesIO(payload))
    f = sink.add_path("a-file", src / "a.txt")
    t = sink.add_path("tree", src, exclude=["*.tmp"])
    assert (s.kind, s.size, f.kind, t.kind) == ("stream", len(payload), "file", "tree")
    assert t.files == 3 and t.size == 6 + 150_000 + 0
    assert t.sha256 == tree_digest(src, Excluder(["*.tmp"])).hexdigest()
    assert sink.artifacts == [s, f, t]

    source = DirectorySource(tmp_path / "out")
    assert source.names() == ["dumps/stream.bin", "a-file", "tree"]
    with source.open("dumps/stream.bin") as stream:
        assert stream.read() == payload
    source.extract("tree", tmp_path / "back" / "tree")
    expected = listing(src)
    del expected["sub/x.tmp"]
    assert listing(tmp_path / "back" / "tree") == expected
    source.extract("a-file", tmp_path / "back" / "a.txt")
    assert (tmp_path / "back" / "a.txt").read_text() == "hello\n"
    with pytest.raises(UsageError, match="already exists"):
        source.extract("a-file", tmp_path / "back" / "a.txt")
    with pytest.raises(UsageError, match="folder"):
        source.open("tree")
    with pytest.raises(UsageError, match="no artifact 'nope'.*it has: dumps/stream.bin"):
        source.open("nope")


def test_sink_rejects_duplicates_overlaps_and_non_empty_folders(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "out")
    sink.add_stream("a/b", io.BytesIO(b"x"))
    for name in ["a/b", "a", "a/b/c"]:
        with pytest.raises(UsageError, match="overlaps"):
            sink.add_stream(name, io.BytesIO(b"y"))
    with pytest.raises(UsageError, match="not an empty folder"):
        DirectorySink(tmp_path / "out")
    with pytest.raises(SourceUnavailable, match="No such file"):
        sink.add_path("missing", tmp_path / "missing")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".stackvault-artifacts.json", "SHA256SUMS", "a"]  # no temporary files left


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs GNU sha256sum")
def test_sha256sums_is_accepted_by_sha256sum(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "back\\slash").write_text("1")
    (src / "new\nline").write_text("2")
    (src / "space name").write_text("3")
    sink = DirectorySink(tmp_path / "out")
    sink.add_path("files", src)
    sink.add_stream("s", io.BytesIO(b"stream"))
    run = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=tmp_path / "out",
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": OK") == 4


def test_damaged_artifacts_are_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    sink = DirectorySink(tmp_path / "out")
    sink.add_stream("s", io.BytesIO(b"x" * 100_000))
    sink.add_path("tree", src)
    out = tmp_path / "out"
    data = bytearray((out / "s").read_bytes())
    data[50_000] ^= 1
    (out / "s").write_bytes(bytes(data))
    (out / "tree" / "sub" / "deeper" / "b").write_bytes(b"!")
    source = DirectorySource(out)

    with source.open("s") as stream:
        assert len(stream.read(1000)) == 1000  # data flows; the verdict comes at EOF
        with pytest.raises(SourceCorrupt, match="damaged"):
            stream.read()
    with pytest.raises(SourceCorrupt, match="damaged"):
        source.extract("s", tmp_path / "x" / "s")
    with pytest.raises(SourceCorrupt, match="damaged"):
        source.extract("tree", tmp_path / "x" / "tree")
    assert list((tmp_path / "x").iterdir()) == []  # nothing half extracted
    (out / "s").unlink()
    with pytest.raises(SourceCorrupt, match="missing"):
        source.extract("s", tmp_path / "x" / "s")
    with pytest.raises(SourceUnavailable, match="not an artifact folder"):
        DirectorySource(src)


# --- registry ---------------------------------------------------------------------------------


def test_builtins_resolve_lazily() -> None:
    from stackvault.sources.files import FilesSource
    from stackvault.sources.sqlite import SqliteSource

    assert registry.get_source_class("sqlite") is SqliteSource
    assert registry.get_source_class("files") is FilesSource
    assert {"sqlite", "files"} <= set(registry.known_types())


def test_importing_the_registry_imports_no_adapter() -> None:
    code = ("import sys, stackvault.sources.registry as r; "
            "print(sorted(m for m in sys.modules if m.startswith('stackvault.sources.')), "
            "'sqlite3' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == ("['stackvault.sources.base', 'stackvault.sources.registry'] "
                                  "False")


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown source type 'mongo'; known types: .*files.*"
                                         r"sqlite") as err:
        registry.get_source_class("mongo")
    assert "plugin" in str(err.value)
    with pytest.raises(UsageError, match="unknown source type"):
        registry.get_source_class("Bad Type!")


class FakeSource:
    type: ClassVar[str] = "fake"

    def __init__(self, **options: Any) -> None:
        self.options = options


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))


def test_register_a_factory(clean_registry: None) -> None:
    registry.register("fake", FakeSource)
    assert registry.get_source_class("fake") is FakeSource
    assert "fake" in registry.known_types()
    with pytest.raises(UsageError, match="already registered"):
        registry.register("fake", FakeSource)
    registry.register("fake", FakeSource, replace=True)
    registry.register("other", FakeSource)
    with pytest.raises(UsageError, match="declares type 'fake'"):
        registry.get_source_class("other")


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry: None) -> Path:
    """A folder on sys.path where tests install fake distributions (dist-info + module)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith("svtest_"):
            del sys.modules[name]


def install_plugin(where: Path, dist: str, entry_points: dict[str, str],
                   modules: dict[str, str]) -> None:
    info = where / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{eps}")
    for mod, code in modules.items():
        (where / f"{mod}.py").write_text(textwrap.dedent(code))


PLUGIN = """
    from typing import ClassVar

    class MongoSource:
        type: ClassVar[str] = "mongo"

        def __init__(self, uri: str) -> None:
            self.uri = uri
"""


def test_plugin_resolves_like_a_builtin(plugin_dir: Path) -> None:
    install_plugin(plugin_dir, "svtest-mongo", {"mongo": "svtest_mongo:MongoSource"},
                   {"svtest_mongo": PLUGIN})
    assert "mongo" in registry.known_types()
    cls = registry.get_source_class("mongo")
    assert cls.__name__ == "MongoSource" and cls(uri="mongodb://x").uri == "mongodb://x"


def test_plugin_missing_dependency_gives_install_hint(plugin_dir: Path) -> None:
    install_plugin(plugin_dir, "svtest-vec", {"vec": "svtest_vec:VecSource"},
                   {"svtest_vec": "import svtest_not_installed_client\n"})
    with pytest.raises(UsageError) as err:
        registry.get_source_class("vec")
    assert str(err.value) == (
        "the vec source needs svtest_not_installed_client, which is not installed\n"
        "  hint: pip install svtest_not_installed_client (needed by plugin svtest-vec)")


def test_builtin_missing_dependency_gives_extra_hint(plugin_dir: Path) -> None:
    (plugin_dir / "svtest_qdrant.py").write_text("import qdrant_client_svtest_missing\n")
    registry.register("svqdrant", "svtest_qdrant:QdrantSource", origin="built-in",
                      extra="qdrant", packages={"qdrant_client_svtest_missing": "qdrant-client"})
    with pytest.raises(UsageError) as err:
        registry.get_source_class("svqdrant")
    assert str(err.value) == ("the svqdrant source needs qdrant-client, which is not "
                              "installed\n  hint: pip install 'stackvault[qdrant]'")


def test_broken_registrations_are_clear(plugin_dir: Path) -> None:
    registry.register("gone", "svtest_no_such_module:X")
    with pytest.raises(UsageError, match="points to module 'svtest_no_such_module', which "
                                         "does not exist"):
        registry.get_source_class("gone")
    (plugin_dir / "svtest_empty.py").write_text("")
    registry.register("noattr", "svtest_empty:Missing")
    with pytest.raises(UsageError, match="'svtest_empty:Missing' not found"):
        registry.get_source_class("noattr")
    with pytest.raises(UsageError, match="module:attribute"):
        registry.register("bad", "no_colon")


def test_plugin_claiming_a_builtin_type_is_an_error(plugin_dir: Path) -> None:
    install_plugin(plugin_dir, "svtest-sqlite", {"sqlite": "svtest_sqlite2:S"},
                   {"svtest_sqlite2": "class S:\n    type = 'sqlite'\n"})
    with pytest.raises(UsageError, match="more than one adapter: built-in, plugin svtest-sqlite"):
        registry.get_source_class("sqlite")
    assert registry.get_source_class("files").type == "files"  # the others are unaffected
