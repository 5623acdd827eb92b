"""Benchmark restic, borg and stackvault on one reference data set, each in a fresh repository.

Per tool, in order: init, first backup, unchanged backup, a stream through stdin (once, then the
same stream again: the "all-duplicate stream" step), 1 % of the rows mutated then backup, and a
restore of the latest folder snapshot that must be byte-identical to the source. Each step
records wall seconds, the child's own peak RSS (``os.wait4``) and the repository size on disk.

    .venv/bin/python bench/run_repo_bench.py --size-mb 1024 [--tools restic,borg,stackvault]

See bench/README.md for what each step means and the targets.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dataset

BENCH_DIR = Path(__file__).resolve().parent
MEASURE_CHILD = BENCH_DIR / "measure_child.py"
REPO_ROOT = BENCH_DIR.parent
PASSWORD = "stackvault-bench-password"
# borg 1.2 defaults to lz4; restic 0.14's default ("auto") is zstd at SpeedDefault (about zstd
# level 3). zstd,3 makes both competitors compress the same way (see bench/README.md).
BORG_COMPRESSION = "zstd,3"
ALL_TOOLS = ("restic", "borg", "stackvault")
BASELINE = "restic"
STREAM_NAME = "stream.bin"

# (step id, label in the table); the order is the order they run in.
STEPS: list[tuple[str, str]] = [
    ("init", "init (not a target)"),
    ("first_backup", "first backup"),
    ("unchanged_backup", "unchanged backup"),
    ("stream_first", "stdin stream, first"),
    ("stream_duplicate", "stdin stream, all-duplicate"),
    ("mutated_backup", "backup after 1 % rows mutated"),
    ("restore", "restore latest (then verified, untimed)"),
]
# (label, what is compared, step id or "max_rss"/"final_repo", limit as a ratio to restic)
TARGETS: list[tuple[str, str, str, float]] = [
    ("first backup time", "seconds", "first_backup", 0.6),
    ("repository size (after last backup)", "repo", "final_repo", 1.0),
    ("all-duplicate stream time", "seconds", "stream_duplicate", 0.4),
    ("restore time", "seconds", "restore", 0.4),
    ("unchanged backup time", "seconds", "unchanged_backup", 1.0),
    ("peak RSS (max over timed steps)", "rss", "max_rss", 1.5),
]


class StepFailed(Exception):
    """A tool's step exited non-zero, timed out or could not start."""

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(summary)
        self.summary = summary
        self.detail = detail


@dataclass
class StepResult:
    step: str
    command: list[str]
    seconds: float
    peak_rss_kib: int
    cpu_user_s: float
    cpu_sys_s: float
    exit_code: int
    repo_bytes: int | None = None


@dataclass
class ToolResult:
    tool: str
    version: str = ""
    settings: dict[str, object] = field(default_factory=dict)
    steps: dict[str, StepResult] = field(default_factory=dict)
    error: str | None = None
    error_detail: str = ""
    verified: bool | None = None
    verify_problems: list[str] = field(default_factory=list)
    mutation: dict[str, object] = field(default_factory=dict)
    source_digest: str = ""
    cache_bytes: int = 0


# --------------------------------------------------------------------------------------------
# Tools: each one knows its environment and the command line of every step.


class Tool:
    name = ""

    def __init__(self, tool_dir: Path) -> None:
        self.dir = tool_dir
        self.repo = tool_dir / "repo"
        self.cache = tool_dir / "cache"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RESTIC_", "BORG_", "STACKVAULT_"))
        }
        env["XDG_CACHE_HOME"] = str(self.cache)
        return env

    def available(self) -> str | None:
        """None if the tool can run, else why not."""
        return None

    def version(self) -> str:
        return ""

    def settings(self) -> dict[str, object]:
        return {}

    def init_cmd(self) -> list[str]:
        raise NotImplementedError

    def backup_cmd(self, path: Path, label: str) -> list[str]:
        raise NotImplementedError

    def stdin_cmd(self, label: str) -> list[str]:
        raise NotImplementedError

    def restore_cmd(self, target: Path, source: Path, label: str) -> tuple[list[str], Path | None]:
        """Command and working directory restoring the latest folder snapshot into target."""
        raise NotImplementedError


