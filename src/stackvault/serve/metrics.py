"""`/metrics` in the Prometheus text format, built from the service's views on each scrape
(prometheus_client: the reference library for the format; a custom collector, so the figures
are always the current views and no state is kept twice).

Metric names are documented in docs/serve.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.registry import Collector

from stackvault.ops.stack_restore import SAFETY_TAG

INTEGRITY_LEVEL = {"healthy": 0, "warning": 1, "critical": 2}


def _ts(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"stackvault_{name}", doc, labels=labels)


class ServiceCollector(Collector):
    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.service
        views = s.views
        yield from self._jobs(s)
        yield from self._components(views.snapshots)
        repo = views.repository
        up = _gauge("repository_reachable", "1 if the last read of the repository worked.")
        up.add_metric([], 1.0 if repo.get("reachable") else 0.0)
        yield up
        for key, name, doc in (
                ("size_bytes", "repository_size_bytes", "Bytes stored in the repository's packs."),
                ("protected_bytes", "repository_protected_bytes",
                 "Bytes of all stack snapshots before deduplication and compression."),
                ("dedup_ratio", "repository_dedup_ratio",
                 "Protected bytes over stored bytes (higher is better)."),
                ("snapshots", "snapshots", "Stack snapshots in the repository (no safety "
                                           "snapshots).")):
            if repo.get(key) is not None:
                g = _gauge(name, doc)
                g.add_metric([], float(repo[key]))
                yield g
        yield from self._drill(views.drills, s.targets())
        yield from self._integrity(s.integrity_view())
        yield from self._coverage(s)
        running = _gauge("tasks_running", "Tasks running now, by kind.", ["kind"])
        counts: dict[str, int] = {}
        for t in s.tasks.active():
            counts[t.kind] = counts.get(t.kind, 0) + 1
        for kind in ("backup", "prune", "check", "drill", "integrity", "restore"):
            running.add_metric([kind], float(counts.get(kind, 0)))
        yield running

    def _jobs(self, s: Any) -> Iterator[GaugeMetricFamily]:
        """Per job kind: the last task's outcome and duration, the last success's time."""
        last_ok = _gauge("job_last_success_timestamp_seconds",
                         "When the last successful run of a job ended.", ["job"])
        last_dur = _gauge("job_last_duration_seconds", "How long the last run took.", ["job"])
        last_st = _gauge("job_last_success", "1 if the last run succeeded, 0 if it failed.",
                         ["job"])
        seen: set[str] = set()
        ok_seen: set[str] = set()
        for t in s.tasks.recent(limit=500):
            if not t.done:
                continue
            if t.kind not in seen:
                seen.add(t.kind)
                last_st.add_metric([t.kind], 1.0 if t.status == "succeeded" else 0.0)
                if t.seconds is not None:
                    last_dur.add_metric([t.kind], float(t.seconds))
            if t.status == "succeeded" and t.kind not in ok_seen and t.finished:
                ok_seen.add(t.kind)
                last_ok.add_metric([t.kind], _ts(t.finished) or 0.0)
        yield from (last_ok, last_dur, last_st)

    def _components(self, snaps: list[dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
        last_ok = _gauge("component_last_backup_timestamp_seconds",
                         "Time of the newest stack snapshot holding the component intact.",
                         ["component"])
        size = _gauge("component_backup_bytes", "The component's artifact bytes in that "
                                                "snapshot.", ["component"])
        dur = _gauge("component_backup_duration_seconds", "How long its backup took.",
                     ["component"])
        done: set[str] = set()
        for snap in reversed(snaps):
            if SAFETY_TAG in snap["tags"]:
                continue
            for name, c in snap["components"].items():
                if name in done or c["status"] != "ok":
                    continue
                done.add(name)
                last_ok.add_metric([name], _ts(snap["time"]) or 0.0)
                size.add_metric([name], float(c["bytes"]))
                if c["seconds"] is not None:
                    dur.add_metric([name], float(c["seconds"]))
        yield from (last_ok, size, dur)

    def _drill(self, drills: list[dict[str, Any]], targets: dict[str, Any]
               ) -> Iterator[GaugeMetricFamily]:
        if not drills:
            return
        d = drills[-1]
        for name, doc, value in (
                ("drill_last_timestamp_seconds", "When the last drill started.",
                 _ts(d["started"])),
                ("drill_last_success", "1 if the last drill passed.", 1.0 if d["ok"] else 0.0),
                ("drill_rto_seconds", "The last drill's restore time of the whole stack.",
                 d["rto_seconds"]),
                ("drill_rpo_seconds", "The last drill's snapshot age when it ran.",
                 d["rpo_seconds"])):
            g = _gauge(name, doc)
            g.add_metric([], float(value or 0.0))
            yield g
        rto = _gauge("drill_component_rto_seconds", "The last drill's restore time per "
                                                    "component.", ["component"])
        rto_t = _gauge("component_rto_target_seconds", "The config's RTO target.", ["component"])
        rpo_t = _gauge("component_rpo_target_seconds", "The config's RPO target.", ["component"])
        for c in d["components"]:
            rto.add_metric([c["component"]], float(c["seconds"]))
        for name, t in targets.items():
            if t["rto"] is not None:
                rto_t.add_metric([name], float(t["rto"]))
            if t["rpo"] is not None:
                rpo_t.add_metric([name], float(t["rpo"]))
        yield from (rto, rto_t, rpo_t)

    def _integrity(self, report: dict[str, Any] | None) -> Iterator[GaugeMetricFamily]:
        if report is None:
            return
        g = _gauge("integrity_status", "The last integrity run, per rule: 0 healthy, "
                                       "1 warning, 2 critical.", ["rule"])
        for r in report.get("rules", []):
            g.add_metric([r["name"]], float(INTEGRITY_LEVEL.get(str(r.get("status")), 2)))
        yield g
        o = _gauge("integrity_overall", "The last integrity run: 0 healthy, 1 warning, "
                                        "2 critical.")
        o.add_metric([], float(INTEGRITY_LEVEL.get(str(report.get("status")), 2)))
        yield o

    def _coverage(self, s: Any) -> Iterator[GaugeMetricFamily]:
        cov = s.scheduler.coverage if s.scheduler is not None else None
        if cov is None:
            return
        g = _gauge("check_coverage_ratio", "The part of the repository's data the current "
                                           "check cycle has read (0..1).")
        g.add_metric([], cov.fraction)
        yield g
        if cov.last_complete:
            c = _gauge("check_cycle_complete_timestamp_seconds",
                       "When a check cycle last finished reading all data.")
            c.add_metric([], _ts(cov.last_complete) or 0.0)
            yield c


def render(service: Any) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    return generate_latest(registry), CONTENT_TYPE_LATEST
