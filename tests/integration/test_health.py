"""Liveness and readiness probes: /readyz reports each dependency and says 503 when
the delivery pipeline cannot work."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
import redis
from flask import Flask
from sqlalchemy import insert

from tests.conftest import make_app
from tests.integration.outbox_support import free_port
from webapp.adapters import heartbeats
from webapp.adapters.tables import outbox_messages
from webapp.extensions import get_db
from webapp.services.unit_of_work import utcnow

pytestmark = pytest.mark.redis


def _beat_all(redis_url: str, age: float = 0.0) -> None:
    client = redis.Redis.from_url(redis_url)
    heartbeats.beat(client, "relay", "relay-1", time.time() - age)
    heartbeats.beat(client, "worker", "pool-1", time.time() - age)


def test_healthz_is_always_ok(app: Flask) -> None:
    response = app.test_client().get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_not_ready_without_relay_and_worker(app: Flask) -> None:
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    checks = response.json["checks"]
    assert checks["database"]["ok"] and checks["redis"]["ok"] and checks["outbox"]["ok"]
    assert checks["relay"] == {"ok": False, "heartbeat_age_seconds": None, "max_age_seconds": 30.0}
    assert checks["worker"]["ok"] is False
    assert response.headers["Cache-Control"] == "no-store"


def test_ready_when_everything_answers(app: Flask, redis_url: str) -> None:
    _beat_all(redis_url, age=2.0)
    response = app.test_client().get("/readyz")
    assert response.status_code == 200, response.json
    body = response.json
    assert body["status"] == "ready"
    relay_age = body["checks"]["relay"]["heartbeat_age_seconds"]
    assert relay_age > 1.5, "the heartbeat is old: the relay stopped beating"
    assert relay_age < 10
    assert body["checks"]["outbox"]["oldest_pending_age_seconds"] == 0


def test_stale_heartbeat_is_not_ready(app: Flask, redis_url: str) -> None:
    _beat_all(redis_url, age=120)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["worker"]["heartbeat_age_seconds"] >= 120


def test_old_pending_message_makes_it_not_ready(db_url: str, redis_url: str) -> None:
    app = make_app(db_url, redis_url, OUTBOX_OLDEST_PENDING_THRESHOLD_SECONDS=60)
    try:
        _beat_all(redis_url)
        with get_db(app).engine.begin() as conn:
            conn.execute(
                insert(outbox_messages).values(
                    Id=uuid.uuid4(),
                    Type="RegistrationCreated",
                    Data="{}",
                    CreatedAt=utcnow() - timedelta(seconds=90),
                    RetryCount=0,
                    MaxRetryCount=3,
                )
            )
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        outbox = response.json["checks"]["outbox"]
        assert outbox["ok"] is False and outbox["pending"] == 1
        assert 89 < outbox["oldest_pending_age_seconds"] < 120
        assert outbox["threshold_seconds"] == 60
    finally:
        get_db(app).dispose()


def test_redis_down_is_not_ready(sqlite_url: str) -> None:
    app = make_app(sqlite_url, f"redis://127.0.0.1:{free_port()}/0")
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        checks = response.json["checks"]
        assert checks["redis"] == {"ok": False, "error": "ConnectionError"}
        assert checks["database"]["ok"] is True
    finally:
        get_db(app).dispose()
