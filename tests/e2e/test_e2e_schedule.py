"""`stackvault schedule list | install --cron | install --systemd` and the `schedule:` section's
validation, run as a user would."""

from __future__ import annotations

import configparser
import getpass
import shlex
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from e2e_support import CLI, base_env, run_cli

ENV = base_env(STACKVAULT_CONFIG=None)

CONFIG = """\
version: 1
repository: {location: ./repo}
components:
  conf: {type: files, paths: [./data]}
schedule:
  timezone: Europe/Berlin
  backup: {cron: "30 2 * * *", jitter: 10m}
  prune: {cron: "30 4 * * 0", keep_daily: 7, keep_weekly: 4, keep_monthly: 12}
  check: {cron: "0 5 1,15 * 1", read_data_subset: 5%, missed: skip}
  drill: {cron: "0 6 * * 6"}
  integrity: {cron: "*/15 8-18 * * 1-5", missed: skip}
"""

COMMANDS = {
    "backup": ["backup"],
    "prune": ["forget", "--prune", "--keep-daily", "7", "--keep-weekly", "4",
              "--keep-monthly", "12"],
    "check": ["check", "--read-data-subset", "5%"],
    "drill": ["drill"],
    "integrity": ["integrity", "check"],
}


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    folder = tmp_path / "my stack"  # a space: paths must be quoted in crontab and units
    folder.mkdir(parents=True)
    path = folder / "stackvault.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_schedule_list_json_shows_the_next_runs(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    before = datetime.now(UTC)
    res = run_cli(["-c", str(path), "--json", "schedule", "list", "--count", "4"], env=ENV)
    assert res.rc == 0, str(res)
    doc = res.json()
    assert doc["timezone"] == "Europe/Berlin"
    jobs = {j["job"]: j for j in doc["jobs"]}
    assert list(jobs) == ["backup", "prune", "check", "drill", "integrity"]
    for name, job in jobs.items():
        assert job["command"] == COMMANDS[name]
        runs = [datetime.fromisoformat(t) for t in job["next_runs"]]
        assert len(runs) == 4 and runs == sorted(runs) and runs[0] > before
        assert all(t.utcoffset() == t.astimezone(ZoneInfo("Europe/Berlin")).utcoffset()
                   for t in runs)  # shown in the schedule's time zone
    backup = jobs["backup"]
    assert backup["jitter"] == "10m" and 0 <= backup["jitter_offset_seconds"] <= 600
    for t in map(datetime.fromisoformat, backup["next_runs"]):
        assert (t.hour, t.minute) == (2, 30) and t.second == backup["jitter_offset_seconds"] % 60
    integrity = [datetime.fromisoformat(t) for t in jobs["integrity"]["next_runs"]]
    assert all(8 <= t.hour <= 18 and t.minute % 15 == 0 and t.isoweekday() <= 5
               for t in integrity)
    human = run_cli(["-c", str(path), "schedule", "list"], env=ENV)
    assert human.rc == 0 and "stackvault forget --prune --keep-daily 7" in human.text


