"""Every command that changes a repository or a stack is written to the audit log, with who,
what (the command and the names of its options, never their values: they can hold
connection strings), when and the outcome (exit code).

Which log: $STACKVAULT_AUDIT_LOG, else `stackvault-audit.jsonl` next to the stack's config
when one is in use (-c, $STACKVAULT_CONFIG or ./stackvault.yaml). A plain repository command
with neither writes no log. `integrity fix`, `reset` and `token` write their own, richer
entries; dry runs change nothing and are not logged. Who: $STACKVAULT_AUDIT_WHO (set by
`stackvault serve` for its tasks: the token's name or "scheduler"), else user@host.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from stackvault.cli.entry import GLOBAL_FLAGS, GLOBAL_OPTIONS, _option

GROUPS = {"key", "repair", "integrity", "audit", "token", "schedule", "config"}
AUDITED = {("backup",), ("restore",), ("forget",), ("prune",), ("init",), ("key", "add"),
           ("key", "remove"), ("key", "passwd"), ("copy",), ("repair", "index"), ("unlock",),
           ("drill",)}


def command_of(args: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """(the command, e.g. ('key', 'add'), the arguments after it)."""
    i = 0
    while i < len(args):
        a = args[i]
        if a in GLOBAL_OPTIONS:
            i += 2
            continue
        if a in GLOBAL_FLAGS or a.startswith("-"):
            i += 1
            continue
        if a in GROUPS and i + 1 < len(args) and not args[i + 1].startswith("-"):
            return (a, args[i + 1]), args[i + 2:]
        return (a,), args[i + 1:]
    return (), []


def log_path(args: list[str], env: dict[str, str]) -> Path | None:
    """The log of this run: $STACKVAULT_AUDIT_LOG, else next to the config the command used
    (found as every command finds it); None with neither."""
    from stackvault.config.loader import find_config
    from stackvault.errors import ConfigError
    from stackvault.ops.audit import path_for

    if env.get("STACKVAULT_AUDIT_LOG"):
        return path_for(None, env)
    try:
        return path_for(find_config(_option(args, "-c", "--config"), env), env)
    except ConfigError:
        return None


def record(args: list[str], code: int, env: dict[str, str] | None = None) -> None:
    """Append the entry for this run of the CLI, if it is audited. Never raises."""
    env = dict(os.environ) if env is None else env
    command, rest = command_of(args)
    if command not in AUDITED or "--dry-run" in rest or (command == ("restore",)
                                                         and "-n" in rest):
        return
    path = log_path(args, env)
    if path is None:
        return
    from stackvault.ops import audit

    options = sorted({a.split("=", 1)[0] for a in rest if a.startswith("-")})
    positional = [a for a in rest if not a.startswith("-") and a.isalnum() and len(a) <= 64]
    details = {"command": " ".join(command), "exit_code": code, "options": options}
    if command in (("restore",), ("drill",), ("forget",)) and positional:
        details["snapshots"] = positional[:20]  # ids or 'latest'
    try:
        audit.append(path, " ".join(command), "ok" if code == 0 else "failed", details,
                     who=env.get("STACKVAULT_AUDIT_WHO") or None)
    except OSError as exc:
        sys.stderr.write(f"warning: could not write the audit log {path}: {exc.strerror}\n")
