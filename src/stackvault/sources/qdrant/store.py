"""Qdrant connections (server or local folder), errors, restore targets and collection configs."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackvault.errors import (
    SourceError,
    SourceInUse,
    SourceUnavailable,
    StackVaultError,
    UsageError,
)
from stackvault.sources.base import secret_from_env

TARGET_FORMS = "FOLDER, FOLDER#RENAME, #RENAME, prefix:PREFIX or name:NAME"
TIMEOUT = 30  # seconds per request to a server
_LOCKED = "already accessed by another instance"


@dataclass(frozen=True)
class Store:
    """Where collections live: a server `url` or a local-mode `path` (exactly one)."""

    url: str | None = None
    path: Path | None = None

    def text(self) -> str:
        if self.path is not None:
            return f"Qdrant local folder {self.path}"
        from stackvault.storage import redact_url
        return f"Qdrant {redact_url(self.url or '')}"


@dataclass(frozen=True)
class Rename:
    """How backed-up collection (and alias) names become names in the target: None keeps
    them; a pattern with one `*` puts the name in place of the `*` (`drill_*`); a pattern
    without `*` is the new name of the one collection restored (its aliases are then not
    restored: alias names are global and the original ones may still be in use)."""

    pattern: str | None = None

    @property
    def keeps_aliases(self) -> bool:
        return self.pattern is None or "*" in self.pattern

    def new(self, name: str, count: int = 1) -> str:
        if self.pattern is None:
            return name
        if "*" in self.pattern:
            return self.pattern.replace("*", name)
        if count != 1:
            raise UsageError(f"--to renames to {self.pattern!r}, but {count} collections are "
                             "restored", hint="use a prefix, e.g. prefix:drill_ or '#drill_*'")
        return self.pattern

    def original(self, name: str) -> str | None:
        """The backup's name of a target collection (None: not one this rule makes)."""
        if self.pattern is None:
            return name
        if "*" not in self.pattern:
            return None
        head, _, tail = self.pattern.partition("*")
        if len(name) > len(head) + len(tail) and name.startswith(head) and name.endswith(tail):
            return name[len(head):len(name) - len(tail)]
        return None


def parse_target(target: Mapping[str, Any] | None, store: Store) -> tuple[Store, Rename]:
    """A restore target `{"to": TEXT}` (what `--to NAME=TEXT` gives), TEXT one of
    TARGET_FORMS: another local-mode FOLDER, and/or `#RENAME` (a name, or a pattern with
    one `*`); `prefix:P` is `#P*`, `name:N` is `#N`."""
    if target is None:
        return store, Rename()
    if set(target) != {"to"} or not isinstance(target["to"], str) or not target["to"]:
        raise UsageError(f"a qdrant restore target takes exactly 'to', got {sorted(target)}",
                         hint=f"--to NAME=TEXT with TEXT one of {TARGET_FORMS}")
    text: str = target["to"]
    if text.startswith("prefix:"):
        where, rename = "", text[len("prefix:"):] + "*"
    elif text.startswith("name:"):
        where, rename = "", text[len("name:"):]
    else:
        where, sep, rename = text.partition("#")
        if sep and not rename:
            raise UsageError(f"bad qdrant target {text!r}", hint=f"use {TARGET_FORMS}")
    if rename.count("*") > 1 or rename in ("", "*") and (text.startswith(("prefix:", "name:"))):
        raise UsageError(f"bad qdrant target {text!r}", hint=f"use {TARGET_FORMS}")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", where):
        raise UsageError(f"--to {text!r}: restoring into another Qdrant server is not "
                         "supported by --to",
                         hint="copy the component in stackvault.yaml with that server's url, "
                              "or restore under another name with prefix:P / name:N")
    new = Store(path=Path(where).expanduser().absolute()) if where else store
    return new, Rename(rename or None)


def api_key(env: str | None) -> str | None:
    return secret_from_env(env, "api_key_env of this qdrant component")