def test_install_cron_prints_one_line_per_job_with_its_command(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    res = run_cli(["-c", str(path), "schedule", "install", "--cron", "--user"], env=ENV)
    assert res.rc == 0, str(res)
    lines = [ln for ln in res.text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "CRON_TZ=Europe/Berlin"
    jobs = lines[1:]
    assert len(jobs) == 5
    crons = ["30 2 * * *", "30 4 * * 0", "0 5 1,15 * 1", "0 6 * * 6", "*/15 8-18 * * 1-5"]
    for line, cron, (name, command) in zip(jobs, crons, COMMANDS.items(), strict=True):
        assert line.startswith(cron + " "), line
        words = shlex.split(line[len(cron):].replace("\\%", "%"))
        if name == "backup":  # the job's fixed jitter, as a sleep
            assert words[0] == "sleep" and 0 <= int(words[1]) <= 600 and words[2] == "&&"
            words = words[3:]
        assert words[:len(CLI)] == CLI
        assert words[len(CLI):] == ["-c", str(path.resolve()), "--quiet", *command]
    assert "5\\%" in jobs[2]  # a bare % would end the command in crontab

    out = tmp_path / "stackvault.cron"
    res = run_cli(["-c", str(path), "schedule", "install", "--cron", "--write", str(out)],
                  env=ENV)
    assert res.rc == 0, str(res)
    system = [ln for ln in out.read_text().splitlines() if ln and ln[0] not in "#C"]
    assert len(system) == 5  # /etc/cron.d format: a user column after the five fields
    assert all(ln.split()[5] == getpass.getuser() and ln.split()[6] in ("sleep", CLI[0])
               for ln in system)


def _units(folder: Path) -> dict[str, configparser.ConfigParser]:
    out = {}
    for p in sorted(folder.iterdir()):
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read_string(p.read_text(encoding="utf-8"))
        out[p.name] = cp
    return out


def test_install_systemd_writes_units_systemd_accepts(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    units = tmp_path / "units"
    res = run_cli(["-c", str(path), "--json", "schedule", "install", "--systemd",
                   "--dir", str(units)], env=ENV)
    assert res.rc == 0, str(res)
    assert res.json()["not_expressible"] == {}
    parsed = _units(units)
    assert sorted(parsed) == sorted(f"stackvault-{j}.{kind}" for j in COMMANDS
                                    for kind in ("service", "timer"))
    for name, command in COMMANDS.items():
        service = parsed[f"stackvault-{name}.service"]
        assert service["Service"]["Type"] == "oneshot"
        exec_start = shlex.split(service["Service"]["ExecStart"].replace("%%", "%"))
        assert exec_start == [*CLI, "-c", str(path.resolve()), "--quiet", *command]
        timer = parsed[f"stackvault-{name}.timer"]["Timer"]
        assert timer["Unit"] == f"stackvault-{name}.service"
        assert timer["OnCalendar"].endswith(" Europe/Berlin")
        missed = "skip" if name in ("check", "integrity") else "run_once"
        assert timer["Persistent"] == ("true" if missed == "run_once" else "false")
    assert parsed["stackvault-backup.timer"]["Timer"]["RandomizedDelaySec"] == "10m"
    assert parsed["stackvault-backup.timer"]["Timer"]["OnCalendar"] == \
        "*-*-* 02:30:00 Europe/Berlin"
    check_timer = (units / "stackvault-check.timer").read_text()
    assert ("OnCalendar=*-*-01,15 05:00:00 Europe/Berlin\n"
            "OnCalendar=Mon *-*-* 05:00:00 Europe/Berlin") in check_timer  # cron's OR

    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # then the parsed fields above are the check
        return
    proc = subprocess.run([analyze, "verify", *sorted(str(p) for p in units.iterdir())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # systemd's own next elapse of a timer matches the scheduler's.
    listed = run_cli(["-c", str(path), "--json", "schedule", "list", "-n", "2"], env=ENV).json()
    want = {j["job"]: j["next_runs"] for j in listed["jobs"]}["integrity"]
    cal = parsed["stackvault-integrity.timer"]["Timer"]["OnCalendar"]
    proc = subprocess.run([analyze, "calendar", "--iterations", "2", cal],
                          capture_output=True, text=True, timeout=60, env={**ENV, "TZ": "UTC"})
    assert proc.returncode == 0, proc.stderr
    got = [ln.split(":", 1)[1].strip() for ln in proc.stdout.splitlines()
           if ln.strip().startswith(("Next elapse:", "Iter. #"))]
    assert [datetime.strptime(g, "%a %Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
            for g in got] == [datetime.fromisoformat(w) for w in want]


def test_install_systemd_names_the_jobs_systemd_cannot_express(tmp_path: Path) -> None:
    path = write_config(tmp_path, CONFIG.replace('"0 6 * * 6"', '"0 6 L * *"'))
    units = tmp_path / "units"
    res = run_cli(["-c", str(path), "schedule", "install", "--systemd", "--dir", str(units)],
                  env=ENV)
    assert res.rc == 3, str(res)
    assert "schedule.drill.cron cannot be written as a systemd OnCalendar" in res.err
    assert not (units / "stackvault-drill.timer").exists()
    assert (units / "stackvault-backup.timer").exists()


@pytest.mark.parametrize(("find", "replace", "where"), [
    ('"30 2 * * *"', '"30 25 * * *"', "schedule.backup.cron"),
    ('"0 6 * * 6"', '"0 6 * *"', "schedule.drill.cron"),
    ("timezone: Europe/Berlin", "timezone: Europe/Atlantis", "schedule.timezone"),
    ("missed: skip}", "missed: later}", "schedule.check.missed"),
])
def test_bad_schedules_fail_validation_with_their_path(tmp_path: Path, find: str,
                                                      replace: str, where: str) -> None:
    assert find in CONFIG
    path = write_config(tmp_path, CONFIG.replace(find, replace, 1))
    res = run_cli(["-c", str(path), "--json", "config", "validate"], env=ENV)
    assert res.rc == 2, str(res)
    errors = {e["path"]: e for e in res.json()["errors"]}
    assert list(errors) == [where], errors
    assert errors[where]["line"] is not None
    human = run_cli(["-c", str(path), "config", "validate"], env=ENV)
    assert human.rc == 2 and where in human.err + human.text


def test_usage_errors(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    for args in (["schedule", "install"], ["schedule", "install", "--cron", "--systemd"],
                 ["schedule", "install", "--systemd"]):
        res = run_cli(["-c", str(path), *args], env=ENV)
        assert res.rc == 2, str(res)
    bare = write_config(tmp_path / "bare", CONFIG.split("schedule:")[0])
    res = run_cli(["-c", str(bare), "schedule", "list"], env=ENV)
    assert res.rc == 2 and "schedules no jobs" in res.err
