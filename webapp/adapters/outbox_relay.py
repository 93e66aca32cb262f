"""Outbox queries of the relay and the workers: claim due messages under a lease,
mark them dispatched / processed / failed, and the backlog figures for health and
metrics. The ``OutboxMessages`` table is the truth; Redis only carries jobs.

The statements of the hot path (every registration's message passes through them)
are built once per process with bound parameters and reused: building a statement
and computing its cache key cost about as much CPU as executing it (in-process,
a 3-table select: 0.55-0.73 ms built per call, 0.23-0.37 ms prebuilt).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import and_, any_, bindparam, case, func, insert, null, or_, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY as postgresql_array
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import BindParameter

from webapp.adapters.tables import outbox_attempts, outbox_messages, processed_messages

o = outbox_messages.c

#: longest ``ErrorSummary`` kept (the column's length)
ERROR_SUMMARY_MAX = 300


@dataclass(frozen=True)
class Claimed:
    """A message the relay holds a lease on."""

    id: uuid.UUID
    type: str
    created_at: datetime
    trace_context: str | None
    #: set once a relay enqueued it or a worker took it (a redelivery)
    dispatched_at: datetime | None
    #: failed attempts so far (a retry when above 0)
    retry_count: int = 0
    #: times an operator replayed it from the dead letters
    replay_count: int = 0

    @property
    def first_dispatch(self) -> bool:
        """Never enqueued, never taken by a worker, never failed, never replayed."""
        return self.dispatched_at is None and self.retry_count == 0 and self.replay_count == 0


def pending_clause() -> Any:
    """Not yet handled, not given up on, not archived by an operator."""
    return and_(o.ProcessedAt.is_(None), o.DeadLetteredAt.is_(None), o.ArchivedAt.is_(None))


def due_clause(now: datetime | BindParameter[Any]) -> Any:
    """Pending, not waiting for a retry, not leased at ``now`` (a value or a bound
    parameter)."""
    return and_(
        pending_clause(),
        or_(o.NextRetryAt.is_(None), o.NextRetryAt <= now),
        or_(o.LockedUntil.is_(None), o.LockedUntil < now),
    )


def claim(
    session: Session, now: datetime, relay: str, limit: int, lease_seconds: float
) -> list[Claimed]:
    """Lease up to ``limit`` due messages, oldest first, to ``relay``, and mark them
    dispatched at ``now``: the relay enqueues them right after this transaction
    commits, and if it cannot, :func:`release` takes the lease and the mark back. So
    a pass needs no second transaction to mark what it enqueued. Each
    :class:`Claimed` carries the ``DispatchedAt`` the message had before (``None``:
    a first dispatch).

    PostgreSQL: one statement; ``FOR UPDATE SKIP LOCKED`` lets several relays claim
    disjoint batches, and the lease (``LockedUntil``) hides the rows from the others
    until it expires, so a relay that dies after claiming only delays its batch (its
    messages then come back as redeliveries, each a job of its own). SQLite (whose
    ``RETURNING`` cannot name another table): the due rows are read, then updated, in
    the write transaction (``BEGIN IMMEDIATE``), which serializes claimers.
    Call inside a transaction and commit right after.
    """
    until = now + timedelta(seconds=lease_seconds)
    params = {"now": now, "limit": limit, "until": until, "relay": relay, "dispatched": now}
    if _is_postgresql(session):
        rows = [Claimed(*row) for row in session.execute(_claim_stmt(), params)]
        return sorted(rows, key=lambda c: c.created_at)  # RETURNING keeps no order
    rows = [Claimed(*row) for row in session.execute(_due_stmt(False), params)]
    if rows:
        params["ids"] = [c.id for c in rows]
        session.execute(_lease_stmt(), params)
    return rows


@cache
def _due_stmt(postgresql: bool) -> Any:
    """The due messages a claim takes, oldest first, as :class:`Claimed` rows."""
    due = (
        select(
            o.Id, o.Type, o.CreatedAt, o.TraceContext, o.DispatchedAt, o.RetryCount, o.ReplayCount
        )
        .where(due_clause(bindparam("now")))
        .order_by(o.CreatedAt)
        .limit(bindparam("limit"))
    )
    return due.with_for_update(skip_locked=True) if postgresql else due


def _is_postgresql(session: Session) -> bool:
    return bool(session.get_bind().dialect.name == "postgresql")


_LEASE = {
    "LockedUntil": bindparam("until"),
    "LockedBy": bindparam("relay"),
    "DispatchedAt": bindparam("dispatched", type_=o.DispatchedAt.type),
}


@cache
def _claim_stmt() -> Executable:
    """PostgreSQL: ``UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``, the
    previous ``DispatchedAt`` from the subquery."""
    due = _due_stmt(True).subquery("due")
    return (
        update(outbox_messages)
        .where(o.Id == due.c.Id)
        .values(_LEASE)
        .returning(
            o.Id,
            o.Type,
            o.CreatedAt,
            o.TraceContext,
            due.c.DispatchedAt,
            o.RetryCount,
            o.ReplayCount,
        )
    )


@cache
def _lease_stmt() -> Executable:
    """SQLite: the lease and the dispatch mark of the due rows just read."""
    return update(outbox_messages).where(_id_among(False)).values(_LEASE)


def extend_lease(session: Session, ids: Sequence[uuid.UUID], relay: str, until: datetime) -> None:
    """Messages whose job still waits in the queue: keep them leased until ``until``."""
    if ids:
        session.execute(
            update(outbox_messages)
            .where(o.Id.in_(list(ids)), o.LockedBy == relay)
            .values(LockedUntil=until)
        )


def release(session: Session, claimed: Sequence[Claimed], relay: str) -> None:
    """Give the rows back (enqueueing failed): due again at the next pass, and a
    message never dispatched before is again a first dispatch."""
    if not claimed:
        return
    first = [c.id for c in claimed if c.dispatched_at is None]
    session.execute(
        update(outbox_messages)
        .where(o.Id.in_([c.id for c in claimed]), o.LockedBy == relay, o.ProcessedAt.is_(None))
        .values(
            LockedUntil=None,
            LockedBy=None,
            DispatchedAt=case((o.Id.in_(first), null()), else_=o.DispatchedAt),
        )
    )


def _id_among(postgresql: bool) -> Any:
    """``Id`` is one of the list bound as ``ids``: one array parameter on PostgreSQL
    (``= ANY``), which SQLAlchemy binds as it is; an ``IN`` list elsewhere, which it
    renders into the statement's text for each length at every execution."""
    if postgresql:
        return o.Id == any_(bindparam("ids", type_=postgresql_array(o.Id.type)))
    return o.Id.in_(bindparam("ids", expanding=True))


