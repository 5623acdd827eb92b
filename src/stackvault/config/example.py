"""A commented example stackvault.yaml, written from the schema's field descriptions."""

from __future__ import annotations

import textwrap
import typing
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from stackvault.config.schema import (
    StackConfig,
    TypeDoc,
    format_duration,
    union_members,
    unwrap,
)

WIDTH = 92

HEADER = """\
# stackvault.yaml: one StackVault config for a whole stack, here PostgreSQL + SQLite + files.
# Written by `stackvault config example` from the schema; every setting is described in
# docs/config-reference.md. Check it with `stackvault config validate`.
#
# Lines like `# key: value` show optional settings with their default or an example value.
# Secrets are never written in this file: name the environment variables or files that hold
# them. Durations: 90s, 15m, 4h, 1d, 1h30m. Relative paths are relative to this file's folder.
"""

# The example stack: an application's PostgreSQL database, its SQLite job queue (which refers
# to rows in PostgreSQL, so it is restored after it) and its configuration files.
EXAMPLE: dict[str, Any] = {
    "version": 1,
    "repository": {"location": "/srv/backup/stackvault", "password_env": "STACKVAULT_PASSWORD"},
    "hooks": {
        "post": [{"http": {"url": "https://healthchecks.example.com/ping/stack-backup",
                           "timeout": "10s"}}],
    },
    "components": {
        "app-db": {
            "type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "user": "stackvault",
            "password_env": "PGPASSWORD",
            "databases": ["app"],
            "globals": True,
            "format": "custom",
            "jobs": 1,
            "hooks": {
                "pre": [{"http": {"url": "http://127.0.0.1:8080/admin/pause-ingest",
                                  "headers_env": {"Authorization": "APP_ADMIN_TOKEN"}}}],
                "post": [{"http": {"url": "http://127.0.0.1:8080/admin/resume-ingest",
                                   "headers_env": {"Authorization": "APP_ADMIN_TOKEN"}}}],
            },
            "targets": {"rto": "1h", "rpo": "24h"},
        },
        "jobs-db": {
            "type": "sqlite",
            "path": "/srv/app/data/jobs.sqlite3",
            "depends_on": ["app-db"],
            "targets": {"rto": "15m", "rpo": "24h"},
        },
        "app-config": {
            "type": "files",
            "paths": ["/srv/app/config", "/srv/app/.env"],
            "exclude": ["*.tmp"],
            "hooks": {"pre": [{"command": ["/srv/app/bin/app-ctl", "check-config"],
                               "timeout": "1m"}]},
        },
        "cache": {
            "type": "redis",
            "url": "redis://127.0.0.1:6379",
            "password_env": "REDIS_PASSWORD",
            "mode": "logical",
            "targets": {"rpo": "1h"},
        },
        "media": {
            "type": "s3",
            "endpoint_url": "http://127.0.0.1:9000",
            "buckets": ["uploads", "documents/originals"],
            "access_key_env": "MINIO_ACCESS_KEY",
            "secret_key_env": "MINIO_SECRET_KEY",
        },
        "vectors": {
            "type": "chroma",
            "path": "/srv/app/chroma",
            "collections": ["documents"],
        },
        "vector-index": {
            "type": "qdrant",
            "path": "/srv/app/qdrant",
            "collections": ["chunks"],
            "hooks": {"pre": [{"command": "systemctl stop app-search"}],
                      "post": [{"command": "systemctl start app-search"}]},
        },
    },
    "integrity": {
        "rules": [
            {"name": "documents have their files", "type": "references",
             "severity": "warning",
             "source": {"component": "app-db", "sql": "SELECT object_key FROM documents"},
             "target": {"component": "media", "pattern": "uploads/{id}"}},
            {"name": "jobs move on", "type": "stuck_jobs", "component": "jobs-db",
             "table": "jobs", "older_than": "30m", "retries_column": "retries"},
        ],
        "reset_keep": {"app-db": ["users"]},
    },
    "drill": {
        "targets": {"jobs-db": "/var/tmp/stackvault-drill/jobs.sqlite3"},
        "probes": [{"name": "documents are there", "component": "app-db",
                    "sql": "SELECT count(*) > 0 FROM documents", "expect": "True"}],
    },
    "notifications": {"channels": [
        {"type": "slack", "url_env": "SLACK_WEBHOOK_URL"},
        {"type": "email", "name": "ops-mail", "on": ["failure", "success"],
         "host": "smtp.example.com", "port": 587, "security": "starttls",
         "sender": "stackvault@example.com", "to": ["ops@example.com"],
         "username": "stackvault@example.com", "password_env": "SMTP_PASSWORD",
         "ca_file": "/etc/ssl/certs/internal-ca.pem", "subject_prefix": "[stackvault]"},
        {"type": "webhook", "url": "https://ops.example.com/hooks/stackvault",
         "headers_env": {"Authorization": "OPS_WEBHOOK_TOKEN"}, "events": ["backup", "drill"]},
        {"type": "discord", "url_env": "DISCORD_WEBHOOK_URL", "events": ["backup"]},
        {"type": "ping", "url": "https://hc-ping.com/0f6c2b7e-9b7d-4f3b-8a3e-1c2d3e4f5a6b",
         "events": ["backup"],
         "start": "/start", "success": "", "fail": "/fail", "method": "POST"},
    ]},
    "schedule": {"timezone": "Europe/Berlin",
                 "backup": {"cron": "30 2 * * *", "jitter": "10m"},
                 "prune": {"cron": "30 4 * * 0", "keep_daily": 7, "keep_weekly": 4,
                           "keep_monthly": 12},
                 "check": {"cron": "0 5 * * *", "read_data_subset": "5%", "missed": "skip"},
                 "drill": {"cron": "0 6 * * 6"},
                 "integrity": {"cron": "15 * * * *", "missed": "skip"}},
}


