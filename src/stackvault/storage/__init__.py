"""Object-store backends behind one interface, and ``open_storage`` to pick one from a URL."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from stackvault.errors import StorageError, UsageError
from stackvault.storage.base import ObjectInfo, Storage, check_name
from stackvault.storage.local import LocalStorage
from stackvault.storage.memory import MemoryStorage
from stackvault.storage.wrappers import FaultyStorage, ReadOnlyStorage, RetryStorage

if TYPE_CHECKING:
    from stackvault.storage.s3 import S3Storage

__all__ = [
    "FaultyStorage",
    "LocalStorage",
    "MemoryStorage",
    "ObjectInfo",
    "ReadOnlyStorage",
    "RetryStorage",
    "Storage",
    "check_name",
    "open_storage",
    "redact_url",
]

SUPPORTED_FORMS = (
    "supported repository locations: a folder (/srv/backup, ./repo, local:PATH), "
    "memory:NAME (tests), s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX], "
    "s3:HOST[:PORT]/BUCKET[/PREFIX] (https), "
    "s3://BUCKET[/PREFIX] (endpoint from AWS_ENDPOINT_URL, else AWS)"
)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.DOTALL)
_USERINFO = re.compile(r"(?<=://)[^/?#]*@")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")

# 8 attempts ride out about 11-23 s of outage (delays 0.2, 0.4 ... capped at 10 s, jittered).
S3_ATTEMPTS = 8

_memory_lock = threading.Lock()
_memory_stores: dict[str, MemoryStorage] = {}


def redact_url(url: str) -> str:
    """Remove any ``user:password@`` from a URL, wherever it appears (``s3:http://…`` too)."""
    return _USERINFO.sub("", url)


def open_storage(url: str, *, create: bool = False) -> Storage:
    """Open the storage named by ``url``; ``create`` makes the folder or bucket (for init).

    S3 storage comes wrapped in RetryStorage; local and memory storage fail only for
    reasons a retry would not fix, so they are returned bare.
    """
    if not url or not url.strip():
        raise UsageError("no repository location given", hint=SUPPORTED_FORMS)
    match = _SCHEME.match(url)
    if match is None:  # /abs/path, ./rel, ~/x, rel/path
        return LocalStorage(Path(url), create=create)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "local":
        if not rest:
            raise UsageError("local: needs a folder, e.g. local:/srv/backup", hint=SUPPORTED_FORMS)
        return LocalStorage(Path(rest), create=create)
    if scheme == "memory":
        if not rest:
            raise UsageError("memory: needs a name, e.g. memory:test", hint=SUPPORTED_FORMS)
        with _memory_lock:
            return _memory_stores.setdefault(rest, MemoryStorage(rest))
    if scheme == "s3":
        return _open_s3(url, create=create)
    raise UsageError(
        f"unknown storage scheme {scheme!r} in {redact_url(url)!r}",
        hint=SUPPORTED_FORMS + f"; for a folder whose name contains ':' write ./{url}",
    )


def parse_s3_url(url: str) -> tuple[str | None, str, str]:
    """``s3:…`` URL -> (endpoint URL or None for AWS/env, bucket, prefix)."""
    rest = url[3:] if url[:3].lower() == "s3:" else url
    shown = redact_url(url)
    if rest.startswith("//"):  # s3://BUCKET/PREFIX
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        path = rest[2:]
    else:
        if not re.match(r"^https?://", rest, re.IGNORECASE):
            rest = "https://" + rest  # restic style s3:HOST/BUCKET means https
        try:
            parts = urlsplit(rest)
            _ = parts.port  # raises ValueError on a bad port
        except ValueError as e:
            raise UsageError(f"invalid S3 URL {shown!r}: {e}", hint=SUPPORTED_FORMS) from None
        if "@" in parts.netloc:
            raise UsageError(
                f"credentials in the S3 URL {shown!r} are not supported",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead",
            )
        if not parts.hostname or parts.query or parts.fragment:
            raise UsageError(f"invalid S3 URL {shown!r}", hint=SUPPORTED_FORMS)
        endpoint = f"{parts.scheme.lower()}://{parts.netloc}"
        path = parts.path
    bucket, _, prefix = path.lstrip("/").partition("/")
    if not bucket:
        raise UsageError(f"no bucket in the S3 URL {shown!r}", hint=SUPPORTED_FORMS)
    if not _BUCKET.match(bucket):
        raise UsageError(f"invalid bucket name {bucket!r} in {shown!r}", hint=SUPPORTED_FORMS)
    prefix = prefix.strip("/")
    if prefix:
        try:
            check_name(prefix)
        except StorageError:
            raise UsageError(f"invalid prefix {prefix!r} in {shown!r}") from None
    return endpoint, bucket, prefix


def _open_s3(url: str, *, create: bool) -> Storage:
    endpoint, bucket, prefix = parse_s3_url(url)
    try:
        from stackvault.storage.s3 import S3Storage
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("boto3", "botocore"):
            raise
        raise UsageError(
            "S3 storage needs the boto3 package, which is not installed",
            hint="install it: pip install boto3 (it is a dependency of stackvault)",
        ) from None
    s3: S3Storage = S3Storage(endpoint, bucket, prefix)
    storage = RetryStorage(s3, attempts=S3_ATTEMPTS)
    if create:
        storage.call("create bucket", bucket, s3.ensure_bucket)
    return storage
