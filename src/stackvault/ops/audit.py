"""The audit log: append-only JSON lines, each carrying the SHA-256 of the line before, so a
changed, inserted or removed line is detected by `verify` (`stackvault audit verify`).

Line format: `{"seq", "time", "who", "action", "outcome", "details", "prev"}` plus `"hash"`,
the SHA-256 of the line's JSON without `hash` (keys sorted, compact separators). `prev` is the
`hash` of the line before, or 64 zeros for the first.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackvault.errors import UsageError
from stackvault.statefile import replace_json

GENESIS = "0" * 64
FILE_NAME = "stackvault-audit.jsonl"


def default_path(config: Any, env: dict[str, str] | None = None) -> Path:
    """STACKVAULT_AUDIT_LOG, else `stackvault-audit.jsonl` next to the config file."""
    return path_for(getattr(config, "source", None), env if env is not None else dict(os.environ))


def path_for(config_file: str | Path | None, env: dict[str, str]) -> Path:
    """STACKVAULT_AUDIT_LOG, else `stackvault-audit.jsonl` next to ``config_file`` (else in
    the current folder)."""
    if env.get("STACKVAULT_AUDIT_LOG"):
        return Path(env["STACKVAULT_AUDIT_LOG"])
    return (Path(config_file).resolve().parent if config_file else Path.cwd()) / FILE_NAME


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


def append(path: Path, action: str, outcome: str, details: dict[str, Any] | None = None,
           who: str | None = None) -> dict[str, Any]:
    """Append one entry (under an exclusive lock, fsynced) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        last, seq = None, 0
        for line in f:
            if line.strip():
                last, seq = line, seq + 1
        prev = json.loads(last)["hash"] if last else GENESIS
        entry: dict[str, Any] = {
            "seq": seq + 1, "time": datetime.now(UTC).isoformat(),
            "who": who or f"{getpass.getuser()}@{socket.gethostname()}",
            "action": action, "outcome": outcome, "details": details or {}, "prev": prev}
        entry["hash"] = _digest(entry)
        f.write(json.dumps(entry, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return entry


def verify(path: Path) -> tuple[int, list[str]]:
    """(entries, problems): every line must parse, hash to its `hash`, point to the line
    before with `prev`, and count up with `seq`."""
    if not path.exists():
        raise UsageError(f"there is no audit log at {path}",
                         hint="every command that changes something writes it, and so "
                              "does the API (docs/serve.md)")
    with open(path, encoding="utf-8") as f:
        return verify_lines(f)


def verify_lines(lines: Iterable[str]) -> tuple[int, list[str]]:
    """`verify` for a log's lines (a file's, or a repository copy's)."""
    problems: list[str] = []
    prev, n = GENESIS, 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        n += 1
        try:
            entry = json.loads(line)
        except ValueError:
            problems.append(f"line {lineno}: not JSON")
            prev = ""
            continue
        if entry.get("hash") != _digest(entry):
            problems.append(f"line {lineno}: changed (its hash does not match)")
        if entry.get("prev") != prev:
            problems.append(f"line {lineno}: does not follow the line before (a line was "
                            "removed, inserted or reordered)")
        if entry.get("seq") != n:
            problems.append(f"line {lineno}: sequence {entry.get('seq')}, expected {n}")
        prev = str(entry.get("hash", ""))
    return n, problems


# --------------------------------------------------------------------------- repository copy

REPO_FOLDER = "audit"
COPY_STATE = "audit-copy.json"


def copy_to_repo(repo: Any, path: Path, state_dir: Path) -> str | None:
    """Copy the audit log into the repository (encrypted, as `audit/<id>`), when it changed
    since the last copy, and delete that last copy. Returns the new copy's id (None when
    there was nothing new). `stackvault audit verify --repo` checks the copies."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    state_file = Path(state_dir) / COPY_STATE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    digest = hashlib.sha256(data).hexdigest()
    if state.get("sha256") == digest and state.get("repo") == repo.id:
        return None
    doc_id: str = repo.save_raw_doc("audit", data, REPO_FOLDER)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    replace_json(state_file, {"repo": repo.id, "doc": doc_id, "sha256": digest})
    old = state.get("doc")
    if old and old != doc_id and state.get("repo") == repo.id:
        try:
            repo.storage.delete(f"{REPO_FOLDER}/{old}")
        except Exception:  # noqa: BLE001 - a leftover copy is harmless
            pass
    return doc_id


def repo_copies(repo: Any) -> list[tuple[str, bytes]]:
    """Every audit log copy in the repository: (id, content)."""
    return [(o.name.split("/", 1)[1],
             repo.load_raw_doc("audit", REPO_FOLDER, o.name.split("/", 1)[1]))
            for o in repo.storage.list(f"{REPO_FOLDER}/")]


def tail(path: Path, n: int = 50) -> list[dict[str, Any]]:
    """The last ``n`` entries, newest last (reads only the end of a long log)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 2048 * n))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if size > len(data):
        lines = lines[1:]  # the first may be cut
    out = []
    for line in lines[-n:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
