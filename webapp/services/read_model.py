"""Reads for the pages. Views call these, never the queries directly, so the cache
(see the caching issue) sits in one place.

Every function returns plain dicts (see ``webapp.adapters.queries``).
"""

from __future__ import annotations

import uuid
from typing import Any

from webapp.adapters import queries
from webapp.extensions import get_db
from webapp.services.unit_of_work import utcnow


def upcoming_events(limit: int = 100) -> list[dict[str, Any]]:
    with get_db().engine.connect() as conn:
        return queries.upcoming_events(conn, utcnow(), limit)


def event_detail(event_id: int) -> dict[str, Any] | None:
    with get_db().engine.connect() as conn:
        return queries.event_detail(conn, event_id)


def registration_status(registration_id: uuid.UUID | str) -> dict[str, Any] | None:
    with get_db().engine.connect() as conn:
        return queries.registration_status(conn, registration_id)


def event_attendees(event_id: int) -> list[dict[str, Any]]:
    """Organiser view: never cached (personal data, must be exact)."""
    with get_db().engine.connect() as conn:
        return queries.event_attendees(conn, event_id)


def all_events() -> list[dict[str, Any]]:
    with get_db().engine.connect() as conn:
        return queries.all_events(conn)
