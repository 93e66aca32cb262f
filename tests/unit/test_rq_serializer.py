"""RQ resolves its serializer for every job, queue and registry it builds; the
service's relay and workers check ``JSONSerializer`` once (``workers.rq_serializer``)
and any other serializer is resolved, or refused, as RQ does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import rq.queue
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer, PickleSerializer, Serializer

from workers import rq_serializer


@pytest.fixture
def protocol_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """What is checked against RQ's ``Serializer`` Protocol while the test runs."""
    checks: list[Any] = []
    meta = type(Serializer)
    real = meta.__instancecheck__

    def counting(cls: type, instance: Any) -> bool:
        if cls is Serializer:
            checks.append(instance)
        return bool(real(cls, instance))

    monkeypatch.setattr(meta, "__instancecheck__", counting)
    yield checks


def test_jobs_queues_and_registries_take_the_json_serializer_without_a_check(protocol_checks):
    rq_serializer.install()
    protocol_checks.clear()
    connection = redis.Redis()  # nothing here talks to Redis
    for _ in range(3):
        queue = Queue("outbox", connection=connection, serializer=JSONSerializer)
        job = Job.create(
            "builtins.len", args=["abc"], connection=connection, serializer=queue.serializer
        )
        StartedJobRegistry(queue=queue)
        FinishedJobRegistry(queue=queue)
        assert job.serializer is JSONSerializer
    assert protocol_checks == []
    # RQ's own function still checks (so the count above could have seen one)
    rq_serializer._rq_resolve(JSONSerializer)
    assert protocol_checks == [JSONSerializer]


def test_other_serializers_are_resolved_or_refused_as_rq_does():
    rq_serializer.install()
    assert rq.queue.resolve_serializer(None) is PickleSerializer
    assert rq.queue.resolve_serializer("rq.serializers.JSONSerializer") is JSONSerializer
    with pytest.raises(NotImplementedError):
        Queue("outbox", connection=redis.Redis(), serializer=object())
