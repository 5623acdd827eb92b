"""Back up a real folder and get it back: snapshots, ls, restore, dump, stdin, diff, stats."""

from __future__ import annotations

import os
import random
from pathlib import Path

from e2e_support import SV, files_in, make_tree, restored, tree_state


def test_backup_is_listed_with_host_paths_and_tags(base, repo: SV) -> None:
    snap_id = base.first.json()["snapshot"]
    snaps = repo.json("snapshots")
    assert [s["id"] for s in snaps] == [snap_id, base.second.json()["snapshot"]]
    s = snaps[0]
    assert s["hostname"] == "h1"
    assert s["paths"] == [str(base.src)]
    assert s["tags"] == ["a", "b"]
    assert s["short_id"] == snap_id[:8]
    # the filters a user would use find it
    assert [x["id"] for x in repo.json("snapshots", "--tag", "a", "--tag", "b")] == [snap_id]
    assert repo.json("snapshots", "--host", "nobody") == []
    # the first backup read every file; the summary says so
    summary = base.first.json()["summary"]
    assert summary["files_new"] == len(files_in(base.src))
    assert summary["errors"] == 0


def test_ls_shows_every_entry(base, repo: SV) -> None:
    rows = repo.json("ls", "latest")
    by_path = {r["path"]: r for r in rows}
    expected = {str(base.src / rel) for rel in tree_state(base.src) if rel != "."}
    listed = {p for p in by_path if p.startswith(str(base.src) + "/")}
    assert listed == expected
    assert by_path[str(base.src / "link-to-readme")]["type"] == "symlink"
    assert by_path[str(base.src / "link-to-readme")]["target"] == "docs/readme.md"
    assert by_path[str(base.src / "empty.txt")]["size"] == 0
    assert by_path[str(base.src / "data" / "big.bin")]["size"] == 3 << 20
    assert by_path[str(base.src / "bin" / "run.sh")]["mode"] == oct(0o755)
    # below a path, and a path that is a file
    sub = repo.json("ls", "latest", str(base.src / "docs"))
    assert {r["path"] for r in sub} == {str(base.src / "docs" / rel) for rel in
                                         ("readme.md", "nested", "nested/notes.txt",
                                          "nested/deep", "nested/deep/leaf.txt")}
    one = repo.json("ls", "latest", str(base.src / "docs" / "readme.md"))
    assert [r["path"] for r in one] == [str(base.src / "docs" / "readme.md")]


def test_restore_is_byte_identical_with_modes_and_mtimes(base, repo: SV, tmp_path: Path) -> None:
    target = tmp_path / "target"
    res = repo.json("restore", "latest", "--target", str(target))
    assert res["errors"] == []
    assert res["files"] == len(files_in(base.src))
    assert res["symlinks"] == 2
    got = tree_state(restored(target, base.src))
    want = tree_state(base.src)
    assert got.keys() == want.keys()
    for rel in want:
        assert got[rel] == want[rel], rel
    # restoring again over a changed copy: files are overwritten, other files left alone
    root = restored(target, base.src)
    (root / "docs" / "readme.md").write_text("local edit")
    (root / "docs" / "mine.txt").write_text("not in the snapshot")
    repo.ok("restore", "latest", "--target", str(target))
    assert (root / "docs" / "readme.md").read_bytes() == (base.src / "docs" /
                                                          "readme.md").read_bytes()
    assert (root / "docs" / "mine.txt").read_text() == "not in the snapshot"


def test_restore_include_restores_only_the_subtree(base, repo: SV, tmp_path: Path) -> None:
    target = tmp_path / "target"
    repo.ok("restore", "latest", "--target", str(target), "--include",
            str(base.src / "docs" / "nested"))
    root = restored(target, base.src)
    assert files_in(root) == ["docs/nested/deep/leaf.txt", "docs/nested/notes.txt"]
    assert sorted(os.listdir(root)) == ["docs"]  # only the folders on the way
    want = tree_state(base.src / "docs" / "nested")
    assert tree_state(root / "docs" / "nested") == want
    # an include that matches nothing is an error, not a silent empty restore
    bad = repo("restore", "latest", "--target", str(tmp_path / "t2"), "--include",
               str(base.src / "no-such-thing"))
    assert bad.rc == 2, str(bad)
    assert "matches" in bad.err


def test_dump_writes_the_exact_bytes(base, repo: SV) -> None:
    for rel in ("data/big.bin", "ünïcødé dir/日本語 ファイル.txt", "empty.txt"):
        res = repo.ok("dump", "latest", str(base.src / rel))
        assert res.out == (base.src / rel).read_bytes(), rel
    missing = repo("dump", "latest", str(base.src / "nope.txt"))
    assert missing.rc == 2 and "nope.txt" in missing.err, str(missing)


