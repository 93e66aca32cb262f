"""The benchmark's relay latency (commit -> job enqueued) reads when each message's
job went into Redis from RQ's finished jobs: the relay's claim marks a message
dispatched before its job is sent, so ``DispatchedAt`` no longer tells."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer

from bench.harness import job_enqueue_times
from workers import HANDLE_MESSAGES_JOB, OUTBOX_QUEUE

pytestmark = [pytest.mark.redis]


def test_each_message_gets_the_enqueue_time_of_its_first_finished_job(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(OUTBOX_QUEUE, connection=connection, serializer=JSONSerializer)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    shared = queue.enqueue(HANDLE_MESSAGES_JOB, [a, b], job_id=a)
    time.sleep(0.01)
    again = queue.enqueue(HANDLE_MESSAGES_JOB, [b], job_id=f"{b}-redelivery")
    other = queue.enqueue("builtins.len", [1])  # not an outbox job: no messages
    registry = FinishedJobRegistry(OUTBOX_QUEUE, connection=connection, serializer=JSONSerializer)
    for job in (shared, again, other):
        registry.add(job, ttl=60)
    first = Job.fetch(a, connection=connection, serializer=JSONSerializer).enqueued_at
    assert first is not None
    later = Job.fetch(again.id, connection=connection, serializer=JSONSerializer).enqueued_at
    assert later is not None and later > first

    times = job_enqueue_times(redis_url)

    assert set(times) == {uuid.UUID(a), uuid.UUID(b)}
    assert times[uuid.UUID(a)] == times[uuid.UUID(b)]
    assert times[uuid.UUID(b)].replace(tzinfo=None) == first.replace(tzinfo=None)
    assert times[uuid.UUID(b)].utcoffset() is not None  # comparable with timestamptz
