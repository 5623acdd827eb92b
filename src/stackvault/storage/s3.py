"""Object storage on S3 or an S3-compatible server (SeaweedFS, MinIO, Ceph RGW) via boto3."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)

from stackvault.errors import (
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StorageFull,
    TransientStorageError,
)
from stackvault.storage.base import ObjectInfo, check_name
from stackvault.storage.memory import check_prefix, check_range

# Error codes worth retrying (besides any 5xx, 408 and 429).
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "ConditionalRequestConflict",  # AWS: a concurrent conditional write; a retry sees 412
    "OperationAborted",
    "BadDigest",  # the body was damaged on the way
    "IncompleteBody",
}
_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "InvalidSecurity",
    "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_FULL_CODES = {"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage"}  # before 5xx

CREDENTIALS_HINT = (
    "check the S3 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
    "and that they may read and write this bucket"
)


def _bucket_hint(bucket: str) -> str:
    return (
        f"create the bucket {bucket!r} first (`stackvault init` creates it), "
        "or check the bucket name in the repository URL"
    )


class S3Storage:
    """Objects as keys ``PREFIX/NAME`` in one bucket.

    Credentials come from boto3's usual chain (environment, profile, instance role).
    Retries are disabled in botocore: RetryStorage does them, for every backend alike.
    ``put`` is a conditional ``PutObject`` (``If-None-Match: *``), atomic on S3.
    """

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        create_bucket: bool = False,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_pool_connections: int = 32,
    ) -> None:
        if not bucket:
            raise StorageError("no S3 bucket given")
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.region = (
            region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        ) or "us-east-1"
        config = Config(
            region_name=self.region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max_pool_connections,
            s3={"addressing_style": "path"},
        )
        kwargs: dict[str, Any] = {"config": config}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
            if self.endpoint_url.lower().startswith("http://"):
                # No TLS, so no CA bundle: never let a (possibly broken) AWS_CA_BUNDLE matter.
                kwargs["verify"] = False
        try:
            session = boto3.session.Session()
            self._client = session.client("s3", **kwargs)
        except BotoCoreError as e:
            raise StorageError(f"cannot set up the S3 client for {self.location}: {e}") from e
        except ValueError as e:  # e.g. an invalid endpoint URL
            raise StorageError(f"invalid S3 endpoint {self.location}: {e}") from e
        self._bucket_ok = False  # set once any call showed the bucket exists
        if create_bucket:
            self.ensure_bucket()

    # Object stores answer with latency, not bandwidth, per request: keep several packs in
    # flight. (Local disk needs one: more only adds buffered packs to peak memory.)
    parallel_uploads = 4

    @property
    def location(self) -> str:
        from stackvault.storage import redact_url

        if self.endpoint_url:
            return f"s3:{redact_url(self.endpoint_url)}/{self.bucket}/{self.prefix}".rstrip("/")
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    # --- bucket ----------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (used by ``init``)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as e:
            code = _code(e)
            if code == "BucketAlreadyOwnedByYou":
                pass
            elif code == "BucketAlreadyExists":
                # Someone's bucket: fine if it is reachable with our credentials.
                if not self._bucket_exists():
                    raise StorageError(
                        f"the bucket name {self.bucket!r} is taken by another account",
                        hint="choose another bucket name",
                    ) from e
            else:
                raise self._error(e, "create bucket", self.bucket) from e
        except BotoCoreError as e:
            raise self._error(e, "create bucket", self.bucket) from e
        self._bucket_ok = True

    def _bucket_exists(self) -> bool:
        """head_bucket: True if it exists, False if not; other failures raise."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if _status(e) == 404 or _code(e) in ("NoSuchBucket", "404", "NotFound"):
                return False
            raise self._error(e, "check bucket", self.bucket, check_bucket=False) from e
        except BotoCoreError as e:
            raise self._error(e, "check bucket", self.bucket, check_bucket=False) from e
        self._bucket_ok = True
        return True

    def _missing_bucket_error(self) -> StorageError:
        return StorageError(
            f"the S3 bucket {self.bucket!r} does not exist at {self.location}",
            hint=_bucket_hint(self.bucket),
        )

    # --- Storage ---------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview) -> None:
        key = self._key(name)
        if not isinstance(data, bytes):
            data = bytes(data)  # botocore wants bytes (a pack arrives as a view of a buffer)
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as e:
            if _code(e) == "PreconditionFailed" or _status(e) == 412:
                self._bucket_ok = True
                # SeaweedFS also answers 412 when the name is a folder of other objects
                # (even one whose objects were all deleted): tell the two apart.
                try:
                    self.stat(name)
                except ObjectNotFound:
                    raise StorageError(
                        f"cannot store {name!r} in {self.location}: the server refused it "
                        "as existing, but it is no object (a folder of that name exists?)"
                    ) from e
                raise ObjectExists(f"object {name!r} already exists in {self.location}") from e
            raise self._error(e, "put", name) from e
        except BotoCoreError as e:
            raise self._error(e, "put", name) from e
        self._bucket_ok = True

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(name)
        check_range(name, offset, length)
        if length == 0:
            size = self.stat(name).size
            if offset > size:
                raise _past_end(name, offset, length, size)
            return b""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            resp = self._client.get_object(**kwargs)
            data: bytes = resp["Body"].read()
        except ClientError as e:
            if _code(e) == "InvalidRange" or _status(e) == 416:
                # S3 refuses a range starting at the end; ours allows it when nothing is asked.
                size = self.stat(name).size
                if offset == size and length is None:
                    return b""
                raise _past_end(name, offset, length, size) from e
            raise self._error(e, "get", name) from e
        except (BotoCoreError, OSError) as e:
            raise self._error(e, "get", name) from e
        self._bucket_ok = True
        if "Range" in kwargs and resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:
            # The server ignored the Range header and sent the whole object.
            whole = data
            end_at = len(whole) if length is None else offset + length
            if offset > len(whole) or end_at > len(whole):
                raise _past_end(name, offset, length, len(whole))
            data = whole[offset:end_at]
        if length is not None and len(data) != length:
            # S3 answers a range that runs past the end with what there is.
            size = offset + len(data)
            raise _past_end(name, offset, length, size)
        return data

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            raise self._error(e, "stat", name) from e
        except BotoCoreError as e:
            raise self._error(e, "stat", name) from e
        self._bucket_ok = True
        return ObjectInfo(name, int(resp["ContentLength"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        cut = len(self.prefix)
        try:
            for page in pages:
                self._bucket_ok = True
                for obj in page.get("Contents", ()):
                    key: str = obj["Key"]
                    if key.endswith("/"):
                        continue  # a folder marker some tools create, not an object
                    yield ObjectInfo(key[cut:], int(obj["Size"]))
        except ClientError as e:
            raise self._error(e, "list", prefix) from e
        except BotoCoreError as e:
            raise self._error(e, "list", prefix) from e

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _code(e) in _NOT_FOUND_CODES:
                return
            raise self._error(e, "delete", name) from e
        except BotoCoreError as e:
            raise self._error(e, "delete", name) from e
        self._bucket_ok = True

    def close(self) -> None:
        self._client.close()

    # --- errors ----------------------------------------------------------------------

    def _error(
        self, e: Exception, op: str, name: str, *, check_bucket: bool = True
    ) -> StorageError:
        """Map a boto3/botocore exception to the StackVault hierarchy. Never leaks secrets."""
        where = f"S3 {op} {name!r} in {self.location}"
        if isinstance(e, ClientError):
            code, status = _code(e), _status(e)
            message = e.response.get("Error", {}).get("Message") or ""
            detail = f"{where} failed: {code}" + (f" ({message})" if message else "")
            if code == "NoSuchBucket":
                return self._missing_bucket_error()
            if code == "NoSuchKey":  # has a body, so the bucket is there
                self._bucket_ok = True
                return ObjectNotFound(f"object {name!r} not found in {self.location}")
            if status in (403, 404) and check_bucket and not self._bucket_ok:
                # HEAD errors have no body, and SeaweedFS answers a put into a missing
                # bucket with AccessDenied: ask whether the bucket is there at all.
                try:
                    exists = self._bucket_exists()
                except StorageError:
                    exists = True
                if not exists:
                    return self._missing_bucket_error()
            if code in _NOT_FOUND_CODES or (status == 404 and op in ("get", "stat")):
                return ObjectNotFound(f"object {name!r} not found in {self.location}")
            if code in _FULL_CODES:
                return StorageFull(detail, hint="the storage or its quota is full")
            if code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
                return TransientStorageError(detail)
            if code in _CREDENTIAL_CODES or status == 403:
                return StorageError(detail, hint=CREDENTIALS_HINT)
            if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301"):
                return StorageError(
                    detail,
                    hint=f"the bucket is in another region than {self.region}: set AWS_REGION",
                )
            if code == "RequestTimeTooSkewed":
                return StorageError(detail, hint="the system clock is wrong; fix it (NTP)")
            return StorageError(detail)
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return StorageError(f"{where} failed: {e}", hint=CREDENTIALS_HINT)
        if isinstance(e, SSLError):
            text = str(e)
            if "CERTIFICATE" in text.upper():
                return StorageError(
                    f"{where} failed: {text}",
                    hint="the server's TLS certificate is not trusted; check AWS_CA_BUNDLE",
                )
            return TransientStorageError(f"{where} failed: {text}")
        if isinstance(
            e, ConnectionError | HTTPClientError | IncompleteReadError | ChecksumError | OSError
        ):
            return TransientStorageError(f"{where} failed: {e}")
        return StorageError(f"{where} failed: {e}")


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _past_end(name: str, offset: int, length: int | None, size: int) -> StorageError:
    return StorageError(
        f"range offset={offset} length={length} is past the end of {name!r} ({size} bytes)"
    )
