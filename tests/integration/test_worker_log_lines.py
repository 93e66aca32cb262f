"""RQ's four INFO lines per successful job are sampled at LOG_SAMPLE_RATE in the
service's workers, like the web's request lines; a failed job's lines and the
worker's own start and stop lines are always written. Real RQ workers on Redis."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from webapp.observability import logs

pytestmark = [pytest.mark.redis]

PER_JOB = ("Job OK", "Successfully completed", "result is kept")


def succeed(n: int) -> int:
    return n * 2


def fail() -> None:
    raise ZeroDivisionError("the handler broke")


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
    root.setLevel(saved[1])


def _worker_lines(redis_url: str, sample_rate: float) -> list[dict]:
    from workers.worker import OutboxWorker

    stream = io.StringIO()
    logs.configure_logging("INFO", sample_rate, "les-worker", stream)
    connection = redis.Redis.from_url(redis_url)
    queue = Queue("log-lines", connection=connection, serializer=JSONSerializer)
    for n in range(3):
        queue.enqueue(f"{__name__}.succeed", n)
    queue.enqueue(f"{__name__}.fail")
    OutboxWorker([queue], connection=connection).work(burst=True)
    found = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in found if str(line["logger"]).startswith("rq.")]


def test_per_job_lines_are_sampled_and_the_rest_kept(redis_url, root_handlers):
    lines = _worker_lines(redis_url, sample_rate=0.0)
    messages = [str(line["message"]) for line in lines]
    assert not [m for m in messages if any(p in m for p in PER_JOB)], messages
    # the failed job is reported, with its error
    failed = [line for line in lines if line["level"] == "ERROR"]
    assert failed and "ZeroDivisionError" in json.dumps(failed)
    # the worker's own lines stay: it started, and it stopped
    assert any("started with PID" in m for m in messages), messages
    assert any("done, quitting" in m for m in messages), messages


def test_every_per_job_line_is_written_at_a_sample_rate_of_one(redis_url, root_handlers):
    """Also the proof that the templates are RQ's: at rate 0 these are the lines
    that go (an RQ release that rewords them fails the test above)."""
    messages = [str(line["message"]) for line in _worker_lines(redis_url, sample_rate=1.0)]
    for part in PER_JOB:
        assert sum(part in m for m in messages) == 3, (part, messages)
