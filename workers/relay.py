"""The outbox relay: ``python -m workers.relay``.

Claims due outbox messages in batches under a lease, marking them dispatched in the
same statement, and enqueues them as RQ jobs (JSON serializer, job id = the job's
first message id, each message's trace context in ``job.meta``); if Redis refuses
them, it releases the batch and takes the mark back. Several fresh messages share
a job (at most ``messages_per_job``; spread over the worker processes while the
queue is empty, full jobs while jobs wait), which saves RQ's per-job work and lets
the worker mark them processed in one transaction; a redelivery or a retry always
gets a job of its own. Wakes on PostgreSQL ``LISTEN outbox_messages`` (or the Redis
wake-up channel / in-process event on SQLite) and polls at least every second.
Several relays may run at once: claims use ``FOR UPDATE SKIP LOCKED`` and a lease,
so one message is never dispatched by two relays at the same time, and the
messages of a relay that died come back when its lease expires.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import redis
from opentelemetry import propagate, trace
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy.exc import SQLAlchemyError

from webapp.adapters import heartbeats, outbox_relay
from webapp.adapters.outbox import NOTIFY_CHANNEL
from webapp.observability.metrics import (
    OUTBOX_MESSAGES,
    OUTBOX_OLDEST_PENDING_SECONDS,
    RELAY_DISPATCH_SECONDS,
    RELAY_DISPATCHED,
)
from webapp.observability.tracing import continue_trace, lone_calls_skipped
from webapp.services.delivery import DEFAULT_LEASE_SECONDS, RELAY_WAKEUP, WAKEUP_CHANNEL
from webapp.services.unit_of_work import utcnow
from workers import HANDLE_MESSAGES_JOB, OUTBOX_QUEUE, job_message_ids, rq_serializer

log = logging.getLogger("workers.relay")

#: an already enqueued job in one of these states is waiting for a worker: keep it
_WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
HEARTBEAT_EVERY = 2.0
GAUGES_EVERY = 5.0
#: job results are only for debugging; the outbox row is the record
RESULT_TTL = 600
JOB_TIMEOUT = 60


class Relay:
    def __init__(
        self,
        db: Any,
        redis_client: redis.Redis,
        database_url: str,
        name: str | None = None,
        batch_size: int = 100,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_interval: float = 1.0,
        queue_name: str = OUTBOX_QUEUE,
        messages_per_job: int = 10,
        parallel_jobs: int = 4,
    ) -> None:
        self.db = db
        self.redis = redis_client
        self.database_url = database_url
        self.name = name or f"relay/{socket.gethostname()}/{os.getpid()}"
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.poll_interval = min(poll_interval, 1.0)
        self.messages_per_job = max(1, messages_per_job)
        self.parallel_jobs = max(1, parallel_jobs)
        rq_serializer.install()
        self.queue = Queue(queue_name, connection=redis_client, serializer=JSONSerializer)
        self.postgres = db.engine.dialect.name == "postgresql"
        self.stop_event = threading.Event()
        self._listen_conn: Any = None
        self._pubsub_thread: Any = None
        self._last_beat = 0.0
        self._last_gauges = 0.0
        self._redis_backoff = 0.0
        #: the pooled connection kept between passes that find messages
        self._conn: Any = None

    # -- one pass ----------------------------------------------------------------------
    def dispatch_once(self) -> int:
        """Claim one batch and enqueue it; returns how many messages were claimed.
        The claim marks the batch dispatched in the same statement, so a pass is one
        transaction and the enqueue; only a failed enqueue (release) or a redelivery
        whose job still waits in the queue (its lease extended) takes a second one, on
        the same pooled connection. No transaction stays open while the jobs go to
        Redis.

        Passes that find messages one after another (a light load wakes the relay
        for every commit) keep one pooled connection: a checkout, with its trace
        span, cost 15 % of such a pass's instructions. A pass that finds
        nothing, and any error, give it back to the pool, so an idle relay holds
        none, and a connection that idled is pinged on its next checkout."""
        with lone_calls_skipped():  # its statements and Redis calls are in no trace
            conn = self._conn
            if conn is None:
                conn = self._conn = self.db.write_engine.connect()
            try:
                claimed = self._dispatch_on(conn)
            except BaseException:
                self.release_connection()
                raise
        if not claimed:
            self.release_connection()
        return claimed

    def release_connection(self) -> None:
        """Give the connection kept between passes back to the pool (a broken one is
        discarded by SQLAlchemy)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()

    def _dispatch_on(self, conn: Any) -> int:
        now = utcnow()
        with self.db.write_sessions(bind=conn) as session, session.begin():
            claimed = outbox_relay.claim(
                session, now, self.name, self.batch_size, self.lease_seconds
            )
        if not claimed:
            return 0
        try:
            waiting = self._still_waiting([c for c in claimed if c.dispatched_at is not None])
            to_send = [c for c in claimed if c.id not in waiting]
            self._enqueue(to_send)
        except redis.RedisError:
            with self.db.write_sessions(bind=conn) as session, session.begin():
                outbox_relay.release(session, claimed, self.name)
            raise
        enqueued_at = utcnow()
        if waiting:
            with self.db.write_sessions(bind=conn) as session, session.begin():
                outbox_relay.extend_lease(
                    session,
                    list(waiting),
                    self.name,
                    enqueued_at + timedelta(seconds=self.lease_seconds),
                )
        RELAY_DISPATCHED.inc(len(to_send))
        for c in to_send:
            if c.dispatched_at is None:
                RELAY_DISPATCH_SECONDS.observe(
                    max(0.0, (enqueued_at - c.created_at).total_seconds())
                )
        return len(claimed)

    def _still_waiting(self, redeliveries: Sequence[outbox_relay.Claimed]) -> set[uuid.UUID]:
        """Messages whose lease ran out while their job still waits in the queue
        (a backlog, not a failure): they are not enqueued a second time. A job is
        found by its first message's id; the other messages of a waiting job come
        back with it, since they were dispatched, and leased, together."""
        if not redeliveries:
            return set()
        jobs = Job.fetch_many(
            [str(c.id) for c in redeliveries], connection=self.redis, serializer=JSONSerializer
        )
        waiting: set[uuid.UUID] = set()
        for job in jobs:
            if job is not None and job.get_status(refresh=False) in _WAITING:
                waiting.update(uuid.UUID(m) for m in job_message_ids(job))
        return waiting & {c.id for c in redeliveries}

    def jobs_for(
        self, messages: Sequence[outbox_relay.Claimed], queued: int = 0
    ) -> list[list[outbox_relay.Claimed]]:
        """The messages of each job. First dispatches share jobs of at most
        ``messages_per_job``. While no job waits in the queue (``queued``), some
        worker may be idle: the messages are spread over ``parallel_jobs`` jobs (the
        workers that can run at once, :func:`spread_jobs`), so each gets some. Once
        jobs wait, every worker is busy and the jobs are full. A redelivery or a retry
        is a job of its own: a message that took its worker down cannot take others
        down with it a second time."""
        fresh = [c for c in messages if c.first_dispatch]
        spread = 1 if queued > 0 else self.parallel_jobs
        size = max(1, min(self.messages_per_job, math.ceil(len(fresh) / spread)))
        jobs = [fresh[i : i + size] for i in range(0, len(fresh), size)]
        return jobs + [[c] for c in messages if not c.first_dispatch]

    def _enqueue(self, messages: Sequence[outbox_relay.Claimed]) -> None:
        if not messages:
            return
        # the queue's length decides how to spread several fresh messages; one message
        # is one job either way (the light load's pass), so it skips the round trip
        queued = self.queue.count if len(messages) > 1 else 0
        datas = [self._job_data(members) for members in self.jobs_for(messages, queued)]
        with self.redis.pipeline() as pipe:
            self.queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()

    def _job_data(self, members: Sequence[outbox_relay.Claimed]) -> Any:
        contexts: dict[str, str | None] = {}
        for c in members:
            with continue_trace(
                "outbox.dispatch",
                c.trace_context,
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.message.id": str(c.id),
                    "les.message_type": c.type,
                    "les.redelivery": c.dispatched_at is not None,
                    "les.job_messages": len(members),
                },
            ):
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
            contexts[str(c.id)] = json.dumps(carrier) if carrier else c.trace_context
        ids = [str(c.id) for c in members]
        types = sorted({c.type for c in members})
        return Queue.prepare_data(
            HANDLE_MESSAGES_JOB,
            args=(ids,),
            kwargs={"lease_seconds": self.lease_seconds},
            job_id=ids[0],
            meta={"trace_contexts": contexts, "message_types": types},
            timeout=JOB_TIMEOUT * len(members),
            result_ttl=RESULT_TTL,
            description=f"{', '.join(types)} x{len(ids)} {ids[0]}",
        )

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        log.info("relay %s started (%s)", self.name, "LISTEN/NOTIFY" if self.postgres else "poll")
        if self.postgres:
            try:  # listen before the first pass, so no commit falls in between
                self._listen()
            except Exception as error:
                log.warning("relay: cannot LISTEN yet (%r); polling", error)
        else:
            self._subscribe_wakeups()
        while not self.stop_event.is_set():
            drained = False
            try:
                while not self.stop_event.is_set():
                    if self.dispatch_once() < self.batch_size:
                        drained = True
                        break
            except redis.RedisError as error:
                self._redis_backoff = min(1.0, max(0.1, self._redis_backoff * 2))
                log.warning("relay: Redis unavailable (%r); retrying", error)
            except SQLAlchemyError as error:
                log.warning("relay: database error (%r); retrying", error)
                self.stop_event.wait(0.5)
                continue
            if drained:
                self._redis_backoff = 0.0
            self._housekeeping()
            if self._redis_backoff:
                self.stop_event.wait(self._redis_backoff)
            elif drained:
                self._wait()
        self.close()
        log.info("relay %s stopped", self.name)

    def _wait(self) -> None:
        """Until a wake-up or the poll interval, whichever comes first."""
        if self.postgres:
            try:
                conn = self._listen()
                for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
                    break
                return
            except Exception as error:
                log.warning("relay: LISTEN connection lost (%r); polling", error)
                self._close_listen()
        RELAY_WAKEUP.wait(self.poll_interval)
        RELAY_WAKEUP.clear()

    def _listen(self) -> Any:
        if self._listen_conn is None or self._listen_conn.closed:
            import psycopg

            from webapp.adapters.db import normalize_url

            url = normalize_url(self.database_url).replace("postgresql+psycopg://", "postgresql://")
            self._listen_conn = psycopg.connect(url, autocommit=True, connect_timeout=3)
            self._listen_conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return self._listen_conn

    def _close_listen(self) -> None:
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):  # already broken
                self._listen_conn.close()
        self._listen_conn = None

    def _subscribe_wakeups(self) -> None:
        """SQLite: a committed registration publishes on the wake-up channel."""

        def on_message(_message: Any) -> None:
            RELAY_WAKEUP.set()

        try:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(**{WAKEUP_CHANNEL: on_message})
            self._pubsub_thread = pubsub.run_in_thread(
                sleep_time=0.5, daemon=True, exception_handler=_ignore_pubsub_error
            )
        except redis.RedisError as error:
            log.warning("relay: no Redis wake-ups (%r); polling", error)

    def _housekeeping(self) -> None:
        now = time.time()
        if now - self._last_beat >= HEARTBEAT_EVERY:
            try:
                heartbeats.beat(self.redis, "relay", self.name, now)
                self._last_beat = now
            except redis.RedisError as error:
                log.debug("relay heartbeat failed: %r", error)
        if now - self._last_gauges >= GAUGES_EVERY:
            self._last_gauges = now
            try:
                with self.db.engine.connect() as conn:
                    figures = outbox_relay.backlog(conn, utcnow())
                for state in ("pending", "retrying", "dead"):
                    OUTBOX_MESSAGES.labels(state=state).set(figures[state])
                OUTBOX_OLDEST_PENDING_SECONDS.set(figures["oldest_pending_age_seconds"])
            except SQLAlchemyError as error:
                log.debug("relay gauges failed: %r", error)

    def stop(self, *_args: Any) -> None:
        self.stop_event.set()
        RELAY_WAKEUP.set()

    def close(self) -> None:
        self.release_connection()
        self._close_listen()
        if self._pubsub_thread is not None:
            self._pubsub_thread.stop()
        with contextlib.suppress(redis.RedisError):
            heartbeats.forget(self.redis, "relay", self.name)


