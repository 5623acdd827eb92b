"""Pure retention planner for `forget`: decides which snapshots a keep-policy keeps, and why."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = [
    "GROUP_BY_FIELDS",
    "CalendarDuration",
    "Decision",
    "EmptyPolicyError",
    "Group",
    "KeepPolicy",
    "SnapshotLike",
    "parse_duration",
    "plan",
]

GROUP_BY_FIELDS: tuple[str, ...] = ("hostname", "paths", "tags")
"""The fields snapshots may be grouped by, in the order they appear in a group key."""


class EmptyPolicyError(ValueError):
    """The policy keeps nothing by construction; applying it would forget every snapshot."""


class SnapshotLike(Protocol):
    """What the planner reads from a snapshot. Read-only, so frozen dataclasses qualify."""

    @property
    def id(self) -> str: ...

    @property
    def time(self) -> datetime: ...  # timezone-aware

    @property
    def tags(self) -> Sequence[str]: ...

    @property
    def hostname(self) -> str: ...

    @property
    def paths(self) -> Sequence[str]: ...


# --- durations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CalendarDuration:
    """A restic-style duration (``1y2m3d4h``): calendar years/months/days plus hours.

    It is not a timedelta because a month or a year has no fixed length. It is
    subtracted from a point in time the way restic does it (Go's
    ``t.AddDate(-y, -m, -d).Add(-h hours)``):

    - years, months and days move the *wall clock* of the point in its own timezone,
      and an out-of-range day rolls over into the next month like Go's ``time.Date``:
      2024-03-31 minus 1m is "2024-02-31", i.e. 2024-03-02 (not clamped to Feb 29);
    - hours are then subtracted as absolute elapsed time (a DST change in between does
      not stretch or shrink them).
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        for name in ("years", "months", "days", "hours"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"CalendarDuration.{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"CalendarDuration.{name} must not be negative, got {value}")

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def subtract_from(self, t: datetime) -> datetime | None:
        """``t`` minus this duration, as a UTC instant; None if that is before year 1."""
        try:
            months_total = (t.year - self.years) * 12 + (t.month - 1) - self.months
            year, month0 = divmod(months_total, 12)
            wall = t.replace(year=year, month=month0 + 1, day=1) + timedelta(
                days=t.day - 1 - self.days
            )
            return wall.astimezone(UTC) - timedelta(hours=self.hours)
        except (ValueError, OverflowError):
            return None

    def __str__(self) -> str:
        parts = [
            f"{value}{unit}"
            for value, unit in (
                (self.years, "y"),
                (self.months, "m"),
                (self.days, "d"),
                (self.hours, "h"),
            )
            if value
        ]
        return "".join(parts) or "0h"


_DURATION_NUMBER = re.compile(r"[0-9]+")
_DURATION_UNITS = {"y": "years", "m": "months", "d": "days", "h": "hours"}


def parse_duration(text: str) -> CalendarDuration:
    """Parse a ``--keep-within`` duration such as ``1y2m3d4h``, ``30d`` or ``36h``.

    Units as in restic: ``y`` years, ``m`` months (calendar months, not minutes),
    ``d`` days, ``h`` hours. Units may come in any order but each at most once; every
    number needs a unit; numbers are non-negative decimal; the total must not be zero.
    Raises ValueError with a message naming the problem.
    """
    if not isinstance(text, str):
        raise TypeError(f"duration must be a string, got {type(text).__name__}")
    if not text:
        raise ValueError("empty duration; expected e.g. '1y2m3d4h' (units y, m, d, h)")
    values: dict[str, int] = {}
    pos = 0
    while pos < len(text):
        match = _DURATION_NUMBER.match(text, pos)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: expected a number at position {pos}, "
                f"found {text[pos]!r} (format: e.g. '1y2m3d4h')"
            )
        number, pos = match.group(), match.end()
        if pos == len(text):
            raise ValueError(
                f"invalid duration {text!r}: number {number} has no unit (use y, m, d or h)"
            )
        unit = text[pos]
        if unit not in _DURATION_UNITS:
            raise ValueError(
                f"invalid duration {text!r}: unknown unit {unit!r} after {number} "
                "(whole numbers with y=years, m=months, d=days, h=hours)"
            )
        if unit in values:
            raise ValueError(f"invalid duration {text!r}: unit {unit!r} given more than once")
        values[unit] = int(number)
        pos += 1
    duration = CalendarDuration(**{_DURATION_UNITS[u]: v for u, v in values.items()})
    if duration.is_zero():
        raise ValueError(f"invalid duration {text!r}: must be longer than zero")
    return duration


