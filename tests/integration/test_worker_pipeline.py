"""Relay and worker pool as real processes against PostgreSQL and Redis: a
registration's mail arrives through LISTEN/NOTIFY -> RQ -> worker -> SMTP."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import select

from tests.conftest import make_app
from tests.integration.outbox_support import (
    SmtpSink,
    process_env,
    start_relay,
    start_worker,
    wait_until,
)
from webapp.adapters.tables import outbox_messages
from webapp.extensions import get_db
from webapp.services import registrations as registration_service
from workers import HANDLE_MESSAGES_JOB, OUTBOX_QUEUE

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
o = outbox_messages.c


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def pg_app(postgres_url: str, redis_url: str, smtp: SmtpSink) -> Iterator[Flask]:
    app = make_app(postgres_url, redis_url, **smtp.config())
    yield app
    get_db(app).dispose()


def _event(app: Flask, capacity: int) -> int:
    from datetime import UTC, datetime, timedelta

    from webapp.services import events

    details = events.EventDetails(
        title="Pipeline Night",
        description="d",
        venue="Dock 1",
        start_date=datetime.now(UTC) + timedelta(days=2),
    )
    return events.create_event(get_db(app).unit_of_work, details, capacity)


def _rows(app: Flask) -> list[dict[str, Any]]:
    with get_db(app).engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(outbox_messages))]


def test_registration_mail_arrives_through_relay_and_worker(
    pg_app: Flask, postgres_url: str, redis_url: str, smtp: SmtpSink, tmp_path: Path
) -> None:
    env = process_env(postgres_url, redis_url, **smtp.config())
    relay = start_relay(tmp_path, env)
    worker = start_worker(tmp_path, env, concurrency=2)
    try:
        event_id = _event(pg_app, capacity=3)
        client = redis.Redis.from_url(redis_url)
        wait_until(lambda: client.zcard("les:heartbeats:worker") > 0, 30)
        wait_until(lambda: client.zcard("les:heartbeats:relay") > 0, 30)
        ids = []
        for i in range(6):
            ids.append(
                registration_service.register(
                    get_db(pg_app).unit_of_work, event_id, f"P {i}", f"p{i}@example.test"
                ).registration_id
            )
            time.sleep(0.05)
        wait_until(lambda: smtp.count() >= 6, 30)
        wait_until(lambda: all(r["ProcessedAt"] for r in _rows(pg_app)), 30)
        for i in range(6):
            assert len(smtp.to(f"p{i}@example.test")) == 1
        rows = _rows(pg_app)
        assert {r["LockedBy"] for r in rows} == {None}
        # JSON-serialized RQ jobs (no pickle), each named after its first message;
        # together they carry every message once
        members: list[str] = []
        for key in client.keys("rq:job:*"):
            job = client.hgetall(key)
            if job.get(b"origin") != OUTBOX_QUEUE.encode():
                continue
            func, _, args, _ = json.loads(zlib.decompress(job[b"data"]))
            assert func == HANDLE_MESSAGES_JOB
            assert key.decode() == f"rq:job:{args[0][0]}"
            assert set(json.loads(job[b"meta"])["trace_contexts"]) == set(args[0])
            members += args[0]
        assert sorted(members) == sorted(str(r["Id"]) for r in rows)
        # how fast the relay is woken is asserted without timing noise from other
        # processes in test_relay_dispatch (LISTEN/NOTIFY); the benchmark measures it
    finally:
        relay.stop()
        worker.stop()
    assert "Traceback" not in relay.log() + worker.log(), relay.log() + worker.log()
