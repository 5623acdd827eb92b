"""The issue's "done when", end to end through the CLI: a stackvault.yaml with PostgreSQL +
SQLite + a config folder and HTTP hooks; backup, damage, restore everything, restore one
table elsewhere, export a pg_restore-able dump; and the bad inputs a user meets."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from e2e_support import PASSWORD, SV, base_env

from support.postgres_server import DEBIAN_PG15, PgServer, free_port, postgres

HOOK_TOKEN = "hook-SECRET-Token-8812"


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with postgres(DEBIAN_PG15) as server:
        yield server


class Receiver:
    """A local HTTP server that records the hook calls it gets (method, path, auth header)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []
        self.fail_paths: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                outer.calls.append((self.command, self.path, self.headers.get("Authorization")))
                self.send_response(500 if self.path in outer.fail_paths else 204)
                self.end_headers()

            do_POST = do_GET = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def pg_rows(server: PgServer, db: str) -> dict[str, list[str]]:
    with psycopg.connect(server.dsn(db), autocommit=True) as c:
        tables = c.execute("SELECT schemaname, tablename FROM pg_tables WHERE schemaname "
                           "NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
        return {f"{s}.{t}": sorted(r[0] for r in c.execute(
            psycopg.sql.SQL("SELECT t::text FROM {} t").format(psycopg.sql.Identifier(s, t))))
            for s, t in tables}


@pytest.fixture
def stack(tmp_path: Path, pg: PgServer, receiver: Receiver) -> tuple[SV, Path]:
    db = f"shop_{tmp_path.name[-6:].lower().replace('-', '_')}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {db}")
    with psycopg.connect(pg.dsn(db), autocommit=True) as c:
        c.execute("""
            CREATE TABLE customers (id serial PRIMARY KEY, name text, joined date);
            CREATE TABLE orders (id bigserial PRIMARY KEY, customer int REFERENCES customers,
                                 total numeric(12, 2), note text);
            CREATE INDEX orders_customer ON orders (customer);
            INSERT INTO customers (name, joined)
                SELECT 'Kundin ' || g || ' – ü', date '2026-01-01' + g
                FROM generate_series(1, 200) g;
            INSERT INTO orders (customer, total, note)
                SELECT 1 + g % 200, g * 1.5, repeat('✓', g % 40) FROM generate_series(1, 3000) g;
        """)
    sq = tmp_path / "jobs.db"
    con = sqlite3.connect(sq)
    con.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT)")
    con.executemany("INSERT INTO jobs (state) VALUES (?)", [("done",)] * 50)
    con.commit()
    con.close()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / ".env").write_text("OPENAI_BASE=http://localhost\n")
    (tmp_path / "stackvault.yaml").write_text(f"""
version: 1
repository:
  location: {tmp_path / "repo"}
hooks:
  pre:
    - http: {{url: "{receiver.url}/pause", headers_env: {{Authorization: HOOK_AUTH}}}}
  post:
    - http: {{url: "{receiver.url}/resume", method: GET}}
components:
  shop:
    type: postgres
    host: 127.0.0.1
    port: {pg.port}
    databases: [{db}]
    hooks:
      pre:
        - http: {{url: "{receiver.url}/shop/pre"}}
  jobs:
    type: sqlite
    path: {sq}
    depends_on: [shop]
  config:
    type: files
    paths: [{conf}]
""")
    sv = SV(None, base_env(STACKVAULT_PASSWORD=PASSWORD, HOOK_AUTH=f"Bearer {HOOK_TOKEN}",
                           STACKVAULT_CONFIG=str(tmp_path / "stackvault.yaml")))
    sv.ok("init")
    (tmp_path / "dbname").write_text(db)
    return sv, tmp_path


