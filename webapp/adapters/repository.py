"""Repositories for the write side: load aggregates (locked when they will change)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from webapp.adapters.tables import registrations, users
from webapp.domain.model import Attendee, Event, Registration, RegistrationStatus


class EventRepository:
    def __init__(self, session: Session) -> None:
        self.session = session
        #: aggregates loaded or added in this unit of work (their messages get published)
        self.seen: set[Event] = set()
        #: events whose row this unit of work holds locked, by id
        self._locked: dict[int, Event] = {}

    def add(self, event: Event) -> None:
        self.session.add(event)
        self.seen.add(event)

    @property
    def locked(self) -> list[Event]:
        """The events whose row this unit of work holds locked (current until commit)."""
        return list(self._locked.values())

    def get(self, event_id: int, *, for_update: bool = False) -> Event | None:
        """Load an event; ``for_update`` locks its row until commit (PostgreSQL).

        Once locked in this unit of work, the event is current (nobody else can
        change it) and later ``for_update`` calls return it without a query."""
        if for_update and event_id in self._locked:
            return self._locked[event_id]
        stmt = select(Event).where(Event.id == event_id)  # type: ignore[arg-type]
        if for_update:
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        event = self.session.scalars(stmt).one_or_none()
        if event is not None:
            self.seen.add(event)
            if for_update:
                self._locked[event_id] = event
        return event

    def lock_of_registration(self, registration_id: uuid.UUID) -> Event | None:
        """The event a registration belongs to, locked until commit, found and locked
        in one statement (a registration never changes event); None when there is no
        such registration."""
        event_of = select(registrations.c.EventId).where(registrations.c.Id == registration_id)
        stmt = (
            select(Event)
            .where(Event.id == event_of.scalar_subquery())  # type: ignore[arg-type]
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        event = self.session.scalars(stmt).one_or_none()
        if event is not None and event.id is not None:
            self.seen.add(event)
            self._locked[event.id] = event
        return event


class RegistrationRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, registration: Registration) -> None:
        self.session.add(registration)

    def get(self, registration_id: uuid.UUID) -> Registration | None:
        return self.session.get(Registration, registration_id)

    def get_current(self, registration_id: uuid.UUID) -> Registration | None:
        """Load from the database even if already in the session (e.g. after taking
        the event lock, to see what a concurrent transaction committed)."""
        stmt = (
            select(Registration)
            .where(Registration.id == registration_id)  # type: ignore[arg-type]
            .execution_options(populate_existing=True)
        )
        return self.session.scalars(stmt).one_or_none()

    def active_for(self, event_id: int, attendee_id: uuid.UUID) -> Registration | None:
        stmt = select(Registration).where(
            Registration.event_id == event_id,  # type: ignore[arg-type]
            Registration.attendee_id == attendee_id,  # type: ignore[arg-type]
            Registration.status != RegistrationStatus.CANCELLED,  # type: ignore[arg-type]
        )
        return self.session.scalars(stmt).first()

    def active_for_email(self, event_id: int, email: str) -> Registration | None:
        stmt = (
            select(Registration)
            .join(users, users.c.Id == Registration.attendee_id)  # type: ignore[arg-type]
            .where(
                Registration.event_id == event_id,  # type: ignore[arg-type]
                users.c.Email == email,
                Registration.status != RegistrationStatus.CANCELLED,  # type: ignore[arg-type]
            )
        )
        return self.session.scalars(stmt).first()

    def by_idempotency_key(self, key: str) -> Registration | None:
        stmt = select(Registration).where(Registration.idempotency_key == key)  # type: ignore[arg-type]
        return self.session.scalars(stmt).first()

    def waitlist_head(self, event_id: int, limit: int) -> list[Registration]:
        """The first ``limit`` waiting registrations in queue order (uses the partial index)."""
        if limit <= 0:
            return []
        stmt = (
            select(Registration)
            .where(
                Registration.event_id == event_id,  # type: ignore[arg-type]
                Registration.status == RegistrationStatus.WAITLISTED,  # type: ignore[arg-type]
            )
            .order_by(Registration.queue_key)  # type: ignore[arg-type]
            .limit(limit)
        )
        return list(self.session.scalars(stmt))


class AttendeeRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, attendee: Attendee) -> None:
        self.session.add(attendee)

    def get(self, attendee_id: uuid.UUID) -> Attendee | None:
        return self.session.get(Attendee, attendee_id)

    def get_by_email(self, email: str) -> Attendee | None:
        stmt = select(Attendee).where(Attendee.email == email)  # type: ignore[arg-type]
        return self.session.scalars(stmt).first()

    def ensure(self, attendee: Attendee) -> tuple[uuid.UUID, str]:
        """The id and stored name of the attendee with this email, inserting them when
        new: one statement (``INSERT ... ON CONFLICT (Email) DO UPDATE ... RETURNING``).
        An existing attendee keeps their name."""
        insert = (
            postgresql.insert
            if self.session.get_bind().dialect.name == "postgresql"
            else (sqlite.insert)
        )
        stmt = insert(users).values(
            Id=attendee.id, Name=attendee.name, Email=attendee.email, CreatedAt=attendee.created_at
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[users.c.Email], set_={"Email": stmt.excluded.Email}
        ).returning(users.c.Id, users.c.Name)
        row = self.session.execute(stmt).one()
        return uuid.UUID(str(row.Id)), str(row.Name)
