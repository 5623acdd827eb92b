"""The `config` commands: check the stack's stackvault.yaml, print a commented example."""

from __future__ import annotations

import sys

import typer

from stackvault.cli.context import Ctx
from stackvault.errors import ConfigError, ExitCode

# pydantic and the schema are imported inside the commands: other commands don't pay for them.


def register(app: typer.Typer) -> None:
    sub = typer.Typer(name="config", no_args_is_help=True,
                      help="Check the stack's config file (stackvault.yaml), or print an "
                           "example to start from.")
    sub.command("validate")(validate)
    sub.command("example")(example)
    app.add_typer(sub, name="config")


def validate(ctx: typer.Context) -> None:
    """Check the config file: list every problem at once (exit code 2), or the restore order."""
    from stackvault.config.loader import Problem, check_config, find_config
    from stackvault.config.schema import critical_path, restore_order

    c: Ctx = ctx.obj
    try:
        path = find_config(c.opts.config, c.opts.env)
        result = check_config(path)
    except ConfigError as exc:
        if not c.opts.json:
            raise
        c.emit({"ok": False, "config": None,
                "errors": [Problem("(file)", "; ".join(
                    x for x in (exc.args[0], exc.hint) if x)).to_dict()]})
        raise typer.Exit(int(ExitCode.USAGE)) from None
    config = result.config
    if c.opts.json:
        doc: dict[str, object] = {"ok": result.ok, "config": str(path),
                                  "errors": [p.to_dict() for p in result.problems]}
        if config is not None and result.ok:
            doc.update(components=len(config.components), restore_order=restore_order(config),
                       critical_path=critical_path(config))
        c.emit(doc)
        if not result.ok:
            raise typer.Exit(int(ExitCode.USAGE))
        return
    if config is None or not result.ok:
        raise result.error()
    layers = restore_order(config)
    n = len(config.components)
    c.info(f"ok: {n} component{'s' * (n != 1)}, restore order: "
           + " -> ".join(", ".join(layer) for layer in layers))
    if len(layers) > 1:
        c.info(f"critical path: {' -> '.join(critical_path(config))}")


def example() -> None:
    """Print a commented example config (PostgreSQL + SQLite + files) to start from."""
    from stackvault.config.example import example_yaml

    sys.stdout.write(example_yaml())
    sys.stdout.flush()
