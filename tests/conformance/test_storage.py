"""One conformance suite for every storage backend, plus backend- and wrapper-specific tests."""

from __future__ import annotations

import errno
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackvault import errors
from stackvault.errors import (
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StorageFull,
    StorageUnavailable,
    TransientStorageError,
    UsageError,
)
from stackvault.storage import (
    LocalStorage,
    MemoryStorage,
    ObjectInfo,
    Storage,
    open_storage,
    redact_url,
)
from stackvault.storage.wrappers import FaultyStorage, ReadOnlyStorage, RetryStorage

BACKENDS = ["memory", "local", pytest.param("s3", marks=pytest.mark.s3)]


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def names(storage: Storage, prefix: str = "") -> set[str]:
    return {info.name for info in storage.list(prefix)}


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    backend: Storage
    if request.param == "memory":
        backend = MemoryStorage()
    elif request.param == "local":
        backend = LocalStorage(tmp_path / "repo", create=True)
    else:
        from stackvault.storage.s3 import S3Storage

        endpoint = request.getfixturevalue("seaweed")
        bucket = request.getfixturevalue("s3_bucket")
        backend = S3Storage(endpoint, bucket, prefix="repos/conformance")
    yield backend
    backend.close()


# =========================================================================================
# The conformance suite: every backend
# =========================================================================================