def test_backup_restore_everything_one_table_elsewhere_and_export(
        stack: tuple[SV, Path], pg: PgServer, receiver: Receiver) -> None:
    sv, d = stack
    db = (d / "dbname").read_text()
    before = pg_rows(pg, db)

    out = sv.json("backup")
    assert out["complete"] is True, out
    # hooks: stack pre (with the header from the environment), component pre, stack post
    assert receiver.calls == [("POST", "/pause", f"Bearer {HOOK_TOKEN}"),
                              ("POST", "/shop/pre", None), ("GET", "/resume", None)]
    shown = sv.json("show")["manifest"]["components"]["shop"]
    assert shown["versions"]["server"].startswith("PostgreSQL 15")
    assert "/" in shown["extra"]["databases"][db]["wal_lsn"]
    assert shown["fingerprint"]["counts"][f"{db}.public.orders"] == 3000
    assert "WAL position" in sv.ok("show").text

    # damage PostgreSQL and SQLite
    with psycopg.connect(pg.dsn(db), autocommit=True) as c:
        c.execute("DROP TABLE orders")
        c.execute("UPDATE customers SET name = 'gone'")
    con = sqlite3.connect(d / "jobs.db")
    con.execute("DELETE FROM jobs")
    con.commit()
    con.close()

    plan = sv.json("restore", "--dry-run")
    steps = plan["plan"]["steps"]
    order = [s["component"] for s in steps]
    assert order.index("shop") < order.index("jobs")  # jobs depends on shop
    assert db in next(s for s in steps if s["component"] == "shop")["target_description"]

    report = sv.json("restore", "--yes")
    assert report["ok"] is True, report
    shop = next(c for c in report["components"] if c["component"] == "shop")
    assert shop["verified"] is True and shop["seconds"] >= 0
    assert pg_rows(pg, db) == before
    assert len(sqlite3.connect(d / "jobs.db").execute("SELECT * FROM jobs").fetchall()) == 50

    # one table, pulled into a scratch database, production untouched
    with psycopg.connect(pg.dsn(db), autocommit=True) as c:
        c.execute("DELETE FROM orders WHERE id > 100")
    scratch = f"{db}_scratch"
    report = sv.json("restore", "--component", "shop.public.orders", "--to",
                     f"shop={scratch}", "--yes")
    assert report["ok"] is True and report["safety_snapshot"] is None
    assert pg_rows(pg, scratch)["public.orders"] == before["public.orders"]
    assert len(pg_rows(pg, db)["public.orders"]) == 100

    # export: a dump that pg_restore reads, checkable with sha256sum
    exp = d / "export"
    sv.ok("export", "--component", "shop", "--out", str(exp))
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=exp, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    dump = exp / "databases" / f"{db}.dump"
    listing = subprocess.run([str(DEBIAN_PG15 / "pg_restore"), "-l", str(dump)],
                             capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public orders" in listing
    meta = json.loads((exp / "databases" / f"{db}.json").read_text())
    assert "/" in meta["wal_lsn"]


def test_failing_pre_hook_skips_the_component(stack: tuple[SV, Path],
                                              receiver: Receiver) -> None:
    sv, d = stack
    receiver.fail_paths.add("/shop/pre")
    res = sv("--json", "backup")
    assert res.rc == 3, str(res)
    out = res.json()
    assert out["components"]["shop"]["ok"] is False
    assert "hook URL answered 500" in out["components"]["shop"]["error"]
    assert out["components"]["jobs"]["ok"] is True


def test_unreachable_server_and_missing_pg_dump(stack: tuple[SV, Path]) -> None:
    sv, d = stack
    cfg = d / "stackvault.yaml"
    text = cfg.read_text()
    port_line = next(ln for ln in text.splitlines() if ln.strip().startswith("port:"))
    cfg.write_text(text.replace(port_line, f"    port: {free_port()}"))
    res = sv("--json", "backup")
    assert res.rc == 3, str(res)
    err = res.json()["components"]["shop"]["error"]
    assert "cannot reach PostgreSQL at 127.0.0.1" in err

    empty = d / "no-tools"
    empty.mkdir()
    cfg.write_text(text.replace(port_line, f"{port_line}\n    pg_bin_dir: {empty}"))
    res = sv("--json", "backup")
    assert res.rc == 3, str(res)
    assert "there is no pg_dump in pg_bin_dir" in res.json()["components"]["shop"]["error"]


def test_wrong_password_is_reported_and_never_printed(stack: tuple[SV, Path], pg: PgServer
                                                      ) -> None:
    sv, d = stack
    cfg = d / "stackvault.yaml"
    text = cfg.read_text()
    cfg.write_text(text.replace("    type: postgres\n", "    type: postgres\n"
                                "    user: nobody_here\n    password_env: SHOP_PG_PASSWORD\n"))
    res = sv("--json", "backup", env={"SHOP_PG_PASSWORD": "pg-Secret-Pw-99231"})
    assert res.rc == 3, str(res)  # run_cli also asserts the password is not in the output
    err = res.json()["components"]["shop"]["error"]
    assert "nobody_here" in err  # trust auth: the role does not exist
    missing = sv("--json", "backup")  # the variable is not set at all
    assert "SHOP_PG_PASSWORD" in missing.json()["components"]["shop"]["error"]


def _drill_leftovers(pg: PgServer) -> tuple[list[str], list[str]]:
    import tempfile

    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        dbs = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE "
                                       "'sv\\_drill\\_%' OR datname LIKE '%\\_\\_sv\\_%'")]
    tmp = sorted(p.name for p in Path(tempfile.gettempdir()).glob("stackvault-drill-*"))
    return dbs, tmp


