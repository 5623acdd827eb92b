"""`stackvault serve` end to end, as a user runs it: a real server process on loopback,
tokens from `stackvault token create`, the API driven over HTTP. Covers the auth matrix of
every route, backups and restores through the API, /metrics, the audit log (and its copy in
the repository), and the service surviving a failing job, an unreachable repository and a
restart in the middle of a job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import SV
from serve_support import Server, make_stack, rows, stop_tasks, token, wait_for, wait_task

from support.receivers import HttpReceiver, http_receiver


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    with http_receiver() as r:
        yield r


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[SV, Server, Path]]:
    sv = make_stack(tmp_path)
    server = Server(sv).start()
    try:
        yield sv, server, tmp_path
    finally:
        server.stop()
        stop_tasks(tmp_path / "stackvault-state")


# Every route and the scope it needs (None: no token). The test fails when a route is added
# to the API without being added here.
ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/health"): None,
    ("GET", "/metrics"): "read",
    ("GET", "/api/v1/status"): "read",
    ("GET", "/api/v1/snapshots"): "read",
    ("GET", "/api/v1/snapshots/{snapshot_id}"): "read",
    ("GET", "/api/v1/snapshots/{snapshot_id}/manifest"): "read",
    ("GET", "/api/v1/tasks"): "read",
    ("GET", "/api/v1/tasks/{task_id}"): "read",
    ("GET", "/api/v1/drills"): "read",
    ("GET", "/api/v1/integrity"): "read",
    ("GET", "/api/v1/schedule"): "read",
    ("GET", "/api/v1/audit"): "read",
    ("GET", "/api/v1/dashboard"): "read",
    ("POST", "/api/v1/tasks"): "operate",
    ("POST", "/api/v1/restore"): "operate",
}
SCOPES = ("read", "operate", "admin")


def test_health_needs_no_token_and_tells_nothing_secret(served: tuple[SV, Server, Path]
                                                        ) -> None:
    sv, server, d = served
    with server.client(None) as c:
        r = c.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    body = r.text
    assert str(d) not in body and "PASSWORD" not in body.upper() and "repo" not in body


def test_auth_matrix_for_every_route(served: tuple[SV, Server, Path]) -> None:
    sv, server, d = served
    tokens = {s: token(sv, s) for s in SCOPES}
    revoked = token(sv, "admin", "old")
    sv.ok("token", "revoke", revoked.split("_")[1])
    with server.client(tokens["admin"]) as admin:
        spec = admin.get("/openapi.json").json()
        snap = admin.post("/api/v1/tasks", json={"kind": "backup"}).json()
        wait_task(admin, snap["id"])
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert routes == set(ROUTES), "routes and the auth matrix differ"
    ids = {"{snapshot_id}": "latest", "{task_id}": snap["id"]}

    def call(method: str, path: str, tok: str | None) -> Any:
        for k, v in ids.items():
            path = path.replace(k, v)
        with server.client(tok) as c:
            # An empty body: past auth, a POST is refused as invalid (422), never run.
            return c.request(method, path, json={} if method == "POST" else None)

    for (method, path), need in ROUTES.items():
        anon = call(method, path, None)
        bad = call(method, path, "svt_00000000_notatoken")
        old = call(method, path, revoked)
        if need is None:
            assert anon.status_code == 200
            continue
        for r, code in ((anon, "missing_token"), (bad, "invalid_token"),
                        (old, "invalid_token")):
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == code
            assert r.headers["www-authenticate"] == "Bearer"
        for scope in SCOPES:
            r = call(method, path, tokens[scope])
            allowed = SCOPES.index(scope) >= SCOPES.index(need)
            if not allowed:
                assert r.status_code == 403, (method, path, scope, r.text)
                assert r.json()["error"]["code"] == "insufficient_scope"
            elif method == "POST" and path == "/api/v1/tasks":
                assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
            else:
                assert r.status_code == 200, (method, path, scope, r.text)


def test_backup_through_the_api_fills_snapshots_metrics_and_the_audit_log(
        served: tuple[SV, Server, Path]) -> None:
    sv, server, d = served
    operate = token(sv, "operate", "ci-bot")
    with server.client(operate) as c:
        t = c.post("/api/v1/tasks", json={"kind": "backup"})
        assert t.status_code == 202, t.text
        again = c.post("/api/v1/tasks", json={"kind": "backup"})  # one at a time
        done = wait_task(c, t.json()["id"])
        assert done["status"] == "succeeded", done
        assert done["who"] == f"token:ci-bot ({operate.split('_')[1]})"
        snap_id = done["result"]["snapshot"]
        snaps = wait_for(lambda: c.get("/api/v1/snapshots").json()["snapshots"],
                         what="the snapshot in the API")
        assert snaps[0]["id"] == snap_id and snaps[0]["complete"] is True
        assert snaps[0]["components"]["app_db"]["bytes"] == (d / "app.db").stat().st_size
        one = c.get(f"/api/v1/snapshots/{snap_id[:8]}").json()
        assert one["id"] == snap_id
        manifest = c.get(f"/api/v1/snapshots/{snap_id}/manifest").json()
        assert manifest["components"]["app_db"]["fingerprint"]
        assert c.get("/api/v1/snapshots/ffffffff").json()["error"]["code"] == "not_found"
        metrics = c.get("/metrics").text
    if again.status_code == 409:  # unless the first was already over
        assert again.json()["error"]["code"] == "task_running"
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in metrics.splitlines() if line and not line.startswith("#")}
    assert values['stackvault_job_last_success{job="backup"}'] == 1.0
    assert values['stackvault_component_backup_bytes{component="app_db"}'] == \
        (d / "app.db").stat().st_size
    assert values["stackvault_repository_reachable"] == 1.0
    assert values["stackvault_snapshots"] == 1.0
    assert values["stackvault_repository_dedup_ratio"] > 0

    # The audit log names the token for the API call and the command the task ran, the chain
    # verifies, and a copy reaches the repository.
    log = [json.loads(x) for x in (d / "stackvault-audit.jsonl").read_text().splitlines()]
    api = [e for e in log if e["action"] == "api POST /api/v1/tasks"]
    assert api[0]["who"].startswith("token:ci-bot") and api[0]["details"]["kind"] == "backup"
    assert any(e["action"] == "backup" and e["outcome"] == "ok" for e in log)
    assert sv.json("audit", "verify")["ok"] is True
    wait_for(lambda: list((d / "repo" / "audit").glob("*")), what="the audit copy")
    copies = sv.json("audit", "verify", "--repo")
    assert copies["ok"] is True and copies["copies"] >= 1
    server.stop()
    sv.ok("audit", "copy")  # the copy now holds every line; then cut the last one locally,
    path = d / "stackvault-audit.jsonl"  # which the log's own chain cannot notice
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    assert sv.json("audit", "verify")["ok"] is True
    cut = sv("audit", "verify", "--repo")
    assert cut.rc == 1 and "does not begin with it" in cut.err


def test_restore_plan_then_an_admin_restore_brings_the_data_back(
        served: tuple[SV, Server, Path]) -> None:
    sv, server, d = served
    before = rows(d / "app.db")
    sv.ok("backup")
    con = sqlite3.connect(d / "app.db")
    con.execute("DELETE FROM docs WHERE id > 10")
    con.commit()
    con.close()
    operate, admin = token(sv, "operate"), token(sv, "admin")
    with server.client(operate) as c:
        plan = c.post("/api/v1/restore", json={"components": ["app_db"]})
        assert plan.status_code == 200, plan.text
        assert [s["component"] for s in plan.json()["plan"]["steps"]] == ["app_db"]
        refused = c.post("/api/v1/restore", json={"components": ["app_db"], "confirm": True})
        assert refused.status_code == 403
        assert "admin" in refused.json()["error"]["message"]
        bad = c.post("/api/v1/restore", json={"components": ["nope"]})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "plan_failed"
        assert "nope" in bad.json()["error"]["message"]
    assert len(rows(d / "app.db")) == 10  # planning changed nothing
    with server.client(admin) as c:
        t = c.post("/api/v1/restore", json={"components": ["app_db"], "confirm": True})
        assert t.status_code == 200, t.text
        done = wait_task(c, t.json()["id"])
    assert done["status"] == "succeeded", done
    assert rows(d / "app.db") == before
    assert done["result"]["safety_snapshot"]  # the damaged state was kept first
    snaps = sv.json("snapshots")
    assert any("safety" in s["tags"] for s in snaps)


def test_a_failing_backup_notifies_and_the_service_goes_on(tmp_path: Path,
                                                           http: HttpReceiver) -> None:
    sv = make_stack(tmp_path, f"""\