def test_implements_protocol(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    assert storage.location


@pytest.mark.parametrize("size", [0, 1, 1000, 70_000])
def test_put_get_roundtrip(storage: Storage, size: int) -> None:
    data = payload(size, seed=size)
    storage.put("data/ab/ab01", data)
    assert storage.get("data/ab/ab01") == data
    assert storage.stat("data/ab/ab01") == ObjectInfo("data/ab/ab01", size)


def test_large_object(storage: Storage) -> None:
    data = payload(20 * 1024 * 1024, seed=20)
    storage.put("data/big", data)
    assert storage.stat("data/big").size == len(data)
    assert storage.get("data/big") == data
    assert storage.get("data/big", 12_345_678, 1_000_000) == data[12_345_678:13_345_678]


def test_put_if_absent(storage: Storage) -> None:
    storage.put("config", b"original")
    with pytest.raises(ObjectExists):
        storage.put("config", b"replacement")
    with pytest.raises(ObjectExists):
        storage.put("config", b"original")
    assert storage.get("config") == b"original"
    assert names(storage) == {"config"}


def test_ranges(storage: Storage) -> None:
    data = bytes(range(256)) * 4  # 1024 bytes
    storage.put("obj", data)
    assert storage.get("obj", 0, 10) == data[:10]  # start
    assert storage.get("obj", 500, 24) == data[500:524]  # middle
    assert storage.get("obj", 1000) == data[1000:]  # to the end
    assert storage.get("obj", 1000, 24) == data[1000:]  # exactly to the end
    assert storage.get("obj", 0, 1024) == data
    assert storage.get("obj", 1023, 1) == data[1023:]
    assert storage.get("obj", 5, 0) == b""
    assert storage.get("obj", 1024) == b""  # from the end: nothing left, not an error
    with pytest.raises(StorageError) as exc:
        storage.get("obj", 1000, 25)  # runs past the end
    assert not isinstance(exc.value, ObjectNotFound)
    with pytest.raises(StorageError):
        storage.get("obj", 1025)  # starts past the end
    with pytest.raises(StorageError):
        storage.get("obj", 2000, 10)
    with pytest.raises(StorageError):
        storage.get("obj", 1025, 0)
    with pytest.raises(StorageError):
        storage.get("obj", -1, 10)
    with pytest.raises(StorageError):
        storage.get("obj", 0, -1)


def test_ranges_of_empty_object(storage: Storage) -> None:
    storage.put("empty", b"")
    assert storage.get("empty") == b""
    assert storage.get("empty", 0) == b""
    assert storage.get("empty", 0, 0) == b""
    with pytest.raises(StorageError):
        storage.get("empty", 0, 1)
    with pytest.raises(StorageError):
        storage.get("empty", 1)


def test_stat_sizes(storage: Storage) -> None:
    for i, size in enumerate([0, 1, 4096, 100_001]):
        storage.put(f"sizes/{i}", payload(size))
    assert [storage.stat(f"sizes/{i}").size for i in range(4)] == [0, 1, 4096, 100_001]


def test_list_by_prefix(storage: Storage) -> None:
    objects = {
        "config": 3,
        "data/ab/ab01": 5,
        "data/ab/ab02": 0,
        "data/abc/abc01": 7,
        "data/a/a01": 1,
        "data/b1": 2,
        "keys/k1": 4,
        "snapshots/s1": 6,
        "snapshots2/s": 8,
    }
    for name, size in objects.items():
        storage.put(name, payload(size))
    everything = {info.name: info.size for info in storage.list()}
    assert everything == objects
    assert everything == {info.name: info.size for info in storage.list("")}
    assert names(storage, "data/") == {n for n in objects if n.startswith("data/")}
    assert names(storage, "data/ab/") == {"data/ab/ab01", "data/ab/ab02"}
    assert names(storage, "data/ab") == {"data/ab/ab01", "data/ab/ab02", "data/abc/abc01"}
    assert names(storage, "data/a") == {
        "data/ab/ab01",
        "data/ab/ab02",
        "data/abc/abc01",
        "data/a/a01",
    }
    assert names(storage, "data/ab/ab0") == {"data/ab/ab01", "data/ab/ab02"}
    assert names(storage, "data/ab/ab01") == {"data/ab/ab01"}
    assert names(storage, "snapshots/") == {"snapshots/s1"}
    assert names(storage, "snapshots") == {"snapshots/s1", "snapshots2/s"}
    assert names(storage, "conf") == {"config"}
    assert names(storage, "config") == {"config"}
    assert names(storage, "config/") == set()
    assert names(storage, "nothing/") == set()
    assert names(storage, "nothing") == set()
    assert names(storage, "data/zz/") == set()
    assert names(storage, "data/ab/ab03") == set()


def test_list_sees_every_object_written_before(storage: Storage) -> None:
    written = {f"locks/{i:03d}" for i in range(150)}
    for name in written:
        storage.put(name, name.encode())
    assert names(storage, "locks/") == written
    assert all(info.size == 9 for info in storage.list("locks/"))


def test_delete_is_idempotent(storage: Storage) -> None:
    storage.put("locks/one", b"x")
    storage.put("locks/two", b"y")
    storage.delete("locks/one")
    storage.delete("locks/one")
    storage.delete("locks/never-existed")
    storage.delete("nowhere/at/all")
    assert names(storage) == {"locks/two"}
    with pytest.raises(ObjectNotFound):
        storage.get("locks/one")
    storage.put("locks/one", b"again")  # a deleted name can be written again
    assert storage.get("locks/one") == b"again"


def test_missing_object(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        storage.get("data/zz/missing")
    with pytest.raises(ObjectNotFound):
        storage.get("data/zz/missing", 10, 5)
    with pytest.raises(ObjectNotFound):
        storage.stat("data/zz/missing")
    storage.put("data/zz/present", b"here")
    with pytest.raises(ObjectNotFound):
        storage.get("data/zz")  # a folder is not an object
    with pytest.raises(ObjectNotFound):
        storage.stat("data/zz")
    with pytest.raises(ObjectNotFound):
        storage.get("data/zz/present/below")


def test_concurrent_puts_of_one_name(storage: Storage) -> None:
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    blobs = {i: payload(200_000, seed=i) for i in range(8)}

    def writer(i: int) -> None:
        barrier.wait()
        try:
            storage.put("index/race", blobs[i])
            outcomes.append(f"ok-{i}")
        except ObjectExists:
            outcomes.append("exists")
        except Exception as e:  # reported below, not swallowed
            outcomes.append(f"error {type(e).__name__}: {e}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [o for o in outcomes if o.startswith("ok-")]
    assert len(outcomes) == 8
    assert len(winners) == 1, outcomes
    assert outcomes.count("exists") == 7, outcomes
    assert storage.get("index/race") == blobs[int(winners[0][3:])]
    assert names(storage) == {"index/race"}


def test_concurrent_puts_of_many_names(storage: Storage) -> None:
    def writer(t: int) -> None:
        for i in range(10):
            storage.put(f"data/{t:02x}/{i:04d}", payload(1000 + i, seed=t * 100 + i))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    found = {info.name: info.size for info in storage.list("data/")}
    assert len(found) == 80
    assert storage.get("data/07/0009") == payload(1009, seed=709)


INVALID_NAMES = ["", "/abs", "a//b", "a/", "./a", "a/./b", "../up", "a/../b", "a\\b", "nul\x00"]


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_rejected(storage: Storage, name: str) -> None:
    with pytest.raises(StorageError):
        storage.put(name, b"x")
    with pytest.raises(StorageError):
        storage.get(name)
    with pytest.raises(StorageError):
        storage.stat(name)
    with pytest.raises(StorageError):
        storage.delete(name)
    assert names(storage) == set()


@pytest.mark.parametrize("prefix", ["/abs", "../", "a/../", "a//"])
def test_invalid_list_prefix_rejected(storage: Storage, prefix: str) -> None:
    with pytest.raises(StorageError):
        list(storage.list(prefix))


def test_name_used_as_folder_is_refused(storage: Storage) -> None:
    """'x' cannot be stored next to 'x/y' (disk, SeaweedFS); never as if it existed."""
    storage.put("x/y", b"1")
    with pytest.raises(StorageError) as exc:
        storage.put("x", b"2")
    assert not isinstance(exc.value, ObjectExists)
    with pytest.raises(ObjectNotFound):
        storage.stat("x")


# =========================================================================================
# Local disk
# =========================================================================================


def test_local_put_out_of_space_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "repo", create=True)
    storage.put("keys/k1", b"key")  # tmp/ exists now: the write itself is what fails
    fsynced: list[int] = []

    def no_space(fd: int) -> None:
        fsynced.append(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageFull) as exc:
        storage.put("data/ab/ab01", payload(10_000))
    assert exc.value.exit_code == errors.ExitCode.STORAGE_FULL
    monkeypatch.undo()
    assert len(fsynced) == 1
    assert list((tmp_path / "repo" / "tmp").iterdir()) == []
    assert names(storage) == {"keys/k1"}
    with pytest.raises(ObjectNotFound):
        storage.stat("data/ab/ab01")
    storage.put("data/ab/ab01", b"fine now")
    assert storage.get("data/ab/ab01") == b"fine now"


def test_local_without_hard_links_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path, create=True)

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(StorageError) as exc:
        storage.put("config", b"x")
    assert "hard links" in (exc.value.hint or "")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_local_temp_files_are_hidden_and_reserved(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, create=True)
    storage.put("data/x", b"1")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    (tmp_path / "tmp" / "crashed-put.tmp").write_bytes(b"half")  # left by a killed writer
    assert names(storage) == {"data/x"}
    assert names(storage, "tmp") == set()
    with pytest.raises(StorageError):
        storage.put("tmp/x", b"1")
    with pytest.raises(StorageError):
        storage.put("tmp", b"1")


def test_local_layout_and_durable_put(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path, create=True)
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    storage.put("data/ab/ab01", b"content")
    assert (tmp_path / "data" / "ab" / "ab01").read_bytes() == b"content"
    assert len(synced) >= 2  # the file, then the folder (and every new folder's parent)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_local_missing_root_is_created_on_put(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "new" / "repo")
    with pytest.raises(ObjectNotFound):
        storage.get("config")
    assert names(storage) == set()
    storage.delete("config")
    assert not (tmp_path / "new").exists()  # reads never create anything
    storage.put("config", b"x")
    assert (tmp_path / "new" / "repo" / "config").read_bytes() == b"x"


def test_local_object_where_folder_expected(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, create=True)
    storage.put("a", b"1")
    with pytest.raises(StorageError) as exc:
        storage.put("a/b", b"2")
    assert not isinstance(exc.value, ObjectExists)
    with pytest.raises(ObjectNotFound):
        storage.get("a/b")
    assert names(storage) == {"a"}


def test_memory_object_where_folder_expected() -> None:
    storage = MemoryStorage()
    storage.put("a", b"1")
    with pytest.raises(StorageError) as exc:
        storage.put("a/b", b"2")
    assert not isinstance(exc.value, ObjectExists)
    storage.put("c/d", b"1")
    storage.delete("c/d")
    with pytest.raises(StorageError):
        storage.put("c", b"1")  # like a folder left on disk after its objects went


# =========================================================================================
# Wrappers
# =========================================================================================


def no_sleep(_: float) -> None:
    pass


def run_workload(storage: Storage, seed: int) -> dict[str, bytes]:
    """200 mixed operations; returns every object's content at the end."""
    rng = random.Random(seed)
    present: list[str] = []
    for i in range(200):
        op = rng.choice(["put", "put", "put", "get", "range", "stat", "list", "delete"])
        if op == "put" or not present:
            name = f"data/{i % 7:02x}/{i:04d}"
            storage.put(name, payload(rng.randrange(0, 3000), seed=i))
            present.append(name)
        elif op == "get":
            storage.get(rng.choice(present))
        elif op == "range":
            name = rng.choice(present)
            size = storage.stat(name).size
            offset = rng.randrange(0, size + 1)
            assert len(storage.get(name, offset, size - offset)) == size - offset
        elif op == "stat":
            storage.stat(rng.choice(present))
        elif op == "list":
            assert names(storage, "data/") == set(present)
        else:
            name = present.pop(rng.randrange(len(present)))
            storage.delete(name)
    return {info.name: storage.get(info.name) for info in storage.list()}


def test_retry_over_faulty_storage_gives_identical_data() -> None:
    expected = run_workload(MemoryStorage(), seed=7)
    faulty = FaultyStorage(MemoryStorage(), fail_rate=0.5, timeout_rate=0.1, seed=3)
    result = run_workload(RetryStorage(faulty, attempts=40, sleep=no_sleep), seed=7)
    assert result == expected
    assert len(expected) > 50
    assert faulty.injected["put"] > 20 and faulty.injected["list"] > 0


def test_retry_gives_up_with_storage_unavailable() -> None:
    delays: list[float] = []
    faulty = FaultyStorage(MemoryStorage(), fail_rate=1.0)
    storage = RetryStorage(faulty, attempts=4, base_delay=0.5, max_delay=1.5, sleep=delays.append)
    with pytest.raises(StorageUnavailable) as exc:
        storage.get("data/ab/ab01")
    assert faulty.calls["get"] == 4
    assert len(delays) == 3
    assert 0.25 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1.0 and 0.75 <= delays[2] <= 1.5
    assert "get" in str(exc.value) and "data/ab/ab01" in str(exc.value)
    assert "4 attempts" in str(exc.value)
    assert exc.value.exit_code == errors.ExitCode.STORAGE_UNAVAILABLE
    with pytest.raises(StorageUnavailable):
        list(storage.list("data/"))
    assert faulty.calls["list"] == 4


def test_retry_passes_permanent_errors_through() -> None:
    faulty = FaultyStorage(MemoryStorage())
    storage = RetryStorage(faulty, sleep=no_sleep)
    with pytest.raises(ObjectNotFound):
        storage.get("missing")
    storage.put("a", b"1")
    with pytest.raises(ObjectExists):
        storage.put("a", b"1")  # no earlier failure: a plain ObjectExists
    with pytest.raises(StorageError):
        storage.put("../x", b"1")
    assert faulty.calls == {"put": 3, "get": 1, "stat": 0, "list": 0, "delete": 0}


def test_retry_put_that_landed_despite_timeout_succeeds() -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner, fail_ops=("put",), timeout_rate=1.0)
    RetryStorage(faulty, sleep=no_sleep).put("data/x", b"mine")
    assert inner.get("data/x") == b"mine"
    assert faulty.calls["put"] == 2


