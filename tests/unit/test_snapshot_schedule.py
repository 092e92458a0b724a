"""The snapshot schedule within a phase visit: linear storage, a bounded tail to read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from phaseledger.store.eventstore import snapshot_wanted


@given(every=st.integers(1, 200), entered=st.integers(1, 10_000), visit=st.integers(0, 20_000))
def test_wanted_snapshots_are_few_and_the_tail_after_the_latest_stays_within_half_the_visit(
    every: int, entered: int, visit: int
) -> None:
    versions = [v for v in range(every, entered + visit + 1, every) if v >= entered]
    wanted = [v for v in versions if snapshot_wanted(v, entered, every)]
    assert [v for v in versions if v - entered < 2 * every] == [v for v in wanted if v - entered < 2 * every]
    # Storage: the visit's snapshots hold at most about 4x the visit's events in all.
    assert sum(v - entered for v in wanted) <= 4 * visit + 2 * every
    # Resume: the latest wanted snapshot is never more than half the visit (plus one interval) behind.
    for v in versions:
        latest = max((w for w in wanted if w <= v), default=entered)
        assert v - latest <= max(every, (v - entered) // 2 + every)


def test_short_visits_keep_one_snapshot_every_interval() -> None:
    assert all(snapshot_wanted(v, 7, 10) for v in (10, 20))
    assert [v for v in range(10, 400, 10) if snapshot_wanted(v, 7, 10)] == [10, 20, 30, 50, 90, 170, 330]
