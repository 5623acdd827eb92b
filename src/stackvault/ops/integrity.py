"""Integrity across stores: run the config's rules (`integrity check`), plan their repair
(`integrity fix`), and carry it out after a safety snapshot (`integrity fix --apply`).

Every store is read through its adapter's small public interface: `query`/`execute` (SQL),
`ids`/`delete_ids` (vector collections), `scan_keys`/`get_values`/`set_values`/`delete_keys`
(Redis), `object_keys`/`delete_object_keys` (S3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from stackvault.config.integrity_schema import ID, rule_components, template_regex
from stackvault.errors import StackVaultError, UsageError
from stackvault.ops.sources_from_config import make_source

SHOWN = 20  # findings listed per rule in reports


@dataclass
class Finding:
    kind: str  # orphan | missing | unlinked | stuck | row
    id: str
    detail: str = ""


@dataclass
class FixStep:
    rule: str
    component: str
    description: str
    count: int
    run: Callable[[], int] = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "component": self.component,
                "description": self.description, "count": self.count}


@dataclass
class RuleResult:
    name: str
    type: str
    severity: str
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    not_fixable: list[str] = field(default_factory=list)
    fixes: list[FixStep] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.error:
            return "critical"
        return self.severity if self.findings else "healthy"

    def to_dict(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for f in self.findings:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        return {"name": self.name, "type": self.type, "status": self.status,
                "severity": self.severity, "error": self.error, "counts": kinds,
                "findings": [f.__dict__ for f in self.findings[:SHOWN]],
                "more_findings": max(0, len(self.findings) - SHOWN),
                "fix_plan": [s.to_dict() for s in self.fixes],
                "not_fixable": self.not_fixable}


def overall(results: list[RuleResult]) -> str:
    states = {r.status for r in results}
    return ("critical" if "critical" in states else "warning" if "warning" in states
            else "healthy")


# --- reading ids --------------------------------------------------------------------------


class Stores:
    """The adapters of the components rules touch, made once per run."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self._made: dict[str, Any] = {}

    def __call__(self, name: str) -> Any:
        if name not in self._made:
            self._made[name] = make_source(name, self.config.components[name])
        return self._made[name]

    def type(self, name: str) -> str:
        return str(self.config.components[name].type)


def _need(source: Any, method: str, what: str, type_: str) -> Any:
    fn = getattr(source, method, None)
    if fn is None:
        raise UsageError(f"a {type_} component cannot be used for {what}")
    return fn


def read_ids(stores: Stores, loc: Any) -> dict[str, str]:
    """id -> the key/object that holds it (or the id itself) for a locator."""
    src, type_ = stores(loc.component), stores.type(loc.component)
    if loc.sql:
        rows = _need(src, "query", "an sql locator", type_)(loc.sql, database=loc.database)
        return {str(r[0]): str(r[0]) for r in rows if r and r[0] is not None}
    if loc.collection:
        return {str(i): str(i) for i in
                _need(src, "ids", "a collection locator", type_)(loc.collection)}
    regex = template_regex(loc.pattern)
    literal = loc.pattern.split(ID, 1)[0]
    if type_ == "redis":
        glob = loc.pattern.replace("*", "\\*").replace("?", "\\?").replace(ID, "*")
        keys = src.scan_keys(glob)
    elif type_ == "s3":
        keys = src.object_keys(literal)
    else:
        raise UsageError(f"a pattern locator reads redis keys or s3 objects, not a {type_} "
                         "component")
    out = {}
    for key in keys:
        m = regex.match(key)
        if m:
            out[m.group("id")] = key
    return out


# --- the rules ---------------------------------------------------------------------------


