"""Repositories for the write side: load aggregates (locked when they will change).

The statements every registration and cancellation runs are built once per process
(after the mappers are configured) with bound parameters, not per call: building a
statement and its cache key costs about as much CPU as executing it.
"""

from __future__ import annotations

import uuid
from functools import cache

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

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
        event = self.session.scalars(_event_stmt(for_update), {"id": event_id}).one_or_none()
        if event is not None:
            self.seen.add(event)
            if for_update:
                self._locked[event_id] = event
        return event

    def lock_of_registration(self, registration_id: uuid.UUID) -> Event | None:
        """The event a registration belongs to, locked until commit, found and locked
        in one statement (a registration never changes event); None when there is no
        such registration."""
        stmt = _event_of_registration_stmt()
        event = self.session.scalars(stmt, {"id": registration_id}).one_or_none()
        if event is not None and event.id is not None:
            self.seen.add(event)
            self._locked[event.id] = event
        return event


@cache
def _event_stmt(for_update: bool) -> Executable:
    stmt = select(Event).where(Event.id == bindparam("id"))  # type: ignore[arg-type]
    if for_update:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return stmt


@cache
def _event_of_registration_stmt() -> Executable:
    event_of = select(registrations.c.EventId).where(registrations.c.Id == bindparam("id"))
    return (
        select(Event)
        .where(Event.id == event_of.scalar_subquery())  # type: ignore[arg-type]
        .with_for_update()
        .execution_options(populate_existing=True)
    )


class RegistrationRepository:
    def __init__(self, session: Session) -> None:
        self.session = session
        #: the registrations loaded to change them, kept until the unit of work ends (the
        #: session holds clean ones only weakly), so that its commit can report them
        self.loaded: dict[uuid.UUID, Registration] = {}

    def _keep(self, registrations: list[Registration]) -> list[Registration]:
        self.loaded.update((r.id, r) for r in registrations)
        return registrations

    def add(self, registration: Registration) -> None:
        """Insert a new registration now, with one prepared Core statement, instead of
        at the session's flush: the ORM's unit of work spent about as much CPU on it as
        the statement itself (0.40 M of a registration flow's 23.1 M instructions).

        The registration stays out of the session: the unit of work that creates a
        registration never changes it. A unique index it violates raises here."""
        r = registration
        params = {
            "Id": r.id,
            "EventId": r.event_id,
            "UserId": r.attendee_id,
            "Status": r.status,
            "PositionInQueue": r.queue_key,
            "IdempotencyKey": r.idempotency_key,
            "CreatedAt": r.created_at,
            "UpdatedAt": r.updated_at,
            "ConfirmedAt": r.confirmed_at,
            "CancelledAt": r.cancelled_at,
        }
        self.session.execute(_INSERT_REGISTRATION, params)

    def get(self, registration_id: uuid.UUID) -> Registration | None:
        return self.session.get(Registration, registration_id)

    def get_current(self, registration_id: uuid.UUID) -> Registration | None:
        """Load from the database even if already in the session (e.g. after taking
        the event lock, to see what a concurrent transaction committed)."""
        stmt = _current_registration_stmt()
        found = self.session.scalars(stmt, {"id": registration_id}).one_or_none()
        if found is not None:
            self.loaded[found.id] = found
        return found

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
        params = {"event_id": event_id, "limit": limit}
        return self._keep(list(self.session.scalars(_waitlist_head_stmt(), params)))


_INSERT_REGISTRATION = registrations.insert()


@cache
def _current_registration_stmt() -> Executable:
    return (
        select(Registration)
        .where(Registration.id == bindparam("id"))  # type: ignore[arg-type]
        .execution_options(populate_existing=True)
    )


@cache
def _waitlist_head_stmt() -> Executable:
    return (
        select(Registration)
        .where(
            Registration.event_id == bindparam("event_id"),  # type: ignore[arg-type]
            Registration.status == RegistrationStatus.WAITLISTED,  # type: ignore[arg-type]
        )
        .order_by(Registration.queue_key)  # type: ignore[arg-type]
        .limit(bindparam("limit"))
    )


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
        params = {
            "id": attendee.id,
            "name": attendee.name,
            "email": attendee.email,
            "created_at": attendee.created_at,
        }
        row = self.session.execute(_ensure_attendee_stmt(), params).one()
        return uuid.UUID(str(row.Id)), str(row.Name)


@cache
def _ensure_attendee_stmt() -> Executable:
    """The attendee upsert, in the syntax PostgreSQL and SQLite share. Written as
    text because SQLAlchemy never caches the compiled form of its dialects'
    ``insert().on_conflict_do_update()`` (their ``Insert`` sets ``inherit_cache =
    False``): built that way, it was compiled again on every registration."""
    u = users.c
    return (
        text(
            'INSERT INTO "Users" ("Id", "Name", "Email", "CreatedAt") '
            "VALUES (:id, :name, :email, :created_at) "
            'ON CONFLICT ("Email") DO UPDATE SET "Email" = excluded."Email" '
            'RETURNING "Id", "Name"'
        )
        .bindparams(
            bindparam("id", type_=u.Id.type),
            bindparam("name", type_=u.Name.type),
            bindparam("email", type_=u.Email.type),
            bindparam("created_at", type_=u.CreatedAt.type),
        )
        .columns(u.Id, u.Name)
    )
