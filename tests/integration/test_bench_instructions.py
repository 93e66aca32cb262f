"""``python -m bench.instructions`` measures what it says: the work it hands the
measured process (a cancellation's messages and mails, a relay pass of one message),
run here without valgrind on the test's PostgreSQL and Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer
from sqlalchemy import create_engine, select

from bench import instructions
from webapp.adapters.tables import outbox_messages, processed_messages
from workers import OUTBOX_QUEUE

pytestmark = pytest.mark.redis

o = outbox_messages.c


@pytest.fixture
def tool_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The tool's Redis database on the test's server, emptied before and after."""
    monkeypatch.setattr(instructions, "REDIS_BASE", re.sub(r"/\d*$", "", redis_url))
    client = redis.Redis.from_url(f"{instructions.REDIS_BASE}/{instructions.WEB_REDIS_DB}")
    client.flushdb()
    yield client
    client.flushdb()


def column_values(database_url: str, column: Any) -> list[Any]:
    """Every row's value of ``column`` in the tool's database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(select(column))]
    finally:
        engine.dispose()


def test_a_cancellation_leaves_three_messages_and_two_waitlist_notices(
    postgres_url: str, tool_redis: redis.Redis
) -> None:
    assert instructions.seed_cancellations(postgres_url, 4) == 3
    instructions.handle(postgres_url, 0, 4 * 3)  # asserts every message was processed
    types = sorted(column_values(postgres_url, o.Type))
    keys = column_values(postgres_url, processed_messages.c.Handler)
    assert types == sorted(
        ["RegistrationCancelled", "RegistrationPromoted", "WaitlistPositionChanged"] * 4
    )
    notices = [k for k in keys if k.startswith("waitlist-notice/")]
    assert len(notices) == 4 * instructions.NOTICES


@pytest.mark.parametrize(("job_size", "jobs"), [(1, 4), (4, 1)])
def test_the_tool_handles_its_messages_in_jobs_of_the_size_asked(
    postgres_url: str, tool_redis: redis.Redis, job_size: int, jobs: int
) -> None:
    """A job marks its messages processed in its last transaction, at one time: four
    messages in jobs of one are marked at four times, in a job of four at one."""
    instructions.seed(postgres_url, 4)
    instructions.handle(postgres_url, 0, 4, job_size=job_size)
    marked = column_values(postgres_url, o.ProcessedAt)
    assert len(marked) == 4 and None not in marked
    assert len(set(marked)) == jobs


def test_a_relay_pass_of_the_tool_dispatches_one_message(
    postgres_url: str, tool_redis: redis.Redis
) -> None:
    instructions.seed(postgres_url, 3)
    instructions.dispatch(postgres_url, 3)  # asserts one message per pass
    dispatched = column_values(postgres_url, o.DispatchedAt)
    assert len(dispatched) == 3 and None not in dispatched
    queue = Queue(OUTBOX_QUEUE, connection=tool_redis, serializer=JSONSerializer)
    assert queue.count == 3


def test_a_second_run_at_once_is_refused_before_it_touches_anything(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs share Redis databases 12 and 13 and empty them between measured
    processes: a second run at once would spoil both counts, so it stops at once."""
    import fcntl

    monkeypatch.setattr(instructions, "LOCK_PATH", tmp_path / "instructions.lock")
    monkeypatch.setattr(instructions.shutil, "which", lambda _name: "/usr/bin/valgrind")
    created: list[str] = []
    monkeypatch.setattr(instructions.psycopg, "connect", lambda *a, **k: created.append("db"))
    with (tmp_path / "instructions.lock").open("w") as running:
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert instructions.main(["--relay", "50,250"]) == 2
    assert "another `python -m bench.instructions` is running" in capsys.readouterr().err
    assert created == []
    # once the other run is over, the lock is free again
    handle = instructions._one_run_at_a_time()
    assert handle is not None
    handle.close()
