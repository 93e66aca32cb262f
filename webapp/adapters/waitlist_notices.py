"""The record of what the waitlist notices told each attendee (``WaitlistNotices``)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from webapp.adapters.tables import waitlist_notices

n = waitlist_notices.c

#: text, in the syntax PostgreSQL and SQLite share: SQLAlchemy does not cache a compiled
#: ``on_conflict_do_update()``
_CLAIM_NOTICE = text(
    'INSERT INTO "WaitlistNotices" ("RegistrationId", "Position", "NotifiedAt") '
    "VALUES (:registration_id, :position, :now) "
    'ON CONFLICT ("RegistrationId") DO UPDATE SET "Position" = excluded."Position", '
    '"NotifiedAt" = excluded."NotifiedAt" '
    'WHERE "WaitlistNotices"."Position" > :milestone '
    'RETURNING "RegistrationId"'
).bindparams(
    bindparam("registration_id", type_=n.RegistrationId.type),
    bindparam("position", type_=n.Position.type),
    bindparam("now", type_=n.NotifiedAt.type),
    bindparam("milestone", type_=n.Position.type),
)


def claim_notice(
    session: Session, registration_id: uuid.UUID, position: int, milestone: int, now: datetime
) -> bool:
    """Record that the attendee is told ``position`` (which reaches ``milestone``):
    True if this transaction recorded it, False if they were already told that
    milestone or a nearer one. A concurrent claim for the same person waits on the
    row until this transaction ends, then finds it told, or claims it after a
    rollback."""
    params = {
        "registration_id": registration_id,
        "position": position,
        "now": now,
        "milestone": milestone,
    }
    return session.execute(_CLAIM_NOTICE, params).first() is not None
