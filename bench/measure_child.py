"""Run one command and write its wall time and its own rusage (peak RSS, CPU) to a JSON file.

    python -I -S bench/measure_child.py RESULT.json [--cwd DIR] -- COMMAND [ARGS...]

Why a separate small process: on Linux a child's ru_maxrss starts from the peak RSS of the
process that forked it (exec keeps the old image's high-water mark), so a child spawned by the
benchmark itself would report at least the benchmark's own peak (hundreds of MiB after data
generation). This launcher stays small (about 8 MiB, recorded as the RSS floor), spawns the
command with stdin/stdout/stderr inherited, and reads the child's rusage with os.wait4.
It imports only os, sys and time before spawning, so that floor stays low.
"""

import os
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    result_path = argv[0]
    split = argv.index("--")
    options, cmd = argv[1:split], argv[split + 1 :]
    if options[:1] == ["--cwd"]:
        os.chdir(options[1])
    start = time.perf_counter()
    try:
        pid = os.posix_spawnp(cmd[0], cmd, os.environ)
    except OSError as exc:
        print(f"measure_child: cannot start {cmd[0]}: {exc}", file=sys.stderr)
        return 127
    _pid, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    exit_code = os.waitstatus_to_exitcode(status)
    report = {
        "seconds": seconds,
        "peak_rss_kib": usage.ru_maxrss,
        "cpu_user_s": usage.ru_utime,
        "cpu_sys_s": usage.ru_stime,
        "exit_code": exit_code,
    }
    import json  # only now: the child is already gone, the floor is not affected

    with open(result_path, "w") as out:
        json.dump(report, out)
    return 0 if exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
