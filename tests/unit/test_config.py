"""stackvault.yaml: schema, loader (every error at once, with paths), example, reference docs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from stackvault.cli.entry import hoist_global_options
from stackvault.config.docs import REFERENCE, reference_markdown
from stackvault.config.example import example_yaml
from stackvault.config.loader import (
    CONFIG_ENV,
    check_text,
    find_config,
    load_config,
    parse_yaml,
)
from stackvault.config.schema import (
    COMPONENT_TYPES,
    FilesComponent,
    Hook,
    Hooks,
    HttpCall,
    PostgresComponent,
    RepositoryConfig,
    SqliteComponent,
    StackConfig,
    Targets,
    critical_path,
    format_duration,
    parse_duration,
    restore_order,
)
from stackvault.errors import ConfigError, ExitCode

SECRET = "Hunter2-s3cr3t-Zulu-8841"  # distinctive: easy to spot if it leaks

GOOD = """\
version: 1
repository:
  location: backups/repo
components:
  db:
    type: postgres
    port: 5433
    password_env: PGPASSWORD
    databases: [app, analytics]
    targets: {rto: 1h, rpo: 1d}
  jobs:
    type: sqlite
    path: data/jobs.sqlite3
    depends_on: [db]
  conf:
    type: files
    paths: [~/app/config, /srv/app/.env]
    exclude: ["*.tmp"]
"""


def write(tmp_path: Path, text: str, name: str = "stackvault.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(text: str) -> dict[str, str]:
    """path -> message of every problem in ``text``."""
    result = check_text(textwrap.dedent(text))
    assert not result.ok
    return {p.path: p.message for p in result.problems}


def stack(components: dict[str, dict[str, object]]) -> StackConfig:
    return StackConfig.model_validate({"version": 1, "repository": {"location": "/r"},
                                       "components": components})


def files(*deps: str) -> dict[str, object]:
    return {"type": "files", "paths": ["/x"], "depends_on": list(deps)}


# --------------------------------------------------------------------------- valid configs


def test_valid_config_loads_with_defaults_and_resolved_paths(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = load_config(path)
    assert list(config.components) == ["db", "jobs", "conf"]
    db = config.components["db"]
    assert isinstance(db, PostgresComponent)
    assert (db.host, db.port, db.user, db.databases) == ("localhost", 5433, "postgres",
                                                         ["app", "analytics"])
    assert (db.format, db.jobs, db.globals, db.tables) == ("custom", 1, False, None)
    assert (db.targets.rto, db.targets.rpo) == (3600, 86400)
    jobs = config.components["jobs"]
    assert isinstance(jobs, SqliteComponent)
    assert jobs.path == tmp_path / "data" / "jobs.sqlite3"  # relative to the config's folder
    assert jobs.force_restore is False and jobs.targets == Targets()
    conf = config.components["conf"]
    assert isinstance(conf, FilesComponent)
    assert conf.paths == [Path.home() / "app" / "config", Path("/srv/app/.env")]
    assert config.repository.location == str(tmp_path / "backups" / "repo")
    assert config.repository.password_env == "STACKVAULT_PASSWORD"  # the default source
    assert config.hooks == Hooks()
    assert config.source == path and len(config.sha256) == 64


def test_a_dump_validates_back_to_the_same_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + "    hooks: {pre: [{command: x}]}\n"))
    dumped = config.model_dump(mode="json")
    assert dumped["components"]["db"]["targets"] == {"rto": "1h", "rpo": "1d"}
    assert dumped["components"]["conf"]["hooks"]["pre"][0]["timeout"] == "5m"
    again = StackConfig.model_validate(dumped)
    assert again.model_dump() == config.model_dump()
    assert again.components == config.components and again.repository == config.repository
    assert StackConfig.model_validate(config.model_dump()).model_dump() == config.model_dump()


def test_repository_password_sources_and_locations() -> None:
    def repo(**kw: object) -> RepositoryConfig:
        return RepositoryConfig.model_validate({"location": "/r", **kw})

    assert repo(password_file="/etc/pw").password_env is None
    assert repo(password_command="pass show x").password_command == "pass show x"
    assert repo(password_command=["pass", "show", "x"]).password_env is None
    for loc in ("s3:http://127.0.0.1:9000/bucket/prefix", "s3://bucket", "memory:t"):
        assert RepositoryConfig.model_validate({"location": loc}).location == loc
    assert RepositoryConfig.model_validate({"location": "local:/srv/r"}).location == \
        "local:/srv/r"


def test_hooks_parse_commands_and_http_calls() -> None:
    hooks = Hooks.model_validate({
        "pre": [{"command": "systemctl stop worker", "timeout": "2m"},
                {"http": {"url": "http://127.0.0.1:8080/pause",
                          "headers_env": {"Authorization": "ADMIN_TOKEN"}}}],
        "post": [{"command": ["systemctl", "start", "worker"]}]})
    assert hooks.pre[0] == Hook(command="systemctl stop worker", timeout=120)
    assert hooks.pre[0].timeout == 120
    assert hooks.pre[1].http == HttpCall.model_validate(
        {"url": "http://127.0.0.1:8080/pause", "method": "POST",
         "headers_env": {"Authorization": "ADMIN_TOKEN"}, "timeout": "30s"})
    assert hooks.post[0].command == ["systemctl", "start", "worker"]
    assert hooks.post[0].timeout == 300


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("4h", 14400), ("1d", 86400), ("2w", 1209600),
    ("1h30m", 5400), ("1d12h", 129600), (" 5m ", 300)])
def test_durations_parse_to_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "15", "15x", "m", "1m1h", "1.5h", "-5m", "1 h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("value", "message"), [
    (15, "needs a unit"), (1.5, "text such as"), (True, "text such as"),
    ("0s", "longer than 0s"), ("soon", "not a duration")])
def test_duration_fields_explain_what_is_wrong(value: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        Targets.model_validate({"rto": value}, context={"from_file": True})
    assert message in info.value.errors()[0]["msg"]


def test_code_may_give_durations_in_seconds() -> None:
    assert Targets(rto=90).rto == 90 and Targets.model_validate({"rpo": 60}).rpo == 60
    with pytest.raises(ValidationError, match="longer than 0s"):
        Targets(rto=0)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 30, 300, 5400, 90061)] == \
        ["0s", "30s", "5m", "1h30m", "1d1h1m1s"]


# --------------------------------------------------------------------------- errors


BAD = """\
version: 1
repository:
  location: /srv/backup
