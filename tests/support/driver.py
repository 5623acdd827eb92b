"""One repository operation through the Python API, in a process of its own: the victim of the
crash-safety and concurrency tests.

    python -m tests.support.driver [options] OPERATION [ARGS]     (from the project folder)
    python tests/support/driver.py [options] OPERATION [ARGS]

Operations:
    init                      create the repository (cheap test KDF unless --kdf default)
    backup PATH [PATH ...]    back up paths; prints ``SNAPSHOT <id>``
    prune                     prune; prints ``PRUNED <plan json>``
    forget-keep-last N        forget all but the newest N snapshots of every host/paths group
                              (under an exclusive lock), then prune; prints ``FORGOT <ids>``
                              and ``PRUNED <plan json>``

Options (environment variable in brackets):
    --repo URL      repository location: a folder or s3:http://HOST:PORT/BUCKET  [SV_REPO]
    --password PW   [SV_PASSWORD, default "test-password"]
    --host NAME     host name recorded in the snapshot (backup)
    --retry-lock S  retry a conflicting lock for S seconds (default 0)
    --pack-size N, --small-chunks   repository parameters for init
    --attempts N    S3 only: retry each request at most N times, 50 ms apart (open_storage's
                    default policy rides out ~20 s of outage)

Protocol: ``READY`` is printed (and flushed) once the repository is open, right before the
operation starts, so a test can time a kill from there. On a StackVaultError the message
goes to stderr as ``error: ...`` (no traceback) and the exit status is the error's
documented exit code; any other exception is a crash and prints a traceback (exit 70).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from stackvault.errors import ExitCode, StackVaultError
from stackvault.repo.archiver import run_backup
from stackvault.repo.crypto import TEST_KDF, KdfParams
from stackvault.repo.lock import Lock
from stackvault.repo.prune import prune
from stackvault.repo.repository import Repository
from stackvault.repo.retention import KeepPolicy, plan
from stackvault.storage import RetryStorage, Storage, open_storage, parse_s3_url

CRASH = 70  # exit status of an unexpected exception (a bug: it printed a traceback)
SMALL_CHUNKS = {"min": 16 << 10, "avg": 64 << 10, "max": 256 << 10}


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="driver", description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=os.environ.get("SV_REPO"))
    p.add_argument("--password", default=os.environ.get("SV_PASSWORD", "test-password"))
    p.add_argument("--host", default=None)
    p.add_argument("--retry-lock", type=float, default=0.0)
    p.add_argument("--pack-size", type=int, default=512 << 10)
    p.add_argument("--small-chunks", action="store_true")
    p.add_argument("--kdf", choices=("test", "default"), default="test")
    p.add_argument("--attempts", type=int, default=None)
    p.add_argument("operation", choices=("init", "backup", "prune", "forget-keep-last"))
    p.add_argument("args", nargs="*")
    return p


def forget_keep_last(repo: Repository, n: int, retry_lock: float) -> list[str]:
    """Delete every snapshot document but the newest ``n`` per host/paths group."""
    with Lock(repo, exclusive=True).acquire(retry_for=retry_lock):
        groups = plan(repo.list_snapshots(), KeepPolicy(last=n))
        doomed = [s.id for g in groups for s in g.remove]
        for sid in doomed:
            repo.storage.delete(f"snapshots/{sid}")
    return doomed


def storage_for(url: str, attempts: int | None, create: bool = False) -> Storage:
    if attempts is None or not url.lower().startswith("s3:"):
        return open_storage(url, create=create)
    from stackvault.storage.s3 import S3Storage

    endpoint, bucket, prefix = parse_s3_url(url)
    storage = RetryStorage(S3Storage(endpoint, bucket, prefix, connect_timeout=2,
                                     read_timeout=10), attempts=attempts, base_delay=0.05)
    if create:
        storage.call("create bucket", bucket, storage.inner.ensure_bucket)  # type: ignore[attr-defined]
    return storage


def run(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    if not a.repo:
        raise SystemExit("driver: no repository given (--repo or SV_REPO)")
    if a.operation == "init":
        storage = storage_for(a.repo, a.attempts, create=True)
        kdf = TEST_KDF if a.kdf == "test" else KdfParams()
        repo = Repository.init(storage, a.password, kdf=kdf, pack_size=a.pack_size,
                               chunker=SMALL_CHUNKS if a.small_chunks else None)
        _say(f"INIT {repo.id}")
        return 0
    repo = Repository.open(storage_for(a.repo, a.attempts), a.password)
    _say("READY")
    if a.operation == "backup":
        if not a.args:
            raise SystemExit("driver: backup needs at least one path")
        result = run_backup(repo, paths=a.args, hostname=a.host, retry_lock=a.retry_lock)
        for err in result.errors:
            sys.stderr.write(f"warning: {err}\n")
        _say(f"SNAPSHOT {result.snapshot.id}")
    elif a.operation == "prune":
        _say("PRUNED " + json.dumps(prune(repo, retry_lock=a.retry_lock).to_dict()))
    elif a.operation == "forget-keep-last":
        if len(a.args) != 1 or not a.args[0].isdigit() or int(a.args[0]) < 1:
            raise SystemExit("driver: forget-keep-last needs a count >= 1")
        doomed = forget_keep_last(repo, int(a.args[0]), a.retry_lock)
        _say("FORGOT " + json.dumps(doomed))
        _say("PRUNED " + json.dumps(prune(repo, retry_lock=a.retry_lock).to_dict()))
    repo.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except StackVaultError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - a crash: the tests look for this traceback
        traceback.print_exc()
        return CRASH


if __name__ == "__main__":
    sys.exit(main())
