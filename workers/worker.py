"""RQ worker and worker pool classes of the service (redash-style: a Worker
subclass for the per-fork database hygiene and crash bookkeeping)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import redis
from opentelemetry.instrumentation.utils import suppress_instrumentation
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from webapp.adapters import heartbeats
from webapp.adapters.query_stats import flush_query_stats
from webapp.observability.logs import SampledTemplates
from webapp.observability.tracing import flush_spans
from workers import CLEANUP_JOB, MAINTENANCE_QUEUE, QUEUES, job_message_ids, rq_serializer, runtime

log = logging.getLogger("workers")

HEARTBEAT_EVERY = 2.0
CLEANUP_LOCK = "les:outbox:cleanup-scheduled"

#: the INFO lines RQ (2.x) writes for every job that succeeds: dequeued, "Job OK",
#: "Successfully completed", result kept. Four lines a job, each through the JSON
#: handler's masking and formatting (2-5 % of a worker's CPU with one-message jobs):
#: they are sampled at LOG_SAMPLE_RATE, as the web's request lines are. The outbox
#: row and its attempts are the record of a message; RQ's other lines (start, stop,
#: failures, warnings) are all kept.
RQ_PER_JOB_LINES = (
    "Worker %s: %s: %s (%s)",
    "Successfully completed %s job in %ss on worker %s",
    "Successfully completed job %s in %ss on worker %s",  # without job descriptions
    "Worker %s: job %s result is kept for %s seconds",
    "Worker %s: job %s result discarded immediately",
)


def sample_per_job_lines() -> None:
    """Sample RQ's per-job INFO lines in this process (idempotent)."""
    rq_log = logging.getLogger("rq.worker")
    if not any(isinstance(f, SampledTemplates) for f in rq_log.filters):
        rq_log.addFilter(SampledTemplates(RQ_PER_JOB_LINES))


class WorkHorseKilled(Exception):
    """The process running the handlers died (killed, out of memory, timeout)."""


class _RqTrafficUntraced:
    """RQ's own Redis traffic (dequeue, job hashes, heartbeats, results) makes no spans:
    with redis-py instrumented, each of those commands was a trace of its own, a few
    per job and more while idle, and a quarter of the worker's CPU went to RQ with
    its spans. The job functions trace as usual (``workers.jobs``).

    Spans are exported in batches, not after each job; a pool's worker ends with
    ``os._exit`` (multiprocessing), so what is still queued is exported when it stops.
    RQ's per-job log lines are sampled as well (:func:`sample_per_job_lines`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        sample_per_job_lines()
        with suppress_instrumentation():  # RQ names its connection (CLIENT SETNAME...)
            super().__init__(*args, **kwargs)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        try:
            with suppress_instrumentation():
                return bool(super().work(*args, **kwargs))  # type: ignore[misc]
        finally:
            flush_spans()


#: RQ's worker heartbeat or state write repeated within this many seconds is not sent
REPEAT_WINDOW_SECONDS = 1.0


class _RqBookkeepingOnce:
    """RQ (2.x) beats the worker's heartbeat three times around each job on its own
    (after the dequeue, after the job, before the next dequeue: ``HSET`` and
    ``EXPIRE``, a round trip each), besides the beats in its suspension check and the
    job's preparation, and marks the worker idle twice between two jobs: 8 of a job's
    18 round trips to Redis.

    Here a heartbeat is not sent again within :data:`REPEAT_WINDOW_SECONDS` of one
    that kept the worker's key alive at least as long, a state is not written again
    within it, a heartbeat that is sent goes as one round trip, and the suspension
    check is not repeated within it either: 11 round trips a job
    (``tests/integration/test_worker_bookkeeping.py``). So the key never
    expires sooner than a second before it would have (RQ's TTL is the wait for a job
    plus 75 s), and it holds the same state and a heartbeat at most a second older."""

    _beat_at = float("-inf")
    _beat_ttl = 0
    _state_at = float("-inf")
    _unsuspended_at = float("-inf")

    def check_for_suspension(self, burst: bool) -> None:
        """RQ asks Redis whether ``rq suspend`` paused the workers before every
        dequeue (with a heartbeat, a round trip a job). Here it asks again only
        :data:`REPEAT_WINDOW_SECONDS` after an answer of not suspended, so a
        suspension stops a busy worker before its next job a second later at most,
        and an idle worker, which waits for a job longer than that, as before."""
        if time.monotonic() - self._unsuspended_at < REPEAT_WINDOW_SECONDS:
            return
        super().check_for_suspension(burst)  # type: ignore[misc]
        self._unsuspended_at = time.monotonic()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        timeout = timeout or self.worker_ttl + 60  # type: ignore[attr-defined]
        at = time.monotonic()
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)  # type: ignore[misc]
        elif at - self._beat_at < REPEAT_WINDOW_SECONDS and self._beat_ttl >= timeout:
            return
        else:
            with self.connection.pipeline(transaction=False) as batch:  # type: ignore[attr-defined]
                super().heartbeat(timeout, pipeline=batch)  # type: ignore[misc]
                batch.execute()
        self._beat_at, self._beat_ttl = at, timeout

    def set_state(self, state: str, pipeline: Any = None) -> None:
        at = time.monotonic()
        if (
            pipeline is None
            and state == self.get_state()  # type: ignore[attr-defined]
            and at - self._state_at < REPEAT_WINDOW_SECONDS
        ):
            return
        super().set_state(state, pipeline=pipeline)  # type: ignore[misc]
        self._state_at = at


class OutboxWorker(_RqTrafficUntraced, _RqBookkeepingOnce, SimpleWorker):
    """One RQ worker process, running its jobs itself: the pooled database
    connections are reused from job to job (a fork per job costs more than the
    handlers). Isolation comes from the pool, which respawns a worker that died;
    the relay's lease brings back the message it was handling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        rq_serializer.install()
        super().__init__(*args, **kwargs)
        runtime.after_fork()  # forked from the pool: open our own connections

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """While it works, the jobs' database connection is kept from one job to the
        next (:meth:`webapp.services.delivery.Deliverer._one_connection`)."""
        runtime.keep_job_connections = True
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            runtime.keep_job_connections = False
            runtime.release_job_connection()


