"""Load benchmark of `stackvault serve`: clients polling the API while a backup runs.

    .venv/bin/python bench/run_serve_load.py [--target-seconds 60 | --size-gib N]
        [--clients 50] [--intervals 0.1,0] [--repeat 1] [--json out.json]

The requirement: 50 concurrent clients polling status and snapshots while a backup runs for
about a minute, on loopback; no errors, p99 latency reported, and the backup's speed within
10 % of a run without load.

Setup (in a temporary folder, removed at the end unless --keep):
  - a stackvault.yaml with two `files` components: `data`, a folder of incompressible 64 MiB
    files (numpy's seeded generator), and `notes`, a few small files. The size of `data` is
    calibrated so one backup into a fresh repository takes about --target-seconds here: 2 GiB
    are generated and backed up twice with the CLI first (the second counts), and the rest is
    sized from the backup's own rate (a short sample can underestimate a long backup's rate;
    --size-gib skips the calibration). The repository password is in a file named in the
    config (default Argon2id settings; STACKVAULT_KDF is removed from the environment);
  - a template repository with --history stack snapshots of `notes` only, so the snapshots
    route answers a realistic list. Every run starts from a fresh copy of it: it holds none of
    `data`'s chunks, so every run's backup of `data` stores everything.

Before the first round, one unmeasured backup of `data` (the CLI, into a scratch repository)
settles the disk and the page cache after the data set was written (--no-warmup skips it).
Each run: the fresh repository, a fresh state folder and token, `stackvault serve --listen
127.0.0.1:PORT --refresh 2` (stopped by PID afterwards), then `POST /api/v1/tasks {"kind":
"backup", "components": ["data"]}` and the driver polls the task once a second until it ends.
  - run A (baseline): nothing else;
  - load runs, one per --intervals value: a load generator process (this script with
    `_loadgen`: asyncio, one keep-alive connection per client, a minimal HTTP/1.1 client or
    with --client httpx one httpx.AsyncClient per client) starts first;
    every client alternates GET /api/v1/status and GET /api/v1/snapshots. With an interval,
    a client polls on a fixed cadence (one request every INTERVAL s, the next one at once if
    an answer came late; a random phase per client); with 0 it sends the next request as soon
    as the answer arrives (saturation). The backup starts when every client has had its first
    answer; the load stops when the backup has ended, or after --timeout.

Measured: every request's latency and status (a non-200 answer or an exception is an error;
requests are counted while the backup task runs, errors over the whole load period), the
task's seconds (the runner process: start-up, key derivation and backup) and bytes read,
CPU seconds of the server process, of the backup process (the server's reaped children) and
of the load generator, the whole machine's busy share (/proc/stat: user, nice, system, irq
and softirq; iowait counts as idle, steal is recorded apart) and the rest of it (`rest`: the
kernel's writeback threads, other users' processes), and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
STACKVAULT = Path(sys.executable).parent / "stackvault"
PASSWORD = "stackvault-bench-password"
MB = 1_000_000
MIB = 1 << 20
FILE_BYTES = 64 * MIB
HOST = "127.0.0.1"  # loopback only
PATHS = ("/api/v1/status", "/api/v1/snapshots")
TOKEN_ENV = "SV_BENCH_TOKEN"
CLK = os.sysconf("SC_CLK_TCK")


# --- data and stack ---------------------------------------------------------------------------


def write_blobs(folder: Path, first: int, count: int, seed: int) -> None:
    """Incompressible files blob-NNNNN.bin of FILE_BYTES; file i depends only on (seed, i)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import numpy as np
    except ImportError:
        np = None
    for i in range(first, first + count):
        data = (np.random.default_rng([seed, i]).bytes(FILE_BYTES) if np is not None
                else random.Random(seed * 1_000_003 + i).randbytes(FILE_BYTES))
        (folder / f"blob-{i:05d}.bin").write_bytes(data)


def sv_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKVAULT_")}
    env["STACKVAULT_AUDIT_LOG"] = str(work / "audit.jsonl")
    return env


