"""Non-critical handlers: they run in a worker, after the business transaction
committed, from the outbox (at least once; each is idempotent through the inbox).

Each handler gets the message and a :class:`HandlerContext` whose ``session`` is
the handler's own transaction (the worker commits it together with the inbox row,
see ``webapp.services.delivery``). A handler that sends several mails records each
recipient with ``first_time`` and commits after each send with ``checkpoint``, and
is registered with ``checkpoints=True``. A handler that only writes to the database
is registered with ``database_only=True``: its session is then the job's last
transaction, which marks its message processed.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Protocol

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from webapp.adapters import queries
from webapp.adapters import waitlist_notices as notices
from webapp.adapters.tables import event_stats
from webapp.domain import waitlist_notices
from webapp.domain.messages import (
    RegistrationCancelled,
    RegistrationCreated,
    RegistrationPromoted,
    WaitlistPositionChanged,
)
from webapp.services.messagebus import handles


class Mailer(Protocol):
    def send(self, to: str, template: str, context: dict[str, Any], message_key: str) -> None:
        """Render ``mail/<template>.txt|.html`` and send it; ``message_key`` makes the
        Message-ID deterministic, so a redelivered mail can be recognised."""


class HandlerContext(Protocol):
    session: Session
    mailer: Mailer
    #: id of the outbox message being handled
    message_id: str
    #: a waitlist notice goes to people a move brings this close to a seat (and to
    #: the head of the queue)
    waitlist_notice_max_position: int

    def status_url(self, registration_id: str) -> str: ...

    def first_time(self, key: str) -> bool:
        """Record ``key`` in the inbox (in ``session``); False if it was already there."""

    def forget(self, key: str) -> None:
        """Take back ``key``, recorded by ``first_time`` in this transaction."""

    def checkpoint(self) -> None:
        """Commit ``session`` so far (e.g. the inbox keys of the mails already sent):
        a later failure of the handler then keeps them, and the retry skips them."""


@handles(RegistrationCreated, asynchronous=True)
def send_confirmation_mail(message: RegistrationCreated, ctx: HandlerContext) -> None:
    """Confirmation mail: the seat, or the waitlist position, and the status link."""
    view = queries.registration_status(ctx.session, message.registration_id)
    if view is None:
        return
    ctx.mailer.send(
        view["email"],
        "confirmation",
        {
            "r": view,
            "status_url": ctx.status_url(message.registration_id),
            "notice_near": ctx.waitlist_notice_max_position,
        },
        message_key=f"{ctx.message_id}/confirmation",
    )


@handles(RegistrationPromoted, asynchronous=True)
def send_promotion_mail(message: RegistrationPromoted, ctx: HandlerContext) -> None:
    """Good news: a seat freed up and the attendee now has it."""
    view = queries.registration_status(ctx.session, message.registration_id)
    if view is None:
        return
    ctx.mailer.send(
        view["email"],
        "promotion",
        {"r": view, "status_url": ctx.status_url(message.registration_id)},
        message_key=f"{ctx.message_id}/promotion",
    )


@handles(WaitlistPositionChanged, asynchronous=True, checkpoints=True)
def notify_waitlist_positions(message: WaitlistPositionChanged, ctx: HandlerContext) -> None:
    """Fan-out of one queue change (done here, not in the request) to the people it
    brought past a milestone: within ``waitlist_notice_max_position`` places of a
    seat, and next in line (:mod:`webapp.domain.waitlist_notices`). Everyone sees
    their live position on the status page; a mail per move would send ten to
    someone climbing ten places. Each notice is recorded (what the person was told,
    so no other move announces that milestone again) and its recipient in the inbox
    (so a retry of this message mails nobody twice)."""
    from webapp.services.unit_of_work import utcnow

    marks = waitlist_notices.milestones(ctx.waitlist_notice_max_position)
    behind = queries.waitlist_behind(
        ctx.session, message.event_id, message.after_queue_key, max_position=marks[0]
    )
    for row in behind:
        milestone = waitlist_notices.notice_due(row["position"], row["last_told"], marks)
        if milestone is None:
            continue
        key = f"waitlist-notice/{row['registration_id']}"
        if not ctx.first_time(key):
            continue
        if not notices.claim_notice(
            ctx.session, row["registration_id"], row["position"], milestone, utcnow()
        ):
            ctx.forget(key)  # another move's fan-out announced it meanwhile
            continue
        ctx.mailer.send(
            row["email"],
            "waitlist_position",
            {"r": row, "status_url": ctx.status_url(str(row["registration_id"]))},
            message_key=f"{ctx.message_id}/waitlist/{row['registration_id']}",
        )
        ctx.checkpoint()


@handles(
    RegistrationCreated,
    RegistrationCancelled,
    RegistrationPromoted,
    asynchronous=True,
    database_only=True,
)
def count_popularity(message: Any, ctx: HandlerContext) -> None:
    """Business counters per event (registrations, waitlisted, cancellations, promotions):
    one upsert, committed with the handler's inbox row (in the transaction that marks
    the message processed, once its mails are sent)."""
    column = {
        "RegistrationCreated": "Registrations",
        "RegistrationCancelled": "Cancellations",
        "RegistrationPromoted": "Promotions",
    }[message.type_name]
    increments = {column: 1}
    if isinstance(message, RegistrationCreated) and message.status == "Waitlisted":
        increments["Waitlisted"] = 1
    _increment_stats(ctx.session, message.event_id, increments)


def _increment_stats(session: Session, event_id: int, increments: dict[str, int]) -> None:
    from webapp.services.unit_of_work import utcnow

    stmt = _increment_stmt(tuple(sorted(increments.items())))
    session.execute(stmt, {"event_id": event_id, "now": utcnow()})


@cache
def _increment_stmt(increments: tuple[tuple[str, int], ...]) -> Executable:
    """The upsert adding ``increments`` to an event's counters, in the syntax
    PostgreSQL and SQLite share; built once per kind of message, as text because
    SQLAlchemy never caches a compiled ``on_conflict_do_update()``."""
    columns = [name for name, _ in increments]
    unknown = [name for name in columns if name not in event_stats.c]
    if unknown:  # the names go into the SQL text: only the table's own columns
        raise ValueError(f"not a counter of EventStats: {unknown}")
    names = "".join(f', "{name}"' for name in columns)
    values = "".join(f", {int(step)}" for _, step in increments)
    added = "".join(f', "{name}" = "EventStats"."{name}" + excluded."{name}"' for name in columns)
    return text(
        f'INSERT INTO "EventStats" ("EventId", "UpdatedAt"{names}) '
        f"VALUES (:event_id, :now{values}) "
        f'ON CONFLICT ("EventId") DO UPDATE SET "UpdatedAt" = excluded."UpdatedAt"{added}'
    ).bindparams(
        bindparam("event_id", type_=event_stats.c.EventId.type),
        bindparam("now", type_=event_stats.c.UpdatedAt.type),
    )


def event_popularity(session: Session, limit: int = 10) -> list[dict[str, Any]]:
    """The most registered-for events, for the dashboard and business metrics."""
    rows = session.execute(
        select(event_stats).order_by(event_stats.c.Registrations.desc()).limit(limit)
    )
    return [dict(r._mapping) for r in rows]
