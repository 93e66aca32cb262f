"""Blueprints, one per audience, and the app-wide error pages and headers."""

from __future__ import annotations

from flask import Flask

from webapp.adapters.cache_pages import live_part
from webapp.views import admin, auth, errors, health, operator, public, security_headers


def init_app(app: Flask) -> None:
    for blueprint in (health.bp, public.bp, auth.bp, admin.bp, operator.bp):
        app.register_blueprint(blueprint)
    app.jinja_env.globals["live_part"] = live_part
    errors.init_app(app)
    security_headers.init_app(app)
