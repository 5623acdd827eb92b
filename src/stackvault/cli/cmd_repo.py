"""Commands that manage the repository itself: init, key, unlock, repair."""

from __future__ import annotations

import typer

from stackvault.cli.context import Ctx
from stackvault.errors import UsageError
from stackvault.repo.lock import Lock, remove_locks
from stackvault.repo.repository import Repository
from stackvault.storage import open_storage


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    key = typer.Typer(help="Manage the repository's keys (passwords).", no_args_is_help=True)
    key.command("list")(key_list)
    key.command("add")(key_add)
    key.command("remove")(key_remove)
    key.command("passwd")(key_passwd)
    app.add_typer(key, name="key")
    app.command("unlock")(unlock)
    repair = typer.Typer(help="Repair repository structures.", no_args_is_help=True)
    repair.command("index")(repair_index)
    app.add_typer(repair, name="repair")


def init(ctx: typer.Context) -> None:
    """Create a new, empty repository (encrypted unless --insecure-no-password)."""
    c: Ctx = ctx.obj
    stack = None if c.opts.repo or "STACKVAULT_REPOSITORY" in c.opts.env else c.stack_config()
    if stack is not None:  # the repository (and password source) named in stackvault.yaml
        from stackvault.cli.cmd_stack import stack_repo_settings

        url, password = stack_repo_settings(c, stack)
        if not c.opts.insecure_no_password and not password:
            raise UsageError("an empty password is not allowed")
    else:
        url = c.repo_url(c.opts.repo)
        password = None if c.opts.insecure_no_password else c.password(
            file=c.opts.password_file, command=c.opts.password_command, confirm=True,
            prompt="new repository password")
    storage = open_storage(url, create=True)
    repo = Repository.init(storage, password, kdf=c.kdf_from_env())
    if c.opts.json:
        c.emit({"id": repo.id, "location": storage.location, "encrypted": password is not None})
    else:
        c.info(f"created repository {repo.id[:8]} at {storage.location}")
        if password is None:
            c.warn("this repository is NOT encrypted")
        c.info("keep your password safe: without it the data cannot be recovered")


def _new_password(c: Ctx, new_password_file: str | None) -> str:
    return c.password(prefix="STACKVAULT_NEW", file=new_password_file, confirm=True,
                      prompt="new password")


def key_list(ctx: typer.Context) -> None:
    """List the key files; the one in use is marked with *."""
    c: Ctx = ctx.obj
    keys = c.open_repo().list_keys()
    if c.opts.json:
        c.emit(keys)
        return
    for k in keys:
        mark = "*" if k.get("current") else " "
        if "error" in k:
            c.out.print(f"{mark} {k['id'][:8]}  DAMAGED: {k['error']}")
        else:
            c.out.print(f"{mark} {k['id'][:8]}  {k['username']}@{k['hostname']}  {k['created']}")


def key_add(ctx: typer.Context, new_password_file: str = typer.Option(
        None, help="Read the new password from this file (or STACKVAULT_NEW_PASSWORD[_FILE]).")
) -> None:
    """Add a key: another password that opens the repository."""
    c: Ctx = ctx.obj
    repo = c.open_repo()
    with Lock(repo, exclusive=False).acquire(c.opts.retry_lock):
        kid = repo.add_key(_new_password(c, new_password_file), kdf=c.kdf_from_env())
    c.emit({"added": kid}) if c.opts.json else c.info(f"added key {kid[:8]}")


def key_remove(ctx: typer.Context, key_id: str = typer.Argument(..., help="Key id (prefix).")
               ) -> None:
    """Remove a key. Refuses the key in use and the last key."""
    c: Ctx = ctx.obj
    repo = c.open_repo()
    with Lock(repo, exclusive=False).acquire(c.opts.retry_lock):
        repo.remove_key(key_id)
    c.emit({"removed": key_id}) if c.opts.json else c.info(f"removed key {key_id}")


def key_passwd(ctx: typer.Context, new_password_file: str = typer.Option(
        None, help="Read the new password from this file (or STACKVAULT_NEW_PASSWORD[_FILE]).")
) -> None:
    """Change the password: add a key with the new one, then remove the old key."""
    c: Ctx = ctx.obj
    repo = c.open_repo()
    if repo.key_name is None:
        raise UsageError("an unencrypted repository has no password")
    with Lock(repo, exclusive=False).acquire(c.opts.retry_lock):
        kid = repo.add_key(_new_password(c, new_password_file), kdf=c.kdf_from_env())
        repo.storage.delete(repo.key_name)
    c.emit({"added": kid, "removed": repo.key_name.split("/")[1]}) if c.opts.json else c.info(
        f"password changed (new key {kid[:8]}); no data was re-encrypted")


def unlock(ctx: typer.Context, remove_all: bool = typer.Option(
        False, "--remove-all", help="Remove every lock, not only stale ones (dangerous if "
        "another process is running).")) -> None:
    """Remove stale locks (left by crashed processes)."""
    c: Ctx = ctx.obj
    removed = remove_locks(c.open_repo(), all_locks=remove_all)
    c.emit({"removed": removed}) if c.opts.json else c.info(f"removed {len(removed)} lock(s)")


def repair_index(ctx: typer.Context) -> None:
    """Rebuild the index from the pack headers (after a damaged or lost index file)."""
    from stackvault.repo.repair import rebuild_index

    c: Ctx = ctx.obj
    repo = c.open_repo()
    with Lock(repo, exclusive=True).acquire(c.opts.retry_lock):
        report = rebuild_index(repo)
    c.emit(report) if c.opts.json else c.info(
        f"index rebuilt: {report.get('packs', 0)} packs, {report.get('blobs', 0)} blobs")
