"""The worker pool process: graceful SIGTERM (the current job finishes), the
scheduled outbox cleanup, heartbeats and the metrics endpoint."""

from __future__ import annotations

import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import insert, select

from tests.conftest import make_app
from tests.integration.outbox_support import (
    Background,
    SmtpSink,
    free_port,
    gated_handler_env,
    log_tail,
    process_env,
    start_relay,
    start_worker,
    wait_until,
)
from webapp.adapters import heartbeats
from webapp.adapters.tables import outbox_messages
from webapp.extensions import get_db
from webapp.services import events as event_service
from webapp.services import registrations as registration_service

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
o = outbox_messages.c


def test_sigterm_finishes_the_current_job_then_exits(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    smtp = SmtpSink().start()
    app = make_app(postgres_url, redis_url, **smtp.config())
    old_id = uuid.uuid4()
    now = datetime.now(UTC)
    with get_db(app).engine.begin() as conn:  # processed long ago: the cleanup's target
        conn.execute(
            insert(outbox_messages).values(
                Id=old_id,
                Type="RegistrationCreated",
                Data="{}",
                CreatedAt=now - timedelta(days=30),
                ProcessedAt=now - timedelta(days=29),
                RetryCount=0,
                MaxRetryCount=3,
            )
        )
    block = tmp_path / "block"
    block.mkdir()
    (block / "gate").touch()
    metrics_port = free_port()
    env = process_env(
        postgres_url,
        redis_url,
        **smtp.config(),
        LES_EXTRA_HANDLER_MODULES="tests.integration.fault_handlers",
        LES_TEST_BLOCK_DIR=block,
    )
    relay = start_relay(tmp_path, env, "relay-a")
    worker = start_worker(tmp_path, env, "worker-1")
    worker_with_metrics = None
    try:
        client = redis.Redis.from_url(redis_url)
        wait_until(lambda: heartbeats.last_beat(client, "worker"), 30)
        details = event_service.EventDetails(
            title="Shutdown", description="d", venue="v", start_date=now + timedelta(days=1)
        )
        event_id = event_service.create_event(get_db(app).unit_of_work, details, 10)
        registration_service.register(get_db(app).unit_of_work, event_id, "T", "t@example.test")
        wait_until(lambda: list(block.glob("started-*")), 30)

        # the scheduled cleanup ran at start: the old processed message is gone
        with get_db(app).engine.connect() as conn:
            assert conn.execute(select(o.Id).where(o.Id == old_id)).first() is None
        assert client.exists("les:outbox:cleanup-scheduled")

        worker.proc.send_signal(15)  # SIGTERM while the handler is busy
        with pytest.raises(AssertionError):
            wait_until(lambda: worker.proc.poll() is not None, 1.0)
        (block / "gate").unlink()
        assert worker.proc.wait(timeout=20) == 0
        with get_db(app).engine.connect() as conn:
            processed = conn.execute(select(o.ProcessedAt).where(o.Id != old_id)).scalar_one()
        assert processed is not None, "the job in progress was finished, not dropped"
        assert list(block.glob("finished-*"))

        # metrics of the handlers, served by the pool on 127.0.0.1
        worker_with_metrics = Background(
            ["-m", "workers", "--concurrency", "1", "--metrics-port", str(metrics_port)],
            env,
            tmp_path / "worker-3.log",
        )
        registration_service.register(get_db(app).unit_of_work, event_id, "U", "u@example.test")
        wait_until(lambda: len(smtp.to("u@example.test")) == 1, 30)

        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        text = wait_until(
            lambda: (t := scrape()) and 'message_type="RegistrationCreated"' in t and t, 20
        )
        assert "les_handler_duration_seconds_count" in text
    finally:
        relay.stop()
        worker.stop()
        if worker_with_metrics:
            worker_with_metrics.stop()
        smtp.stop()
        get_db(app).dispose()


def test_fork_per_job_a_killed_work_horse_counts_as_a_failed_attempt(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    import os
    import signal

    from webapp.adapters.tables import outbox_attempts

    smtp = SmtpSink().start()
    app = make_app(postgres_url, redis_url, **smtp.config())
    block = tmp_path / "block"
    env = gated_handler_env(postgres_url, redis_url, smtp, block)
    relay = start_relay(tmp_path, env, "relay-a")
    worker = Background(
        ["-m", "workers", "--concurrency", "1", "--fork-per-job"], env, tmp_path / "w.log"
    )
    try:
        details = event_service.EventDetails(
            title="Horse",
            description="d",
            venue="v",
            start_date=datetime.now(UTC) + timedelta(days=1),
        )
        event_id = event_service.create_event(get_db(app).unit_of_work, details, 10)
        registration_service.register(get_db(app).unit_of_work, event_id, "H", "h@example.test")
        wait_until(lambda: list(block.glob("started-*")), 30)
        horse = int((block / "pid").read_text())
        assert horse != worker.pid and horse in worker.descendants()
        os.kill(horse, signal.SIGKILL)
        (block / "gate").unlink()
        with get_db(app).engine.connect() as conn:

            def processed() -> bool:
                return conn.execute(select(o.ProcessedAt)).scalar_one() is not None

            wait_until(processed, 30)
            history = conn.execute(
                select(outbox_attempts.c.Succeeded, outbox_attempts.c.ErrorType).order_by(
                    outbox_attempts.c.Id
                )
            ).all()
        assert [tuple(h) for h in history] == [(False, "WorkHorseKilled"), (True, None)]
        assert len(smtp.to("h@example.test")) == 1
        assert worker.proc.poll() is None  # the worker itself lived on
    finally:
        relay.stop()
        worker.stop()
        smtp.stop()
        get_db(app).dispose()


def test_fork_per_job_a_killed_horse_of_a_shared_job_retries_each_message_alone(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Three messages waiting when the relay starts go out in one job (one worker
    process). Its horse is killed on the first: every message of the job not yet
    processed counts a failed attempt, and each comes back in a job of its own."""
    import os
    import signal

    from rq.job import Job
    from rq.serializers import JSONSerializer

    from webapp.adapters.tables import outbox_attempts

    smtp = SmtpSink().start()
    app = make_app(postgres_url, redis_url, **smtp.config())
    block = tmp_path / "block"
    env = gated_handler_env(postgres_url, redis_url, smtp, block, BACKGROUND_MAX_CONCURRENCY=1)
    details = event_service.EventDetails(
        title="Herd", description="d", venue="v", start_date=datetime.now(UTC) + timedelta(days=1)
    )
    event_id = event_service.create_event(get_db(app).unit_of_work, details, 10)
    for who in ("ann", "ben", "cy"):
        registration_service.register(
            get_db(app).unit_of_work, event_id, who, f"{who}@example.test"
        )
    with get_db(app).engine.connect() as conn:
        ids = list(conn.execute(select(o.Id).order_by(o.CreatedAt)).scalars())
    relay = start_relay(tmp_path, env, "relay-a")
    worker = Background(
        ["-m", "workers", "--concurrency", "1", "--fork-per-job"], env, tmp_path / "w.log"
    )
    client = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: list(block.glob("started-*")), 30)
        shared = Job.fetch(str(ids[0]), connection=client, serializer=JSONSerializer)
        assert shared.args == [[str(i) for i in ids]]
        os.kill(int((block / "pid").read_text()), signal.SIGKILL)
        (block / "gate").unlink()
        with get_db(app).engine.connect() as conn:

            def state() -> str:  # what a timeout reports: the rows and both logs
                columns = (o.Id, o.RetryCount, o.NextRetryAt, o.LockedUntil, o.ProcessedAt)
                rows = [tuple(r) for r in conn.execute(select(*columns))]
                return (
                    f"outbox {rows}\nworker log:\n{log_tail(tmp_path / 'w.log')}"
                    f"\nrelay log:\n{log_tail(tmp_path / 'relay-a.log')}"
                )

            wait_until(
                lambda: None not in conn.execute(select(o.ProcessedAt)).scalars().all(),
                30,
                describe=state,
            )
            history = {
                mid: [
                    tuple(h)
                    for h in conn.execute(
                        select(outbox_attempts.c.Succeeded, outbox_attempts.c.ErrorType)
                        .where(outbox_attempts.c.MessageId == mid)
                        .order_by(outbox_attempts.c.Id)
                    )
                ]
                for mid in ids
            }
        for mid in ids:
            assert history[mid] == [(False, "WorkHorseKilled"), (True, None)]
            job = Job.fetch(str(mid), connection=client, serializer=JSONSerializer)
            assert job.args == [[str(mid)]]  # the retry: a job of its own
        for who in ("ann", "ben", "cy"):
            assert len(smtp.to(f"{who}@example.test")) == 1
    finally:
        relay.stop()
        worker.stop()
        smtp.stop()
        get_db(app).dispose()
