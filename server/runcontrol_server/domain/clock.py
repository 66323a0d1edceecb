"""Time for the domain: UTC, microsecond precision, never going backwards."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime


class MonotonicClock:
    """Wall-clock UTC time that never goes backwards within one store.

    Runs are listed by (created_at, create_revision); a store that reads the clock
    and takes a revision in the same atomic step then lists in revision order too,
    even when the system clock steps back. Microsecond precision is what every store
    (PostgreSQL timestamptz included) keeps, so a record reads back exactly as written.
    """

    def __init__(self, source: Callable[[], datetime] | None = None) -> None:
        # A partial, not a lambda: one Python frame less on every write.
        self._source = source or functools.partial(datetime.now, UTC)
        self._last = datetime.min.replace(tzinfo=UTC)

    def now(self) -> datetime:
        current = self._source()
        if current.tzinfo is not UTC:  # the default source's answer needs no conversion
            if current.tzinfo is None:
                raise ValueError("clock source must return an aware datetime")
            current = current.astimezone(UTC)
        if current < self._last:
            current = self._last
        self._last = current
        return current
