"""The s3 data source against a real SeaweedFS (`weed mini`): round trips compared object by
object (bytes, content type, user metadata, headers, tags) with empty objects, unicode and odd
keys, a multipart object; several buckets and a prefix; dedup across buckets and snapshots;
restore elsewhere, skip-identical, mirror, selective restore; corrupted artifacts; unreachable
endpoint, missing bucket, wrong credentials; many small objects."""

from __future__ import annotations

import hashlib
import io
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from stackvault.errors import SourceCorrupt, SourceUnavailable, UsageError
from stackvault.ops.repo_artifacts import RepoArtifactSource, RepoSink
from stackvault.repo.crypto import TEST_KDF
from stackvault.repo.pack import TREE
from stackvault.repo.repository import Repository
from stackvault.repo.snapshot import Snapshot, now
from stackvault.repo.tree import DIR, Node
from stackvault.repo.writer import BlobWriter
from stackvault.sources.base import ComponentResult, DataSource
from stackvault.sources.directory import DirectorySink, DirectorySource
from stackvault.sources.s3bucket import DATA, INDEX, S3BucketSource
from stackvault.storage.memory import MemoryStorage

pytestmark = pytest.mark.s3

MiB = 1 << 20
HEADER_FIELDS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")


# --- helpers -------------------------------------------------------------------------------------


def client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, verify=False,
        config=Config(region_name="us-east-1", s3={"addressing_style": "path"}))


def new_bucket(c: Any, tag: str) -> str:
    name = f"t-{tag}-{random.getrandbits(40):010x}"
    c.create_bucket(Bucket=name)
    return name


def source(endpoint: str, buckets: list[str], **kw: Any) -> S3BucketSource:
    return S3BucketSource(buckets, endpoint_url=endpoint, **kw)


def state(c: Any, bucket: str, prefix: str = "") -> dict[str, tuple[Any, ...]]:
    """Key relative to prefix -> (sha256, size, content type, metadata, headers, tags)."""
    out: dict[str, tuple[Any, ...]] = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            r = c.get_object(Bucket=bucket, Key=o["Key"])
            body = r["Body"].read()
            tags = c.get_object_tagging(Bucket=bucket, Key=o["Key"])["TagSet"]
            out[o["Key"][len(prefix):]] = (
                hashlib.sha256(body).hexdigest(), len(body), r.get("ContentType"),
                r.get("Metadata"), {h: r.get(h) for h in HEADER_FIELDS if r.get(h)},
                sorted((t["Key"], t["Value"]) for t in tags))
    return out


def etags(c: Any, bucket: str, prefix: str = "") -> dict[str, str]:
    return {o["Key"][len(prefix):]: o["ETag"]
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])}


MULTIPART = "big/multipart.bin"


def populate(c: Any, bucket: str, prefix: str = "", seed: int = 1) -> None:
    """Objects with every feature the adapter keeps, and keys S3 allows but paths do not."""
    rnd = random.Random(seed)
    p = prefix

    def put(key: str, body: bytes, **kw: Any) -> None:
        c.put_object(Bucket=bucket, Key=p + key, Body=body, **kw)

    put("docs/readme.txt", b"hello\n" * 100, ContentType="text/plain; charset=utf-8",
        Metadata={"owner": "zoe", "Source-System": "ingest-v2"}, Tagging="team=rag&tier=hot",
        CacheControl="max-age=60", ContentDisposition='attachment; filename="r.txt"',
        ContentEncoding="identity", ContentLanguage="de")
    put("docs/data.json", b'{"a": 1}', ContentType="application/json", Tagging="k=v%20w")
    put("empty", b"")
    put("folder-marker/", b"")  # SeaweedFS keeps a trailing-slash key only as an empty object
    put("ünïcødé/日本語 ファイル 🙂.txt", "こんにちは".encode(), Metadata={"lang": "ja"})
    put("..hidden", b"dot dot")
    put("x/..y/z", b"dots inside")
    put("a..b", b"double dot")
    put("a//b", b"double slash")  # SeaweedFS stores and lists it as a/b
    put("sp ace?&=#+%2F", b"url-ish")
    put("/".join(["seg" * 60] * 5), b"long key")  # 904 characters (SeaweedFS: 255 per segment)
    for i in range(20):
        put(f"small/{i:03d}.bin", rnd.randbytes(rnd.randint(0, 5000)))
    put("medium/random.bin", rnd.randbytes(3 * MiB), ContentType="application/octet-stream")
    big = rnd.randbytes(9 * MiB + 12345)
    c.upload_fileobj(io.BytesIO(big), bucket, p + MULTIPART,
                     ExtraArgs={"ContentType": "application/x-big", "Metadata": {"m": "1"},
                                "Tagging": "size=big"},
                     Config=TransferConfig(multipart_threshold=8 * MiB,
                                           multipart_chunksize=5 * MiB))


