"""The console-script entry point: starts key derivation early, then loads the CLI."""

from __future__ import annotations

import os
import sys
import threading

GLOBAL_FLAGS = {"--json", "--quiet", "-q", "--insecure-no-password", "--traceback"}
GLOBAL_OPTIONS = {"--repo", "-r", "--config", "-c", "--password-file", "--password-command",
                  "--retry-lock"}


def hoist_global_options(args: list[str]) -> list[str]:
    """Let global options follow the command too (`stackvault snapshots --json`), as in restic."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        name = a.split("=", 1)[0]
        if a in GLOBAL_FLAGS or name in GLOBAL_OPTIONS and "=" in a:
            front.append(a)
        elif a in GLOBAL_OPTIONS and i + 1 < len(args):
            front.extend(args[i:i + 2])
            i += 1
        else:
            rest.append(a)
        i += 1
    return front + rest


def _option(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def start_key_prefetch(args: list[str], env: dict[str, str]) -> None:
    """Begin deriving the repository key on another core while the program finishes loading.

    Argon2id runs outside the GIL, so its ~0.2 s overlaps with importing the CLI. Only for passwords
    that can be read without side effects (the variable or a file); errors are ignored here
    and reported by the real open.
    """
    repo = _option(args, "-r", "--repo") or env.get("STACKVAULT_REPOSITORY")
    if not repo or "--insecure-no-password" in args or "init" in args[:1]:
        return
    password = env.get("STACKVAULT_PASSWORD")
    if password is None:
        file = _option(args, "--password-file") or env.get("STACKVAULT_PASSWORD_FILE")
        try:
            with open(file or "", encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")  # as Ctx.password: first line
        except OSError:
            return

    def run() -> None:
        try:
            from stackvault.repo.repository import prefetch_unlock
            from stackvault.storage import open_storage

            prefetch_unlock(open_storage(repo), password)
        except Exception:  # noqa: BLE001 - an optimisation only
            return

    threading.Thread(target=run, daemon=True, name="sv-keyprefetch").start()


def limit_malloc_arenas(arenas: int = 1) -> None:
    """Cap glibc's per-thread malloc arenas before any thread starts.

    With one arena per thread, the large short-lived buffers of the pipeline threads and
    libargon2's lanes scatter over many arenas and peak memory grows by tens of MiB;
    one arena keeps it flat at no measurable cost in speed (the heavy work runs in C
    libraries outside the allocator). A no-op off glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        return


def main() -> None:
    """`stackvault`: start deriving the key on another core, then import and run the CLI."""
    limit_malloc_arenas()
    start_key_prefetch(hoist_global_options(sys.argv[1:]), dict(os.environ))
    from stackvault.cli.main import main as run

    run()
