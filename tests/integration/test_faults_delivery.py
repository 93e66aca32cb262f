"""Faults of the delivery pipeline, with the relay and the workers as real processes
against real PostgreSQL and Redis. Servers that get stopped are throwaway instances
on spare loopback ports, never the machine's shared ones."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select

from tests.conftest import make_app
from tests.integration.outbox_support import (
    BlackHole,
    SmtpSink,
    ThrowawayPostgres,
    ThrowawayRedis,
    gated_handler_env,
    process_env,
    start_relay,
    start_worker,
    wait_until,
)
from webapp.adapters.migrate import upgrade
from webapp.adapters.tables import event_stats, outbox_attempts, outbox_messages
from webapp.extensions import get_db
from webapp.services import events as event_service
from webapp.services import registrations as registration_service
from webapp.services.delivery import BACKOFF_JITTER

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
o = outbox_messages.c
LEASE = "3"


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def new_event(app: Flask, capacity: int = 5000) -> int:
    details = event_service.EventDetails(
        title="Fault Day",
        description="d",
        venue="Lab",
        start_date=datetime.now(UTC) + timedelta(days=2),
    )
    return event_service.create_event(get_db(app).unit_of_work, details, capacity)


def register(app: Flask, event_id: int, email: str) -> None:
    registration_service.register(get_db(app).unit_of_work, event_id, "Tester", email)


def rows(app: Flask) -> list[dict[str, Any]]:
    with get_db(app).engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(outbox_messages))]


def all_processed(app: Flask, expected: int) -> bool:
    with get_db(app).engine.connect() as conn:
        done = conn.execute(
            select(func.count()).select_from(outbox_messages).where(o.ProcessedAt.is_not(None))
        ).scalar_one()
    return int(done) >= expected


def registrations_counted(app: Flask, event_id: int) -> int:
    with get_db(app).engine.connect() as conn:
        value = conn.execute(
            select(event_stats.c.Registrations).where(event_stats.c.EventId == event_id)
        ).scalar()
    return int(value or 0)


def test_worker_killed_mid_handler_message_processed_later_mail_sent_once(
    postgres_url: str, redis_url: str, smtp: SmtpSink, tmp_path: Path
) -> None:
    app = make_app(postgres_url, redis_url, **smtp.config())
    block = tmp_path / "block"
    env = gated_handler_env(postgres_url, redis_url, smtp, block)
    relay = start_relay(tmp_path, env, "relay-a", "--lease-seconds", LEASE)
    worker = start_worker(tmp_path, env, "worker-1")
    second = None
    try:
        event_id = new_event(app)
        register(app, event_id, "kill@example.test")
        wait_until(lambda: list(block.glob("started-*")), 30)
        assert len(smtp.to("kill@example.test")) == 1  # the mail handler ran first
        worker.kill()  # SIGKILL: pool, worker and the work horse inside the handler
        [row] = rows(app)
        assert row["ProcessedAt"] is None
        (block / "gate").unlink()
        second = start_worker(tmp_path, env, "worker-2")
        wait_until(lambda: all_processed(app, 1), 30)
        assert list(block.glob("finished-*")), "the interrupted handler ran again"
        assert len(smtp.to("kill@example.test")) == 1
        assert registrations_counted(app, event_id) == 1
    finally:
        relay.stop()
        worker.stop()
        if second:
            second.stop()
        get_db(app).dispose()


def _register_over_http(app: Flask, event_id: int, email: str) -> int:
    client = app.test_client()
    page = client.get(f"/events/{event_id}").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    token = re.search(r'name="idempotency_token"[^>]*value="([^"]+)"', page)
    assert csrf and token, "the event page has the registration form"
    response = client.post(
        f"/events/{event_id}/register",
        data={
            "name": "Redis Down",
            "email": email,
            "csrf_token": csrf.group(1),
            "idempotency_token": token.group(1),
        },
    )
    return response.status_code


def test_redis_down_while_registering_nothing_lost_nothing_doubled(
    postgres_url: str, smtp: SmtpSink, tmp_path: Path
) -> None:
    server = ThrowawayRedis(tmp_path).start()
    app = make_app(postgres_url, server.url, **smtp.config())
    env = process_env(postgres_url, server.url, **smtp.config())
    relay = start_relay(tmp_path, env, "relay-a", "--lease-seconds", LEASE)
    worker = start_worker(tmp_path, env, "worker-1")
    try:
        event_id = new_event(app)
        for i in range(3):
            assert _register_over_http(app, event_id, f"before{i}@example.com") == 303
        wait_until(lambda: smtp.count() == 3, 30)
        server.stop()
        started = time.monotonic()
        for i in range(10):
            assert _register_over_http(app, event_id, f"during{i}@example.com") == 303
        assert time.monotonic() - started < 20, "registrations must not hang on Redis"
        time.sleep(1.0)
        assert smtp.count() == 3
        server.start()  # same port, empty: whatever was queued in Redis is gone
        wait_until(lambda: all_processed(app, 13), 60)
        wait_until(lambda: smtp.count() >= 13, 10)
        time.sleep(0.5)
        for i in range(10):
            assert len(smtp.to(f"during{i}@example.com")) == 1
        assert smtp.count() == 13
        assert set(smtp.received.values()) == {1}
        assert registrations_counted(app, event_id) == 13
    finally:
        relay.stop()
        worker.stop()
        server.stop()
        get_db(app).dispose()


def test_relay_killed_after_claiming_another_relay_delivers_after_the_lease(
    postgres_url: str, redis_url: str, smtp: SmtpSink, tmp_path: Path
) -> None:
    app = make_app(postgres_url, redis_url, **smtp.config())
    hung_redis = BlackHole()
    event_id = new_event(app)
    for i in range(5):
        register(app, event_id, f"lease{i}@example.test")
    stuck = process_env(postgres_url, f"redis://127.0.0.1:{hung_redis.port}/0", **smtp.config())
    relay_a = start_relay(tmp_path, stuck, "relay-a", "--lease-seconds", LEASE)
    env = process_env(postgres_url, redis_url, **smtp.config())
    worker = start_worker(tmp_path, env, "worker-1")
    relay_b = None
    try:
        wait_until(lambda: {r["LockedBy"] for r in rows(app)} == {"relay-a"}, 30)
        lease_end = max(r["LockedUntil"] for r in rows(app))
        relay_a.kill()  # claimed, never enqueued
        relay_b = start_relay(tmp_path, env, "relay-b", "--lease-seconds", LEASE)
        wait_until(lambda: all_processed(app, 5), 30)
        dispatched = [r["DispatchedAt"] for r in rows(app)]
        assert all(at >= lease_end for at in dispatched), "nobody took them before the lease"
        for i in range(5):
            assert len(smtp.to(f"lease{i}@example.test")) == 1
    finally:
        relay_a.stop()
        if relay_b:
            relay_b.stop()
        worker.stop()
        hung_redis.close()
        get_db(app).dispose()


def test_always_failing_handler_follows_the_backoff_schedule_then_dead_letters(
    postgres_url: str, redis_url: str, smtp: SmtpSink, tmp_path: Path
) -> None:
    from webapp.services.replay import replay_messages

    base = 0.5
    app = make_app(postgres_url, redis_url, OUTBOX_MAX_RETRIES=4, **smtp.config())
    env = process_env(postgres_url, redis_url, **smtp.config(), OUTBOX_RETRY_DELAY_SECONDS=base)
    smtp.reject = True
    relay = start_relay(tmp_path, env, "relay-a")
    worker = start_worker(tmp_path, env, "worker-1")
    try:
        event_id = new_event(app)
        register(app, event_id, "doomed@example.test")
        schedule: dict[int, datetime] = {}

        def dead() -> bool:
            [row] = rows(app)
            if row["NextRetryAt"] is not None:
                schedule.setdefault(row["RetryCount"], row["NextRetryAt"])
            return row["DeadLetteredAt"] is not None

        wait_until(dead, 40, interval=0.02)
        [row] = rows(app)
        with get_db(app).engine.connect() as conn:
            history = [
                dict(r._mapping)
                for r in conn.execute(
                    select(outbox_attempts)
                    .where(outbox_attempts.c.MessageId == row["Id"])
                    .order_by(outbox_attempts.c.Id)
                )
            ]
        assert [a["Succeeded"] for a in history] == [False] * 4
        assert row["RetryCount"] == 4 and row["ProcessedAt"] is None
        assert row["ErrorType"] == "smtplib.SMTPDataError"
        assert "mailbox unavailable" in row["Error"]
        assert sorted(schedule) == [1, 2, 3]
        for failures in (1, 2, 3):
            attempt = history[failures - 1]
            finished = attempt["AttemptedAt"] + timedelta(milliseconds=attempt["DurationMs"])
            delay = (schedule[failures] - finished).total_seconds()
            expected = base * 2 ** (failures - 1)
            assert expected - 0.05 <= delay <= expected * (1 + BACKOFF_JITTER) + 0.05
            # the next attempt waited for its time, and the relay noticed within ~1 s
            gap = (history[failures]["AttemptedAt"] - schedule[failures]).total_seconds()
            assert -0.01 <= gap <= 1.5
        time.sleep(1.5)
        assert len(rows(app)) == 1 and rows(app)[0]["RetryCount"] == 4  # no more attempts

        smtp.reject = False  # the fix
        replay_messages(get_db(app).unit_of_work, [row["Id"]], actor="ops@example.test")
        wait_until(lambda: all_processed(app, 1), 20)
        assert len(smtp.to("doomed@example.test")) == 1
    finally:
        relay.stop()
        worker.stop()
        get_db(app).dispose()


def test_postgres_restarted_under_load_relay_and_workers_reconnect(
    redis_url: str, smtp: SmtpSink, tmp_path: Path
) -> None:
    cluster = ThrowawayPostgres().start()
    try:
        upgrade(cluster.url)
        app = make_app(cluster.url, redis_url, **smtp.config())
        env = process_env(cluster.url, redis_url, **smtp.config(), OUTBOX_RETRY_DELAY_SECONDS=0.3)
        relay = start_relay(tmp_path, env, "relay-a", "--lease-seconds", LEASE)
        worker = start_worker(tmp_path, env, "worker-1", concurrency=2)
        registered: list[str] = []
        stop = threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set():
                email = f"load{i}@example.test"
                try:
                    register(app, event_id, email)
                    registered.append(email)
                    i += 1
                except Exception:
                    time.sleep(0.1)  # the database is restarting: the user retries
                time.sleep(0.02)

        event_id = new_event(app)
        thread = threading.Thread(target=load)
        thread.start()
        try:
            wait_until(lambda: len(registered) >= 20, 30)
            cluster.restart()
            after = len(registered)
            wait_until(lambda: len(registered) >= after + 20, 30)
        finally:
            stop.set()
            thread.join(10)
        wait_until(lambda: all_processed(app, len(registered)), 60)
        assert len(rows(app)) == len(registered)
        for email in registered:
            assert smtp.to(email), f"{email} got no mail"
        relay.stop()
        worker.stop()
        get_db(app).dispose()
    finally:
        cluster.stop()


def test_two_relays_two_workers_thousand_messages_each_effect_once(
    postgres_url: str, redis_url: str, smtp: SmtpSink, tmp_path: Path
) -> None:
    app = make_app(postgres_url, redis_url, **smtp.config())
    total = 1000
    events = [new_event(app, capacity=300) for _ in range(4)]

    def register_share(k: int) -> None:
        for i in range(k, total, len(events)):
            register(app, events[k], f"m{i}@example.test")

    threads = [threading.Thread(target=register_share, args=(k,)) for k in range(len(events))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(rows(app)) == total
    env = process_env(postgres_url, redis_url, **smtp.config())
    procs = [
        start_relay(tmp_path, env, "relay-a", "--batch-size", "50"),
        start_relay(tmp_path, env, "relay-b", "--batch-size", "50"),
        start_worker(tmp_path, env, "worker-1"),
        start_worker(tmp_path, env, "worker-2"),
    ]
    try:
        wait_until(lambda: all_processed(app, total), 150, interval=0.5)
        time.sleep(1.0)
        assert smtp.count() == total
        assert smtp.received == {f"m{i}@example.test": 1 for i in range(total)}
        assert sum(registrations_counted(app, e) for e in events) == total
        with get_db(app).engine.connect() as conn:
            successes = conn.execute(
                select(func.count())
                .select_from(outbox_attempts)
                .where(outbox_attempts.c.Succeeded.is_(True))
            ).scalar_one()
        assert successes == total
    finally:
        for proc in procs:
            proc.stop()
        get_db(app).dispose()
    client = redis.Redis.from_url(redis_url)
    assert client.llen("rq:queue:outbox") == 0
