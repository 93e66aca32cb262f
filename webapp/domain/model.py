"""The Event aggregate and its registrations.

The aggregate keeps counters (confirmed seats, waitlist length, last queue key)
instead of loading every registration: deciding a registration, a cancellation or
a promotion touches O(1) rows. A waitlisted registration holds a stable, monotonic
``queue_key``; the position shown to people is derived when reading.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Sequence
from datetime import datetime

from webapp.domain import errors
from webapp.domain.messages import (
    CapacityDecreased,
    CapacityIncreased,
    Message,
    RegistrationCancelled,
    RegistrationCreated,
    RegistrationPromoted,
    WaitlistPositionChanged,
)

NAME_MAX_LENGTH = 200
EMAIL_MAX_LENGTH = 254
TITLE_MAX_LENGTH = 200
MAX_CAPACITY = 100_000
_EMAIL_SHAPE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class RegistrationStatus(enum.StrEnum):
    CONFIRMED = "Confirmed"
    WAITLISTED = "Waitlisted"
    CANCELLED = "Cancelled"


def normalize_email(email: str) -> str:
    """Emails are unique case-insensitively: they are stored trimmed and lower-cased."""
    return email.strip().lower()


class Attendee:
    """A person who registers for events, identified by their email."""

    def __init__(self, name: str, email: str, now: datetime, id: uuid.UUID | None = None) -> None:
        name = (name or "").strip()
        email = normalize_email(email or "")
        if not name:
            raise errors.InvalidInput("Please enter your name.", field="name")
        if len(name) > NAME_MAX_LENGTH:
            raise errors.InvalidInput(
                f"Your name must be at most {NAME_MAX_LENGTH} characters.", field="name"
            )
        if len(email) > EMAIL_MAX_LENGTH or not _EMAIL_SHAPE.match(email):
            raise errors.InvalidInput("Please enter a valid email address.", field="email")
        self.id = id or uuid.uuid4()
        self.name = name
        self.email = email
        self.created_at = now


class Registration:
    def __init__(
        self,
        event_id: int,
        attendee_id: uuid.UUID,
        status: RegistrationStatus,
        now: datetime,
        queue_key: int | None = None,
        idempotency_key: str | None = None,
        id: uuid.UUID | None = None,
    ) -> None:
        self.id = id or uuid.uuid4()
        self.event_id = event_id
        self.attendee_id = attendee_id
        self.status = status
        #: stable key ordering the waitlist; kept after promotion as history
        self.queue_key = queue_key
        self.idempotency_key = idempotency_key
        self.created_at = now
        self.updated_at = now
        self.confirmed_at = now if status is RegistrationStatus.CONFIRMED else None
        self.cancelled_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        return self.status is not RegistrationStatus.CANCELLED


class Event:
    """Aggregate root: the only way to change seats, the waitlist and capacity."""

    messages: list[Message]

    def __init__(
        self,
        title: str,
        start_date: datetime,
        capacity: int,
        now: datetime,
        description: str = "",
        venue: str = "",
        registration_open: bool = True,
        id: int | None = None,
    ) -> None:
        self.id = id
        self.confirmed_count = 0
        self.waitlist_count = 0
        self.last_queue_key = 0
        self.created_at = now
        self.updated_at = now
        self.messages = []
        self.update_details(title, description, venue, start_date, registration_open, now)
        _check_capacity(capacity)
        self.capacity = capacity

    # -- reading -----------------------------------------------------------------
    @property
    def seats_left(self) -> int:
        return max(self.capacity - self.confirmed_count, 0)

    def has_started(self, now: datetime) -> bool:
        return self.start_date <= now

    # -- organiser operations ------------------------------------------------------
    def update_details(
        self,
        title: str,
        description: str,
        venue: str,
        start_date: datetime,
        registration_open: bool,
        now: datetime,
    ) -> None:
        title = (title or "").strip()
        if not title:
            raise errors.InvalidInput("The event needs a title.", field="title")
        if len(title) > TITLE_MAX_LENGTH:
            raise errors.InvalidInput(
                f"The title must be at most {TITLE_MAX_LENGTH} characters.", field="title"
            )
        if start_date.tzinfo is None:
            raise errors.InvalidInput("The start date needs a time zone.", field="start_date")
        self.title = title
        self.description = (description or "").strip()
        self.venue = (venue or "").strip()
        self.start_date = start_date
        self.registration_open = registration_open
        self.updated_at = now

    def preview_capacity_change(self, new_capacity: int) -> int:
        """How many waiting people ``new_capacity`` would promote (raises if refused)."""
        _check_capacity(new_capacity)
        if new_capacity < self.confirmed_count:
            raise _below_confirmed(new_capacity, self.confirmed_count)
        return min(max(new_capacity - self.confirmed_count, 0), self.waitlist_count)

    def change_capacity(self, new_capacity: int, now: datetime) -> None:
        if new_capacity > self.capacity:
            self.increase_capacity(new_capacity - self.capacity, now)
        elif new_capacity < self.capacity:
            self.decrease_capacity(self.capacity - new_capacity, now)

    def increase_capacity(self, by: int, now: datetime) -> None:
        """Add ``by`` seats. Filling them from the waitlist is the synchronous
        CapacityIncreased handler's job, in the same transaction."""
        if by <= 0:
            raise errors.InvalidInput("Increase the capacity by at least one seat.", "capacity")
        old = self.capacity
        _check_capacity(old + by)
        self.capacity = old + by
        self.updated_at = now
        self.messages.append(CapacityIncreased(self.id, old, self.capacity))

    def decrease_capacity(self, by: int, now: datetime) -> None:
        """Remove ``by`` seats; refused when confirmed people would lose theirs."""
        if by <= 0:
            raise errors.InvalidInput("Decrease the capacity by at least one seat.", "capacity")
        old = self.capacity
        if old - by < self.confirmed_count:
            raise _below_confirmed(old - by, self.confirmed_count)
        self.capacity = old - by
        self.updated_at = now
        self.messages.append(CapacityDecreased(self.id, old, self.capacity))

    # -- attendee operations -------------------------------------------------------
    def register(
        self, attendee: Attendee, now: datetime, idempotency_key: str | None = None
    ) -> Registration:
        """Confirm a seat while seats remain, otherwise join the waitlist.

        The caller holds the event row lock and has checked that the attendee has no
        active registration (the database's partial unique index is the backstop).
        """
        if not self.registration_open:
            raise errors.RegistrationClosed("Registration for this event is closed.")
        if self.has_started(now):
            raise errors.EventAlreadyStarted("This event has already started.")
        if self.confirmed_count < self.capacity:
            self.confirmed_count += 1
            registration = Registration(
                self.id,
                attendee.id,
                RegistrationStatus.CONFIRMED,
                now,
                idempotency_key=idempotency_key,
            )
            position = None
        else:
            self.last_queue_key += 1
            self.waitlist_count += 1
            registration = Registration(
                self.id,
                attendee.id,
                RegistrationStatus.WAITLISTED,
                now,
                queue_key=self.last_queue_key,
                idempotency_key=idempotency_key,
            )
            position = self.waitlist_count
        self.updated_at = now
        self.messages.append(
            RegistrationCreated(
                self.id,
                str(registration.id),
                str(attendee.id),
                registration.status.value,
                position,
            )
        )
        return registration

    def cancel(self, registration: Registration, now: datetime) -> None:
        """Cancel a registration. A freed seat is filled by the synchronous
        RegistrationCancelled handler (see :meth:`promote`)."""
        self._check_owns(registration)
        if registration.status is RegistrationStatus.CANCELLED:
            raise errors.AlreadyCancelled("This registration is already cancelled.")
        if self.has_started(now):
            raise errors.EventAlreadyStarted(
                "This event has already started; its registrations can no longer change."
            )
        previous = registration.status
        registration.status = RegistrationStatus.CANCELLED
        registration.cancelled_at = now
        registration.updated_at = now
        self.updated_at = now
        if previous is RegistrationStatus.CONFIRMED:
            self.confirmed_count -= 1
        else:
            self.waitlist_count -= 1
            self.messages.append(
                WaitlistPositionChanged(self.id, registration.queue_key or 0, 1, "cancelled")
            )
        self.messages.append(
            RegistrationCancelled(
                self.id, str(registration.id), str(registration.attendee_id), previous.value
            )
        )

    def promote(self, head_of_waitlist: Sequence[Registration], now: datetime) -> int:
        """Give free seats to the head of the waitlist, in queue order.

        ``head_of_waitlist`` is the first waiting registrations in queue-key order
        (at least ``seats_left`` of them when that many wait). Returns how many were
        promoted; writes one row per promoted person and nothing for the others.
        """
        promoted = []
        previous_key = 0
        for registration in head_of_waitlist[: self.seats_left]:
            self._check_owns(registration)
            if registration.status is not RegistrationStatus.WAITLISTED:
                raise ValueError("only waitlisted registrations can be promoted")
            if (registration.queue_key or 0) <= previous_key:
                raise ValueError("the waitlist head must be in queue order")
            previous_key = registration.queue_key or 0
            registration.status = RegistrationStatus.CONFIRMED
            registration.confirmed_at = now
            registration.updated_at = now
            self.confirmed_count += 1
            self.waitlist_count -= 1
            promoted.append(registration)
            self.messages.append(
                RegistrationPromoted(self.id, str(registration.id), str(registration.attendee_id))
            )
        if promoted:
            self.updated_at = now
            self.messages.append(
                WaitlistPositionChanged(self.id, previous_key, len(promoted), "promoted")
            )
        return len(promoted)

    def _check_owns(self, registration: Registration) -> None:
        if registration.event_id != self.id:
            raise ValueError("registration belongs to another event")


def _check_capacity(capacity: int) -> None:
    if not isinstance(capacity, int) or capacity < 0:
        raise errors.InvalidInput("Capacity must be zero or a positive number.", "capacity")
    if capacity > MAX_CAPACITY:
        raise errors.InvalidInput(f"Capacity must be at most {MAX_CAPACITY:,}.", "capacity")


def _below_confirmed(new_capacity: int, confirmed: int) -> errors.CapacityBelowConfirmed:
    return errors.CapacityBelowConfirmed(
        f"Capacity cannot go below the {confirmed} confirmed seat"
        f"{'s' if confirmed != 1 else ''} (asked for {new_capacity}); "
        "cancel registrations first."
    )
