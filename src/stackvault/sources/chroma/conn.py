"""ChromaDB stores (a PersistentClient folder or a server), clients, errors and `--to` targets."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import chromadb
from chromadb.config import Settings

from stackvault.errors import SourceError, SourceUnavailable, StackVaultError, UsageError
from stackvault.sources.base import secret_from_env

NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{1,510})[A-Za-z0-9]$")
NAME_RULE = ("a collection name has 3-512 characters from [a-zA-Z0-9._-] and starts and ends "
             "with a letter or digit")
TARGET_FORMS = ("[FOLDER | http(s)://HOST:PORT][#RENAME], where RENAME is a pattern with one "
                "'*' standing for each original name (e.g. '#restored-*') or, for a single "
                "collection, its new name")


@dataclass(frozen=True)
class Store:
    """Where the collections are: a PersistentClient folder (`path`) or a server."""

    path: Path | None = None
    host: str | None = None
    port: int = 8000
    ssl: bool = False
    tenant: str = "default_tenant"
    database: str = "default_database"

    def text(self) -> str:
        if self.path is not None:
            return f"ChromaDB folder {self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        where = f"{'https' if self.ssl else 'http'}://{host}:{self.port}"
        db = ("" if (self.tenant, self.database) == ("default_tenant", "default_database")
              else f" ({self.tenant}/{self.database})")
        return f"ChromaDB server {where}{db}"


@dataclass(frozen=True)
class Rename:
    """How restored collections are named: `pattern` with one `*` (the original name), or a
    plain new name for a single collection; None keeps the names."""

    pattern: str | None = None

    def apply(self, name: str, count: int) -> str:
        if self.pattern is None:
            return name
        if "*" in self.pattern:
            new = self.pattern.replace("*", name, 1)
        elif count == 1:
            new = self.pattern
        else:
            raise UsageError(f"--to renames to {self.pattern!r}, but {count} collections are "
                             "restored", hint="use a pattern with '*', e.g. '#restored-*'")
        check_name(new, "the restored collection name")
        return new

    def original(self, name: str) -> str | None:
        """The backup's name of a live collection in the target (None: not one of ours)."""
        if self.pattern is None or "*" not in self.pattern:
            return name if self.pattern is None else None
        head, _, tail = self.pattern.partition("*")
        if len(name) > len(head) + len(tail) and name.startswith(head) and name.endswith(tail):
            return name[len(head):len(name) - len(tail)]
        return None


def check_name(name: str, what: str = "collection") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"{what} {name!r} is not a valid ChromaDB name", hint=NAME_RULE)
    return name


def parse_target(target: Mapping[str, Any], store: Store) -> tuple[Store, Rename]:
    """A `--to` text (`{"to": TEXT}`, see TARGET_FORMS): the store and the naming rule."""
    if set(target) != {"to"} or not isinstance(target["to"], str):
        raise UsageError(f"a chroma restore target takes exactly 'to', got {sorted(target)}",
                         hint=f"--to NAME={TARGET_FORMS}")
    text: str = target["to"]
    where, sep, rename = text.partition("#")
    if sep and (not rename or rename.count("*") > 1):
        raise UsageError(f"bad chroma target {text!r}", hint=f"use {TARGET_FORMS}")
    if rename and "*" not in rename:
        check_name(rename, "the restored collection name")
    if not where:
        new = store
    elif re.match(r"^https?://", where):
        try:
            parts = urlsplit(where)
            port = parts.port or (443 if parts.scheme == "https" else 8000)
        except ValueError:
            raise UsageError(f"bad chroma server URL {where!r}") from None
        if parts.username or parts.password or not parts.hostname \
                or parts.path.strip("/") or parts.query:
            raise UsageError(f"bad chroma server URL {where!r}",
                             hint="http(s)://HOST:PORT; no credentials (token_env) or path")
        new = Store(host=parts.hostname, port=port, ssl=parts.scheme == "https",
                    tenant=store.tenant, database=store.database)
    elif "://" in where:
        raise UsageError(f"bad chroma target {text!r}", hint=f"use {TARGET_FORMS}")
    else:
        new = Store(path=Path(where).expanduser().absolute())
    return new, Rename(rename or None)


def token(token_env: str | None) -> str | None:
    return secret_from_env(token_env, "token_env of this chroma component")


def settings(auth: str | None) -> Settings:
    kw: dict[str, Any] = {"anonymized_telemetry": False, "allow_reset": False}
    if auth is not None:
        kw["chroma_client_auth_provider"] = "chromadb.auth.token_authn.TokenAuthClientProvider"
        kw["chroma_client_auth_credentials"] = auth
    return Settings(**kw)


def open_client(store: Store, auth: str | None, *, create: bool = False) -> Any:
    """A client for `store`. A folder must already hold a ChromaDB database unless `create`
    (backing up a folder that does not exist would silently store nothing)."""
    with errors(store, "connecting"):
        if store.path is not None:
            if not create and not (store.path / "chroma.sqlite3").is_file():
                raise SourceUnavailable(f"{store.text()}: no ChromaDB database there "
                                        "(chroma.sqlite3 not found)",
                                        hint="check `path` in stackvault.yaml")
            store.path.mkdir(parents=True, exist_ok=True)
            return _persistent(store)
        assert store.host is not None
        return chromadb.HttpClient(host=store.host, port=store.port, ssl=store.ssl,
                                   settings=settings(auth), tenant=store.tenant,
                                   database=store.database)


def _persistent(store: Store) -> Any:
    """A PersistentClient. chromadb keeps one system per folder per process and refuses a
    client whose settings differ from that system's: then reuse its settings (an application
    embedding StackVault may have opened the folder with its own)."""
    path = str(store.path)
    try:
        return chromadb.PersistentClient(path=path, settings=settings(None),
                                         tenant=store.tenant, database=store.database)
    except ValueError as e:
        if "already exists" not in str(e):
            raise
        from chromadb.api.client import SharedSystemClient

        systems = getattr(SharedSystemClient, "_identifier_to_system", {})
        system = systems.get(path)
        if system is None:
            raise
        return chromadb.PersistentClient(path=path, settings=system.settings,
                                         tenant=store.tenant, database=store.database)


@contextmanager
def errors(store: Store, doing: str) -> Iterator[None]:
    """Turn chromadb's exceptions into StackVault errors (tokens are never in them)."""
    try:
        yield
    except StackVaultError:
        raise
    except Exception as e:  # chromadb raises ValueError, ChromaError, httpx errors...
        text = str(e).replace("\n", " ")[:400] or type(e).__name__
        name = type(e).__name__
        low = text.lower()
        if "could not connect" in low or "connect" in name.lower() or isinstance(e, OSError):
            raise SourceUnavailable(f"cannot reach {store.text()} while {doing}: {text}",
                                    hint="check that the server runs (`chroma run --path DIR "
                                         "--host HOST --port PORT`) and host, port and ssl in "
                                         "stackvault.yaml") from None
        if "auth" in low or "401" in text or "403" in text or "forbidden" in low:
            raise SourceUnavailable(f"{store.text()}: not authorised while {doing}: {text}",
                                    hint="set token_env to the variable holding the server's "
                                         "token") from None
        raise SourceError(f"{store.text()}: {doing} failed: {name}: {text}") from None
