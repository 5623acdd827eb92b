"""copy to a second repository: everything arrives, a second run skips, restores match."""

from __future__ import annotations

from pathlib import Path

from e2e_support import SV, TO_PASSWORD, restored, tree_state


def test_copy_to_second_repository(base, repo: SV, tmp_path: Path) -> None:
    dst = SV(tmp_path / "offsite", dict(repo.env, STACKVAULT_PASSWORD=TO_PASSWORD))
    dst.ok("init")
    to = {"STACKVAULT_TO_PASSWORD": TO_PASSWORD}
    src_ids = [s["id"] for s in repo.json("snapshots")]
    first = repo.json("copy", "--to", dst.repo or "", env=to)
    assert sorted(c["source"] for c in first["copied"]) == sorted(src_ids)
    assert first["skipped"] == []
    again = repo.json("copy", "--to", dst.repo or "", env=to)
    assert again["copied"] == [] and sorted(again["skipped"]) == sorted(src_ids)

    copies = dst.json("snapshots")
    assert sorted(s["original"] for s in copies) == sorted(src_ids)
    tagged = [s for s in copies if s["original"] == base.first.json()["snapshot"]]
    assert tagged[0]["tags"] == ["a", "b"] and tagged[0]["hostname"] == "h1"
    target = tmp_path / "target"
    dst.ok("restore", tagged[0]["id"][:8], "--target", str(target))
    assert tree_state(restored(target, base.src)) == tree_state(base.src)
    assert dst.json("check", "--read-data")["ok"] is True


def test_copy_with_wrong_destination_password(repo: SV, fresh: SV) -> None:
    res = repo("copy", "--to", fresh.repo or "", env={"STACKVAULT_TO_PASSWORD": "not-it-123"})
    assert res.rc == 12, str(res)
    assert fresh.json("snapshots") == []
