"""Organiser use cases: create and edit events, change capacity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from webapp.domain import errors
from webapp.domain.model import Event
from webapp.services.retry import with_retries
from webapp.services.unit_of_work import UnitOfWork

UowFactory = Callable[[], UnitOfWork]


@dataclass(frozen=True)
class EventDetails:
    title: str
    description: str
    venue: str
    start_date: datetime
    registration_open: bool = True


def create_event(uow_factory: UowFactory, details: EventDetails, capacity: int) -> int:
    """Create an event; returns its id."""
    with uow_factory() as uow:
        event = Event(
            details.title,
            details.start_date,
            capacity,
            uow.now,
            description=details.description,
            venue=details.venue,
            registration_open=details.registration_open,
        )
        uow.events.add(event)
        uow.flush()
        uow.commit()
        assert event.id is not None
        return event.id


def update_event(uow_factory: UowFactory, event_id: int, details: EventDetails) -> None:
    def attempt() -> None:
        with uow_factory() as uow:
            event = _locked(uow, event_id)
            event.update_details(
                details.title,
                details.description,
                details.venue,
                details.start_date,
                details.registration_open,
                uow.now,
            )
            uow.commit()

    with_retries(attempt)


@dataclass(frozen=True)
class CapacityPreview:
    current: int
    new: int
    confirmed: int
    waiting: int
    promotes: int


def preview_capacity(uow_factory: UowFactory, event_id: int, new_capacity: int) -> CapacityPreview:
    """What changing the capacity would do (raises the same errors the change would)."""
    with uow_factory() as uow:
        event = uow.events.get(event_id)
        if event is None:
            raise errors.EventNotFound("This event does not exist.")
        promotes = event.preview_capacity_change(new_capacity)
        return CapacityPreview(
            event.capacity, new_capacity, event.confirmed_count, event.waitlist_count, promotes
        )


def change_capacity(uow_factory: UowFactory, event_id: int, new_capacity: int) -> int:
    """Set the capacity; an increase promotes waiting people in the same transaction.
    Returns how many people were promoted."""

    def attempt() -> int:
        with uow_factory() as uow:
            event = _locked(uow, event_id)
            before = event.confirmed_count
            event.change_capacity(new_capacity, uow.now)
            uow.commit()
            return event.confirmed_count - before

    return with_retries(attempt)


def _locked(uow: UnitOfWork, event_id: int) -> Event:
    event = uow.events.get(event_id, for_update=True)
    if event is None:
        raise errors.EventNotFound("This event does not exist.")
    return event
