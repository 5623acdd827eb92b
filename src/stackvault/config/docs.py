"""Write docs/config-reference.md from the schema: `python -m stackvault.config.docs [--check]`."""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from stackvault.config.example import example_yaml
from stackvault.config.example import yaml_inline as _flow
from stackvault.config.integrity_schema import (
    CustomRule,
    IntegrityConfig,
    Locator,
    MappingRule,
    ReferencesRule,
    StuckJobsRule,
)
from stackvault.config.notify_schema import DOC_SECTIONS as NOTIFY_SECTIONS
from stackvault.config.schedule_schema import DOC_SECTIONS as SCHEDULE_SECTIONS
from stackvault.config.schema import (
    COMPONENT_TYPES,
    SECRET_WORDS,
    ChromaComponent,
    ComponentBase,
    DrillConfig,
    FilesComponent,
    Hook,
    Hooks,
    HttpCall,
    PostgresComponent,
    Probe,
    QdrantComponent,
    RedisComponent,
    RepositoryConfig,
    S3Component,
    SearchProbe,
    SqliteComponent,
    StackConfig,
    Targets,
    TypeDoc,
    format_duration,
    strip_optional,
    unwrap,
)

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "config-reference.md"

# Section title, anchor, model, only the fields it declares itself.
SECTIONS: list[tuple[str, str, type[BaseModel], bool]] = [
    ("Top level", "top-level", StackConfig, False),
    ("repository", "repository", RepositoryConfig, False),
    ("components.NAME: every component", "components", ComponentBase, False),
    ("type: postgres", "type-postgres", PostgresComponent, True),
    ("type: sqlite", "type-sqlite", SqliteComponent, True),
    ("type: files", "type-files", FilesComponent, True),
    ("type: s3", "type-s3", S3Component, True),
    ("type: redis", "type-redis", RedisComponent, True),
    ("type: chroma", "type-chroma", ChromaComponent, True),
    ("type: qdrant", "type-qdrant", QdrantComponent, True),
    ("hooks", "hooks", Hooks, False),
    ("A hook (an item of pre or post)", "hook", Hook, False),
    ("http", "http", HttpCall, False),
    ("targets", "targets", Targets, False),
    ("drill", "drill", DrillConfig, False),
    ("A probe (an item of drill.probes)", "probe", Probe, False),
    ("search (of a probe)", "search", SearchProbe, False),
    ("integrity", "integrity", IntegrityConfig, False),
    ("A rule, type: references", "rule-references", ReferencesRule, False),
    ("A rule, type: mapping", "rule-mapping", MappingRule, False),
    ("A rule, type: stuck_jobs", "rule-stuck-jobs", StuckJobsRule, False),
    ("A rule, type: custom", "rule-custom", CustomRule, False),
    ("A locator (source, target, relink)", "locator", Locator, False),
    *NOTIFY_SECTIONS,
    *SCHEDULE_SECTIONS,
]
_ANCHORS = {model: anchor for _, anchor, model, _ in SECTIONS}

INTRO = """\
# Configuration reference: stackvault.yaml

<!-- Generated from src/stackvault/config/schema.py by `python -m stackvault.config.docs`;
     do not edit by hand (a test fails when this file and the schema disagree). -->

One file describes the whole stack: where its snapshots go (`repository`), what it is made of
(`components`, each with a `type`), in which order it comes back (`depends_on`), what runs
around a backup (`hooks`) and the recovery targets (`targets`).

- **Where it is read from**: `-c/--config PATH`, else `$STACKVAULT_CONFIG`, else
  `./stackvault.yaml`.
- **Start from** `stackvault config example > stackvault.yaml` (a commented PostgreSQL +
  SQLite + files stack) and check it with `stackvault config validate`, which lists every
  problem at once, with its path and line (`--json` for machines; exit code 2 when invalid).
- **Unknown keys are errors**, never ignored: a misspelt setting would otherwise weaken a
  backup silently. So are duplicate keys.
- **Secrets are never written in the file.** Settings name an environment variable
  (`password_env`, `headers_env`) or a file (`password_file`) that holds them. Keys that look
  like a secret are refused with a message that says what to use instead, and no value from
  the file is ever printed in an error. Refused: keys containing
  {secret_words}
  (`password`, `db_password`, `api_token`...), except the `_env`, `_file` and `_command`
  settings.
- **Durations** are text with units: `90s`, `15m`, `4h`, `1d`, `2w`, `1h30m`. A bare number
  is refused (is `15` minutes or seconds?).
- **Names** of components: lowercase letters, digits, `_` and `-`, starting with a letter or
  digit, at most 63 characters.
- **Paths**: `~` is the home folder; a relative path is relative to the config file's folder.
- **Restore order**: components are restored in layers; a layer holds the components whose
  `depends_on` are all restored already, and its components are restored concurrently.
  `stackvault config validate` prints the layers. Dependency cycles are errors.

Component types:
{component_types}.
More (Qdrant, ChromaDB) will be added as further `type`s.
"""


