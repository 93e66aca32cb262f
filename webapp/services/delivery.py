"""Running the asynchronous handlers of one outbox message (the worker's job), with
retries, dead letters and the attempts history; plus the after-commit hooks that
wake the relay or, in the baseline build, run the handlers inline.

Delivery is at least once. Each handler runs in its own transaction together with
its inbox row (``ProcessedMessages``: message id + handler name), so a redelivered
message skips the handlers that already succeeded, and a job for a message that is
already processed does nothing. A handler's transaction starts by claiming its
inbox row (one insert that does nothing if the row is there): its writes and the
row then commit together, or roll back together when it fails, and a second run of
the same handler (a redelivery after a lease expired) waits on the row's key, then
finds it. A mail sent before a failed commit is sent again on the retry, with the
same Message-ID. A handler that commits part of its work midway (``checkpoints``)
locks the message's row and checks the inbox instead (one statement), and writes
its inbox row at its end. Each commit releases the row lock; its next claim (a
recipient's, or its own at the end) takes it again in the same statement, so the
row is locked whenever the handler writes or mails.

A handler that only writes to the database (``database_only``: a counter) needs no
transaction of its own: once a message's other handlers succeeded, it runs in the
job's last transaction, the one that marks the job's messages processed, with its
inbox row claimed there (one statement for the job). Its writes then commit with
the mark, and a message marked processed by another worker first runs none of
them. A message whose other handler failed runs it at once in its own transaction,
as before, so a counter does not wait for a mail server; if the job's last
transaction fails (such a handler raised, or two jobs deadlocked on a counter's
row), it is rolled back and the job's database-only handlers run one by one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from webapp.adapters import outbox_relay
from webapp.adapters.db import return_idle
from webapp.domain.messages import from_dict
from webapp.observability.metrics import (
    HANDLER_FAILURES,
    HANDLER_SECONDS,
    MESSAGES_DEAD_LETTERED,
)
from webapp.observability.tracing import continue_trace, within_span
from webapp.services import messagebus, status_links
from webapp.services.async_handlers import Mailer
from webapp.services.unit_of_work import CommitResult, utcnow

if TYPE_CHECKING:
    from flask import Flask

    from webapp.extensions import Database

log = logging.getLogger(__name__)

#: Redis pub/sub channel a relay listens on when PostgreSQL NOTIFY is not available
WAKEUP_CHANNEL = "les:outbox:wakeup"
#: set after every commit that wrote outbox rows: wakes a relay running in this process
RELAY_WAKEUP = threading.Event()
#: how long a worker may hold a message before the relay hands it to someone else
DEFAULT_LEASE_SECONDS = 120.0
#: retry delays grow by this factor per failure, capped at MAX_RETRY_DELAY_SECONDS
BACKOFF_FACTOR = 2.0
#: each delay is stretched by a random share in [0, JITTER] (never shortened)
BACKOFF_JITTER = 0.25
MAX_RETRY_DELAY_SECONDS = 3600.0

_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent.parent)


def retry_delay(
    failures: int,
    base_seconds: float,
    *,
    factor: float = BACKOFF_FACTOR,
    jitter: float = BACKOFF_JITTER,
    cap: float = MAX_RETRY_DELAY_SECONDS,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after the ``failures``-th failure (1-based): exponential
    ``base * factor**(failures-1)`` (capped), stretched by up to ``jitter`` so that
    messages failing together do not retry together."""
    if failures < 1:
        raise ValueError("failures counts from 1")
    delay = min(cap, base_seconds * factor ** (failures - 1))
    return delay * (1.0 + jitter * rand())


def fingerprint(message_type: str, error: BaseException) -> str:
    """Groups failures with the same cause: message type, exception class and the
    innermost frame of our own code (file and function, not the line number)."""
    frame_id = ""
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename.startswith(_PROJECT_ROOT) and "/.venv/" not in frame.filename:
            relative = os.path.relpath(frame.filename, _PROJECT_ROOT)
            frame_id = f"{relative}:{frame.name}"
    key = f"{message_type}|{type(error).__module__}.{type(error).__qualname__}|{frame_id}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def default_worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


