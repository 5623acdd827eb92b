"""S3 adapter: buckets or prefixes of any S3-compatible store as one packed stream plus an index."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar
from urllib.parse import urlencode

from stackvault.errors import SourceCorrupt, SourceError, SourceUnavailable, UsageError
from stackvault.sources.base import (
    ArtifactSink,
    ArtifactSource,
    ComponentResult,
    Fingerprint,
    GeneratorReader,
    ProbeResult,
    Target,
)

INDEX = "index.jsonl"
DATA = "objects.bin"
FORMAT = "stackvault-s3-index"
FORMAT_VERSION = 1

READ = 1 << 20  # bytes per read from a body or from the data stream
SMALL = 1 << 20  # objects up to this size are fetched ahead (whole) by worker threads
WORKERS = 8  # concurrent requests (prefetch on backup, uploads/checks on restore)
WINDOW = 32  # objects fetched ahead / uploads in flight
SPOOL_MAX = 64 << 20  # a single PUT or a part larger than this is spooled to a temp file
PUT_MAX = 5 << 30  # the largest single PUT S3 accepts
DEFAULT_PART = 8 << 20  # part size for multipart uploads when the original's is unknown
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 60.0
ATTEMPTS = 2  # botocore attempts per request: an unreachable endpoint fails in seconds
HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART = re.compile(r"^[0-9a-f]{32}-(\d+)$")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_CREDENTIAL_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "InvalidToken", "ExpiredToken", "AllAccessDisabled", "403"}
_NO_TAGGING = {"NotImplemented", "MethodNotAllowed", "XNotImplemented", "501", "405"}
_NO_BUCKET = {"NoSuchBucket"}
_NO_KEY = {"NoSuchKey", "404", "NotFound"}


# --- locations and names ----------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """One configured `bucket` or `bucket/prefix`; the prefix is a folder (ends with `/`)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> Location:
        raw = text[5:] if text.startswith("s3://") else text
        bucket, _, prefix = raw.partition("/")
        if not _BUCKET.match(bucket):
            raise UsageError(f"invalid S3 bucket in {text!r}",
                             hint="write BUCKET or BUCKET/PREFIX, e.g. media/uploads")
        prefix = prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(bucket, prefix)

    @property
    def label(self) -> str:
        """`bucket` or `bucket/prefix/`: how the index and the fingerprint name it."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def covers(self, other: Location) -> bool:
        return self.bucket == other.bucket and other.prefix.startswith(self.prefix)


def _etag(value: Any) -> str:
    return str(value or "").strip('"').lower()


def _code(e: Any) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _status(e: Any) -> int:
    return int(getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


@dataclass
class Entry:
    """One object of the index (see `S3BucketSource` for the JSON form)."""

    loc: int
    key: str
    size: int
    offset: int
    sha256: str
    md5: str
    etag: str
    content_type: str | None
    metadata: dict[str, str]
    headers: dict[str, str]
    tags: dict[str, str] | None
    part_size: int | None = None
    parts: int | None = None

    def to_json(self, bucket: str) -> dict[str, Any]:
        return {"loc": self.loc, "bucket": bucket, "key": self.key, "size": self.size,
                "artifact": DATA, "offset": self.offset, "sha256": self.sha256,
                "md5": self.md5, "etag": self.etag, "parts": self.parts,
                "part_size": self.part_size, "content_type": self.content_type,
                "metadata": self.metadata, "headers": self.headers, "tags": self.tags}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Entry:
        return cls(loc=int(d["loc"]), key=str(d["key"]), size=int(d["size"]),
                   offset=int(d["offset"]), sha256=str(d["sha256"]), md5=str(d["md5"]),
                   etag=str(d["etag"]), content_type=d.get("content_type"),
                   metadata=dict(d.get("metadata") or {}), headers=dict(d.get("headers") or {}),
                   tags=None if d.get("tags") is None else dict(d["tags"]),
                   part_size=d.get("part_size"), parts=d.get("parts"))


def fingerprint_of(items: Sequence[tuple[str, str, int, str]]) -> Fingerprint:
    """Counts `objects` and `bytes`; digest `objects`: SHA-256 over the sorted JSON lines
    `[label, relative key, size, etag]` (ETag without quotes, lowercase)."""
    h = hashlib.sha256()
    for item in sorted(items):
        h.update(json.dumps(list(item)).encode("ascii") + b"\n")
    return Fingerprint(counts={"objects": len(items), "bytes": sum(i[2] for i in items)},
                       digests={"objects": h.hexdigest()})


# --- streams ------------------------------------------------------------------------------------


def _read_exact(f: BinaryIO, n: int, out: Callable[[bytes], None]) -> None:
    left = n
    while left:
        chunk = f.read(min(READ, left))
        if not chunk:
            raise SourceCorrupt(f"the snapshot's {DATA} ended early")
        out(chunk)
        left -= len(chunk)


def _take(f: BinaryIO, n: int, hashes: list[Any]) -> BinaryIO:
    """The next `n` bytes of `f` as a seekable file: in memory up to SPOOL_MAX, else spooled
    to a temporary file (botocore must be able to rewind a body to sign and retry it)."""
    buf: Any = io.BytesIO() if n <= SPOOL_MAX else tempfile.SpooledTemporaryFile(  # noqa: SIM115
        max_size=SPOOL_MAX)  # closed by the caller

    def out(chunk: bytes) -> None:
        for h in hashes:
            h.update(chunk)
        buf.write(chunk)

    _read_exact(f, n, out)
    buf.seek(0)
    return buf


# --- the adapter ----------------------------------------------------------------------------------


@dataclass
class RestoreStats:
    uploaded: int = 0
    skipped: int = 0
    retagged: int = 0
    deleted: int = 0
    buckets_created: list[str] = field(default_factory=list)

    def text(self) -> str:
        return (f"{self.uploaded} uploaded, {self.skipped} already identical, "
                f"{self.retagged} re-tagged, {self.deleted} deleted")


class S3BucketSource:
    """Buckets, or prefixes of buckets, of S3 or any S3-compatible store (MinIO, SeaweedFS,
    Ceph RGW): every object's bytes, content type, user metadata, the headers Cache-Control,
    Content-Disposition, Content-Encoding and Content-Language, and its tags.

    Artifacts (two streams, whatever the keys look like, so names always pass
    `validate_name`):

    - `objects.bin`: the bodies of all objects, concatenated in index order (locations in
      config order, keys in the store's listing order), no separators. Each body is streamed
      from GetObject into the sink (small ones are fetched ahead by worker threads), so
      memory stays bounded and nothing goes to disk. The repository cuts the stream into
      content-defined chunks, so objects deduplicate across snapshots and across buckets.
    - `index.jsonl`: UTF-8 JSON lines. Line 1, the header:
      `{"format": "stackvault-s3-index", "version": 1, "endpoint": URL|null,
      "locations": [{"bucket": B, "prefix": P}, ...], "objects": N, "bytes": N,
      "tags": "ok"|"unavailable"}`. Then one line per object:
      `{"loc": I, "bucket": B, "key": K, "size": N, "artifact": "objects.bin",
      "offset": O, "sha256": HEX, "md5": HEX, "etag": ETAG, "parts": N|null,
      "part_size": N|null, "content_type": T|null, "metadata": {..}, "headers": {..},
      "tags": {..}|null}` — `loc` indexes `locations`, `key` is the full S3 key, `offset`
      is where its bytes start in `objects.bin`, `sha256`/`md5` are computed while reading,
      `etag` is the store's (without quotes), `parts`/`part_size` describe a multipart
      upload (from HeadObject with PartNumber=1), `tags` is null when the store does not
      implement object tagging (recorded, not a failure).

    Fingerprint: counts `objects` and `bytes`; digest `objects` over the sorted
    `[location label, key relative to its prefix, size, ETag]` (see `fingerprint_of`). The
    live store is fingerprinted from one listing (no object is read), the backup from what was
    read. An ETag is the MD5 of the content for a single PUT, and the MD5 of the parts' MD5s
    for a multipart upload; a restore re-creates multipart objects with the same part size,
    so their ETags come back identical too. Stores whose ETags are not MD5s (AWS SSE-KMS or
    SSE-C) cannot be verified this way: their restores report differences.

    Restore (into the original locations, or `target={"url": "s3://BUCKET[/PREFIX]"}` on
    the same endpoint: with one location, the prefix replaces the location's prefix; with
    several, each goes under `PREFIX/BUCKET/ORIGINAL-PREFIX/`): creates missing buckets;
    lists the destination once and skips objects already identical (same size and the ETag
    recorded or the content's MD5, then same content type, metadata, headers — otherwise
    re-uploaded — and tags — otherwise re-tagged); uploads the others one by one, each
    checked against its SHA-256 from the index before it becomes visible (single PUT, or a
    multipart upload that is aborted on any failure), so no object is ever half written; a
    failure names how many objects were restored and which one failed, and a retry skips
    what is already there. With `mirror`, objects under the destination prefixes that the
    snapshot does not have are deleted, after every upload succeeded. `tables` are
    `BUCKET/KEY-PREFIX` selectors: only matching objects are restored (and mirrored).
    `force` changes nothing: a bucket has no "in use".
    """

    type: ClassVar[str] = "s3"

    def __init__(self, buckets: Sequence[str], endpoint_url: str | None = None,
                 region: str | None = None, access_key_env: str | None = None,
                 secret_key_env: str | None = None, verify_tls: bool = True,
                 mirror: bool = False) -> None:
        if isinstance(buckets, str) or not buckets:
            raise UsageError("the s3 source needs a list of one or more buckets")
        self.locations = [Location.parse(b) for b in buckets]
        for i, a in enumerate(self.locations):
            for j, b in enumerate(self.locations):
                if i != j and a.covers(b):
                    raise UsageError(f"S3 locations {a.label!r} and {b.label!r} overlap",
                                     hint="list each bucket or prefix once")
        if (access_key_env is None) != (secret_key_env is None):
            raise UsageError("give both access_key_env and secret_key_env, or neither")
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.region = region
        self.access_key_env = access_key_env
        self.secret_key_env = secret_key_env
        self.verify_tls = verify_tls
        self.mirror = mirror
        self._clients: Any = None
        self._lock = threading.Lock()
        self.last_restore: RestoreStats | None = None

    # -- connection
    @property
    def where(self) -> str:
        if self.endpoint_url:
            from stackvault.storage import redact_url
            return redact_url(self.endpoint_url)
        return "AWS S3"

    def _client(self) -> Any:
        with self._lock:
            if self._clients is not None:
                return self._clients
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError

            region = (self.region or os.environ.get("AWS_REGION")
                      or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
            config = Config(region_name=region, connect_timeout=CONNECT_TIMEOUT,
                            read_timeout=READ_TIMEOUT,
                            retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
                            max_pool_connections=WORKERS + WINDOW + 4,
                            s3={"addressing_style": "path"} if self.endpoint_url else {})
            kwargs: dict[str, Any] = {"config": config}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
            if not self.verify_tls or (self.endpoint_url or "").lower().startswith("http://"):
                kwargs["verify"] = False  # no TLS (or not checked): AWS_CA_BUNDLE must not matter
            if self.access_key_env and self.secret_key_env:
                for name in (self.access_key_env, self.secret_key_env):
                    if not os.environ.get(name):
                        raise UsageError(f"the environment variable {name} is not set",
                                         hint="it must hold the S3 key named in stackvault.yaml")
                kwargs["aws_access_key_id"] = os.environ[self.access_key_env]
                kwargs["aws_secret_access_key"] = os.environ[self.secret_key_env]
            try:
                self._clients = boto3.session.Session().client("s3", **kwargs)
            except (BotoCoreError, ValueError) as e:
                raise UsageError(f"cannot set up an S3 client for {self.where}: {e}",
                                 hint="check endpoint_url and region") from e
            return self._clients

    def _error(self, e: Exception, what: str, bucket: str | None = None) -> SourceError:
        """A botocore error as a StackVault one (never with credentials in it)."""
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        if isinstance(e, EndpointConnectionError | ConnectTimeoutError):
            return SourceUnavailable(
                f"cannot reach the S3 endpoint {self.where} ({what}): {type(e).__name__}",
                hint="check endpoint_url in stackvault.yaml and that the server is running")
        if isinstance(e, ConnectionClosedError | ReadTimeoutError):
            return SourceUnavailable(f"the S3 endpoint {self.where} stopped answering ({what})",
                                     hint="retry; check the server's health")
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return SourceUnavailable(f"no S3 credentials for {self.where}",
                                     hint="set access_key_env and secret_key_env, or "
                                          "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        if isinstance(e, ClientError):
            code = _code(e)
            if code in _CREDENTIAL_CODES or _status(e) == 403:
                return SourceUnavailable(
                    f"{self.where} refused the S3 credentials ({code}) for {what}",
                    hint="check the access key and secret key, and that they may "
                         "read and write these buckets")
            if code in _NO_BUCKET:
                return SourceUnavailable(
                    f"the S3 bucket {bucket!r} does not exist at {self.where}",
                    hint="check the bucket names of this component in stackvault.yaml")
            return SourceError(f"S3 {what} failed at {self.where}: {code or _status(e)}: "
                               f"{e.response.get('Error', {}).get('Message', '')}")
        return SourceError(f"S3 {what} failed at {self.where}: {e}")

    def _call(self, what: str, bucket: str | None, fn: Callable[..., Any], **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return fn(**kw)
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, what, bucket) from e

    def _check_bucket(self, bucket: str) -> bool:
        """Whether the bucket exists (head_bucket); other failures raise clearly."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            self._client().head_bucket(Bucket=bucket)
        except ClientError as e:
            if _status(e) == 404 or _code(e) in _NO_BUCKET | {"404", "NotFound"}:
                return False
            raise self._error(e, f"check of bucket {bucket!r}", bucket) from e
        except BotoCoreError as e:
            raise self._error(e, f"check of bucket {bucket!r}", bucket) from e
        return True

    def _list(self, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError
        pages = self._client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix)
        try:
            for page in pages:
                yield from page.get("Contents", [])
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, f"listing of {bucket}/{prefix}", bucket) from e

    # -- targets
    def _destinations(self, locations: list[Location], target: Target | None) -> list[Location]:
        """Where each location's objects go (same order)."""
        if target is None:
            return list(locations)
        if set(target) != {"url"}:
            raise UsageError(f"an s3 restore target takes exactly 'url', got {sorted(target)}",
                             hint="e.g. --to media=s3://scratch-bucket/restored")
        dest = Location.parse(str(target["url"]))
        if len(locations) == 1:
            return [dest]
        return [Location(dest.bucket, f"{dest.prefix}{loc.bucket}/{loc.prefix}")
                for loc in locations]

    # -- integrity rules (stackvault integrity): keys below the first configured location
    def object_keys(self, prefix: str = "") -> list[str]:
        loc = self.locations[0]
        return [o["Key"][len(loc.prefix):] for o in self._list(loc.bucket, loc.prefix + prefix)]

    def empty(self) -> int:
        """`stackvault reset`: delete every object under every configured location."""
        removed = 0
        for loc in self.locations:
            keys = [o["Key"] for o in self._list(loc.bucket, loc.prefix)]
            for start in range(0, len(keys), 1000):
                batch = keys[start:start + 1000]
                resp = self._call(f"deletes in {loc.bucket}", loc.bucket,
                                  self._client().delete_objects, Bucket=loc.bucket,
                                  Delete={"Objects": [{"Key": k} for k in batch],
                                          "Quiet": True})
                removed += len(batch) - len(resp.get("Errors") or [])
        return removed

    def delete_object_keys(self, keys: list[str]) -> int:
        loc = self.locations[0]
        deleted = 0
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            resp = self._call(f"deletes in {loc.bucket}", loc.bucket,
                              self._client().delete_objects, Bucket=loc.bucket,
                              Delete={"Objects": [{"Key": loc.prefix + k} for k in batch],
                                      "Quiet": True})
            deleted += len(batch) - len(resp.get("Errors") or [])
        return deleted

    # -- drills
    def scratch_target(self, label: str) -> Target:
        """A new bucket `sv-drill-<label>` on the same endpoint (created by the restore,
        deleted by `remove_target`): nothing is written next to live objects."""
        name = re.sub(r"[^a-z0-9-]", "-", f"sv-drill-{label}".lower())[:63].strip("-")
        return {"url": f"s3://{name}/"}

    def remove_target(self, target: Target) -> None:
        """Delete every object under the drill's destinations; a `sv-drill-` bucket too."""
        from botocore.exceptions import BotoCoreError, ClientError

        for d in self._destinations(self.locations, target):
            if not self._check_bucket(d.bucket):
                continue
            keys = [o["Key"] for o in self._list(d.bucket, d.prefix)]
            for start in range(0, len(keys), 1000):
                self._call(f"drill cleanup in {d.bucket}", d.bucket,
                           self._client().delete_objects, Bucket=d.bucket,
                           Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                   "Quiet": True})
            if d.bucket.startswith("sv-drill-"):
                try:
                    self._client().delete_bucket(Bucket=d.bucket)
                except (ClientError, BotoCoreError) as e:
                    raise self._error(e, f"deleting drill bucket {d.bucket}", d.bucket) from e

    def run_probe(self, probe: Mapping[str, Any], *, target: Target | None = None) -> str:
        """`{"key": KEY}` (relative to the first configured location): the object's size
        ('' if it does not exist)."""
        from botocore.exceptions import BotoCoreError, ClientError

        if set(probe) != {"key"}:
            raise UsageError(f"an s3 probe checks an object `key`; got {', '.join(sorted(probe))}")
        d = self._destinations(self.locations, target)[0]
        try:
            head = self._client().head_object(Bucket=d.bucket, Key=d.prefix + str(probe["key"]))
        except ClientError as e:
            if _status(e) == 404:
                return ""
            raise self._error(e, f"probe of {d.bucket}", d.bucket) from e
        except BotoCoreError as e:
            raise self._error(e, f"probe of {d.bucket}", d.bucket) from e
        return str(head.get("ContentLength", ""))

    def describe_target(self, target: Target | None = None) -> str:
        dests = self._destinations(self.locations, target)
        where = ", ".join(f"s3://{d.label}" for d in dests)
        mirror = ("; mirror: objects the snapshot lacks are deleted" if self.mirror
                  else "; other objects are kept (mirror off)")
        return (f"S3 {where} at {self.where}: objects written (identical ones skipped), "
                f"missing buckets created{mirror}")

    # -- inspection
    def probe(self) -> ProbeResult:
        import boto3
        version = f"boto3 {boto3.__version__}"
        try:
            missing = [loc.bucket for loc in self.locations if not self._check_bucket(loc.bucket)]
        except (SourceError, UsageError) as e:
            return ProbeResult(False, version, None, str(e))
        if missing:
            return ProbeResult(False, version, None,
                               f"{self.where}: no such bucket: {', '.join(missing)}")
        return ProbeResult(True, version, None,
                           f"{self.where}: {len(self.locations)} location(s) reachable")

    def fingerprint(self, *, target: Target | None = None) -> Fingerprint:
        items: list[tuple[str, str, int, str]] = []
        for loc, dest in zip(self.locations, self._destinations(self.locations, target),
                             strict=True):
            if not self._check_bucket(dest.bucket):
                continue  # no bucket: no objects (the comparison says what is missing)
            for obj in self._list(dest.bucket, dest.prefix):
                items.append((loc.label, obj["Key"][len(dest.prefix):], int(obj["Size"]),
                              _etag(obj.get("ETag"))))
        return fingerprint_of(items)

    # -- backup
    def backup(self, sink: ArtifactSink) -> ComponentResult:
        for loc in self.locations:
            if not self._check_bucket(loc.bucket):
                raise SourceUnavailable(f"the S3 bucket {loc.bucket!r} does not exist at "
                                        f"{self.where}",
                                        hint="check the bucket names of this component in "
                                             "stackvault.yaml")
        entries: list[Entry] = []
        state: dict[str, Any] = {"tags": "ok", "vanished": 0, "server": ""}
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="sv-s3") as pool:
            stream: Any = GeneratorReader(self._pack(pool, entries, state))
            data = sink.add_stream(DATA, stream)
        lines = [json.dumps({
            "format": FORMAT, "version": FORMAT_VERSION, "endpoint": self.endpoint_url,
            "locations": [{"bucket": loc.bucket, "prefix": loc.prefix} for loc in self.locations],
            "objects": len(entries), "bytes": data.size, "tags": state["tags"]},
            ensure_ascii=False)]
        lines += [json.dumps(e.to_json(self.locations[e.loc].bucket), ensure_ascii=False)
                  for e in entries]
        index = sink.add_stream(INDEX, io.BytesIO(("\n".join(lines) + "\n").encode()))
        fp = fingerprint_of([(self.locations[e.loc].label,
                              e.key[len(self.locations[e.loc].prefix):], e.size, e.etag)
                             for e in entries])
        import boto3
        versions = {"boto3": boto3.__version__}
        if state["server"]:
            versions["server"] = state["server"]
        return ComponentResult([data, index], fp, versions, {
            "endpoint": self.where, "locations": [loc.label for loc in self.locations],
            "objects": len(entries), "bytes": data.size, "tags": state["tags"],
            "vanished_during_backup": state["vanished"]})

    def _fetch(self, bucket: str, key: str, size: int, state: dict[str, Any]
               ) -> tuple[dict[str, Any] | None, bytes | None, dict[str, str] | None]:
        """GetObject (whole body if small) and its tags; (None, ...) if it vanished. A large
        object is opened by the caller when its turn comes (`_get`), not ahead: an opened
        response left waiting behind other large objects could time out."""
        tags = self._tags(bucket, key, state)
        if size > SMALL:
            return {}, None, tags
        resp = self._get(bucket, key)
        if resp is None:
            return None, None, None
        if int(resp["ContentLength"]) > SMALL:  # grew since the listing: read it in turn
            resp["Body"].close()
            return {}, None, tags
        from botocore.exceptions import BotoCoreError
        try:
            body = resp["Body"].read()
        except (BotoCoreError, OSError) as e:
            raise self._error(e, f"read of {bucket}/{key}", bucket) from e
        finally:
            resp["Body"].close()
        return resp, body, tags

    def _get(self, bucket: str, key: str) -> dict[str, Any] | None:
        """GetObject; None if the object is gone (deleted since the listing)."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            resp: dict[str, Any] = self._client().get_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if _code(e) in _NO_KEY:
                return None
            raise self._error(e, f"read of {bucket}/{key}", bucket) from e
        except BotoCoreError as e:
            raise self._error(e, f"read of {bucket}/{key}", bucket) from e
        return resp

    def _tags(self, bucket: str, key: str, state: dict[str, Any]) -> dict[str, str] | None:
        from botocore.exceptions import BotoCoreError, ClientError
        if state["tags"] != "ok":
            return None
        try:
            resp = self._client().get_object_tagging(Bucket=bucket, Key=key)
        except ClientError as e:
            if _code(e) in _NO_TAGGING or _status(e) in (405, 501):
                state["tags"] = "unavailable"  # the store has no object tagging: say so
                return None
            if _code(e) in _NO_KEY:
                return {}
            raise self._error(e, f"reading the tags of {bucket}/{key}", bucket) from e
        except BotoCoreError as e:
            raise self._error(e, f"reading the tags of {bucket}/{key}", bucket) from e
        return {t["Key"]: t["Value"] for t in resp.get("TagSet", [])}

    def _part_size(self, bucket: str, key: str, etag: str) -> tuple[int | None, int | None]:
        """(part size, parts) of a multipart upload, from HeadObject with PartNumber=1."""
        m = _MULTIPART.match(etag)
        if not m:
            return None, None
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            head = self._client().head_object(Bucket=bucket, Key=key, PartNumber=1,
                                              IfMatch=f'"{etag}"')
        except (ClientError, BotoCoreError):
            return None, int(m.group(1))  # unknown layout: restored with DEFAULT_PART
        return int(head["ContentLength"]), int(head.get("PartsCount") or m.group(1))

    def _pack(self, pool: ThreadPoolExecutor, entries: list[Entry],
              state: dict[str, Any]) -> Iterator[bytes]:
        """The bodies of every object, in order, appending an Entry for each."""
        offset = 0

        def listing() -> Iterator[tuple[int, str, int]]:
            for i, loc in enumerate(self.locations):
                for obj in self._list(loc.bucket, loc.prefix):
                    yield i, obj["Key"], int(obj["Size"])

        ahead: deque[tuple[int, str, int, Future[Any]]] = deque()
        todo = listing()
        while True:
            while len(ahead) < WINDOW:
                nxt = next(todo, None)
                if nxt is None:
                    break
                i, key, size = nxt
                ahead.append((i, key, size, pool.submit(
                    self._fetch, self.locations[i].bucket, key, size, state)))
            if not ahead:
                break
            i, key, _listed, fut = ahead.popleft()
            bucket = self.locations[i].bucket
            resp, body, tags = fut.result()
            if resp == {}:  # large: opened now
                resp = self._get(bucket, key)
            if resp is None:
                state["vanished"] += 1
                continue
            if not state["server"]:
                state["server"] = resp.get("ResponseMetadata", {}).get(
                    "HTTPHeaders", {}).get("server", "")
            size = int(resp["ContentLength"])
            sha, md5, got = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
            if body is not None:
                sha.update(body)
                md5.update(body)
                got = len(body)
                if body:
                    yield body
            else:
                from botocore.exceptions import BotoCoreError
                stream = resp["Body"]
                try:
                    while chunk := stream.read(READ):
                        sha.update(chunk)
                        md5.update(chunk)
                        got += len(chunk)
                        yield chunk
                except (BotoCoreError, OSError) as e:
                    raise self._error(e, f"read of {bucket}/{key}", bucket) from e
                finally:
                    stream.close()
            if got != size:
                raise SourceError(f"S3 object {bucket}/{key}: read {got} bytes, the store "
                                  f"announced {size}", hint="retry the backup")
            etag = _etag(resp.get("ETag"))
            part_size, parts = self._part_size(bucket, key, etag)
            entries.append(Entry(
                loc=i, key=key, size=size, offset=offset, sha256=sha.hexdigest(),
                md5=md5.hexdigest(), etag=etag, content_type=resp.get("ContentType"),
                metadata=dict(resp.get("Metadata") or {}),
                headers={h: str(resp[h]) for h in HEADERS if resp.get(h)},
                tags=tags, part_size=part_size, parts=parts))
            offset += size

    # -- restore
    def _read_index(self, source: ArtifactSource) -> tuple[dict[str, Any], list[Entry]]:
        names = source.names()
        for name in (INDEX, DATA):
            if name not in names:
                raise SourceCorrupt(f"the snapshot holds no {name} for this component")
        with source.open(INDEX) as f:
            raw = f.read()  # to EOF: verified against the manifest
        lines = raw.decode("utf-8").splitlines()
        try:
            header = json.loads(lines[0])
            entries = [Entry.from_json(json.loads(line)) for line in lines[1:] if line]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise SourceCorrupt(f"the snapshot's {INDEX} cannot be read: {e}") from e
        if header.get("format") != FORMAT or int(header.get("version", 0)) > FORMAT_VERSION:
            raise SourceCorrupt(f"{INDEX} is not a version {FORMAT_VERSION} {FORMAT}",
                                hint="restore it with the StackVault version that wrote it")
        return header, entries

    def restore(self, source: ArtifactSource, *, target: Target | None = None,
                tables: list[str] | None = None, force: bool = False) -> None:
        if tables is not None and not tables:
            raise UsageError("an empty selection restores nothing")
        header, entries = self._read_index(source)
        locations = [Location(str(d["bucket"]), str(d.get("prefix") or ""))
                     for d in header["locations"]]
        dests = self._destinations(locations, target)
        selected = self._select(entries, locations, tables)
        stats = RestoreStats()
        self.last_restore = stats

        # Buckets first (a missing one is created), then one listing of each destination.
        for b in dict.fromkeys(d.bucket for d in dests):
            if not self._check_bucket(b):
                self._create_bucket(b)
                stats.buckets_created.append(b)
        existing: list[dict[str, tuple[int, str]]] = [
            {o["Key"]: (int(o["Size"]), _etag(o.get("ETag")))
             for o in self._list(d.bucket, d.prefix)} for d in dests]

        def dest_of(e: Entry) -> tuple[str, str]:
            loc, d = locations[e.loc], dests[e.loc]
            return d.bucket, d.prefix + e.key[len(loc.prefix):]

        # Content already there: compare the rest in parallel before reading any data.
        plan: dict[int, str] = {}  # index in entries -> "skip" | "retag"
        candidates = []
        for n, e in enumerate(entries):
            if n not in selected:
                continue
            have = existing[e.loc].get(dest_of(e)[1])
            if have and have[0] == e.size and have[1] in (e.etag, e.md5):
                candidates.append(n)
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="sv-s3") as pool:
            for n, verdict in zip(candidates, pool.map(
                    lambda n: self._compare(entries[n], *dest_of(entries[n])), candidates),
                    strict=True):
                if verdict != "upload":
                    plan[n] = verdict

            done: list[str] = []
            inflight: deque[tuple[str, Future[None]]] = deque()

            def settle(limit: int) -> None:
                while len(inflight) > limit:
                    what, fut = inflight.popleft()
                    fut.result()
                    done.append(what)

            try:
                with source.open(DATA) as data:
                    pos = 0
                    for n, e in enumerate(entries):
                        if e.offset != pos:
                            raise SourceCorrupt(f"{INDEX}: object {n} starts at {e.offset}, "
                                                f"expected {pos}")
                        pos += e.size
                        bucket, key = dest_of(e)
                        if n not in selected or n in plan:
                            _read_exact(data, e.size, lambda _c: None)
                            if n in plan:
                                if plan[n] == "retag":
                                    self._put_tags(bucket, key, e.tags or {})
                                    stats.retagged += 1
                                else:
                                    stats.skipped += 1
                            continue
                        what = f"{bucket}/{key}"
                        if e.size <= SMALL:
                            sha = hashlib.sha256()
                            body = _take(data, e.size, [sha])
                            self._check_sha(e, sha, what)
                            inflight.append((what, pool.submit(
                                self._put, bucket, key, e, body)))
                            settle(WINDOW)
                        else:
                            settle(0)
                            self._upload_large(data, bucket, key, e)
                            done.append(what)
                        stats.uploaded += 1
                    settle(0)
                    if data.read(1):
                        raise SourceCorrupt(f"the snapshot's {DATA} is longer than its index")
                    data.read()  # EOF: the stream's own check against the manifest
            except BaseException as exc:
                for _what, fut in inflight:
                    fut.cancel()
                ok = []
                for what, fut in inflight:
                    if not fut.cancelled():
                        try:
                            fut.result()
                            ok.append(what)
                        except BaseException:  # noqa: BLE001, S110 - reported below
                            pass
                restored = len(done) + len(ok)
                if isinstance(exc, SourceError | UsageError):
                    raise type(exc)(
                        f"{exc.args[0]}; restore stopped after {restored} object(s) written "
                        f"and {stats.skipped} already identical; each object is written whole, "
                        "so a retry skips what is already restored",
                        hint=exc.hint) from exc
                raise

        if self.mirror:
            self._mirror(entries, selected, dests, existing, dest_of, tables, locations, stats)
        if tables:
            self._check_restored(entries, selected, dests, dest_of)

    def _select(self, entries: list[Entry], locations: list[Location],
                tables: list[str] | None) -> set[int]:
        if tables is None:
            return set(range(len(entries)))
        chosen: set[int] = set()
        for sel in tables:
            hits = {n for n, e in enumerate(entries)
                    if f"{locations[e.loc].bucket}/{e.key}".startswith(sel)}
            if not hits:
                raise UsageError(f"no object of the snapshot matches {sel!r}",
                                 hint="select objects as BUCKET/KEY-PREFIX; the snapshot has "
                                      "the buckets " + ", ".join(
                                          dict.fromkeys(loc.bucket for loc in locations)))
            chosen |= hits
        return chosen

    def _create_bucket(self, bucket: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError
        client = self._client()
        kwargs: dict[str, Any] = {"Bucket": bucket}
        region = client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(**kwargs)
        except ClientError as e:
            if _code(e) != "BucketAlreadyOwnedByYou":
                raise self._error(e, f"creation of bucket {bucket!r}", bucket) from e
        except BotoCoreError as e:
            raise self._error(e, f"creation of bucket {bucket!r}", bucket) from e

    def _compare(self, e: Entry, bucket: str, key: str) -> str:
        """For content already identical: "skip", "retag" or "upload" (other metadata)."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            head = self._client().head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if _code(err) in _NO_KEY:
                return "upload"
            raise self._error(err, f"check of {bucket}/{key}", bucket) from err
        except BotoCoreError as err:
            raise self._error(err, f"check of {bucket}/{key}", bucket) from err
        same = (head.get("ContentType") == e.content_type
                and dict(head.get("Metadata") or {}) == e.metadata
                and {h: str(head[h]) for h in HEADERS if head.get(h)} == e.headers)
        if not same:
            return "upload"
        if e.tags is None:
            return "skip"
        state = {"tags": "ok"}
        tags = self._tags(bucket, key, state)
        if state["tags"] != "ok" or tags == e.tags:
            return "skip"
        return "retag"

    def _object_args(self, e: Entry) -> dict[str, Any]:
        args: dict[str, Any] = {"Metadata": e.metadata, **e.headers}
        if e.content_type:
            args["ContentType"] = e.content_type
        if e.tags:
            args["Tagging"] = urlencode(e.tags)
        return args

    def _check_sha(self, e: Entry, sha: Any, what: str) -> None:
        if sha.hexdigest() != e.sha256:
            raise SourceCorrupt(f"{what}: the snapshot's bytes do not match the index's "
                                "SHA-256; not written")

    def _put(self, bucket: str, key: str, e: Entry, body: BinaryIO) -> None:
        with body:
            self._call(f"write of {bucket}/{key}", bucket, self._client().put_object,
                       Bucket=bucket, Key=key, Body=body, ContentLength=e.size,
                       **self._object_args(e))

    def _put_tags(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        self._call(f"tagging of {bucket}/{key}", bucket, self._client().put_object_tagging,
                   Bucket=bucket, Key=key,
                   Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})

    def _upload_large(self, data: BinaryIO, bucket: str, key: str, e: Entry) -> None:
        what = f"{bucket}/{key}"
        if e.parts is None and e.size <= PUT_MAX:
            sha = hashlib.sha256()
            body = _take(data, e.size, [sha])
            self._check_sha(e, sha, what)
            self._put(bucket, key, e, body)
            return
        part = e.part_size or DEFAULT_PART
        while -(-e.size // part) > 10000:
            part *= 2
        client = self._client()
        up = self._call(f"write of {what}", bucket, client.create_multipart_upload,
                        Bucket=bucket, Key=key, **self._object_args(e))
        upload_id = up["UploadId"]
        try:
            sha = hashlib.sha256()
            parts = []
            left, number = e.size, 1
            while left:
                n = min(part, left)
                md5 = hashlib.md5(usedforsecurity=False)
                body = _take(data, n, [sha, md5])
                with body:
                    resp = self._call(
                        f"write of {what} (part {number})", bucket, client.upload_part,
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        Body=body, ContentLength=n,
                        ContentMD5=base64.b64encode(md5.digest()).decode())
                parts.append({"PartNumber": number, "ETag": resp["ETag"]})
                left -= n
                number += 1
            self._check_sha(e, sha, what)
            self._call(f"write of {what}", bucket, client.complete_multipart_upload,
                       Bucket=bucket, Key=key, UploadId=upload_id,
                       MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:  # noqa: BLE001, S110 - the first error is the one to report
                pass
            raise

    def _mirror(self, entries: list[Entry], selected: set[int], dests: list[Location],
                existing: list[dict[str, tuple[int, str]]],
                dest_of: Callable[[Entry], tuple[str, str]], tables: list[str] | None,
                locations: list[Location], stats: RestoreStats) -> None:
        """Delete what the destinations held before the restore and the snapshot lacks
        (with `tables`, only under the selected prefixes)."""
        keep = {dest_of(e) for n, e in enumerate(entries) if n in selected}
        for i, d in enumerate(dests):
            loc = locations[i]
            doomed = []
            for key in existing[i]:
                if (d.bucket, key) in keep:
                    continue
                if tables is not None and not any(
                        f"{loc.bucket}/{loc.prefix}{key[len(d.prefix):]}".startswith(sel)
                        for sel in tables):
                    continue
                doomed.append(key)
            for start in range(0, len(doomed), 1000):
                batch = doomed[start:start + 1000]
                resp = self._call(f"mirror deletes in {d.bucket}", d.bucket,
                                  self._client().delete_objects, Bucket=d.bucket,
                                  Delete={"Objects": [{"Key": k} for k in batch],
                                          "Quiet": True})
                errors = resp.get("Errors") or []
                stats.deleted += len(batch) - len(errors)
                if errors:
                    first = errors[0]
                    raise SourceError(f"mirror: {len(errors)} object(s) in {d.bucket} could not "
                                      f"be deleted, e.g. {first.get('Key')!r}: "
                                      f"{first.get('Code')}; every object was restored")

    def _check_restored(self, entries: list[Entry], selected: set[int],
                        dests: list[Location],
                        dest_of: Callable[[Entry], tuple[str, str]]) -> None:
        """After a selective restore (which the stack's fingerprint check cannot cover):
        every selected object is at its destination with its size and ETag."""
        found: dict[tuple[str, str], tuple[int, str]] = {}
        for d in dests:
            for o in self._list(d.bucket, d.prefix):
                found[(d.bucket, o["Key"])] = (int(o["Size"]), _etag(o.get("ETag")))
        bad = [f"{b}/{k}" for n, e in enumerate(entries) if n in selected
               for b, k in [dest_of(e)]
               if found.get((b, k), (-1, ""))[0] != e.size
               or found[(b, k)][1] not in (e.etag, e.md5)]
        if bad:
            raise SourceError(f"{len(bad)} restored object(s) do not match the snapshot, "
                              f"e.g. {bad[0]!r}", hint="retry the restore")