class Restic(Tool):
    name = "restic"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["RESTIC_REPOSITORY"] = str(self.repo)
        env["RESTIC_PASSWORD"] = PASSWORD
        env["RESTIC_CACHE_DIR"] = str(self.cache)
        return env

    def available(self) -> str | None:
        return None if shutil.which("restic") else "restic not found on PATH"

    def version(self) -> str:
        return command_output(["restic", "version"])

    def settings(self) -> dict[str, object]:
        # Known only after init: the repository format version restic chose.
        try:
            config = json.loads(command_output(["restic", "cat", "config"], env=self.env()))
            repo_version: object = config.get("version")
        except (ValueError, OSError):
            repo_version = "unknown"
        return {
            "repository_version": repo_version,
            "compression": "auto (default: zstd SpeedDefault, about level 3)",
        }

    def init_cmd(self) -> list[str]:
        return ["restic", "init"]

    def backup_cmd(self, path: Path, label: str) -> list[str]:
        return ["restic", "backup", str(path)]

    def stdin_cmd(self, label: str) -> list[str]:
        return ["restic", "backup", "--stdin", "--stdin-filename", STREAM_NAME]

    def restore_cmd(self, target: Path, source: Path, label: str) -> tuple[list[str], Path | None]:
        # --path keeps "latest" on the folder snapshots even if a stream snapshot came later.
        cmd = ["restic", "restore", "latest", "--target", str(target), "--path", str(source)]
        return cmd, None


class Borg(Tool):
    name = "borg"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["BORG_PASSPHRASE"] = PASSWORD
        env["BORG_BASE_DIR"] = str(self.cache)
        return env

    def available(self) -> str | None:
        return None if shutil.which("borg") else "borg not found on PATH"

    def version(self) -> str:
        return command_output(["borg", "--version"])

    def settings(self) -> dict[str, object]:
        return {"encryption": "repokey-blake2", "compression": BORG_COMPRESSION}

    def init_cmd(self) -> list[str]:
        return ["borg", "init", "--encryption", "repokey-blake2", str(self.repo)]

    def backup_cmd(self, path: Path, label: str) -> list[str]:
        return [
            "borg",
            "create",
            "--compression",
            BORG_COMPRESSION,
            f"{self.repo}::{label}",
            str(path),
        ]

    def stdin_cmd(self, label: str) -> list[str]:
        return [
            "borg", "create", "--compression", BORG_COMPRESSION,
            "--stdin-name", STREAM_NAME, f"{self.repo}::{label}", "-",
        ]  # fmt: skip

    def restore_cmd(self, target: Path, source: Path, label: str) -> tuple[list[str], Path | None]:
        # borg extract writes into the working directory; "latest" is the archive we just made.
        return ["borg", "extract", f"{self.repo}::{label}"], target


