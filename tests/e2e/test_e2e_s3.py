"""A repository on S3 (SeaweedFS from tests/conftest.py) through the command line."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from e2e_support import SV, restored, tree_state

pytestmark = pytest.mark.s3

BAD_SECRET = "e2e-S3-Secret-Wr0ng-Foxtrot-4471"


def test_s3_round_trip(base, seaweed: str, s3_bucket: str, env: dict[str, str],
                       tmp_path: Path) -> None:
    sv = SV(f"s3:{seaweed}/{s3_bucket}/backups/e2e", env)
    created = sv.json("init")
    assert created["location"].startswith("s3:")
    snap = sv.json("backup", str(base.src), "--tag", "s3")["snapshot"]
    snaps = sv.json("snapshots")
    assert [(s["id"], s["tags"], s["paths"]) for s in snaps] == [(snap, ["s3"], [str(base.src)])]
    target = tmp_path / "target"
    res = sv.json("restore", "latest", "--target", str(target))
    assert res["errors"] == []
    assert tree_state(restored(target, base.src)) == tree_state(base.src)
    assert sv.json("check", "--read-data")["ok"] is True

    # wrong credentials: a storage error (13) that names neither the secret nor the password
    bad = sv("snapshots", env={"AWS_SECRET_ACCESS_KEY": BAD_SECRET})
    assert bad.rc == 13, str(bad)
    assert "credentials" in bad.err.lower() or "signature" in bad.err.lower()
    assert BAD_SECRET not in bad.err and BAD_SECRET.encode() not in bad.out


def test_s3_init_creates_the_bucket_and_missing_repo_is_10(seaweed: str,
                                                           env: dict[str, str]) -> None:
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    sv = SV(f"s3:{seaweed}/{bucket}", env)
    missing = sv("snapshots")  # the bucket does not exist yet
    assert missing.rc == 13, str(missing)  # docs/exit-codes.md: missing bucket
    assert bucket in missing.err
    assert sv.json("init")["encrypted"] is True
    assert sv.json("snapshots") == []
    elsewhere = SV(f"s3:{seaweed}/{bucket}/other-prefix", env)("snapshots")
    assert elsewhere.rc == 10, str(elsewhere)


def test_s3_url_with_credentials_is_refused_without_echoing_them(seaweed: str,
                                                                 env: dict[str, str]) -> None:
    host = seaweed.split("://", 1)[1]
    res = SV(f"s3:http://AKIAE2E:{BAD_SECRET}@{host}/bucket/x", env)("snapshots")
    assert res.rc == 2, str(res)
    assert BAD_SECRET not in res.err and BAD_SECRET.encode() not in res.out
