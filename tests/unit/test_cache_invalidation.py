"""Which cache keys a committed unit of work drops (pure: no Redis, no database)."""

from __future__ import annotations

from webapp.adapters.cache import REGISTRATION_COUNTS, USER_INFORMATION, Slot
from webapp.adapters.cache_pages import all_page_keys, event_page_keys
from webapp.domain.messages import (
    CapacityIncreased,
    RegistrationCancelled,
    RegistrationCreated,
    RegistrationPromoted,
    WaitlistPositionChanged,
)
from webapp.services.cache_invalidation import keys_to_invalidate, to_refresh
from webapp.services.unit_of_work import CommitResult

PAGES = all_page_keys()


def test_nothing_committed_drops_nothing() -> None:
    assert keys_to_invalidate(CommitResult()) == set()


def test_new_registration_drops_counts_and_its_record_but_keeps_details_and_page() -> None:
    """The event's cached page stays: its seats, waitlist and button are rendered from
    the counts on every hit (cache_pages.live_part)."""
    result = CommitResult(messages=[RegistrationCreated(7, "r1", "a1", "Confirmed")], event_ids={7})
    assert keys_to_invalidate(result) == {"counts:7", "registration:r1"} | PAGES


def test_joining_the_waitlist_does_not_move_anyone_else() -> None:
    result = CommitResult(
        messages=[RegistrationCreated(7, "r1", "a1", "Waitlisted", 3)], event_ids={7}
    )
    assert "waitlist:7" not in keys_to_invalidate(result)


def test_cancel_with_promotion_drops_both_people_and_the_waitlist() -> None:
    result = CommitResult(
        messages=[
            RegistrationCancelled(7, "gone", "a1", "Confirmed"),
            RegistrationPromoted(7, "lucky", "a2"),
            WaitlistPositionChanged(7, 4, 1, "promoted"),
        ],
        event_ids={7},
    )
    keys = keys_to_invalidate(result)
    assert {"registration:gone", "registration:lucky", "waitlist:7", "counts:7"} <= keys
    assert "event:7" not in keys and "upcoming" not in keys
    assert not event_page_keys(7) & keys


def test_leaving_the_waitlist_moves_the_people_behind() -> None:
    result = CommitResult(
        messages=[
            RegistrationCancelled(7, "r1", "a1", "Waitlisted"),
            WaitlistPositionChanged(7, 2, 1, "cancelled"),
        ],
        event_ids={7},
    )
    assert {"waitlist:7", "registration:r1", "counts:7"} <= keys_to_invalidate(result)


def test_edited_or_created_event_drops_details_and_the_list() -> None:
    keys = keys_to_invalidate(CommitResult(event_ids={3}))
    assert keys == {"event:3", "counts:3", "upcoming"} | PAGES | event_page_keys(3)


def test_capacity_change_drops_details_counts_and_list_of_that_event_only() -> None:
    result = CommitResult(
        messages=[CapacityIncreased(5, 2, 4), RegistrationPromoted(5, "r9", "a9")],
        event_ids={5, 6},
    )
    keys = keys_to_invalidate(result)
    assert {"event:5", "counts:5", "upcoming", "registration:r9", "waitlist:5"} <= keys
    assert "counts:6" in keys  # loaded in the same unit of work
    assert event_page_keys(5) <= keys and event_page_keys(6) <= keys
    assert not event_page_keys(7) & keys  # other events' pages survive


def test_only_the_writers_own_registrations_are_refreshed_ahead() -> None:
    """After a cancellation with promotion, the canceller reads their page next; the
    promoted person is not there (their mail's handler reads the database)."""
    result = CommitResult(
        messages=[
            RegistrationCancelled(7, "gone", "a1", "Confirmed"),
            RegistrationPromoted(7, "lucky", "a2"),
        ],
        event_ids={7},
    )
    assert to_refresh(result, stored=set()) == ({7}, {"gone"})
    stored = {Slot(USER_INFORMATION, "registration:gone"), Slot(REGISTRATION_COUNTS, "counts:7")}
    assert to_refresh(result, stored) == (set(), set())
