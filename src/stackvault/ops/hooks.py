"""Pre/post hooks: run a command or call a URL (e.g. to pause writers) around a backup."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from typing import Any

from stackvault.errors import StackVaultError


class HookFailed(StackVaultError):
    """A hook failed; the component (or the stack) it guards is not backed up."""


def run_hook(hook: Any, *, where: str, env: dict[str, str] | None = None) -> None:
    """Run one hook: `{command: str | list}` or `{http: {url, method, headers_env, timeout}}`."""
    command = getattr(hook, "command", None)
    http = getattr(hook, "http", None)
    if command:
        timeout = float(getattr(hook, "timeout", None) or 300)
        try:
            proc = subprocess.run(command, shell=isinstance(command, str), capture_output=True,
                                  text=True, timeout=timeout, env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            raise HookFailed(f"{where}: hook command timed out after {timeout:.0f}s") from None
        except OSError as exc:
            raise HookFailed(f"{where}: hook command could not start: {exc.strerror}") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise HookFailed(f"{where}: hook command exited with {proc.returncode}: {tail[0]}")
        return
    if http:
        url = str(http.url)
        headers = {}
        headers_env = getattr(http, "headers_env", None) or {}
        for header, var in dict(headers_env).items():
            if var in os.environ:
                headers[header] = os.environ[var]
        req = urllib.request.Request(url, method=str(getattr(http, "method", "POST") or "POST"),
                                     headers=headers, data=b"" if http.method != "GET" else None)
        timeout = float(getattr(http, "timeout", None) or 30)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user URL
                if resp.status >= 400:
                    raise HookFailed(f"{where}: hook URL answered {resp.status}")
        except urllib.error.HTTPError as exc:
            raise HookFailed(f"{where}: hook URL answered {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HookFailed(f"{where}: hook URL unreachable ({reason})") from None
        return
    raise HookFailed(f"{where}: a hook needs `command` or `http`")
