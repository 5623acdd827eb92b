"""Secrets are never printed, and the repository at rest holds no plaintext.

Every CLI run in this suite already asserts that no PASSWORD/SECRET environment value appears
in its output (e2e_support.run_cli); these tests aim at the error paths on purpose."""

from __future__ import annotations

from pathlib import Path

from e2e_support import NEW_PASSWORD, PASSWORD, SV, WRONG_PASSWORD


def _printed(res) -> str:  # type: ignore[no-untyped-def]
    return res.text + res.err


def test_password_not_printed_on_error_paths(repo: SV, tmp_path: Path) -> None:
    results = [
        repo("--traceback", "snapshots", env={"STACKVAULT_PASSWORD": WRONG_PASSWORD}),
        repo("--traceback", "restore", "deadbeef", "--target", str(tmp_path / "t")),
        repo("key", "add", env={"STACKVAULT_NEW_PASSWORD": NEW_PASSWORD,
                                "STACKVAULT_PASSWORD": WRONG_PASSWORD}),
        # a password command that fails after printing the password
        repo("--password-command", f"echo '{PASSWORD}'; exit 1", "snapshots",
             env={"STACKVAULT_PASSWORD": None}),
        repo("--password-command", f"echo '{PASSWORD}'; echo '{PASSWORD}' >&2; exit 1",
             "snapshots", env={"STACKVAULT_PASSWORD": None}),
    ]
    assert [r.rc for r in results] == [12, 2, 12, 2, 2], "\n".join(map(str, results))
    for r in results:
        for secret in (PASSWORD, WRONG_PASSWORD, NEW_PASSWORD):
            assert secret not in _printed(r), str(r)


def test_password_file_content_not_printed(repo: SV, tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(WRONG_PASSWORD + "\n")
    res = repo("--password-file", str(f), "snapshots", env={"STACKVAULT_PASSWORD": None})
    assert res.rc == 12, str(res)
    assert WRONG_PASSWORD not in _printed(res)


def test_repository_holds_no_plaintext(base) -> None:
    markers = [b"Readme", "日本語".encode(), "ünïcødé".encode(), b"notes notes notes",
               b"INFO request ok", b"readme.md", b"private.key", b"link-to-readme",
               str(base.src).encode(), PASSWORD.encode()]
    for p in base.repo.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for m in markers:
                assert m not in data, f"{m!r} in plaintext in {p}"