class StackVault(Tool):
    name = "stackvault"

    def __init__(self, tool_dir: Path) -> None:
        super().__init__(tool_dir)
        script = Path(sys.executable).parent / "stackvault"
        self.base = (
            [str(script)] if script.exists() else [sys.executable, "-m", "stackvault.cli.main"]
        )

    def env(self) -> dict[str, str]:
        env = super().env()
        env["STACKVAULT_REPOSITORY"] = str(self.repo)
        env["STACKVAULT_PASSWORD"] = PASSWORD
        return env

    def version(self) -> str:
        try:
            version = importlib.metadata.version("stackvault")
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        commit = command_output(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
        dirty = command_output(["git", "-C", str(REPO_ROOT), "status", "--porcelain"])
        return f"stackvault {version} ({commit or 'no commit'}{', dirty tree' if dirty else ''})"

    def settings(self) -> dict[str, object]:
        return {"command": self.base}

    def init_cmd(self) -> list[str]:
        return [*self.base, "init"]

    def backup_cmd(self, path: Path, label: str) -> list[str]:
        return [*self.base, "backup", str(path)]

    def stdin_cmd(self, label: str) -> list[str]:
        return [*self.base, "backup", "--stdin", "--stdin-name", STREAM_NAME]

    def restore_cmd(self, target: Path, source: Path, label: str) -> tuple[list[str], Path | None]:
        return [*self.base, "restore", "latest", "--target", str(target)], None


TOOL_CLASSES: dict[str, type[Tool]] = {"restic": Restic, "borg": Borg, "stackvault": StackVault}


# --------------------------------------------------------------------------------------------
# Helpers


def command_output(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """First line-trimmed stdout of a quick command, or "" if it fails."""
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def tree_bytes(root: Path) -> int:
    """Sum of the sizes of the regular files under root."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(4 * dataset.MIB):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under root (reads everything once)."""
    hashes: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                hashes[path.relative_to(root).as_posix()] = sha256_file(path)
    return hashes


def digest_of(hashes: dict[str, str]) -> str:
    """One sha256 over a whole tree's (path, sha256) list."""
    lines = "".join(f"{rel}\0{h}\n" for rel, h in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def find_restored_root(target: Path, source: Path) -> Path:
    """Where inside the restore target the source folder landed.

    restic and borg keep the absolute path (target/work/.../data); a tool may also restore
    the folder by its name or its contents straight into target.
    """
    for candidate in (target / source.relative_to(source.anchor), target / source.name):
        if candidate.is_dir():
            return candidate
    return target


def verify_restore(target: Path, source: Path, expected: dict[str, str]) -> list[str]:
    """Problems found comparing the restore with the expected hashes (empty list = identical)."""
    root = find_restored_root(target, source)
    restored = hash_tree(root)
    problems = [f"missing: {rel}" for rel in sorted(expected.keys() - restored.keys())]
    problems += [f"unexpected: {rel}" for rel in sorted(restored.keys() - expected.keys())]
    problems += [
        f"content differs: {rel}"
        for rel in sorted(expected.keys() & restored.keys())
        if expected[rel] != restored[rel]
    ]
    return problems


def run_child(
    cmd: list[str],
    env: dict[str, str],
    log_prefix: Path,
    timeout: float,
    stdin_path: Path | None = None,
    cwd: Path | None = None,
) -> dict[str, float]:
    """Run one timed child through bench/measure_child.py; return its measurements.

    The launcher times the command with perf_counter and reads the command's own rusage with
    os.wait4 on its pid (ru_maxrss, KiB on Linux): this child's peak, not the RUSAGE_CHILDREN
    maximum. It is a separate small process because a child's ru_maxrss starts from the peak
    RSS of whatever forked it (see measure_child.py). stdin, when given, is a file opened for
    reading, which the command reads directly; stdout and stderr go to log files.
    Keys: seconds, peak_rss_kib, cpu_user_s, cpu_sys_s, exit_code.
    """
    os.sync()  # do not let the previous step's dirty pages be written back during this one
    result_file = Path(f"{log_prefix}.rusage.json")
    result_file.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", "-S", str(MEASURE_CHILD), str(result_file)]
    if cwd is not None:
        launcher += ["--cwd", str(cwd)]
    launcher += ["--", *cmd]
    timed_out = threading.Event()
    with (
        open(f"{log_prefix}.out", "wb") as out,
        open(f"{log_prefix}.err", "wb") as err,
        open(stdin_path or os.devnull, "rb") as stdin,
    ):
        # Own session, so a timeout or Ctrl-C can kill the launcher and the tool together.
        proc = subprocess.Popen(
            launcher, stdin=stdin, stdout=out, stderr=err, env=env, start_new_session=True
        )

        def kill_group() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        def on_timeout() -> None:
            timed_out.set()
            kill_group()

        timer = threading.Timer(timeout, on_timeout)
        timer.start()
        try:
            proc.wait()
        except BaseException:
            kill_group()
            proc.wait()
            raise
        finally:
            timer.cancel()
    if timed_out.is_set():
        kill_group()  # the tool may have outlived the launcher
        raise StepFailed(f"timed out after {timeout:.0f} s", log_tail(log_prefix))
    if not result_file.exists():
        tail = log_tail(log_prefix)
        raise StepFailed(f"could not run {cmd[0]}: {tail.splitlines()[-1:]}", tail)
    measured: dict[str, float] = json.loads(result_file.read_text())
    return measured


def rss_floor_kib() -> int:
    """Peak RSS the launcher reports for a command that uses almost no memory (`true`)."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "floor"
        return int(run_child(["true"], dict(os.environ), prefix, 60)["peak_rss_kib"])


def log_tail(log_prefix: Path, lines: int = 6) -> str:
    text = Path(f"{log_prefix}.err").read_text(errors="replace").strip()
    if not text:
        text = Path(f"{log_prefix}.out").read_text(errors="replace").strip()
    return "\n".join(text.splitlines()[-lines:])


def machine_facts(work_dir: Path) -> dict[str, object]:
    cpu_model = ""
    mem_total_kib = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model or platform.processor(),
        "mem_total_gib": round(mem_total_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "filesystem": filesystem_type(work_dir),
        "loadavg_start": list(os.getloadavg()),
        "rss_floor_kib": rss_floor_kib(),
        "embedding_backend": dataset.embedding_backend(),
    }


def filesystem_type(path: Path) -> str:
    """Type of the mount holding path, from /proc/mounts (longest matching mount point)."""
    best, fstype = "", "unknown"
    resolved = str(path.resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


# --------------------------------------------------------------------------------------------
# Data set preparation


def prepare_dataset(work_dir: Path, size_mb: int, seed: int, regenerate: bool) -> dict:
    """Generate (or reuse) the pristine data set and its stream file under work_dir."""
    stem = f"dataset-{size_mb}mb-seed{seed}"
    pristine = work_dir / stem
    marker = work_dir / f"{stem}.json"
    stream = work_dir / f"stream-{size_mb}mb-seed{seed}.bin"
    info: dict = {}
    if marker.exists() and not regenerate:
        info = json.loads(marker.read_text())
        fresh = (
            info.get("dataset_format") == dataset.DATASET_FORMAT
            and info.get("embedding_backend") == dataset.embedding_backend()
            and pristine.is_dir()
            and dataset.describe(pristine)["total_bytes"] == info.get("total_bytes")
            and stream.exists()
            and stream.stat().st_size == info.get("stream_bytes")
        )
        if fresh:
            print(f"reusing data set {pristine}", file=sys.stderr)
            return info | {"path": str(pristine), "stream_path": str(stream)}
    print(f"generating {size_mb} MiB data set (seed {seed}) in {pristine} ...", file=sys.stderr)
    marker.unlink(missing_ok=True)
    shutil.rmtree(pristine, ignore_errors=True)
    info = dataset.generate(pristine, size_mb, seed)
    info["stream_bytes"] = dataset.write_stream(pristine, stream)
    info["stream_sha256"] = sha256_file(stream)
    marker.write_text(json.dumps(info, indent=2))
    return info | {"path": str(pristine), "stream_path": str(stream)}


def fresh_data_copy(pristine: Path, data: Path) -> dict[str, str]:
    """Copy the pristine set to data, flush it, and read it once (warm cache); return hashes."""
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(pristine, data)
    os.sync()
    return hash_tree(data)


# --------------------------------------------------------------------------------------------
# One tool's run


def run_tool(
    tool: Tool, data: Path, pristine: Path, stream: Path, args: argparse.Namespace
) -> ToolResult:
    result = ToolResult(tool=tool.name, version=tool.version())
    why_not = tool.available()
    if why_not:
        result.error = why_not
        return result
    shutil.rmtree(tool.dir, ignore_errors=True)
    logs = tool.dir / "logs"
    logs.mkdir(parents=True)
    tool.cache.mkdir()
    env = tool.env()
    expected: dict[str, str] = {}

    def step(name: str, cmd: list[str], stdin: Path | None = None, cwd: Path | None = None) -> None:
        prefix = logs / name
        os.sync()  # start every timed step with no dirty pages left by the previous one
        try:
            m = run_child(cmd, env, prefix, args.timeout, stdin, cwd)
        except StepFailed as exc:
            raise StepFailed(f"{name}: {exc.summary}", exc.detail) from exc
        seconds, rss, code = m["seconds"], int(m["peak_rss_kib"]), int(m["exit_code"])
        repo_bytes = tree_bytes(tool.repo) if name != "restore" and tool.repo.exists() else None
        result.steps[name] = StepResult(
            name, cmd, seconds, rss, m["cpu_user_s"], m["cpu_sys_s"], code, repo_bytes
        )
        if code != 0:
            tail = log_tail(prefix)
            last_line = tail.splitlines()[-1] if tail else "no output"
            raise StepFailed(f"{name} failed (exit {code}): {last_line}", tail)
        repo_text = f", repo {repo_bytes / dataset.MIB:.1f} MiB" if repo_bytes is not None else ""
        print(
            f"[{tool.name}] {name}: {seconds:.2f} s, peak RSS {rss / 1024:.0f} MiB{repo_text}",
            file=sys.stderr,
        )

    target = tool.dir / "restore"
    try:
        step("init", tool.init_cmd())
        result.settings = tool.settings()
        print(f"[{tool.name}] fresh copy of the data set, read once (warm cache)", file=sys.stderr)
        expected = fresh_data_copy(pristine, data)
        sha256_file(stream)  # warm the stream file too
        step("first_backup", tool.backup_cmd(data, "first"))
        step("unchanged_backup", tool.backup_cmd(data, "unchanged"))
        step("stream_first", tool.stdin_cmd("stream-1"), stdin=stream)
        step("stream_duplicate", tool.stdin_cmd("stream-2"), stdin=stream)
        result.mutation = dataset.mutate_rows(data, args.mutate_fraction, args.seed)
        changed = result.mutation["files_changed"]
        assert isinstance(changed, dict)
        for name in changed:
            expected[f"text/{name}"] = sha256_file(data / "text" / name)
        result.source_digest = digest_of(expected)
        step("mutated_backup", tool.backup_cmd(data, "mutated"))
        target.mkdir()
        cmd, cwd = tool.restore_cmd(target, data, "mutated")
        step("restore", cmd, cwd=cwd)
    except StepFailed as exc:
        result.error = exc.summary
        result.error_detail = exc.detail
        print(f"[{tool.name}] FAILED: {exc.summary}\n{exc.detail}", file=sys.stderr)
        return result
    finally:
        result.cache_bytes = tree_bytes(tool.cache) if tool.cache.exists() else 0

    problems = verify_restore(target, data, expected)
    result.verified = not problems
    result.verify_problems = problems[:50]
    if problems:
        banner = "!" * 78
        print(
            f"\n{banner}\n[{tool.name}] RESTORE IS NOT BYTE-IDENTICAL TO THE SOURCE "
            f"({len(problems)} problems), kept in {target}:\n  "
            + "\n  ".join(problems[:20])
            + f"\n{banner}\n",
            file=sys.stderr,
        )
    else:
        print(f"[{tool.name}] restore verified: {len(expected)} files identical", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(tool.repo, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------
# Reporting


def metric(result: ToolResult, kind: str, key: str) -> float | None:
    """A number to compare with restic: seconds/rss/repo of a step, or max RSS / final repo."""
    if result.error or result.verified is False or not result.steps:
        return None
    if key == "max_rss":  # over the timed steps: init (key derivation) is not one of them
        return max(s.peak_rss_kib for s in result.steps.values() if s.step != "init")
    if key == "final_repo":
        step = result.steps.get("mutated_backup")
        return step.repo_bytes if step else None
    step = result.steps.get(key)
    if step is None:
        return None
    return {"seconds": step.seconds, "rss": step.peak_rss_kib, "repo": step.repo_bytes}[kind]


def evaluate_targets(results: dict[str, ToolResult]) -> dict[str, list[dict[str, object]]]:
    base = results.get(BASELINE)
    evaluated: dict[str, list[dict[str, object]]] = {}
    for name, result in results.items():
        if name == BASELINE:
            continue
        rows = []
        for label, kind, key, limit in TARGETS:
            value = metric(result, kind, key)
            ref = metric(base, kind, key) if base else None
            ratio = value / ref if value is not None and ref else None
            rows.append(
                {
                    "target": label,
                    "limit": limit,
                    "value": value,
                    "restic": ref,
                    "ratio": ratio,
                    "passed": None if ratio is None else ratio <= limit,
                }
            )
        evaluated[name] = rows
    return evaluated


def fmt_ratio(value: float | None, ref: float | None, minimum: float = 0) -> str:
    """Ratio suffix such as " (0.52×)", or "" when there is no meaningful reference."""
    if value is None or not ref or ref < minimum:
        return ""
    return f" ({value / ref:.2f}×)"


def markdown(report: dict, results: dict[str, ToolResult], targets: dict) -> str:
    machine = report["machine"]
    ds = report["dataset"]
    tools = list(results)
    lines = [
        f"### Repository benchmark, {ds['size_mb']} MiB data set (seed {ds['seed']}), "
        f"{report['started']}",
        "",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{machine['mem_total_gib']} GiB RAM, {machine['filesystem']}, "
        f"Linux {machine['kernel']}, Python {machine['python']}, "
        f"load average at start {machine['loadavg_start'][0]:.2f}. "
        f"Data set: {ds['total_bytes'] / dataset.MIB:.0f} MiB, stream "
        f"{ds['stream_bytes'] / dataset.MIB:.0f} MiB, embeddings by {ds['embedding_backend']}.",
        "",
    ]
    for name, result in results.items():
        settings = ", ".join(f"{k} {v}" for k, v in result.settings.items() if k != "command")
        status = f"FAILED: {result.error}" if result.error else "ok"
        if result.verified is not None:
            status = "restore verified" if result.verified else "RESTORE MISMATCH"
        lines.append(
            f"- **{name}**: {result.version or 'version unknown'}"
            f"{'; ' + settings if settings else ''}; {status}"
        )
    lines.append("")
    lines.append(
        "Seconds, child peak RSS (MiB) and repository size (MiB) per step; (×) = ratio to restic."
    )
    lines.append("")
    header = ["step"]
    for name in tools:
        header += [f"{name} s", f"{name} RSS MiB", f"{name} repo MiB"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" + "---:|" * (len(header) - 1))
    base = results.get(BASELINE)
    for step_id, label in STEPS:
        cells = [label]
        ref = base.steps.get(step_id) if base else None
        for name in tools:
            step = results[name].steps.get(step_id)
            if step is None or step.exit_code != 0:
                cells += ["failed" if step else "—", "", ""]
                continue
            with_ratio = name != BASELINE and ref is not None
            cells.append(
                f"{step.seconds:.2f}" + (fmt_ratio(step.seconds, ref.seconds) if with_ratio else "")
            )
            cells.append(
                f"{step.peak_rss_kib / 1024:.0f}"
                + (fmt_ratio(step.peak_rss_kib, ref.peak_rss_kib) if with_ratio else "")
            )
            if step.repo_bytes is None:
                cells.append("")
            else:
                cells.append(
                    f"{step.repo_bytes / dataset.MIB:.1f}"
                    + (
                        fmt_ratio(step.repo_bytes, ref.repo_bytes, dataset.MIB)
                        if with_ratio
                        else ""
                    )
                )
        lines.append("| " + " | ".join(cells) + " |")

    if targets:
        lines += ["", "StackVault targets (ratio to restic; other tools shown for reference):", ""]
        names = list(targets)
        lines.append("| target | limit | " + " | ".join(names) + " |")
        lines.append("|---|---|" + "---|" * len(names))
        for i, (label, _kind, _key, limit) in enumerate(TARGETS):
            cells = [label, f"≤ {limit}× restic"]
            for name in names:
                row = targets[name][i]
                if results[name].verified is False:
                    cells.append("RESTORE MISMATCH")
                elif row["ratio"] is None:
                    cells.append("not run" if results[name].error else "n/a")
                else:
                    cells.append(f"{row['ratio']:.2f}× {'pass' if row['passed'] else 'FAIL'}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="data set size in MiB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma-separated, in order")
    parser.add_argument("--work-dir", type=Path, default=BENCH_DIR / "out")
    parser.add_argument("--mutate-fraction", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per step")
    parser.add_argument("--regenerate", action="store_true", help="regenerate the data set")
    parser.add_argument("--keep", action="store_true", help="keep repositories and restores")
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tools if t not in TOOL_CLASSES]
    if unknown:
        parser.error(f"unknown tools {unknown}; choose from {', '.join(ALL_TOOLS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir: Path = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_facts(work_dir),
    }
    load = report["machine"]["loadavg_start"][0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.2f}: the machine is not quiet", file=sys.stderr)

    ds = prepare_dataset(work_dir, args.size_mb, args.seed, args.regenerate)
    report["dataset"] = ds
    run_dir = work_dir / f"run-{stamp}"
    data = run_dir / "data"
    run_dir.mkdir()

    results: dict[str, ToolResult] = {}
    for name in args.tools:
        tool = TOOL_CLASSES[name](run_dir / name)
        results[name] = run_tool(tool, data, Path(ds["path"]), Path(ds["stream_path"]), args)
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)

    digests = {r.source_digest for r in results.values() if r.source_digest}
    if len(digests) > 1:
        print("warning: tools saw different mutated data sets", file=sys.stderr)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["machine"]["tool_versions"] = {name: r.version for name, r in results.items()}
    report["tools"] = {name: asdict(result) for name, result in results.items()}
    targets = evaluate_targets(results)
    report["targets"] = targets
    text = markdown(report, results, targets)
    json_path = work_dir / f"results-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (work_dir / f"results-{stamp}.md").write_text(text)
    print(text)
    print(f"results: {json_path} (logs in {run_dir})", file=sys.stderr)

    if any(r.verified is False for r in results.values()):
        return 1
    return 2 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
