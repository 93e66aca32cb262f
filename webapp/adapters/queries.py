"""Read side: lean Core projections for the pages (no ORM identity map, no N+1).

Each function takes a Session or Connection and returns plain dicts, which the
cache can store as they are. Waitlist positions are computed here, when reading,
from the stable queue keys. The projections read on every registration (its status,
for the page and the worker's mail) are built once with bound parameters: building
a join and its cache key costs about as much CPU as running it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from webapp.adapters.tables import events, registrations, users, waitlist_notices

Executor = Session | Connection
WAITLISTED = "Waitlisted"

_event_columns = (
    events.c.Id.label("id"),
    events.c.Title.label("title"),
    events.c.Venue.label("venue"),
    events.c.StartDate.label("start_date"),
    events.c.Capacity.label("capacity"),
    events.c.ConfirmedCount.label("confirmed_count"),
    events.c.WaitlistCount.label("waitlist_count"),
    events.c.RegistrationOpen.label("registration_open"),
)


def _as_uuid(value: str | uuid.UUID) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _row(mapping: Any) -> dict[str, Any]:
    row = dict(mapping)
    if "capacity" in row:
        row["seats_left"] = max(row["capacity"] - row["confirmed_count"], 0)
    return row


def upcoming_events(db: Executor, now: datetime, limit: int = 100) -> list[dict[str, Any]]:
    """Events that have not started, soonest first (uses IX_Events_StartDate)."""
    stmt = (
        select(*_event_columns)
        .where(events.c.StartDate > now)
        .order_by(events.c.StartDate, events.c.Id)
        .limit(limit)
    )
    return [_row(r._mapping) for r in db.execute(stmt)]


def all_events(db: Executor) -> list[dict[str, Any]]:
    """Every event, newest start first (organiser list)."""
    stmt = select(*_event_columns).order_by(events.c.StartDate.desc(), events.c.Id)
    return [_row(r._mapping) for r in db.execute(stmt)]


def event_detail(db: Executor, event_id: int) -> dict[str, Any] | None:
    stmt = select(*_event_columns, events.c.Description.label("description")).where(
        events.c.Id == event_id
    )
    row = db.execute(stmt).first()
    return _row(row._mapping) if row else None


def _registration_columns() -> tuple[Any, ...]:
    r = registrations.c
    return (
        r.Id.label("registration_id"),
        r.EventId.label("event_id"),
        r.Status.label("status"),
        r.PositionInQueue.label("queue_key"),
        r.CreatedAt.label("created_at"),
        r.CancelledAt.label("cancelled_at"),
        users.c.Name.label("name"),
        users.c.Email.label("email"),
    )


def registration_status(db: Executor, registration_id: str | uuid.UUID) -> dict[str, Any] | None:
    """A person's registration with the event and the live waitlist position."""
    row = db.execute(_REGISTRATION_STATUS, {"id": _as_uuid(registration_id)}).first()
    if row is None:
        return None
    view = dict(row._mapping)
    view["status"] = _status_value(view["status"])
    view["position"] = None
    if view["status"] == WAITLISTED:
        view["position"] = waitlist_position(db, view["event_id"], view["queue_key"])
    return view


def waitlist_position(db: Executor, event_id: int, queue_key: int) -> int:
    """1-based position of a queue key: waiting people at or ahead of it (partial index)."""
    params = {"event_id": event_id, "queue_key": queue_key}
    return int(db.execute(_WAITLIST_POSITION, params).scalar_one())


_WAITLIST_POSITION = select(func.count()).where(
    registrations.c.EventId == bindparam("event_id"),
    registrations.c.Status == WAITLISTED,
    registrations.c.PositionInQueue <= bindparam("queue_key"),
)


def waitlist_behind(
    db: Executor, event_id: int, after_queue_key: int, max_position: int | None = None
) -> list[dict[str, Any]]:
    """Everyone waiting behind ``after_queue_key`` (at most at ``max_position``), with
    their current positions and the position a waitlist notice last told them
    (``last_told``, None before the first). Run by every cancellation's fan-out: the
    statement is built once per shape, with bound parameters."""
    params = {"event_id": event_id, "after_queue_key": after_queue_key}
    if max_position is not None:
        params["max_position"] = max_position
    stmt = _waitlist_behind_stmt(max_position is not None)
    return [dict(row._mapping) for row in db.execute(stmt, params)]


