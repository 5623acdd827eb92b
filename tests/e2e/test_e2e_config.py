"""`stackvault config validate | example` and the global -c/--config, run as a user would."""

from __future__ import annotations

from pathlib import Path

from e2e_support import base_env, run_cli

SECRET = "e2e-Cfg-Secret-Foxtrot-7720"
# The secret sits in an environment variable whose name says PASSWORD, so run_cli also
# asserts that it appears on neither output.
ENV = base_env(STACKVAULT_CONFIG=None, DB_PASSWORD=SECRET)

BROKEN = f"""\
version: 1
repository:
  location: /srv/backup
components:
  db:
    type: postgres
    port: not-a-port
    databases: [app]
    password: {SECRET}
    depends_on: [files]
  files:
    type: files
    paths: [/srv/app]
    depends_on: [db]
    targets: {{rto: 15}}
"""

EXPECTED = {
    "components.db.port": "Input should be a valid integer, unable to parse string as an "
                          "integer",
    "components.db.password": "the password is never written in stackvault.yaml: use "
                              "password_env (the name of an environment variable) or "
                              "password_file (a file holding it)",
    "components.db.depends_on": "dependency cycle: db -> files -> db (each depends on the "
                                "next)",
    "components.files.targets.rto": "a duration needs a unit: e.g. 90s, 15m, 4h, 1d, 1h30m "
                                    "(units: s, m, h, d, w)",
}


def test_example_validates_from_the_current_folder(tmp_path: Path) -> None:
    example = run_cli(["config", "example"], env=ENV)
    assert example.rc == 0, str(example)
    (tmp_path / "stackvault.yaml").write_bytes(example.out)
    res = run_cli(["config", "validate"], env=ENV, cwd=tmp_path)
    assert res.rc == 0, str(res)
    assert res.text.splitlines() == [
        "ok: 7 components, restore order: app-config, app-db, cache, media, vector-index, "
        "vectors -> jobs-db",
        "critical path: app-db -> jobs-db"]


def test_invalid_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    res = run_cli(["-c", str(path), "config", "validate"], env=ENV)
    assert res.rc == 2, str(res)
    assert res.out == b""
    assert f"error: invalid config {path}: 4 problems" in res.err
    for where, message in EXPECTED.items():
        assert f"  {where}: {message} (line " in res.err, str(res)
    assert "hint: " in res.err and SECRET not in res.err


def test_validate_json_after_the_command(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    res = run_cli(["config", "validate", "--config", str(path), "--json"], env=ENV)
    assert res.rc == 2, str(res)
    doc = res.json()
    assert doc["ok"] is False and doc["config"] == str(path)
    assert {e["path"]: e["message"] for e in doc["errors"]} == EXPECTED
    assert {e["path"]: e["line"] for e in doc["errors"]} == {
        "components.db.port": 7, "components.db.password": 9, "components.db.depends_on": 10,
        "components.files.targets.rto": 15}
    good = tmp_path / "good.yaml"
    good.write_text(BROKEN.replace("port: not-a-port", "port: 5432")
                    .replace(f"password: {SECRET}", "password_env: DB_PASSWORD")
                    .replace("depends_on: [files]", "depends_on: []")
                    .replace("rto: 15", "rto: 15m"))
    ok = run_cli(["config", "validate", "--json"], env={**ENV, "STACKVAULT_CONFIG": str(good)})
    assert ok.rc == 0, str(ok)
    assert ok.json() == {"ok": True, "config": str(good), "errors": [], "components": 2,
                         "restore_order": [["db"], ["files"]],
                         "critical_path": ["db", "files"]}


def test_no_config_found_says_how_to_get_one(tmp_path: Path) -> None:
    res = run_cli(["config", "validate"], env=ENV, cwd=tmp_path)
    assert res.rc == 2, str(res)
    assert "no config file" in res.err and "stackvault config example" in res.err
    res = run_cli(["--json", "config", "validate", "-c", str(tmp_path / "missing.yaml")],
                  env=ENV)
    assert res.rc == 2, str(res)
    [error] = res.json()["errors"]
    assert res.json()["ok"] is False and "does not exist" in error["message"]


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "stackvault.yaml"
    path.write_text(f"version: 1\nrepository:\n  location: [/srv/backup\n  password: {SECRET}\n")
    res = run_cli(["config", "validate"], env=ENV, cwd=tmp_path)
    assert res.rc == 2, str(res)
    assert "(file): YAML syntax error at line 4, column " in res.err
    assert SECRET not in res.err
