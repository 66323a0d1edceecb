"""Records are immutable snapshots; payloads are copied out; the clock never goes back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runcontrol_server.domain import MonotonicClock, RunDraft
from runcontrol_server.domain.model import canonical_json
from runcontrol_server.domain.rules import new_run


def test_record_is_frozen_and_payload_reads_are_copies() -> None:
    draft = RunDraft("r", "t", metadata_json=canonical_json({"a": {"b": [1, 2]}}))
    run = new_run(draft, datetime(2026, 1, 1, tzinfo=UTC), 1)
    with pytest.raises(AttributeError):
        run.status = run.status  # type: ignore[misc]
    with pytest.raises(AttributeError):
        run.extra = 1  # type: ignore[attr-defined]
    copy = run.metadata
    copy["a"]["b"].append(3)
    assert run.metadata == {"a": {"b": [1, 2]}}


def test_fingerprint_ignores_key_order_and_run_id() -> None:
    one = RunDraft("x", "t", metadata_json=canonical_json({"a": 1, "b": 2}))
    two = RunDraft("y", "t", metadata_json=canonical_json({"b": 2, "a": 1}))
    assert one.fingerprint() == two.fingerprint()
    assert one.fingerprint() != RunDraft("x", "t", timeout=timedelta(seconds=1)).fingerprint()


def test_clock_never_goes_backwards() -> None:
    readings = iter(
        [datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)]
    )
    clock = MonotonicClock(lambda: next(readings))
    first, second = clock.now(), clock.now()
    assert second == first


def test_clock_refuses_naive_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        MonotonicClock(lambda: datetime(2026, 1, 1)).now()


def test_inflight_is_truthy_exactly_when_the_thread_has_active_runs() -> None:
    from runcontrol_server.domain import Inflight

    assert not Inflight("t", (), 7)
    assert Inflight("t", ("r1",), 7)