@cache
def _waitlist_behind_stmt(limited: bool) -> Any:
    r = registrations.c
    ranked: Any = (
        select(
            r.Id.label("registration_id"),
            r.PositionInQueue.label("queue_key"),
            r.UserId.label("user_id"),
            func.row_number().over(order_by=r.PositionInQueue).label("position"),
        )
        .where(r.EventId == bindparam("event_id"), r.Status == WAITLISTED)
        .order_by(r.PositionInQueue)
    )
    if limited:  # the head of the queue only: an index range, not a scan
        ranked = ranked.limit(bindparam("max_position"))
    ranked = ranked.subquery()
    return (
        select(
            ranked.c.registration_id,
            ranked.c.queue_key,
            ranked.c.position,
            users.c.Name.label("name"),
            users.c.Email.label("email"),
            events.c.Title.label("event_title"),
            events.c.StartDate.label("start_date"),
            waitlist_notices.c.Position.label("last_told"),
        )
        .join(users, users.c.Id == ranked.c.user_id)
        .join(events, events.c.Id == bindparam("event_id"))
        .outerjoin(waitlist_notices, waitlist_notices.c.RegistrationId == ranked.c.registration_id)
        .where(ranked.c.queue_key > bindparam("after_queue_key"))
        .order_by(ranked.c.queue_key)
    )


def event_attendees(db: Executor, event_id: int) -> list[dict[str, Any]]:
    """Organiser list: confirmed first, then the waitlist in order, then cancelled."""
    r = registrations.c
    order = func.coalesce(r.PositionInQueue, 0)
    stmt = (
        select(*_registration_columns(), r.ConfirmedAt.label("confirmed_at"))
        .join(users, users.c.Id == r.UserId)
        .where(r.EventId == event_id)
        .order_by(r.Status, order, r.CreatedAt)
    )
    rows = [dict(row._mapping) for row in db.execute(stmt)]
    position = 0
    for row in rows:
        row["status"] = _status_value(row["status"])
        row["position"] = None
        if row["status"] == WAITLISTED:
            position += 1
            row["position"] = position
    rank = {"Confirmed": 0, "Waitlisted": 1, "Cancelled": 2}
    rows.sort(key=lambda x: (rank[x["status"]], x["queue_key"] or 0, x["created_at"]))
    return rows


def _status_value(status: Any) -> str:
    return status.value if hasattr(status, "value") else str(status)


# -- the cache's finer-grained projections (see webapp/services/read_model.py) -----------
_count_columns = (
    events.c.Id.label("id"),
    events.c.Capacity.label("capacity"),
    events.c.ConfirmedCount.label("confirmed_count"),
    events.c.WaitlistCount.label("waitlist_count"),
)


def event_counts(db: Executor, event_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Capacity, confirmed and waitlist counts of several events, in one statement."""
    if not event_ids:
        return {}
    stmt = select(*_count_columns).where(events.c.Id.in_(sorted(set(event_ids))))
    return {row.id: dict(row._mapping) for row in db.execute(stmt)}


def registration_record(db: Executor, registration_id: str | uuid.UUID) -> dict[str, Any] | None:
    """A registration with its attendee (no event columns, no position)."""
    row = db.execute(_REGISTRATION_RECORD, {"id": _as_uuid(registration_id)}).first()
    if row is None:
        return None
    record = dict(row._mapping)
    record["status"] = _status_value(record["status"])
    return record


_REGISTRATION_RECORD = (
    select(*_registration_columns())
    .join(users, users.c.Id == registrations.c.UserId)
    .where(registrations.c.Id == bindparam("id"))
)
_REGISTRATION_STATUS = _REGISTRATION_RECORD.add_columns(
    events.c.Title.label("event_title"),
    events.c.StartDate.label("start_date"),
    events.c.Venue.label("venue"),
).join(events, events.c.Id == registrations.c.EventId)


def hottest_event_ids(db: Executor, now: datetime, limit: int = 10) -> list[int]:
    """Upcoming events with the most registrations (confirmed + waiting) first."""
    stmt = (
        select(events.c.Id)
        .where(events.c.StartDate > now)
        .order_by((events.c.ConfirmedCount + events.c.WaitlistCount).desc(), events.c.Id)
        .limit(limit)
    )
    return [int(row.Id) for row in db.execute(stmt)]


__all__ = [
    "all_events",
    "event_attendees",
    "event_counts",
    "event_detail",
    "hottest_event_ids",
    "registration_record",
    "registration_status",
    "upcoming_events",
    "waitlist_behind",
    "waitlist_position",
]
