"""How long `stackvault integrity check` takes for N chunk rows in PostgreSQL against N
vectors in ChromaDB (a PersistentClient folder), with about 200 orphan vectors planted
(100 extra vectors, and every 10007th row left out).

    .venv/bin/python bench/run_integrity_bench.py --rows 1000000

Setup (not timed): a throwaway PostgreSQL 15 with `chunks(id)`, a ChromaDB folder with one
4-dimensional embedding per chunk. Timed: the whole CLI command, start-up included; the
finding counts are checked so a fast wrong answer cannot pass.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from support.postgres_server import DEBIAN_PG15, postgres  # noqa: E402

STACKVAULT = Path(sys.executable).parent / "stackvault"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    n = args.rows
    work = Path(tempfile.mkdtemp(prefix="sv-integrity-bench-"))
    try:
        with postgres(DEBIAN_PG15) as pg:
            pg.psql("CREATE TABLE chunks (id bigint PRIMARY KEY)")
            # every 10007th chunk row is left out: its vector is an orphan
            pg.psql(f"INSERT INTO chunks SELECT g FROM generate_series(1, {n}) g "
                    "WHERE g % 10007 <> 0")
            import chromadb

            t0 = time.perf_counter()
            client = chromadb.PersistentClient(path=str(work / "chroma"))
            col = client.create_collection("chunks", embedding_function=None)
            rng = np.random.default_rng(1)
            ids = [str(i) for i in range(1, n + 1)] + [str(n + k) for k in range(1, 101)]
            for s in range(0, len(ids), 5000):
                batch = ids[s:s + 5000]
                col.add(ids=batch, embeddings=rng.random((len(batch), 4), dtype=np.float32))
            load_s = time.perf_counter() - t0
            del client, col
            skipped = n // 10007
            cfg = work / "stackvault.yaml"
            cfg.write_text(f"""version: 1
repository: {{location: {work / "repo"}}}
components:
  db: {{type: postgres, host: {pg.host}, port: {pg.port}, databases: [postgres],
       pg_bin_dir: {pg.bin_dir}}}
  vectors: {{type: chroma, path: {work / "chroma"}}}
integrity:
  rules:
    - name: every chunk has a vector
      type: references
      source: {{component: db, sql: "SELECT id FROM chunks"}}
      target: {{component: vectors, collection: chunks}}
""")
            env = {**os.environ, "STACKVAULT_PASSWORD": "x"}
            t0 = time.perf_counter()
            proc = subprocess.run([str(STACKVAULT), "-c", str(cfg), "--json", "integrity",
                                   "check"], capture_output=True, text=True, env=env)
            took = time.perf_counter() - t0
            report = json.loads(proc.stdout)
            counts = report["rules"][0]["counts"]
            # orphans: the vectors of the rows left out and the 100 extra vectors
            assert counts.get("orphan") == skipped + 100, counts
            assert counts.get("missing", 0) == 0, counts
            print(f"{n} rows vs {n + 100} vectors: integrity check {took:.1f}s "
                  f"(exit {proc.returncode}; {counts}); vector load (setup) {load_s:.0f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