def _ignore_pubsub_error(error: BaseException, pubsub: Any, thread: Any) -> None:
    log.debug("relay wake-up subscription error: %r", error)
    time.sleep(1.0)


def spread_jobs(config: Any) -> int:
    """How many jobs a small batch of fresh messages is spread over while the queue
    is empty (some worker may be idle): ``RELAY_SPREAD_JOBS``, or by default as many
    as can run at once: the worker processes (``BACKGROUND_MAX_CONCURRENCY``), but no
    more than the CPU cores. Each job costs RQ's per-job work and its own
    transactions, ≈ 4 ms of worker CPU here against ≈ 3 ms per message
    (bench/ANALYSIS.md), so pieces the cores cannot run in parallel only add CPU. With
    workers on other hosts than the relay, set it to their processes in all."""
    configured = int(config.get("RELAY_SPREAD_JOBS") or 0)
    if configured > 0:
        return configured
    return max(1, min(int(config["BACKGROUND_MAX_CONCURRENCY"]), os.cpu_count() or 1))


def start_in_thread(app: Any, **options: Any) -> Relay:
    """An in-process relay (embedded mode): woken by :data:`RELAY_WAKEUP`."""
    from webapp.extensions import get_db

    relay = Relay(
        get_db(app),
        redis.Redis.from_url(app.config["REDIS_URL"], socket_timeout=5),
        app.config["DATABASE_URL"],
        **({"parallel_jobs": spread_jobs(app.config)} | options),
    )
    threading.Thread(target=relay.run, name="outbox-relay", daemon=True).start()
    return relay


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.relay", description=__doc__)
    parser.add_argument("--name", help="relay name in leases and heartbeats")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lease-seconds", type=float, default=DEFAULT_LEASE_SECONDS)
    parser.add_argument("--poll-interval", type=float, default=1.0, help="at most 1 s")
    parser.add_argument(
        "--messages-per-job", type=int, default=10, help="most fresh messages in one RQ job"
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1")
    args = parser.parse_args(argv)

    from workers import runtime

    app = runtime.get_app({"SERVICE_NAME": "les-relay"})
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=os.environ.get("METRICS_HOST", "127.0.0.1"))
    from webapp.extensions import get_db

    relay = Relay(
        get_db(app),
        redis.Redis.from_url(app.config["REDIS_URL"], socket_timeout=5, socket_connect_timeout=2),
        app.config["DATABASE_URL"],
        name=args.name,
        batch_size=args.batch_size,
        lease_seconds=args.lease_seconds,
        poll_interval=args.poll_interval,
        messages_per_job=args.messages_per_job,
        parallel_jobs=spread_jobs(app.config),
    )
    signal.signal(signal.SIGTERM, relay.stop)
    signal.signal(signal.SIGINT, relay.stop)
    from webapp.start_up_objects import freeze_start_up_objects

    freeze_start_up_objects("relay")
    relay.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
