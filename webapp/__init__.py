"""The Live Event Service Flask application."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from flask import Flask

from webapp.adapters.cookie_sessions import VerifiedCookieSessions
from webapp.config import load_config
from webapp.extensions import (
    check_limits_where_they_apply,
    csrf,
    init_db,
    limiter,
    login_manager,
)
from webapp.flask_app import LiveEventFlask

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings, extensions, blueprints, CLI commands."""
    app = LiveEventFlask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    settings = load_config(config)
    app.config.update(settings)
    app.config["SECRET_KEY"] = settings["SECRET_KEY"] or _development_secret()
    app.config["TESTING"] = settings["ENV"] == "testing"
    production = settings["ENV"] == "production"
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=production,
        REMEMBER_COOKIE_SECURE=production,
        REMEMBER_COOKIE_HTTPONLY=True,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        WTF_CSRF_HEADERS=["X-CSRFToken"],
        RATELIMIT_STORAGE_URI=_limits_storage_uri(settings["REDIS_URL"]),
        RATELIMIT_STORAGE_OPTIONS={"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_HEADERS_ENABLED=False,  # the headers cost a Redis round trip per POST
    )
    app.config["RATELIMIT_ENABLED"] = settings["RATELIMIT_ENABLED"]

    init_db(app)
    from webapp.adapters import query_stats

    query_stats.init_app(app)  # SQL timings of this process, aggregated in Redis
    from webapp.services import read_model

    read_model.init_app(app)  # the read cache, its invalidation and warming
    from webapp.services import delivery

    delivery.init_app(app)  # outbox after-commit hooks: wake the relay / inline handlers

    from webapp import observability
    from webapp.adapters import csrf_tokens

    observability.init_app(app)  # logs, traces (engine included), metrics
    csrf.init_app(app)
    csrf_tokens.init_app(app)  # signs the session's token once, not on every page
    app.session_interface = VerifiedCookieSessions()  # verifies each cookie once
    login_manager.init_app(app)
    limiter.init_app(app)

    from webapp import views

    views.init_app(app)
    check_limits_where_they_apply(app)  # once the views' limits are known

    from webapp import cli

    cli.init_app(app)
    if not background_deferred():
        start_background_work(app)
    return app


def background_deferred() -> bool:
    """True in a gunicorn master that preloads the app: it forks workers, so it must
    not run threads (a lock held by one at fork time stays locked in the child, e.g.
    prometheus_client's multiprocess value lock). Its workers start them instead,
    from gunicorn's ``post_fork`` (see webapp/gunicorn_conf.py)."""
    return os.environ.get("LES_DEFER_BACKGROUND") == str(os.getpid())


def start_background_work(app: Flask) -> None:
    """Start this process's background threads (cache warming, SQL timing flushes)."""
    for start in app.extensions.get("les.process_start", []):
        start()


def _limits_storage_uri(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://") :]
    return redis_url


def _development_secret() -> str:
    """A per-checkout random secret for development, kept in var/ (never in git)."""
    path = PROJECT_ROOT / "var" / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()
