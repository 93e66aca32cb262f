"""Extension objects, created once and bound to the app in ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, request
from flask_caching import Cache
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from webapp.adapters.db import make_engine, make_session_factory, write_engine
from webapp.adapters.orm import start_mappers
from webapp.services.unit_of_work import AfterCommitHook, BeforeCommitHook, UnitOfWork

csrf = CSRFProtect()
login_manager = LoginManager()
cache = Cache()
limiter = Limiter(key_func=get_remote_address, default_limits=[])


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@limiter.request_filter
def _safe_methods_are_not_limited() -> bool:
    """Every limit of this app is on a POST (registration, status links, login)."""
    return request.method in _SAFE_METHODS


def check_limits_where_they_apply(app: Flask) -> None:
    """Trim Flask-Limiter's before-request check to the requests it can limit.

    The check applies the limits declared outside the views: default, application,
    meta and blueprint limits, and those of decorated callables that are not views.
    A view's own decorator checks that view's limits. Every limit of this app is a
    view's decorator on a POST, so the hook resolved an empty list of limits on
    every request: about 5 % of a cached page's CPU in gunicorn (py-spy), and on a
    POST 338 k instructions (callgrind), 55 us, before the view's own check. With
    none of those limits declared, the hook goes; with any (``RATELIMIT_DEFAULT``,
    say), it stays, for writes only (the request filter above exempts reads, but
    Flask-Limiter asks it deep inside its check, after resolving the endpoint's
    limits and building its context).

    Call it once the views are registered: a decorated callable is known by name."""
    hooks = app.before_request_funcs.setdefault(None, [])
    check = limiter._check_request_limit
    index = next((i for i, hook in enumerate(hooks) if hook == check), None)
    if index is None:
        if app.config.get("RATELIMIT_ENABLED", True):  # disabled: Flask-Limiter adds no hook
            raise RuntimeError("Flask-Limiter's before-request check is not registered")
        return
    if not _limits_outside_views(app):
        del hooks[index]
        return

    def check_writes() -> None:
        if request.method not in _SAFE_METHODS:
            check()

    hooks[index] = check_writes


def _limits_outside_views(app: Flask) -> bool:
    """Whether the before-request check has limits to apply (see above)."""
    from flask_limiter.util import get_qualified_name

    manager = limiter.limit_manager
    views = {get_qualified_name(view) for view in app.view_functions.values()}
    return bool(
        manager.default_limits
        or manager.application_limits
        or manager._blueprint_limits
        or limiter._meta_limits
        or set(limiter._marked_for_limiting) - views
    )


@dataclass
class Database:
    """The engine and session factories of one process."""

    engine: Engine
    read_sessions: sessionmaker[Session]
    write_sessions: sessionmaker[Session]
    after_commit: list[AfterCommitHook] = field(default_factory=list)
    before_commit: list[BeforeCommitHook] = field(default_factory=list)
    max_retries: int = 3
    #: background helpers of this process that use the engine (``wait_idle(timeout)``)
    background: list[Any] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Database:
        start_mappers()
        engine = make_engine(config["DATABASE_URL"], config)
        return cls(
            engine=engine,
            read_sessions=make_session_factory(engine),
            write_sessions=make_session_factory(write_engine(engine)),
            max_retries=int(config.get("OUTBOX_MAX_RETRIES", 3)),
        )

    @property
    def write_engine(self) -> Engine:
        """The engine the write sessions are bound to (on SQLite it begins every
        transaction with ``BEGIN IMMEDIATE``)."""
        return self.write_sessions.kw["bind"]  # type: ignore[no-any-return]

    def dispose(self, timeout: float = 10.0) -> None:
        """Let background work that holds connections finish, then close the pool
        (tests, and processes that shut down)."""
        for helper in self.background:
            helper.wait_idle(timeout)
        self.engine.dispose()

    def unit_of_work(self) -> UnitOfWork:
        from webapp.observability.tracing import current_trace_context

        return UnitOfWork(
            self.write_sessions,
            after_commit=self.after_commit,
            before_commit=self.before_commit,
            trace_context=current_trace_context,
            max_retries=self.max_retries,
        )


def init_db(app: Flask) -> Database:
    db = Database.from_config(app.config)
    app.extensions["les.db"] = db
    return db


def get_db(app: Flask | None = None) -> Database:
    return (app or current_app).extensions["les.db"]  # type: ignore[no-any-return]


def uow() -> UnitOfWork:
    """A new unit of work for the current app (the use cases' factory)."""
    return get_db().unit_of_work()
