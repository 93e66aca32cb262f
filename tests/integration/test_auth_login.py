"""Staff sign-in: credentials, sessions, rate limit, re-hashing, secrets kept out of logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from tests.conftest import csrf_token_from, make_app
from tests.integration.staff_fixtures import (
    STAFF_PASSWORD,
    create_staff,
    login_as_fixture,  # noqa: F401
    sign_in,
)
from webapp.adapters.tables import staff_users
from webapp.extensions import get_db

pytestmark = pytest.mark.redis

GENERIC = "Wrong email or password."


def post_login(client: FlaskClient, email: str, password: str, path: str = "/login") -> Any:
    token = csrf_token_from(client.get("/login").text)
    return client.post(path, data={"csrf_token": token, "email": email, "password": password})


def stored_user(app: Flask, email: str) -> Any:
    with get_db(app).engine.connect() as conn:
        return conn.execute(select(staff_users).where(staff_users.c.Email == email)).one()


def test_sign_in_redirects_to_next_and_records_login_time(app: Flask, client: FlaskClient) -> None:
    create_staff(app, "viewer", "Vera@Example.test", name="Vera")
    before = time.time()
    response = post_login(
        client, "  vera@EXAMPLE.test ", STAFF_PASSWORD, path="/login?next=/admin/events/1"
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/events/1"
    with client.session_transaction() as session:
        assert before <= session["login_at"] <= time.time()
        assert session["_user_id"] == str(stored_user(app, "vera@example.test").Id)
    assert stored_user(app, "vera@example.test").LastLoginAt is not None
    page = client.get("/admin/")
    assert page.status_code == 200
    assert "Vera (viewer)" in page.text
    assert "Sign out" in page.text


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil"])
def test_sign_in_never_redirects_off_site(app: Flask, client: FlaskClient, target: str) -> None:
    create_staff(app, "viewer", "v@example.test")
    response = post_login(client, "v@example.test", STAFF_PASSWORD, path=f"/login?next={target}")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/"


def test_wrong_password_and_unknown_email_get_the_same_401(app: Flask, client: FlaskClient) -> None:
    create_staff(app, "operator", "op@example.test")
    wrong = post_login(client, "op@example.test", "not the right password")
    unknown = post_login(client, "nobody@example.test", STAFF_PASSWORD)
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert GENERIC in response.text
        assert 'value="not the right password"' not in response.text
    assert client.get("/admin/").status_code == 302
    assert stored_user(app, "op@example.test").LastLoginAt is None


def test_empty_fields_are_explained(client: FlaskClient) -> None:
    response = post_login(client, "", "")
    assert response.status_code == 422
    assert "Please enter your email." in response.text
    assert "Please enter your password." in response.text


def test_login_without_csrf_token_is_refused(app: Flask, client: FlaskClient) -> None:
    create_staff(app, "operator", "op@example.test")
    response = client.post("/login", data={"email": "op@example.test", "password": STAFF_PASSWORD})
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 302


def test_disabled_account_cannot_sign_in_and_loses_its_session(
    app: Flask, client: FlaskClient
) -> None:
    create_staff(app, "operator", "op@example.test")
    sign_in(client, "op@example.test")
    assert client.get("/admin/").status_code == 200
    with get_db(app).engine.begin() as conn:
        conn.execute(update(staff_users).values(Active=False))
    assert client.get("/admin/").status_code == 302  # the session no longer counts
    response = post_login(app.test_client(), "op@example.test", STAFF_PASSWORD)
    assert response.status_code == 401
    assert GENERIC in response.text


def test_logout_is_a_post_and_ends_the_session(
    client: FlaskClient, login_as: Callable[..., Any]
) -> None:
    login_as("operator")
    page = client.get("/admin/").text
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400  # no CSRF token
    assert client.get("/admin/").status_code == 200
    response = client.post("/logout", data={"csrf_token": csrf_token_from(page)})
    assert response.status_code == 302
    assert response.headers["Location"] == "/login"
    assert "You are signed out." in client.get("/login").text
    assert client.get("/admin/").status_code == 302


def test_outdated_hash_is_rehashed_on_login(app: Flask, client: FlaskClient) -> None:
    create_staff(app, "viewer", "old@example.test")
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(STAFF_PASSWORD)
    with get_db(app).engine.begin() as conn:
        conn.execute(update(staff_users).values(PasswordHash=weak))
    sign_in(client, "old@example.test")
    new_hash = stored_user(app, "old@example.test").PasswordHash
    assert new_hash != weak
    assert not PasswordHasher().check_needs_rehash(new_hash)
    assert PasswordHasher().verify(new_hash, STAFF_PASSWORD)
    sign_in(app.test_client(), "old@example.test")  # the new hash works
    assert stored_user(app, "old@example.test").PasswordHash == new_hash


@pytest.fixture
def limited_app(db_url: str, redis_url: str) -> Iterator[Flask]:
    application = make_app(
        db_url, redis_url, RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="3 per minute"
    )
    yield application
    get_db(application).dispose()


def test_login_attempts_are_rate_limited_with_a_friendly_page(limited_app: Flask) -> None:
    create_staff(limited_app, "operator", "op@example.test")
    client = limited_app.test_client()
    for _ in range(3):
        assert post_login(client, "op@example.test", "guess guess guess").status_code == 401
    blocked = post_login(client, "op@example.test", STAFF_PASSWORD)
    assert blocked.status_code == 429
    assert "Slow down a little" in blocked.text
    assert client.get("/admin/").status_code == 302  # even the right password did not sign in
    assert client.get("/login").status_code == 200  # the page itself is not limited
    with get_db(limited_app).engine.connect() as conn:
        last_login = conn.execute(select(staff_users.c.LastLoginAt)).scalar_one()
    assert last_login is None


def test_passwords_never_reach_the_logs(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    from webapp.services.staff import ensure_admin

    secret = "Sup3r-Secret-Passphrase-42"
    caplog.set_level(logging.DEBUG)
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["users", "create", "--email", "log@example.test", "--name", "Log", "--role",
              "operator", "--password", secret]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    assert post_login(app.test_client(), "log@example.test", secret).status_code == 302
    assert post_login(app.test_client(), "log@example.test", secret + "-x").status_code == 401
    assert post_login(app.test_client(), "nobody@example.test", secret).status_code == 401
    with app.app_context():
        assert ensure_admin("boot@example.test", "Boot") is None  # accounts exist
    assert any("staff" in record.getMessage() for record in caplog.records)
    for record in caplog.records:
        dumped = repr(record.__dict__) + record.getMessage()
        assert secret not in dumped, record
        assert "$argon2" not in dumped, record


def test_first_admin_is_created_once_with_a_random_password(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    from webapp.services.staff import ensure_admin, list_users

    caplog.set_level(logging.DEBUG)
    with app.app_context():
        password = ensure_admin("admin@example.test", "Admin")
        assert password is not None
        assert len(password) >= 20
        assert ensure_admin("admin@example.test", "Admin") is None
        assert [(u.email, u.role) for u in list_users()] == [("admin@example.test", "operator")]
    assert all(password not in repr(r.__dict__) for r in caplog.records)
    sign_in(client, "admin@example.test", password)
    assert client.get("/admin/events/new").status_code == 200
