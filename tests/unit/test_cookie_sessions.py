"""Session cookies verified once per process still behave exactly like Flask's:
a tampered, expired or re-keyed cookie opens an empty session, and what one request
changes in its session never leaks into another request's copy."""

from __future__ import annotations

import time
from datetime import timedelta
from unittest import mock

import pytest
from flask import Flask, flash, get_flashed_messages, session
from flask.testing import FlaskClient

from webapp.adapters.cookie_sessions import VerifiedCookieSessions


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="k" * 32, PERMANENT_SESSION_LIFETIME=timedelta(hours=1))
    app.session_interface = VerifiedCookieSessions(max_kept=4)

    @app.get("/login/<name>")
    def login(name: str) -> str:
        session["user"] = name
        flash(f"hello {name}")
        return "ok"

    @app.get("/whoami")
    def whoami() -> str:
        return str(session.get("user", "nobody"))

    @app.get("/messages")
    def messages() -> str:
        return ",".join(get_flashed_messages())

    @app.get("/scribble")
    def scribble() -> str:  # changes this request's copy only, never saved
        session["user"] = "mallory"
        session.modified = False
        return str(session["user"])

    return app


def _cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def test_a_kept_cookie_opens_the_same_session_every_time(app: Flask) -> None:
    client = app.test_client()
    client.get("/login/ann")
    assert [client.get("/whoami").text for _ in range(3)] == ["ann", "ann", "ann"]


def test_changes_to_one_request_s_session_do_not_reach_the_next(app: Flask) -> None:
    client = app.test_client()
    client.get("/login/ann")
    assert client.get("/whoami").text == "ann"  # now kept
    assert client.get("/scribble").text == "mallory"
    assert client.get("/whoami").text == "ann"
    # flashed messages (a list) are consumed once, and only once
    assert client.get("/messages").text == "hello ann"
    assert client.get("/messages").text == ""


def test_a_tampered_cookie_opens_an_empty_session(app: Flask) -> None:
    client = app.test_client()
    client.get("/login/ann")
    value = _cookie(client)
    client.get("/whoami")  # kept
    forged = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    client.set_cookie("session", forged)
    assert client.get("/whoami").text == "nobody"


def test_an_expired_cookie_opens_an_empty_session_even_when_kept(app: Flask) -> None:
    client = app.test_client()
    client.get("/login/ann")
    assert client.get("/whoami").text == "ann"  # kept
    later = time.time() + 2 * 3600
    with (
        mock.patch("webapp.adapters.cookie_sessions.time.time", return_value=later),
        mock.patch("itsdangerous.timed.time.time", return_value=later),
    ):
        assert client.get("/whoami").text == "nobody"


def test_a_new_secret_key_does_not_accept_cookies_signed_with_the_old(app: Flask) -> None:
    client = app.test_client()
    client.get("/login/ann")
    assert client.get("/whoami").text == "ann"  # kept under the old key
    app.secret_key = "n" * 32
    assert client.get("/whoami").text == "nobody"
    app.config["SECRET_KEY_FALLBACKS"] = ["k" * 32]  # rotation: the old key still verifies
    assert client.get("/whoami").text == "ann"


def test_at_most_max_kept_cookies_are_kept(app: Flask) -> None:
    interface = app.session_interface
    assert isinstance(interface, VerifiedCookieSessions)
    for n in range(10):
        client = app.test_client()
        client.get(f"/login/user{n}")
        assert client.get("/whoami").text == f"user{n}"
    assert len(interface._verified) == 4