def _references(rule: Any, stores: Stores, res: RuleResult) -> None:
    source = read_ids(stores, rule.source)
    target = read_ids(stores, rule.target)
    orphans = sorted(set(target) - set(source))
    missing = sorted(set(source) - set(target))
    res.findings += [Finding("orphan", i, f"in {rule.target.component}, no record in "
                             f"{rule.source.component}") for i in orphans]
    res.findings += [Finding("missing", i, f"in {rule.source.component}, nothing in "
                             f"{rule.target.component}") for i in missing]
    if missing:
        res.not_fixable.append(f"{len(missing)} missing in {rule.target.component}: recreate "
                               "them in the application (e.g. re-embed those chunks)")
    if not orphans:
        return
    if not rule.delete_orphans:
        res.not_fixable.append(f"{len(orphans)} orphan(s): set delete_orphans: true to let "
                               "`integrity fix` delete them")
        return
    t, comp = rule.target, rule.target.component
    store, type_ = stores(comp), stores.type(comp)
    if t.collection:
        delete = _need(store, "delete_ids", "deleting orphans", type_)
        run: Callable[[], int] = lambda: delete(t.collection, orphans)  # noqa: E731
        what = f"delete {len(orphans)} orphan point(s) from collection {t.collection}"
    elif t.pattern and type_ == "redis":
        keys = [target[i] for i in orphans]
        run = lambda: store.delete_keys(keys)  # noqa: E731
        what = f"delete {len(orphans)} orphan key(s) matching {t.pattern}"
    elif t.pattern and type_ == "s3":
        keys = [target[i] for i in orphans]
        run = lambda: store.delete_object_keys(keys)  # noqa: E731
        what = f"delete {len(orphans)} orphan object(s) matching {t.pattern}"
    else:
        res.not_fixable.append(f"{len(orphans)} orphan row(s) in {comp}: StackVault does not "
                               "delete SQL rows; delete them in the application")
        return
    res.fixes.append(FixStep(rule.name, comp, what, len(orphans), run))


