"""Blueprints, one per audience, and the app-wide error pages and headers."""

from __future__ import annotations

from flask import Flask

from webapp.views import errors, security_headers


def init_app(app: Flask) -> None:
    from webapp.views import health

    app.register_blueprint(health.bp)
    for module_name in ("public", "auth", "admin", "operator"):
        module = _optional_view(module_name)
        if module is not None:
            app.register_blueprint(module.bp)
    errors.init_app(app)
    security_headers.init_app(app)


def _optional_view(name: str) -> object | None:
    import importlib

    try:
        return importlib.import_module(f"webapp.views.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"webapp.views.{name}":
            raise
        return None
