"""Seconds per phase of a dedup run, for its stats."""

from __future__ import annotations

import time


class PhaseClock:
    """Seconds per phase, in the order the phases finish, then the total."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Record the time since the previous record (or the start) as `phase`."""
        now = time.perf_counter()
        self.seconds[phase] = now - self._last
        self._last = now

    def record(self, seconds: dict[str, float]) -> None:
        """Record phases timed elsewhere; the time since the previous record is not counted again."""
        self.seconds.update(seconds)
        self._last = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """Record the total since the start; return all phases."""
        self.seconds["total"] = time.perf_counter() - self._start
        return self.seconds
