"""Writing domain messages to the ``OutboxMessages`` table, inside the business
transaction (the relay and the dashboard read it)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.orm import Session

from webapp.adapters.tables import outbox_messages
from webapp.domain.messages import Message

#: PostgreSQL channel the relay LISTENs on (a wake-up only; the table is the truth)
NOTIFY_CHANNEL = "outbox_messages"


def outbox_row(
    message: Message, now: datetime, trace_context: str | None, max_retries: int
) -> dict[str, object]:
    return {
        "Id": uuid.uuid4(),
        "Type": message.type_name,
        "Data": json.dumps(message.to_dict(), separators=(",", ":")),
        "CreatedAt": now,
        "RetryCount": 0,
        "MaxRetryCount": max_retries,
        "TraceContext": trace_context,
        "EventId": getattr(message, "event_id", None),
    }


def write_outbox(
    session: Session,
    messages: Iterable[Message],
    now: datetime,
    trace_context: str | None = None,
    max_retries: int = 3,
) -> list[dict[str, object]]:
    """Insert one row per message in the session's transaction; returns the rows.

    On PostgreSQL the insert fires the ``TR_OutboxMessages_Notify`` trigger (see the
    migrations), whose NOTIFY is delivered only if the transaction commits: a
    rolled-back registration wakes nobody and leaves no row.
    """
    rows = [outbox_row(m, now, trace_context, max_retries) for m in messages]
    if rows:
        session.execute(_INSERT, rows)
    return rows


_INSERT = insert(outbox_messages)
