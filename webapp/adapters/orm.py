"""Imperative mapping of the domain classes onto the tables: the domain never
imports SQLAlchemy."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.orm import registry

from webapp.adapters import tables as t
from webapp.domain import model

mapper_registry = registry(metadata=t.metadata)
_started = False


def start_mappers() -> None:
    """Map the domain classes once per process (idempotent)."""
    global _started
    if _started:
        return
    _started = True
    e, r, u = t.events.c, t.registrations.c, t.users.c
    mapper_registry.map_imperatively(
        model.Attendee,
        t.users,
        properties={"id": u.Id, "name": u.Name, "email": u.Email, "created_at": u.CreatedAt},
    )
    mapper_registry.map_imperatively(
        model.Event,
        t.events,
        properties={
            "id": e.Id,
            "title": e.Title,
            "description": e.Description,
            "venue": e.Venue,
            "start_date": e.StartDate,
            "capacity": e.Capacity,
            "confirmed_count": e.ConfirmedCount,
            "waitlist_count": e.WaitlistCount,
            "last_queue_key": e.LastQueueKey,
            "registration_open": e.RegistrationOpen,
            "created_at": e.CreatedAt,
            "updated_at": e.UpdatedAt,
        },
    )
    mapper_registry.map_imperatively(
        model.Registration,
        t.registrations,
        properties={
            "id": r.Id,
            "event_id": r.EventId,
            "attendee_id": r.UserId,
            "status": r.Status,
            "queue_key": r.PositionInQueue,
            "idempotency_key": r.IdempotencyKey,
            "created_at": r.CreatedAt,
            "updated_at": r.UpdatedAt,
            "confirmed_at": r.ConfirmedAt,
            "cancelled_at": r.CancelledAt,
        },
    )
    mapper_registry.configure()
    sa_event.listen(model.Event, "load", _init_messages)


def _init_messages(target: model.Event, context: Any) -> None:
    target.messages = []
