"""The HTTP API and dashboard of `stackvault serve` (FastAPI; OpenAPI at /openapi.json).

Auth: `Authorization: Bearer <token>` (see tokens.py). A missing or unknown token is 401
(`missing_token`, `invalid_token`), a token without the scope a route needs is 403
(`insufficient_scope`). Every error has the body `{"error": {"code": ..., "message": ...}}`
with a stable code. `GET /health` and the dashboard page need no token (the page asks for
one and keeps it in the browser's session storage).

Every POST (a change) is written to the audit log with who (the token's name and id), what,
and the outcome, whatever the outcome; reads are not logged (they change nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from stackvault import __version__
from stackvault.errors import StackVaultError
from stackvault.ops import audit
from stackvault.serve.service import Service
from stackvault.serve.tasks import TaskConflict
from stackvault.serve.tokens import scope_allows

API = "/api/v1"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No token, or an unknown or revoked one (`missing_token`, "
                         "`invalid_token`)."},
    403: {"description": "The token's scope is not enough (`insufficient_scope`)."},
}


@dataclass
class Principal:
    id: str
    name: str
    scope: str

    @property
    def who(self) -> str:
        return f"token:{self.name} ({self.id})"


bearer = HTTPBearer(auto_error=False, description="A token from `stackvault token create`.")


def _needs(scope: str) -> Any:
    def check(request: Request,
              cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        service: Service = request.app.state.service
        if cred is None or not cred.credentials:
            raise ApiError(401, "missing_token",
                           "this route needs a token: Authorization: Bearer <token>")
        info = service.tokens.verify(cred.credentials)
        if info is None:
            raise ApiError(401, "invalid_token", "the token is unknown or revoked")
        p = Principal(info.id, info.name, info.scope)
        request.state.principal = p
        if not scope_allows(info.scope, scope):
            raise ApiError(403, "insufficient_scope",
                           f"this route needs a token with the {scope} scope; this one has "
                           f"{info.scope}")
        return p

    return check


READ, OPERATE, ADMIN = _needs("read"), _needs("operate"), _needs("admin")


# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskRequest(_Body):
    kind: Literal["backup", "drill", "check", "integrity", "prune"] = Field(
        description="backup: the stack (or `components`); drill: a restore drill of "
                    "`snapshot`; check: the repository (`read_data_subset`); integrity: the "
                    "config's rules; prune: forget+prune with the schedule's keep policy.")
    components: list[str] = Field(default_factory=list, max_length=100,
                                  description="backup and drill: only these components.")
    snapshot: str | None = Field(None, max_length=80, pattern=r"^[0-9a-zA-Z]+$",
                                 description="drill: the snapshot (default: latest).")
    read_data_subset: str | None = Field(None, pattern=r"^\d{1,3}(\.\d+)?%$|^\d+/\d+$",
                                         description="check: read this much data, e.g. 5%.")


class RestoreRequest(_Body):
    snapshot: str = Field("latest", max_length=80, pattern=r"^[0-9a-zA-Z]+$")
    components: list[str] = Field(default_factory=list, max_length=100,
                                  description="NAME or NAME.TABLE; empty: every component.")
    to: dict[str, str] = Field(default_factory=dict,
                               description="NAME -> another target (see `restore --to`).")
    confirm: bool = Field(False, description="false: only the plan. true: restore (an admin "
                                             "token), after a safety snapshot.")
    no_safety_snapshot: bool = False


def _name_ok(name: str) -> bool:
    return bool(name) and len(name) <= 200 and not name.startswith("-") and "\n" not in name


def _component_args(components: list[str]) -> list[str]:
    """`--component NAME` for each, after checking that none can pass for an option."""
    for c in components:
        if not _name_ok(c):
            raise ApiError(422, "invalid_request", f"bad component {c!r}")
    return [a for c in components for a in ("--component", c)]


def _start(service: Service, kind: str, args: list[str], who: str) -> Any:
    try:
        return service.tasks.start(kind, args, who)
    except TaskConflict as exc:
        raise ApiError(409, "task_running", str(exc)) from None


# --------------------------------------------------------------------------- app


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="StackVault", version=__version__,
                  description="Backups, restores, drills and integrity checks of a "
                              "self-hosted AI/RAG stack. Tokens: `stackvault token create`.",
                  docs_url="/api/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.service = service

    @app.exception_handler(ApiError)
    def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(_error_body(exc.code, exc.message), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}"
                          for e in exc.errors()[:5])
        return JSONResponse(_error_body("invalid_request", where or "invalid request"), 422)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(_error_body(code, str(exc.detail)), exc.status_code)

    @app.middleware("http")
    async def _audit(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        if request.method == "POST":
            p = getattr(request.state, "principal", None)
            details = {"path": request.url.path, "status": response.status_code,
                       "client": request.client.host if request.client else None}
            details.update(getattr(request.state, "audit", {}))
            # The append fsyncs: off the event loop, so other requests are not held up.
            await run_in_threadpool(
                audit.append, service.audit_path, f"api {request.method} {request.url.path}",
                "ok" if response.status_code < 400 else "refused"
                if response.status_code in (401, 403) else "failed",
                details, who=p.who if p else "anonymous")
        return response

    # ------------------------------------------------------------------ open

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Is the service up (no token; says nothing secret)."""
        return service.health()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        page = resources.files("stackvault.serve").joinpath("dashboard.html")
        return HTMLResponse(page.read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ read

    @app.get("/metrics", tags=["service"], responses=ERRORS,
             response_class=PlainTextResponse)
    def metrics(_: Principal = Depends(READ)) -> PlainTextResponse:
        """Prometheus metrics (a read token: `authorization: {credentials: ...}`)."""
        from stackvault.serve.metrics import render

        body, ctype = render(service)
        return PlainTextResponse(body, media_type=ctype)

    @app.get(f"{API}/status", tags=["status"], responses=ERRORS)
    def status(_: Principal = Depends(READ)) -> dict[str, Any]:
        """Components (reachable, version, size, last backup against the RPO), repository,
        last drill, running tasks. `ok` is false when something needs attention."""
        st = service.status or {"ok": None, "problems": [], "components": [],
                                "checked": None}
        return {**st, "repository": service.views.repository,
                "running": [t.to_dict() for t in service.tasks.active()],
                "service": service.health()}

    @app.get(f"{API}/snapshots", tags=["snapshots"], responses=ERRORS)
    def snapshots(limit: int = Query(100, ge=1, le=10000),
                  _: Principal = Depends(READ)) -> dict[str, Any]:
        """Stack snapshots, newest first, with per-component sizes."""
        snaps = service.views.snapshots
        return {"snapshots": list(reversed(snaps))[:limit], "total": len(snaps),
                "repository": service.views.repository}

    def _find(ref: str) -> dict[str, Any]:
        snaps = service.views.snapshots
        if ref == "latest" and snaps:
            return snaps[-1]
        hits = [s for s in snaps if s["id"].startswith(ref)] if ref.isalnum() else []
        if len(hits) != 1:
            raise ApiError(404, "not_found", f"no snapshot {ref!r}" if not hits
                           else f"{ref!r} matches {len(hits)} snapshots: give more of the id")
        return hits[0]

    @app.get(f"{API}/snapshots/{{snapshot_id}}", tags=["snapshots"],
             responses={**ERRORS, 404: {"description": "No such snapshot."}})
    def snapshot(snapshot_id: str, _: Principal = Depends(READ)) -> dict[str, Any]:
        """One snapshot (an id, a unique prefix, or `latest`)."""
        return _find(snapshot_id)

    @app.get(f"{API}/snapshots/{{snapshot_id}}/manifest", tags=["snapshots"],
             responses={**ERRORS, 404: {"description": "No such snapshot."}})
    def manifest(snapshot_id: str, _: Principal = Depends(READ)) -> dict[str, Any]:
        """The stack manifest: per component versions, artifacts with SHA-256, fingerprints,
        times."""
        snap = _find(snapshot_id)
        m = service.manifest(snap["id"])
        if m is None:
            raise ApiError(404, "not_found", f"snapshot {snapshot_id!r} has no manifest")
        return m

    @app.get(f"{API}/tasks", tags=["tasks"], responses=ERRORS)
    def tasks(kind: str | None = Query(None, max_length=20),
              limit: int = Query(50, ge=1, le=500),
              _: Principal = Depends(READ)) -> dict[str, Any]:
        """Tasks, newest first: started by the scheduler or the API, with progress."""
        return {"tasks": [t.to_dict() for t in service.tasks.recent(kind, limit)]}

    @app.get(f"{API}/tasks/{{task_id}}", tags=["tasks"],
             responses={**ERRORS, 404: {"description": "No such task."}})
    def task(task_id: str, _: Principal = Depends(READ)) -> dict[str, Any]:
        """One task: status, progress while it runs, result and error when done."""
        t = service.tasks.get(task_id)
        if t is None:
            raise ApiError(404, "not_found", f"no task {task_id!r}")
        return t.to_dict()

    @app.get(f"{API}/drills", tags=["drills"], responses=ERRORS)
    def drills(limit: int = Query(50, ge=1, le=1000),
               _: Principal = Depends(READ)) -> dict[str, Any]:
        """Drill reports, newest first: RTO and RPO against the targets."""
        return {"drills": list(reversed(service.views.drills))[:limit]}

    @app.get(f"{API}/integrity", tags=["integrity"], responses=ERRORS)
    def integrity(_: Principal = Depends(READ)) -> dict[str, Any]:
        """The newest integrity run's report (`report` is null before the first)."""
        return {"report": service.integrity_view()}

    @app.get(f"{API}/schedule", tags=["service"], responses=ERRORS)
    def schedule(_: Principal = Depends(READ)) -> dict[str, Any]:
        """Next and last runs of each scheduled job, and the check coverage."""
        return service.schedule_view()

    @app.get(f"{API}/audit", tags=["audit"], responses=ERRORS)
    def audit_log(limit: int = Query(100, ge=1, le=1000),
                  _: Principal = Depends(READ)) -> dict[str, Any]:
        """The newest audit log entries, newest first."""
        return {"entries": list(reversed(audit.tail(service.audit_path, limit)))}

    @app.get(f"{API}/dashboard", tags=["service"], responses=ERRORS)
    def dashboard_data(p: Principal = Depends(READ)) -> dict[str, Any]:
        """Everything the dashboard shows, in one call."""
        drills_ = service.views.drills
        return {"service": service.health(), "token": {"name": p.name, "scope": p.scope},
                "repository": service.views.repository,
                "snapshots": service.views.snapshots[-60:],
                "drill": drills_[-1] if drills_ else None,
                "targets": service.targets(),
                "integrity": service.integrity_view(),
                "tasks": [t.to_dict() for t in service.tasks.recent(limit=10)],
                "schedule": service.schedule_view(),
                "status": service.status,
                "audit": list(reversed(audit.tail(service.audit_path, 15)))}

    # ------------------------------------------------------------------ change

    @app.post(f"{API}/tasks", tags=["tasks"], status_code=202,
              responses={**ERRORS, 409: {"description": "A task of this kind is running "
                                              "(`task_running`)."}})
    def start_task(body: TaskRequest, request: Request,
                   p: Principal = Depends(OPERATE)) -> dict[str, Any]:
        """Start a backup, drill, check, integrity run or prune; follow it at
        /api/v1/tasks/{id}."""
        t = _start(service, body.kind, _task_args(service, body), p.who)
        request.state.audit = {"task": t.id, "kind": t.kind}
        return t.to_dict()

    @app.post(f"{API}/restore", tags=["restore"],
              responses={**ERRORS, 409: {"description": "A restore is running."},
                         400: {"description": "The plan failed (`plan_failed`)."}})
    def restore(body: RestoreRequest, request: Request,
                p: Principal = Depends(OPERATE)) -> dict[str, Any]:
        """Plan a restore (default), or with `confirm: true` and an admin token, run it as a
        task (after a safety snapshot unless `no_safety_snapshot`)."""
        args = ["restore", body.snapshot, *_component_args(body.components)]
        for name, target in body.to.items():
            if not (_name_ok(name) and _name_ok(target)):
                raise ApiError(422, "invalid_request", f"bad target {name!r}")
            args += ["--to", f"{name}={target}"]
        if not body.confirm:
            request.state.audit = {"plan": True, "snapshot": body.snapshot}
            try:
                plan = service.plan_restore(args)
            except StackVaultError as exc:
                raise ApiError(400, "plan_failed", str(exc)) from None
            return {"dry_run": True, "plan": plan}
        if not scope_allows(p.scope, "admin"):
            raise ApiError(403, "insufficient_scope", "a real restore needs an admin token "
                           "(without `confirm` you get the plan)")
        if body.no_safety_snapshot:
            args.append("--no-safety-snapshot")
        t = _start(service, "restore", [*args, "--yes"], p.who)
        request.state.audit = {"task": t.id, "snapshot": body.snapshot,
                               "components": body.components}
        return t.to_dict()

    return app


def _task_args(service: Service, body: TaskRequest) -> list[str]:
    comps = _component_args(body.components)
    if body.kind == "backup":
        return ["backup", *comps]
    if body.kind == "drill":
        return ["drill", *([body.snapshot] if body.snapshot else []), *comps]
    if body.kind == "check":
        return ["check", *(["--read-data-subset", body.read_data_subset]
                           if body.read_data_subset else [])]
    if body.kind == "integrity":
        return ["integrity", "check"]
    from stackvault.ops.scheduler import job_command

    prune = service.config.schedule.prune
    if prune is None:
        raise ApiError(409, "no_policy", "the config has no schedule.prune keep policy")
    return job_command("prune", prune)
