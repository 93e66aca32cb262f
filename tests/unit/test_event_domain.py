"""The Event aggregate's rules, without any I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from webapp.domain import errors
from webapp.domain.messages import (
    CapacityDecreased,
    CapacityIncreased,
    RegistrationCancelled,
    RegistrationCreated,
    RegistrationPromoted,
    WaitlistPositionChanged,
    from_dict,
)
from webapp.domain.model import Attendee, Event, Registration, RegistrationStatus

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def make_event(capacity: int = 2, **kw: object) -> Event:
    event = Event("Meetup", NOW + timedelta(days=3), capacity, NOW, **kw)  # type: ignore[arg-type]
    event.id = 1
    return event


def person(n: int) -> Attendee:
    return Attendee(f"Person {n}", f"person{n}@example.test", NOW)


def fill(event: Event, count: int) -> list[Registration]:
    return [event.register(person(i), NOW) for i in range(count)]


def test_register_confirms_while_seats_remain() -> None:
    event = make_event(capacity=2)
    first, second = fill(event, 2)
    assert first.status is second.status is RegistrationStatus.CONFIRMED
    assert event.confirmed_count == 2
    assert event.seats_left == 0


def test_register_when_full_goes_to_waitlist_with_increasing_queue_keys() -> None:
    event = make_event(capacity=1)
    _, w1, w2 = fill(event, 3)
    assert (w1.status, w2.status) == (RegistrationStatus.WAITLISTED,) * 2
    assert w1.queue_key is not None and w2.queue_key is not None
    assert w1.queue_key < w2.queue_key
    assert event.waitlist_count == 2
    created = [m for m in event.messages if isinstance(m, RegistrationCreated)]
    assert [m.position for m in created] == [None, 1, 2]


def test_cancel_confirmed_frees_a_seat_and_records_the_message() -> None:
    event = make_event(capacity=1)
    (only,) = fill(event, 1)
    event.messages.clear()
    event.cancel(only, NOW)
    assert only.status is RegistrationStatus.CANCELLED
    assert event.confirmed_count == 0
    assert event.messages == [
        RegistrationCancelled(1, str(only.id), str(only.attendee_id), "Confirmed")
    ]


def test_promote_fills_free_seats_in_queue_order_with_one_queue_message() -> None:
    event = make_event(capacity=1)
    confirmed, w1, w2, w3 = fill(event, 4)
    event.cancel(confirmed, NOW)
    event.messages.clear()
    promoted = event.promote([w1, w2, w3], NOW)
    assert promoted == 1
    assert w1.status is RegistrationStatus.CONFIRMED
    assert w2.status is w3.status is RegistrationStatus.WAITLISTED
    assert event.messages == [
        RegistrationPromoted(1, str(w1.id), str(w1.attendee_id)),
        WaitlistPositionChanged(1, w1.queue_key, 1, "promoted"),  # type: ignore[arg-type]
    ]


def test_promote_refuses_out_of_order_head() -> None:
    event = make_event(capacity=1)
    _, w1, w2 = fill(event, 3)
    event.increase_capacity(2, NOW)
    with pytest.raises(ValueError, match="queue order"):
        event.promote([w2, w1], NOW)


def test_cancel_waitlisted_moves_the_queue_without_freeing_a_seat() -> None:
    event = make_event(capacity=1)
    _, w1, _ = fill(event, 3)
    event.messages.clear()
    event.cancel(w1, NOW)
    assert event.confirmed_count == 1
    assert event.waitlist_count == 1
    assert isinstance(event.messages[0], WaitlistPositionChanged)
    assert event.messages[0].after_queue_key == w1.queue_key


def test_cancel_twice_is_refused() -> None:
    event = make_event()
    (r,) = fill(event, 1)
    event.cancel(r, NOW)
    with pytest.raises(errors.AlreadyCancelled):
        event.cancel(r, NOW)


def test_increase_capacity_records_message_and_decrease_below_confirmed_is_refused() -> None:
    event = make_event(capacity=3)
    fill(event, 3)
    event.messages.clear()
    event.increase_capacity(2, NOW)
    assert event.messages == [CapacityIncreased(1, 3, 5)]
    with pytest.raises(errors.CapacityBelowConfirmed, match="3 confirmed seats"):
        event.decrease_capacity(3, NOW)
    assert event.capacity == 5
    event.decrease_capacity(2, NOW)
    assert event.messages[-1] == CapacityDecreased(1, 5, 3)


def test_capacity_preview_counts_people_promoted() -> None:
    event = make_event(capacity=2)
    fill(event, 6)  # 2 confirmed, 4 waiting
    assert event.preview_capacity_change(5) == 3
    assert event.preview_capacity_change(10) == 4
    with pytest.raises(errors.CapacityBelowConfirmed):
        event.preview_capacity_change(1)


def test_closed_or_started_events_refuse_registration() -> None:
    closed = make_event(registration_open=False)
    with pytest.raises(errors.RegistrationClosed):
        closed.register(person(1), NOW)
    started = make_event()
    with pytest.raises(errors.EventAlreadyStarted):
        started.register(person(1), NOW + timedelta(days=4))


@pytest.mark.parametrize(
    ("name", "email", "field"),
    [
        ("", "a@b.io", "name"),
        ("   ", "a@b.io", "name"),
        ("x" * 500, "a@b.io", "name"),
        ("Ann", "not-an-email", "email"),
        ("Ann", "", "email"),
    ],
)
def test_attendee_validation(name: str, email: str, field: str) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        Attendee(name, email, NOW)
    assert info.value.field == field


def test_email_is_normalised_for_case_insensitive_uniqueness() -> None:
    assert Attendee("Ann", "  Ann@Example.TEST ", NOW).email == "ann@example.test"


def test_messages_round_trip_through_dicts() -> None:
    message = RegistrationCreated(1, "r", "a", "Waitlisted", 4)
    assert from_dict("RegistrationCreated", message.to_dict()) == message
    with pytest.raises(ValueError, match="unknown message type"):
        from_dict("Nope", {})
