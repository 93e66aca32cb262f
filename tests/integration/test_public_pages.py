"""Public attendee pages through the Flask test client, on SQLite and PostgreSQL.

Every refused request must show a clear message with a 4xx and write nothing:
those tests count the rows of EventRegistrations, Users and OutboxMessages before
and after.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner
from sqlalchemy import text
from werkzeug.test import TestResponse

from tests.conftest import csrf_token_from
from webapp.extensions import get_db
from webapp.observability.metrics import CANCELLATIONS, REGISTRATIONS
from webapp.services import events as event_service
from webapp.services.status_links import make_token, read_token

pytestmark = pytest.mark.redis

IDEMPOTENCY_FIELD = re.compile(r'name="idempotency_token" type="hidden" value="([0-9a-f]{32})"')
STATUS_PATH = re.compile(r"^/registrations/[A-Za-z0-9_.\-]+$")


# -- helpers -------------------------------------------------------------------------------
def row_counts(app: Flask) -> dict[str, int]:
    with get_db(app).engine.connect() as conn:
        return {
            table: int(conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one())
            for table in ("EventRegistrations", "Users", "OutboxMessages")
        }


def open_form(client: FlaskClient, event_id: int) -> dict[str, str]:
    page = client.get(f"/events/{event_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    match = IDEMPOTENCY_FIELD.search(html)
    assert match, "the registration form has no idempotency token"
    return {"csrf_token": csrf_token_from(html), "idempotency_token": match.group(1)}


def submit(
    client: FlaskClient, event_id: int, name: str, email: str, form: dict[str, str] | None = None
) -> TestResponse:
    data = dict(form or open_form(client, event_id))
    data.update(name=name, email=email)
    return client.post(f"/events/{event_id}/register", data=data)


def register(client: FlaskClient, event_id: int, name: str, email: str) -> str:
    """Register and return the status page path."""
    response = submit(client, event_id, name, email)
    assert response.status_code == 303, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert STATUS_PATH.match(location), location
    return location


def page_text(response: TestResponse) -> str:
    """The visible text, whitespace collapsed (for readable assertions)."""
    html = response.get_data(as_text=True)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def status_of(client: FlaskClient, status_path: str) -> tuple[str, str | None]:
    """(status, waitlist position) as the status page shows them."""
    html = client.get(status_path).get_data(as_text=True)
    status = re.search(r'id="registration-status-value">\s*<span[^>]*>([^<]+)</span>', html)
    position = re.search(r'class="waitlist-position">#(\d+)<', html)
    assert status, html
    return status.group(1).strip(), position.group(1) if position else None


def counter(metric: object, **labels: str) -> float:
    child = metric.labels(**labels) if labels else metric  # type: ignore[attr-defined]
    return float(child._value.get())


# -- list and detail -------------------------------------------------------------------------
def test_event_list_shows_upcoming_events_with_seats_and_waitlist(
    client: FlaskClient, create_event: Callable[..., int]
) -> None:
    full = create_event(capacity=1, title="Jazz Night", venue="Blue Room", days=3)
    create_event(capacity=10, title="Old Gig", days=-2)
    register(client, full, "Ann", "ann@example.com")
    register(client, full, "Bob", "bob@example.com")

    response = client.get("/")

    assert response.status_code == 200
    body = page_text(response)
    assert "Jazz Night" in body and "Blue Room" in body
    assert "0 of 1" in body  # seats left
    assert "1 person waiting" in body
    assert "Old Gig" not in body  # past events are not upcoming


def test_event_page_offers_a_labelled_form_with_a_fresh_token_per_visit(
    client: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=5, title="Poetry Slam")
    first, second = open_form(client, event_id), open_form(client, event_id)
    html = client.get(f"/events/{event_id}").get_data(as_text=True)

    assert first["idempotency_token"] != second["idempotency_token"]
    assert '<label for="name">Your name</label>' in html
    assert '<label for="email">Email address</label>' in html
    assert "Poetry Slam" in html and "5 of 5" in html


# -- happy paths -----------------------------------------------------------------------------
def test_register_into_free_seat_redirects_to_confirmed_status(
    client: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=2, title="Chess Evening")
    before = counter(REGISTRATIONS, outcome="confirmed")

    status_path = register(client, event_id, "Ada Lovelace", "ada@example.com")
    page = client.get(status_path)

    assert page.status_code == 200
    body = page_text(page)
    assert "Chess Evening" in body and "Ada Lovelace" in body
    assert "Confirmed" in body and "waitlist position" not in body.lower()
    assert "Cancel my registration" in body
    assert "You are registered: your seat is confirmed." in body  # the flash after PRG
    assert "You are registered" not in page_text(client.get(status_path))  # shown once
    assert counter(REGISTRATIONS, outcome="confirmed") == before + 1


def test_register_when_full_goes_to_waitlist_with_position(
    client: FlaskClient, create_event: Callable[..., int], app: Flask
) -> None:
    event_id = create_event(capacity=1)
    register(client, event_id, "First", "first@example.com")
    before = counter(REGISTRATIONS, outcome="waitlisted")

    second = register(client, event_id, "Second", "second@example.com")
    third = register(client, event_id, "Third", "third@example.com")

    assert status_of(client, second) == ("On the waitlist", "1")
    assert status_of(client, third) == ("On the waitlist", "2")
    text = page_text(client.get(third))
    assert "number 2 on the waitlist" in text
    assert "email you when you come within 10 places of a seat, when you are next" in text
    assert counter(REGISTRATIONS, outcome="waitlisted") == before + 2
    assert row_counts(app)["EventRegistrations"] == 3


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "email", "field", "message"),
    [
        ("", "ok@example.com", "name", "Please enter your name."),
        ("   ", "ok@example.com", "name", "Please enter your name."),
        ("x" * 500, "ok@example.com", "name", "at most 200 characters"),
        ("Valid Name", "not-an-email", "email", "Please enter a valid email address"),
        ("Valid Name", "two@@example.com", "email", "Please enter a valid email address"),
        ("Valid Name", "", "email", "Please enter your email address."),
    ],
)
def test_invalid_form_is_refused_with_field_errors_and_writes_nothing(
    client: FlaskClient,
    create_event: Callable[..., int],
    app: Flask,
    name: str,
    email: str,
    field: str,
    message: str,
) -> None:
    event_id = create_event(capacity=3)
    before = row_counts(app)
    rejected = counter(REGISTRATIONS, outcome="rejected")

    response = submit(client, event_id, name, email)

    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert message in html
    # the error is tied to its field, and the field says it is invalid
    error = re.search(rf'<span class="field-error" id="{field}-error">([^<]+)</span>', html)
    assert error and message in error.group(1)
    tag = re.search(rf'<input [^>]*id="{field}"[^>]*>', html)
    assert tag, html
    assert 'aria-invalid="true"' in tag.group(0)
    described_by = re.search(r'aria-describedby="([^"]+)"', tag.group(0))
    assert described_by and f"{field}-error" in described_by.group(1).split()
    # what the person typed is kept (the other field at least)
    if field == "name" and email:
        assert f'value="{email}"' in html
    if field == "email" and name:
        assert f'value="{name}"' in html
    assert row_counts(app) == before
    assert counter(REGISTRATIONS, outcome="rejected") == rejected + 1


def test_unknown_event_is_404_on_page_and_post(client: FlaskClient, app: Flask) -> None:
    before = row_counts(app)
    token = csrf_token_from(client.get("/").get_data(as_text=True))

    page = client.get("/events/987654")
    post = client.post(
        "/events/987654/register",
        data={"csrf_token": token, "name": "Ann", "email": "ann@example.com"},
    )

    assert page.status_code == 404 and "There is no such event" in page_text(page)
    assert post.status_code == 404 and "There is no such event" in page_text(post)
    assert row_counts(app) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": -1}, "This event has already started"),
        ({"registration_open": False}, "Registration for this event is closed."),
    ],
    ids=["past-event", "closed-registration"],
)
def test_event_not_taking_registrations_offers_no_form_and_refuses_post(
    client: FlaskClient,
    create_event: Callable[..., int],
    app: Flask,
    kwargs: dict[str, object],
    message: str,
) -> None:
    event_id = create_event(capacity=3, **kwargs)
    page = client.get(f"/events/{event_id}")
    html = page.get_data(as_text=True)
    before = row_counts(app)

    response = client.post(
        f"/events/{event_id}/register",
        data={
            "csrf_token": csrf_token_from(html),
            "name": "Late Larry",
            "email": "larry@example.com",
            "idempotency_token": uuid.uuid4().hex,
        },
    )

    assert page.status_code == 200
    assert message in page_text(page)
    assert 'name="email"' not in html  # no form offered
    assert response.status_code == 409
    assert message in page_text(response)
    assert row_counts(app) == before


def test_post_without_csrf_token_is_refused_and_writes_nothing(
    client: FlaskClient, create_event: Callable[..., int], app: Flask
) -> None:
    event_id = create_event(capacity=3)
    form = open_form(client, event_id)
    del form["csrf_token"]
    before = row_counts(app)

    response = submit(client, event_id, "Ann", "ann@example.com", form)

    assert response.status_code == 400
    assert "security token" in page_text(response)
    assert row_counts(app) == before


def test_forged_status_token_is_not_valid(
    client: FlaskClient, create_event: Callable[..., int], app: Flask
) -> None:
    event_id = create_event(capacity=1)
    status_path = register(client, event_id, "Ann", "ann@example.com")
    register(client, event_id, "Bob", "bob@example.com")
    forged = status_path[:-3] + ("aaa" if not status_path.endswith("aaa") else "bbb")
    other_secret = make_token("not-our-secret", uuid.uuid4())
    before = row_counts(app)
    csrf = csrf_token_from(client.get("/").get_data(as_text=True))

    for path in (forged, f"/registrations/{other_secret}", "/registrations/garbage"):
        page = client.get(path)
        assert page.status_code == 404
        assert "This link is not valid" in page_text(page)
        cancel = client.post(f"{path}/cancel", data={"csrf_token": csrf})
        assert cancel.status_code == 404
    assert row_counts(app) == before
    assert status_of(client, status_path) == ("Confirmed", None)  # nothing was cancelled


def test_expired_status_token_is_gone_with_an_explanation(
    client: FlaskClient,
    create_event: Callable[..., int],
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event_id = create_event(capacity=1)
    status_path = register(client, event_id, "Ann", "ann@example.com")
    assert client.get(status_path).status_code == 200  # the fresh link works
    max_age = app.config["STATUS_TOKEN_MAX_AGE_DAYS"]
    long_ago = int(time.time()) - (max_age + 1) * 86400
    with monkeypatch.context() as patch:
        patch.setattr(TimestampSigner, "get_timestamp", lambda self: long_ago)
        old_token = make_token(app.secret_key, _registration_id_of(app, "ann@example.com"))
    before = row_counts(app)
    csrf = csrf_token_from(client.get("/").get_data(as_text=True))

    page = client.get(f"/registrations/{old_token}")
    cancel = client.post(f"/registrations/{old_token}/cancel", data={"csrf_token": csrf})

    assert page.status_code == 410
    assert "expired" in page_text(page)
    assert cancel.status_code == 410
    assert row_counts(app) == before


def _registration_id_of(app: Flask, email: str) -> uuid.UUID:
    with get_db(app).engine.connect() as conn:
        value = conn.execute(
            text(
                'SELECT r."Id" FROM "EventRegistrations" r JOIN "Users" u ON u."Id" = r."UserId" '
                'WHERE u."Email" = :email'
            ),
            {"email": email},
        ).scalar_one()
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


# -- duplicates -------------------------------------------------------------------------------
def registration_of(app: Flask, status_path: str) -> uuid.UUID:
    return read_token(app.secret_key, status_path.rsplit("/", 1)[1], max_age_days=1)


def test_double_submit_of_the_same_form_gives_one_row_and_the_same_page(
    client: FlaskClient, create_event: Callable[..., int], app: Flask
) -> None:
    event_id = create_event(capacity=3)
    form = open_form(client, event_id)

    first = submit(client, event_id, "Ann", "ann@example.com", form)
    second = submit(client, event_id, "Ann", "ann@example.com", form)

    assert first.status_code == second.status_code == 303
    # the same registration's status page (each link is signed when it is made, so the
    # two differ when the submits straddle a second)
    assert registration_of(app, first.headers["Location"]) == registration_of(
        app, second.headers["Location"]
    )
    assert row_counts(app)["EventRegistrations"] == 1
    assert "We already had this form" in page_text(client.get(second.headers["Location"]))


def test_replayed_form_token_with_another_email_does_not_reveal_the_status_link(
    client: FlaskClient, create_event: Callable[..., int], app: Flask
) -> None:
    event_id = create_event(capacity=3)
    form = open_form(client, event_id)
    first = submit(client, event_id, "Ann", "ann@example.com", form)

    replay = submit(client, event_id, "Mallory", "mallory@example.com", form)

    assert replay.status_code == 422
    assert first.headers["Location"] not in replay.get_data(as_text=True)
    assert "already used" in page_text(replay)
    assert row_counts(app)["EventRegistrations"] == 1


def test_same_email_again_shows_the_existing_registration_without_its_link(
    client: FlaskClient, create_event: Callable[..., int], app: Flask
) -> None:
    event_id = create_event(capacity=1)
    register(client, event_id, "Ann", "ann@example.com")
    status_path = register(client, event_id, "Bob", "bob@example.com")
    token = status_path.rsplit("/", 1)[1]
    before = row_counts(app)
    duplicates = counter(REGISTRATIONS, outcome="duplicate")

    response = submit(client, event_id, "Bobby", "  BOB@example.com ")

    assert response.status_code == 409
    html = response.get_data(as_text=True)
    body = page_text(response)
    assert "already" in body.lower()
    assert "On the waitlist" in body and "number 1 on the waitlist" in body
    assert "confirmation email" in body
    assert token not in html and "/registrations/" not in html
    assert row_counts(app) == before
    assert counter(REGISTRATIONS, outcome="duplicate") == duplicates + 1


# -- cancel ------------------------------------------------------------------------------------
def test_following_the_cancel_link_cancels_nothing(
    client: FlaskClient, create_event: Callable[..., int], app: Flask
) -> None:
    event_id = create_event(capacity=1)
    status_path = register(client, event_id, "Ann", "ann@example.com")
    before = row_counts(app)

    page = client.get(f"{status_path}/cancel")

    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f'<form method="post" action="{status_path}/cancel"' in html
    assert "Yes, cancel my registration" in html
    assert row_counts(app) == before
    assert status_of(client, status_path) == ("Confirmed", None)


def test_cancel_promotes_the_next_person(
    client: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=1)
    ann = register(client, event_id, "Ann", "ann@example.com")
    bob = register(client, event_id, "Bob", "bob@example.com")
    cat = register(client, event_id, "Cat", "cat@example.com")
    assert status_of(client, bob) == ("On the waitlist", "1")
    cancellations = counter(CANCELLATIONS)
    confirm_page = client.get(f"{ann}/cancel").get_data(as_text=True)

    response = client.post(f"{ann}/cancel", data={"csrf_token": csrf_token_from(confirm_page)})

    assert response.status_code == 303 and response.headers["Location"] == ann
    ann_page = page_text(client.get(ann))
    assert "Your registration is cancelled" in ann_page  # the flash
    assert "Cancelled" in ann_page and "Cancel my registration" not in ann_page
    assert status_of(client, ann) == ("Cancelled", None)
    assert status_of(client, bob) == ("Confirmed", None)
    assert status_of(client, cat) == ("On the waitlist", "1")
    assert counter(CANCELLATIONS) == cancellations + 1


def test_cancelling_twice_says_it_is_already_cancelled(
    client: FlaskClient, create_event: Callable[..., int], app: Flask
) -> None:
    event_id = create_event(capacity=1)
    ann = register(client, event_id, "Ann", "ann@example.com")
    csrf = csrf_token_from(client.get(f"{ann}/cancel").get_data(as_text=True))
    assert client.post(f"{ann}/cancel", data={"csrf_token": csrf}).status_code == 303
    before = row_counts(app)

    again = client.post(f"{ann}/cancel", data={"csrf_token": csrf})
    confirm_page = client.get(f"{ann}/cancel")

    assert again.status_code == 409
    assert "already cancelled" in page_text(again)
    assert "already cancelled" in page_text(confirm_page)
    assert "Yes, cancel" not in confirm_page.get_data(as_text=True)
    assert row_counts(app) == before


def test_cancel_after_the_event_started_is_refused(
    client: FlaskClient, create_event: Callable[..., int], app: Flask
) -> None:
    event_id = create_event(capacity=1)
    ann = register(client, event_id, "Ann", "ann@example.com")
    csrf = csrf_token_from(client.get(f"{ann}/cancel").get_data(as_text=True))
    _move_event_start(app, event_id, datetime.now(UTC) - timedelta(hours=1))
    before = row_counts(app)

    response = client.post(f"{ann}/cancel", data={"csrf_token": csrf})

    assert response.status_code == 409
    assert "already started" in page_text(response)
    assert row_counts(app) == before
    assert status_of(client, ann) == ("Confirmed", None)


def _move_event_start(app: Flask, event_id: int, start: datetime) -> None:
    with app.app_context():
        from webapp.services import read_model

        detail = read_model.event_detail(event_id)
    assert detail is not None
    event_service.update_event(
        get_db(app).unit_of_work,
        event_id,
        event_service.EventDetails(
            title=detail["title"],
            description=detail["description"],
            venue=detail["venue"],
            start_date=start,
            registration_open=detail["registration_open"],
        ),
    )


def test_cancel_without_csrf_token_cancels_nothing(
    client: FlaskClient, create_event: Callable[..., int], app: Flask
) -> None:
    event_id = create_event(capacity=1)
    ann = register(client, event_id, "Ann", "ann@example.com")
    before = row_counts(app)

    response = client.post(f"{ann}/cancel")

    assert response.status_code == 400
    assert row_counts(app) == before
    assert status_of(client, ann) == ("Confirmed", None)


# -- htmx ---------------------------------------------------------------------------------------
def test_status_page_polls_with_htmx_and_works_without_it(
    client: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=1)
    register(client, event_id, "Ann", "ann@example.com")
    bob = register(client, event_id, "Bob", "bob@example.com")

    page = client.get(bob)
    html = page.get_data(as_text=True)

    assert "HX-Request" in page.headers.get("Vary", "")
    assert page.headers["Cache-Control"] == "no-store"
    assert f'hx-get="{bob}"' in html and 'hx-trigger="every 5s"' in html
    assert f'<a href="{bob}">Refresh</a>' in html  # the no-JS way
    assert 'role="status"' in html
    assert "<script>" not in html and " style=" not in html  # CSP: nothing inline


def test_htmx_request_gets_only_the_status_partial(
    client: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=1)
    ann = register(client, event_id, "Ann", "ann@example.com")
    bob = register(client, event_id, "Bob", "bob@example.com")

    partial = client.get(bob, headers={"HX-Request": "true"})
    fingerprint = re.search(r'name="seen" value="([^"]+)"', partial.get_data(as_text=True))
    unchanged = client.get(
        bob, query_string={"seen": fingerprint.group(1)}, headers={"HX-Request": "true"}
    )

    assert partial.status_code == 200
    html = partial.get_data(as_text=True)
    assert "<html" not in html and "<main" not in html
    assert "On the waitlist" in html and "#1" in html
    assert "HX-Request" in partial.headers["Vary"]
    assert unchanged.status_code == 204  # htmx keeps the page as it is
    assert "HX-Request" in unchanged.headers["Vary"]

    csrf = csrf_token_from(client.get(f"{ann}/cancel").get_data(as_text=True))
    client.post(f"{ann}/cancel", data={"csrf_token": csrf})
    changed = client.get(
        bob, query_string={"seen": fingerprint.group(1)}, headers={"HX-Request": "true"}
    )
    cancelled = client.get(ann, headers={"HX-Request": "true"})

    assert changed.status_code == 200 and "Confirmed" in changed.get_data(as_text=True)
    assert cancelled.status_code == 286  # htmx stops polling: nothing can change any more
    assert "cancelled" in cancelled.get_data(as_text=True)
