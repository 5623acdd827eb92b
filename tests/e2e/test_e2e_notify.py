"""Notifications end to end: the CLI as a subprocess reports backups, drills and integrity
checks to a local HTTP receiver (webhook, Slack, Discord, ping URLs) and a local SMTP server
(aiosmtpd, STARTTLS with a login); channels that are down never change the exit code, and no
secret (webhook URLs, tokens, the SMTP password) ever shows in the output."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import PASSWORD, SV, WRONG_PASSWORD, Result, base_env

from support.receivers import (
    HttpReceiver,
    SmtpReceiver,
    closed_port,
    http_receiver,
    self_signed_cert,
    smtp_receiver,
)

SLACK_TOKEN = "T0STACK/B0VAULT/slackHookPart9321"  # the secret part of a Slack webhook URL
DISCORD_TOKEN = "1234567890/discordHookPart-Lima-4417"
WEBHOOK_TOKEN = "Bearer wh-Tok-Mike-5521"
SMTP_PASSWORD = "smtp-Pw-November-8830"
SMTP_USER = "stackvault@example.test"


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    with http_receiver() as r:
        yield r


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[SmtpReceiver, Path]]:
    cert, key = self_signed_cert(tmp_path)
    with smtp_receiver(tls=(cert, key), users={SMTP_USER: SMTP_PASSWORD}) as server:
        yield server, cert


def secrets(http: HttpReceiver) -> dict[str, str]:
    return {"SLACK_WEBHOOK_URL": f"{http.url}/slack/{SLACK_TOKEN}",
            "DISCORD_WEBHOOK_URL": f"{http.url}/discord/{DISCORD_TOKEN}",
            "WEBHOOK_AUTH": WEBHOOK_TOKEN, "SMTP_PASSWORD": SMTP_PASSWORD}


def assert_no_secrets(res: Result, http: HttpReceiver) -> None:
    for value in [*secrets(http).values(), SLACK_TOKEN, DISCORD_TOKEN, "slackHookPart",
                  "discordHookPart"]:
        assert value.encode() not in res.out, f"{value!r} on stdout\n{res}"
        assert value not in res.err, f"{value!r} on stderr\n{res}"


def make_stack(d: Path, channels: str, *, broken_cache: bool = False,
               extra: str = "") -> SV:
    """A stack with a files component (and a Redis on a closed port, which fails)."""
    conf = d / "conf"
    conf.mkdir()
    (conf / "settings.yaml").write_text("chunk_size: 512\n")
    cache = (f"""
  cache:
    type: redis
    url: redis://127.0.0.1:{closed_port()}
""" if broken_cache else "")
    (d / "stackvault.yaml").write_text(f"""
version: 1
repository:
  location: {d / "repo"}
components:
  config:
    type: files
    paths: [{conf}]
{cache}{extra}
notifications:
  stack_name: rag-test
  timeout: 5s
  channels:
{channels}
""")
    sv = SV(None, base_env(STACKVAULT_PASSWORD=PASSWORD,
                           STACKVAULT_CONFIG=str(d / "stackvault.yaml")))
    sv.ok("init")
    return sv


def all_channels(http: HttpReceiver, smtp: SmtpReceiver, ca: Path, **on: str) -> str:
    def o(kind: str) -> str:
        return f"    on: {on[kind]}\n" if kind in on else ""

    return f"""\
  - type: webhook
    url: {http.url}/hook
    headers_env: {{Authorization: WEBHOOK_AUTH}}
{o("webhook")}\
  - type: slack
    url_env: SLACK_WEBHOOK_URL
{o("slack")}\
  - type: discord
    url_env: DISCORD_WEBHOOK_URL
{o("discord")}\
  - type: email
    name: ops-mail
    host: 127.0.0.1
    port: {smtp.port}
    security: starttls
    ca_file: {ca}
    sender: {SMTP_USER}
    to: [ops@example.test, oncall@example.test]
    username: {SMTP_USER}
    password_env: SMTP_PASSWORD
{o("email")}\
  - type: ping
    url: {http.url}/ping/0f6c2b7e
    events: [backup]