@contextlib.contextmanager
def errors(store: Store, what: str) -> Iterator[None]:
    """qdrant-client and transport errors as StackVault ones (never with the API key)."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    try:
        yield
    except StackVaultError:
        raise
    except UnexpectedResponse as e:
        detail = e.content.decode("utf-8", "replace")[:300] if e.content else ""
        raise SourceError(f"{store.text()}: {what} failed: HTTP {e.status_code} "
                          f"{e.reason_phrase} {detail}".rstrip(),
                          hint="a 401/403 means the API key (api_key_env) was refused") from e
    except ResponseHandlingException as e:
        raise SourceUnavailable(f"cannot reach {store.text()} ({what}): "
                                f"{type(e.source).__name__}",
                                hint="check url in stackvault.yaml and that the server "
                                     "runs") from e
    except (ValueError, KeyError, AssertionError) as e:
        # what local mode (and the client's own checks) raise for a bad request
        raise SourceError(f"{store.text()}: {what} failed: {e}") from e


@contextlib.contextmanager
def opened(store: Store, key: str | None, *, create: bool = False) -> Iterator[Any]:
    """A client for `store`, closed on leaving (local mode locks its folder while open).

    A local folder must exist unless `create` (a backup of a folder that is not there would
    silently store nothing)."""
    from qdrant_client import QdrantClient

    if store.path is not None:
        if not store.path.is_dir():
            if not create:
                raise SourceUnavailable(f"{store.text()} does not exist",
                                        hint="check `path` in stackvault.yaml")
            store.path.mkdir(parents=True, exist_ok=True)
        try:
            client = QdrantClient(path=str(store.path))
        except RuntimeError as e:
            if _LOCKED not in str(e):
                raise SourceError(f"{store.text()}: cannot open it: {e}") from e
            raise SourceInUse(f"{store.text()} is open in another process (a local-mode "
                              "folder allows one client at a time)",
                              hint="stop the application that uses it (e.g. with a pre hook) "
                                   "and retry; or restore elsewhere with --to") from e
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Api key is used with an insecure")
            client = QdrantClient(url=store.url, api_key=key, timeout=TIMEOUT)
    try:
        yield client
    finally:
        client.close()


# --- collection configurations ------------------------------------------------------------------


def config_of(info: Any) -> dict[str, Any]:
    """A collection's configuration as stored in the manifest: the store's CollectionConfig
    as JSON (None fields left out)."""
    return dict(info.config.model_dump(mode="json", exclude_none=True))


def schema_of(info: Any) -> dict[str, Any]:
    """Payload indexes: field -> {"data_type": T, "params": {...}} (counts left out)."""
    out = {}
    for field_name, idx in sorted((info.payload_schema or {}).items()):
        d = idx.model_dump(mode="json", exclude_none=True)
        d.pop("points", None)
        out[field_name] = d
    return out


def _diff(model: Any, value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    return model.model_validate({k: v for k, v in value.items() if k in model.model_fields})


def create_args(config: Mapping[str, Any]) -> dict[str, Any]:
    """`create_collection` keyword arguments that recreate a collection's configuration.

    Local mode keeps the vector parameters, sparse vectors and metadata and ignores the rest
    (HNSW, optimizers, WAL, quantization, strict mode, shards); a server applies them all.
    Fan-out settings (read_fan_out_*) cannot be set at creation and are not restored."""
    from pydantic import TypeAdapter
    from qdrant_client import models

    params = dict(config.get("params") or {})
    vectors = params.get("vectors")
    args: dict[str, Any] = {}
    if isinstance(vectors, dict) and "size" in vectors and "distance" in vectors:
        args["vectors_config"] = models.VectorParams.model_validate(vectors)
    else:
        args["vectors_config"] = {n: models.VectorParams.model_validate(v)
                                  for n, v in (vectors or {}).items()}
    if params.get("sparse_vectors"):
        args["sparse_vectors_config"] = {n: models.SparseVectorParams.model_validate(v)
                                         for n, v in params["sparse_vectors"].items()}
    for key in ("shard_number", "replication_factor", "write_consistency_factor",
                "on_disk_payload"):
        if params.get(key) is not None:
            args[key] = params[key]
    if params.get("sharding_method") is not None:
        args["sharding_method"] = models.ShardingMethod(params["sharding_method"])
    for key, model in (("hnsw_config", models.HnswConfigDiff),
                       ("wal_config", models.WalConfigDiff),
                       ("strict_mode_config", models.StrictModeConfig)):
        if config.get(key) is not None:
            args[key] = _diff(model, config[key])
    if config.get("optimizer_config") is not None:
        args["optimizers_config"] = _diff(models.OptimizersConfigDiff, config["optimizer_config"])
    if config.get("quantization_config") is not None:
        args["quantization_config"] = TypeAdapter(models.QuantizationConfig).validate_python(
            config["quantization_config"])
    if config.get("metadata") is not None:
        args["metadata"] = config["metadata"]
    return args


def index_schema(info: Mapping[str, Any]) -> Any:
    """`create_payload_index` field_schema for a manifest entry of `payload_schema`."""
    from pydantic import TypeAdapter
    from qdrant_client import models

    if info.get("params"):
        return TypeAdapter(models.PayloadSchemaParams).validate_python(info["params"])
    return models.PayloadSchemaType(info["data_type"])
