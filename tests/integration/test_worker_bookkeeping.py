"""The service's RQ workers skip RQ's repeated bookkeeping (heartbeats and state
writes sent again within a second) without letting an idle worker's key expire
or its state go stale. Real RQ workers on Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.connection import Connection
from rq import Queue, SimpleWorker, Worker
from rq.serializers import JSONSerializer

pytestmark = [pytest.mark.redis]


def succeed(n: int) -> int:
    return n * 2


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the packets of commands this process sends to Redis (a command, or a
    pipeline's commands at once: one round trip each)."""
    sent = [0]
    send = Connection.send_packed_command

    def counting(self: Connection, command: object, check_health: bool = True) -> None:
        sent[0] += 1
        send(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    yield sent


def _round_trips_per_job(redis_url: str, worker_class: type, counter: list[int]) -> float:
    connection = redis.Redis.from_url(redis_url)
    counts = []
    for jobs in (2, 22):
        queue = Queue("bookkeeping", connection=connection, serializer=JSONSerializer)
        for n in range(jobs):
            queue.enqueue(f"{__name__}.succeed", n)
        counter[0] = 0
        worker_class([queue], connection=connection, serializer=JSONSerializer).work(burst=True)
        counts.append(counter[0])
        assert queue.count == 0
    return (counts[1] - counts[0]) / 20


def test_a_job_takes_eleven_round_trips_to_redis_instead_of_rqs_eighteen(redis_url, round_trips):
    """Per job, over twenty jobs (RQ's own worker: 17.75, ours 10.75; a run's fixed
    part differs by a few round trips between two and twenty-two jobs)."""
    from workers.worker import OutboxWorker

    rq_own = _round_trips_per_job(redis_url, SimpleWorker, round_trips)
    ours = _round_trips_per_job(redis_url, OutboxWorker, round_trips)
    assert ours <= 11 < 17 <= rq_own, (ours, rq_own)


def suspend_workers_then_wait(redis_url: str) -> None:
    """A job that runs ``rq suspend`` and takes longer than the suspension check's
    window."""
    import time

    from rq.suspension import suspend

    suspend(redis.Redis.from_url(redis_url))
    time.sleep(1.2)


def test_rq_suspend_still_stops_a_busy_worker_before_its_next_job(redis_url):
    """The suspension check is not repeated within a second: a suspension that comes
    while a job runs still stops the worker before the next one (in burst mode it
    leaves; otherwise it waits for ``rq resume``)."""
    from rq.suspension import resume

    from workers.worker import OutboxWorker

    connection = redis.Redis.from_url(redis_url)
    queue = Queue("bookkeeping", connection=connection, serializer=JSONSerializer)
    queue.enqueue(f"{__name__}.succeed", 1)
    queue.enqueue(f"{__name__}.suspend_workers_then_wait", redis_url)
    for n in range(3):
        queue.enqueue(f"{__name__}.succeed", n)
    try:
        OutboxWorker([queue], connection=connection).work(burst=True)
        assert queue.count == 3  # the jobs after the suspension wait for `rq resume`
    finally:
        resume(connection)


def test_after_a_job_the_worker_is_idle_with_its_key_alive_for_the_wait_for_the_next(
    redis_url, monkeypatch
):
    """After its last job (``max_jobs``) the worker would wait for the next one: its key
    must outlive that wait, although the job's preparation had set a shorter TTL a
    moment before, and the dashboard must read it as idle, not busy."""
    from workers.worker import OutboxWorker

    connection = redis.Redis.from_url(redis_url)
    queue = Queue("bookkeeping", connection=connection, serializer=JSONSerializer)
    for n in range(3):
        queue.enqueue(f"{__name__}.succeed", n, job_timeout=5)
    worker = OutboxWorker([queue], connection=connection)
    monkeypatch.setattr(worker, "register_death", lambda: None)  # keep the key to read it
    worker.work(max_jobs=3)
    assert queue.count == 0
    assert connection.ttl(worker.key) >= worker.dequeue_timeout + 60
    found = Worker.find_by_key(worker.key, connection=connection)
    assert found is not None and found.get_state() == "idle"
    assert found.last_heartbeat is not None
    connection.delete(worker.key)
