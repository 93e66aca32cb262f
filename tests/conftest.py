"""Shared fixtures: real PostgreSQL and Redis (never mocks), SQLite, the app.

Every pytest session gets its own PostgreSQL database (created from
TEST_DATABASE_URL's server, dropped at the end) and its own Redis database
numbers, so several runs on one machine do not trample each other.
Under ``CI=true`` a missing PostgreSQL or Redis fails the run; elsewhere the tests
that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from webapp import create_app
from webapp.adapters.db import normalize_url
from webapp.adapters.migrate import upgrade
from webapp.adapters.tables import metadata

CI = os.environ.get("CI", "").lower() == "true"
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# the tests' apps record every span (the production default, at most TRACES_PER_SECOND
# new traces a second, is tested in test_trace_sampling on providers of its own)
os.environ.setdefault("OTEL_TRACES_SAMPLER", "parentbased_always_on")


def service_missing(what: str, error: BaseException) -> None:
    message = f"{what} is not reachable: {error}"
    if CI:
        pytest.fail(f"{message} (CI=true: the Postgres/Redis/browser tests must run)")
    pytest.skip(message)


# -- PostgreSQL ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_server_url() -> str:
    url = normalize_url(TEST_DATABASE_URL)
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:
        service_missing(f"PostgreSQL at {TEST_DATABASE_URL}", error)
    return url


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, migrated database of this test session."""
    with scratch_database(pg_server_url, str(os.getpid())) as url:
        upgrade(url)
        yield url


@contextmanager
def scratch_database(pg_server_url: str, label: str) -> Iterator[str]:
    """An empty database of its own, dropped afterwards (a test that migrates down, or
    needs a database no other test touches, must not use the session's)."""
    name = f"les_test_{label}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def truncate_all(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
    engine.dispose()


# -- SQLite ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "les.sqlite3"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Both backends: the test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    url = str(request.getfixturevalue("pg_url"))
    truncate_all(url)
    return url


@pytest.fixture
def postgres_url(pg_url: str) -> str:
    """PostgreSQL only, emptied before the test."""
    truncate_all(pg_url)
    return pg_url


# -- Redis -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_base_url() -> str:
    try:
        client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=3)
        client.ping()
    except Exception as error:
        service_missing(f"Redis at {TEST_REDIS_URL}", error)
    # two database numbers per session (queues + cache), picked by a shared counter
    slot = int(client.incr("les:test:slot")) % 7
    base = re.sub(r"/\d*$", "", TEST_REDIS_URL.rstrip("/"))
    return f"{base}/{1 + 2 * slot}"


@pytest.fixture
def redis_url(redis_base_url: str) -> str:
    """Emptied queue and cache databases for this test."""
    from webapp.config import next_redis_db

    for url in (redis_base_url, next_redis_db(redis_base_url)):
        redis.Redis.from_url(url).flushdb()
    return redis_base_url


# -- the app -----------------------------------------------------------------------------
def make_app(database_url: str, redis_url: str, **overrides: Any) -> Flask:
    config: dict[str, Any] = {
        "ENV": "testing",
        "SECRET_KEY": "test-secret",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "RATELIMIT_ENABLED": False,
        "PUBLIC_BASE_URL": "http://localhost",
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture
def app(db_url: str, redis_url: str) -> Iterator[Flask]:
    application = make_app(db_url, redis_url)
    yield application
    application.extensions["les.db"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_token_from(html: str) -> str:
    match = CSRF_FIELD.search(html) or re.search(r'"X-CSRFToken": "([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


@pytest.fixture
def create_event(app: Flask) -> Callable[..., int]:
    """Factory: create_event(capacity=3, title=..., days=7, registration_open=True)."""
    from webapp.extensions import get_db
    from webapp.services.events import EventDetails
    from webapp.services.events import create_event as create

    def factory(capacity: int = 3, **kw: Any) -> int:
        details = EventDetails(
            title=kw.get("title", "Test Event"),
            description=kw.get("description", "A test event"),
            venue=kw.get("venue", "Test Hall"),
            start_date=kw.get("start_date", datetime.now(UTC) + timedelta(days=kw.get("days", 7))),
            registration_open=kw.get("registration_open", True),
        )
        return create(get_db(app).unit_of_work, details, capacity)

    return factory
