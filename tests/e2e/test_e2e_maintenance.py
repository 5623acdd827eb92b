"""forget, prune and check as a user runs them: plans, deletions, damage detection."""

from __future__ import annotations

import os
from pathlib import Path

from e2e_support import SV, make_tree, pack_files, restored, tree_state


def _ids(sv: SV) -> list[str]:
    return [s["id"] for s in sv.json("snapshots")]


def test_forget_dry_run_shows_plan_and_deletes_nothing(base, repo: SV) -> None:
    first, second = base.first.json()["snapshot"], base.second.json()["snapshot"]
    plan = repo.json("forget", "--keep-last", "1", "--dry-run")
    assert plan["dry_run"] is True
    assert len(plan["groups"]) == 1
    g = plan["groups"][0]
    assert g["key"] == {"hostname": "h1", "paths": [str(base.src)]}
    assert [(k["id"], k["reasons"]) for k in g["keep"]] == [(second, ["last-1"])]
    assert [r["id"] for r in g["remove"]] == [first]
    assert _ids(repo) == [first, second]  # nothing deleted
    text = repo.ok("forget", "--keep-last", "1", "--dry-run").text
    assert "keep" in text and "last-1" in text and first[:8] in text
    # without --dry-run the same plan is carried out
    done = repo.json("forget", "--keep-last", "1")
    assert done["dry_run"] is False and done["removed"] == [first]
    assert _ids(repo) == [second]


def test_forget_without_policy_is_refused(repo: SV) -> None:
    res = repo("forget")
    assert res.rc == 2, str(res)
    assert "no policy" in res.err
    assert len(_ids(repo)) == 2


def test_forget_by_id(base, repo: SV) -> None:
    first = base.first.json()["snapshot"]
    assert repo.json("forget", first[:8])["removed"] == [first]
    assert _ids(repo) == [base.second.json()["snapshot"]]


def test_prune_frees_space_and_the_rest_still_restores(fresh: SV, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=11, big_mb=2)
    (src / "data" / "doomed.bin").write_bytes(os.urandom(3 << 20))
    fresh.ok("backup", str(src))
    (src / "data" / "doomed.bin").unlink()
    keep = fresh.json("backup", str(src))["snapshot"]
    want = tree_state(src)
    repo_dir = Path(fresh.repo or "")
    size_before = sum(p.stat().st_size for p in pack_files(repo_dir))
    fresh.ok("forget", "--keep-last", "1")
    p = fresh.json("prune")
    assert p["dry_run"] is False
    assert p["bytes_freed"] >= 3 << 20, p
    size_after = sum(p.stat().st_size for p in pack_files(repo_dir))
    assert size_before - size_after >= 3 << 20
    chk = fresh.ok("check", "--read-data")
    assert "no errors" in chk.text
    target = tmp_path / "target"
    fresh.ok("restore", keep, "--target", str(target))
    assert tree_state(restored(target, src)) == want


def test_forget_with_prune(base, repo: SV, tmp_path: Path) -> None:
    res = repo.json("forget", "--keep-last", "1", "--prune")  # one JSON document
    assert res["removed"] == [base.first.json()["snapshot"]]
    assert res["prune"]["dry_run"] is False
    assert _ids(repo) == [base.second.json()["snapshot"]]
    assert repo.json("check", "--read-data")["ok"] is True
    target = tmp_path / "target"
    repo.ok("restore", "latest", "--target", str(target))
    assert tree_state(restored(target, base.src)) == tree_state(base.src)


# ----------------------------------------------------------------------------- check

def test_check_healthy(repo: SV) -> None:
    res = repo.ok("check")
    assert "no errors" in res.text
    rep = repo.json("check", "--read-data")
    assert rep["ok"] is True and rep["errors"] == []
    assert rep["packs_read"] == rep["packs"] > 0


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(4)
        f.seek(offset)
        f.write(bytes(x ^ 0xFF for x in b))


def test_check_names_a_damaged_pack(base, repo: SV, tmp_path: Path) -> None:
    pack = pack_files(Path(repo.repo or ""))[-1]  # the biggest: file content
    _flip(pack, 1000)
    res = repo("check", "--read-data")
    assert res.rc == 1, str(res)
    assert f"data/{pack.parent.name}/{pack.name}" in res.err  # named, on one line
    assert "damaged" in res.err
    rep = repo("check", "--read-data", "--json")
    assert rep.rc == 1
    objects = [e["object"] for e in rep.json()["errors"]]
    assert f"data/{pack.parent.name}/{pack.name}" in objects
    affected = {s for e in rep.json()["errors"] for s in e["snapshots"]}
    assert base.first.json()["snapshot"] in affected
    # a restore of the damaged snapshot does not pretend to succeed
    bad = repo("restore", "latest", "--target", str(tmp_path / "t"))
    assert bad.rc == 3, str(bad)


def test_check_finds_a_truncated_pack_without_reading_data(repo: SV) -> None:
    pack = pack_files(Path(repo.repo or ""))[-1]
    os.truncate(pack, pack.stat().st_size - 10)
    res = repo("check")
    assert res.rc == 1, str(res)
    assert f"data/{pack.parent.name}/{pack.name}" in res.err


def test_check_missing_pack(repo: SV) -> None:
    pack = pack_files(Path(repo.repo or ""))[-1]
    pack.unlink()
    res = repo("check")
    assert res.rc == 1, str(res)
    assert pack.name in res.err and "missing" in res.err


def test_check_read_data_subsets(repo: SV) -> None:
    total = repo.json("check")["packs"]
    half = repo.json("check", "--read-data-subset", "50%")
    assert half["ok"] is True and 1 <= half["packs_read"] <= total
    a = repo.json("check", "--read-data-subset", "1/2")
    b = repo.json("check", "--read-data-subset", "2/2")
    assert a["ok"] and b["ok"]
    assert a["packs_read"] + b["packs_read"] == total  # the slices cover everything once


def test_check_bad_subset_is_a_usage_error(repo: SV) -> None:
    for subset in ("0%", "3/2", "half"):
        res = repo("check", "--read-data-subset", subset)
        assert res.rc == 2, str(res)
        assert "--read-data-subset" in res.err
