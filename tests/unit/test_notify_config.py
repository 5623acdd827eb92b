"""The `notifications:` section: validation, secrets refused, example and reference; the pure
helpers of ops/notify.py (ping URLs, scrubbing, the message)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackvault.config.docs import reference_markdown
from stackvault.config.example import example_yaml
from stackvault.config.loader import check_text, load_config
from stackvault.config.notify_schema import (
    CHANNEL_TYPES,
    EVENTS,
    NotificationsConfig,
    PingChannel,
)
from stackvault.ops import notify

BASE = """\
version: 1
repository: {location: /tmp/repo}
components:
  app: {type: files, paths: [/tmp/app]}
notifications:
"""


def problems(text: str) -> dict[str, str]:
    result = check_text(BASE + text)
    assert not result.ok
    return {p.path: p.message for p in result.problems}


def test_channels_parse_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "stackvault.yaml"
    path.write_text(BASE + """\
  channels:
    - type: slack
      url_env: SLACK_WEBHOOK_URL
    - type: email
      host: smtp.example.com
      sender: a@example.com
      to: [b@example.com]
      on: [failure, success]
    - {type: ping, url: "https://hc-ping.com/abc", events: [backup]}
""")
    config = load_config(path)
    slack, email, ping = config.notifications.channels
    assert slack.on == ["failure"] and slack.events == list(EVENTS)
    assert email.on == ["failure", "success"] and email.security == "starttls"
    assert email.port is None and email.subject_prefix == "[stackvault]"
    assert isinstance(ping, PingChannel) and (ping.start, ping.success, ping.fail) == (
        "/start", "", "/fail")
    assert config.notifications.timeout == 10
    # A config without the section has no channels.
    assert NotificationsConfig().channels == []


@pytest.mark.parametrize("channel, path, words", [
    ("{type: slack, url: 'https://hooks.slack.com/services/T0/B0/XYZ'}",
     "notifications.channels[0].url", "credential"),
    ("{type: discord, url: 'https://discord.com/api/webhooks/1/XYZ'}",
     "notifications.channels[0].url", "url_env"),
    ("{type: email, host: h, sender: a, to: [b], username: u, password: XYZ}",
     "notifications.channels[0].password", "password_env"),
    ("{type: webhook, url: 'https://user:XYZ@example.com/hook'}",
     "notifications.channels[0].url", "credentials"),
    ("{type: webhook, url: 'https://example.com/hook', token: XYZ}",
     "notifications.channels[0].token", "headers_env"),
])
def test_secrets_in_the_file_are_refused_and_not_echoed(channel: str, path: str,
                                                        words: str) -> None:
    found = problems(f"  channels: [{channel}]\n")
    assert words in found[path]
    assert all("XYZ" not in m for m in found.values())


def test_mistakes_are_named() -> None:
    found = problems("""\
  channels:
    - {type: slak, url_env: X}
    - {url_env: X}
    - {type: webhook}
    - {type: ping, url: "https://x", url_env: Y}
    - {type: slack, url_env: X, on: [always], events: [lunch]}
    - {type: email, host: h, sender: a, to: [b], username: u, security: none}
    - {type: email, host: h, sender: a, to: [], password_env: P}
""")
    assert "unknown type 'slak'" in found["notifications.channels[0]"]
    assert "webhook, slack, discord, email, ping" in found["notifications.channels[1]"]
    assert "exactly one of `url` or `url_env`" in found["notifications.channels[2]"]
    assert "exactly one of `url` or `url_env`" in found["notifications.channels[3]"]
    assert "notifications.channels[4].on[0]" in found
    assert "notifications.channels[4].events[0]" in found
    assert "plain-text" in found["notifications.channels[5].security"]
    assert "username" in found["notifications.channels[6].username"]
    assert "notifications.channels[6].to" in found


def test_a_bare_on_key_is_read_as_on_not_as_true() -> None:
    # YAML 1.1 reads `on:` as the boolean true; the section takes it as meant.
    result = check_text(BASE + "  channels:\n    - type: slack\n      url_env: X\n"
                               "      on: [success]\n")
    assert result.ok and result.config is not None
    assert result.config.notifications.channels[0].on == ["success"]


def test_example_and_reference_show_every_notification_setting() -> None:
    example, reference = example_yaml(), reference_markdown()
    assert check_text(example).ok
    for model in (NotificationsConfig, *CHANNEL_TYPES.values()):
        for name in model.model_fields:
            assert f" {name}:" in example, f"{model.__name__}.{name} not in the example"
            assert f"| `{name}` |" in reference, f"{model.__name__}.{name}"
    for kind in CHANNEL_TYPES:
        assert f'<a id="channel-{kind}"></a>' in reference
        assert f"- type: {kind}" in example


def test_ping_urls_keep_their_query() -> None:
    assert notify._ping_url("https://hc/ping/abc", "/start") == "https://hc/ping/abc/start"
    assert notify._ping_url("https://hc/ping/abc/", "/fail") == "https://hc/ping/abc/fail"
    assert notify._ping_url("https://hc/ping/abc", "") == "https://hc/ping/abc"
    assert notify._ping_url("http://k/api/push/t?status=up", "/start") == \
        "http://k/api/push/t/start?status=up"


def test_messages_are_scrubbed_of_named_secrets(tmp_path: Path) -> None:
    path = tmp_path / "stackvault.yaml"
    path.write_text(BASE + "  channels:\n    - {type: slack, url_env: HOOK}\n")
    config = load_config(path)
    env = {"HOOK": "https://hooks.example/T0/SECRETPART", "DB_PASSWORD": "hunter2-db",
           "PATH": "/usr/bin"}
    secrets = notify._secrets(config, env)
    assert set(secrets) == {"https://hooks.example/T0/SECRETPART", "hunter2-db"}
    payload = notify._scrub(notify._payload(config, "backup", "failure", {
        "errors": ["app: login failed for hunter2-db"], "snapshot": "ab" * 32}), secrets)
    assert payload["errors"] == ["app: login failed for ***"]
    assert "hunter2" not in payload["text"] and payload["outcome"] == "failure"
    assert payload["stack"] == tmp_path.name and payload["snapshot"] == "ab" * 32
    assert payload["title"].startswith("StackVault: backup FAILED on ")


def test_notify_without_channels_sends_nothing() -> None:
    assert notify.notify(object(), "backup", "failure", {}) == []