notifications:
  channels:
    - type: webhook
      url: {http.url}/hook
""")
    server = Server(sv).start()
    try:
        (tmp_path / "app.db").unlink()  # the component is gone: its backup fails
        with server.client(token(sv, "operate")) as c:
            done = wait_task(c, c.post("/api/v1/tasks", json={"kind": "backup"}).json()["id"])
            assert done["status"] == "failed" and done["exit_code"] == 3
            assert "app_db" in done["error"]
            hook = wait_for(lambda: http.to("/hook"), what="the webhook")[0].json()
            assert hook["outcome"] == "failure" and hook["event"] == "backup"
            assert c.get("/health").status_code == 200
            metrics = c.get("/metrics").text
            assert 'stackvault_job_last_success{job="backup"} 0.0' in metrics
    finally:
        server.stop()
        stop_tasks(tmp_path / "stackvault-state")


def test_the_service_survives_a_briefly_unreachable_repository(
        served: tuple[SV, Server, Path]) -> None:
    sv, server, d = served
    sv.ok("backup")
    with server.client(token(sv, "operate")) as c:
        wait_for(lambda: c.get("/api/v1/snapshots").json()["total"] == 1, what="the snapshot")
        shutil.move(d / "repo", d / "repo-away")
        failed = wait_task(c, c.post("/api/v1/tasks", json={"kind": "backup"}).json()["id"])
        assert failed["status"] == "failed" and failed["exit_code"] == 10, failed
        st = wait_for(lambda: (r := c.get("/api/v1/status").json())["repository"]
                      ["reachable"] is False and r, what="the repository seen as unreachable")
        assert st["repository"]["error"]
        # What was read before stays visible while the repository is away.
        assert c.get("/api/v1/snapshots").json()["total"] == 1
        shutil.move(d / "repo-away", d / "repo")
        ok = wait_task(c, c.post("/api/v1/tasks", json={"kind": "backup"}).json()["id"])
        assert ok["status"] == "succeeded", ok
        wait_for(lambda: c.get("/api/v1/snapshots").json()["total"] == 2
                 and c.get("/api/v1/status").json()["repository"]["reachable"] is True,
                 what="the repository back")


def test_a_restart_in_the_middle_of_a_job_resumes_it_or_reports_it_failed(
        tmp_path: Path, http: HttpReceiver) -> None:
    sv = make_stack(tmp_path, f"""\
