"""Every response carries the security headers; a view's own value wins."""

from __future__ import annotations

from flask import Flask, Response

from webapp.views import security_headers


def make_app(env: str) -> Flask:
    app = Flask(__name__)
    app.config["ENV"] = env
    security_headers.init_app(app)

    @app.get("/plain")
    def plain() -> str:
        return "ok"

    @app.get("/framed")
    def framed() -> Response:
        response = Response("ok")
        response.headers["x-frame-options"] = "SAMEORIGIN"  # any spelling of the name
        response.headers["Content-Security-Policy"] = "default-src 'none'"
        return response

    @app.get("/missing")
    def missing() -> tuple[str, int]:
        return "no such page", 404

    return app


def test_every_response_carries_the_security_headers() -> None:
    client = make_app("production").test_client()
    for path, status in (("/plain", 200), ("/missing", 404), ("/nowhere", 404)):
        response = client.get(path)
        assert response.status_code == status
        headers = response.headers
        assert headers["Content-Security-Policy"] == security_headers.CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["Permissions-Policy"] == "camera=(), microphone=(), geolocation=()"
        assert headers["Strict-Transport-Security"] == "max-age=31536000"


def test_hsts_only_in_production() -> None:
    response = make_app("development").test_client().get("/plain")
    assert "Strict-Transport-Security" not in response.headers
    assert response.headers["X-Frame-Options"] == "DENY"


def test_a_view_that_sets_a_header_keeps_its_own_value_once() -> None:
    response = make_app("production").test_client().get("/framed")
    assert response.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert response.headers.getlist("Content-Security-Policy") == ["default-src 'none'"]
    assert response.headers.getlist("X-Content-Type-Options") == ["nosniff"]
