"""Building blocks of the stackvault.yaml schema: durations, names, paths, commands and the
base model that reports every problem at once (used by schema.py and integrity_schema.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ModelWrapValidatorHandler,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

CONFIG_VERSION = 1
DEFAULT_PASSWORD_ENV = "STACKVAULT_PASSWORD"

# Loc of a problem, relative to the model that found it (pydantic prefixes the parents).
Loc = tuple[str | int, ...]


class TypeDoc:
    """Annotated marker: how the docs and the example name a field's type."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"TypeDoc({self.name!r})"


def _error(kind: str, message: str) -> PydanticCustomError:
    # No context: the message is used as is (braces in it are not a template).
    return PydanticCustomError(kind, message)


# --------------------------------------------------------------------------- durations

_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION_HINT = "e.g. 90s, 15m, 4h, 1d, 1h30m (units: s, m, h, d, w)"


def parse_duration(text: str) -> int:
    """'90s', '15m', '4h', '1d', '2w', '1h30m' -> seconds. A bare number is refused: no unit
    is a guess, and a wrong guess in an RTO target is off by 60x."""
    m = _DURATION.fullmatch(text.strip())
    if not text.strip() or m is None:
        raise ValueError(f"'{text}' is not a duration; {_DURATION_HINT}")
    return sum(int(g) * unit for g, (_, unit) in zip(m.groups(), _UNITS, strict=True) if g)


def format_duration(seconds: int) -> str:
    """Seconds -> the shortest duration text: 5400 -> '1h30m', 0 -> '0s'."""
    if seconds <= 0:
        return "0s"
    out = []
    for suffix, unit in _UNITS:
        if seconds >= unit:
            out.append(f"{seconds // unit}{suffix}")
            seconds %= unit
    return "".join(out)


def _from_file(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("from_file"))


def _duration(value: Any, info: ValidationInfo) -> int:
    """Text with units; from code also an int of seconds (the model's unit). A bare number
    in a file is refused: is `rto: 15` minutes or seconds?"""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _error("duration_type", f"a duration is text such as {_DURATION_HINT}")
    if isinstance(value, int):
        if _from_file(info):
            raise _error("duration_unit", f"a duration needs a unit: {_DURATION_HINT}")
        if value <= 0:
            raise _error("duration", "a duration must be longer than 0s")
        return value
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise _error("duration", str(exc)) from None
    if seconds <= 0:
        raise _error("duration", "a duration must be longer than 0s")
    return seconds


# Seconds in the model; text again when dumped, so that a dump validates back.
Duration = Annotated[int, BeforeValidator(_duration),
                     PlainSerializer(lambda s: format_duration(s), return_type=str),
                     TypeDoc("duration")]

# --------------------------------------------------------------------------- names, paths

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise _error("component_name", "a component name uses only a-z, 0-9, '_' and '-', "
                     "starts with a letter or digit and has at most 63 characters")
    return value


def _env_name(value: str) -> str:
    # Never echo the value: a password pasted here by mistake must not end up in the output.
    if not _ENV_RE.fullmatch(value):
        raise _error("env_name", "must be the NAME of an environment variable (letters, digits "
                     "and '_', not starting with a digit), not a secret value")
    return value


def _header_name(value: str) -> str:
    if not _HEADER_RE.fullmatch(value):
        raise _error("header_name", "not a valid HTTP header name")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise _error("empty", "must not be empty")
    return value


def _path_text(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise _error("empty", "a path must not be empty")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """`~` is the home folder; a relative path is relative to the config file's folder."""
    value = value.expanduser()
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


def _command(value: Any) -> Any:
    if isinstance(value, str):
        if value.strip():
            return value
    elif isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return value
    raise _error("command", "a command is a non-empty string (run by the shell) or a "
                 "non-empty list of strings (the program and its arguments, no shell)")


Name = Annotated[str, AfterValidator(_name), TypeDoc("name")]
EnvName = Annotated[str, AfterValidator(_env_name), TypeDoc("env var name")]
HeaderName = Annotated[str, AfterValidator(_header_name), TypeDoc("header name")]
NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]
ConfigPath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_resolve_path),
                       TypeDoc("path")]
Command = Annotated[str | list[str], BeforeValidator(_command),
                    TypeDoc("string or list of strings")]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.DOTALL)
_USERINFO = re.compile(r"://[^/?#]*@")
_LOCATION_FORMS = ("a folder (/srv/backup, local:PATH), s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX] "
                   "or s3://BUCKET[/PREFIX]")


def _location(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise _error("location", f"the repository location is empty; use {_LOCATION_FORMS}")
    if _USERINFO.search(value):
        raise _error("secret_in_config", "credentials do not belong in the location: S3 keys "
                     "come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile")
    m = _SCHEME.match(value)
    if m is None:
        return str(_resolve_path(Path(value), info))
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "local" and rest:
        return f"local:{_resolve_path(Path(rest), info)}"
    if scheme not in ("local", "memory", "s3") or not rest:
        raise _error("location", f"unsupported repository location; use {_LOCATION_FORMS}")
    return value


Location = Annotated[str, AfterValidator(_location), TypeDoc("location")]

# --------------------------------------------------------------------------- base model

# Keys refused wherever they appear (also `db_password`, `api_token`, ...): a secret written
# in the file ends up in backups of the file, in version control and in support tickets.
SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "access_key")


def _looks_secret(key: str) -> bool:
    """`password`, `db_password`, `api-token`...; not `password_env` & co., which name where
    a secret is (a misplaced one is just an unknown key)."""
    key = key.lower().replace("-", "_")
    return (any(w in key for w in SECRET_WORDS)
            and not key.endswith(("_env", "_file", "_command")))


def _problems_error(title: str, problems: list[InitErrorDetails]) -> ValidationError:
    return ValidationError.from_exception_data(title, problems)


def _redetail(exc: ValidationError) -> list[InitErrorDetails]:
    """A ValidationError's errors, re-raisable together with more (inputs not carried: they
    may be secrets)."""
    return [InitErrorDetails(type=_error(e["type"], e["msg"]), loc=tuple(e["loc"]),
                             input=None) for e in exc.errors()]


class _Model(BaseModel):
    """Every section: unknown keys rejected; secrets refused; cross-field checks that run on
    the raw input so that they are reported together with every other error."""

    model_config = ConfigDict(extra="forbid")

    secret_advice: ClassVar[str] = ("secrets are never written in stackvault.yaml: name an "
                                    "environment variable or a file that holds them")
    # Keys refused with `secret_advice` in this section although their name looks harmless
    # (e.g. the `url` of a Slack webhook, which is its credential).
    secret_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        """Problems that span fields, found on the raw mapping (lenient about bad types,
        which the fields report themselves)."""
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _checked(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        problems: list[InitErrorDetails] = []
        clean = {}
        for key, value in data.items():
            if isinstance(key, str) and (_looks_secret(key) or key in cls.secret_keys) \
                    and key not in cls.model_fields:
                problems.append(InitErrorDetails(type=_error("secret_in_config",
                                                             cls.secret_advice),
                                                 loc=(key,), input=None))
            else:
                clean[key] = value
        problems += [InitErrorDetails(type=_error("config", msg), loc=loc, input=None)
                     for loc, msg in cls.raw_checks(clean)]
        if not problems:
            return handler(clean)
        try:
            handler(clean)
        except ValidationError as exc:
            problems = _redetail(exc) + problems
        raise _problems_error(cls.__name__, problems)


def _given(data: dict[str, Any], *keys: str) -> list[str]:
    return [k for k in keys if data.get(k) is not None]
