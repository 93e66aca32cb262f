"""Friendly error pages: a clear reason and the right 4xx, never a bare status page."""

from __future__ import annotations

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from webapp.services.retry import ServiceBusy


def _wants_fragment() -> bool:
    return request.headers.get("HX-Request") == "true"


def render_error(status: int, title: str, message: str) -> tuple[str, int]:
    template = "errors/_error.html" if _wants_fragment() else "errors/error.html"
    return render_template(template, status=status, title=title, message=message), status


def init_app(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> tuple[str, int]:
        return render_error(
            400,
            "Your form expired",
            "The form was missing its security token or it expired. "
            "Please go back, reload the page and submit again.",
        )

    @app.errorhandler(429)
    def too_many_requests(error: HTTPException) -> tuple[str, int]:
        return render_error(
            429,
            "Slow down a little",
            "You have sent a lot of requests in a short time. Please wait a minute and try again.",
        )

    @app.errorhandler(ServiceBusy)
    def busy(error: ServiceBusy) -> tuple[str, int]:
        return render_error(503, "Busy right now", str(error))

    @app.errorhandler(404)
    def not_found(error: HTTPException) -> tuple[str, int]:
        return render_error(404, "Not found", error.description or "This page does not exist.")

    @app.errorhandler(405)
    def method_not_allowed(error: HTTPException) -> tuple[str, int]:
        return render_error(405, "Not allowed", "This page does not accept that method.")
