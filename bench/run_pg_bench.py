"""Benchmark StackVault's postgres source against what operators run today, on a
`pgbench -i -s SCALE` database in a throwaway PostgreSQL 15 server.

Steps, each timed as wall seconds of the whole command (start-up and key derivation
included for StackVault, default Argon2id settings), median of --repeat runs:
  - `pg_dump -Fc` to a file, and `pg_dump | gzip` to a file (the peers);
  - `stackvault backup` of a stackvault.yaml with one postgres component (first backup into
    a fresh repository; later repeats are deduplicated, so only the first run is timed);
  - the same with `checksums: false` (row counts only) in a second repository;
  - 1 % of pgbench_accounts updated, then another `stackvault backup`: the stored bytes it
    adds, as a share of the first backup's stored bytes. Twice: 1 % clustered (the accounts
    with the lowest ids, like an application touching its recent rows) and then 1 %
    scattered (every 100th account, the worst case: every chunk of the dump changes);
  - restore: `createdb` + `pg_restore` of the -Fc dump into a new database, against
    `stackvault restore --to` a new database (which also verifies the fingerprint: its
    restore-only time is reported beside it).

    .venv/bin/python bench/run_pg_bench.py --scale 50 [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from support.postgres_server import DEBIAN_PG15, postgres  # noqa: E402

PASSWORD = "stackvault-bench-password"
STACKVAULT = Path(sys.executable).parent / "stackvault"


CPU: dict[str, list[float]] = {}  # step -> CPU seconds (user+sys) of the command's processes


def timed(cmd: list[str] | str, *, env: dict[str, str] | None = None, shell: bool = False,
          step: str | None = None) -> tuple[float, str]:
    """Wall seconds and stdout of a command; with `step`, also record the CPU time of the
    command and every process it waited for (pg_dump under stackvault, gzip under sh)."""
    subprocess.run(["sync"], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, shell=shell, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if step:
        CPU.setdefault(step, []).append(after.ru_utime - before.ru_utime
                                        + after.ru_stime - before.ru_stime)
    return took, proc.stdout


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sv-pgbench-"))
    results: dict[str, Any] = {"scale": args.scale, "repeat": args.repeat}
    with postgres(DEBIAN_PG15) as pg:
        conn = ["-h", pg.host, "-p", str(pg.port), "-U", "postgres"]
        bin_ = pg.bin_dir
        init_s, _ = timed([str(bin_ / "pgbench"), "-i", "-q", "-s", str(args.scale), *conn,
                           "postgres"])
        results["db_size"] = int(pg.psql("SELECT pg_database_size('postgres')"))
        results["pgbench_init_s"] = init_s

        def med(fn: Any) -> float:
            return statistics.median(fn() for _ in range(args.repeat))

        dump_fc = work / "db.dump"
        gz = work / "db.sql.gz"
        env = {**os.environ, "STACKVAULT_PASSWORD": PASSWORD}
        env.pop("STACKVAULT_KDF", None)

        def make_config(name: str, checksums: bool) -> tuple[list[str], Path]:
            cfg, repo = work / f"{name}.yaml", work / f"repo-{name}"
            shutil.rmtree(repo, ignore_errors=True)
            cfg.write_text(f"version: 1\nrepository:\n  location: {repo}\ncomponents:\n"
                           f"  pg:\n    type: postgres\n    host: {pg.host}\n"
                           f"    port: {pg.port}\n    databases: [postgres]\n"
                           f"    pg_bin_dir: {bin_}\n    checksums: {str(checksums).lower()}\n")
            sv = [str(STACKVAULT), "-c", str(cfg)]
            subprocess.run([*sv, "init"], env=env, check=True, capture_output=True)
            return sv, repo

        # Interleaved, so that both sides see the same machine: per round, pg_dump -Fc,
        # pg_dump | gzip, and StackVault's first backup into a fresh repository (with and
        # without checksums).
        runs: dict[str, list[float]] = {}
        for i in range(args.repeat):
            runs.setdefault("pg_dump_fc_s", []).append(timed(
                [str(bin_ / "pg_dump"), "-Fc", *conn, "-f", str(dump_fc), "postgres"],
                step="pg_dump_fc")[0])
            runs.setdefault("pg_dump_gzip_s", []).append(timed(
                f"{bin_ / 'pg_dump'} {' '.join(conn)} postgres | gzip > {gz}", shell=True)[0])
            fast, _ = make_config(f"counts-{i}", False)
            runs.setdefault("stackvault_backup_counts_only_s", []).append(
                timed([*fast, "--json", "backup"], env=env, step="sv_counts")[0])
            sv, repo = make_config(f"full-{i}", True)
            took, out = timed([*sv, "--json", "backup"], env=env, step="sv_full")
            runs.setdefault("stackvault_backup_s", []).append(took)
        results.update({k: statistics.median(v) for k, v in runs.items()})
        results["pg_dump_fc_bytes"] = dump_fc.stat().st_size
        results["pg_dump_gzip_bytes"] = gz.stat().st_size
        first = json.loads(out)  # the last round's repository is used from here on
        results["stackvault_first_stored"] = first["summary"]["data_added_stored"]
        results["stackvault_repo_bytes"] = tree_bytes(repo)
        results["stackvault_unchanged_backup_s"] = med(
            lambda: timed([*sv, "--json", "backup"], env=env)[0])

        n = int(pg.psql("SELECT count(*) FROM pgbench_accounts"))
        for label, where in (("clustered", f"aid <= {n // 100}"),
                             ("scattered", "aid % 100 = 0")):
            pg.psql(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE {where}")
            took, out = timed([*sv, "--json", "backup"], env=env)
            stored = json.loads(out)["summary"]["data_added_stored"]
            results[f"second_{label}_stored"] = stored
            results[f"second_{label}_share"] = stored / results["stackvault_first_stored"]
        # the peers, for comparison: each backup stores everything again
        timed([str(bin_ / "pg_dump"), "-Fc", *conn, "-f", str(dump_fc), "postgres"])
        results["pg_dump_fc_second_bytes"] = dump_fc.stat().st_size

        counter = iter(range(1000))

        def pg_restore_once() -> float:
            name = f"r_pgrestore_{next(counter)}"
            pg.psql(f"CREATE DATABASE {name} TEMPLATE template0")
            took, _ = timed([str(bin_ / "pg_restore"), *conn, "-d", name, str(dump_fc)],
                            step="pg_restore")
            pg.psql(f"DROP DATABASE {name}")
            return took

        restore_only: list[float] = []

        def sv_restore_once() -> float:
            name = f"r_sv_{next(counter)}"
            took, out = timed([*sv, "--json", "restore", "--component", "pg", "--to",
                               f"pg={name}", "--yes"], env=env, step="sv_restore")
            report = json.loads(out)
            assert report["ok"], report
            restore_only.append(report["components"][0]["seconds"])
            pg.psql(f"DROP DATABASE {name}")
            return took

        pairs = [(pg_restore_once(), sv_restore_once()) for _ in range(args.repeat)]
        results["pg_restore_s"] = statistics.median(p for p, _ in pairs)
        results["stackvault_restore_s"] = statistics.median(v for _, v in pairs)
        results["stackvault_restore_only_s"] = statistics.median(restore_only)
        took, out = timed([*sv, "--json", "drill"], env=env)
        drill = json.loads(out)
        assert drill["ok"], drill
        results["drill_s"] = took
        results["drill_rto_s"] = drill["rto_seconds"]
        results["cpu_s"] = {k: statistics.median(v) for k, v in CPU.items()}
    shutil.rmtree(work, ignore_errors=True)
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def print_report(r: dict[str, Any]) -> None:
    mib = 1 << 20

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}×"

    print(f"pgbench scale {r['scale']}: database {r['db_size'] / mib:.0f} MiB; "
          f"median of {r['repeat']} runs where repeated\n")
    print("| step | peer | StackVault | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| backup vs `pg_dump -Fc` | {r['pg_dump_fc_s']:.2f} s | "
          f"{r['stackvault_backup_s']:.2f} s | "
          f"{ratio(r['stackvault_backup_s'], r['pg_dump_fc_s'])} | ≤1.2× |")
    print(f"| backup vs `pg_dump \\| gzip` | {r['pg_dump_gzip_s']:.2f} s | "
          f"{r['stackvault_backup_s']:.2f} s | "
          f"{ratio(r['stackvault_backup_s'], r['pg_dump_gzip_s'])} | (info) |")
    print(f"| stored by the first backup | {r['pg_dump_fc_bytes'] / mib:.1f} MiB (-Fc) | "
          f"{r['stackvault_first_stored'] / mib:.1f} MiB | "
          f"{ratio(r['stackvault_first_stored'], r['pg_dump_fc_bytes'])} | (info) |")
    print(f"| backup with `checksums: false` vs `pg_dump -Fc` | {r['pg_dump_fc_s']:.2f} s | "
          f"{r['stackvault_backup_counts_only_s']:.2f} s | "
          f"{ratio(r['stackvault_backup_counts_only_s'], r['pg_dump_fc_s'])} | (info) |")
    for label in ("clustered", "scattered"):
        print(f"| stored by the next backup, 1 % rows updated, {label} | "
              f"{r['pg_dump_fc_second_bytes'] / mib:.1f} MiB (-Fc, again) | "
              f"{r[f'second_{label}_stored'] / mib:.2f} MiB | "
              f"{r[f'second_{label}_share'] * 100:.1f} % of the first | <5 % |")
    print(f"| restore vs `pg_restore` of -Fc | {r['pg_restore_s']:.2f} s | "
          f"{r['stackvault_restore_s']:.2f} s | "
          f"{ratio(r['stackvault_restore_s'], r['pg_restore_s'])} | ≤1.2× |")
    print(f"| restore without the verification | {r['pg_restore_s']:.2f} s | "
          f"{r['stackvault_restore_only_s']:.2f} s | "
          f"{ratio(r['stackvault_restore_only_s'], r['pg_restore_s'])} | (info) |")
    print(f"| unchanged backup | — | {r['stackvault_unchanged_backup_s']:.2f} s | | (info) |")
    print(f"| restore drill (into a scratch database, verified, dropped) | — | "
          f"{r['drill_s']:.2f} s (RTO {r['drill_rto_s']:.2f} s) | | (info) |")
    cpu = r["cpu_s"]
    print("\nCPU seconds (user+sys) of the client processes (the server's are not counted):")
    print(f"pg_dump -Fc {cpu['pg_dump_fc']:.2f}; StackVault backup with checksums "
          f"{cpu['sv_full']:.2f}, counts only {cpu['sv_counts']:.2f} (pg_dump -Z0 included); "
          f"pg_restore {cpu['pg_restore']:.2f}; StackVault restore {cpu['sv_restore']:.2f} "
          "(pg_restore included)")


if __name__ == "__main__":
    raise SystemExit(main())
