"""When a waitlisted attendee is mailed about their place in the queue.

Everyone sees their live position on their status page; a mail goes out only when a
move brings them past a milestone: into the last ``near`` places before a seat, and
to the head of the queue (next in line). Someone who climbs from 14th to the front
gets two notices, not ten. What each person was last told is kept, so a milestone is
announced once, whichever queue move (or worker) gets there first.
"""

from __future__ import annotations

from collections.abc import Iterable


def milestones(near: int) -> tuple[int, ...]:
    """The positions announced, largest first: ``near`` places from a seat, and 1."""
    return tuple(sorted({max(1, near), 1}, reverse=True))


def milestone_reached(position: int, marks: Iterable[int]) -> int | None:
    """The milestone a person at ``position`` has reached: the nearest one at or
    behind them (None while they are further back than every milestone)."""
    reached = [m for m in marks if m >= position]
    return min(reached) if reached else None


def notice_due(position: int, last_told: int | None, marks: Iterable[int]) -> int | None:
    """The milestone to announce to a person now at ``position`` who was last told
    ``last_told`` (None: no notice yet), or None if they have passed none since."""
    reached = milestone_reached(position, marks)
    if reached is None:
        return None
    if last_told is not None and last_told <= reached:
        return None
    return reached
