"""Staff sign-in for tests: ``login_as("viewer")`` / ``login_as("operator")``.

Import the fixture into a test module (it is not in the shared conftest). Import it
as ``login_as_fixture`` (the fixture is still called ``login_as``): importing the
name ``login_as`` itself makes ruff report F811 on every test parameter.
::

    from tests.integration.staff_fixtures import login_as_fixture  # noqa: F401

    def test_something(client, login_as):
        user = login_as("operator")          # signs ``client`` in through /login
        other = app.test_client(); login_as("viewer", client=other)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import csrf_token_from
from webapp.services.staff import StaffUser, create_user

#: every account made by ``login_as`` has this password unless told otherwise
STAFF_PASSWORD = "correct horse battery staple"

LoginAs = Callable[..., StaffUser]


def create_staff(
    app: Flask, role: str, email: str, name: str = "", password: str = STAFF_PASSWORD
) -> StaffUser:
    with app.app_context():
        return create_user(email, name or f"Test {role}", role, password, actor="test")


def sign_in(client: FlaskClient, email: str, password: str = STAFF_PASSWORD) -> None:
    token = csrf_token_from(client.get("/login").text)
    response = client.post(
        "/login", data={"csrf_token": token, "email": email, "password": password}
    )
    assert response.status_code == 302, response.text


@pytest.fixture(name="login_as")
def login_as_fixture(app: Flask, client: FlaskClient) -> LoginAs:
    """Factory: create a staff account with ``role`` and sign ``client`` in with it."""
    numbers = itertools.count(1)

    def login(
        role: str = "operator",
        *,
        client: FlaskClient = client,
        email: str | None = None,
        password: str = STAFF_PASSWORD,
    ) -> StaffUser:
        address = email or f"{role}{next(numbers)}@staff.example.test"
        user = create_staff(app, role, address, password=password)
        sign_in(client, address, password)
        return user

    return login


#: the same fixture under its own name (for ``from ... import login_as``)
login_as = login_as_fixture