def test_retry_put_finding_other_content_raises_object_exists() -> None:
    inner = MemoryStorage()
    inner.put("config", b"theirs")
    faulty = FaultyStorage(inner, fail_ops=("put",), fail_next=1)
    with pytest.raises(ObjectExists):
        RetryStorage(faulty, sleep=no_sleep).put("config", b"mine!!")
    with pytest.raises(ObjectExists):
        RetryStorage(FaultyStorage(inner, fail_next=1), sleep=no_sleep).put("config", b"mine")
    assert inner.get("config") == b"theirs"


def test_retry_list_restarts_without_duplicates() -> None:
    inner = MemoryStorage()
    for i in range(50):
        inner.put(f"snapshots/{i:02d}", b"s")
    faulty = FaultyStorage(inner, fail_ops=("list",), fail_rate=0.7, seed=1)
    listed = [info.name for info in RetryStorage(faulty, attempts=30, sleep=no_sleep).list()]
    assert sorted(listed) == sorted(names(inner))
    assert faulty.injected["list"] > 1


def test_faulty_storage_is_deterministic() -> None:
    def pattern(seed: int) -> list[bool]:
        faulty = FaultyStorage(MemoryStorage(), fail_rate=0.5, seed=seed)
        out = []
        for _ in range(40):
            try:
                faulty.stat("x")
            except TransientStorageError:
                out.append(True)
            except ObjectNotFound:
                out.append(False)
        return out

    assert pattern(1) == pattern(1)
    assert pattern(1) != pattern(2)
    faulty = FaultyStorage(MemoryStorage(), fail_next=2, fail_ops=("get",))
    faulty.put("x", b"1")
    for _ in range(2):
        with pytest.raises(TransientStorageError):
            faulty.get("x")
    assert faulty.get("x") == b"1"