def example_yaml() -> str:
    """The example config as YAML text with a comment for every setting (the first time it
    appears)."""
    out: list[str] = [HEADER]
    _model(StackConfig, EXAMPLE, 0, out, set(), show_absent=True)
    return "\n".join(out).rstrip("\n") + "\n"


def _owner(model: type[BaseModel], name: str) -> type:
    """The class that declares a field (fields shared by every component are described once)."""
    for cls in reversed(model.__mro__):
        if name in getattr(cls, "__annotations__", {}):
            return cls
    return model


def _field_order(model: type[BaseModel]) -> list[str]:
    names = list(model.model_fields)
    own = [n for n in names if _owner(model, n) is model]
    return (["type"] if "type" in own else []) + [n for n in own if n != "type"] + \
        [n for n in names if n not in own]


def _comment(text: str, indent: int) -> list[str]:
    pad = " " * indent + "# "
    return textwrap.wrap(text, WIDTH, initial_indent=pad, subsequent_indent=pad)


def _is_duration(info: FieldInfo) -> bool:
    marks = list(info.metadata)
    ann = info.annotation
    while typing.get_origin(ann) is not None:
        args = typing.get_args(ann)
        if typing.get_origin(ann) is typing.Annotated:
            marks += list(args[1:])
        ann = args[0] if args else None
    return any(isinstance(m, TypeDoc) and m.name == "duration" for m in marks)


def yaml_inline(value: Any) -> str:
    """A scalar, list or mapping as one line of YAML (scalars quoted only when needed)."""
    if isinstance(value, list | dict):
        text = yaml.safe_dump([value], default_flow_style=True, width=10_000, sort_keys=False)
        return text.strip()[1:-1]
    text = yaml.safe_dump(value, width=10_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


_flow = yaml_inline


def _absent_value(info: FieldInfo) -> Any:
    if info.examples:
        return info.examples[0]
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        return None if isinstance(value, BaseModel) else value
    if info.default is PydanticUndefined:
        return None
    if info.default is not None and _is_duration(info):
        return format_duration(info.default)
    return info.default


def _model(model: type[BaseModel], values: dict[str, Any], indent: int, out: list[str],
           described: set[tuple[type, str]], *, show_absent: bool) -> None:
    pad = " " * indent
    for name in _field_order(model):
        info = model.model_fields[name]
        key = (_owner(model, name), name)
        present = name in values
        if not present and (not show_absent or _absent_value(info) is None):
            if info.is_required():
                raise AssertionError(f"the example lacks required {model.__name__}.{name}")
            continue
        if key not in described and info.description:
            described.add(key)
            out += _comment(info.description, indent)
        if not present:
            out.append(f"{pad}# {name}: {_flow(_absent_value(info))}")
            continue
        _value(name, info.annotation, values[name], indent, out, described)


def _value(name: str, ann: Any, value: Any, indent: int, out: list[str],
           described: set[tuple[type, str]]) -> None:
    pad = " " * indent
    if isinstance(value, dict) and _model_type(ann, value) is not None:
        out.append(f"{pad}{name}:")
        _model(_model_type(ann, value) or BaseModel, value, indent + 2, out, described,
               show_absent=True)
    elif isinstance(value, dict) and value and _holds_models(_dict_value(ann)):
        out.append(f"{pad}{name}:")
        for key, item in value.items():
            _value(key, _dict_value(ann), item, indent + 2, out, described)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        out.append(f"{pad}{name}:")
        for item in value:  # "  - key: ...", its comments aligned with the dash
            lines: list[str] = []
            _model(_model_type(_list_item(ann), item) or BaseModel, item, indent + 4, lines,
                   described, show_absent=False)
            first = next(i for i, line in enumerate(lines) if not line.lstrip().startswith("#"))
            for i in range(first):
                lines[i] = lines[i][2:]
            lines[first] = f"{pad}  - {lines[first][indent + 4:]}"
            out += lines
    else:
        out.append(f"{pad}{name}: {_flow(value)}")


def _holds_models(ann: Any) -> bool:
    ann = unwrap(ann)
    return any(isinstance(a, type) and issubclass(a, BaseModel)
               for a in (ann, *typing.get_args(ann)))


def _model_type(ann: Any, value: Any) -> type[BaseModel] | None:
    ann = unwrap(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    members = union_members(ann)  # the components: the member is chosen by `type`
    if members and isinstance(value, dict):
        return members.get(str(value.get("type")))
    return None


def _dict_value(ann: Any) -> Any:
    ann = unwrap(ann)
    return typing.get_args(ann)[1] if typing.get_origin(ann) is dict else None


def _list_item(ann: Any) -> Any:
    ann = unwrap(ann)
    return typing.get_args(ann)[0] if typing.get_origin(ann) is list else None