def _mapping(rule: Any, stores: Stores, res: RuleResult) -> None:
    from types import SimpleNamespace

    have = read_ids(stores, SimpleNamespace(component=rule.component, pattern=rule.pattern,
                                            sql=None, collection=None))
    partners = read_ids(stores, SimpleNamespace(component=rule.component,
                                                pattern=rule.requires, sql=None,
                                                collection=None))
    unlinked = sorted(set(have) - set(partners))
    res.findings += [Finding("unlinked", i, f"{have[i]} has no "
                             f"{rule.requires.replace(ID, i)}") for i in unlinked]
    if not unlinked:
        return
    if rule.relink is None:
        res.not_fixable.append(f"{len(unlinked)} unlinked: give `relink` to let `integrity "
                               "fix` rebuild the links")
        return
    candidates = read_ids(stores, rule.relink)
    links = {rule.requires.replace(ID, i): candidates[i] for i in unlinked if i in candidates}
    lost = [i for i in unlinked if i not in candidates]
    if lost:
        res.not_fixable.append(f"{len(lost)} unlinked without a partner in "
                               f"{rule.relink.component}: {', '.join(lost[:5])}")
    if links:
        store = stores(rule.component)
        res.fixes.append(FixStep(
            rule.name, rule.component,
            f"relink {len(links)} key(s): set {rule.requires} to the matching "
            f"{rule.relink.pattern or 'id'} of {rule.relink.component}", len(links),
            lambda: (store.set_values(links), len(links))[1]))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _stuck_jobs(rule: Any, stores: Stores, res: RuleResult) -> None:
    store, type_ = stores(rule.component), stores.type(rule.component)
    if type_ not in ("postgres", "sqlite"):
        raise UsageError(f"stuck_jobs needs a postgres or sqlite component, not {type_}")
    pg = type_ == "postgres"
    mark = "%s" if pg else "?"
    cutoff = datetime.now(UTC) - timedelta(seconds=rule.older_than)
    states = ", ".join(mark for _ in rule.stuck_states)
    table, idc, st, upd = (_q(rule.table), _q(rule.id_column), _q(rule.state_column),
                           _q(rule.updated_column))
    if pg:
        old = f"{upd} < %s"
        old_params: tuple[Any, ...] = (cutoff,)
    else:  # ISO text or Unix seconds
        old = (f"(CASE WHEN typeof({upd}) IN ('integer', 'real') THEN {upd} < ? "
               f"ELSE julianday({upd}) < julianday(?) END)")
        old_params = (cutoff.timestamp(), cutoff.strftime("%Y-%m-%d %H:%M:%S"))
    where = f"{st} IN ({states}) AND {old}"
    params = (*rule.stuck_states, *old_params)
    rows = store.query(f"SELECT {idc}, {st} FROM {table} WHERE {where} ORDER BY {idc}",
                       params, database=rule.database)
    ids = [r[0] for r in rows]
    res.findings += [Finding("stuck", str(r[0]), f"{r[1]} for more than "
                             f"{rule.older_than}s") for r in rows]
    if not ids:
        return
    sets = [f"{st} = {mark}"]
    values: list[Any] = [rule.reset_to]
    if rule.retries_column:
        sets.append(f"{_q(rule.retries_column)} = coalesce({_q(rule.retries_column)}, 0) + 1")
    if rule.message_column:
        sets.append(f"{_q(rule.message_column)} = {mark}")
        values.append(f"reset to {rule.reset_to} by stackvault integrity fix at "
                      f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC (stuck in "
                      f"{rule.state_column})")
    id_marks = ", ".join(mark for _ in ids)
    update = (f"UPDATE {table} SET {', '.join(sets)} WHERE {idc} IN ({id_marks}) "
              f"AND {st} IN ({states})")
    statement = (update, (*values, *ids, *rule.stuck_states))
    res.fixes.append(FixStep(
        rule.name, rule.component,
        f"reset {len(ids)} job(s) in {rule.table} to {rule.reset_to}"
        + (f", {rule.retries_column} + 1" if rule.retries_column else "")
        + (f", a message in {rule.message_column}" if rule.message_column else ""),
        len(ids), lambda: store.execute([statement], database=rule.database)))


def _custom(rule: Any, stores: Stores, res: RuleResult) -> None:
    store, type_ = stores(rule.component), stores.type(rule.component)
    rows = _need(store, "query", "a custom rule", type_)(rule.sql, database=rule.database)
    res.findings += [Finding("row", str(r[0]) if r else "", ", ".join(map(str, r)))
                     for r in rows]
    if rows:
        res.not_fixable.append("custom rules are reported only")


CHECKS: dict[str, Callable[[Any, Stores, RuleResult], None]] = {
    "references": _references, "mapping": _mapping, "stuck_jobs": _stuck_jobs,
    "custom": _custom}


def check(config: Any, names: list[str] | None = None) -> list[RuleResult]:
    """Run the rules (all, or those named); a rule whose store fails is `critical` with the
    error, the others still run."""
    rules = list(config.integrity.rules)
    if names:
        unknown = sorted(set(names) - {r.name for r in rules})
        if unknown:
            raise UsageError(f"unknown rule(s): {', '.join(unknown)}",
                             hint="the config has: " + ", ".join(r.name for r in rules))
        rules = [r for r in rules if r.name in names]
    if not rules:
        raise UsageError("the config has no integrity rules",
                         hint="add them under `integrity: rules:` (docs/integrity.md)")
    stores = Stores(config)
    out = []
    for rule in rules:
        res = RuleResult(rule.name, rule.type, rule.severity)
        try:
            CHECKS[rule.type](rule, stores, res)
        except StackVaultError as e:
            res.error, res.fixes = str(e), []
        out.append(res)
    return out


def touched(config: Any, results: list[RuleResult]) -> list[str]:
    """The components a fix will change (for its safety snapshot)."""
    return sorted({s.component for r in results for s in r.fixes})


def apply_fixes(results: list[RuleResult]) -> list[dict[str, Any]]:
    """Carry out every planned step; return what each changed."""
    done = []
    for r in results:
        for step in r.fixes:
            changed = step.run()
            done.append({**step.to_dict(), "changed": int(changed or 0)})
    return done


__all__ = ["apply_fixes", "check", "overall", "rule_components", "touched"]