def test_faulty_storage_slows_calls() -> None:
    slept: list[float] = []
    FaultyStorage(MemoryStorage(), delay=0.25, sleep=slept.append).put("x", b"1")
    assert slept == [0.25]


def test_read_only_storage_refuses_writes() -> None:
    inner = MemoryStorage()
    inner.put("config", b"c")
    storage = ReadOnlyStorage(inner)
    with pytest.raises(errors.ReadOnlyStorage):
        storage.put("data/x", b"1")
    with pytest.raises(errors.ReadOnlyStorage):
        storage.delete("config")
    assert storage.get("config") == b"c"
    assert storage.stat("config").size == 1
    assert names(storage) == {"config"}
    assert names(inner) == {"config"}


# =========================================================================================
# S3 specifics (SeaweedFS)
# =========================================================================================


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_s3_unreachable_endpoint_gives_storage_unavailable(aws_test_env: None) -> None:
    from stackvault.storage.s3 import S3Storage

    s3 = S3Storage(f"http://127.0.0.1:{_closed_port()}", "bucket", "p", connect_timeout=1)
    storage = RetryStorage(s3, attempts=3, base_delay=0.01, max_delay=0.05)
    started = time.monotonic()
    for call in (
        lambda: storage.get("config"),
        lambda: storage.put("config", b"x"),
        lambda: list(storage.list()),
    ):
        with pytest.raises(StorageUnavailable) as exc:
            call()
        assert exc.value.exit_code == errors.ExitCode.STORAGE_UNAVAILABLE
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("SlowDown", 503, TransientStorageError),
        ("InternalError", 500, TransientStorageError),
        ("ServiceUnavailable", 503, TransientStorageError),
        ("Throttling", 400, TransientStorageError),
        ("RequestTimeout", 400, TransientStorageError),
        ("TooManyRequests", 429, TransientStorageError),
        ("XMinioStorageFull", 507, StorageFull),
        ("NoSuchKey", 404, ObjectNotFound),
        ("404", 404, ObjectNotFound),
        ("AccessDenied", 403, StorageError),
        ("InvalidAccessKeyId", 403, StorageError),
        ("SignatureDoesNotMatch", 403, StorageError),
        ("NoSuchBucket", 404, StorageError),
        ("MalformedXML", 400, StorageError),
    ],
)
def test_s3_error_mapping(aws_test_env: None, code: str, status: int, expected: type) -> None:
    from botocore.exceptions import ClientError

    from stackvault.storage.s3 import S3Storage

    s3 = S3Storage(f"http://127.0.0.1:{_closed_port()}", "bucket", "p")
    s3._bucket_ok = True  # no extra head_bucket call to tell a missing bucket apart
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    mapped = s3._error(ClientError(response, "GetObject"), "get", "data/x")
    assert type(mapped) is expected
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        assert "credentials" in (mapped.hint or "")
    if code == "NoSuchBucket":
        assert "init" in (mapped.hint or "")


