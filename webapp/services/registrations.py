"""Attendee use cases: register, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from webapp.domain import errors
from webapp.domain.model import Attendee, Registration, RegistrationStatus
from webapp.services.retry import with_retries
from webapp.services.unit_of_work import NewRegistration, UnitOfWork, utcnow

UowFactory = Callable[[], UnitOfWork]


@dataclass(frozen=True)
class RegistrationOutcome:
    registration_id: uuid.UUID
    event_id: int
    status: str
    #: True when this call found the registration a previous submit created
    repeated: bool = False


def _outcome(registration: Registration, repeated: bool = False) -> RegistrationOutcome:
    return RegistrationOutcome(
        registration.id, registration.event_id, registration.status.value, repeated
    )


def register(
    uow_factory: UowFactory,
    event_id: int,
    name: str,
    email: str,
    idempotency_key: str | None = None,
) -> RegistrationOutcome:
    """Register ``email`` for an event: a confirmed seat while seats remain,
    otherwise a place on the waitlist.

    The event row is locked for the decision, so concurrent registrations are
    serialized per event and never overbook. The happy path is five statements:
    upsert the attendee, lock the event, insert the registration, update the event's
    counters, insert the outbox rows. The attendee comes first because it needs
    no lock of the event: the lock, for which every registration of a busy event
    queues, is held for four statements, not five. (Only registering touches the
    attendee's row, always before the event's, so the order cannot deadlock.)
    Duplicates are caught by the database's
    unique indexes, which decide them under concurrency too:

    - the same form submitted again (``idempotency_key``) returns the registration
      it created (``repeated=True``);
    - an email that already holds an active registration raises AlreadyRegistered.
    """
    candidate = Attendee(name, email, now=utcnow())  # validates before any I/O

    def attempt() -> RegistrationOutcome:
        with uow_factory() as uow:
            attendee = Attendee(candidate.name, candidate.email, now=uow.now, id=candidate.id)
            attendee.id, stored_name = uow.attendees.ensure(attendee)
            event = uow.events.get(event_id, for_update=True)
            if event is None:
                raise errors.EventNotFound("This event does not exist.")
            registration = event.register(attendee, uow.now, idempotency_key)
            uow.created(
                NewRegistration(
                    registration.id,
                    event_id,
                    registration.status.value,
                    registration.queue_key,
                    registration.created_at,
                    stored_name,
                    candidate.email,
                )
            )
            try:
                uow.registrations.add(registration)  # a unique index may refuse it here
                uow.commit()
            except IntegrityError as error:
                uow.rollback()
                return _existing(uow, error, event_id, candidate.email, idempotency_key)
            return _outcome(registration)

    return with_retries(attempt)


def _existing(
    uow: UnitOfWork,
    error: IntegrityError,
    event_id: int,
    email: str,
    idempotency_key: str | None,
) -> RegistrationOutcome:
    """After a unique-index conflict: the registration that was there first.

    A resubmitted form collides on both indexes (the database reports either one),
    so the form's key is looked up first."""
    conflict = _violates(error, "IdempotencyKey") or _violates(error, "Active")
    if conflict and idempotency_key:
        earlier = uow.registrations.by_idempotency_key(idempotency_key)
        if earlier is not None:
            return _outcome(earlier, repeated=True)
    if _violates(error, "Active"):
        active = uow.registrations.active_for_email(event_id, email)
        if active is not None:
            raise errors.AlreadyRegistered(active.id) from None
    raise error  # something else (or it vanished meanwhile): retried as transient


def _violates(error: IntegrityError, index: str) -> bool:
    """Whether ``error`` is a conflict on UX_EventRegistrations_<index>."""
    constraint = getattr(getattr(error.orig, "diag", None), "constraint_name", None)
    if constraint is not None:  # PostgreSQL names the index
        return bool(constraint == f"UX_EventRegistrations_{index}")
    columns = {  # SQLite names the columns
        "IdempotencyKey": "EventRegistrations.IdempotencyKey",
        "Active": "EventRegistrations.EventId, EventRegistrations.UserId",
    }[index]
    return columns in str(error.orig)


def cancel(uow_factory: UowFactory, registration_id: uuid.UUID) -> RegistrationOutcome:
    """Cancel a registration. A freed seat promotes the head of the waitlist in the
    same transaction (see ``handlers.promote_after_cancellation``)."""

    def attempt() -> RegistrationOutcome:
        with uow_factory() as uow:
            event = uow.events.lock_of_registration(registration_id)
            if event is None:
                raise errors.RegistrationNotFound("This registration does not exist.")
            registration = uow.registrations.get_current(registration_id)  # after the lock
            assert registration is not None
            event.cancel(registration, uow.now)
            uow.commit()
            return _outcome(registration)

    return with_retries(attempt)


__all__ = ["RegistrationOutcome", "RegistrationStatus", "cancel", "register"]