"""


def test_a_failing_backup_is_reported_on_every_channel(
        tmp_path: Path, http: HttpReceiver, smtp: tuple[SmtpReceiver, Path]) -> None:
    server, ca = smtp
    sv = make_stack(tmp_path, all_channels(http, server, ca), broken_cache=True)
    res = sv("backup", env=secrets(http))
    assert res.rc == 3, str(res)  # the backup's own exit code: partial
    assert "warning" not in res.err, str(res)
    assert_no_secrets(res, http)

    (hook,) = http.to("/hook")
    assert hook.method == "POST" and hook.headers["Authorization"] == WEBHOOK_TOKEN
    doc = hook.json()
    assert doc["source"] == "stackvault" and doc["stack"] == "rag-test"
    assert (doc["event"], doc["outcome"]) == ("backup", "failure")
    assert doc["components"] == {"config": "ok", "cache": "failed"}
    assert len(doc["snapshot"]) == 64 and doc["duration_seconds"] > 0
    (error,) = doc["errors"]
    assert error.startswith("cache: ") and len(error) > len("cache: ") + 5

    (slack,) = http.to(f"/slack/{SLACK_TOKEN}")
    assert "backup FAILED on rag-test" in slack.json()["text"]
    assert error.split(": ", 1)[1][:30] in slack.json()["text"].replace("&gt;", ">")
    (discord,) = http.to(f"/discord/{DISCORD_TOKEN}")
    body = discord.json()
    assert "backup FAILED on rag-test" in body["content"] and "cache: " in body["content"]
    assert body["allowed_mentions"] == {"parse": []}

    (mail,) = server.mails
    assert mail.login == SMTP_USER and server.logins == [(SMTP_USER, True)]
    assert mail.recipients == ["ops@example.test", "oncall@example.test"]
    assert "backup FAILED on rag-test" in mail.subject and mail.subject.startswith("[stackvault]")
    assert "cache: " in mail.body and doc["snapshot"][:8] in mail.body

    # ping: start before the job, fail after it, with the errors in the body
    assert [r.path for r in http.requests if r.path.startswith("/ping/")] == [
        "/ping/0f6c2b7e/start", "/ping/0f6c2b7e/fail"]
    assert "cache: " in http.to("/ping/0f6c2b7e/fail")[0].text

    # nothing secret in anything sent
    for r in http.requests:
        for value in (SMTP_PASSWORD, WEBHOOK_TOKEN):
            assert value.encode() not in r.body
    assert SMTP_PASSWORD not in mail.message.as_string()


def test_a_successful_backup_is_sent_only_where_asked(
        tmp_path: Path, http: HttpReceiver, smtp: tuple[SmtpReceiver, Path]) -> None:
    server, ca = smtp
    sv = make_stack(tmp_path, all_channels(http, server, ca, slack="[failure, success]"))
    res = sv("--json", "backup", env=secrets(http))
    assert res.rc == 0, str(res)
    assert res.json()["complete"] is True  # stdout stays one JSON document
    assert_no_secrets(res, http)
    assert http.to("/hook") == [] and http.to(f"/discord/{DISCORD_TOKEN}") == []
    assert server.mails == []
    (slack,) = http.to(f"/slack/{SLACK_TOKEN}")
    assert "backup succeeded on rag-test" in slack.json()["text"]
    # ping: start, then the success URL (no suffix)
    assert [r.path for r in http.requests if r.path.startswith("/ping/")] == [
        "/ping/0f6c2b7e/start", "/ping/0f6c2b7e"]


def test_a_backup_that_cannot_start_pings_fail_with_the_error(
        tmp_path: Path, http: HttpReceiver) -> None:
    sv = make_stack(tmp_path, f"""\
  - type: ping
    url: {http.url}/ping/abc?source=stackvault
  - type: webhook
    url: {http.url}/hook