def lock(session: Session, message_id: uuid.UUID) -> dict[str, Any] | None:
    """The message row, locked for this transaction (no-op lock on SQLite, whose
    write transaction already excludes every other writer)."""
    stmt = select(outbox_messages).where(o.Id == message_id)
    if _is_postgresql(session):
        stmt = stmt.with_for_update()
    row = session.execute(stmt).first()
    return dict(row._mapping) if row else None


def take_over_many(
    session: Session,
    message_ids: Sequence[uuid.UUID],
    worker: str,
    now: datetime,
    lease_seconds: float,
) -> dict[uuid.UUID, dict[str, Any]]:
    """The worker starts on these messages: their lease is now the worker's, and
    each counts as dispatched (the relay's own mark may not have committed yet; it
    then finds the lease taken and leaves the row alone). Returns the rows it took
    (id -> Type, Data, TraceContext); messages that no longer need handling
    (processed, dead-lettered, archived) or do not exist are left out."""
    if not message_ids:
        return {}
    until = now + timedelta(seconds=lease_seconds)
    params = {"ids": list(message_ids), "until": until, "worker": worker, "now": now}
    rows = session.execute(_take_over_stmt(_is_postgresql(session)), params)
    return {row.Id: dict(row._mapping) for row in rows}


@cache
def _take_over_stmt(postgresql: bool) -> Executable:
    return (
        update(outbox_messages)
        .where(_id_among(postgresql), pending_clause())
        .values(
            LockedUntil=bindparam("until"),
            LockedBy=bindparam("worker"),
            DispatchedAt=func.coalesce(o.DispatchedAt, bindparam("now", type_=o.DispatchedAt.type)),
        )
        .returning(o.Id, o.Type, o.Data, o.TraceContext)
    )


def types_of(
    db: Session | Connection, message_ids: Sequence[uuid.UUID], pending_only: bool = False
) -> dict[uuid.UUID, str]:
    """The type of each of these messages that exists (and, with ``pending_only``,
    still needs handling)."""
    stmt = select(o.Id, o.Type).where(o.Id.in_(list(message_ids)))
    if pending_only:
        stmt = stmt.where(pending_clause())
    rows = db.execute(stmt)
    return {row.Id: row.Type for row in rows}


def lock_for_handler(session: Session, message_id: uuid.UUID, handler: str) -> bool:
    """Lock the message's row for one handler's transaction; True if the handler
    still has to run (the message is not processed and its inbox has no row for
    ``handler``). One statement: the row lock and the inbox check together."""
    params = {"id": message_id, "handler": handler}
    row = session.execute(_lock_for_handler_stmt(_is_postgresql(session)), params).first()
    return row is not None and bool(row[0]) and not row[1]