class Repo:
    """An in-memory repository that takes component backups like the stack backup does."""

    def __init__(self) -> None:
        self.repo = Repository.init(MemoryStorage(), "pw", kdf=TEST_KDF)

    def backup(self, src: S3BucketSource, name: str = "media"
               ) -> tuple[Snapshot, ComponentResult, int]:
        with BlobWriter(self.repo) as writer:
            sink = RepoSink(self.repo, writer)
            result = src.backup(sink)
            comp = sink.tree()
            root, raw = self.repo.save_tree([Node(name=name, type=DIR, subtree=comp)])
            writer.save_now(TREE, raw)
            writer.flush()
            added = writer.stats.bytes_new
        manifest = {"components": {name: {"status": "ok", **result.to_dict()}}}
        snap = Snapshot(time=now(), hostname="h", username="u", paths=[f"/{name}"],
                        tree=root.hex(), kind="stack", extra={"manifest": manifest})
        self.repo.save_snapshot(snap)
        return snap, result, added

    def source(self, snap: Snapshot, name: str = "media") -> RepoArtifactSource:
        return RepoArtifactSource(self.repo, snap, name)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- round trips ---------------------------------------------------------------------------------


def test_round_trip_into_another_bucket_keeps_everything(seaweed: str, s3_bucket: str) -> None:
    c = client(seaweed)
    populate(c, s3_bucket)
    before = state(c, s3_bucket)
    assert "a/b" in before and "a//b" not in before  # SeaweedFS normalises '//'
    assert c.head_object(Bucket=s3_bucket, Key=MULTIPART)["ETag"].endswith('-2"')
    src = source(seaweed, [s3_bucket])
    assert isinstance(src, DataSource)
    assert src.probe().reachable

    repo = Repo()
    snap, result, _ = repo.backup(src)
    assert [a.name for a in result.artifacts] == [DATA, INDEX]
    assert result.fingerprint.counts["objects"] == len(before)
    assert result.fingerprint.counts["bytes"] == sum(v[1] for v in before.values())
    assert src.fingerprint().compare(result.fingerprint) == []  # live == backup
    assert result.extra["tags"] == "ok"  # SeaweedFS implements object tagging

    other = new_bucket(c, "restore")
    target = {"url": f"s3://{other}/restored/here"}
    assert "restored/here" in src.describe_target(target)
    src.restore(repo.source(snap), target=target)
    assert state(c, other, "restored/here/") == before
    assert etags(c, other, "restored/here/") == etags(c, s3_bucket)  # multipart ETag too
    assert result.fingerprint.compare(src.fingerprint(target=target)) == []
    assert src.last_restore is not None and src.last_restore.uploaded == len(before)

    # Into a bucket that does not exist yet: created.
    fresh = f"t-new-{random.getrandbits(32):08x}"
    src.restore(repo.source(snap), target={"url": fresh})
    assert state(c, fresh) == before
    assert src.last_restore.buckets_created == [fresh]