def sv(cfg: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    """Run `stackvault -c CFG ARGS`; wall seconds and stdout."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(STACKVAULT), "-c", str(cfg), *args], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"stackvault {' '.join(args)} failed ({proc.returncode}): "
                         f"{proc.stderr[-2000:]}")
    return took, proc.stdout


class Stack:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.data, self.notes = work / "data", work / "notes"
        self.repo, self.template = work / "repo", work / "repo-template"
        self.cfg = work / "stackvault.yaml"
        self.env = sv_env(work)
        pw = work / "repository-password"
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)
        self.cfg.write_text(
            f"version: 1\nrepository:\n  location: {self.repo}\n  password_file: {pw}\n"
            f"components:\n  data:\n    type: files\n    paths: [{self.data}]\n"
            f"  notes:\n    type: files\n    paths: [{self.notes}]\n")

    def fresh_repo(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        if self.template.exists():
            shutil.copytree(self.template, self.repo, symlinks=True)
        else:
            sv(self.cfg, self.env, "init")


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> dict[str, float]:
    """utime+stime of the process itself, and cutime+cstime of its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ut, st, cut, cst = (int(x) / CLK for x in fields[11:15])
    return {"self": ut + st, "children": cut + cst}


def machine_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs since boot; iowait counts as idle."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + steal + idle + iowait


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_pid(proc: subprocess.Popen[Any], grace: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def api(url: str, token: str, method: str, path: str, body: Any = None,
        timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Server:
    """`stackvault serve` on 127.0.0.1, stopped by PID."""

    def __init__(self, stack: Stack, state: Path, refresh: float) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = state.parent / f"{state.name}-serve.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(STACKVAULT), "-c", str(stack.cfg), "serve", "--listen",
                 f"{HOST}:{self.port}", "--refresh", str(refresh), "--state-dir", str(state)],
                env=stack.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"stackvault serve did not come up: "
                                 f"{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        stop_pid(self.proc)


# --- load generator (its own process) -----------------------------------------------------------


class RawClient:
    """A minimal HTTP/1.1 keep-alive GET client on asyncio streams (one connection). It costs
    the load generator far less CPU per request than httpx, and the CPU it does not use is
    left to the server and the backup on a small machine."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.timeout = host, int(port), timeout
        self.head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        async with asyncio.timeout(self.timeout):
            if self.conn is None:
                self.conn = await asyncio.open_connection(self.host, self.port)
            reader, writer = self.conn
            try:
                writer.write(f"GET {path} HTTP/1.1\r\n{self.head}".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                code = int(lines[0].split()[1])
                length, close = None, False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and b"close" in value.lower():
                        close = True
                if length is None:
                    raise ValueError("an answer without Content-Length")
                body = await reader.readexactly(length)
            except BaseException:
                await self.aclose()
                raise
            if close:
                await self.aclose()
            return code, body

    async def aclose(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None


class HttpxClient:
    """httpx.AsyncClient with one connection."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        import httpx

        self.c = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))

    async def get(self, path: str) -> tuple[int, bytes]:
        r = await self.c.get(path)
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self.c.aclose()


