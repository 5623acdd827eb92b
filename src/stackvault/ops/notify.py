"""Notifications: report the outcome of a job to the config's channels (JSON webhook, Slack,
Discord, email over SMTP, healthchecks-style ping URLs).

Contract (docs/notifications.md):

- A notification never changes what the job did or its exit code. A channel that is down,
  slow, misconfigured or refuses the message gives one warning on standard error
  (``warning: notification to slack #1 failed: ...``) and the next channel is tried anyway.
- Channels are tried at the same time, each for at most ``notifications.timeout``.
- Messages say what happened (stack, host, event, outcome, snapshot id, duration, errors)
  and never a secret: every value of an environment variable the config names (``*_env``,
  ``headers_env``), or whose name says it is secret, and the SMTP password are replaced by
  ``***`` wherever they would appear; webhook URLs are never printed in warnings.
- :func:`job` wraps a job: a ``start`` ping before it, then the outcome (``success`` or
  ``failure`` with the exception's message) to every channel that takes it.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from stackvault import __version__

PAYLOAD_VERSION = 1
DISCORD_LIMIT = 2000  # characters of a Discord message
_SECRET_NAMES = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "APIKEY", "ACCESS_KEY",
                 "WEBHOOK")
_MIN_SECRET = 6  # shorter values are not scrubbed (they would mangle ordinary words)

Warn = Callable[[str], None]


class ChannelError(Exception):
    """A channel could not deliver; the message is safe to print (no URL, no secret)."""


@dataclass
class Delivery:
    """What happened to one channel: delivered, or the reason it was not."""

    channel: str
    ok: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "ok": self.ok, "error": self.error}


@dataclass
class Job:
    """Handed out by :func:`job`: what the caller learnt while the job ran."""

    event: str
    summary: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def record(self, *, errors: list[str] | None = None, **summary: Any) -> None:
        """Add facts for the message (snapshot=..., components=...) and errors; any error
        makes the outcome a failure even when no exception is raised."""
        self.summary.update(summary)
        self.errors += list(errors or [])


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- entry points


@contextmanager
def job(config: Any, event: str, *, env: Mapping[str, str] | None = None,
        warn: Warn | None = None) -> Iterator[Job]:
    """Report a job: the ping channels get `start` now; when the block ends every matching
    channel gets the outcome: `failure` if it raised (the exception's message is the error;
    the exception goes on) or recorded errors, else `success`."""
    env = os.environ if env is None else env
    current = Job(event)
    down: set[str] = set()  # pings whose start failed: warned once, not again at the end

    def start() -> None:
        down.update(d.channel for d in _pings(config, event, "start", env, warn or _stderr)
                    if not d.ok)

    _safely(start, warn)
    started = time.monotonic()
    try:
        yield current
    except BaseException as exc:
        error = None if _is_clean_exit(exc) else _describe(exc)
        _finish(config, current, started, error, env, warn, down)
        raise
    _finish(config, current, started, None, env, warn, down)


def notify(config: Any, event: str, outcome: str, summary: Mapping[str, Any], *,
           env: Mapping[str, str] | None = None, warn: Warn | None = None) -> list[Delivery]:
    """Send `outcome` (`failure` or `success`) of `event` (`backup`, `drill`...) to every
    channel that takes both; ping channels get their success or fail URL. Never raises: a
    channel that fails is a warning (via `warn`, default: standard error) and a Delivery
    with ok=False."""
    return _notify(config, event, outcome, summary, os.environ if env is None else env,
                   warn or _stderr, set())


def _notify(config: Any, event: str, outcome: str, summary: Mapping[str, Any],
            env: Mapping[str, str], warn: Warn, warned: set[str]) -> list[Delivery]:
    try:
        return _send_all(config, event, outcome, dict(summary), env, warn, warned)
    except Exception as exc:  # noqa: BLE001 - a notification must never fail the job
        warn(f"notifications failed: {type(exc).__name__}")
        return []


# --------------------------------------------------------------------------- internals


def _finish(config: Any, current: Job, started: float, error: str | None,
            env: Mapping[str, str], warn: Warn | None, warned: set[str]) -> None:
    errors = current.errors + ([error] if error else [])
    summary = {**current.summary, "duration_seconds": round(time.monotonic() - started, 3),
               "errors": errors}
    _notify(config, current.event, "failure" if errors else "success", summary, env,
            warn or _stderr, warned)


def _is_clean_exit(exc: BaseException) -> bool:
    if isinstance(exc, SystemExit):
        return exc.code in (0, None)
    return type(exc).__name__ == "Exit" and getattr(exc, "exit_code", 1) == 0  # typer/click


def _describe(exc: BaseException) -> str:
    from stackvault.errors import StackVaultError

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, StackVaultError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _safely(action: Callable[[], Any], warn: Warn | None) -> None:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - a notification must never fail the job
        (warn or _stderr)(f"notifications failed: {type(exc).__name__}")


def _channels(config: Any) -> list[Any]:
    section = getattr(config, "notifications", None)
    return list(getattr(section, "channels", None) or [])


def _label(channel: Any, index: int) -> str:
    return channel.name or f"{channel.type} #{index + 1}"


def _stack_name(config: Any) -> str:
    name = getattr(getattr(config, "notifications", None), "stack_name", None)
    if name:
        return str(name)
    source = getattr(config, "source", None)
    return Path(source).resolve().parent.name if source else "stack"


def _timeout(config: Any) -> float:
    return float(getattr(getattr(config, "notifications", None), "timeout", None) or 10)


def _send_all(config: Any, event: str, outcome: str, summary: dict[str, Any],
              env: Mapping[str, str], warn: Warn, warned: set[str]) -> list[Delivery]:
    if not _channels(config):
        return []
    tasks: list[tuple[str, Callable[[], None]]] = []
    secrets = _secrets(config, env)
    payload = _scrub(_payload(config, event, outcome, summary), secrets)
    timeout = _timeout(config)
    for i, ch in enumerate(_channels(config)):
        if event not in ch.events:
            continue
        if ch.type == "ping":
            signal = "success" if outcome == "success" else "fail"
            tasks.append((_label(ch, i), _bind(_ping, ch, signal, payload, env, timeout)))
        elif outcome in ch.on:
            sender = _SENDERS[ch.type]
            tasks.append((_label(ch, i), _bind(sender, ch, payload, env, timeout, secrets)))
    return _run(tasks, event, secrets, warn, warned)


def _pings(config: Any, event: str, signal: str, env: Mapping[str, str],
           warn: Warn) -> list[Delivery]:
    tasks = [(_label(ch, i), _bind(_ping, ch, signal, None, env, _timeout(config)))
             for i, ch in enumerate(_channels(config))
             if ch.type == "ping" and event in ch.events and
             (signal != "start" or ch.start is not None)]
    return _run(tasks, event, _secrets(config, env), warn, set())


def _bind(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: fn(*args)


def _run(tasks: list[tuple[str, Callable[[], None]]], event: str, secrets: list[str],
         warn: Warn, warned: set[str]) -> list[Delivery]:
    if not tasks:
        return []

    def attempt(task: tuple[str, Callable[[], None]]) -> Delivery:
        label, send = task
        try:
            send()
            return Delivery(label, True)
        except ChannelError as exc:
            return Delivery(label, False, _scrub_text(str(exc), secrets))
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            return Delivery(label, False, _scrub_text(f"{type(exc).__name__}: {exc}", secrets))

    with ThreadPoolExecutor(max_workers=min(len(tasks), 8),
                            thread_name_prefix="notify") as pool:
        results = list(pool.map(attempt, tasks))
    for r in results:
        if not r.ok and r.channel not in warned:
            warn(f"notification to {r.channel} failed: {r.error} (the {event} itself is not "
                 f"affected)")
    return results


# --------------------------------------------------------------------------- messages


def _payload(config: Any, event: str, outcome: str, summary: dict[str, Any]) -> dict[str, Any]:
    stack = _stack_name(config)
    host = socket.gethostname()
    errors = [str(e) for e in summary.get("errors") or []]
    word = "succeeded" if outcome == "success" else "FAILED"
    title = f"StackVault: {event} {word} on {stack} ({host})"
    facts = []
    if summary.get("snapshot"):
        facts.append(f"snapshot {str(summary['snapshot'])[:8]}")
    if summary.get("status"):
        facts.append(f"status {summary['status']}")
    if summary.get("duration_seconds") is not None:
        facts.append(f"took {float(summary['duration_seconds']):.1f}s")
    lines = [title] + ([", ".join(facts)] if facts else [])
    lines += [f"- {e}" for e in errors[:10]]
    if len(errors) > 10:
        lines.append(f"- ... {len(errors) - 10} more")
    body = {k: v for k, v in summary.items() if k != "errors"}
    return {"source": "stackvault", "version": PAYLOAD_VERSION, "stackvault": __version__,
            **body, "stack": stack, "host": host, "event": event, "outcome": outcome,
            "time": datetime.now(UTC).isoformat(timespec="seconds"), "errors": errors,
            "title": title, "text": "\n".join(lines)}


def _secrets(config: Any, env: Mapping[str, str]) -> list[str]:
    """Values never to send or print: of every environment variable the config names and
    of every variable whose name says it holds a secret."""
    names: set[str] = set()

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if str(k) == "headers_env" and isinstance(v, dict):
                    names.update(str(x) for x in v.values())
                else:
                    walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and key.endswith("_env"):
            names.add(node)

    try:
        walk(config.model_dump(mode="json"))
    except AttributeError:
        pass
    names.update(n for n in env if any(m in n.upper() for m in _SECRET_NAMES))
    values = {env[n] for n in names if n in env and len(env[n]) >= _MIN_SECRET}
    values |= {p for p in (_smtp_password(ch, env, quiet=True) for ch in _channels(config)
                           if ch.type == "email") if p and len(p) >= _MIN_SECRET}
    return sorted(values, key=len, reverse=True)


def _scrub_text(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return _scrub_text(value, secrets)
    if isinstance(value, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets) for v in value]
    return value


# --------------------------------------------------------------------------- HTTP channels


def _url(channel: Any, env: Mapping[str, str]) -> str:
    var = getattr(channel, "url_env", None)
    if var:
        url = env.get(var, "").strip()
        if not url:
            raise ChannelError(f"${var} (the URL) is not set")
        if not url.lower().startswith(("http://", "https://")):
            raise ChannelError(f"${var} does not hold an http:// or https:// URL")
        return url
    return str(channel.url)


def _http(url: str, *, data: bytes | None, headers: dict[str, str], timeout: float,
          method: str = "POST") -> None:
    req = urllib.request.Request(url, data=data, method=method, headers={
        "User-Agent": f"stackvault/{__version__}", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user URL
            resp.read(65536)
            if resp.status >= 400:
                raise ChannelError(f"the server answered HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        raise ChannelError(f"the server answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:  # never str(exc) or the URL: it may be a secret
        raise ChannelError(f"unreachable ({_reason(exc.reason)})") from None
    except TimeoutError:
        raise ChannelError(f"no answer within {timeout:.0f}s") from None
    except OSError as exc:
        raise ChannelError(f"unreachable ({_reason(exc)})") from None


def _reason(reason: Any) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if isinstance(reason, BaseException) else str(reason)


def _json_post(url: str, body: dict[str, Any], headers: dict[str, str],
               timeout: float) -> None:
    _http(url, data=json.dumps(body, ensure_ascii=False).encode(), timeout=timeout,
          headers={"Content-Type": "application/json", **headers})


def _send_webhook(ch: Any, payload: dict[str, Any], env: Mapping[str, str], timeout: float,
                  secrets: list[str]) -> None:
    headers = {h: env[v] for h, v in ch.headers_env.items() if v in env}
    missing = [v for v in ch.headers_env.values() if v not in env]
    if missing:
        raise ChannelError(f"${missing[0]} (a header) is not set")
    _json_post(_url(ch, env), payload, headers, timeout)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _send_slack(ch: Any, payload: dict[str, Any], env: Mapping[str, str], timeout: float,
                secrets: list[str]) -> None:
    title, _, rest = payload["text"].partition("\n")
    text = f"*{_slack_escape(title)}*" + (f"\n{_slack_escape(rest)}" if rest else "")
    _json_post(_url(ch, env), {"text": text}, {}, timeout)


def _send_discord(ch: Any, payload: dict[str, Any], env: Mapping[str, str], timeout: float,
                  secrets: list[str]) -> None:
    title, _, rest = payload["text"].partition("\n")
    text = f"**{title}**" + (f"\n{rest}" if rest else "")
    if len(text) > DISCORD_LIMIT:
        text = text[:DISCORD_LIMIT - 1] + "…"
    # No pings from error text (an "@everyone" in a message must not alert a server).
    _json_post(_url(ch, env), {"content": text, "username": "StackVault",
                               "allowed_mentions": {"parse": []}}, {}, timeout)


def _ping_url(base: str, suffix: str) -> str:
    """`https://hc/ping/ID` + `/start`; a query string stays at the end."""
    if not suffix:
        return base
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))


def _ping(ch: Any, signal: str, payload: dict[str, Any] | None, env: Mapping[str, str],
          timeout: float) -> None:
    suffix = {"start": ch.start, "success": ch.success, "fail": ch.fail}[signal] or ""
    url = _ping_url(_url(ch, env), suffix)
    data = None
    if ch.method == "POST":
        data = (payload["text"] if payload else "").encode()
    _http(url, data=data, method=ch.method, timeout=timeout,
          headers={"Content-Type": "text/plain; charset=utf-8"} if data is not None else {})


# --------------------------------------------------------------------------- email


def _smtp_password(ch: Any, env: Mapping[str, str], *, quiet: bool = False) -> str | None:
    if ch.password_env:
        if ch.password_env not in env:
            if quiet:
                return None
            raise ChannelError(f"${ch.password_env} (the SMTP password) is not set")
        return env[ch.password_env]
    if ch.password_file is not None:
        try:
            with open(ch.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as exc:
            if quiet:
                return None
            raise ChannelError(f"cannot read the SMTP password file: {exc.strerror}") from None
    return None


def _send_email(ch: Any, payload: dict[str, Any], env: Mapping[str, str], timeout: float,
                secrets: list[str]) -> None:
    msg = EmailMessage()
    title = payload["title"].removeprefix("StackVault: ")
    msg["Subject"] = f"{ch.subject_prefix} {title}".strip()
    msg["From"] = ch.sender
    msg["To"] = ", ".join(ch.to)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=ch.sender.rpartition("@")[2] or None)
    details = json.dumps({k: v for k, v in payload.items() if k not in ("text", "title")},
                         indent=2, ensure_ascii=False, default=str)
    msg.set_content(f"{payload['text']}\n\n-- \nDetails:\n{details}\n")
    password = _smtp_password(ch, env)
    context = ssl.create_default_context(cafile=str(ch.ca_file) if ch.ca_file else None)
    port = ch.port or {"starttls": 587, "ssl": 465, "none": 25}[ch.security]
    try:
        smtp: smtplib.SMTP
        if ch.security == "ssl":
            smtp = smtplib.SMTP_SSL(ch.host, port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(ch.host, port, timeout=timeout)
        with smtp:
            if ch.security == "starttls":
                smtp.starttls(context=context)
            if ch.username:
                smtp.login(ch.username, password or "")
            smtp.send_message(msg)
    except smtplib.SMTPAuthenticationError as exc:
        raise ChannelError(f"the SMTP server refused the login ({exc.smtp_code})") from None
    except smtplib.SMTPNotSupportedError:
        raise ChannelError("the SMTP server does not offer STARTTLS or login") from None
    except smtplib.SMTPResponseException as exc:
        raise ChannelError(f"the SMTP server answered {exc.smtp_code}") from None
    except smtplib.SMTPException as exc:
        raise ChannelError(f"SMTP failed ({type(exc).__name__})") from None
    except ssl.SSLError as exc:
        raise ChannelError(f"TLS failed ({exc.reason or type(exc).__name__})") from None
    except TimeoutError:
        raise ChannelError(f"no answer within {timeout:.0f}s") from None
    except OSError as exc:
        raise ChannelError(f"unreachable ({_reason(exc)})") from None


_SENDERS: dict[str, Callable[..., None]] = {
    "webhook": _send_webhook, "slack": _send_slack, "discord": _send_discord,
    "email": _send_email}