def test_drill_passes_reports_and_cleans_up(stack: tuple[SV, Path], pg: PgServer) -> None:
    sv, d = stack
    db = (d / "dbname").read_text()
    sv.ok("backup")
    before = _drill_leftovers(pg)
    live = pg_rows(pg, db)
    report = d / "drill.md"
    out = sv.json("drill", "--report", str(report))
    assert out["ok"] is True, out
    assert {c["component"] for c in out["components"]} == {"shop", "jobs", "config"}
    assert all(c["verified"] for c in out["components"])
    assert out["rto_seconds"] > 0 and 0 <= out["rpo_seconds"] < 600
    shop = next(c for c in out["components"] if c["component"] == "shop")
    assert "sv_drill_" in shop["target"] and db in shop["target"]
    assert _drill_leftovers(pg) == before  # scratch databases and folders are gone
    assert pg_rows(pg, db) == live  # production untouched
    assert "PASSED" in report.read_text() and "| shop (postgres) |" in report.read_text()
    history = sv.json("drills")
    assert len(history) == 1 and history[0]["ok"] is True
    assert "passed" in sv.ok("drills").text


def test_drill_of_a_damaged_snapshot_fails_clearly_and_cleans_up(
        stack: tuple[SV, Path], pg: PgServer) -> None:
    sv, d = stack
    sv.ok("backup")
    before = _drill_leftovers(pg)
    packs = sorted((d / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size
                   if p.is_file() else 0)
    biggest = packs[-1]
    data = bytearray(biggest.read_bytes())
    for i in range(100, len(data), 4096):
        data[i] ^= 0xFF
    biggest.write_bytes(bytes(data))
    res = sv("--json", "drill", "--report", str(d / "drill.html"))
    assert res.rc == 3, str(res)
    out = res.json()
    assert out["ok"] is False and out["failures"]
    assert any(not c["ok"] for c in out["components"])
    assert _drill_leftovers(pg) == before
    assert "FAILED" in (d / "drill.html").read_text()
    assert sv.json("drills")[-1]["ok"] is False


def test_drill_probes_pass_and_a_wrong_expectation_fails(stack: tuple[SV, Path],
                                                        pg: PgServer) -> None:
    sv, d = stack
    cfg = d / "stackvault.yaml"
    env_file = next((d / "conf").glob(".env"))
    probes = f"""
drill:
  targets:
    jobs: {d / "drill-jobs.db"}
  probes:
    - name: customers
      component: shop
      sql: SELECT count(*) FROM customers
      expect: 200
    - component: jobs
      sql: SELECT count(*) FROM jobs WHERE state = 'done'
      expect: "50"
    - component: config
      file: {env_file}
"""
    cfg.write_text(cfg.read_text() + probes)
    sv.ok("backup")
    out = sv.json("drill")
    assert out["ok"] is True, out
    assert [p["ok"] for p in out["probes"]] == [True, True, True]
    assert out["probes"][0]["found"] == "200"
    assert not (d / "drill-jobs.db").exists()  # the given scratch target is removed too

    cfg.write_text(cfg.read_text().replace("expect: 200", "expect: 201"))
    res = sv("--json", "drill")
    assert res.rc == 3, str(res)
    out = res.json()
    assert out["probes"][0] == {"name": "customers", "component": "shop", "ok": False,
                                "expected": "201", "found": "200", "error": None}
    assert "probe customers: expected '201', found '200'" in out["failures"]

    # a drill target that is the live store is refused before anything happens
    cfg.write_text(cfg.read_text().replace(str(d / "drill-jobs.db"), str(d / "jobs.db")))
    res = sv("drill")
    assert res.rc == 2 and "is the live store" in res.err


def test_status_for_cron_and_monitoring(stack: tuple[SV, Path], pg: PgServer) -> None:
    sv, d = stack
    cfg = d / "stackvault.yaml"
    never = sv("--json", "status")
    assert never.rc == 3 and "shop: never backed up" in never.json()["problems"]
    sv.ok("backup")
    sv.ok("drill")
    out = sv.json("status")
    assert out["ok"] is True, out
    shop = next(c for c in out["components"] if c["name"] == "shop")
    assert shop["reachable"] is True and shop["version"].startswith("PostgreSQL 15")
    assert shop["size_bytes"] > 0 and shop["last_backup_age_s"] < 300
    assert out["repository"]["snapshots"] == 1 and out["repository"]["free_bytes"] > 0
    assert out["last_drill"]["ok"] is True
    text = sv.ok("status").text
    assert "last drill" in text and "shop" in text

    # an RPO target the last backup misses, and a server that is down
    text = cfg.read_text()
    port_line = next(ln for ln in text.splitlines() if ln.strip().startswith("port:"))
    cfg.write_text(text.replace(port_line, f"    port: {free_port()}").replace(
        "    type: sqlite\n", "    type: sqlite\n    targets: {rpo: 1s}\n"))
    import time
    time.sleep(1.2)
    res = sv("--json", "status")
    assert res.rc == 3
    problems = res.json()["problems"]
    assert any(p.startswith("shop: not reachable") for p in problems), problems
    assert any(p.startswith("jobs: last backup") and "RPO target" in p for p in problems)