class HandlerRun:
    """The :class:`~webapp.services.async_handlers.HandlerContext` of one handler."""

    def __init__(
        self,
        session: Session,
        mailer: Mailer,
        message_id: uuid.UUID,
        public_base_url: str,
        secret_key: str,
        waitlist_notice_max_position: int = 10,
        checkpoints: bool = False,
    ) -> None:
        self.session = session
        self.checkpoints = checkpoints
        self.waitlist_notice_max_position = waitlist_notice_max_position
        self.mailer = mailer
        self.message_id = str(message_id)
        self._id = message_id
        self._base = public_base_url
        self._secret = secret_key
        #: a checkpoint committed, which released the message's row lock: the next
        #: claim takes it again
        self._relock = False

    def status_url(self, registration_id: str) -> str:
        return status_links.status_url(self._base, self._secret, registration_id)

    def first_time(self, key: str) -> bool:
        relock, self._relock = self._relock, False
        return outbox_relay.claim_inbox_row(
            self.session, self._id, key, utcnow(), lock_message=relock
        )

    def forget(self, key: str) -> None:
        outbox_relay.forget_inbox_row(self.session, self._id, key)

    def checkpoint(self) -> None:
        if not self.checkpoints:  # its inbox row is written: a commit now would mark it done
            raise RuntimeError("a handler commits once, with its inbox row (or checkpoints=True)")
        self.session.commit()
        self._relock = True

    def mark_done(self, handler: str) -> None:
        """A handler that checkpoints is done: its own inbox row (the message's row
        locked again first if a checkpoint released it). Found there already, a
        second run of it finished first; the recipients' rows kept either from
        mailing anyone twice."""
        self.first_time(handler)


@dataclass(frozen=True)
class _Attempt:
    """One run of a message's handlers, before it is recorded."""

    message_id: uuid.UUID
    type_name: str
    started_at: datetime
    duration: float
    failure: BaseException | None
    message: Any = None
    #: database-only handlers left for the job's last transaction
    deferred: tuple[messagebus.AsyncHandler, ...] = ()
    #: the message's span, the parent of its database-only handlers' spans
    span_context: trace.SpanContext | None = None


class _NoMail:
    """The mailer of a database-only handler."""

    def send(self, to: str, template: str, context: dict[str, Any], message_key: str) -> None:
        raise RuntimeError("a database_only handler sends nothing")


@dataclass
class Outcome:
    #: processed | retry | dead | skipped | missing
    status: str
    message_type: str | None = None
    error: str | None = None