def test_s3_hanging_server_times_out_as_transient(aws_test_env: None) -> None:
    from stackvault.storage.s3 import S3Storage

    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        s3 = S3Storage(endpoint, "bucket", connect_timeout=1, read_timeout=0.5)
        with pytest.raises(TransientStorageError):
            s3.stat("config")
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            RetryStorage(s3, attempts=2, base_delay=0.01).get("config")
        assert time.monotonic() - started < 5


@pytest.mark.s3
def test_s3_missing_bucket_hint_and_create(seaweed: str) -> None:
    from stackvault.storage.s3 import S3Storage

    bucket = f"t-missing-{uuid.uuid4().hex[:8]}"
    storage = S3Storage(seaweed, bucket, "repo")
    for call in (
        lambda: storage.put("config", b"x"),
        lambda: storage.get("config"),
        lambda: storage.stat("config"),
        lambda: list(storage.list()),
    ):
        with pytest.raises(StorageError) as exc:
            call()
        assert type(exc.value) is StorageError
        assert "does not exist" in str(exc.value) and "init" in (exc.value.hint or "")
    created = S3Storage(seaweed, bucket, "repo", create_bucket=True)
    created.ensure_bucket()  # idempotent
    created.put("config", b"x")
    assert storage.get("config") == b"x"