def test_several_buckets_and_a_prefix(seaweed: str) -> None:
    c = client(seaweed)
    a, b = new_bucket(c, "a"), new_bucket(c, "b")
    populate(c, a, seed=1)
    populate(c, b, prefix="keep/", seed=2)
    c.put_object(Bucket=b, Key="outside/not-backed-up", Body=b"no")
    c.put_object(Bucket=b, Key="keepers/not-a-child", Body=b"no")  # the prefix is a folder
    src = source(seaweed, [a, f"{b}/keep"])
    repo = Repo()
    snap, result, _ = repo.backup(src)
    assert result.fingerprint.counts["objects"] == len(state(c, a)) + len(state(c, b, "keep/"))

    # Several locations into one target: each under PREFIX/BUCKET/ORIGINAL-PREFIX/.
    t = new_bucket(c, "t")
    target = {"url": f"s3://{t}/r"}
    src.restore(repo.source(snap), target=target)
    assert state(c, t, f"r/{a}/") == state(c, a)
    assert state(c, t, f"r/{b}/keep/") == state(c, b, "keep/")
    assert result.fingerprint.compare(src.fingerprint(target=target)) == []

    # Lost objects come back in place; what is outside the prefix is not touched.
    before_a, before_b = state(c, a), state(c, b)
    for key in list(before_a)[:5]:
        c.delete_object(Bucket=a, Key=key)
    c.delete_object(Bucket=b, Key=f"keep/{MULTIPART}")
    src.restore(repo.source(snap))
    assert state(c, a) == before_a and state(c, b) == before_b
    assert src.last_restore is not None and src.last_restore.uploaded == 6
    assert result.fingerprint.compare(src.fingerprint()) == []


def test_objects_deduplicate_across_buckets_and_snapshots(seaweed: str) -> None:
    c = client(seaweed)
    a, b = new_bucket(c, "da"), new_bucket(c, "db")
    rnd = random.Random(7)
    objects = {f"obj/{i:04d}": rnd.randbytes(rnd.choice([300, 4000, 70_000, 600_000, 2 * MiB]))
               for i in range(60)}
    for k, v in objects.items():
        c.put_object(Bucket=a, Key=k, Body=v)
    total = sum(len(v) for v in objects.values())
    repo = Repo()
    _, first, added_first = repo.backup(source(seaweed, [a]))
    assert added_first > total * 0.95

    _, again, added_again = repo.backup(source(seaweed, [a]))  # unchanged
    assert again.fingerprint.compare(first.fingerprint) == []
    assert added_again < total * 0.02

    for k, v in objects.items():  # the same objects in a second bucket, under other keys
        c.put_object(Bucket=b, Key=f"copy/{k}", Body=v)
    _, both, added_both = repo.backup(source(seaweed, [a, b]))
    assert both.fingerprint.counts["bytes"] == 2 * total
    assert added_both < total * 0.10, (added_both, total)  # measured: 5%: chunks at the seam

    # One object changed out of 60: a little more than that object is stored.
    c.put_object(Bucket=a, Key="obj/0007", Body=rnd.randbytes(len(objects["obj/0007"])))
    _, _, added_change = repo.backup(source(seaweed, [a, b]))
    assert added_change < len(objects["obj/0007"]) + 3 * (4 << 20)
    assert added_change < total * 0.25


