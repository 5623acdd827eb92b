"""The audit log's hash chain: appends chain up; a changed, removed, inserted or reordered
line is found."""

from __future__ import annotations

from pathlib import Path

from stackvault.ops import audit


def _log(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "audit.jsonl"
    for i in range(n):
        audit.append(path, f"action {i}", "ok", {"i": i}, who="tester@host")
    return path


def test_appends_chain_and_verify(tmp_path: Path) -> None:
    path = _log(tmp_path)
    assert audit.verify(path) == (4, [])
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_changed_line_is_found(tmp_path: Path) -> None:
    path = _log(tmp_path)
    path.write_text(path.read_text().replace('"i":2', '"i":7'))
    n, problems = audit.verify(path)
    assert n == 4 and problems == ["line 3: changed (its hash does not match)"]


def test_a_removed_line_is_found(tmp_path: Path) -> None:
    path = _log(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1] + lines[2:]))
    _, problems = audit.verify(path)
    assert any("line 2: does not follow" in p for p in problems)


def test_an_inserted_or_reordered_line_is_found(tmp_path: Path) -> None:
    path = _log(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([lines[0], lines[2], lines[1], lines[3]]))
    _, problems = audit.verify(path)
    assert problems and all("does not follow" in p or "sequence" in p for p in problems)


def test_truncating_the_tail_is_not_detectable_but_appending_continues(tmp_path: Path) -> None:
    """The chain proves order and content; a lost tail needs the copy elsewhere (documented)."""
    path = _log(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]))
    assert audit.verify(path) == (2, [])
    audit.append(path, "after", "ok")
    assert audit.verify(path) == (3, [])
