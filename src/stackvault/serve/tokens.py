"""API tokens: created and revoked with `stackvault token ...`, checked by `stackvault serve`.

A token is `svt_<id>_<secret>`: `id` (8 hex) names it in lists and the audit log, `secret` is
32 random bytes (base64url). The store keeps only the SHA-256 of the whole token, never the
token itself, so a leaked `tokens.json` grants nothing. (A fast hash is enough for 256-bit
random secrets: there is nothing to guess; slow hashes exist for human passwords.)

Scopes are ordered: `read` (look), `operate` (also start backups, drills, checks and
integrity runs, and plan restores), `admin` (also run real restores). The file is JSON,
mode 0600, replaced atomically on every change.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from stackvault.errors import UsageError
from stackvault.statefile import replace_json

Scope = Literal["read", "operate", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "operate", "admin")
PREFIX = "svt_"


def scope_allows(have: str, need: str) -> bool:
    """Whether a token of scope ``have`` may do what needs ``need``."""
    return SCOPES.index(have) >= SCOPES.index(need)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class TokenInfo:
    id: str
    name: str
    scope: Scope
    created: str
    hash: str
    revoked: str | None = None

    def public(self) -> dict[str, Any]:
        """What `token list` and the API show: everything but the hash."""
        return {k: v for k, v in asdict(self).items() if k != "hash"}


class TokenStore:
    """The tokens file (see the module doc)."""

    FILE_NAME = "tokens.json"

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> TokenStore:
        """The store of a `stackvault serve` state folder."""
        return cls(Path(state_dir) / cls.FILE_NAME)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._tokens: dict[str, TokenInfo] = {}

    def _load(self) -> dict[str, TokenInfo]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._mtime, self._tokens = None, {}
            return self._tokens
        if mtime != self._mtime:  # re-read when `token create/revoke` changed it
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
                tokens = {d["id"]: TokenInfo(**d) for d in doc.get("tokens", [])}
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise UsageError(f"cannot read the tokens file {self.path}: {exc}",
                                 hint="restore it, or move it away and create new "
                                 "tokens") from None
            self._mtime, self._tokens = mtime, tokens
        return self._tokens

    def _save(self, tokens: dict[str, TokenInfo]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_json(self.path, {"version": 1, "tokens": [asdict(t) for t in tokens.values()]},
                     mode=0o600, indent=2)
        self._mtime = None

    def list(self) -> list[TokenInfo]:
        return list(self._load().values())

    def create(self, name: str, scope: str) -> tuple[TokenInfo, str]:
        """A new token: (its record, the token itself, shown once)."""
        if scope not in SCOPES:
            raise UsageError(f"unknown scope {scope!r}", hint="use read, operate or admin")
        tokens = dict(self._load())
        tid = secrets.token_hex(4)
        while tid in tokens:
            tid = secrets.token_hex(4)
        token = f"{PREFIX}{tid}_{secrets.token_urlsafe(32)}"
        info = TokenInfo(tid, name, scope, datetime.now(UTC).isoformat(timespec="seconds"),
                         _hash(token))
        tokens[tid] = info
        self._save(tokens)
        return info, token

    def revoke(self, tid: str) -> TokenInfo:
        tokens = dict(self._load())
        info = tokens.get(tid)
        if info is None:
            raise UsageError(f"no token {tid!r}", hint="`stackvault token list` shows the ids")
        if info.revoked is None:
            info.revoked = datetime.now(UTC).isoformat(timespec="seconds")
            self._save(tokens)
        return info

    def verify(self, token: str) -> TokenInfo | None:
        """The token's record if it is valid and not revoked, else None."""
        if not token.startswith(PREFIX) or token.count("_") < 2:
            return None
        tid = token[len(PREFIX):].split("_", 1)[0]
        info = self._load().get(tid)
        if info is None or info.revoked is not None:
            return None
        return info if hmac.compare_digest(info.hash, _hash(token)) else None