@pytest.mark.s3
def test_s3_wrong_credentials(
    seaweed: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stackvault.storage.s3 import S3Storage

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-do-not-print")
    storage = RetryStorage(S3Storage(seaweed, s3_bucket), attempts=3, sleep=no_sleep)
    for call in (
        lambda: storage.put("x", b"1"),
        lambda: storage.get("x"),
        lambda: storage.stat("x"),
        lambda: list(storage.list()),
    ):
        with pytest.raises(StorageError) as exc:
            call()
        assert type(exc.value) is StorageError  # permanent: not retried
        assert "credentials" in (exc.value.hint or "")
        assert "wrong-secret" not in str(exc.value)


@pytest.mark.s3
def test_s3_http_endpoint_ignores_broken_ca_bundle(
    seaweed: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stackvault.storage.s3 import S3Storage

    monkeypatch.setenv("AWS_CA_BUNDLE", "/nonexistent/ca-bundle.pem")
    storage = S3Storage(seaweed, s3_bucket, "ca")
    storage.put("x", b"1")
    assert storage.get("x") == b"1"


@pytest.mark.s3
def test_s3_prefix_isolates_repositories(seaweed: str, s3_bucket: str) -> None:
    from stackvault.storage.s3 import S3Storage

    one = S3Storage(seaweed, s3_bucket, "hosts/one")
    two = S3Storage(seaweed, s3_bucket, "hosts/one-two/")
    whole = S3Storage(seaweed, s3_bucket)
    one.put("config", b"1")
    two.put("config", b"2")
    assert names(one) == {"config"} and names(two) == {"config"}
    assert names(whole) == {"hosts/one/config", "hosts/one-two/config"}
    assert one.location.endswith(f"/{s3_bucket}/hosts/one")


# =========================================================================================
# open_storage and redact_url
# =========================================================================================


def test_open_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cases = {
        str(tmp_path / "a"): tmp_path / "a",
        f"local:{tmp_path / 'b'}": tmp_path / "b",
        "rel/c": tmp_path / "rel" / "c",
        "./d:e": tmp_path / "d:e",
        "local:f:g": tmp_path / "f:g",
    }
    for url, path in cases.items():
        storage = open_storage(url, create=True)
        assert isinstance(storage, LocalStorage), url
        assert storage.root == path
        assert path.is_dir()
    monkeypatch.setenv("HOME", str(tmp_path))
    home = open_storage("~/backups")
    assert isinstance(home, LocalStorage) and home.root == tmp_path / "backups"


def test_open_memory_is_named_and_shared() -> None:
    name = f"conformance-{uuid.uuid4().hex}"
    first = open_storage(f"memory:{name}")
    assert isinstance(first, MemoryStorage)
    assert open_storage(f"memory:{name}") is first
    assert open_storage(f"memory:{name}-other") is not first
    first.put("x", b"1")
    assert open_storage(f"memory:{name}").get("x") == b"1"


def _s3_of(storage: Storage) -> tuple[str | None, str, str]:
    from stackvault.storage.s3 import S3Storage

    assert isinstance(storage, RetryStorage)
    assert isinstance(storage.inner, S3Storage)
    return storage.inner.endpoint_url, storage.inner.bucket, storage.inner.prefix


def test_open_s3_forms(aws_test_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        "s3:http://127.0.0.1:9000/bucket": ("http://127.0.0.1:9000", "bucket", ""),
        "s3:http://127.0.0.1:9000/bucket/": ("http://127.0.0.1:9000", "bucket", ""),
        "s3:http://localhost:8333/bkt/a/b/": ("http://localhost:8333", "bkt", "a/b/"),
        "s3:https://s3.example.com/bkt/p": ("https://s3.example.com", "bkt", "p/"),
        "S3:HTTPS://s3.example.com/bkt": ("https://s3.example.com", "bkt", ""),
        "s3:s3.example.com:9443/bkt/p": ("https://s3.example.com:9443", "bkt", "p/"),
        "s3://bkt/host-a": (None, "bkt", "host-a/"),
        "s3://bkt": (None, "bkt", ""),
    }
    for url, expected in cases.items():
        storage = open_storage(url)
        assert _s3_of(storage) == expected, url
        assert "s3" in storage.location
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    assert _s3_of(open_storage("s3://bkt/x")) == ("http://127.0.0.1:8333", "bkt", "x/")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9333")
    assert _s3_of(open_storage("s3://bkt"))[0] == "http://127.0.0.1:9333"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://host/x",
        "sftp:user@host:/srv",
        "backup:2024",
        "rclone:remote:path",
        "memory:",
        "local:",
        "s3:",
        "s3://",
        "s3:http://127.0.0.1:9000",
        "s3:http://127.0.0.1:9000/",
        "s3:http://127.0.0.1:notaport/bkt",
        "s3:http://127.0.0.1:9000/bkt?x=1",
        "s3:bucket-only",
        "s3://b/../escape",
    ],
)
def test_open_storage_rejects_bad_urls(url: str, aws_test_env: None) -> None:
    with pytest.raises(UsageError) as exc:
        open_storage(url)
    assert exc.value.exit_code == errors.ExitCode.USAGE
    if url.startswith(("ftp", "sftp", "backup", "rclone")):
        assert "unknown storage scheme" in str(exc.value)
        assert "s3:http(s)://HOST[:PORT]/BUCKET" in (exc.value.hint or "")
        assert "memory:NAME" in (exc.value.hint or "")