def reference_markdown() -> str:
    """The whole reference page."""
    out = [INTRO.format(
        secret_words=", ".join(f"`{w}`" for w in SECRET_WORDS),
        component_types=", ".join(f"[`{t}`](#type-{t})" for t in COMPONENT_TYPES))]
    for title, anchor, model, own_only in SECTIONS:
        out.append(f'<a id="{anchor}"></a>\n\n## {title}\n')
        doc = " ".join((model.__doc__ or "").split())
        if doc:
            out.append(f"{doc}\n")
        out.append("| key | type | default | description |\n|---|---|---|---|")
        fields = model.model_fields
        for name, info in fields.items():
            if own_only and name in ComponentBase.model_fields:
                continue
            out.append(f"| `{name}` | {_cell(type_text(info))} | {_cell(default_text(info))} "
                       f"| {_cell(description_text(info))} |")
        out.append("")
    out.append('<a id="example"></a>\n\n## Example\n\nThe output of `stackvault config example`:'
               f"\n\n```yaml\n{example_yaml()}```")
    return "\n".join(out).rstrip("\n") + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _marks(info: FieldInfo) -> list[Any]:
    return list(info.metadata)


def type_text(info: FieldInfo) -> str:
    """How the reference names a field's type: 'list of path (at least 1)', 'duration'..."""
    text = _type(info.annotation, _marks(info))
    for mark in _marks(info):
        if isinstance(mark, annotated_types.MinLen) and mark.min_length:
            text += f" (at least {mark.min_length})"
    ge = next((m.ge for m in _marks(info) if isinstance(m, annotated_types.Ge)), None)
    le = next((m.le for m in _marks(info) if isinstance(m, annotated_types.Le)), None)
    if ge is not None and le is not None:
        text += f" ({ge} to {le})"
    return text


def _type(ann: Any, marks: list[Any]) -> str:
    for mark in marks:
        if isinstance(mark, TypeDoc):
            return mark.name
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        args = typing.get_args(ann)
        return _type(args[0], list(args[1:]))
    stripped = strip_optional(ann)
    if stripped is not ann:
        return _type(stripped, [])
    if origin is typing.Literal:
        values = [f"`{v}`" for v in typing.get_args(ann)]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if origin is list:
        return f"list of {_type(typing.get_args(ann)[0], [])}"
    if origin is dict:
        key, value = typing.get_args(ann)
        return f"mapping of {_type(key, [])} to {_type(value, [])}"
    if isinstance(ann, type) and ann in _ANCHORS:
        return f"[{_ANCHORS[ann].replace('-', ' ')}](#{_ANCHORS[ann]})"
    if typing.get_origin(unwrap(ann)) is not None:  # a union of models chosen by `type`
        members = [m for m in typing.get_args(unwrap(ann)) if isinstance(m, type)]
        if members and all(m in _ANCHORS for m in members) and not any(
                issubclass(m, ComponentBase) for m in members):
            return "one of " + ", ".join(f"[{_ANCHORS[m].replace('-', ' ')}](#{_ANCHORS[m]})"
                                         for m in members) + " (by `type`)"
        return "component ([every component](#components), by `type`)"
    return {str: "string", int: "integer", bool: "boolean", float: "number",
            Path: "path"}.get(ann, getattr(ann, "__name__", str(ann)))


def default_text(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "doc_default" in extra:
        return f"`{extra['doc_default']}` when no other password setting is given"
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        return "empty" if isinstance(value, BaseModel) else f"`{_flow(value)}`"
    value = info.default
    if value is None or value is PydanticUndefined:
        return "none"
    if isinstance(value, int) and not isinstance(value, bool) and type_text(info) == "duration":
        return f"`{format_duration(value)}`"
    return f"`{_flow(value)}`"


def description_text(info: FieldInfo) -> str:
    text = info.description or ""
    if info.examples:
        text += f" Example: `{_flow(info.examples[0])}`."
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stackvault.config.docs",
                                     description=__doc__)
    parser.add_argument("path", nargs="?", default=str(REFERENCE), help="where to write it")
    parser.add_argument("--check", action="store_true",
                        help="only compare: exit 1 if the file differs from the schema")
    args = parser.parse_args(argv)
    path = Path(args.path)
    text = reference_markdown()
    if args.check:
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current != text:
            print(f"{path} is out of date; run `python -m stackvault.config.docs`",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
