"""The monitor's watermark (each capture object read once, late ones included) and its drift counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bayroute.monitoring.state import (
    VISIBILITY_GRACE,
    CaptureObject,
    MonitorState,
    StateFormatError,
)

T0 = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)


def obj(key: str, minutes: float) -> CaptureObject:
    return CaptureObject(key=key, last_modified=T0 + timedelta(minutes=minutes))


def test_a_fresh_state_reads_everything_oldest_first() -> None:
    state = MonitorState()
    fresh = state.new_objects([obj("b", 2), obj("a", 2), obj("c", 1)])
    assert [o.key for o in fresh] == ["c", "a", "b"]


def test_each_object_is_read_once_across_passes() -> None:
    state = MonitorState()
    first = [obj("a", 0), obj("b", 1)]
    state.mark_read(state.new_objects(first))
    listing = [*first, obj("c", 2)]
    second = state.new_objects(listing)
    assert [o.key for o in second] == ["c"]
    state.mark_read(second)
    assert state.new_objects(listing) == []
    assert state.cursor == T0 + timedelta(minutes=2)


def test_an_object_that_shows_up_late_within_the_grace_is_still_read() -> None:
    state = MonitorState()
    state.mark_read(state.new_objects([obj("a", 0), obj("b", 10)]))
    # An upload that started at minute 5 became visible only after the pass that read b.
    late = obj("late", 5)
    assert state.new_objects([obj("a", 0), obj("b", 10), late]) == [late]


def test_seen_keys_are_forgotten_once_the_grace_has_passed_them() -> None:
    state = MonitorState()
    state.mark_read([obj("old", 0)])
    state.mark_read([obj("new", VISIBILITY_GRACE.total_seconds() / 60 + 1)])
    assert set(state.seen) == {"new"}
    # ...and a listing that still returns the old object does not read it again: it is older than the grace.
    assert state.new_objects([obj("old", 0)]) == []


def test_a_pass_that_reads_only_part_of_the_new_objects_leaves_the_rest_for_the_next() -> None:
    state = MonitorState()
    listing = [obj(f"k{i}", i) for i in range(5)]
    batch = state.new_objects(listing)[:2]
    state.mark_read(batch)
    assert [o.key for o in state.new_objects(listing)] == ["k2", "k3", "k4"]


def test_the_state_survives_its_storage_form() -> None:
    state = MonitorState()
    state.mark_read([obj("a", 0), obj("b", 3)])
    state.add_drift_counts("ep|v1", T0, {"confidence": [1, 2, 3]})
    again = MonitorState.from_json(state.to_json(), etag='"e1"')
    assert (again.cursor, again.seen, again.drift, again.etag) == (state.cursor, state.seen, state.drift, '"e1"')


@pytest.mark.parametrize("text", ['{"version": 99}', "[1, 2]", "not json", '{"version": 1, "seen": {"k": "when"}}'])
def test_a_state_this_code_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(StateFormatError):
        MonitorState.from_json(text, etag=None)


def test_drift_counts_add_up_over_the_horizon_and_old_windows_are_pruned() -> None:
    state = MonitorState()
    state.add_drift_counts("s", T0, {"brightness": [1, 1], "contrast": [2, 0]})
    state.add_drift_counts("s", T0, {"brightness": [0, 3]})
    state.add_drift_counts("s", T0 + timedelta(hours=1), {"brightness": [5, 0]})
    assert state.drift_totals("s", since=T0) == {"brightness": [6, 4], "contrast": [2, 0]}
    assert state.drift_totals("s", since=T0 + timedelta(minutes=1)) == {"brightness": [5, 0]}
    assert state.drift_totals("other", since=T0) == {}
    state.prune_drift(before=T0 + timedelta(minutes=30))
    assert state.drift_totals("s", since=T0) == {"brightness": [5, 0]}
    state.prune_drift(before=T0 + timedelta(hours=2))
    assert state.drift == {}


def test_counts_on_other_bins_replace_the_old_ones_of_that_feature() -> None:
    state = MonitorState()
    state.add_drift_counts("s", T0, {"brightness": [1, 1], "contrast": [1, 1]})
    state.add_drift_counts("s", T0 + timedelta(minutes=1), {"brightness": [1, 1, 1]})
    assert state.drift_totals("s", since=T0) == {"brightness": [1, 1, 1], "contrast": [1, 1]}