def test_backup_from_stdin_then_dump(fresh: SV) -> None:
    rng = random.Random(5)
    data = bytes(range(256)) * 100 + rng.randbytes(2 << 20) + b"-- end of dump\n"
    res = fresh.json("backup", "--stdin", "--stdin-name", "db.sql", "--tag", "postgres",
                     input=data)
    snap = res["snapshot"]
    assert res["summary"]["files_new"] == 1
    listed = fresh.json("snapshots")
    assert [(s["id"], s["paths"], s["tags"]) for s in listed] == [(snap, ["/db.sql"],
                                                                    ["postgres"])]
    assert [r["path"] for r in fresh.json("ls", snap)] == ["/db.sql"]
    assert fresh.ok("dump", snap[:8], "/db.sql").out == data
    # a bad stream name is refused
    bad = fresh("backup", "--stdin", "--stdin-name", "../x", input=b"x")
    assert bad.rc == 2, str(bad)


def test_diff_lists_exactly_the_changes(fresh: SV, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=3, big_mb=1)
    a = fresh.json("backup", str(src))["snapshot"]
    (src / "docs" / "readme.md").write_text("changed content\n")
    (src / "ünïcødé dir" / "new file.txt").write_text("new\n")
    (src / "docs" / "nested" / "deep" / "leaf.txt").unlink()
    b = fresh.json("backup", str(src))["snapshot"]
    changes = fresh.json("diff", a, b)
    assert sorted((c["change"], c["path"]) for c in changes) == sorted([
        ("M", str(src / "docs" / "readme.md")),
        ("+", str(src / "ünïcødé dir" / "new file.txt")),
        ("-", str(src / "docs" / "nested" / "deep" / "leaf.txt")),
    ])
    text = fresh.ok("diff", a[:8], b[:8]).text
    assert f"M {src / 'docs' / 'readme.md'}" in text
    assert f"+ {src / 'ünïcødé dir' / 'new file.txt'}" in text
    assert "1 added, 1 removed, 1 modified" in text
    assert fresh.json("diff", b, b) == []


def test_unchanged_second_backup_reads_nothing_new(base) -> None:
    s = base.second.json()["summary"]
    n_files = len(files_in(base.src))
    assert s["files_unmodified"] == n_files
    assert s["files_new"] == 0 and s["files_changed"] == 0
    assert s["data_added"] < 64 << 10, s  # at most a few tree blobs
    assert s["data_added"] < base.first.json()["summary"]["data_added"] / 50


def test_stats_show_deduplication(base, repo: SV) -> None:
    st = repo.json("stats")
    assert st["snapshots"] == 2
    assert st["files"] == 2 * len(files_in(base.src))
    assert st["dedup_ratio"] > 1.9  # the same data twice, stored once
    assert st["restore_size"] == 2 * sum((base.src / f).stat().st_size
                                         for f in files_in(base.src))
    one = repo.json("stats", base.first.json()["snapshot"])
    assert one["snapshots"] == 1 and one["dedup_ratio"] <= 1.01


def test_changed_file_is_detected_even_with_same_size_and_mtime(fresh: SV,
                                                                tmp_path: Path) -> None:
    """The metadata cache must not hide a rewrite that kept size and mtime (ctime/inode)."""
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f.bin"
    f.write_bytes(b"A" * 100_000)
    st = f.stat()
    fresh.ok("backup", str(src))
    tmp = src / "f.tmp"
    tmp.write_bytes(b"B" * 100_000)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, f)  # new inode, same size and mtime
    res = fresh.json("backup", str(src))
    assert res["summary"]["files_changed"] == 1, res
    assert fresh.ok("dump", "latest", str(f)).out == b"B" * 100_000


def test_names_and_tags_with_brackets_are_printed_verbatim(fresh: SV, tmp_path: Path) -> None:
    """File names and tags are data: "[red]" or "[/x]" in them must not be taken as styles."""
    src = tmp_path / "src"
    (src / "[red]dir").mkdir(parents=True)
    (src / "[red]dir" / "a[b]x.txt").write_text("x")
    os.mkfifo(src / "[bold]pipe")  # cannot be backed up: reported, exit 3
    res = fresh("backup", str(src), "--tag", "[/x]")
    assert res.rc == 3, str(res)
    assert f"{src}/[bold]pipe" in res.err and "snapshot" in res.err
    listing = fresh.ok("ls", "latest").text.splitlines()
    assert f"{src}/[red]dir/a[b]x.txt" in listing
    table = fresh.ok("snapshots").text
    assert "[/x]" in table
    assert fresh.json("snapshots")[0]["summary"]["errors"] == 1
