"""An s3 component end to end: stackvault.yaml with two SeaweedFS locations (a bucket and a
prefix, keys from environment variables); backup, damage, dry-run plan, restore --yes with
verification, restore into another bucket with --to, one key prefix alone."""

from __future__ import annotations

import hashlib
import io
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from e2e_support import PASSWORD, SV, base_env

from support.seaweed import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.s3


def client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, verify=False, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(region_name="us-east-1", s3={"addressing_style": "path"}))


def objects(c: Any, bucket: str, prefix: str = "") -> dict[str, tuple[Any, ...]]:
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            r = c.get_object(Bucket=bucket, Key=o["Key"])
            tags = c.get_object_tagging(Bucket=bucket, Key=o["Key"])["TagSet"]
            out[o["Key"][len(prefix):]] = (hashlib.sha256(r["Body"].read()).hexdigest(),
                                           r.get("ContentType"), r.get("Metadata"),
                                           sorted((t["Key"], t["Value"]) for t in tags))
    return out


@pytest.fixture
def stack(seaweed: str, tmp_path: Path) -> tuple[SV, Any, str, str]:
    c = client(seaweed)
    media, docs = f"t-media-{uuid.uuid4().hex[:8]}", f"t-docs-{uuid.uuid4().hex[:8]}"
    c.create_bucket(Bucket=media)
    c.create_bucket(Bucket=docs)
    rnd = random.Random(5)
    for i in range(40):
        c.put_object(Bucket=media, Key=f"img/{i:03d} ünï.png", Body=rnd.randbytes(20_000),
                     ContentType="image/png", Metadata={"n": str(i)}, Tagging=f"i={i}")
    c.put_object(Bucket=media, Key="empty", Body=b"")
    c.upload_fileobj(io.BytesIO(rnd.randbytes(10 << 20)), media, "video/big.mp4",
                     ExtraArgs={"ContentType": "video/mp4"},
                     Config=TransferConfig(multipart_threshold=8 << 20,
                                           multipart_chunksize=5 << 20))
    for i in range(10):
        c.put_object(Bucket=docs, Key=f"uploads/{i}.txt", Body=f"doc {i}\n".encode() * 50,
                     ContentType="text/plain")
    c.put_object(Bucket=docs, Key="scratch/tmp.txt", Body=b"not backed up")
    (tmp_path / "stackvault.yaml").write_text(f"""
version: 1
repository:
  location: {tmp_path / "repo"}
components:
  media:
    type: s3
    endpoint_url: {seaweed}
    buckets: [{media}, {docs}/uploads]
    access_key_env: E2E_S3_ACCESS
    secret_key_env: E2E_S3_SECRET
""")
    sv = SV(None, base_env(STACKVAULT_PASSWORD=PASSWORD,
                           STACKVAULT_CONFIG=str(tmp_path / "stackvault.yaml"),
                           E2E_S3_ACCESS=ACCESS_KEY, E2E_S3_SECRET=SECRET_KEY,
                           AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None))
    sv.ok("init")
    return sv, c, media, docs


def test_backup_damage_restore_verifies(stack: tuple[SV, Any, str, str]) -> None:
    sv, c, media, docs = stack
    before_media, before_docs = objects(c, media), objects(c, docs, "uploads/")
    out = sv.json("backup")
    assert out["complete"] is True, out

    c.delete_object(Bucket=media, Key="video/big.mp4")
    c.delete_object(Bucket=media, Key="img/003 ünï.png")
    c.put_object(Bucket=docs, Key="uploads/1.txt", Body=b"overwritten")
    c.delete_object(Bucket=docs, Key="uploads/2.txt")

    plan = sv.json("restore", "--dry-run")
    step = plan["plan"]["steps"][0]
    assert step["component"] == "media" and "mirror off" in step["target_description"]
    assert objects(c, media) != before_media  # a dry run changes nothing

    report = sv.json("restore", "--yes")
    assert report["ok"] is True and report["components"][0]["verified"] is True, report
    assert objects(c, media) == before_media
    assert objects(c, docs, "uploads/") == before_docs
    assert objects(c, docs, "scratch/")  # outside the configured prefix: untouched

    # Into another bucket (created), the two locations side by side under the prefix.
    other = f"t-other-{uuid.uuid4().hex[:8]}"
    report = sv.json("restore", "--to", f"media=s3://{other}/copy", "--yes")
    assert report["ok"] is True and report["safety_snapshot"] is None, report
    assert objects(c, other, f"copy/{media}/") == before_media
    assert objects(c, other, f"copy/{docs}/uploads/") == before_docs

    # One key prefix alone.
    c.delete_object(Bucket=docs, Key="uploads/5.txt")
    c.delete_object(Bucket=media, Key="img/007 ünï.png")
    report = sv.json("restore", "--component", f"media.{docs}/uploads/", "--yes")
    assert report["ok"] is True, report
    assert objects(c, docs, "uploads/") == before_docs
    assert "img/007 ünï.png" not in objects(c, media)


def test_unreachable_endpoint_is_a_failed_component(stack: tuple[SV, Any, str, str],
                                                    tmp_path: Path) -> None:
    sv, _c, media, _docs = stack
    cfg = tmp_path / "stackvault.yaml"
    text = cfg.read_text()
    endpoint = text.split("endpoint_url: ")[1].split("\n")[0]
    cfg.write_text(text.replace(endpoint, "http://127.0.0.1:9"))
    res = sv("--json", "backup")
    assert res.rc == 3, str(res)
    err = res.json()["components"]["media"]["error"]
    assert "cannot reach the S3 endpoint http://127.0.0.1:9" in err


def test_drill_restores_into_a_temporary_bucket_and_deletes_it(
        stack: tuple[SV, Any, str, str], tmp_path: Path) -> None:
    sv, c, media, docs = stack
    cfg = tmp_path / "stackvault.yaml"
    cfg.write_text(cfg.read_text() + "drill:\n  probes:\n    - component: media\n"
                   "      key: video/big.mp4\n      expect: 10485760\n")
    sv.ok("backup")
    buckets = {b["Name"] for b in c.list_buckets()["Buckets"]}
    live = objects(c, media)
    out = sv.json("drill")
    assert out["ok"] is True, out
    assert out["components"][0]["verified"] is True
    assert "s3://sv-drill-" in out["components"][0]["target"]
    assert out["probes"][0]["found"] == "10485760"
    assert {b["Name"] for b in c.list_buckets()["Buckets"]} == buckets  # drill bucket gone
    assert objects(c, media) == live
