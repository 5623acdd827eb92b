"""The `stackvault` command: global options, command registration, errors to exit codes."""

from __future__ import annotations

import signal
import sys
import traceback
from typing import Any

import typer

from stackvault import __version__
from stackvault.cli import (
    cmd_backup,
    cmd_browse,
    cmd_config,
    cmd_demo,
    cmd_drill,
    cmd_integrity,
    cmd_maintain,
    cmd_quickstart,
    cmd_repo,
    cmd_restore,
    cmd_schedule,
    cmd_serve,
    cmd_stack,
)
from stackvault.cli.context import Ctx, Options
from stackvault.cli.entry import hoist_global_options
from stackvault.errors import ExitCode, Interrupted, StackVaultError

app = typer.Typer(
    name="stackvault",
    help="Deduplicated, encrypted, verified backups for self-hosted AI/RAG stacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stackvault {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    repo: str = typer.Option(None, "--repo", "-r", help="Repository location (or set "
                             "STACKVAULT_REPOSITORY): a path, s3:http://host:port/bucket/prefix, "
                             "s3://bucket/prefix."),
    config: str = typer.Option(None, "--config", "-c", help="The stack's config file (or set "
                               "STACKVAULT_CONFIG; default ./stackvault.yaml)."),
    password_file: str = typer.Option(None, "--password-file", help="Read the password from "
                                      "this file (or STACKVAULT_PASSWORD_FILE)."),
    password_command: str = typer.Option(None, "--password-command", help="Run this command "
                                         "and use its output as the password."),
    insecure_no_password: bool = typer.Option(False, "--insecure-no-password",
                                              help="Create/use an UNENCRYPTED repository."),
    json_out: bool = typer.Option(False, "--json", help="Print results as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
    retry_lock: str = typer.Option("0s", "--retry-lock", help="Wait up to this long for a "
                                   "locked repository, e.g. 30s, 5m."),
    show_traceback: bool = typer.Option(False, "--traceback", help="Show a traceback on "
                                        "internal errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    from stackvault.cli.cmd_maintain import parse_seconds

    ctx.obj = Ctx(Options(repo=repo, config=config, password_file=password_file,
                          password_command=password_command,
                          insecure_no_password=insecure_no_password, json=json_out,
                          quiet=quiet, retry_lock=parse_seconds(retry_lock),
                          traceback=show_traceback))


for module in (cmd_repo, cmd_backup, cmd_browse, cmd_restore, cmd_maintain, cmd_config,
               cmd_stack, cmd_demo, cmd_quickstart, cmd_drill, cmd_integrity,
               cmd_schedule, cmd_serve):
    module.register(app)


def _on_signal(signum: int, _frame: Any) -> None:
    # SIGINT too: typer would turn a KeyboardInterrupt into a silent exit 130.
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return (and exit with) a documented exit code."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    want_tb = "--traceback" in args
    try:
        rv = app(args=args, standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except StackVaultError as exc:
        sys.stderr.write(f"error: {exc}\n")
        code = int(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted; nothing partial was committed\n")
        code = int(ExitCode.INTERRUPTED)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        sys.stderr.write("aborted\n")
        code = int(ExitCode.INTERRUPTED)
    except Exception as exc:  # click's usage errors (duck-typed: typer vendors click) or bugs
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            code = int(ExitCode.USAGE)
        else:
            sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n")
            if want_tb:
                traceback.print_exc()
            else:
                sys.stderr.write("  (run again with --traceback for details; please report it)\n")
            code = int(ExitCode.ERROR)
    from stackvault.cli.audit_hook import record

    record(args, code)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
