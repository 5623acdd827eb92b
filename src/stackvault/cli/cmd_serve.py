"""`stackvault serve` (scheduler, HTTP API, dashboard, metrics) and `stackvault token ...`."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import typer

from stackvault.cli.cmd_stack import load_stack_config
from stackvault.cli.context import Ctx
from stackvault.errors import UsageError

token_app = typer.Typer(help="API tokens for `stackvault serve`: create, list, revoke.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(token_app, name="token")


def _state_dir(c: Ctx, config: Any, given: Path | None) -> Path:
    from stackvault.serve.service import default_state_dir

    return given or default_state_dir(config, c.opts.env)


def _tokens(c: Ctx, state_dir: Path | None) -> tuple[Any, Any]:
    """(the stack config, its token store): the store the service of that config reads."""
    from stackvault.serve.tokens import TokenStore

    config = load_stack_config(c)
    return config, TokenStore.in_state_dir(_state_dir(c, config, state_dir))


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad --listen {value!r}", hint="use HOST:PORT, e.g. 127.0.0.1:8420")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(
    ctx: typer.Context,
    listen: str = typer.Option("127.0.0.1:8420", "--listen", help="HOST:PORT to serve on. "
                               "Binds loopback unless told otherwise; put a TLS reverse proxy "
                               "in front of anything else (docs/serve.md)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Tasks, schedule state and "
                                          "tokens (or STACKVAULT_STATE_DIR; default "
                                          "stackvault-state/ next to the config)."),
    refresh: float = typer.Option(30.0, "--refresh", min=1.0, help="Seconds between reads "
                                  "of the repository for the API and dashboard."),
    status_every: float = typer.Option(60.0, "--status-every", min=5.0, help="Seconds "
                                       "between probes of the components."),
) -> None:
    """Run the scheduler, the HTTP API, the dashboard and /metrics until stopped (Ctrl-C or
    SIGTERM). Tasks keep running in their own processes across a restart."""
    import uvicorn

    from stackvault.serve.app import create_app
    from stackvault.serve.service import Service

    c: Ctx = ctx.obj
    config = load_stack_config(c)
    if config.source is None:
        raise UsageError("the config was not loaded from a file")
    host, port = _listen(listen)
    try:
        public = not ipaddress.ip_address(host).is_loopback
    except ValueError:
        public = host not in ("localhost",)
    service = Service(config, Path(config.source), env=c.opts.env,
                      state_dir=_state_dir(c, config, state_dir), refresh_seconds=refresh,
                      status_seconds=status_every)
    if not service.tokens.list():
        c.warn("no API tokens yet: create one with `stackvault token create --name NAME "
               "--scope read|operate|admin`")
    if public:
        c.warn(f"serving on {host}, not loopback: put a TLS reverse proxy in front "
               "(docs/serve.md); tokens travel in every request")
    service.start()
    c.err.print(f"stackvault serve: http://{host}:{port}/ (state {service.state_dir})",
                markup=False)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port,
                                           log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5))
    try:
        server.run()
    finally:
        service.stop()


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="Who or what uses it, e.g. prometheus."),
    scope: str = typer.Option("read", "--scope", help="read, operate (start jobs, plan "
                              "restores) or admin (also real restores)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="As for `serve`."),
) -> None:
    """Create a token and print it once (only its hash is kept)."""
    from stackvault.ops import audit

    c: Ctx = ctx.obj
    config, store = _tokens(c, state_dir)
    info, token = store.create(name, scope)
    audit.append(audit.default_path(config, c.opts.env), "token create", "ok",
                 {"id": info.id, "name": name, "scope": scope})
    if c.opts.json:
        c.emit({**info.public(), "token": token})
        return
    c.err.print(f"token {info.id} ({scope}) for {name}; shown only now, keep it safe:",
                markup=False)
    c.out.print(token, markup=False)


@token_app.command("list")
def token_list(
    ctx: typer.Context,
    state_dir: Path | None = typer.Option(None, "--state-dir", help="As for `serve`."),
) -> None:
    """Every token: id, name, scope, created, revoked (never the token)."""
    c: Ctx = ctx.obj
    tokens = _tokens(c, state_dir)[1].list()
    if c.opts.json:
        c.emit([t.public() for t in tokens])
        return
    if not tokens:
        c.info("no tokens")
    for t in tokens:
        state = f"revoked {t.revoked}" if t.revoked else "active"
        c.out.print(f"{t.id}  {t.scope:<8} {t.name:<20} created {t.created}  {state}",
                    markup=False)


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    token_id: str = typer.Argument(..., help="The token's id (from `token list`)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="As for `serve`."),
) -> None:
    """Revoke a token: the API refuses it from the next request on."""
    from stackvault.ops import audit

    c: Ctx = ctx.obj
    config, store = _tokens(c, state_dir)
    info = store.revoke(token_id)
    audit.append(audit.default_path(config, c.opts.env), "token revoke", "ok",
                 {"id": info.id, "name": info.name})
    if c.opts.json:
        c.emit(info.public())
    else:
        c.info(f"revoked {info.id} ({info.name})")
