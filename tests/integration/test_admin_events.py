"""Organiser pages: create and edit events, capacity with preview, attendee lists, CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import csrf_token_from
from tests.integration.staff_fixtures import STAFF_PASSWORD, login_as_fixture  # noqa: F401
from webapp.adapters.tables import audit_log, events, outbox_messages
from webapp.extensions import get_db
from webapp.services import read_model
from webapp.services import registrations as registration_service

pytestmark = pytest.mark.redis

FUTURE = (datetime.now(UTC) + timedelta(days=60)).replace(second=0, microsecond=0)
FIELD_ERROR = re.compile(r'<p class="field-error" id="([a-z_]+)-error">([^<]+)</p>')


@pytest.fixture
def operator(client: FlaskClient, login_as: Callable[..., Any]) -> FlaskClient:
    login_as("operator")
    return client


def token(client: FlaskClient, path: str = "/admin/") -> str:
    return csrf_token_from(client.get(path).text)


def field_errors(html: str) -> dict[str, str]:
    return {name: message for name, message in FIELD_ERROR.findall(html)}


def event_rows(app: Flask) -> list[dict[str, Any]]:
    with app.app_context():
        return read_model.all_events()


def register(app: Flask, event_id: int, *names: str) -> None:
    for name in names:
        registration_service.register(
            get_db(app).unit_of_work, event_id, name, f"{name.lower()}@example.test"
        )


def attendees(app: Flask, event_id: int) -> list[tuple[str, str, int | None]]:
    with app.app_context():
        rows = read_model.event_attendees(event_id)
    return [(r["name"], r["status"], r["position"]) for r in rows]


def valid_event_form(**overrides: str) -> dict[str, str]:
    data = {
        "title": "Rust for Pythonistas",
        "description": "Bring a laptop.",
        "venue": "Room 7",
        "start": FUTURE.strftime("%Y-%m-%dT%H:%M"),
        "capacity": "25",
        "registration_open": "y",
    }
    data.update(overrides)
    return data


# -- create and edit ----------------------------------------------------------------------
def test_create_event_stores_it_in_utc_and_lists_it(app: Flask, operator: FlaskClient) -> None:
    data = valid_event_form(start="2031-03-04T18:30")
    data.pop("registration_open")  # unchecked box: registration closed
    response = operator.post(
        "/admin/events/new", data={"csrf_token": token(operator, "/admin/events/new"), **data}
    )
    assert response.status_code == 302
    event_id = int(response.headers["Location"].rsplit("/", 1)[1])
    with app.app_context():
        event = read_model.event_detail(event_id)
    assert event is not None
    assert event["title"] == "Rust for Pythonistas"
    assert event["venue"] == "Room 7"
    assert event["capacity"] == 25
    assert event["registration_open"] is False
    assert event["start_date"] == datetime(2031, 3, 4, 18, 30, tzinfo=UTC)

    page = operator.get(response.headers["Location"]).text
    assert "Event “Rust for Pythonistas” created." in page
    assert "2031-03-04 18:30 UTC" in page
    overview = operator.get("/admin/").text
    assert "Rust for Pythonistas" in overview
    assert "closed" in overview


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"title": "   "}, "title", "The event needs a title."),
        ({"title": "x" * 201}, "title", "at most 200 characters"),
        ({"capacity": "-5"}, "capacity", "Capacity must be zero or a positive number."),
        ({"capacity": "ten"}, "capacity", "Capacity must be a whole number"),
        ({"capacity": "2.5"}, "capacity", "Capacity must be a whole number"),
        ({"capacity": ""}, "capacity", "Please enter the capacity."),
        ({"capacity": "100001"}, "capacity", "at most 100,000"),
        ({"start": "next tuesday"}, "start", "date and time in UTC"),
        ({"start": "2001-01-01T10:00"}, "start", "The start must be in the future."),
    ],
)
def test_create_event_with_bad_input_explains_and_writes_nothing(
    app: Flask, operator: FlaskClient, overrides: dict[str, str], field: str, message: str
) -> None:
    response = operator.post(
        "/admin/events/new",
        data={"csrf_token": token(operator, "/admin/events/new"), **valid_event_form(**overrides)},
    )
    assert response.status_code == 422
    errors = field_errors(response.text)
    assert field in errors, response.text
    assert message in errors[field]
    assert re.search(f'aria-describedby="[^"]*{field}-error"', response.text)
    assert event_rows(app) == []


def test_edit_event_changes_details(
    app: Flask, operator: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=4, title="Old title")
    form_page = operator.get(f"/admin/events/{event_id}/edit").text
    assert 'value="Old title"' in form_page
    response = operator.post(
        f"/admin/events/{event_id}/edit",
        data={
            "csrf_token": csrf_token_from(form_page),
            "title": "New title",
            "description": "Moved upstairs",
            "venue": "Loft",
            "start": "2032-12-01T09:15",
        },
    )
    assert response.status_code == 302
    with app.app_context():
        event = read_model.event_detail(event_id)
    assert event is not None
    assert (event["title"], event["venue"], event["description"]) == (
        "New title",
        "Loft",
        "Moved upstairs",
    )
    assert event["start_date"] == datetime(2032, 12, 1, 9, 15, tzinfo=UTC)
    assert event["registration_open"] is False
    assert event["capacity"] == 4


def test_edit_event_with_empty_title_keeps_the_old_details(
    app: Flask, operator: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=4, title="Keep me")
    response = operator.post(
        f"/admin/events/{event_id}/edit",
        data={
            "csrf_token": token(operator),
            "title": "",
            "venue": "Elsewhere",
            "start": "2032-12-01T09:15",
            "registration_open": "y",
        },
    )
    assert response.status_code == 422
    assert field_errors(response.text)["title"] == "The event needs a title."
    with app.app_context():
        event = read_model.event_detail(event_id)
    assert event is not None
    assert (event["title"], event["venue"]) == ("Keep me", "Test Hall")


def test_unknown_event_is_404(operator: FlaskClient) -> None:
    assert operator.get("/admin/events/999999").status_code == 404
    assert operator.get("/admin/events/999999/edit").status_code == 404
    assert operator.get("/admin/events/999999/attendees.csv").status_code == 404
    response = operator.post(
        "/admin/events/999999/capacity/apply", data={"csrf_token": token(operator), "capacity": "3"}
    )
    assert response.status_code == 404


# -- capacity ------------------------------------------------------------------------------
@pytest.fixture
def full_event(app: Flask, create_event: Callable[..., int]) -> int:
    """3 seats, all confirmed (Ann, Bob, Cid), and 4 waiting: Dee, Eve, Fay, Gus."""
    event_id = create_event(capacity=3, title="Full house")
    register(app, event_id, "Ann", "Bob", "Cid", "Dee", "Eve", "Fay", "Gus")
    return event_id


@pytest.mark.parametrize(
    ("capacity", "text"),
    [
        ("5", "+2 promotes 2 waiting people; 2 will still be waiting."),
        ("4", "+1 promotes 1 waiting person; 3 will still be waiting."),
        ("10", "+7 promotes 4 waiting people; 3 seats stay free."),
        ("3", "No change: the capacity stays at 3."),
        ("2", "Capacity cannot go below the 3 confirmed seats (asked for 2)"),
        ("-1", "Capacity must be zero or a positive number."),
        ("lots", "Capacity must be a whole number"),
    ],
)
def test_capacity_preview_partial_describes_the_effect(
    app: Flask, operator: FlaskClient, full_event: int, capacity: str, text: str
) -> None:
    response = operator.get(
        f"/admin/events/{full_event}/capacity/preview",
        query_string={"capacity": capacity},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    assert response.text.lstrip().startswith('<div id="capacity-preview"')
    assert "<html" not in response.text
    assert text in response.text
    with app.app_context():
        assert read_model.event_detail(full_event)["capacity"] == 3  # type: ignore[index]


def test_capacity_page_wires_the_live_preview(operator: FlaskClient, full_event: int) -> None:
    html = operator.get(f"/admin/events/{full_event}/capacity").text
    assert f'hx-get="/admin/events/{full_event}/capacity/preview"' in html
    assert 'hx-trigger="input changed delay:300ms"' in html
    assert 'hx-target="#capacity-preview"' in html
    assert f'formaction="/admin/events/{full_event}/capacity/apply"' in html


def test_capacity_preview_without_js_rerenders_the_page_and_changes_nothing(
    app: Flask, operator: FlaskClient, full_event: int
) -> None:
    csrf = token(operator, f"/admin/events/{full_event}/capacity")
    response = operator.post(
        f"/admin/events/{full_event}/capacity",
        data={"csrf_token": csrf, "capacity": "6", "action": "preview"},
    )
    assert response.status_code == 200
    assert "+3 promotes 3 waiting people; 1 will still be waiting." in response.text
    assert 'value="6"' in response.text  # the typed value stays for "Apply"
    refused = operator.post(
        f"/admin/events/{full_event}/capacity",
        data={"csrf_token": csrf, "capacity": "1", "action": "preview"},
    )
    assert refused.status_code == 422
    assert "cannot go below the 3 confirmed seats" in refused.text
    with app.app_context():
        assert read_model.event_detail(full_event)["capacity"] == 3  # type: ignore[index]


def test_capacity_increase_promotes_in_queue_order(
    app: Flask, operator: FlaskClient, full_event: int
) -> None:
    response = operator.post(
        f"/admin/events/{full_event}/capacity/apply",
        data={"csrf_token": token(operator), "capacity": "5"},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/events/{full_event}"
    page = operator.get(response.headers["Location"]).text
    assert "Capacity 5: 2 people promoted." in page
    assert attendees(app, full_event) == [
        ("Ann", "Confirmed", None),
        ("Bob", "Confirmed", None),
        ("Cid", "Confirmed", None),
        ("Dee", "Confirmed", None),
        ("Eve", "Confirmed", None),
        ("Fay", "Waitlisted", 1),
        ("Gus", "Waitlisted", 2),
    ]
    # the page lists the remaining waitlist with positions
    assert re.search(r"<td>1</td><td>Fay</td>", page)
    assert re.search(r"<td>2</td><td>Gus</td>", page)


@pytest.mark.parametrize(
    ("capacity", "message"),
    [
        ("2", "Capacity cannot go below the 3 confirmed seats (asked for 2)"),
        ("-3", "Capacity must be zero or a positive number."),
        ("abc", "Capacity must be a whole number"),
    ],
)
def test_refused_capacity_change_explains_and_writes_nothing(
    app: Flask, operator: FlaskClient, full_event: int, capacity: str, message: str
) -> None:
    with get_db(app).engine.connect() as conn:
        outbox_before = conn.execute(select(func.count()).select_from(outbox_messages)).scalar()
    response = operator.post(
        f"/admin/events/{full_event}/capacity/apply",
        data={"csrf_token": token(operator), "capacity": capacity},
    )
    assert response.status_code == 422
    assert message in response.text
    with get_db(app).engine.connect() as conn:
        row = conn.execute(
            select(events.c.Capacity, events.c.ConfirmedCount).where(events.c.Id == full_event)
        ).one()
        outbox_after = conn.execute(select(func.count()).select_from(outbox_messages)).scalar()
    assert tuple(row) == (3, 3)
    assert outbox_after == outbox_before


def test_capacity_apply_asks_for_the_password_when_login_is_old(
    app: Flask, operator: FlaskClient, full_event: int
) -> None:
    capacity_page = f"/admin/events/{full_event}/capacity"
    csrf = token(operator, capacity_page)
    with operator.session_transaction() as session:
        session["login_at"] = time.time() - 16 * 60  # RECENT_LOGIN_MINUTES is 15
    response = operator.post(
        f"{capacity_page}/apply",
        data={"csrf_token": csrf, "capacity": "4"},
        headers={"Referer": f"http://localhost{capacity_page}"},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/login/confirm?next={capacity_page}"
    with app.app_context():
        assert read_model.event_detail(full_event)["capacity"] == 3  # type: ignore[index]

    confirm = operator.get(response.headers["Location"])
    assert "Confirm your password" in confirm.text
    wrong = operator.post(
        response.headers["Location"],
        data={"csrf_token": csrf_token_from(confirm.text), "password": "not the password"},
    )
    assert wrong.status_code == 401
    assert "Wrong password." in wrong.text
    right = operator.post(
        response.headers["Location"],
        data={"csrf_token": csrf_token_from(confirm.text), "password": STAFF_PASSWORD},
    )
    assert right.status_code == 302
    assert right.headers["Location"] == capacity_page
    done = operator.post(f"{capacity_page}/apply", data={"csrf_token": csrf, "capacity": "4"})
    assert done.status_code == 302
    assert attendees(app, full_event)[3] == ("Dee", "Confirmed", None)


# -- attendee list and CSV -------------------------------------------------------------------
def test_attendee_page_shows_confirmed_waitlist_and_cancelled(
    app: Flask, client: FlaskClient, login_as: Callable[..., Any], create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=1, title="Tiny")
    register(app, event_id, "Ann", "Bob", "Cid")
    with app.app_context():
        bob = next(r for r in read_model.event_attendees(event_id) if r["name"] == "Bob")
    registration_service.cancel(get_db(app).unit_of_work, bob["registration_id"])
    login_as("viewer")
    page = client.get(f"/admin/events/{event_id}").text
    assert "Confirmed (1)" in page
    assert "Waitlist (1)" in page
    assert "Cancelled (1)" in page
    assert re.search(r"<td>1</td><td>Cid</td><td>cid@example.test</td>", page)
    # a viewer sees no change buttons
    assert "Change capacity" not in page
    assert "Edit details" not in page


def test_csv_export_lists_everyone_in_order_and_neutralises_formulas(
    app: Flask, client: FlaskClient, login_as: Callable[..., Any], create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=2, title="Spreadsheet")
    for name in ('=HYPERLINK("http://evil","x")', "+SUM(A1)", "-2+3", "@cmd", "Plain Person"):
        safe_email = re.sub(r"[^a-z]", "", name.lower()) or "x"
        registration_service.register(
            get_db(app).unit_of_work, event_id, name, f"{safe_email}@example.test"
        )
    login_as("viewer")
    response = client.get(f"/admin/events/{event_id}/attendees.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="event-{event_id}-attendees.csv"'
    )
    assert response.headers["Cache-Control"] == "no-store"
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:4] == ["Status", "Waitlist position", "Name", "Email"]
    body = [(r[0], r[1], r[2]) for r in rows[1:]]
    assert body == [
        ("Confirmed", "", '\'=HYPERLINK("http://evil","x")'),
        ("Confirmed", "", "'+SUM(A1)"),
        ("Waitlisted", "1", "'-2+3"),
        ("Waitlisted", "2", "'@cmd"),
        ("Waitlisted", "3", "Plain Person"),
    ]
    for row in rows[1:]:
        assert all(not cell.startswith(("=", "+", "-", "@")) for cell in row), row


def audit_rows(app: Flask) -> list[dict[str, Any]]:
    with get_db(app).engine.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.Id)).mappings().all()
    return [{**r, "Target": json.loads(r["Target"])} for r in rows]


def test_organiser_changes_are_audited_in_the_same_transaction(
    app: Flask, operator: FlaskClient, full_event: int
) -> None:
    before = [r for r in audit_rows(app) if r["Action"].startswith("event.")]
    assert before == []
    refused = operator.post(
        f"/admin/events/{full_event}/capacity/apply",
        data={"csrf_token": token(operator), "capacity": "1"},
    )
    assert refused.status_code == 422
    assert [r for r in audit_rows(app) if r["Action"] == "event.capacity"] == []

    operator.post(
        f"/admin/events/{full_event}/capacity/apply",
        data={"csrf_token": token(operator), "capacity": "5"},
    )
    (row,) = [r for r in audit_rows(app) if r["Action"] == "event.capacity"]
    assert row["Target"] == {"event_id": full_event, "from": 3, "to": 5, "promoted": 2}
    assert str(row["Actor"]).endswith("@staff.example.test")
    assert row["Outcome"] == "done"
