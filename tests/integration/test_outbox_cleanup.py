"""Cleanup of processed outbox messages: old ones go in bounded batches, with their
attempts and inbox rows; recent, pending and dead-lettered ones stay."""

from __future__ import annotations

import uuid
from datetime import timedelta

from flask import Flask
from sqlalchemy import func, insert, select

from webapp.adapters.tables import outbox_attempts, outbox_messages, processed_messages
from webapp.extensions import get_db
from webapp.services.outbox_maintenance import cleanup_processed
from webapp.services.unit_of_work import utcnow


def _message(conn: object, created_days_ago: float, **values: object) -> uuid.UUID:
    now = utcnow()
    message_id = uuid.uuid4()
    conn.execute(  # type: ignore[attr-defined]
        insert(outbox_messages).values(
            Id=message_id,
            Type="RegistrationCreated",
            Data="{}",
            CreatedAt=now - timedelta(days=created_days_ago),
            **{"RetryCount": 0, "MaxRetryCount": 3, **values},
        )
    )
    conn.execute(  # type: ignore[attr-defined]
        insert(outbox_attempts).values(
            MessageId=message_id, AttemptedAt=now, Worker="w", Succeeded=True
        )
    )
    conn.execute(  # type: ignore[attr-defined]
        insert(processed_messages).values(MessageId=message_id, Handler="h", ProcessedAt=now)
    )
    return message_id


def test_cleanup_deletes_only_old_processed_messages_in_batches(app: Flask) -> None:
    db = get_db(app)
    now = utcnow()
    with db.engine.begin() as conn:
        old = [_message(conn, 10, ProcessedAt=now - timedelta(days=9)) for _ in range(7)]
        recent = _message(conn, 2, ProcessedAt=now - timedelta(days=1))
        pending = _message(conn, 30)
        dead = _message(
            conn, 30, ProcessedAt=None, DeadLetteredAt=now - timedelta(days=20), RetryCount=3
        )
    assert cleanup_processed(db, days=7, batch_size=3) == 7
    with db.engine.connect() as conn:
        left = set(conn.execute(select(outbox_messages.c.Id)).scalars())
        attempts_left = set(conn.execute(select(outbox_attempts.c.MessageId)).scalars())
        inbox_left = conn.execute(select(func.count()).select_from(processed_messages)).scalar_one()
    assert left == {recent, pending, dead}
    assert attempts_left == {recent, pending, dead}
    assert inbox_left == 3
    assert not left & set(old)
    assert cleanup_processed(db, days=7) == 0