def _format_timedelta(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if delta.microseconds or seconds % 3600:
        return str(delta)  # sub-hour precision: "1:30:00" is unambiguous, "1h30m" is not
    days, hours = divmod(seconds // 3600, 24)
    return (f"{days}d" if days else "") + (f"{hours}h" if hours else "")


# --- policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeepPolicy:
    """Which snapshots of a group to keep; everything not kept by some rule is forgotten.

    Counts (``last`` ... ``yearly``) are non-negative; 0 disables the rule (restic's -1
    "unlimited" is not supported). ``within`` is a positive timedelta (exact elapsed
    time) or a CalendarDuration from parse_duration (calendar arithmetic). ``tags``
    keeps every snapshot carrying any one of them; any iterable of strings is accepted
    and stored as a frozenset.
    """

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | CalendarDuration | None = None
    tags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"keep {name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"keep {name} must not be negative, got {value}")
        within = self.within
        if within is not None:
            if isinstance(within, timedelta):
                if within <= timedelta(0):
                    raise ValueError(f"keep within must be a positive duration, got {within}")
            elif isinstance(within, CalendarDuration):
                if within.is_zero():
                    raise ValueError("keep within must be a positive duration, got zero")
            else:
                raise TypeError(
                    f"keep within must be a timedelta or CalendarDuration, got {within!r}"
                )
        if isinstance(self.tags, str):
            raise TypeError("keep tags must be a collection of tags, not a single string")
        tags = frozenset(self.tags)
        for tag in tags:
            if not isinstance(tag, str) or not tag:
                raise ValueError(f"keep tags must be non-empty strings, got {tag!r}")
        object.__setattr__(self, "tags", tags)

    def is_empty(self) -> bool:
        """True if no rule is set, i.e. applying the policy would forget everything."""
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        return not any(counts) and self.within is None and not self.tags


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The verdict on one snapshot. ``reasons`` is empty exactly when ``keep`` is False.

    Reasons come in this order: ``last-N``, ``hourly-N``, ``daily-N``, ``weekly-N``,
    ``monthly-N``, ``yearly-N``, ``tag:<tag>`` (sorted by tag), ``within <duration>``.
    """

    snapshot: SnapshotLike
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Group:
    """One group of snapshots and the decisions on them, newest first.

    ``key`` maps each group-by field, in GROUP_BY_FIELDS order, to the shared value:
    ``{"hostname": "a", "paths": ["/x"]}``; paths and tags are sorted lists.
    """

    key: dict[str, str | list[str]]
    decisions: tuple[Decision, ...]

    @property
    def keep(self) -> list[SnapshotLike]:
        return [d.snapshot for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[SnapshotLike]:
        return [d.snapshot for d in self.decisions if not d.keep]


# --- planning ----------------------------------------------------------------------------

_BucketKey = tuple[int, ...]


def _hour(t: datetime) -> _BucketKey:
    return (t.year, t.month, t.day, t.hour)


def _day(t: datetime) -> _BucketKey:
    return (t.year, t.month, t.day)


def _iso_week(t: datetime) -> _BucketKey:
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _month(t: datetime) -> _BucketKey:
    return (t.year, t.month)


def _year(t: datetime) -> _BucketKey:
    return (t.year,)


_BUCKET_RULES: tuple[tuple[str, Callable[[datetime], _BucketKey]], ...] = (
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _iso_week),
    ("monthly", _month),
    ("yearly", _year),
)


def _instant(snapshot: SnapshotLike) -> datetime:
    # Compare in UTC: Python compares two datetimes sharing one ZoneInfo by wall clock,
    # ignoring `fold`, which misorders the repeated hour when DST ends.
    return snapshot.time.astimezone(UTC)


def _validate_group_by(group_by: Iterable[str]) -> tuple[str, ...]:
    if isinstance(group_by, str):
        raise TypeError(f"group_by must be a collection of field names, not {group_by!r}")
    fields = list(group_by)
    for name in fields:
        if name not in GROUP_BY_FIELDS:
            raise ValueError(f"cannot group by {name!r}; choose from {', '.join(GROUP_BY_FIELDS)}")
    if len(set(fields)) != len(fields):
        raise ValueError(f"group_by names a field more than once: {fields!r}")
    return tuple(name for name in GROUP_BY_FIELDS if name in fields)


def _validate_snapshots(snapshots: Iterable[SnapshotLike]) -> list[SnapshotLike]:
    result = list(snapshots)
    seen: set[str] = set()
    for snapshot in result:
        if snapshot.id in seen:
            raise ValueError(f"snapshot {snapshot.id} is listed more than once")
        seen.add(snapshot.id)
        if snapshot.time.utcoffset() is None:
            raise ValueError(f"snapshot {snapshot.id} has a time without a timezone")
        for name in ("paths", "tags"):
            if isinstance(getattr(snapshot, name), str):
                raise TypeError(f"snapshot {snapshot.id}: {name} must be a sequence, not a str")
    return result


def _group_key(snapshot: SnapshotLike, fields: tuple[str, ...]) -> dict[str, str | list[str]]:
    key: dict[str, str | list[str]] = {}
    for name in fields:
        key[name] = snapshot.hostname if name == "hostname" else sorted(getattr(snapshot, name))
    return key


def _hashable(key: dict[str, str | list[str]]) -> tuple[str | tuple[str, ...], ...]:
    return tuple(v if isinstance(v, str) else tuple(v) for v in key.values())


def _newest_first(snapshots: list[SnapshotLike]) -> list[SnapshotLike]:
    # Equal instants are ordered by id (ascending), so the result never depends on the
    # input order. Both sorts are stable.
    by_id = sorted(snapshots, key=lambda s: s.id)
    return sorted(by_id, key=_instant, reverse=True)


def _within_cutoff(
    ordered: list[SnapshotLike], within: timedelta | CalendarDuration, now: datetime | None
) -> datetime | None:
    """The UTC instant a snapshot must be strictly newer than; None keeps everything."""
    # restic: the anchor is the newest snapshot that is not in the future, so a snapshot
    # with a clock far ahead cannot drag the window past all the real ones.
    anchor = next(
        (s.time for s in ordered if now is None or _instant(s) < now.astimezone(UTC)), None
    )
    if anchor is None:
        return None
    if isinstance(within, timedelta):
        try:
            return anchor.astimezone(UTC) - within
        except OverflowError:
            return None
    return within.subtract_from(anchor)


def _plan_group(
    ordered: list[SnapshotLike], policy: KeepPolicy, now: datetime | None
) -> tuple[Decision, ...]:
    reasons: list[list[str]] = [[] for _ in ordered]

    for i in range(min(policy.last, len(ordered))):
        reasons[i].append(f"last-{i + 1}")

    for kind, bucket_of in _BUCKET_RULES:
        count: int = getattr(policy, kind)
        if count == 0:
            continue
        # Walking newest first, the first snapshot met in a bucket is its newest one; the
        # order in which buckets are first met is their recency.
        seen: set[_BucketKey] = set()
        for i, snapshot in enumerate(ordered):
            bucket = bucket_of(snapshot.time)
            if bucket in seen:
                continue
            seen.add(bucket)
            reasons[i].append(f"{kind}-{len(seen)}")
            if len(seen) == count:
                break

    if policy.tags:
        for i, snapshot in enumerate(ordered):
            reasons[i].extend(
                f"tag:{tag}" for tag in sorted(policy.tags.intersection(snapshot.tags))
            )

    if policy.within is not None:
        label = (
            _format_timedelta(policy.within)
            if isinstance(policy.within, timedelta)
            else str(policy.within)
        )
        cutoff = _within_cutoff(ordered, policy.within, now)
        for i, snapshot in enumerate(ordered):
            if cutoff is None or _instant(snapshot) > cutoff:
                reasons[i].append(f"within {label}")

    return tuple(
        Decision(snapshot=s, keep=bool(r), reasons=tuple(r))
        for s, r in zip(ordered, reasons, strict=True)
    )


def plan(
    snapshots: Iterable[SnapshotLike],
    policy: KeepPolicy,
    *,
    group_by: Iterable[str] = ("hostname", "paths"),
    now: datetime | None = None,
) -> list[Group]:
    """Apply ``policy`` to each group of ``snapshots``; nothing is read or written.

    Semantics follow restic's ``forget`` (restic documentation, "Removing snapshots
    according to a policy"):

    - Snapshots are split into groups by the ``group_by`` fields (any subset of
      GROUP_BY_FIELDS; empty means one group). Paths and tags are compared as sorted
      lists. Groups are returned sorted by key; the policy applies to each group alone.
    - Within a group snapshots are ordered newest first by instant; equal instants are
      ordered by id, ascending (the earlier id counts as the newer one).
    - ``last N`` keeps the N newest snapshots: ``last-1`` ... ``last-N``.
    - ``hourly/daily/weekly/monthly/yearly N``: a bucket is an hour (YYYY-MM-DD-HH), a
      day, an ISO week (ISO year + week number), a month or a year. The N most recent
      buckets that hold snapshots each keep their newest snapshot, labelled
      ``daily-1`` (newest bucket) ... ``daily-N``. Buckets are taken in the
      **timezone offset stored with each snapshot** (as restic does), not in UTC: a
      snapshot at 00:30+02:00 belongs to that local day even though it is the previous
      day in UTC; when DST ends, 02:30+02:00 and 02:15+01:00 share the hour bucket 02.
      A bucket's recency is the instant of its newest snapshot, so the newest snapshot
      of the group always gets ``<rule>-1`` for every rule that is set. Unlike restic
      0.17+, the oldest snapshot is not additionally kept when there are fewer buckets
      than N.
    - ``tags``: every snapshot carrying any of them is kept, one ``tag:<tag>`` each.
    - ``within``: every snapshot strictly newer than (anchor - within) is kept, with
      reason ``within <duration>``. The anchor is the newest snapshot of the group; with
      ``now`` given, the newest one strictly before ``now`` (restic ignores snapshots
      from the future here). If ``now`` is given and every snapshot is at or after it,
      all are kept. ``now`` is used for nothing else.

    Raises EmptyPolicyError (a ValueError) for an empty policy, which would forget
    every snapshot, and ValueError/TypeError for duplicate snapshot ids, naive times,
    a naive ``now`` or unknown ``group_by`` fields.
    """
    if policy.is_empty():
        raise EmptyPolicyError(
            "empty retention policy: refusing to forget every snapshot; "
            "set at least one keep rule (last, hourly, daily, weekly, monthly, yearly, "
            "within or tags)"
        )
    fields = _validate_group_by(group_by)
    if now is not None and now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    items = _validate_snapshots(snapshots)

    groups: dict[tuple[str | tuple[str, ...], ...], list[SnapshotLike]] = {}
    keys: dict[tuple[str | tuple[str, ...], ...], dict[str, str | list[str]]] = {}
    for snapshot in items:
        key = _group_key(snapshot, fields)
        hashable = _hashable(key)
        groups.setdefault(hashable, []).append(snapshot)
        keys.setdefault(hashable, key)

    return [
        Group(key=keys[k], decisions=_plan_group(_newest_first(groups[k]), policy, now))
        for k in sorted(groups)
    ]
