"""Find and load stackvault.yaml, reporting every problem at once with its path and line."""

from __future__ import annotations

import difflib
import hashlib
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stackvault.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from stackvault.config.schema import StackConfig

CONFIG_ENV = "STACKVAULT_CONFIG"
DEFAULT_NAME = "stackvault.yaml"
_CREATE_HINT = "`stackvault config example > stackvault.yaml` writes a commented example"

KeyPath = tuple[str | int, ...]  # keys and list indexes from the top of the file


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config: where (a dotted path, a line) and what.

    Never holds a value from the file: values may be secrets."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path}: {self.message}{where}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message, "line": self.line}


@dataclass
class Validation:
    """The outcome of checking a config: the config when valid, else the problems."""

    source: str
    config: StackConfig | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.problems

    def error(self) -> ConfigError:
        n = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        return ConfigError(f"invalid config {self.source}: {n} problem{'s' * (n != 1)}\n{lines}",
                           hint="fix them and check again with `stackvault config validate`")


# --------------------------------------------------------------------------- finding


def find_config(path_flag: str | None, env: Mapping[str, str], cwd: Path | None = None) -> Path:
    """The config file: ``-c/--config``, else $STACKVAULT_CONFIG, else ./stackvault.yaml."""
    if path_flag:
        return _existing(Path(path_flag).expanduser(), "check -c/--config")
    if env.get(CONFIG_ENV):
        return _existing(Path(env[CONFIG_ENV]).expanduser(), f"check {CONFIG_ENV}")
    default = (cwd or Path.cwd()) / DEFAULT_NAME
    if default.is_file():
        return default
    raise ConfigError(f"no config file: no -c/--config, no {CONFIG_ENV}, and no {DEFAULT_NAME} "
                      f"in {default.parent}",
                      hint=f"pass -c PATH or set {CONFIG_ENV}; {_CREATE_HINT}")


def _existing(path: Path, hint: str) -> Path:
    if path.is_file():
        return path
    what = "is not a file" if path.exists() else "does not exist"
    raise ConfigError(f"config file {path} {what}", hint=f"{hint}; {_CREATE_HINT}")


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> StackConfig:
    """Load and validate a config file; ConfigError lists every problem in it."""
    result = check_config(path)
    if result.config is None or result.problems:
        raise result.error()
    return result.config


def check_config(path: str | Path) -> Validation:
    """Validate a config file; problems are returned, not raised (only an unreadable file
    raises ConfigError)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    result = check_text(raw, source=str(path), base_dir=path.absolute().parent)
    if result.config is not None:
        result.config._source = path
        result.config._sha256 = hashlib.sha256(raw).hexdigest()
    return result


def check_text(text: str | bytes, *, source: str = "<text>",
               base_dir: Path | None = None) -> Validation:
    """Validate config text; relative paths in it are taken relative to ``base_dir``."""
    from pydantic import ValidationError

    from stackvault.config.schema import StackConfig

    result = Validation(source)
    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            result.problems.append(Problem("(file)", "not UTF-8 text", line))
            return result
    data, lines, problems = parse_yaml(text)
    result.problems += problems
    if problems and data is None:
        return result
    if data is None:
        result.problems.append(Problem("(file)", "the config is empty: it needs version, "
                                       "repository and components"))
        return result
    if not isinstance(data, dict):
        result.problems.append(Problem("(file)", "the config must be a mapping with version, "
                                       "repository and components", 1))
        return result
    try:
        config = StackConfig.model_validate(data, context={"base_dir": base_dir,
                                                           "from_file": True})
    except ValidationError as exc:
        result.problems += problems_from(exc, data, lines)
    else:
        if not result.problems:
            result.config = config
    result.problems.sort(key=lambda p: (p.line or 0, p.path))
    return result


# --------------------------------------------------------------------------- YAML


def _loader_class() -> Any:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> tuple[Any, dict[KeyPath, int], list[Problem]]:
    """(data, line of every key and item by path, problems: syntax errors, duplicate keys).

    A syntax error gives data None. Duplicate keys are an error: YAML would silently keep
    the last one, and a component silently replaced is a backup silently missing."""
    loader = _loader_class()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        lines: dict[KeyPath, int] = {}
        problems: list[Problem] = []
        _index(node, (), lines, problems, set())
        return loader.construct_document(node), lines, problems
    except yaml.MarkedYAMLError as exc:
        return None, {}, [_syntax_problem(exc)]
    except yaml.YAMLError as exc:  # no position known
        return None, {}, [Problem("(file)", f"YAML syntax error: {type(exc).__name__}")]
    finally:
        loader.dispose()


def _syntax_problem(exc: yaml.MarkedYAMLError) -> Problem:
    # Only the parser's own words and the position: the snippet of the line could hold a
    # secret.
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
    text = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context:
        ctx_mark = exc.context_mark
        at = f", line {ctx_mark.line + 1}" if ctx_mark and ctx_mark.line + 1 != line else ""
        text = f"{exc.problem} ({exc.context}{at})"
    where = f" at line {line}, column {col}" if line else ""
    return Problem("(file)", f"YAML syntax error{where}: {text}", line, col)


def _index(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], problems: list[Problem],
           seen: set[int]) -> None:
    if id(node) in seen:  # an alias: indexed where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key: str | int = key_node.value
            line = key_node.start_mark.line + 1
            child = (*path, key)
            if key in first:
                problems.append(Problem(format_path(child), f"duplicate key (first on line "
                                        f"{first[key]}); only one is allowed", line))
                continue
            first[key] = line
            lines[child] = line
            _index(value_node, child, lines, problems, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _index(item, (*path, i), lines, problems, seen)


# --------------------------------------------------------------------------- errors


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_path(parts: KeyPath) -> str:
    """('components', 'db', 'hooks', 'pre', 0) -> 'components.db.hooks.pre[0]'."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            text = p if _PLAIN_KEY.fullmatch(p) else '"' + p.replace('"', '\\"') + '"'
            out += f".{text}" if out else text
    return out or "(top)"