hooks:
  pre:
    - command: 5
    - {}
components:
  db:
    type: postgres
    port: abc
    databases: []
    jobs: 4
    hosst: x
    depends_on: [zz]
    targets: {rto: 15}
  Bad_Name:
    type: sqlite
  d: {type: mysql}
  e: {}
  f: 5
  g:
    type: files
    paths: [/x]
    format: custom
"""


def test_every_error_is_reported_at_once_with_path_and_line() -> None:
    result = check_text(BAD)
    assert not result.ok and result.config is None
    got = {p.path: (p.message, p.line) for p in result.problems}
    assert got == {
        "hooks.pre[0].command": (got["hooks.pre[0].command"][0], 6),
        "hooks.pre[1]": ("a hook has exactly one of `command` or `http`", 7),
        "components.db.port": ("Input should be a valid integer, unable to parse string as "
                               "an integer", 11),
        "components.db.databases": (got["components.db.databases"][0], 12),
        "components.db.jobs": ("parallel jobs need `format: directory`", 13),
        "components.db.hosst": (got["components.db.hosst"][0], 14),
        "components.db.depends_on[0]": ("unknown component 'zz' (the config has: d, db, e, f, "
                                        "g)", 15),
        "components.db.targets.rto": (got["components.db.targets.rto"][0], 16),
        "components.Bad_Name": (got["components.Bad_Name"][0], 17),
        "components.Bad_Name.path": ("required, but missing", 17),
        "components.d": ("unknown component type 'mysql'; the types are: "
                         + ", ".join(COMPONENT_TYPES), 19),
        "components.e": ("a component needs a `type`: one of " + ", ".join(COMPONENT_TYPES),
                         20),
        "components.f": ("must be a mapping (`key: value` lines)", 21),
        "components.g.format": (got["components.g.format"][0], 25),
    }
    assert "at least 1 item" in got["components.db.databases"][0]
    assert "did you mean `host`?" in got["components.db.hosst"][0]
    assert "needs a unit" in got["components.db.targets.rto"][0]
    assert "a-z, 0-9" in got["components.Bad_Name"][0]
    assert got["components.g.format"][0].startswith("unknown key (allowed here: depends_on, ")
    assert [p.line for p in result.problems] == sorted(p.line or 0 for p in result.problems)


def test_load_config_raises_one_config_error_listing_each_problem(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.exit_code == ExitCode.USAGE == 2
    text = str(err)
    assert f"invalid config {path}: 14 problems" in text
    assert "\n  components.db.port: Input should be a valid integer" in text
    assert "(line 11)" in text and "hint: " in text


def test_missing_sections_and_wrong_version() -> None:
    assert problems("version: 1\n") == {"repository": "required, but missing",
                                        "components": "required, but missing"}
    got = problems("version: 2\nrepository: {location: /r}\ncomponents: {a: {type: files, "
                   "paths: [/x]}}\n")
    assert got == {"version": "this StackVault reads config version 1; version 2 needs a "
                              "newer StackVault"}
    assert "at least 1 item" in problems("version: 1\nrepository: {location: /r}\n"
                                         "components: {}\n")["components"]


def test_cross_field_rules() -> None:
    base = "version: 1\nrepository: {location: /r%s}\ncomponents:\n  db: %s\n"
    got = problems(base % (", password_env: A, password_file: /f",
                           "{type: postgres, databases: [a], password_env: A, "
                           "password_file: /f, format: directory, jobs: 4}"))
    assert got == {
        "repository": "give at most one of password_env, password_file and password_command",
        "components.db": "give at most one of password_env and password_file"}
    got = problems(base % ("", "{type: files, paths: [/x], hooks: {pre: [{http: "
                              "{url: 'ftp://x'}, timeout: 1m}, {command: 'a', "
                              "http: {url: 'http://x'}}, {command: []}]}}"))
    assert got == {
        "components.db.hooks.pre[0].http.url": "must be an http:// or https:// URL",
        "components.db.hooks.pre[0].timeout": "the timeout of an http hook goes inside `http`",
        "components.db.hooks.pre[1]": "a hook has exactly one of `command` or `http`",
        "components.db.hooks.pre[2].command": problems(
            base % ("", "{type: files, paths: [/x], hooks: {pre: [{command: ''}]}}"))[
            "components.db.hooks.pre[0].command"]}
    got = problems(base % (", password_env: 'not a name'", "{type: files, paths: ['']}"))
    assert got == {"repository.password_env": got["repository.password_env"],
                   "components.db.paths[0]": "a path must not be empty"}
    assert "NAME of an environment variable" in got["repository.password_env"]
    got = problems(base % ("", "{type: files, paths: [/x], depends_on: ['-x']}"))
    assert "a-z, 0-9" in got["components.db.depends_on[0]"]


def test_location_forms_are_checked() -> None:
    def location(loc: str) -> str:
        return problems(f"version: 1\nrepository: {{location: '{loc}'}}\ncomponents: "
                        "{a: {type: files, paths: [/x]}}\n")["repository.location"]

    assert "unsupported repository location" in location("ftp://host/x")
    assert "empty" in location(" ")
    assert "credentials do not belong" in location(f"s3:http://key:{SECRET}@host/bucket")


def test_yaml_syntax_errors_give_line_and_column() -> None:
    result = check_text("version: 1\nrepository:\n  location: [/r\ncomponents: {}\n")
    assert [(p.path, p.line) for p in result.problems] == [("(file)", 4)]
    assert result.problems[0].message.startswith("YAML syntax error at line 4, column ")
    tab = check_text("version: 1\n\trepository: x\n").problems
    assert tab[0].line == 2 and "tab" in tab[0].message
    assert check_text("a: 1\n---\nb: 2\n").problems[0].line == 2  # the second document


def test_duplicate_keys_are_errors() -> None:
    got = check_text("version: 1\nrepository: {location: /r}\ncomponents:\n"
                     "  a: {type: files, paths: [/x]}\n  a: {type: files, paths: [/y]}\n")
    assert [(p.path, p.message, p.line) for p in got.problems] == [
        ("components.a", "duplicate key (first on line 4); only one is allowed", 5)]


@pytest.mark.parametrize(("text", "message"), [
    ("", "the config is empty"), ("# only comments\n", "the config is empty"),
    ("- a\n- b\n", "must be a mapping"), ("just text\n", "must be a mapping")])
def test_empty_or_not_a_mapping(text: str, message: str) -> None:
    [problem] = check_text(text).problems
    assert problem.path == "(file)" and message in problem.message


def test_not_utf8() -> None:
    [problem] = check_text(b"version: 1\nrepository:\n  location: /r\xff\n").problems
    assert problem.message == "not UTF-8 text" and problem.line == 3


def test_parse_yaml_indexes_lines_of_keys_and_items() -> None:
    data, lines, found = parse_yaml("a:\n  b: 1\n  c:\n    - x\n    - y\n")
    assert data == {"a": {"b": 1, "c": ["x", "y"]}} and found == []
    assert lines == {("a",): 1, ("a", "b"): 2, ("a", "c"): 3, ("a", "c", 0): 4,
                     ("a", "c", 1): 5}


# --------------------------------------------------------------------------- secrets


def test_secrets_are_refused_and_never_echoed(tmp_path: Path) -> None:
    text = f"""\