@cache
def _lock_for_handler_stmt(postgresql: bool) -> Executable:
    done = (
        select(processed_messages.c.MessageId)
        .where(
            processed_messages.c.MessageId == o.Id,
            processed_messages.c.Handler == bindparam("handler"),
        )
        .exists()
    )
    stmt = select(o.ProcessedAt.is_(None), done).where(o.Id == bindparam("id"))
    return stmt.with_for_update(of=outbox_messages) if postgresql else stmt


def claim_inbox_row(
    session: Session,
    message_id: uuid.UUID,
    key: str,
    now: datetime,
    lock_message: bool = False,
) -> bool:
    """Add ``key`` (a handler's name, or a key a handler records, such as a mail's
    recipient) to the message's inbox unless it is there: True if this transaction
    added the row, False if it was there. A handler that commits once claims its row
    first: it runs only on True, and its writes commit or roll back with the row. A
    concurrent claim of the same key waits on the inbox's primary key until this
    transaction ends, then finds the row, or claims it after a rollback.

    With ``lock_message`` the same statement first locks the message's row for this
    transaction, as :func:`lock` does (a handler that checkpoints takes the lock
    again this way after each commit, without a statement of its own), and claims
    nothing if the message no longer exists."""
    params = {"id": message_id, "handler": key, "now": now}
    stmt = _CLAIM_INBOX_ROW
    if lock_message:
        stmt = _claim_locking_stmt(_is_postgresql(session))
    return session.execute(stmt, params).first() is not None


_CLAIM_PARAMS = (
    bindparam("id", type_=processed_messages.c.MessageId.type),
    bindparam("handler", type_=processed_messages.c.Handler.type),
    bindparam("now", type_=processed_messages.c.ProcessedAt.type),
)

#: text, in the syntax PostgreSQL and SQLite share: SQLAlchemy does not cache a compiled
#: ``on_conflict_do_nothing()``
_CLAIM_INBOX_ROW = text(
    'INSERT INTO "ProcessedMessages" ("MessageId", "Handler", "ProcessedAt") '
    'VALUES (:id, :handler, :now) ON CONFLICT DO NOTHING RETURNING "MessageId"'
).bindparams(*_CLAIM_PARAMS)


@cache
def _claim_locking_stmt(postgresql: bool) -> Executable:
    """The claim, from the message's row locked ``FOR UPDATE`` (on SQLite, whose write
    transaction already excludes every other writer, from the row as it is). SQLite
    needs the ``WHERE`` to read ``ON CONFLICT`` as the upsert's, not a join's."""
    lock = " FOR UPDATE" if postgresql else ""
    return text(
        f'WITH message AS (SELECT "Id" FROM "OutboxMessages" WHERE "Id" = :id{lock}) '
        'INSERT INTO "ProcessedMessages" ("MessageId", "Handler", "ProcessedAt") '
        'SELECT "Id", :handler, :now FROM message WHERE true '
        'ON CONFLICT DO NOTHING RETURNING "MessageId"'
    ).bindparams(*_CLAIM_PARAMS)


def claim_inbox_rows(
    session: Session, claims: Sequence[tuple[uuid.UUID, str]], now: datetime
) -> set[tuple[uuid.UUID, str]]:
    """:func:`claim_inbox_row` for several (message, key) pairs: the pairs this
    transaction added (one statement on PostgreSQL, one per pair elsewhere; a single
    pair binds no arrays)."""
    if not claims:
        return set()
    if len(claims) == 1 or not _is_postgresql(session):
        return {c for c in claims if claim_inbox_row(session, c[0], c[1], now)}
    params = {"ids": [c[0] for c in claims], "handlers": [c[1] for c in claims], "now": now}
    return {(row[0], row[1]) for row in session.execute(_CLAIM_INBOX_ROWS, params)}


#: PostgreSQL: the pairs as two arrays, unnested side by side
_CLAIM_INBOX_ROWS = text(
    'INSERT INTO "ProcessedMessages" ("MessageId", "Handler", "ProcessedAt") '
    "SELECT claim.id, claim.handler, :now FROM unnest(:ids, :handlers) AS claim(id, handler) "
    'ON CONFLICT DO NOTHING RETURNING "MessageId", "Handler"'
).bindparams(
    bindparam("ids", type_=postgresql_array(processed_messages.c.MessageId.type)),
    bindparam("handlers", type_=postgresql_array(processed_messages.c.Handler.type)),
    _CLAIM_PARAMS[2],
)


def forget_inbox_row(session: Session, message_id: uuid.UUID, key: str) -> None:
    """Take back ``key``, claimed in this transaction, when what it stood for did not
    happen after all (a waitlist notice another fan-out sent meanwhile)."""
    session.execute(_FORGET_INBOX_ROW, {"id": message_id, "handler": key})