def test_restore_skips_identical_objects_and_mirrors_only_when_asked(
        seaweed: str, s3_bucket: str) -> None:
    c = client(seaweed)
    populate(c, s3_bucket)
    before = state(c, s3_bucket)
    src = source(seaweed, [s3_bucket])
    repo = Repo()
    snap, result, _ = repo.backup(src)

    # Nothing changed: nothing uploaded.
    src.restore(repo.source(snap))
    assert src.last_restore is not None
    assert (src.last_restore.uploaded, src.last_restore.skipped) == (0, len(before))

    # Damage: a deleted object, changed content, changed metadata, changed tags, an extra.
    c.delete_object(Bucket=s3_bucket, Key="docs/data.json")
    c.put_object(Bucket=s3_bucket, Key="small/003.bin", Body=b"changed")
    c.copy_object(Bucket=s3_bucket, Key="empty", CopySource={"Bucket": s3_bucket, "Key": "empty"},
                  Metadata={"new": "meta"}, MetadataDirective="REPLACE")
    c.put_object_tagging(Bucket=s3_bucket, Key="docs/readme.txt",
                         Tagging={"TagSet": [{"Key": "team", "Value": "other"}]})
    c.put_object(Bucket=s3_bucket, Key="extra/new-since-backup", Body=b"extra")
    assert result.fingerprint.compare(src.fingerprint()) != []
    src.restore(repo.source(snap))
    stats = src.last_restore
    assert (stats.uploaded, stats.retagged, stats.deleted) == (3, 1, 0)
    assert stats.skipped == len(before) - 4
    now_state = state(c, s3_bucket)
    assert "extra/new-since-backup" in now_state  # mirror is off: kept
    del now_state["extra/new-since-backup"]
    assert now_state == before

    src.restore(repo.source(snap))  # a second restore uploads nothing
    assert (src.last_restore.uploaded, src.last_restore.skipped) == (0, len(before))

    mirror = source(seaweed, [s3_bucket], mirror=True)
    assert "deleted" in mirror.describe_target()
    mirror.restore(repo.source(snap))
    assert mirror.last_restore is not None and mirror.last_restore.deleted == 1
    assert state(c, s3_bucket) == before
    assert result.fingerprint.compare(mirror.fingerprint()) == []


def test_selective_restore_by_key_prefix(seaweed: str, s3_bucket: str) -> None:
    c = client(seaweed)
    populate(c, s3_bucket)
    before = state(c, s3_bucket)
    src = source(seaweed, [s3_bucket], mirror=True)
    repo = Repo()
    snap, _, _ = repo.backup(src)
    for key in ("docs/readme.txt", "docs/data.json", "small/001.bin"):
        c.delete_object(Bucket=s3_bucket, Key=key)
    c.put_object(Bucket=s3_bucket, Key="docs/extra", Body=b"x")
    c.put_object(Bucket=s3_bucket, Key="other-extra", Body=b"x")
    src.restore(repo.source(snap), tables=[f"{s3_bucket}/docs/"])
    now_state = state(c, s3_bucket)
    assert now_state["docs/readme.txt"] == before["docs/readme.txt"]
    assert "docs/extra" not in now_state  # mirrored under the selected prefix only
    assert "other-extra" in now_state and "small/001.bin" not in now_state
    assert src.last_restore is not None and src.last_restore.uploaded == 2
    with pytest.raises(UsageError, match="no object"):
        src.restore(repo.source(snap), tables=[f"{s3_bucket}/nothing-here/"])


def test_empty_bucket_round_trip(seaweed: str, s3_bucket: str) -> None:
    src = source(seaweed, [s3_bucket])
    repo = Repo()
    snap, result, _ = repo.backup(src)
    assert result.fingerprint.counts == {"objects": 0, "bytes": 0}
    other = f"t-empty-{random.getrandbits(32):08x}"
    src.restore(repo.source(snap), target={"url": other})
    assert result.fingerprint.compare(src.fingerprint(target={"url": other})) == []


# --- damaged artifacts -------------------------------------------------------------------------


def test_damaged_object_bytes_are_never_written(seaweed: str, s3_bucket: str,
                                                tmp_path: Path) -> None:
    c = client(seaweed)
    for i in range(5):
        c.put_object(Bucket=s3_bucket, Key=f"k{i}", Body=bytes([65 + i]) * 1000)
    src = source(seaweed, [s3_bucket])
    src.backup(DirectorySink(tmp_path / "art"))
    data = tmp_path / "art" / DATA
    raw = bytearray(data.read_bytes())
    raw[2500] ^= 0xFF  # inside k2
    data.write_bytes(bytes(raw))
    other = new_bucket(c, "dmg")
    with pytest.raises(SourceCorrupt, match=r"k2.*SHA-256") as err:
        src.restore(DirectorySource(tmp_path / "art"), target={"url": other})
    assert "restore stopped after" in str(err.value)
    written = set(etags(c, other))
    assert "k2" not in written and written <= {"k0", "k1"}

    (tmp_path / "art" / INDEX).write_bytes(b"not json\n")
    with pytest.raises(SourceCorrupt):
        src.restore(DirectorySource(tmp_path / "art"), target={"url": other})