version: 1
repository:
  location: /srv/backup
  password: {SECRET}
components:
  db:
    type: postgres
    databases: [app]
    password: {SECRET}
  jobs:
    type: sqlite
    path: /x.db
    db_password: {SECRET}
    password_env: "{SECRET}"
  conf:
    type: files
    paths: [/x]
    hooks:
      pre:
        - http:
            url: http://127.0.0.1/x
            api-token: {SECRET}
            headers: {{Authorization: {SECRET}}}
            headers_env: {{Authorization: "Bearer {SECRET}"}}
"""
    got = problems(text)
    assert got["repository.password"].startswith("the repository password is never written")
    assert "password_env, password_file or password_command" in got["repository.password"]
    assert "use password_env (the name of an environment variable) or password_file" in \
        got["components.db.password"]
    assert "never written in stackvault.yaml" in got["components.jobs.db_password"]
    # a misplaced `_env` setting is an unknown key, not a secret
    assert got["components.jobs.password_env"].startswith("unknown key")
    assert "headers_env" in got["components.conf.hooks.pre[0].http.api-token"]
    assert got["components.conf.hooks.pre[0].http.headers"].startswith("unknown key")
    assert "NAME of an environment variable" in \
        got["components.conf.hooks.pre[0].http.headers_env.Authorization"]
    assert len(got) == 7
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value.args)
    assert all(SECRET not in f"{k}{v}" for k, v in got.items())


def test_secrets_never_echoed_by_syntax_errors_or_type_errors() -> None:
    for text in (f'version: 1\nrepository:\n  password_file: "{SECRET}\n',
                 f"version: 1\nrepository: {{location: /r, password_env: [{SECRET}]}}\n",
                 f"version: 1\nrepository: {{location: /r}}\ncomponents:\n"
                 f"  a: {{type: postgres, databases: [a], port: {SECRET}}}\n"):
        result = check_text(text)
        assert result.problems
        assert all(SECRET not in str(p) for p in result.problems), result.problems


def test_schema_alone_refuses_secrets_without_keeping_them() -> None:
    with pytest.raises(ValidationError) as info:
        RepositoryConfig.model_validate({"location": "/r", "password": SECRET})
    assert SECRET not in str(info.value)
    assert info.value.errors()[0]["loc"] == ("password",)


# --------------------------------------------------------------------------- dependencies


def test_cycles_are_named() -> None:
    with pytest.raises(ValidationError) as info:
        stack({"a": files("b"), "b": files("c"), "c": files("a"), "d": files("d"),
               "e": files("a")})
    errors = [(e["loc"], e["msg"]) for e in info.value.errors()]
    assert errors == [
        (("components", "a", "depends_on"),
         "dependency cycle: a -> b -> c -> a (each depends on the next)"),
        (("components", "d", "depends_on"), "dependency cycle: d depends on itself")]


def test_cycles_and_unknown_names_are_reported_with_other_errors() -> None:
    got = problems("version: 1\nrepository: {location: /r}\ncomponents:\n"
                   "  a: {type: files, paths: [/x], depends_on: [b, nope]}\n"
                   "  b: {type: files, paths: 7, depends_on: [a]}\n")
    assert got == {"components.a.depends_on": "dependency cycle: a -> b -> a (each depends "
                                              "on the next)",
                   "components.a.depends_on[1]": "unknown component 'nope' (the config has: "
                                                 "a, b)",
                   "components.b.paths": "Input should be a valid list"}


def test_restore_order_layers() -> None:
    #   db <- jobs <- api;  db <- vectors <- api;  conf alone
    config = stack({"api": files("jobs", "vectors"), "jobs": files("db"),
                    "vectors": files("db", "db"), "db": files(), "conf": files()})
    assert restore_order(config) == [["conf", "db"], ["jobs", "vectors"], ["api"]]
    assert critical_path(config) == ["db", "jobs", "api"]  # ties: alphabetical
    assert critical_path(config, {"db": 60, "vectors": 600, "jobs": 5, "api": 1}) == \
        ["db", "vectors", "api"]
    assert critical_path(config, {"conf": 10_000}) == ["conf"]
    single = stack({"only": files()})
    assert restore_order(single) == [["only"]] and critical_path(single) == ["only"]


def test_restore_order_refuses_a_cycle_that_bypassed_validation() -> None:
    config = StackConfig.model_construct(components={
        "a": FilesComponent.model_construct(depends_on=["b"]),
        "b": FilesComponent.model_construct(depends_on=["a"])})
    with pytest.raises(ConfigError, match="dependency cycle among: a, b"):
        restore_order(config)


# --------------------------------------------------------------------------- finding


def test_find_config_order(tmp_path: Path) -> None:
    flag = write(tmp_path, GOOD, "flag.yaml")
    env_file = write(tmp_path, GOOD, "env.yaml")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    default = write(cwd, GOOD)
    env = {CONFIG_ENV: str(env_file)}
    assert find_config(str(flag), env, cwd) == flag
    assert find_config(None, env, cwd) == env_file
    assert find_config(None, {}, cwd) == default
    assert find_config(None, {CONFIG_ENV: ""}, cwd) == default


def test_find_config_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        find_config(None, {}, tmp_path)
    assert "no config file" in str(info.value) and info.value.exit_code == 2
    assert "-c" in (info.value.hint or "") and "stackvault config example" in str(info.value)
    with pytest.raises(ConfigError, match="does not exist") as info:
        find_config(str(tmp_path / "nope.yaml"), {}, tmp_path)
    assert "check -c/--config" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="is not a file") as info:
        find_config(None, {CONFIG_ENV: str(tmp_path)}, tmp_path)
    assert CONFIG_ENV in (info.value.hint or "")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_config_option_is_global_and_hoisted() -> None:
    assert hoist_global_options(["config", "validate", "-c", "x.yaml", "--json"]) == \
        ["-c", "x.yaml", "--json", "config", "validate"]
    assert hoist_global_options(["backup", "--config=y.yaml"]) == ["--config=y.yaml", "backup"]


# --------------------------------------------------------------------------- example, docs


def test_example_loads_cleanly(tmp_path: Path) -> None:
    text = example_yaml()
    config = load_config(write(tmp_path, text))
    assert {n: c.type for n, c in config.components.items()} == {
        "app-db": "postgres", "jobs-db": "sqlite", "app-config": "files", "cache": "redis",
        "media": "s3", "vectors": "chroma", "vector-index": "qdrant"}
    assert restore_order(config) == [["app-config", "app-db", "cache", "media", "vector-index",
                                      "vectors"], ["jobs-db"]]
    assert text.startswith("# stackvault.yaml")


def test_example_mentions_every_setting_with_its_description() -> None:
    text = example_yaml()
    for model in (StackConfig, RepositoryConfig, Hooks, Hook, HttpCall, Targets,
                  *COMPONENT_TYPES.values()):
        for name, info in model.model_fields.items():
            assert f" {name}:" in text or f"\n{name}:" in text, f"{model.__name__}.{name}"
            first_line = " ".join((info.description or "").split())[:40]
            assert first_line.split()[0] in text, f"{model.__name__}.{name}"
    # uncommenting an optional setting keeps the example valid
    uncommented = text.replace("# pg_bin_dir:", "pg_bin_dir:").replace("# tables:", "tables:")
    assert check_text(uncommented).ok


def test_committed_reference_matches_the_schema() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/config-reference.md is out of date: run `python -m stackvault.config.docs`")


def test_reference_documents_every_field() -> None:
    text = reference_markdown()
    for model in (StackConfig, RepositoryConfig, Hooks, Hook, HttpCall, Targets,
                  *COMPONENT_TYPES.values()):
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{model.__name__}.{name}"
    assert "| `port` | integer (1 to 65535) | `5432` |" in text
    assert "| `timeout` | duration | `5m` |" in text
    assert "| `databases` | list of string (at least 1) | **required** |" in text