async def _loadgen(url: str, token: str, clients: int, interval: float, hard_limit: float,
                   seed: int, kind: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.call_later(hard_limit, stop.set)
    starts: list[float] = []
    lats: list[float] = []
    codes: list[int] = []
    paths: list[int] = []
    errors: dict[str, int] = {}
    answered = [0]
    all_answered = asyncio.Event()
    rng = random.Random(seed)
    make = RawClient if kind == "raw" else HttpxClient

    def error(key: str) -> None:
        errors[key] = errors.get(key, 0) + 1

    async def client(i: int, phase: float) -> None:
        c = make(url, token, 30)
        try:
            await asyncio.sleep(phase)
            k, first = i % 2, True
            due = loop.time()
            while not stop.is_set():
                path = PATHS[k]
                t_wall, t0 = time.time(), time.perf_counter()
                try:
                    code, body = await c.get(path)
                    if code != 200:
                        error(f"HTTP {code} {path}: {body[:200]!r}")
                    elif not body.startswith(b"{"):
                        code = -2
                        error(f"not JSON {path}: {body[:200]!r}")
                except Exception as exc:  # noqa: BLE001 - every failure is counted
                    code = -1
                    error(f"{type(exc).__name__} {path}: {str(exc)[:200]}")
                lats.append(time.perf_counter() - t0)
                starts.append(t_wall)
                codes.append(code)
                paths.append(k)
                k ^= 1
                if first:
                    first = False
                    answered[0] += 1
                    if answered[0] == clients:
                        all_answered.set()
                if interval > 0:
                    due += interval
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        due = loop.time()  # late: poll now, no burst to catch up
        finally:
            await c.aclose()

    tasks = [asyncio.create_task(client(i, rng.random() * interval)) for i in range(clients)]
    waiter = asyncio.create_task(all_answered.wait())
    await asyncio.wait([waiter, asyncio.create_task(stop.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    print("ready" if all_answered.is_set() else "stopped", flush=True)
    await stop.wait()
    done, pending = await asyncio.wait(tasks, timeout=10)
    for t in pending:
        t.cancel()
    failed = [repr(t.exception()) for t in done if not t.cancelled() and t.exception()]
    ru = os.times()
    return {"starts": starts, "lats": lats, "codes": codes, "paths": paths, "errors": errors,
            "cancelled_at_stop": len(pending), "client_crashes": failed,
            "cpu_s": ru.user + ru.system}


def loadgen_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="run_serve_load.py _loadgen")
    ap.add_argument("--url", required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--interval", type=float, required=True)
    ap.add_argument("--hard-limit", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if not a.url.startswith(f"http://{HOST}:"):
        ap.error("loopback only")
    out = asyncio.run(_loadgen(a.url, os.environ[TOKEN_ENV], a.clients, a.interval,
                               a.hard_limit, a.seed, a.client))
    a.out.write_text(json.dumps(out))
    return 0


# --- one run --------------------------------------------------------------------------------------


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def iso_ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def run_once(stack: Stack, label: str, interval: float | None, args: argparse.Namespace,
             ) -> dict[str, Any]:
    """One backup through the API; with `interval`, under load (0: no sleep)."""
    stack.fresh_repo()
    name = label.replace(" ", "-")
    state = stack.work / f"state-{name}"
    shutil.rmtree(state, ignore_errors=True)
    _, out = sv(stack.cfg, stack.env, "--json", "token", "create", "--name", "bench",
                "--scope", "operate", "--state-dir", str(state))
    token = json.loads(out)["token"]
    subprocess.run(["sync"], check=True)
    server = Server(stack, state, args.refresh)
    load: subprocess.Popen[str] | None = None
    r: dict[str, Any] = {"label": label, "interval": interval,
                         "clients": args.clients if interval is not None else 0}
    runner_pid: int | None = None
    try:
        cpu0, jif0, t0 = proc_cpu(server.proc.pid), machine_jiffies(), time.time()
        if interval is not None:
            load_out = stack.work / f"{name}-load.json"
            load = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "_loadgen", "--url", server.url,
                 "--clients", str(args.clients), "--interval", str(interval),
                 "--hard-limit", str(args.timeout + 60), "--seed", str(args.seed),
                 "--client", args.client, "--out", str(load_out)],
                env={**os.environ, TOKEN_ENV: token}, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, text=True)
            assert load.stdout is not None
            if load.stdout.readline().strip() != "ready":
                raise SystemExit(f"{label}: the load generator did not get going")
        code, task = api(server.url, token, "POST", "/api/v1/tasks",
                         {"kind": "backup", "components": ["data"]})
        if code != 202:
            raise SystemExit(f"{label}: POST /api/v1/tasks answered {code}: {task}")
        deadline = time.monotonic() + args.timeout
        while True:
            time.sleep(1)
            code, task = api(server.url, token, "GET", f"/api/v1/tasks/{task['id']}")
            if code != 200:
                raise SystemExit(f"{label}: GET task answered {code}: {task}")
            runner_pid = task.get("pid") or runner_pid
            if task["status"] in ("succeeded", "failed"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: the backup did not finish within {args.timeout} s")
        if load is not None:
            stop_pid(load, grace=60)
        for _ in range(100):  # until the server has reaped the runner (its CPU time)
            if not runner_pid or not Path(f"/proc/{runner_pid}").exists():
                break
            time.sleep(0.1)
        cpu1, jif1, t1 = proc_cpu(server.proc.pid), machine_jiffies(), time.time()
    finally:
        if load is not None:
            stop_pid(load)
        server.stop()
        if pid_alive(runner_pid):  # only after a timeout: the task outlives the server
            os.kill(runner_pid, signal.SIGTERM)
    if task["status"] != "succeeded":
        raise SystemExit(f"{label}: the backup task failed: {task.get('error')}")
    summary = task["result"]["summary"]
    r.update({"task_s": task["seconds"], "backup_s": summary["duration_s"],
              "bytes_read": summary["bytes_read"], "stored": summary["data_added_stored"],
              "mb_s": summary["bytes_read"] / MB / task["seconds"],
              "server_cpu_s": cpu1["self"] - cpu0["self"],
              "backup_cpu_s": cpu1["children"] - cpu0["children"],
              "wall_s": t1 - t0,
              "machine_busy": (jif1[0] - jif0[0]) / max(1, jif1[2] - jif0[2]),
              "machine_steal": (jif1[1] - jif0[1]) / max(1, jif1[2] - jif0[2]),
              "machine_busy_cpu_s": (jif1[0] - jif0[0]) / CLK,
              "loadavg_end": os.getloadavg()})
    if load is not None:
        lg = json.loads(load_out.read_text())
        lo, hi = iso_ts(task["started"]), iso_ts(task["finished"])
        inside = [(lat, c, k) for s, lat, c, k in zip(lg["starts"], lg["lats"], lg["codes"],
                                                        lg["paths"], strict=True)
                  if lo <= s <= hi]
        lat_ms = sorted(lat * 1000 for lat, _, _ in inside)
        r["per_path"] = {}
        for k, path in enumerate(PATHS):
            mine = sorted(lat * 1000 for lat, _, kk in inside if kk == k)
            r["per_path"][path] = {"requests": len(mine), "p50_ms": pct(mine, 0.5),
                                   "p99_ms": pct(mine, 0.99)}
        r.update({"requests": len(inside), "requests_total": len(lg["codes"]),
                  "errors": sum(1 for _, c, _ in inside if c != 200),
                  "errors_total": sum(1 for c in lg["codes"] if c != 200),
                  "error_kinds": lg["errors"], "cancelled_at_stop": lg["cancelled_at_stop"],
                  "client_crashes": lg["client_crashes"],
                  "req_s": len(inside) / (hi - lo), "p50_ms": pct(lat_ms, 0.50),
                  "p95_ms": pct(lat_ms, 0.95), "p99_ms": pct(lat_ms, 0.99),
                  "max_ms": lat_ms[-1] if lat_ms else float("nan"),
                  "loadgen_cpu_s": lg["cpu_s"]})
        load_out.unlink()
    ours = r["server_cpu_s"] + r["backup_cpu_s"] + r.get("loadgen_cpu_s", 0.0)
    r["other_cpu_s"] = max(0.0, r["machine_busy_cpu_s"] - ours)
    print(f"{label}: backup {r['task_s']:.1f} s ({r['mb_s']:.0f} MB/s)"
          + (f", {r['requests']} requests, {r['errors_total']} errors, p99 "
             f"{r['p99_ms']:.1f} ms" if load is not None else ""), file=sys.stderr)
    return r


# --- main -----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """run_stack_bench's machine facts, plus the versions of the HTTP stack."""
    from importlib.metadata import PackageNotFoundError, version

    from run_stack_bench import machine as stack_machine

    facts = stack_machine()
    facts["versions"] = {}
    for dist in ("fastapi", "uvicorn", "httpx", "uvloop", "httptools"):
        try:
            facts["versions"][dist] = version(dist)
        except PackageNotFoundError:
            facts["versions"][dist] = None
    return facts


def report(res: dict[str, Any]) -> list[str]:
    m = res["machine"]
    calib = (f"sized from a calibration backup at {res['calibration_mb_s']:.0f} MB/s"
             if "calibration_mb_s" in res else "size given")
    lines = [f"Run {m['date']}: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
             f"StackVault {m['commit']}; load average at start {m['load_start'][0]:.2f}, at "
             f"end {m['load_end'][0]:.2f}. Data: {res['size_bytes'] / (1 << 30):.2f} GiB "
             f"incompressible in {res['files']} files ({calib}); repository with "
             f"{res['history']} earlier snapshots; `--refresh {res['refresh']}`; load "
             f"generator client: {res['client']}; "
             + (f"an unmeasured warm-up backup took {res['warmup_s']:.1f} s."
                if "warmup_s" in res else "no warm-up backup."), "",
             "| run | clients | poll | backup s | MB/s | time vs A | requests | errors | req/s "
             "| p50 ms | p95 ms | p99 ms | max ms | CPU s: backup / server / clients / rest | "
             "machine busy |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for rnd in res["rounds"]:
        base = rnd[0]
        for r in rnd:
            poll = ("—" if r["interval"] is None else "no sleep" if r["interval"] == 0
                    else f"{r['interval'] * 1000:.0f} ms")
            ratio = "" if r is base else f"{r['task_s'] / base['task_s']:.3f}×"
            if r["interval"] is None:
                load = "| | | | | | | |"
                cpu = (f"{r['backup_cpu_s']:.1f} / {r['server_cpu_s']:.1f} / — / "
                       f"{r['other_cpu_s']:.1f}")
            else:
                rate = f"{r['req_s']:.0f}" + (f" (of {r['clients'] / r['interval']:.0f})"
                                               if r["interval"] else "")
                load = (f"| {r['requests']:,} | {r['errors_total']} | {rate} | "
                        f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
                        f"{r['max_ms']:.0f} |")
                cpu = (f"{r['backup_cpu_s']:.1f} / {r['server_cpu_s']:.1f} / "
                       f"{r['loadgen_cpu_s']:.1f} / {r['other_cpu_s']:.1f}")
            lines.append(f"| {r['label']} | {r['clients']} | {poll} | {r['task_s']:.1f} | "
                         f"{r['mb_s']:.0f} | {ratio} {load} {cpu} | "
                         f"{r['machine_busy'] * 100:.0f} % |")
    lines += ["", "Backup s: the task's seconds (runner start-up, key derivation, backup); MB/s: "
              "bytes read / those seconds. Requests and latencies: those sent while the "
              "backup task ran; errors: over the whole load period. CPU s over the run: the "
              "backup process, `stackvault serve`, the load generator, and the rest of the "
              "machine (kernel writeback, other users); machine busy: share of all CPUs.",
              "", "| target | result |", "|---|---|"]
    rounds = res["rounds"]
    n = len(rounds)
    base_s = statistics.median(rnd[0]["task_s"] for rnd in rounds)
    for j in range(1, len(rounds[0])):
        runs = [rnd[j] for rnd in rounds]
        name = runs[0]["label"].split()[0]
        errors = sum(r["errors_total"] for r in runs)
        q = statistics.median(r["task_s"] for r in runs) / base_s
        each = (f" (median of {n}; per round " + ", ".join(
            f"{r['task_s'] / rnd[0]['task_s']:.3f}×" for r, rnd in zip(runs, rounds,
                                                                        strict=True)) + ")"
            if n > 1 else "")
        p99 = statistics.median(r["p99_ms"] for r in runs)
        lines.append(f"| {name}: no errors | {errors} errors "
                     f"{'met' if errors == 0 else 'MISSED'} |")
        lines.append(f"| {name}: backup time ≤ 1.10× run A | {q:.3f}×{each} "
                     f"{'met' if q <= 1.10 else 'MISSED'} |")
        lines.append(f"| {name}: p99 latency (reported) | {p99:.1f} ms"
                     f"{f' (median of {n})' if n > 1 else ''} |")
    lines += ["", "Per route, p50 / p99 ms: " + "; ".join(
        f"{r['label']} " + ", ".join(f"{path.rsplit('/', 1)[1]} {v['p50_ms']:.1f} / "
                                     f"{v['p99_ms']:.1f}" for path, v in r["per_path"].items())
        for rnd in res["rounds"] for r in rnd if "per_path" in r) + "."]
    for rnd in res["rounds"]:
        for r in rnd:
            if r.get("error_kinds"):
                lines.append(f"\n{r['label']} errors: " + "; ".join(
                    f"{n}× {k}" for k, n in r["error_kinds"].items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_loadgen"]:
        return loadgen_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-seconds", type=float, default=60,
                    help="size the data so one backup takes about this long (calibrated)")
    ap.add_argument("--size-gib", type=float, default=None,
                    help="data size in GiB instead of calibrating (64 MiB files)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--intervals", default="0.1,0",
                    help="one load run per value: seconds between a client's polls (0: none)")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="the load generator's HTTP client: a minimal asyncio HTTP/1.1 one "
                    "(light on CPU) or httpx.AsyncClient")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of: A, then the load runs")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="skip the unmeasured backup before the first round")
    ap.add_argument("--history", type=int, default=20,
                    help="earlier (small) snapshots in every fresh repository")
    ap.add_argument("--refresh", type=float, default=2.0, help="serve --refresh")
    ap.add_argument("--timeout", type=float, default=900,
                    help="longest a backup may run before the benchmark gives up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where the temporary folder (data set, repository, state) goes; it "
                    "needs about twice the data size free (default: the system temp folder)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary folder (with the data set) at the end")
    ap.add_argument("--json", type=Path, help="every figure and the machine facts")
    args = ap.parse_args(argv)
    intervals = [float(x) for x in args.intervals.split(",") if x.strip()]
    if any(x < 0 for x in intervals) or args.clients < 1:
        ap.error("intervals must be >= 0 and clients >= 1")
    if args.client == "httpx":
        try:
            import httpx  # noqa: F401
        except ImportError:
            ap.error("--client httpx needs httpx: .venv/bin/pip install -e '.[test]'")
    work = Path(tempfile.mkdtemp(prefix="sv-serveload-", dir=args.work_dir))
    res: dict[str, Any] = {"machine": machine(), "clients": args.clients,
                           "intervals": intervals, "history": args.history,
                           "refresh": args.refresh, "client": args.client, "rounds": []}
    try:
        stack = Stack(work)
        stack.notes.mkdir()
        (stack.notes / "README.txt").write_text("notes\n")
        if args.size_gib is not None:
            n_files = max(1, round(args.size_gib * (1 << 30) / FILE_BYTES))
            write_blobs(stack.data, 0, n_files, args.seed)
        else:
            calib = (2 << 30) // FILE_BYTES
            write_blobs(stack.data, 0, calib, args.seed)
            # Twice, each into a fresh repository; the second counts (the first one after
            # writing the data is slow). The backup's own rate: start-up and key derivation
            # are a fixed cost on top.
            for _ in range(2):
                stack.fresh_repo()
                subprocess.run(["sync"], check=True)
                took, out = sv(stack.cfg, stack.env, "--json", "backup", "--component", "data")
                shutil.rmtree(stack.repo)
            summary = json.loads(out)["summary"]
            rate = summary["bytes_read"] / summary["duration_s"]
            overhead = max(0.0, took - summary["duration_s"])
            res["calibration_mb_s"] = rate / MB
            n_files = max(calib, round(rate * (args.target_seconds - overhead) / FILE_BYTES))
            print(f"calibration: {rate / MB:.0f} MB/s -> {n_files} files of 64 MiB "
                  f"({n_files * FILE_BYTES / (1 << 30):.1f} GiB)", file=sys.stderr)
            write_blobs(stack.data, calib, n_files - calib, args.seed)
        res["files"], res["size_bytes"] = n_files, n_files * FILE_BYTES
        stack.fresh_repo()
        for i in range(args.history):
            (stack.notes / "log.txt").write_text(f"entry {i}\n")
            sv(stack.cfg, stack.env, "--json", "backup", "--component", "notes")
        stack.repo.rename(stack.template)
        if args.warmup:
            # One unmeasured backup first, so that run A of the first round does not find the
            # disk and the page cache just after the data set was written.
            stack.fresh_repo()
            subprocess.run(["sync"], check=True)
            took, _ = sv(stack.cfg, stack.env, "--json", "backup", "--component", "data")
            res["warmup_s"] = took
            print(f"warm-up backup: {took:.1f} s", file=sys.stderr)
            shutil.rmtree(stack.repo)
        for rnd in range(args.repeat):
            suffix = f" r{rnd + 1}" if args.repeat > 1 else ""
            runs = [run_once(stack, f"A{suffix}", None, args)]
            for j, interval in enumerate(intervals):
                runs.append(run_once(stack, f"{chr(ord('B') + j)}{suffix}", interval, args))
            res["rounds"].append(runs)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    res["machine"]["load_end"] = os.getloadavg()
    print("\n".join(report(res)))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
