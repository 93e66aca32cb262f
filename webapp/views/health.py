"""Liveness and readiness probes.

``/readyz`` answers 200 only when the whole delivery pipeline works: the database
and Redis answer, a relay and a worker beat their heartbeat recently, and no
outbox message has waited longer than ``OUTBOX_OLDEST_PENDING_THRESHOLD_SECONDS``.
The JSON says which check failed.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify

from webapp.adapters import heartbeats
from webapp.adapters.outbox_relay import backlog
from webapp.extensions import get_db
from webapp.services.unit_of_work import utcnow

bp = Blueprint("health", __name__)

#: a relay/worker whose last heartbeat is older than this is considered gone
HEARTBEAT_MAX_AGE_SECONDS = 30.0


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive (no dependency checks: a restart would not help them)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    checks: dict[str, dict[str, Any]] = {}
    threshold = float(current_app.config["OUTBOX_OLDEST_PENDING_THRESHOLD_SECONDS"])
    try:
        with get_db().engine.connect() as conn:
            figures = backlog(conn, utcnow())
        checks["database"] = {"ok": True}
        age = round(figures["oldest_pending_age_seconds"], 3)
        checks["outbox"] = {
            "ok": age <= threshold,
            "oldest_pending_age_seconds": age,
            "threshold_seconds": threshold,
            "pending": figures["pending"],
            "retrying": figures["retrying"],
            "dead": figures["dead"],
        }
    except Exception as error:
        checks["database"] = {"ok": False, "error": type(error).__name__}
        checks["outbox"] = {"ok": False, "error": "database unavailable"}

    client = _redis()
    try:
        client.ping()
        checks["redis"] = {"ok": True}
        now = time.time()
        for kind in ("relay", "worker"):
            last = heartbeats.last_beat(client, kind)
            age = None if last is None else round(max(0.0, now - last), 3)
            checks[kind] = {
                "ok": age is not None and age <= HEARTBEAT_MAX_AGE_SECONDS,
                "heartbeat_age_seconds": age,
                "max_age_seconds": HEARTBEAT_MAX_AGE_SECONDS,
            }
    except redis.RedisError as error:
        checks["redis"] = {"ok": False, "error": type(error).__name__}
        for kind in ("relay", "worker"):
            checks[kind] = {"ok": False, "error": "redis unavailable"}

    ready = all(check["ok"] for check in checks.values())
    response = jsonify(status="ready" if ready else "not ready", checks=checks)
    response.headers["Cache-Control"] = "no-store"
    return response, 200 if ready else 503


def _redis() -> redis.Redis:
    client = current_app.extensions.get("les.health_redis")
    if client is None:
        client = redis.Redis.from_url(
            current_app.config["REDIS_URL"], socket_timeout=0.5, socket_connect_timeout=0.5
        )
        current_app.extensions["les.health_redis"] = client
    return client
