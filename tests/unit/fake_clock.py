"""A clock for tests of code that takes one (``time.monotonic`` in production): it
stands still until the test moves ``now``."""

from __future__ import annotations


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