def _walk(loc: tuple[Any, ...], data: Any) -> tuple[KeyPath, Any, Any]:
    """Follow a pydantic error location through the schema and the data: (the path as the
    user wrote it, without union tags; the model holding the last key; the value there)."""
    from pydantic import BaseModel

    from stackvault.config.schema import StackConfig, union_members, unwrap

    ann: Any = StackConfig
    parent: Any = None
    node = data
    parts: list[str | int] = []
    for el in loc:
        if el == "[key]":  # the error is about the mapping key itself
            continue
        ann = unwrap(ann)
        members = union_members(ann)
        if members:
            if el in members:  # pydantic names the union member it tried: not a user key
                ann = members[el]
                continue
            kind = node.get("type") if isinstance(node, dict) else None
            ann = members.get(kind) if isinstance(kind, str) else None
            ann = ann or next(iter(members.values()))
        parts.append(el)
        parent = ann
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            info = ann.model_fields.get(str(el))
            ann = info.annotation if info else None
        elif typing.get_origin(ann) is list:
            ann = typing.get_args(ann)[0]
        elif typing.get_origin(ann) is dict:
            ann = typing.get_args(ann)[1]
        else:
            ann = None
        try:
            node = node[el]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(parts), parent, node


def _line_of(parts: KeyPath, lines: Mapping[KeyPath, int]) -> int | None:
    for n in range(len(parts), 0, -1):
        if parts[:n] in lines:
            return lines[parts[:n]]
    return None


def _message(err: Mapping[str, Any], parts: KeyPath, parent: Any, node: Any) -> str:
    from pydantic import BaseModel

    from stackvault.config.schema import COMPONENT_TYPES

    kind, msg = err["type"], err["msg"]
    types_ = ", ".join(COMPONENT_TYPES)
    if kind == "extra_forbidden":
        allowed = (sorted(parent.model_fields) if isinstance(parent, type)
                   and issubclass(parent, BaseModel) else [])
        close = difflib.get_close_matches(str(parts[-1]), allowed, n=1, cutoff=0.6)
        guess = f"; did you mean `{close[0]}`?" if close else ""
        return f"unknown key{guess} (allowed here: {', '.join(allowed)})" if allowed \
            else "unknown key"
    if kind == "missing":
        return "required, but missing"
    tags = _union_tags(parent)  # a list of other tagged models (rules, channels)?
    if kind in ("union_tag_invalid", "union_tag_not_found") and tags \
            and set(tags) != set(COMPONENT_TYPES):
        tag = node.get("type") if isinstance(node, dict) else None
        return (f"unknown type '{tag}'; the types here are: {', '.join(tags)}"
                if kind == "union_tag_invalid" else f"needs a `type`: one of {', '.join(tags)}")
    if kind == "union_tag_invalid":
        tag = node.get("type") if isinstance(node, dict) else None
        return f"unknown component type '{tag}'; the types are: {types_}"
    if kind == "union_tag_not_found":
        return f"a component needs a `type`: one of {types_}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping (`key: value` lines)"
    return str(msg)


def _union_tags(parent: Any) -> list[str]:
    """The `type`s a list or mapping of tagged models takes (e.g. the channel types)."""
    from stackvault.config.schema import union_members, unwrap

    args = typing.get_args(unwrap(parent)) if parent is not None else ()
    return list(union_members(args[-1])) if args else []


def problems_from(exc: ValidationError, data: Any,
                  lines: Mapping[KeyPath, int] | None = None) -> list[Problem]:
    """Problems for every error of a validation, with the user's paths and lines. Values
    from the input are never included."""
    out = []
    for err in exc.errors():
        parts, parent, node = _walk(tuple(err["loc"]), data)
        out.append(Problem(format_path(parts), _message(err, parts, parent, node),
                           _line_of(parts, lines or {})))
    return out
