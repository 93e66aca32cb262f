"""Registration and status-link POSTs are rate-limited per client address (Redis)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import text

from tests.conftest import csrf_token_from, make_app
from webapp.extensions import get_db, limiter
from webapp.services.events import EventDetails, create_event

pytestmark = pytest.mark.redis


@pytest.fixture
def limited_app(sqlite_url: str, redis_url: str) -> Iterator[Flask]:
    app = make_app(
        sqlite_url, redis_url, RATELIMIT_ENABLED=True, RATELIMIT_REGISTRATION="2 per minute"
    )
    yield app
    get_db(app).dispose()


def _event(app: Flask) -> int:
    details = EventDetails("Limited", "", "Hall", datetime.now(UTC) + timedelta(days=3))
    return create_event(get_db(app).unit_of_work, details, 10)


def _registrations(app: Flask) -> int:
    with get_db(app).engine.connect() as conn:
        return int(conn.execute(text('SELECT count(*) FROM "EventRegistrations"')).scalar_one())


def test_too_many_registration_posts_get_a_friendly_429(limited_app: Flask) -> None:
    client = limited_app.test_client()
    event_id = _event(limited_app)
    csrf = csrf_token_from(client.get(f"/events/{event_id}").get_data(as_text=True))

    statuses = []
    for n in range(3):
        response = client.post(
            f"/events/{event_id}/register",
            data={"csrf_token": csrf, "name": f"Person {n}", "email": f"p{n}@example.com"},
        )
        statuses.append(response.status_code)

    assert statuses == [303, 303, 429]
    body = re.sub(r"\s+", " ", response.get_data(as_text=True))
    assert "Slow down a little" in body and "wait a minute" in body
    assert _registrations(limited_app) == 2  # the refused one wrote nothing
    # reading pages is not limited
    assert client.get(f"/events/{event_id}").status_code == 200


def test_status_link_posts_are_limited_too(limited_app: Flask) -> None:
    client = limited_app.test_client()
    event_id = _event(limited_app)
    csrf = csrf_token_from(client.get(f"/events/{event_id}").get_data(as_text=True))
    created = client.post(
        f"/events/{event_id}/register",
        data={"csrf_token": csrf, "name": "Ann", "email": "ann@example.com"},
    )
    cancel_path = created.headers["Location"] + "/cancel"

    first = client.post(cancel_path, data={"csrf_token": csrf})
    second = client.post(cancel_path, data={"csrf_token": csrf})
    third = client.post(cancel_path, data={"csrf_token": csrf})

    assert first.status_code == 303
    assert second.status_code == 409  # already cancelled, still within the limit
    assert third.status_code == 429
    assert "Slow down a little" in third.get_data(as_text=True)
    assert client.get(cancel_path).status_code == 200  # the GET confirmation is not limited


@pytest.fixture
def default_limited_app(sqlite_url: str, redis_url: str) -> Iterator[Flask]:
    """An operator's ``RATELIMIT_DEFAULT``: a limit on every route without its own."""
    app = make_app(sqlite_url, redis_url, RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="2 per minute")
    yield app
    get_db(app).dispose()
    limiter.limit_manager.set_default_limits([])  # the limiter is shared by every app


def test_a_configured_default_limit_applies_to_writes_without_a_limit_of_their_own(
    default_limited_app: Flask,
) -> None:
    """Every limit of the app is on a view, so Flask-Limiter's before-request check
    goes; a default limit keeps it, for writes."""
    client = default_limited_app.test_client()
    event_id = _event(default_limited_app)
    csrf = csrf_token_from(client.get(f"/events/{event_id}").get_data(as_text=True))

    new_event = "/admin/events/new"  # no limit of its own; anonymous: sent to sign in
    statuses = [client.post(new_event, data={"csrf_token": csrf}).status_code for _ in range(3)]

    assert statuses == [302, 302, 429]
    # reads are never limited
    assert {client.get(f"/events/{event_id}").status_code for _ in range(4)} == {200}
