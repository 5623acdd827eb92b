"""Fixtures shared by every test suite. One section per kind of resource; add yours below."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from support.seaweed import aws_env, seaweed_s3


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "s3: needs the SeaweedFS S3 server (weed mini)")


# --- S3 (SeaweedFS) ----------------------------------------------------------------------
# `aws_test_env` points boto3 at fixed test credentials only (no profiles, no EC2 metadata);
# `seaweed` starts one `weed mini` for the whole session and yields its endpoint URL;
# `s3_bucket` creates a fresh bucket per test and yields its name.


@pytest.fixture(scope="session")
def aws_test_env() -> Iterator[None]:
    with aws_env():
        yield


@pytest.fixture(scope="session")
def seaweed(aws_test_env: None) -> Iterator[str]:
    with seaweed_s3() as server:
        yield server.endpoint


@pytest.fixture
def s3_bucket(seaweed: str) -> str:
    import boto3
    from botocore.config import Config

    name = f"t-{uuid.uuid4().hex[:16]}"
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=seaweed,
        verify=False,
        config=Config(region_name="us-east-1", s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket=name)
    client.close()
    return name