class Deliverer:
    """Runs the async handlers of outbox messages against one database."""

    def __init__(
        self,
        db: Database,
        mailer: Mailer,
        config: dict[str, Any],
        worker_name: str | None = None,
        keep_connection: bool = False,
    ) -> None:
        self.db = db
        self.mailer = mailer
        self.public_base_url = str(config.get("PUBLIC_BASE_URL", "http://127.0.0.1:8000"))
        self.waitlist_notice_max_position = int(config.get("WAITLIST_NOTICE_MAX_POSITION", 10))
        self.secret_key = str(config.get("SECRET_KEY", ""))
        self.retry_delay_seconds = float(config.get("OUTBOX_RETRY_DELAY_SECONDS", 5.0))
        self.worker_name = worker_name or default_worker_name()
        #: a worker keeps its jobs' connection from one job to the next
        #: (:meth:`_one_connection`)
        self.keep_connection = keep_connection
        self.idle_ping_seconds = float(config.get("DB_POOL_PING_IDLE_SECONDS", 2.0))
        #: the connection the current job's transactions share, per thread (the web
        #: runs inline handlers in its request threads)
        self._job = threading.local()

    @contextlib.contextmanager
    def _one_connection(self) -> Iterator[None]:
        """The transactions of one job (taking the messages over, each handler, the
        bookkeeping) share one pooled connection: a checkout per transaction, with
        its reset and its trace span, cost more than many handlers' statements. If
        the connection breaks (a database restart), SQLAlchemy invalidates it and the
        next transaction gets a new one from the pool.

        With ``keep_connection`` (a worker process) jobs that follow each other keep
        that connection too: a checkout and its span were 0.5 M of the 11 M
        instructions of a one-message job's code. A job after an idle spell longer
        than ``DB_POOL_PING_IDLE_SECONDS`` gives it back first, idle since its last
        job, so the pool pings it on checkout (a database restart while the worker
        waited costs no job); a job that fails gives it up."""
        job = self._job
        if getattr(job, "active", False):  # already inside a job
            yield
            return
        conn = getattr(job, "conn", None)
        if conn is not None and time.monotonic() - job.used_until > self.idle_ping_seconds:
            self.release_connection()
            conn = None
        if conn is None:
            conn = job.conn = self.db.write_engine.connect()
        job.active, failed = True, True
        try:
            yield
            failed = False
        finally:
            job.active = False
            job.used_until = time.monotonic()
            if failed or not self.keep_connection:
                self.release_connection()

    def release_connection(self) -> None:
        """Give this thread's kept connection back to the pool, idle since its last job
        (a broken one is discarded by SQLAlchemy)."""
        conn, self._job.conn = getattr(self._job, "conn", None), None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                return_idle(conn, getattr(self._job, "used_until", time.monotonic()))

    def _session(self) -> Session:
        """A session for one transaction: on the job's connection inside a job."""
        if not getattr(self._job, "active", False):
            return self.db.write_sessions()
        return self.db.write_sessions(bind=self._job.conn)

    def process(
        self,
        message_id: str | uuid.UUID,
        trace_context: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> Outcome:
        """Handle one message. Never raises for a handler failure: the failure is
        recorded on the message and its retry scheduled. Database errors while
        bookkeeping do propagate (the relay redelivers after the lease)."""
        contexts = {str(message_id): trace_context} if trace_context is not None else None
        return self.process_many([message_id], contexts, lease_seconds)[0]

    def process_many(
        self,
        message_ids: Sequence[str | uuid.UUID],
        trace_contexts: Mapping[str, str | None] | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> list[Outcome]:
        """Handle several messages in order (one worker job; the relay puts several
        fresh messages in one job under load). One statement takes them all over;
        each handler runs in its own transaction with its inbox row, as for a single
        message, but for the database-only ones; a failure is recorded at once; the
        messages that succeeded are marked processed together, with their attempt
        rows and their database-only handlers, in one transaction at the end.
        Outcomes come back in the order of ``message_ids``."""
        with self._one_connection():
            return self._process_many(message_ids, trace_contexts or {}, lease_seconds)

    def _process_many(
        self,
        message_ids: Sequence[str | uuid.UUID],
        contexts: Mapping[str, str | None],
        lease_seconds: float,
    ) -> list[Outcome]:
        ids = [m if isinstance(m, uuid.UUID) else uuid.UUID(str(m)) for m in message_ids]
        with self._session() as session, session.begin():
            taken = outbox_relay.take_over_many(
                session, ids, self.worker_name, utcnow(), lease_seconds
            )
            left_out = [mid for mid in ids if mid not in taken]
            types = outbox_relay.types_of(session, left_out) if left_out else {}
        outcomes: dict[uuid.UUID, Outcome] = {
            mid: Outcome("skipped", types[mid]) if mid in types else Outcome("missing")
            for mid in left_out
        }
        succeeded: list[_Attempt] = []
        for mid in ids:
            row = taken.get(mid)
            if row is None:
                continue
            context = contexts.get(str(mid))
            with continue_trace(
                f"outbox.handle {row['Type']}",
                context if context is not None else row["TraceContext"],
                kind=trace.SpanKind.CONSUMER,
                attributes={"messaging.message.id": str(mid), "les.worker": self.worker_name},
            ) as span:
                attempt = self._run(mid, row, span.get_span_context())
                if attempt.failure is None:
                    succeeded.append(attempt)
                    span.set_attribute("les.outcome", "processed")
                    continue
                outcome = self._finish(attempt)
                outcomes[mid] = outcome
                span.set_attribute("les.outcome", outcome.status)
                span.set_status(trace.StatusCode.ERROR, (outcome.error or "")[:200])
        if succeeded:
            outcomes.update(self._finish_processed(succeeded))
        return [outcomes[mid] for mid in ids]

    def record_crash(self, message_id: str | uuid.UUID, error: BaseException) -> Outcome:
        """The process running ``message_id`` died: count it as a failed attempt
        (unless the message no longer needs handling)."""
        mid = message_id if isinstance(message_id, uuid.UUID) else uuid.UUID(str(message_id))
        with self.db.engine.connect() as conn:
            types = outbox_relay.types_of(conn, [mid], pending_only=True)
        if mid not in types:
            return Outcome("skipped")  # handled meanwhile, dead, archived, or gone
        return self._finish(_Attempt(mid, types[mid], utcnow(), 0.0, error))

    def _run(
        self, mid: uuid.UUID, row: dict[str, Any], span_context: trace.SpanContext | None = None
    ) -> _Attempt:
        """The message's handlers, but its database-only ones only if another failed:
        they are left for the job's last transaction otherwise."""
        type_name = row["Type"]
        started_at = utcnow()
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            message = from_dict(type_name, json.loads(row["Data"]))
        except Exception as error:  # unreadable payload: a dead letter in the making
            failure = error
            message = None
        deferred: list[messagebus.AsyncHandler] = []
        if message is not None:
            handlers = messagebus.async_handlers(type_name)
            deferred = [h for h in handlers if h.database_only]
            failure = self._run_handlers(mid, message, [h for h in handlers if not h.database_only])
            if failure is not None:
                self._run_handlers(mid, message, deferred)
                deferred = []
        duration = time.perf_counter() - started
        HANDLER_SECONDS.labels(message_type=type_name).observe(duration)
        return _Attempt(
            mid, type_name, started_at, duration, failure, message, tuple(deferred), span_context
        )

    def _run_handlers(
        self, mid: uuid.UUID, message: Any, handlers: Sequence[messagebus.AsyncHandler]
    ) -> Exception | None:
        """Each handler in its own transaction; the first failure, if any."""
        failure: Exception | None = None
        for handler in handlers:
            try:
                self._run_handler(mid, handler, message)
            except Exception as error:
                log.warning(
                    "handler %s failed on %s %s: %r", handler.name, message.type_name, mid, error
                )
                failure = failure or error
        return failure

    def _run_handler(self, mid: uuid.UUID, handler: messagebus.AsyncHandler, message: Any) -> None:
        with self._session() as session:
            try:
                if handler.checkpoints:
                    if not outbox_relay.lock_for_handler(session, mid, handler.name):
                        return  # processed meanwhile, or this handler already ran
                elif not outbox_relay.claim_inbox_row(session, mid, handler.name, utcnow()):
                    return  # this handler already ran
                ctx = HandlerRun(
                    session,
                    self.mailer,
                    mid,
                    self.public_base_url,
                    self.secret_key,
                    self.waitlist_notice_max_position,
                    handler.checkpoints,
                )
                handler.func(message, ctx)
                if handler.checkpoints:
                    ctx.mark_done(handler.name)
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def _finish_processed(self, attempts: Sequence[_Attempt]) -> dict[uuid.UUID, Outcome]:
        """Every handler of these messages succeeded, but for the database-only ones
        left for now: those, their attempt rows and ``ProcessedAt`` in one transaction
        (a message processed meanwhile by another worker is ``skipped``). If that
        transaction fails, its database-only handlers run one by one, each in a
        transaction of its own, and the messages whose handlers succeeded are marked
        without them."""
        try:
            return self._mark_processed(attempts)
        except Exception as error:
            if not any(a.deferred for a in attempts):
                raise  # bookkeeping only: the relay redelivers after the lease
            log.warning(
                "the last transaction of a job of %d messages failed (%r): its "
                "database-only handlers run one by one",
                len(attempts),
                error,
            )
        outcomes: dict[uuid.UUID, Outcome] = {}
        done: list[_Attempt] = []
        for attempt in attempts:
            failure = self._run_handlers(attempt.message_id, attempt.message, attempt.deferred)
            attempt = replace(attempt, failure=failure, deferred=())
            if failure is None:
                done.append(attempt)
            else:
                outcomes[attempt.message_id] = self._finish(attempt)
        if done:
            outcomes.update(self._mark_processed(done))
        return outcomes

    def _mark_processed(self, attempts: Sequence[_Attempt]) -> dict[uuid.UUID, Outcome]:
        with self._session() as session, session.begin():
            outbox_relay.record_attempts(
                session,
                [
                    outbox_relay.Attempt(
                        a.message_id, self.worker_name, a.started_at, round(a.duration * 1000)
                    )
                    for a in attempts
                ],
            )
            marked = outbox_relay.mark_processed_many(
                session, [a.message_id for a in attempts], utcnow()
            )
            self._run_deferred(session, [a for a in attempts if a.message_id in marked])
        return {
            a.message_id: Outcome("processed" if a.message_id in marked else "skipped", a.type_name)
            for a in attempts
        }

    def _run_deferred(self, session: Session, attempts: Sequence[_Attempt]) -> None:
        """The database-only handlers of these messages, which this transaction marks
        processed: each whose inbox row this transaction claims (not one that ran in an
        earlier, failed attempt). In the order of the messages' events, so that two
        jobs take the events' counter rows in the same order; each in its message's
        trace, under the span its other handlers ran in."""
        attempts = sorted(
            (a for a in attempts if a.deferred),
            key=lambda a: (getattr(a.message, "event_id", 0), a.message_id),
        )
        claims = [(a.message_id, h.name) for a in attempts for h in a.deferred]
        claimed = outbox_relay.claim_inbox_rows(session, claims, utcnow())
        for attempt in attempts:
            handlers = [h for h in attempt.deferred if (attempt.message_id, h.name) in claimed]
            if not handlers:
                continue  # they ran in an earlier attempt, whose mail failed
            ctx = HandlerRun(
                session,
                _NoMail(),
                attempt.message_id,
                self.public_base_url,
                self.secret_key,
                self.waitlist_notice_max_position,
            )
            with within_span(attempt.span_context):
                for handler in handlers:
                    handler.func(attempt.message, ctx)

    def _finish(self, attempt: _Attempt) -> Outcome:
        """Record a failed attempt: a retry with backoff, or a dead letter."""
        mid, type_name, failure = attempt.message_id, attempt.type_name, attempt.failure
        assert failure is not None
        now = utcnow()
        error_type = type(failure).__name__
        error_text = _describe(failure)
        with self._session() as session, session.begin():
            current = outbox_relay.lock(session, mid)
            outbox_relay.record_attempts(
                session,
                [
                    outbox_relay.Attempt(
                        mid,
                        self.worker_name,
                        attempt.started_at,
                        round(attempt.duration * 1000),
                        error_type,
                        error_text,
                    )
                ],
            )
            if current is None or current["ProcessedAt"] is not None:
                return Outcome("skipped", type_name)
            HANDLER_FAILURES.labels(message_type=type_name, error_class=error_type).inc()
            failures = int(current["RetryCount"]) + 1
            dead = failures >= int(current["MaxRetryCount"])
            next_at = None
            if not dead:
                delay = retry_delay(failures, self.retry_delay_seconds)
                next_at = now + timedelta(seconds=delay)
            outbox_relay.mark_failed(
                session,
                mid,
                retry_count=failures,
                error=error_text,
                error_type=f"{type(failure).__module__}.{type(failure).__qualname__}",
                error_summary=error_summary(failure),
                fingerprint=fingerprint(type_name, failure),
                next_retry_at=next_at,
                dead_lettered_at=now if dead else None,
            )
        if dead:
            MESSAGES_DEAD_LETTERED.labels(message_type=type_name).inc()
            log.error("outbox message %s (%s) is a dead letter: %s", mid, type_name, error_type)
            return Outcome("dead", type_name, error_text)
        return Outcome("retry", type_name, error_text)


def _describe(error: BaseException) -> str:
    """Type, message and traceback, as an operator reads them."""
    summary = f"{type(error).__name__}: {error}"
    trace_text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return f"{summary[:2000]}\n\n{trace_text[-18000:]}"


def error_summary(error: BaseException) -> str:
    """``smtplib.SMTPServerDisconnected: Connection unexpectedly closed``: the class as
    the traceback's last line names it and the first line of the message (what the
    dashboard lists and searches; the full traceback stays in ``Error``)."""
    cls = type(error)
    name = cls.__qualname__
    if cls.__module__ not in ("builtins", "__main__"):
        name = f"{cls.__module__}.{name}"
    lines = str(error).strip().splitlines()
    summary = f"{name}: {lines[0].strip()}" if lines else name
    return summary[: outbox_relay.ERROR_SUMMARY_MAX]


# -- after-commit hooks ------------------------------------------------------------------
class RelayWakeup:
    """After a commit that wrote outbox rows: set :data:`RELAY_WAKEUP` and, where
    PostgreSQL NOTIFY does not exist (SQLite), publish on :data:`WAKEUP_CHANNEL`.
    Redis errors are swallowed, and Redis is left alone for a few seconds after
    one, so a registration never waits on a Redis outage."""

    def __init__(self, redis_url: str, publish: bool) -> None:
        self.redis_url = redis_url
        self.publish = publish
        self._client: Any = None
        self._quiet_until = 0.0

    def __call__(self, result: CommitResult) -> None:
        if not result.outbox_rows:
            return
        RELAY_WAKEUP.set()
        if not self.publish or time.monotonic() < self._quiet_until:
            return
        try:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(
                    self.redis_url, socket_timeout=0.2, socket_connect_timeout=0.2
                )
            self._client.publish(WAKEUP_CHANNEL, "1")
        except Exception as error:
            self._quiet_until = time.monotonic() + 5.0
            log.debug("relay wake-up not published: %r", error)


class InlineHandlers:
    """Baseline build (``OUTBOX_SYNC_HANDLERS``): run the async handlers right after
    the commit, in the request. Failures are recorded and retried by the relay."""

    def __init__(self, deliverer: Deliverer) -> None:
        self.deliverer = deliverer

    def __call__(self, result: CommitResult) -> None:
        for row in result.outbox_rows:
            self.deliverer.process(row["Id"], trace_context=row.get("TraceContext"))


def init_app(app: Flask) -> None:
    """Register the after-commit hooks of the outbox on the app's database."""
    from webapp.adapters.mail import make_mailer
    from webapp.extensions import get_db

    db = get_db(app)
    postgres = db.engine.dialect.name == "postgresql"
    db.after_commit.append(RelayWakeup(app.config["REDIS_URL"], publish=not postgres))
    if app.config.get("OUTBOX_SYNC_HANDLERS"):
        deliverer = Deliverer(db, make_mailer(app.config), app.config, "inline")
        db.after_commit.append(InlineHandlers(deliverer))