# --- bad input -----------------------------------------------------------------------------------


def test_unreachable_endpoint_fails_fast_and_clearly(aws_test_env: None, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    src = source(endpoint, ["anything"])
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailable, match="cannot reach the S3 endpoint") as err:
        src.backup(DirectorySink(tmp_path / "art"))
    assert endpoint in str(err.value) and err.value.hint
    assert time.monotonic() - t0 < 10
    probe = src.probe()
    assert not probe.reachable and endpoint in probe.detail


def test_missing_bucket_and_wrong_credentials(seaweed: str, s3_bucket: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SourceUnavailable, match="does not exist"):
        source(seaweed, ["t-no-such-bucket"]).backup(DirectorySink(tmp_path / "a"))
    assert not source(seaweed, ["t-no-such-bucket"]).probe().reachable

    secret = "wrong-Secret-Key-Never-Printed-4711"
    monkeypatch.setenv("SV_TEST_S3_KEY", "wrong-access-key")
    monkeypatch.setenv("SV_TEST_S3_SECRET", secret)
    bad = source(seaweed, [s3_bucket], access_key_env="SV_TEST_S3_KEY",
                 secret_key_env="SV_TEST_S3_SECRET")
    with pytest.raises(SourceUnavailable, match="refused the S3 credentials") as err:
        bad.backup(DirectorySink(tmp_path / "b"))
    assert secret not in str(err.value) and secret not in (err.value.hint or "")
    probe = bad.probe()
    assert not probe.reachable and secret not in probe.detail

    monkeypatch.delenv("SV_TEST_S3_SECRET")
    with pytest.raises(UsageError, match="SV_TEST_S3_SECRET is not set"):
        source(seaweed, [s3_bucket], access_key_env="SV_TEST_S3_KEY",
               secret_key_env="SV_TEST_S3_SECRET").backup(DirectorySink(tmp_path / "c"))


def test_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="overlap"):
        S3BucketSource(["media", "media/uploads"])
    with pytest.raises(UsageError):
        S3BucketSource([])
    with pytest.raises(UsageError, match="both"):
        S3BucketSource(["media"], access_key_env="X")
    with pytest.raises(UsageError, match="url"):
        S3BucketSource(["media"]).describe_target({"path": "/tmp"})


# --- many small objects --------------------------------------------------------------------------


def test_many_small_objects(seaweed: str, s3_bucket: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c = client(seaweed)
    n = 2000
    rnd = random.Random(3)
    bodies = {f"many/{i:05d}.json": rnd.randbytes(rnd.randint(100, 3000)) for i in range(n)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: c.put_object(Bucket=s3_bucket, Key=kv[0], Body=kv[1]),
                      bodies.items()))
    src = source(seaweed, [s3_bucket])
    repo = Repo()
    t0 = time.perf_counter()
    snap, result, _ = repo.backup(src)
    backup_s = time.perf_counter() - t0
    assert result.fingerprint.counts["objects"] == n
    other = new_bucket(c, "many")
    t0 = time.perf_counter()
    src.restore(repo.source(snap), target={"url": other})
    restore_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    src.restore(repo.source(snap), target={"url": other})
    skip_s = time.perf_counter() - t0
    assert src.last_restore is not None and src.last_restore.skipped == n
    assert result.fingerprint.compare(src.fingerprint(target={"url": other})) == []
    print(f"\n{n} small objects: backup {backup_s:.2f}s, restore {restore_s:.2f}s, "
          f"restore again (all skipped) {skip_s:.2f}s")