def test_open_s3_refuses_credentials_in_url(aws_test_env: None) -> None:
    with pytest.raises(UsageError) as exc:
        open_storage("s3:http://AKIAKEY:supersecret@127.0.0.1:9000/bkt")
    assert "supersecret" not in str(exc.value) and "AKIAKEY" not in str(exc.value)
    assert "AWS_ACCESS_KEY_ID" in (exc.value.hint or "")


def test_open_s3_without_boto3_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "stackvault.storage.s3", raising=False)
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` fail
    with pytest.raises(UsageError) as exc:
        open_storage("s3://bucket/prefix")
    assert "boto3" in str(exc.value) and "pip install boto3" in (exc.value.hint or "")


@pytest.mark.s3
def test_open_s3_create_makes_bucket(seaweed: str) -> None:
    bucket = f"t-init-{uuid.uuid4().hex[:8]}"
    url = f"s3:{seaweed}/{bucket}/repo"
    storage = open_storage(url, create=True)
    storage.put("config", b"c")
    assert open_storage(url).get("config") == b"c"
    assert storage.location == url


def test_redact_url() -> None:
    assert redact_url("s3:http://key:secret@host:9000/b/p") == "s3:http://host:9000/b/p"
    assert redact_url("https://user@host/x") == "https://host/x"
    assert redact_url("https://u:p@ss@host/x@y") == "https://host/x@y"
    assert redact_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert redact_url("/srv/backup") == "/srv/backup"
