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


def create_event(
    uow_factory: UowFactory, details: EventDetails, capacity: int, actor: str | None = None
) -> int:
    """Create an event; returns its id. With an ``actor`` the change is audited."""
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
        if actor:
            uow.audit(actor, "event.create", {"event_id": event.id, "capacity": capacity})
        uow.commit()
        assert event.id is not None
        return event.id


def update_event(
    uow_factory: UowFactory, event_id: int, details: EventDetails, actor: str | None = None
) -> None:
    """Edit an event's details; with an ``actor`` the change is audited."""

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
            if actor:
                uow.audit(actor, "event.update", {"event_id": event_id, "title": details.title})
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


def change_capacity(
    uow_factory: UowFactory, event_id: int, new_capacity: int, actor: str | None = None
) -> int:
    """Set the capacity; an increase promotes waiting people in the same transaction.
    Returns how many people were promoted. With an ``actor`` the change is audited,
    in the same transaction."""

    def attempt() -> int:
        with uow_factory() as uow:
            event = _locked(uow, event_id)
            before_capacity, before_confirmed = event.capacity, event.confirmed_count
            event.change_capacity(new_capacity, uow.now)
            uow.publish()  # the synchronous handlers promote waiting people now
            promoted = event.confirmed_count - before_confirmed
            if actor:
                target = {"event_id": event_id, "from": before_capacity, "to": new_capacity}
                uow.audit(actor, "event.capacity", {**target, "promoted": promoted})
            uow.commit()
            return promoted

    return with_retries(attempt)


def _locked(uow: UnitOfWork, event_id: int) -> Event:
    event = uow.events.get(event_id, for_update=True)
    if event is None:
        raise errors.EventNotFound("This event does not exist.")
    return event