notifications:
  channels:
    - type: webhook
      url: {http.url}/hook
""", pre_hook="sleep 4")
    state = tmp_path / "stackvault-state"
    server = Server(sv).start()
    try:
        tok = token(sv, "operate")
        # 1. The service dies, the job's process goes on: after the restart the task is
        # watched again and its outcome arrives.
        with server.client(tok) as c:
            tid = c.post("/api/v1/tasks", json={"kind": "backup"}).json()["id"]
            wait_task(c, tid, until=("running",))
        server.kill()
        server = Server(sv).start()
        with server.client(tok) as c:
            t = c.get(f"/api/v1/tasks/{tid}").json()
            assert t["status"] == "running" and t["resumed"] is True, t
            done = wait_task(c, tid)
            assert done["status"] == "succeeded", done
            assert c.get("/api/v1/snapshots").json()  # the service still answers

            # 2. Both die: after the restart the task is failed, never silently lost, and a
            # failure is notified.
            tid = c.post("/api/v1/tasks", json={"kind": "backup"}).json()["id"]
            pid = wait_task(c, tid, until=("running",))["pid"]
        server.kill()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the task process gone")
        server = Server(sv).start()
        with server.client(tok) as c:
            t = c.get(f"/api/v1/tasks/{tid}").json()
            assert t["status"] == "failed" and t["error"].startswith("interrupted"), t
        hook = wait_for(lambda: [h.json() for h in http.to("/hook")
                                 if h.json()["outcome"] == "failure"], what="the webhook")
        assert "interrupted" in hook[0]["errors"][0]
        # The job can run again (its lock went with its process).
        with server.client(tok) as c:
            again = wait_task(c, c.post("/api/v1/tasks", json={"kind": "backup"}).json()["id"])
            assert again["status"] == "succeeded", again
    finally:
        server.stop()
        stop_tasks(state)


def test_tokens_are_kept_hashed_listed_without_secrets_and_revocable(
        served: tuple[SV, Server, Path]) -> None:
    sv, server, d = served
    created = sv.json("token", "create", "--name", "grafana", "--scope", "read")
    tok = created["token"]
    assert tok.startswith("svt_") and created["scope"] == "read"
    stored = d / "stackvault-state" / "tokens.json"
    assert tok not in stored.read_text() and stored.stat().st_mode & 0o777 == 0o600
    listed = sv.ok("token", "list")
    assert "grafana" in listed.text and tok not in listed.text
    with server.client(tok) as c:
        assert c.get("/api/v1/status").status_code == 200
        sv.ok("token", "revoke", created["id"])
        r = c.get("/api/v1/status")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    bad = sv("token", "create", "--name", "x", "--scope", "root")
    assert bad.rc == 2 and "read, operate or admin" in bad.err
    unknown = sv("token", "revoke", "deadbeef")
    assert unknown.rc == 2 and "token list" in unknown.err
    log = (d / "stackvault-audit.jsonl").read_text()
    assert '"action":"token create"' in log and '"action":"token revoke"' in log
    assert tok not in log


def test_the_scheduler_of_serve_runs_a_due_job(tmp_path: Path) -> None:
    # A backup every minute: within about a minute the scheduler starts it as a task.
    sv = make_stack(tmp_path, """\
