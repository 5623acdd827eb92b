"""Adapters by type: built-ins and plugins registered alike, imported lazily, install hints."""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from stackvault.errors import UsageError

if TYPE_CHECKING:
    from stackvault.sources.base import DataSource

ENTRY_POINT_GROUP = "stackvault.sources"
SourceFactory = Callable[..., "DataSource"]

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


@dataclass(frozen=True)
class LazyRef:
    """An adapter not imported yet: `target` is "module:attribute".

    `extra` is the stackvault extra that installs its dependencies (for the hint);
    `packages` maps top-level import names to the PyPI distributions that provide them.
    """

    target: str
    origin: str = "registered"
    extra: str | None = None
    packages: Mapping[str, str] = field(default_factory=dict)


_registry: dict[str, SourceFactory | LazyRef] = {}


def register(type_: str, factory: SourceFactory | str, *, extra: str | None = None,
             packages: Mapping[str, str] | None = None, replace: bool = False,
             origin: str = "registered") -> None:
    """Register an adapter for `type_`: a factory (usually the class), or a "module:attr"
    string imported on first use (see LazyRef for `extra` and `packages`). Registering a
    type twice is an error unless `replace`."""
    _check_type(type_)
    if type_ in _registry and not replace:
        raise UsageError(f"source type {type_!r} is already registered")
    if isinstance(factory, str):
        if ":" not in factory:
            raise UsageError(f"adapter reference {factory!r} must look like 'module:attribute'")
        _registry[type_] = LazyRef(factory, origin=origin, extra=extra,
                                   packages=dict(packages or {}))
    else:
        _registry[type_] = factory


def unregister(type_: str) -> None:
    """Remove a registration (tests, embedding applications)."""
    _registry.pop(type_, None)


def _check_type(type_: str) -> None:
    if not isinstance(type_, str) or not _TYPE_RE.match(type_):
        raise UsageError(f"invalid source type {type_!r}",
                         hint="types are lowercase letters, digits, '-' and '_'")


def _plugins() -> dict[str, list[metadata.EntryPoint]]:
    found: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def _plugin_origin(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"plugin {dist.name}" if dist is not None else f"plugin {ep.value}"


def known_types() -> list[str]:
    """Every type that can be resolved: built-in, registered and from plugins."""
    return sorted(set(_registry) | set(_plugins()))


def get_source_class(type_: str) -> SourceFactory:
    """The factory (usually the class) for `type_`, importing its module if needed.

    Raises UsageError for an unknown type (listing the known ones), for a type claimed by more
    than one adapter, and, with an install hint, when the adapter's dependency is missing.
    """
    if not isinstance(type_, str) or not _TYPE_RE.match(type_):
        raise UsageError(f"unknown source type {type_!r}; known types: "
                         f"{', '.join(known_types())}")
    candidates: list[tuple[str, SourceFactory | LazyRef]] = []
    if type_ in _registry:
        entry = _registry[type_]
        candidates.append((entry.origin if isinstance(entry, LazyRef) else "registered", entry))
    for ep in _plugins().get(type_, []):
        candidates.append((_plugin_origin(ep), LazyRef(ep.value, origin=_plugin_origin(ep))))
    if not candidates:
        raise UsageError(f"unknown source type {type_!r}; known types: "
                         f"{', '.join(known_types())}",
                         hint="fix the type in stackvault.yaml, or install the plugin "
                              "that provides it")
    if len(candidates) > 1:
        raise UsageError(f"source type {type_!r} is provided by more than one adapter: "
                         f"{', '.join(origin for origin, _ in candidates)}",
                         hint="uninstall the plugin you do not want")
    _origin, entry = candidates[0]
    factory = _load(type_, entry) if isinstance(entry, LazyRef) else entry
    if not callable(factory):
        raise UsageError(f"the {type_} source ({_origin}) is not a class or factory")
    declared = getattr(factory, "type", type_)
    if isinstance(declared, str) and declared != type_:
        raise UsageError(f"the adapter registered as {type_!r} declares type {declared!r}")
    return factory


_IMPORT_LOCK = threading.Lock()


def _load(type_: str, ref: LazyRef) -> Any:
    module_name, _, attr = ref.target.partition(":")
    try:
        # One adapter import at a time: components are backed up, restored and probed on
        # threads, and two threads importing numpy (under qdrant and chroma) at once can see
        # it half initialised.
        with _IMPORT_LOCK:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UsageError(f"the {type_} source ({ref.origin}) points to module "
                             f"{module_name!r}, which does not exist",
                             hint="reinstall the package that provides it") from e
        top = missing.split(".")[0]
        dist = ref.packages.get(top, top)
        if ref.extra:
            hint = f"pip install 'stackvault[{ref.extra}]'"
        elif ref.origin.startswith("plugin"):
            hint = f"pip install {dist} (needed by {ref.origin})"
        else:
            hint = f"pip install {dist}"
        raise UsageError(f"the {type_} source needs {dist}, which is not installed",
                         hint=hint) from e
    except ImportError as e:
        raise UsageError(f"the {type_} source ({ref.origin}) could not be loaded: {e}",
                         hint="reinstall it and its dependencies") from e
    obj = module
    for part in attr.split(".") if attr else []:
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise UsageError(f"the {type_} source ({ref.origin}): {ref.target!r} not found",
                             hint="reinstall the package that provides it") from e
    return obj


# Built-ins go through the same registration as anything else, by module path, so that
# importing this module imports no adapter and none of their optional dependencies.
# An adapter with optional dependencies adds them like this (the extra goes in pyproject.toml):
#   register("qdrant", "stackvault.sources.qdrant:QdrantSource", origin="built-in",
#            extra="qdrant", packages={"qdrant_client": "qdrant-client"})
register("sqlite", "stackvault.sources.sqlite:SqliteSource", origin="built-in")
register("files", "stackvault.sources.files:FilesSource", origin="built-in")
register("redis", "stackvault.sources.redisdb:RedisSource", origin="built-in")
register("s3", "stackvault.sources.s3bucket:S3BucketSource", origin="built-in")
register("postgres", "stackvault.sources.postgres:PostgresSource", origin="built-in")
register("chroma", "stackvault.sources.chroma:ChromaSource", origin="built-in",
         extra="chroma", packages={"chromadb": "chromadb"})
register("qdrant", "stackvault.sources.qdrant:QdrantSource", origin="built-in",
         extra="qdrant", packages={"qdrant_client": "qdrant-client"})
