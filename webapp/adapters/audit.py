"""The audit log: who did what, to what, how many, with what outcome.

Rows are written through the caller's connection or session, so an audited action
and its audit row commit (or roll back) together.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from webapp.adapters.tables import audit_log


def record_audit(
    db: Session | Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    target: dict[str, Any],
    outcome: str,
    count: int | None = 1,
    reason: str | None = None,
) -> int:
    """Insert one audit row; returns its id."""
    result = db.execute(
        insert(audit_log)
        .values(
            At=at,
            Actor=actor,
            Action=action,
            Target=json.dumps(target, sort_keys=True, default=str),
            Count=count,
            Outcome=outcome,
            Reason=reason,
        )
        .returning(audit_log.c.Id)
    )
    return int(result.scalar_one())


def update_audit(db: Session | Connection, audit_id: int, *, count: int, outcome: str) -> None:
    """Bring a running action's row up to date (batched actions)."""
    db.execute(
        update(audit_log).where(audit_log.c.Id == audit_id).values(Count=count, Outcome=outcome)
    )