schedule:
  timezone: Europe/Berlin
  backup:
    cron: "* * * * *"
""")
    server = Server(sv).start()
    try:
        with server.client(token(sv, "read")) as c:
            sched = c.get("/api/v1/schedule").json()
            assert sched["timezone"] == "Europe/Berlin" and "backup" in sched["jobs"]
            task = wait_for(lambda: [t for t in c.get("/api/v1/tasks").json()["tasks"]
                                     if t["who"] == "scheduler"], timeout=90,
                            what="a scheduled backup")[0]
            assert task["kind"] == "backup"
            done = wait_task(c, task["id"])
            assert done["status"] == "succeeded", done
            job = wait_for(lambda: (j := c.get("/api/v1/schedule").json()["jobs"]["backup"])
                           .get("last_run") and j["last_run"]["outcome"] == "success" and j,
                           what="the run recorded")
            assert job["next_run"] > job["last_run"]["started"]
    finally:
        server.stop()
        stop_tasks(tmp_path / "stackvault-state")


def test_audit_copies_of_two_hosts_sharing_one_repository(tmp_path: Path) -> None:
    # Each host copies its own log into the shared repository; each verifies its own copy
    # and leaves the other's alone (only its chain is checked).
    (tmp_path / "a").mkdir()
    sv_a = make_stack(tmp_path / "a")
    (tmp_path / "b").mkdir()
    cfg_b = tmp_path / "b" / "stackvault.yaml"
    cfg_b.write_text((tmp_path / "a" / "stackvault.yaml").read_text())
    sv_b = SV(None, {**sv_a.env, "STACKVAULT_CONFIG": str(cfg_b)})
    for sv in (sv_a, sv_b):
        sv.ok("backup")
        assert sv.json("audit", "copy")["copied"] is True
    for sv in (sv_a, sv_b):
        out = sv.json("audit", "verify", "--repo")
        assert out["ok"] is True and out["copies"] == 1 and out["other_logs"] == 1, out
    assert len(list((tmp_path / "a" / "repo" / "audit").iterdir())) == 2