class ForkingOutboxWorker(_RqTrafficUntraced, _RqBookkeepingOnce, Worker):
    """``--fork-per-job``: a fresh work horse per job (memory leaks and crashes of a
    handler die with the horse), at the price of a fork and new connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        rq_serializer.install()
        super().__init__(*args, **kwargs)
        runtime.after_fork()

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        runtime.after_fork()  # the horse opens its own connections
        super().main_work_horse(job, queue)

    def perform_job(self, job: Job, queue: Queue) -> bool:
        """In the horse, which ends with ``os._exit`` (no atexit): hand this job's SQL
        timings to Redis and its spans to the exporter before it goes."""
        try:
            return bool(super().perform_job(job, queue))
        finally:
            flush_query_stats()
            flush_spans()

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        """A horse that died mid-job counts as a failed attempt of each message of
        the job not yet processed (each is retried with backoff, in a job of its
        own, so the message that kills its horse is found and dead-lettered alone);
        if this worker dies too, the relay's lease on the messages runs out and they
        are dispatched again."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        crash = WorkHorseKilled(f"work horse {retpid} ended with {ret_val}")
        for message_id in job_message_ids(job):
            try:
                runtime.get_deliverer().record_crash(message_id, crash)
            except Exception:
                log.exception("could not record the crash of job %s", job.id)


class OutboxWorkerPool(WorkerPool):
    """The pool also beats the ``worker`` heartbeat and schedules the cleanup."""

    def __init__(self, *args: Any, cleanup_interval: int = 3600, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cleanup_interval = cleanup_interval
        self._last_beat = 0.0

    def check_workers(self, respawn: bool = True) -> None:
        super().check_workers(respawn)
        now = time.time()
        if now - self._last_beat < HEARTBEAT_EVERY:
            return
        self._last_beat = now
        try:
            if self.number_of_active_workers:
                heartbeats.beat(self.connection, "worker", f"pool/{self.name}", now)
            self.schedule_cleanup()
        except redis.RedisError as error:
            self.log.warning("worker pool: Redis unavailable (%r)", error)

    def schedule_cleanup(self) -> None:
        """Enqueue the outbox cleanup once per interval across all pools."""
        if self.connection.set(CLEANUP_LOCK, self.name, nx=True, ex=self.cleanup_interval):
            queue = Queue(MAINTENANCE_QUEUE, connection=self.connection, serializer=JSONSerializer)
            queue.enqueue(CLEANUP_JOB, job_timeout=600, result_ttl=86400)

    def request_stop(self, signum: Any = None, frame: Any = None) -> None:
        super().request_stop(signum, frame)
        with contextlib.suppress(redis.RedisError):
            heartbeats.forget(self.connection, "worker", f"pool/{self.name}")


def run_pool(
    concurrency: int | None = None,
    burst: bool = False,
    metrics_port: int | None = None,
    fork_per_job: bool = False,
) -> int:
    app = runtime.get_app({"SERVICE_NAME": "les-worker"})
    from sqlalchemy.orm import configure_mappers

    configure_mappers()  # before fork, once
    runtime.get_deliverer()  # compile the mail templates before fork
    runtime.after_fork()  # the pool itself keeps no connection to hand down
    if metrics_port:
        _serve_metrics(metrics_port)
    from webapp.services.outbox_maintenance import CLEANUP_INTERVAL_SECONDS
    from webapp.start_up_objects import freeze_start_up_objects

    freeze_start_up_objects("worker pool")  # before it forks its workers

    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    pool = OutboxWorkerPool(
        list(QUEUES),
        connection=connection,
        num_workers=concurrency or int(app.config["BACKGROUND_MAX_CONCURRENCY"]),
        worker_class=ForkingOutboxWorker if fork_per_job else OutboxWorker,
        serializer=JSONSerializer,
        cleanup_interval=CLEANUP_INTERVAL_SECONDS,
    )
    level = str(app.config.get("LOG_LEVEL", "INFO"))
    with suppress_instrumentation():  # the pool's heartbeats; its workers inherit it
        pool.start(burst=burst, logging_level="INFO" if level == "DEBUG" else level)
    return 0


def _serve_metrics(port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(port, addr=os.environ.get("METRICS_HOST", "127.0.0.1"), registry=registry)
    else:
        start_http_server(port, addr=os.environ.get("METRICS_HOST", "127.0.0.1"))
