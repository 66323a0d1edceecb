"""A log line that cannot flood the log: at most one per interval, the rest counted.

Why: some events are caused by whoever reaches the port (bytes that do not parse), so
logging each one would let any client fill the disk and bury real errors. The first
event of an interval is logged; the ones held back are counted and reported in the
next line that goes out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

DEFAULT_INTERVAL = 10.0


class ThrottledLog:
    """`warning(...)` logs at most once per `interval` seconds (monotonic `clock`)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next_at = float("-inf")
        self._suppressed = 0

    @property
    def suppressed(self) -> int:
        """Lines held back since the last one logged."""
        return self._suppressed

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next_at:
            self._suppressed += 1
            return
        self._next_at = now + self._interval
        held_back, self._suppressed = self._suppressed, 0
        if held_back:
            message += " (%d more since the previous such line were not logged)"
            args = (*args, held_back)
        self._logger.warning(message, *args)
