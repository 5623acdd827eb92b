"""Tests for the pure retention planner (stackvault.repo.retention)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackvault.repo.retention import (
    CalendarDuration,
    EmptyPolicyError,
    Group,
    KeepPolicy,
    SnapshotLike,
    parse_duration,
    plan,
)


@dataclass(frozen=True)
class Snap:
    id: str
    time: datetime
    tags: tuple[str, ...] = ()
    hostname: str = "host-a"
    paths: tuple[str, ...] = ("/data",)


def tz(hours: float) -> timezone:
    return timezone(timedelta(hours=hours))


def kept(groups: list[Group]) -> dict[str, tuple[str, ...]]:
    """id -> reasons of every kept snapshot, over all groups."""
    return {d.snapshot.id: d.reasons for g in groups for d in g.decisions if d.keep}


def one_group(groups: list[Group]) -> Group:
    assert len(groups) == 1
    return groups[0]


# --- synthetic series: one snapshot every 6 hours for 400 days ---------------------------
#
# Day 0 is Sunday 2023-01-01 (ISO week 2022-W52), day 399 is Sunday 2024-02-04. Slots are
# at 00, 06, 12 and 18 h UTC plus seeded jitter inside the hour, so every snapshot has its
# own hour bucket and slot 3 is the newest of its day.

START = date(2023, 1, 1)
DAYS = 400
SLOTS = 4


def _series() -> tuple[Snap, ...]:
    rng = random.Random(0x5EED)
    snaps = []
    for day in range(DAYS):
        d = START + timedelta(days=day)
        for slot in range(SLOTS):
            t = datetime(d.year, d.month, d.day, 6 * slot, tzinfo=UTC)
            t += timedelta(minutes=rng.randrange(60), seconds=rng.randrange(60))
            snaps.append(Snap(id=f"{day:03d}.{slot}", time=t))
    return tuple(snaps)


SERIES = _series()
NEWEST_DAY = date(2024, 2, 4)


def sid(d: date, slot: int = 3) -> str:
    return f"{(d - START).days:03d}.{slot}"


def days_back(n: int) -> date:
    return NEWEST_DAY - timedelta(days=n)


def test_series_shape() -> None:
    assert len(SERIES) == 1600
    assert START + timedelta(days=DAYS - 1) == NEWEST_DAY
    assert NEWEST_DAY.isoweekday() == 7
    assert max(SERIES, key=lambda s: s.time).id == sid(NEWEST_DAY, 3)


def test_keep_last() -> None:
    group = one_group(plan(SERIES, KeepPolicy(last=5)))
    assert kept([group]) == {
        sid(NEWEST_DAY, 3): ("last-1",),
        sid(NEWEST_DAY, 2): ("last-2",),
        sid(NEWEST_DAY, 1): ("last-3",),
        sid(NEWEST_DAY, 0): ("last-4",),
        sid(days_back(1), 3): ("last-5",),
    }
    assert len(group.decisions) == 1600
    assert len(group.remove) == 1595
    assert [s.id for s in group.keep][:2] == [sid(NEWEST_DAY, 3), sid(NEWEST_DAY, 2)]


def test_keep_hourly() -> None:
    result = kept(plan(SERIES, KeepPolicy(hourly=6)))
    newest_six = [sid(NEWEST_DAY, s) for s in (3, 2, 1, 0)] + [sid(days_back(1), s) for s in (3, 2)]
    assert result == {i: (f"hourly-{n}",) for n, i in enumerate(newest_six, 1)}


def test_keep_daily() -> None:
    result = kept(plan(SERIES, KeepPolicy(daily=7)))
    assert result == {sid(days_back(k)): (f"daily-{k + 1}",) for k in range(7)}


def test_keep_weekly_newest_of_each_iso_week() -> None:
    result = kept(plan(SERIES, KeepPolicy(weekly=5)))
    sundays = [date(2024, 2, 4), date(2024, 1, 28), date(2024, 1, 21), date(2024, 1, 14)]
    sundays.append(date(2024, 1, 7))
    assert result == {sid(d): (f"weekly-{n}",) for n, d in enumerate(sundays, 1)}


def test_keep_weekly_more_than_available() -> None:
    result = kept(plan(SERIES, KeepPolicy(weekly=1000)))
    # 57 full Monday-Sunday weeks plus the lone Sunday 2023-01-01, which is ISO 2022-W52.
    assert len(result) == 58
    assert result[sid(date(2023, 1, 1))] == ("weekly-58",)
    assert all(id_.endswith(".3") for id_ in result)
    assert all((START + timedelta(days=int(i[:3]))).isoweekday() == 7 for i in result)


def test_keep_monthly() -> None:
    result = kept(plan(SERIES, KeepPolicy(monthly=4)))
    ends = [date(2024, 2, 4), date(2024, 1, 31), date(2023, 12, 31), date(2023, 11, 30)]
    assert result == {sid(d): (f"monthly-{n}",) for n, d in enumerate(ends, 1)}


def test_keep_yearly_fewer_buckets_than_requested() -> None:
    result = kept(plan(SERIES, KeepPolicy(yearly=5)))
    assert result == {sid(NEWEST_DAY): ("yearly-1",), sid(date(2023, 12, 31)): ("yearly-2",)}


def test_combined_rules_list_every_reason() -> None:
    policy = KeepPolicy(last=2, hourly=3, daily=4, weekly=3, monthly=3, yearly=2)
    group = one_group(plan(SERIES, policy))
    assert kept([group]) == {
        sid(NEWEST_DAY, 3): ("last-1", "hourly-1", "daily-1", "weekly-1", "monthly-1", "yearly-1"),
        sid(NEWEST_DAY, 2): ("last-2", "hourly-2"),
        sid(NEWEST_DAY, 1): ("hourly-3",),
        sid(days_back(1)): ("daily-2",),
        sid(days_back(2)): ("daily-3",),
        sid(days_back(3)): ("daily-4",),
        sid(date(2024, 1, 31)): ("monthly-2",),
        sid(date(2024, 1, 28)): ("weekly-2",),
        sid(date(2024, 1, 21)): ("weekly-3",),
        sid(date(2023, 12, 31)): ("monthly-3", "yearly-2"),
    }
    times = [d.snapshot.time for d in group.decisions]
    assert times == sorted(times, reverse=True)
    assert all(d.reasons == () for d in group.decisions if not d.keep)


def test_reason_order_across_rule_kinds() -> None:
    snaps = [
        Snap("new", datetime(2024, 5, 10, 12, tzinfo=UTC), tags=("release",)),
        Snap("old", datetime(2024, 5, 1, 12, tzinfo=UTC), tags=("release",)),
    ]
    policy = KeepPolicy(last=1, daily=1, within=timedelta(days=7), tags=frozenset({"release"}))
    assert kept(plan(snaps, policy)) == {
        "new": ("last-1", "daily-1", "tag:release", "within 7d"),
        "old": ("tag:release",),
    }


# --- ties and ordering --------------------------------------------------------------------


def test_newest_in_bucket_wins_regardless_of_input_order() -> None:
    day = [
        Snap("morning", datetime(2024, 5, 10, 9, tzinfo=UTC)),
        Snap("night", datetime(2024, 5, 10, 23, 59, tzinfo=UTC)),
        Snap("noon", datetime(2024, 5, 10, 12, tzinfo=UTC)),
        Snap("yesterday", datetime(2024, 5, 9, 23, 59, 59, tzinfo=UTC)),
    ]
    for perm in itertools.permutations(day):
        assert kept(plan(perm, KeepPolicy(daily=2))) == {
            "night": ("daily-1",),
            "yesterday": ("daily-2",),
        }


def test_equal_times_are_ordered_by_id() -> None:
    t = datetime(2024, 5, 10, 12, tzinfo=UTC)
    snaps = [Snap("c", t), Snap("a", t), Snap("b", t), Snap("z", t - timedelta(hours=1))]
    for perm in itertools.permutations(snaps):
        group = one_group(plan(perm, KeepPolicy(last=1, hourly=2)))
        assert [d.snapshot.id for d in group.decisions] == ["a", "b", "c", "z"]
        assert kept([group]) == {"a": ("last-1", "hourly-1"), "z": ("hourly-2",)}


# --- groups -------------------------------------------------------------------------------


def _grouping_fixture() -> list[Snap]:
    t = datetime(2024, 5, 10, 12, tzinfo=UTC)
    h = timedelta(hours=1)
    return [
        Snap("a-x-1", t, hostname="a", paths=("/x",), tags=("db",)),
        Snap("a-x-2", t - h, hostname="a", paths=("/x",)),
        Snap("b-x-1", t - 2 * h, hostname="b", paths=("/x",), tags=("db",)),
        Snap("a-xy-1", t - 3 * h, hostname="a", paths=("/y", "/x")),
        Snap("a-xy-2", t - 4 * h, hostname="a", paths=("/x", "/y")),
    ]


def test_groups_split_by_host_and_paths() -> None:
    groups = plan(_grouping_fixture(), KeepPolicy(last=1))
    assert [g.key for g in groups] == [
        {"hostname": "a", "paths": ["/x"]},
        {"hostname": "a", "paths": ["/x", "/y"]},
        {"hostname": "b", "paths": ["/x"]},
    ]
    assert [[s.id for s in g.keep] for g in groups] == [["a-x-1"], ["a-xy-1"], ["b-x-1"]]
    assert [[s.id for s in g.remove] for g in groups] == [["a-x-2"], ["a-xy-2"], []]


def test_group_by_field_order_is_canonical() -> None:
    a = plan(_grouping_fixture(), KeepPolicy(last=1), group_by=("paths", "hostname"))
    b = plan(_grouping_fixture(), KeepPolicy(last=1), group_by=["hostname", "paths"])
    assert a == b
    assert list(a[0].key) == ["hostname", "paths"]


@pytest.mark.parametrize(
    ("group_by", "keys", "kept_ids"),
    [
        ((), [{}], {"a-x-1"}),
        (("hostname",), [{"hostname": "a"}, {"hostname": "b"}], {"a-x-1", "b-x-1"}),
        (("paths",), [{"paths": ["/x"]}, {"paths": ["/x", "/y"]}], {"a-x-1", "a-xy-1"}),
        (("tags",), [{"tags": []}, {"tags": ["db"]}], {"a-x-2", "a-x-1"}),
        (
            ("hostname", "tags"),
            [{"hostname": "a", "tags": []}, {"hostname": "a", "tags": ["db"]}]
            + [{"hostname": "b", "tags": ["db"]}],
            {"a-x-2", "a-x-1", "b-x-1"},
        ),
    ],
)
def test_group_by_subsets(
    group_by: tuple[str, ...], keys: list[dict[str, object]], kept_ids: set[str]
) -> None:
    groups = plan(_grouping_fixture(), KeepPolicy(last=1), group_by=group_by)
    assert [g.key for g in groups] == keys
    assert set(kept(groups)) == kept_ids


@pytest.mark.parametrize(
    ("group_by", "error"),
    [
        (("host",), ValueError),
        (("hostname", "hostname"), ValueError),
        ("hostname", TypeError),
    ],
)
def test_group_by_rejects_bad_fields(group_by: Iterable[str], error: type[Exception]) -> None:
    with pytest.raises(error):
        plan(_grouping_fixture(), KeepPolicy(last=1), group_by=group_by)


# --- keep-within ----------------------------------------------------------------------------


ANCHOR = datetime(2024, 6, 15, 12, tzinfo=UTC)


def _around(cutoff: datetime) -> list[Snap]:
    s = timedelta(seconds=1)
    return [
        Snap("anchor", ANCHOR),
        Snap("inside", cutoff + s),
        Snap("boundary", cutoff),
        Snap("outside", cutoff - s),
    ]


@pytest.mark.parametrize("within", [timedelta(days=7), parse_duration("7d")])
def test_within_boundary_is_exclusive(within: timedelta | CalendarDuration) -> None:
    result = kept(plan(_around(ANCHOR - timedelta(days=7)), KeepPolicy(within=within)))
    assert result == {"anchor": ("within 7d",), "inside": ("within 7d",)}


def test_within_calendar_components() -> None:
    cutoff = datetime(2023, 4, 12, 8, tzinfo=UTC)  # 2024-06-15 12:00 - 1y2m3d, then - 4h
    result = kept(plan(_around(cutoff), KeepPolicy(within=parse_duration("1y2m3d4h"))))
    assert set(result) == {"anchor", "inside"}
    assert result["inside"] == ("within 1y2m3d4h",)


def test_within_month_overflow_rolls_over_like_restic() -> None:
    # restic uses Go's AddDate: 2024-03-31 minus one month is "2024-02-31" = 2024-03-02.
    anchor = datetime(2024, 3, 31, 12, tzinfo=UTC)
    snaps = [
        Snap("anchor", anchor),
        Snap("mar02-late", datetime(2024, 3, 2, 12, 0, 1, tzinfo=UTC)),
        Snap("mar02-boundary", datetime(2024, 3, 2, 12, tzinfo=UTC)),
        Snap("feb29", datetime(2024, 2, 29, 13, tzinfo=UTC)),
    ]
    assert set(kept(plan(snaps, KeepPolicy(within=parse_duration("1m"))))) == {
        "anchor",
        "mar02-late",
    }


def test_within_is_relative_to_newest_snapshot_not_clock() -> None:
    # Years old, yet both kept: the window hangs from the newest snapshot, not today.
    snaps = [
        Snap("new", datetime(2020, 1, 10, tzinfo=UTC)),
        Snap("old", datetime(2020, 1, 1, tzinfo=UTC)),
    ]
    assert set(kept(plan(snaps, KeepPolicy(within=timedelta(days=30))))) == {"new", "old"}


def test_within_now_ignores_future_snapshots() -> None:
    snaps = [
        Snap("future", ANCHOR + timedelta(days=30)),
        Snap("present", ANCHOR),
        Snap("last-week", ANCHOR - timedelta(days=6)),
        Snap("old", ANCHOR - timedelta(days=8)),
    ]
    policy = KeepPolicy(within=timedelta(days=7))
    # Without now, the skewed snapshot is the anchor and everything real looks old.
    assert set(kept(plan(snaps, policy))) == {"future"}
    now = ANCHOR + timedelta(hours=1)
    assert set(kept(plan(snaps, policy, now=now))) == {"future", "present", "last-week"}
    # Every snapshot at or after now: there is no anchor and nothing is forgotten.
    assert set(kept(plan(snaps, policy, now=ANCHOR - timedelta(days=9)))) == {s.id for s in snaps}


def test_within_huge_duration_keeps_everything() -> None:
    result = kept(plan(SERIES, KeepPolicy(within=parse_duration("9999y"))))
    assert len(result) == len(SERIES)


@pytest.mark.parametrize(
    ("within", "label"),
    [
        (timedelta(hours=36), "1d12h"),
        (timedelta(days=2), "2d"),
        (timedelta(hours=5), "5h"),
        (timedelta(minutes=90), "1:30:00"),
        (parse_duration("4h1y"), "1y4h"),
    ],
)
def test_within_reason_label(within: timedelta | CalendarDuration, label: str) -> None:
    result = kept(plan([Snap("only", ANCHOR)], KeepPolicy(within=within)))
    assert result == {"only": (f"within {label}",)}


# --- keep-tag -----------------------------------------------------------------------------


def test_keep_tag_any_of() -> None:
    t = ANCHOR
    h = timedelta(hours=1)
    snaps = [
        Snap("newest", t),
        Snap("release", t - h, tags=("release",)),
        Snap("both", t - 2 * h, tags=("release", "pinned", "nightly")),
        Snap("other", t - 3 * h, tags=("nightly",)),
        Snap("untagged", t - 4 * h),
        Snap("prefix", t - 5 * h, tags=("release-candidate",)),
    ]
    policy = KeepPolicy(tags=frozenset({"release", "pinned"}))
    assert kept(plan(snaps, policy)) == {
        "release": ("tag:release",),
        "both": ("tag:pinned", "tag:release"),
    }


def test_keep_tag_accepts_any_iterable() -> None:
    assert KeepPolicy(tags=["a", "b", "a"]).tags == frozenset({"a", "b"})  # type: ignore[arg-type]


# --- timezones and DST --------------------------------------------------------------------


def test_buckets_use_each_snapshots_own_offset() -> None:
    snaps = [
        # 2024-03-10 23:30 in New York (EDT starts later that night): 2024-03-11 04:30 UTC.
        Snap("ny-late", datetime(2024, 3, 10, 23, 30, tzinfo=tz(-5))),
        Snap("utc-early", datetime(2024, 3, 11, 1, tzinfo=UTC)),
    ]
    # Bucketed in UTC both would be 2024-03-11 and only ny-late would be kept.
    assert kept(plan(snaps, KeepPolicy(daily=2))) == {
        "ny-late": ("daily-1",),
        "utc-early": ("daily-2",),
    }


def test_dst_fall_back_repeated_hour_is_one_bucket() -> None:
    snaps = [
        Snap("cest-0230", datetime(2024, 10, 27, 2, 30, tzinfo=tz(2))),  # 00:30 UTC
        Snap("cet-0215", datetime(2024, 10, 27, 2, 15, tzinfo=tz(1))),  # 01:15 UTC
        Snap("cest-0145", datetime(2024, 10, 27, 1, 45, tzinfo=tz(2))),  # 23:45 UTC
    ]
    assert kept(plan(snaps, KeepPolicy(last=1, hourly=2))) == {
        "cet-0215": ("last-1", "hourly-1"),
        "cest-0145": ("hourly-2",),
    }


@pytest.fixture
def berlin() -> tzinfo:
    try:
        return ZoneInfo("Europe/Berlin")
    except ZoneInfoNotFoundError:
        pytest.skip("no tz database on this machine")


def test_zoneinfo_times_are_ordered_by_instant_not_wall_clock(berlin: tzinfo) -> None:
    first = datetime(2024, 10, 27, 2, 30, tzinfo=berlin, fold=0)  # CEST, 00:30 UTC
    second = datetime(2024, 10, 27, 2, 15, tzinfo=berlin, fold=1)  # CET, 01:15 UTC
    assert first > second  # Python's same-zone comparison ignores fold...
    snaps = [Snap("first", first), Snap("second", second)]
    # ...but the planner orders by instant; both are in wall-clock hour 02.
    assert kept(plan(snaps, KeepPolicy(last=1, hourly=5))) == {"second": ("last-1", "hourly-1")}


def test_within_days_move_wall_clock_hours_are_elapsed(berlin: tzinfo) -> None:
    anchor = datetime(2024, 3, 31, 12, tzinfo=berlin)  # CEST, 10:00 UTC; DST began 02:00
    snaps = [
        Snap("anchor", anchor),
        Snap("u1130", datetime(2024, 3, 30, 11, 30, tzinfo=UTC)),
        Snap("u1030", datetime(2024, 3, 30, 10, 30, tzinfo=UTC)),
    ]
    # "1d" is one calendar day back on the wall clock: 2024-03-30 12:00 CET = 11:00 UTC,
    # only 23 h earlier; a timedelta of one day is 24 h of elapsed time.
    assert set(kept(plan(snaps, KeepPolicy(within=parse_duration("1d"))))) == {"anchor", "u1130"}
    assert set(kept(plan(snaps, KeepPolicy(within=timedelta(days=1))))) == {s.id for s in snaps}

    early = datetime(2024, 3, 31, 4, tzinfo=berlin)  # CEST, 02:00 UTC
    snaps = [
        Snap("anchor", early),
        Snap("u2330", datetime(2024, 3, 30, 23, 30, tzinfo=UTC)),  # 00:30 CET
        Snap("u2230", datetime(2024, 3, 30, 22, 30, tzinfo=UTC)),  # 23:30 CET
    ]
    # "3h" is 3 h of elapsed time (cutoff 23:00 UTC), not 04:00 - 3 = 01:00 on the wall.
    assert set(kept(plan(snaps, KeepPolicy(within=parse_duration("3h"))))) == {"anchor", "u2330"}


def test_mixed_offsets_count_each_bucket_once() -> None:
    snaps = [
        Snap("b", datetime(2024, 1, 1, 23, 30, tzinfo=UTC)),  # newest instant, day 01-01
        Snap("a", datetime(2024, 1, 2, 0, 30, tzinfo=tz(2))),  # 22:30 UTC, day 01-02
        Snap("c", datetime(2024, 1, 1, 20, tzinfo=UTC)),  # day 01-01 again
    ]
    assert kept(plan(snaps, KeepPolicy(daily=3))) == {"b": ("daily-1",), "a": ("daily-2",)}


def test_iso_week_and_calendar_year_differ_at_new_year() -> None:
    snaps = [
        Snap("wed-2025-01-01", datetime(2025, 1, 1, 12, tzinfo=UTC)),  # 2025-W01
        Snap("mon-2024-12-30", datetime(2024, 12, 30, 12, tzinfo=UTC)),  # 2025-W01
        Snap("sun-2024-12-29", datetime(2024, 12, 29, 12, tzinfo=UTC)),  # 2024-W52
    ]
    assert kept(plan(snaps, KeepPolicy(weekly=2))) == {
        "wed-2025-01-01": ("weekly-1",),
        "sun-2024-12-29": ("weekly-2",),
    }
    assert kept(plan(snaps, KeepPolicy(yearly=2))) == {
        "wed-2025-01-01": ("yearly-1",),
        "mon-2024-12-30": ("yearly-2",),
    }


# --- policy validation --------------------------------------------------------------------


def test_empty_policy_is_refused() -> None:
    assert KeepPolicy().is_empty()
    for snaps in (SERIES, ()):
        with pytest.raises(EmptyPolicyError, match="refusing to forget every snapshot"):
            plan(snaps, KeepPolicy())
    assert issubclass(EmptyPolicyError, ValueError)


@pytest.mark.parametrize(
    "policy",
    [
        KeepPolicy(last=1),
        KeepPolicy(yearly=1),
        KeepPolicy(within=timedelta(hours=1)),
        KeepPolicy(within=parse_duration("1m")),
        KeepPolicy(tags=frozenset({"x"})),
    ],
)
def test_any_single_rule_makes_policy_non_empty(policy: KeepPolicy) -> None:
    assert not policy.is_empty()


@pytest.mark.parametrize("name", ["last", "hourly", "daily", "weekly", "monthly", "yearly"])
def test_negative_counts_rejected(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must not be negative"):
        KeepPolicy(**{name: -1})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        KeepPolicy(**{name: True})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"within": timedelta(0)}, ValueError),
        ({"within": timedelta(hours=-1)}, ValueError),
        ({"within": CalendarDuration()}, ValueError),
        ({"within": "7d"}, TypeError),
        ({"tags": "release"}, TypeError),
        ({"tags": frozenset({""})}, ValueError),
    ],
)
def test_bad_policy_values_rejected(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        KeepPolicy(**kwargs)  # type: ignore[arg-type]


def test_bad_snapshots_rejected() -> None:
    t = ANCHOR
    with pytest.raises(ValueError, match="more than once"):
        plan([Snap("x", t), Snap("x", t - timedelta(hours=1))], KeepPolicy(last=1))
    with pytest.raises(ValueError, match="without a timezone"):
        plan([Snap("x", datetime(2024, 1, 1))], KeepPolicy(last=1))
    with pytest.raises(ValueError, match="now"):
        plan([Snap("x", t)], KeepPolicy(last=1), now=datetime(2024, 1, 1))
    with pytest.raises(TypeError, match="paths"):
        plan([Snap("x", t, paths="/x")], KeepPolicy(last=1))  # type: ignore[arg-type]
    assert plan([], KeepPolicy(last=1)) == []


# --- parse_duration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1y2m3d4h", CalendarDuration(1, 2, 3, 4)),
        ("30d", CalendarDuration(days=30)),
        ("36h", CalendarDuration(hours=36)),
        ("4h1y", CalendarDuration(years=1, hours=4)),
        ("0y5d", CalendarDuration(days=5)),
        ("007d", CalendarDuration(days=7)),
        ("18m", CalendarDuration(months=18)),
    ],
)
def test_parse_duration_valid(text: str, expected: CalendarDuration) -> None:
    assert parse_duration(text) == expected


def test_parse_duration_round_trips_canonical_form() -> None:
    for text in ("1y2m3d4h", "5d", "2m12h", "10y"):
        assert str(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration"),
        ("5", "no unit"),
        ("1y2", "no unit"),
        ("d", "expected a number"),
        ("1w", "unknown unit"),
        ("1M", "unknown unit 'M'"),
        ("1s", "unknown unit"),
        ("-1d", "expected a number"),
        ("1d1d", "more than once"),
        ("0d", "longer than zero"),
        ("0y0h", "longer than zero"),
        ("1.5d", "unknown unit '.' after 1"),
        (" 1d", "expected a number"),
        ("1d ", "expected a number"),
        ("1 d", "unknown unit ' ' after 1"),
        ("\u00b2d", "expected a number"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_parse_duration_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        parse_duration(7)  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------

BASE = datetime(2023, 1, 1, tzinfo=UTC)
OFFSETS = [UTC, tz(2), tz(-5), tz(5.75), tz(-12), tz(14)]

snapshot_fields = st.tuples(
    # Mostly spread over ~2 years, sometimes crowded into two days (bucket collisions).
    st.one_of(st.integers(0, 48), st.integers(0, 24 * 800)),
    st.sampled_from([0, 0, 30, 59]),  # minutes; repeats make equal instants likely
    st.sampled_from(OFFSETS),
    st.sampled_from(["a", "b"]),
    st.sampled_from([("/x",), ("/y",), ("/x", "/y")]),
    st.frozensets(st.sampled_from(["x", "y", "z"]), max_size=2),
)


Fields = tuple[int, int, timezone, str, tuple[str, ...], frozenset[str]]


def build(fields: list[Fields]) -> list[Snap]:
    return [
        Snap(
            id=f"s{i:03d}",
            time=(BASE + timedelta(hours=h, minutes=m)).astimezone(offset),
            hostname=host,
            paths=paths,
            tags=tuple(sorted(tags)),
        )
        for i, (h, m, offset, host, paths, tags) in enumerate(fields)
    ]


policies = st.builds(
    KeepPolicy,
    last=st.integers(0, 4),
    hourly=st.integers(0, 4),
    daily=st.integers(0, 4),
    weekly=st.integers(0, 3),
    monthly=st.integers(0, 3),
    yearly=st.integers(0, 2),
    within=st.one_of(
        st.none(),
        st.integers(1, 24 * 400).map(lambda h: timedelta(hours=h)),
        st.builds(
            CalendarDuration,
            years=st.integers(0, 1),
            months=st.integers(0, 13),
            days=st.integers(0, 40),
            hours=st.integers(1, 30),
        ),
    ),
    tags=st.frozensets(st.sampled_from(["x", "y"]), max_size=1),
).filter(lambda p: not p.is_empty())

group_bys = st.sampled_from(
    [(), ("hostname",), ("paths",), ("tags",), ("hostname", "paths"), ("hostname", "paths", "tags")]
)

BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


FAST = settings(max_examples=150, deadline=None)


S = TypeVar("S", bound=SnapshotLike)


def newest_first(snaps: Iterable[S]) -> list[S]:
    return sorted(snaps, key=lambda s: (-s.time.timestamp(), s.id))


def summary(groups: list[Group]) -> list[tuple[object, list[tuple[str, bool, tuple[str, ...]]]]]:
    return [(g.key, [(d.snapshot.id, d.keep, d.reasons) for d in g.decisions]) for g in groups]


@FAST
@given(
    fields=st.lists(snapshot_fields, max_size=30),
    policy=policies,
    group_by=group_bys,
    rng=st.randoms(use_true_random=False),
)
def test_properties(
    fields: list[Fields], policy: KeepPolicy, group_by: tuple[str, ...], rng: random.Random
) -> None:
    snaps = build(fields)
    groups = plan(snaps, policy, group_by=group_by)

    # Every snapshot is decided exactly once.
    decided = [d.snapshot.id for g in groups for d in g.decisions]
    assert sorted(decided) == sorted(s.id for s in snaps)

    for group in groups:
        ordered = [d.snapshot for d in group.decisions]
        assert ordered == newest_first(ordered)
        kept_ids = {s.id for s in group.keep}

        # Kept ones have reasons, removed ones have none.
        for d in group.decisions:
            assert d.keep == bool(d.reasons)

        # Superset of `last N` newest.
        assert {s.id for s in ordered[: policy.last]} <= kept_ids

        # Bucket rules: ordinals 1..k, k <= N, one per bucket, newest of its bucket.
        for kind, bucket in BUCKETS.items():
            labelled = [
                (d.snapshot, r)
                for d in group.decisions
                for r in d.reasons
                if r.startswith(f"{kind}-")
            ]
            count = getattr(policy, kind)
            n_buckets = len({bucket(s.time) for s in ordered})
            assert [r for _, r in labelled] == [f"{kind}-{n}" for n in range(1, len(labelled) + 1)]
            assert len(labelled) == min(count, n_buckets)
            keys = [bucket(s.time) for s, _ in labelled]
            assert len(set(keys)) == len(keys)
            for s, _ in labelled:
                same = [o for o in ordered if bucket(o.time) == bucket(s.time)]
                assert s == same[0]

        # keep-within covers a prefix of the newest-first order, starting at the newest.
        within = [any(r.startswith("within ") for r in d.reasons) for d in group.decisions]
        assert within == sorted(within, reverse=True)
        if policy.within is not None:
            assert within[0]

        # keep-tag: exactly the snapshots with a matching tag carry tag reasons.
        for d in group.decisions:
            tag_reasons = {r[4:] for r in d.reasons if r.startswith("tag:")}
            assert tag_reasons == policy.tags & set(d.snapshot.tags)

    # Deterministic and independent of input order.
    shuffled = list(snaps)
    rng.shuffle(shuffled)
    assert summary(plan(shuffled, policy, group_by=group_by)) == summary(groups)
    assert summary(plan(snaps, policy, group_by=group_by)) == summary(groups)


def restic_bucket_loop(
    ordered: list[Snap], count: int, bucket: Callable[[datetime], tuple[int, ...]]
) -> list[str]:
    """restic's ApplyPolicy loop for one bucket rule, without 0.17's keep-oldest extra."""
    kept_ids: list[str] = []
    last: tuple[int, ...] | None = None
    for snap in ordered:
        if count == 0:
            break
        value = bucket(snap.time)
        if value != last:
            kept_ids.append(snap.id)
            last = value
            count -= 1
    return kept_ids


@FAST
@given(
    fields=st.lists(snapshot_fields, max_size=30),
    offset=st.sampled_from(OFFSETS),
    counts=st.tuples(*[st.integers(1, 5)] * 5),
)
def test_matches_restic_loop_for_single_offset(
    fields: list[Fields], offset: timezone, counts: tuple[int, int, int, int, int]
) -> None:
    # With one fixed offset, buckets are contiguous in time and restic's "value changed"
    # loop and the planner's "N most recent distinct buckets" must agree exactly.
    snaps = [Snap(s.id, s.time.astimezone(offset)) for s in build(fields)]
    hourly, daily, weekly, monthly, yearly = counts
    policy = KeepPolicy(hourly=hourly, daily=daily, weekly=weekly, monthly=monthly, yearly=yearly)
    decisions = one_group(plan(snaps, policy, group_by=())).decisions if snaps else ()
    ordered = newest_first(snaps)
    for (kind, bucket), count in zip(BUCKETS.items(), counts, strict=True):
        ours = [
            d.snapshot.id for d in decisions if any(r.startswith(f"{kind}-") for r in d.reasons)
        ]
        assert ours == restic_bucket_loop(ordered, count, bucket)
