"""The command line itself: init, password sources, exit codes, global options, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from e2e_support import PASSWORD, SV, WRONG_PASSWORD, base_env, run_cli


def test_init_twice_is_refused(nowhere: SV) -> None:
    created = nowhere.json("init")
    assert created["encrypted"] is True and len(created["id"]) == 64
    again = nowhere("init")
    assert again.rc == 2, str(again)
    assert "already exists" in again.err
    # the first repository is untouched
    assert nowhere.json("snapshots") == []


def test_init_refuses_an_empty_password(nowhere: SV) -> None:
    res = nowhere("init", env={"STACKVAULT_PASSWORD": ""})
    assert res.rc == 2, str(res)
    assert "empty" in res.err


def test_unencrypted_repository_needs_the_flag_every_time(nowhere: SV, tmp_path: Path) -> None:
    created = nowhere.json("init", "--insecure-no-password", env={"STACKVAULT_PASSWORD": None})
    assert created["encrypted"] is False
    # without the flag: refused with a message that says what to do
    res = nowhere("snapshots")
    assert res.rc != 0, str(res)
    assert "not encrypted" in res.err and "--insecure-no-password" in res.err
    # with it, everything works
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("plain")
    nowhere.ok("--insecure-no-password", "backup", str(src), env={"STACKVAULT_PASSWORD": None})
    assert nowhere.ok("--insecure-no-password", "dump", "latest", str(src / "f.txt"),
                      env={"STACKVAULT_PASSWORD": None}).out == b"plain"


def test_encrypted_repository_refuses_the_insecure_flag(repo: SV) -> None:
    res = repo("--insecure-no-password", "snapshots")
    assert res.rc == 2, str(res)
    assert "encrypted" in res.err


def test_wrong_password_exits_12(repo: SV) -> None:
    res = repo("snapshots", env={"STACKVAULT_PASSWORD": WRONG_PASSWORD})
    assert res.rc == 12, str(res)
    assert "wrong password" in res.err


def test_missing_repository_exits_10(tmp_path: Path, env: dict[str, str]) -> None:
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    for location, cmd in ((tmp_path / "does-not-exist", ["snapshots"]),
                          (tmp_path / "a" / "b" / "c", ["backup", str(tmp_path)]),
                          (empty, ["check"])):
        res = SV(location, env)(*cmd)
        assert res.rc == 10, str(res)
        assert "no repository" in res.err
    assert not (tmp_path / "a").exists()  # a failed command creates nothing


def test_no_repository_given_is_a_usage_error(env: dict[str, str]) -> None:
    res = run_cli(["snapshots"], env=env)
    assert res.rc == 2, str(res)
    assert "STACKVAULT_REPOSITORY" in res.err


def test_repository_from_the_environment(repo: SV) -> None:
    env = dict(repo.env, STACKVAULT_REPOSITORY=repo.repo or "")
    assert len(run_cli(["--json", "snapshots"], env=env).json()) == 2


def test_no_password_and_no_terminal_exits_2(repo: SV) -> None:
    res = repo("snapshots", env={"STACKVAULT_PASSWORD": None})  # stdin is /dev/null
    assert res.rc == 2, str(res)
    assert "no password" in res.err and "STACKVAULT_PASSWORD" in res.err


def test_password_file_and_command(repo: SV, tmp_path: Path) -> None:
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\nsecond line is not part of the password\n")
    no_env = {"STACKVAULT_PASSWORD": None}
    assert len(repo.json("--password-file", str(pw_file), "snapshots", env=no_env)) == 2
    cmd = f"head -n1 {pw_file}"
    assert len(repo.json("--password-command", cmd, "snapshots", env=no_env)) == 2
    assert len(repo.json("snapshots", env={**no_env, "STACKVAULT_PASSWORD_COMMAND": cmd})) == 2
    # failures say which source failed, with the documented exit codes
    wrong = tmp_path / "wrong"
    wrong.write_text(WRONG_PASSWORD + "\n")
    res = repo("--password-file", str(wrong), "snapshots", env=no_env)
    assert res.rc == 12, str(res)
    res = repo("--password-file", str(tmp_path / "missing"), "snapshots", env=no_env)
    assert res.rc == 2 and "password file" in res.err, str(res)
    res = repo("--password-command", "exit 3", "snapshots", env=no_env)
    assert res.rc == 2 and "password command" in res.err, str(res)


def test_unknown_option_and_command_exit_2(repo: SV) -> None:
    res = repo("snapshots", "--no-such-option")
    assert res.rc == 2, str(res)
    assert "--no-such-option" in res.err
    res = repo("no-such-command")
    assert res.rc == 2, str(res)
    res = repo("--retry-lock", "soon", "snapshots")
    assert res.rc == 2, str(res)
    res = repo("backup", "/no/such/path/e2e")
    assert res.rc == 2 and "/no/such/path/e2e" in res.err, str(res)
    assert len(repo.json("snapshots")) == 2  # nothing was saved


def test_global_options_after_the_command(base, repo: SV, tmp_path: Path) -> None:
    r = repo.repo or ""
    first = run_cli(["snapshots", "--json", "-r", r], env=repo.env)
    assert first.rc == 0, str(first)
    assert len(first.json()) == 2
    second = run_cli(["snapshots", f"--repo={r}", "--json", "--host", "h1"], env=repo.env)
    assert len(second.json()) == 2, str(second)
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("x")
    res = run_cli(["backup", "--repo", r, str(src), "--json", "--tag", "late"], env=repo.env)
    assert res.rc == 0, str(res)
    assert res.json()["summary"]["files_new"] == 1
    q = run_cli(["snapshots", "-r", r, "-q", "--tag", "late"], env=repo.env)
    assert q.rc == 0 and res.json()["snapshot"][:8] in q.text


def test_version_and_help() -> None:
    env = base_env()
    res = run_cli(["--version"], env=env)
    assert res.rc == 0 and res.text.startswith("stackvault ")
    res = run_cli(["--help"], env=env)
    assert res.rc == 0 and "backup" in res.text


def test_demo(tmp_path: Path) -> None:
    env = base_env()
    res = run_cli(["demo", "--workdir", str(tmp_path / "demo"), "--json"], env=env)
    assert res.rc == 0, str(res)
    out = res.json()
    assert out["ok"] is True and out["check_errors"] == 0 and out["files"] > 0
    # a relative --workdir works too; running it twice in one place is refused cleanly
    rel = run_cli(["demo", "--workdir", "rel", "--json"], env=env, cwd=tmp_path)
    assert rel.rc == 0 and rel.json()["ok"] is True, str(rel)
    again = run_cli(["demo", "--workdir", "rel"], env=env, cwd=tmp_path)
    assert again.rc == 2, str(again)
    assert "internal error" not in again.err


def test_python_module_entry_point(repo: SV) -> None:
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "stackvault.cli.main", "-r", repo.repo or "",
                           "--json", "snapshots"], env=repo.env, capture_output=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 2
