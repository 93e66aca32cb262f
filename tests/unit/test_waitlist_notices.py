"""Which queue moves mail a waitlisted attendee (webapp.domain.waitlist_notices)."""

from __future__ import annotations

from webapp.domain.waitlist_notices import milestone_reached, milestones, notice_due

MARKS = milestones(10)


def test_the_milestones_are_near_a_seat_and_next_in_line() -> None:
    assert MARKS == (10, 1)
    assert milestones(1) == (1,)
    assert milestones(0) == (1,)  # "near" never goes below the head of the queue


def test_a_person_further_back_than_every_milestone_is_not_mailed() -> None:
    assert milestone_reached(11, MARKS) is None
    assert notice_due(11, None, MARKS) is None


def test_coming_within_the_near_places_is_announced_once() -> None:
    assert notice_due(10, None, MARKS) == 10
    assert notice_due(9, 10, MARKS) is None
    assert notice_due(2, 10, MARKS) is None


def test_the_first_move_of_someone_who_joined_near_a_seat_is_announced() -> None:
    assert notice_due(4, None, MARKS) == 10
    assert notice_due(3, 4, MARKS) is None


def test_reaching_the_head_of_the_queue_is_announced_once() -> None:
    assert notice_due(1, 2, MARKS) == 1
    assert notice_due(1, 1, MARKS) is None


def test_a_jump_past_both_milestones_takes_one_notice_of_the_nearer() -> None:
    """A capacity increase can move people up several places at once."""
    assert notice_due(1, None, MARKS) == 1
    assert notice_due(1, 14, MARKS) == 1
