"""Redis URLs, connections and the errors a user sees for them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
import redis.exceptions as rex

from stackvault.errors import (
    SourceError,
    SourceUnavailable,
    UsageError,
)

# --- connections and errors -------------------------------------------------------------------


@dataclass(frozen=True)
class RedisUrl:
    """A parsed redis:// or rediss:// URL (never with credentials in it)."""

    host: str
    port: int
    db: int | None
    tls: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def text(self, db: int | None = -2) -> str:
        """The URL (without credentials); `db`: another database number, or None for
        none."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        db = self.db if db == -2 else db
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}" + (
            f"/{db}" if db is not None and db >= 0 else "")


_URL_FORMS = "redis://HOST[:PORT][/DB] or rediss://HOST[:PORT][/DB] (TLS)"


def parse_url(text: str) -> RedisUrl:
    """Parse a Redis URL; refuse credentials in it (without echoing them)."""
    if not isinstance(text, str):
        raise UsageError(f"a Redis URL is text: {_URL_FORMS}")
    if re.search(r"://[^/?#]*@", text):
        raise UsageError("credentials do not belong in the Redis URL",
                         hint="give `username` and `password_env` (or `password_file`) in "
                              "stackvault.yaml instead")
    try:
        parts = urlsplit(text)
        port = parts.port or 6379
    except ValueError:
        raise UsageError(f"{text!r} is not a Redis URL; use {_URL_FORMS}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname \
            or parts.query or parts.fragment:
        raise UsageError(f"{text!r} is not a Redis URL; use {_URL_FORMS}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise UsageError(f"{text!r}: the path of a Redis URL is a database number")
    return RedisUrl(parts.hostname, port, int(path) if path else None,
                    parts.scheme == "rediss")


@contextmanager
def _redis_errors(url: RedisUrl, doing: str) -> Iterator[None]:
    """Turn redis-py's exceptions into StackVault errors (no password is ever in them)."""
    try:
        yield
    except rex.AuthenticationError as e:
        raise SourceUnavailable(
            f"Redis at {url.address}: authentication failed while {doing} ({e})",
            hint="check `username` and the password named by password_env/password_file; "
                 "leave both out if the server has no password") from None
    except rex.NoPermissionError as e:
        raise SourceError(f"Redis at {url.address}: permission denied while {doing}: {e}",
                          hint="the ACL user needs SCAN, TYPE, PTTL, DUMP and read commands "
                               "(backup), RESTORE, DBSIZE and FLUSHDB (restore)") from None
    except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
        raise SourceUnavailable(f"cannot reach Redis at {url.address} while {doing}: {e}",
                                hint="check that the server runs and the url in "
                                     "stackvault.yaml (host, port, redis:// or rediss://)"
                                ) from None
    except rex.ResponseError as e:
        if "NOAUTH" in str(e):
            raise SourceUnavailable(f"Redis at {url.address}: authentication failed while "
                                    f"{doing} ({e})",
                                    hint="set password_env or password_file") from None
        raise SourceError(f"Redis at {url.address}: {doing} failed: {e}") from None


def _keyspace(client: redis.Redis) -> dict[int, int]:
    """Non-empty databases -> key count, from INFO keyspace."""
    info = client.info("keyspace")
    out = {}
    for name, value in info.items():
        if isinstance(name, str) and name.startswith("db") and name[2:].isdigit():
            out[int(name[2:])] = int(value["keys"]) if isinstance(value, dict) else 0
    return dict(sorted(out.items()))