""")
    res = sv("backup", env={"STACKVAULT_PASSWORD": WRONG_PASSWORD})
    assert res.rc == 12, str(res)  # wrong password, as without notifications
    paths = http.paths()  # the end ping and the webhook are sent at the same time
    assert paths[0] == "/ping/abc/start?source=stackvault"  # a query string stays at the end
    assert sorted(paths[1:]) == ["/hook", "/ping/abc/fail?source=stackvault"]
    doc = http.to("/hook")[0].json()
    assert doc["outcome"] == "failure" and "password" in doc["errors"][0]
    assert WRONG_PASSWORD not in http.to("/hook")[0].text
    assert "password" in http.to("/ping/abc/fail")[0].text


def test_a_channel_that_is_down_only_warns(tmp_path: Path, http: HttpReceiver) -> None:
    dead = closed_port()
    sv = make_stack(tmp_path, f"""\
  - type: slack
    url_env: SLACK_WEBHOOK_URL
    on: [failure, success]
  - type: email
    host: 127.0.0.1
    port: {dead}
    security: none
    sender: a@example.test
    to: [b@example.test]
    on: [failure]
  - type: webhook
    url: {http.url}/hook
    on: [failure, success]
  - type: ping
    url: http://127.0.0.1:{dead}/ping/abc
""", broken_cache=False)
    down = {"SLACK_WEBHOOK_URL": f"http://127.0.0.1:{dead}/slack/{SLACK_TOKEN}"}
    res = sv("backup", env=down)
    assert res.rc == 0, str(res)
    warnings = [line for line in res.err.splitlines() if line.startswith("warning:")]
    # one warning per channel that is down (the ping's start and success: one); the email
    # channel takes failures only
    assert len(warnings) == 2, str(res)
    assert ["ping #4" in w for w in warnings] == [True, False]  # the start ping, first
    assert all("unreachable (Connection refused)" in w for w in warnings)
    assert "slack #1" in warnings[1]
    assert SLACK_TOKEN not in res.err and str(dead) not in res.err
    assert http.to("/hook")[0].json()["outcome"] == "success"  # the others still get it

    # A failing backup with both down: the exit code is the backup's own (3), two warnings.
    (tmp_path / "stackvault.yaml").write_text(
        (tmp_path / "stackvault.yaml").read_text().replace(
            "components:\n", f"components:\n  cache:\n    type: redis\n"
                             f"    url: redis://127.0.0.1:{dead}\n", 1))
    res = sv("backup", env=down)
    assert res.rc == 3, str(res)
    warnings = [line for line in res.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3 and any("email #2" in w for w in warnings), str(res)
    assert SLACK_TOKEN not in res.err


def test_drill_and_integrity_check_report(tmp_path: Path, http: HttpReceiver) -> None:
    db = tmp_path / "app.db"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE jobs(id INTEGER PRIMARY KEY, state TEXT);"
                      "INSERT INTO jobs(state) VALUES ('done'), ('broken');")
    con.commit()
    con.close()
    sv = make_stack(tmp_path, f"""\
  - type: webhook
    url: {http.url}/hook
    on: [failure, success]
    events: [drill, integrity]
""", extra=f"""\
  app_db:
    type: sqlite
    path: {db}
integrity:
  rules:
    - name: no broken jobs
      type: custom
      component: app_db
      sql: "SELECT id FROM jobs WHERE state = 'broken'"
""")
    sv.ok("backup")
    assert http.requests == []  # backups are not among this channel's events
    sv.ok("drill")
    (drill,) = [r.json() for r in http.to("/hook")]
    assert (drill["event"], drill["outcome"]) == ("drill", "success")
    assert drill["errors"] == [] and drill["rto_seconds"] >= 0 and len(drill["snapshot"]) == 64
    res = sv("integrity", "check")
    assert res.rc == 21, str(res)
    check = http.to("/hook")[1].json()
    assert (check["event"], check["outcome"], check["status"]) == (
        "integrity", "failure", "critical")
    assert check["errors"] == ["no broken jobs: critical"]