_FORGET_INBOX_ROW = text(
    'DELETE FROM "ProcessedMessages" WHERE "MessageId" = :id AND "Handler" = :handler'
).bindparams(*_CLAIM_PARAMS[:2])


@dataclass(frozen=True)
class Attempt:
    """One row of ``OutboxAttempts``: a worker's run of a message's handlers."""

    message_id: uuid.UUID
    worker: str
    at: datetime
    duration_ms: int
    error_type: str | None = None
    error: str | None = None


def record_attempts(session: Session, attempts: Sequence[Attempt]) -> None:
    session.execute(
        _INSERT_ATTEMPT,
        [
            {
                "MessageId": a.message_id,
                "AttemptedAt": a.at,
                "Worker": a.worker[:200],
                "DurationMs": a.duration_ms,
                "Succeeded": a.error_type is None,
                "ErrorType": a.error_type,
                "Error": a.error,
            }
            for a in attempts
        ],
    )


_INSERT_ATTEMPT = insert(outbox_attempts)


def mark_processed_many(
    session: Session, message_ids: Sequence[uuid.UUID], now: datetime
) -> set[uuid.UUID]:
    """Mark these messages processed; returns the ids it marked (not those another
    worker marked first)."""
    params = {"ids": list(message_ids), "now": now}
    rows = session.execute(_mark_processed_stmt(_is_postgresql(session)), params)
    return {row.Id for row in rows}


@cache
def _mark_processed_stmt(postgresql: bool) -> Executable:
    return (
        update(outbox_messages)
        .where(_id_among(postgresql), o.ProcessedAt.is_(None))
        .values(ProcessedAt=bindparam("now"), LockedUntil=None, LockedBy=None, NextRetryAt=None)
        .returning(o.Id)
    )


def mark_failed(
    session: Session,
    message_id: uuid.UUID,
    *,
    retry_count: int,
    error: str,
    error_type: str,
    error_summary: str,
    fingerprint: str,
    next_retry_at: datetime | None,
    dead_lettered_at: datetime | None,
) -> None:
    session.execute(
        update(outbox_messages)
        .where(o.Id == message_id, o.ProcessedAt.is_(None))
        .values(
            RetryCount=retry_count,
            Error=error,
            ErrorType=error_type[:255],
            ErrorSummary=error_summary[:ERROR_SUMMARY_MAX],
            Fingerprint=fingerprint,
            NextRetryAt=next_retry_at,
            DeadLetteredAt=dead_lettered_at,
            LockedUntil=None,
            LockedBy=None,
        )
    )


def backlog(db: Session | Connection, now: datetime) -> dict[str, Any]:
    """Counts by state and the age of the oldest message waiting to be handled
    (messages waiting for a scheduled retry are not counted as waiting)."""
    waiting = and_(pending_clause(), or_(o.NextRetryAt.is_(None), o.NextRetryAt <= now))
    oldest = db.execute(select(func.min(o.CreatedAt)).where(waiting)).scalar()
    pending = db.execute(
        select(func.count()).select_from(outbox_messages).where(pending_clause(), o.RetryCount == 0)
    ).scalar_one()
    retrying = db.execute(
        select(func.count()).select_from(outbox_messages).where(pending_clause(), o.RetryCount > 0)
    ).scalar_one()
    dead = db.execute(
        select(func.count())
        .select_from(outbox_messages)
        .where(o.DeadLetteredAt.is_not(None), o.ArchivedAt.is_(None))
    ).scalar_one()
    if oldest is not None and oldest.tzinfo is None:
        from datetime import UTC

        oldest = oldest.replace(tzinfo=UTC)
    return {
        "pending": pending,
        "retrying": retrying,
        "dead": dead,
        "oldest_pending_age_seconds": (now - oldest).total_seconds() if oldest else 0.0,
    }


def table_upkeep(conn: Connection) -> dict[str, float] | None:
    """PostgreSQL's own account of the outbox table: its live and dead row versions
    and when it was last vacuumed (by autovacuum or by hand; 0 if never). Every
    message is updated three or four times, and dead versions that autovacuum leaves
    behind slow the relay and the workers (migration 0007). ``None`` on SQLite,
    which keeps no such statistics."""
    if conn.dialect.name != "postgresql":
        return None
    row = conn.execute(
        text(
            "SELECT n_live_tup, n_dead_tup, "
            "coalesce(extract(epoch FROM greatest(last_vacuum, last_autovacuum)), 0) "
            "FROM pg_stat_user_tables WHERE relid = '\"OutboxMessages\"'::regclass"
        )
    ).one()
    return {
        "live_rows": float(row[0]),
        "dead_rows": float(row[1]),
        "last_vacuum_timestamp": float(row[2]),
    }
