"""Housekeeping of the outbox: processed messages are deleted after
``OUTBOX_CLEANUP_DAYS`` days, in bounded batches (short transactions, no long
locks). Dead letters and unprocessed messages are never deleted automatically."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from webapp.adapters.tables import outbox_attempts, outbox_messages, processed_messages
from webapp.services.unit_of_work import utcnow

if TYPE_CHECKING:
    from webapp.extensions import Database

log = logging.getLogger(__name__)
o = outbox_messages.c

BATCH_SIZE = 500
#: how often the worker pool schedules the cleanup job
CLEANUP_INTERVAL_SECONDS = 3600


def cleanup_processed(
    db: Database,
    days: int,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    max_batches: int = 1000,
) -> int:
    """Delete messages processed more than ``days`` ago, with their attempts and
    inbox rows, ``batch_size`` per transaction. Returns how many were deleted."""
    cutoff = (now or utcnow()) - timedelta(days=days)
    total = 0
    for _ in range(max_batches):
        with db.write_sessions() as session, session.begin():
            ids = list(
                session.execute(
                    select(o.Id)
                    .where(
                        o.ProcessedAt.is_not(None),
                        o.ProcessedAt < cutoff,
                        o.DeadLetteredAt.is_(None),
                    )
                    .order_by(o.ProcessedAt)
                    .limit(batch_size)
                ).scalars()
            )
            if not ids:
                break
            session.execute(delete(outbox_attempts).where(outbox_attempts.c.MessageId.in_(ids)))
            session.execute(
                delete(processed_messages).where(processed_messages.c.MessageId.in_(ids))
            )
            session.execute(delete(outbox_messages).where(o.Id.in_(ids)))
        total += len(ids)
        if len(ids) < batch_size:
            break
    if total:
        log.info("outbox cleanup deleted %d processed messages older than %d days", total, days)
    return total
