"""The `notifications:` section of stackvault.yaml: where to report the outcome of backups,
restores, drills and integrity checks (JSON webhook, Slack, Discord, email, ping URLs)."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from stackvault.config.base import (
    _USERINFO,
    ConfigPath,
    Duration,
    EnvName,
    HeaderName,
    Loc,
    NonEmptyStr,
    TypeDoc,
    _error,
    _given,
    _Model,
)

# The jobs that report; `prune` and `check` are accepted already, for the scheduler.
Event = Literal["backup", "restore", "drill", "integrity", "prune", "check"]
EVENTS: tuple[Event, ...] = typing.get_args(Event)
Outcome = Literal["failure", "success"]


def _url(value: str) -> str:
    # Never echo the value: it may be a credential pasted by mistake.
    if not re.match(r"^https?://[^/\s]+", value):
        raise _error("url", "must be an http:// or https:// URL")
    if _USERINFO.search(value):
        raise _error("secret_in_config", "credentials do not belong in the URL: send them in "
                     "a header named in headers_env, or name an environment variable that "
                     "holds the whole URL in url_env")
    return value


Url = Annotated[str, AfterValidator(_url), TypeDoc("URL")]
_URL_SECRET = ("a webhook URL is its credential: never write it in stackvault.yaml; put it "
               "in an environment variable and name that in url_env")


class _Channel(_Model):
    """Fields every channel has."""

    name: NonEmptyStr | None = Field(
        None, description="A name for warnings about this channel (default: its type and "
                          "position, e.g. `slack #2`).", examples=["ops-team"])
    events: list[Event] = Field(
        list(EVENTS), min_length=1,
        description="The jobs it reports: `backup`, `restore`, `drill`, `integrity` (and, "
                    "for the scheduler, `prune`, `check`); default: all of them.",
        examples=[["backup", "drill"]])


class _MessageChannel(_Channel):
    """A channel that gets a message: webhook, Slack, Discord, email."""

    on: list[Outcome] = Field(
        ["failure"], min_length=1,
        description="Which outcomes it reports: `[failure]` (default) or "
                    "`[failure, success]`.", examples=[["failure", "success"]])

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean true (as in GitHub Actions files).
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


class WebhookChannel(_MessageChannel):
    """A generic webhook: a JSON document POSTed to a URL (see docs/notifications.md)."""

    secret_advice: ClassVar[str] = ("secrets are never written in stackvault.yaml: send them "
                                    "in headers read from environment variables (headers_env)")

    type: Literal["webhook"] = Field(description="webhook: POST a JSON document to a URL.")
    url: Url | None = Field(None, description="The URL (http or https, no credentials in it). "
                            "Give `url` or `url_env`.",
                            examples=["https://ops.example.com/hooks/stackvault"])
    url_env: EnvName | None = Field(
        None, description="Environment variable holding the URL, when the URL itself is a "
                          "secret.", examples=["OPS_WEBHOOK_URL"])
    headers_env: dict[HeaderName, EnvName] = Field(
        default_factory=dict,
        description="Request headers whose values are read from environment variables: "
                    "header name -> variable name.",
        examples=[{"Authorization": "OPS_WEBHOOK_TOKEN"}])

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        if len(_given(data, "url", "url_env")) != 1:
            return [((), "give exactly one of `url` or `url_env`")]
        return []


class SlackChannel(_MessageChannel):
    """A Slack incoming webhook."""

    secret_advice: ClassVar[str] = _URL_SECRET
    secret_keys: ClassVar[tuple[str, ...]] = ("url",)

    type: Literal["slack"] = Field(description="slack: a message to a Slack incoming webhook.")
    url_env: EnvName = Field(description="Environment variable holding the incoming webhook "
                             "URL (a secret: never in this file).",
                             examples=["SLACK_WEBHOOK_URL"])


class DiscordChannel(_MessageChannel):
    """A Discord channel webhook."""

    secret_advice: ClassVar[str] = _URL_SECRET
    secret_keys: ClassVar[tuple[str, ...]] = ("url",)

    type: Literal["discord"] = Field(description="discord: a message to a Discord webhook.")
    url_env: EnvName = Field(description="Environment variable holding the webhook URL (a "
                             "secret: never in this file).",
                             examples=["DISCORD_WEBHOOK_URL"])


class EmailChannel(_MessageChannel):
    """An email sent over SMTP."""

    secret_advice: ClassVar[str] = ("the SMTP password is never written in stackvault.yaml: "
                                    "use password_env (the name of an environment variable) "
                                    "or password_file (a file holding it)")

    type: Literal["email"] = Field(description="email: a message sent over SMTP.")
    host: NonEmptyStr = Field(description="The SMTP server.", examples=["smtp.example.com"])
    port: int | None = Field(None, ge=1, le=65535,
                             description="Its port; default: 587 with `starttls`, 465 with "
                                         "`ssl`, 25 with `none`.", examples=[587])
    security: Literal["starttls", "ssl", "none"] = Field(
        "starttls", description="`starttls` (upgrade the connection, the usual submission "
                                "port), `ssl` (TLS from the start) or `none` (plain text: "
                                "only on a trusted network; no login over it).")
    sender: NonEmptyStr = Field(description="The From address.",
                                examples=["stackvault@example.com"])
    to: list[NonEmptyStr] = Field(min_length=1, description="The recipients.",
                                  examples=[["ops@example.com"]])
    username: NonEmptyStr | None = Field(None, description="User to log in as; default: no "
                                         "login.", examples=["stackvault@example.com"])
    password_env: EnvName | None = Field(
        None, description="Environment variable holding the SMTP password (with `username`).",
        examples=["SMTP_PASSWORD"])
    password_file: ConfigPath | None = Field(
        None, description="File holding the SMTP password (its first line).",
        examples=["/run/secrets/smtp_password"])
    ca_file: ConfigPath | None = Field(
        None, description="PEM file of the certificate authorities to trust for the "
                          "server's certificate (`starttls`, `ssl`); default: the system's.",
        examples=["/etc/ssl/certs/internal-ca.pem"])
    subject_prefix: str = Field("[stackvault]", description="Put before every subject.")

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        out: list[tuple[Loc, str]] = []
        if len(_given(data, "password_env", "password_file")) > 1:
            out.append(((), "give at most one of password_env and password_file"))
        if _given(data, "password_env", "password_file") and not data.get("username"):
            out.append((("username",), "a password needs a `username` to log in with"))
        if data.get("username") and data.get("security") == "none":
            out.append((("security",), "no login over a plain-text connection: use "
                                       "`starttls` or `ssl`"))
        return out


class PingChannel(_Channel):
    """Ping URLs, healthchecks-style: `url + start` when a job starts, `url + success` or
    `url + fail` when it ends (every time: the monitor alerts when pings stop)."""

    type: Literal["ping"] = Field(description="ping: healthchecks-style start/success/fail "
                                  "URLs (healthchecks.io, Uptime Kuma, Cronitor...).")
    url: Url | None = Field(None, description="The base ping URL (no credentials in it). "
                            "Give `url` or `url_env`.",
                            examples=["https://hc-ping.com/0f6c2b7e-9b7d-4f3b-8a3e-1c2d3e4f5a6b"])
    url_env: EnvName | None = Field(
        None, description="Environment variable holding the base ping URL (when it is a "
                          "secret).", examples=["BACKUP_PING_URL"])
    start: str | None = Field("/start", description="Added to the URL when a job starts; "
                              "null: no start ping.")
    success: str = Field("", description="Added to the URL when a job succeeded.")
    fail: str = Field("/fail", description="Added to the URL when a job failed.")
    method: Literal["POST", "GET"] = Field(
        "POST", description="`POST` (success and fail pings carry a short report in the "
                            "body) or `GET` (no body).")

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        if len(_given(data, "url", "url_env")) != 1:
            return [((), "give exactly one of `url` or `url_env`")]
        return []


CHANNEL_TYPES: dict[str, type[_Channel]] = {
    "webhook": WebhookChannel, "slack": SlackChannel, "discord": DiscordChannel,
    "email": EmailChannel, "ping": PingChannel}
Channel = Annotated[WebhookChannel | SlackChannel | DiscordChannel | EmailChannel | PingChannel,
                    Field(discriminator="type"),
                    TypeDoc("channel (by `type`: [webhook](#channel-webhook), "
                            "[slack](#channel-slack), [discord](#channel-discord), "
                            "[email](#channel-email), [ping](#channel-ping))")]


class NotificationsConfig(_Model):
    """Where StackVault reports the outcome of its jobs. A channel that cannot be reached
    never fails the job: it is reported as a warning."""

    channels: list[Channel] = Field(default_factory=list,
                                    description="The channels, each with a `type`.")
    timeout: Duration = Field(default=10, description="How long each channel may take (they are "
                              "tried at the same time).")
    stack_name: NonEmptyStr | None = Field(
        default=None, description="How messages name this stack; default: the name of the config "
                          "file's folder.", examples=["rag-prod"])


# For docs.py: (title, anchor, model, only its own fields).
DOC_SECTIONS: list[tuple[str, str, type[BaseModel], bool]] = [
    ("notifications", "notifications", NotificationsConfig, False),
    ("A channel, type: webhook", "channel-webhook", WebhookChannel, False),
    ("A channel, type: slack", "channel-slack", SlackChannel, False),
    ("A channel, type: discord", "channel-discord", DiscordChannel, False),
    ("A channel, type: email", "channel-email", EmailChannel, False),
    ("A channel, type: ping", "channel-ping", PingChannel, False),
]
