"""Who may open which staff page: anonymous, viewer, operator.

Two walks: an explicit table of the organiser and sign-in routes with the exact
answer each role gets, and a generic walk over *every* rule of the ``admin`` and
``operator`` blueprints (so pages added later are covered without editing this
file): anonymous GETs never answer 200, and no POST from an anonymous user or a
viewer (with a valid CSRF token) ever succeeds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule
from werkzeug.routing.converters import IntegerConverter, UUIDConverter

from tests.conftest import csrf_token_from
from tests.integration.staff_fixtures import login_as_fixture  # noqa: F401
from webapp.services import read_model

pytestmark = pytest.mark.redis

STAFF_BLUEPRINTS = ("admin.", "operator.")

# endpoint -> (anonymous GET, viewer GET, operator GET); None: the rule has no GET
EXPECTED_GET: dict[str, tuple[int, int, int]] = {
    "admin.index": (302, 200, 200),
    "admin.event": (302, 200, 200),
    "admin.attendees_csv": (302, 200, 200),
    "admin.create_event": (302, 403, 200),
    "admin.edit_event": (302, 403, 200),
    "admin.capacity": (302, 403, 200),
    "admin.capacity_preview": (302, 403, 200),
    "auth.reauthenticate": (302, 200, 200),
}
# endpoint -> (anonymous POST, viewer POST), with a valid CSRF token
EXPECTED_POST: dict[str, tuple[int, int]] = {
    "admin.create_event": (302, 403),
    "admin.edit_event": (302, 403),
    "admin.capacity": (302, 403),
    "admin.apply_capacity": (302, 403),
}


def staff_rules(app: Flask) -> Iterator[Rule]:
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(STAFF_BLUEPRINTS):
            yield rule


def url_for_rule(rule: Rule, event_id: int) -> str:
    """A concrete URL for ``rule``: ints get the test event's id, UUIDs a random one."""
    values: dict[str, object] = {}
    for name in rule.arguments:
        converter = rule._converters[name]
        if isinstance(converter, IntegerConverter):
            values[name] = event_id
        elif isinstance(converter, UUIDConverter):
            values[name] = uuid.uuid4()
        else:
            values[name] = "1"
    _, path = rule.build(values, append_unknown=False)  # type: ignore[misc]
    if rule.endpoint == "admin.capacity_preview":
        path += "?capacity=5"
    return path


def is_login_redirect(response: object) -> bool:
    location = getattr(response, "headers", {}).get("Location", "")
    return location.startswith("/login")


@pytest.fixture
def event_id(create_event: Callable[..., int]) -> int:
    return create_event(capacity=3, title="Access Walk")


def test_anonymous_gets_are_redirected_to_login_with_next(
    app: Flask, client: FlaskClient, event_id: int
) -> None:
    for rule in staff_rules(app):
        if "GET" not in rule.methods:
            continue
        path = url_for_rule(rule, event_id)
        response = client.get(path)
        assert response.status_code != 200, f"{rule.endpoint} answered 200 to anonymous"
        if rule.endpoint.startswith("admin."):
            assert response.status_code == 302, rule.endpoint
            assert response.headers["Location"].startswith("/login?next=/admin"), rule.endpoint


def test_htmx_request_from_anonymous_gets_401_with_hx_redirect(
    client: FlaskClient, event_id: int
) -> None:
    response = client.get(
        f"/admin/events/{event_id}/capacity/preview?capacity=5", headers={"HX-Request": "true"}
    )
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login")


def test_no_staff_post_succeeds_for_anonymous_or_viewer(
    app: Flask, client: FlaskClient, login_as: Callable[..., object], event_id: int
) -> None:
    post_rules = [rule for rule in staff_rules(app) if "POST" in rule.methods]
    assert post_rules, "the admin blueprint has POST routes"
    anonymous_token = csrf_token_from(client.get("/login").text)
    for rule in post_rules:
        response = client.post(
            url_for_rule(rule, event_id), data={"csrf_token": anonymous_token, "capacity": "9"}
        )
        assert response.status_code >= 400 or is_login_redirect(response), rule.endpoint

    login_as("viewer")
    token = csrf_token_from(client.get("/admin/").text)
    for rule in post_rules:
        response = client.post(
            url_for_rule(rule, event_id),
            data={"csrf_token": token, "capacity": "9", "title": "Hijacked", "reason": "x"},
        )
        assert 400 <= response.status_code < 500, f"viewer POST {rule.endpoint}"
    with app.app_context():
        event = read_model.event_detail(event_id)
    assert event is not None
    assert (event["capacity"], event["title"]) == (3, "Access Walk")


def test_every_organiser_route_answers_each_role_as_expected(
    app: Flask, client: FlaskClient, login_as: Callable[..., object], event_id: int
) -> None:
    rules = {rule.endpoint: rule for rule in app.url_map.iter_rules()}
    admin_endpoints = {e for e in rules if e.startswith("admin.")}
    assert admin_endpoints <= set(EXPECTED_GET) | set(EXPECTED_POST), (
        "a new admin route needs a row in EXPECTED_GET/EXPECTED_POST"
    )
    operator_client = app.test_client()
    viewer_client = app.test_client()
    login_as("operator", client=operator_client)
    login_as("viewer", client=viewer_client)

    for endpoint, (anonymous, viewer, operator) in EXPECTED_GET.items():
        path = url_for_rule(rules[endpoint], event_id)
        assert client.get(path).status_code == anonymous, f"anonymous GET {endpoint}"
        assert viewer_client.get(path).status_code == viewer, f"viewer GET {endpoint}"
        assert operator_client.get(path).status_code == operator, f"operator GET {endpoint}"

    anonymous_token = csrf_token_from(client.get("/login").text)
    viewer_token = csrf_token_from(viewer_client.get("/admin/").text)
    for endpoint, (anonymous, viewer) in EXPECTED_POST.items():
        path = url_for_rule(rules[endpoint], event_id)
        response = client.post(path, data={"csrf_token": anonymous_token})
        assert response.status_code == anonymous, f"anonymous POST {endpoint}"
        assert is_login_redirect(response)
        response = viewer_client.post(path, data={"csrf_token": viewer_token, "capacity": "8"})
        assert response.status_code == viewer, f"viewer POST {endpoint}"
        assert "only an operator can make changes" in response.text

    # GET on POST-only actions and on the logout is refused
    assert operator_client.get(f"/admin/events/{event_id}/capacity/apply").status_code == 405
    assert operator_client.get("/logout").status_code == 405
    assert client.get("/login").status_code == 200


def test_post_without_csrf_token_is_refused_even_for_operators(
    app: Flask, client: FlaskClient, login_as: Callable[..., object], event_id: int
) -> None:
    login_as("operator")
    response = client.post(f"/admin/events/{event_id}/capacity/apply", data={"capacity": "9"})
    assert response.status_code == 400
    assert "security token" in response.text
    with app.app_context():
        assert read_model.event_detail(event_id)["capacity"] == 3  # type: ignore[index]
