"""Operator actions on failed outbox messages: replay, archive (discard), retry now.

Every action runs in bounded batches, each batch in ONE transaction that changes the
messages and updates the action's ``AuditLog`` row together. So an interrupted
action (crash, lost connection, deploy) leaves every message either still dead or
re-queued, never neither, and the audit row says exactly how many were changed.

Replaying a dead letter resets its retry budget (``RetryCount=0``, ``NextRetryAt``
and ``DeadLetteredAt`` cleared, relay lease dropped) and counts the replay
(``ReplayCount+1``). The last error stays on the row and in ``OutboxAttempts``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from webapp.adapters.audit import record_audit, update_audit
from webapp.adapters.dashboard_queries import (
    DeadLetterFilter,
    dead_condition,
    matching_dead_ids,
)
from webapp.adapters.outbox import NOTIFY_CHANNEL
from webapp.adapters.tables import outbox_messages
from webapp.observability.metrics import REPLAYS
from webapp.services.unit_of_work import UnitOfWork, utcnow

log = logging.getLogger(__name__)
om = outbox_messages.c

#: messages changed per transaction: short locks, bounded loss-free progress
BATCH_SIZE = 500
REASON_MAX = 500
IDS_MAX = 1000

UowFactory = Callable[[], UnitOfWork]
#: test/fault hook, called inside each batch's transaction after the change
BatchHook = Callable[[int, list[uuid.UUID]], None]


class ActionRefused(ValueError):
    """The action cannot run as asked (bad reason, nothing selected...)."""


@dataclass(frozen=True)
class ActionResult:
    action: str
    count: int
    outcome: str
    audit_id: int


def replay_messages(
    uow_factory: UowFactory,
    ids: Sequence[uuid.UUID | str],
    actor: str,
    batch_size: int = BATCH_SIZE,
    on_batch: BatchHook | None = None,
) -> ActionResult:
    """Replay the given dead letters (ids that are not dead letters are skipped)."""
    message_ids = _parse_ids(ids)
    return _run(
        uow_factory,
        action="replay",
        actor=actor,
        target={"ids": [str(i) for i in message_ids]},
        reason=None,
        batches=_id_batches(message_ids, batch_size),
        apply=_replay,
        on_batch=on_batch,
        requested=len(message_ids),
    )


def replay_matching(
    uow_factory: UowFactory,
    flt: DeadLetterFilter,
    actor: str,
    batch_size: int = BATCH_SIZE,
    on_batch: BatchHook | None = None,
) -> ActionResult:
    """Replay every dead letter matching ``flt`` at the time the action starts.

    Messages dead-lettered after the start (for example a replayed one failing again)
    are left for the operator to look at: the action always ends."""
    started = utcnow()
    return _run(
        uow_factory,
        action="replay_filter",
        actor=actor,
        target={"filter": json.loads(flt.to_json())},
        reason=None,
        batches=_filter_batches(flt, started, batch_size),
        apply=_replay,
        on_batch=on_batch,
    )


def archive_messages(
    uow_factory: UowFactory,
    ids: Sequence[uuid.UUID | str],
    actor: str,
    reason: str,
    batch_size: int = BATCH_SIZE,
) -> ActionResult:
    """Archive (discard) the given dead letters with the operator's reason."""
    message_ids = _parse_ids(ids)
    reason = _check_reason(reason)
    return _run(
        uow_factory,
        action="archive",
        actor=actor,
        target={"ids": [str(i) for i in message_ids]},
        reason=reason,
        batches=_id_batches(message_ids, batch_size),
        apply=_archiver(reason),
        requested=len(message_ids),
    )


def archive_matching(
    uow_factory: UowFactory,
    flt: DeadLetterFilter,
    actor: str,
    reason: str,
    batch_size: int = BATCH_SIZE,
) -> ActionResult:
    """Archive every dead letter matching ``flt`` (as of the start of the action)."""
    reason = _check_reason(reason)
    return _run(
        uow_factory,
        action="archive_filter",
        actor=actor,
        target={"filter": json.loads(flt.to_json())},
        reason=reason,
        batches=_filter_batches(flt, utcnow(), batch_size),
        apply=_archiver(reason),
    )


def retry_now(uow_factory: UowFactory, ids: Sequence[uuid.UUID | str], actor: str) -> ActionResult:
    """Make messages waiting in backoff due immediately (their retry count is kept)."""
    message_ids = _parse_ids(ids)

    def apply(session: Session, batch: list[uuid.UUID], now: datetime) -> int:
        result = session.execute(
            update(outbox_messages)
            .where(
                om.Id.in_(batch),
                om.ProcessedAt.is_(None),
                om.DeadLetteredAt.is_(None),
                om.ArchivedAt.is_(None),
                om.RetryCount > 0,
                om.NextRetryAt > now,
            )
            .values(NextRetryAt=now)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    return _run(
        uow_factory,
        action="retry_now",
        actor=actor,
        target={"ids": [str(i) for i in message_ids]},
        reason=None,
        batches=_id_batches(message_ids, BATCH_SIZE),
        apply=apply,
        requested=len(message_ids),
        notify=True,
    )


# -- internals -----------------------------------------------------------------------------
Apply = Callable[[Session, list[uuid.UUID], datetime], int]
#: yields, inside a batch's transaction, the ids that batch should act on ([] = done)
BatchSource = Callable[[Session], list[uuid.UUID] | None]


def _parse_ids(ids: Sequence[uuid.UUID | str]) -> list[uuid.UUID]:
    parsed: list[uuid.UUID] = []
    for value in ids:
        try:
            parsed.append(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
        except ValueError:
            raise ActionRefused(f"'{value}' is not a message id.") from None
    unique = list(dict.fromkeys(parsed))
    if not unique:
        raise ActionRefused("Select at least one message.")
    if len(unique) > IDS_MAX:
        raise ActionRefused(f"Select at most {IDS_MAX} messages, or act on the filter instead.")
    return unique


def _check_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ActionRefused("Give a reason for archiving.")
    if len(reason) > REASON_MAX:
        raise ActionRefused(f"The reason is longer than {REASON_MAX} characters.")
    return reason


def _id_batches(ids: list[uuid.UUID], batch_size: int) -> Iterator[BatchSource]:
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        yield lambda session, chunk=chunk: chunk  # type: ignore[misc]


def _filter_batches(
    flt: DeadLetterFilter, started: datetime, batch_size: int
) -> Iterator[BatchSource]:
    while True:
        yield (
            lambda session: (
                matching_dead_ids(
                    session.connection(), flt, batch_size, dead_before=started, lock=True
                )
                or None
            )
        )


def _replay(session: Session, batch: list[uuid.UUID], now: datetime) -> int:
    result = session.execute(
        update(outbox_messages)
        .where(om.Id.in_(batch), om.ProcessedAt.is_(None), dead_condition())
        .values(
            RetryCount=0,
            NextRetryAt=None,
            DeadLetteredAt=None,
            ReplayCount=om.ReplayCount + 1,
            LockedUntil=None,
            LockedBy=None,
            DispatchedAt=None,
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _archiver(reason: str) -> Apply:
    def apply(session: Session, batch: list[uuid.UUID], now: datetime) -> int:
        result = session.execute(
            update(outbox_messages)
            .where(om.Id.in_(batch), dead_condition())
            .values(ArchivedAt=now, ArchiveReason=reason)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    return apply


def _run(
    uow_factory: UowFactory,
    *,
    action: str,
    actor: str,
    target: dict[str, object],
    reason: str | None,
    batches: Iterator[BatchSource],
    apply: Apply,
    on_batch: BatchHook | None = None,
    requested: int | None = None,
    notify: bool | None = None,
) -> ActionResult:
    """Run ``apply`` batch after batch; each batch commits with its audit-row update."""
    wakes_relay = action.startswith("replay") if notify is None else notify
    audit_id: int | None = None
    total = 0
    number = 0
    outcome = "nothing matched"
    try:
        for source in batches:
            number += 1
            with uow_factory() as uow:
                session = uow.session
                ids = source(session)
                changed = apply(session, ids, uow.now) if ids else 0
                row_id = _write_audit(
                    session,
                    audit_id,
                    uow.now,
                    actor,
                    action,
                    target,
                    total + changed,
                    "in progress",
                    reason,
                )
                if changed and wakes_relay and session.get_bind().dialect.name == "postgresql":
                    session.execute(text("SELECT pg_notify(:c, '')"), {"c": NOTIFY_CHANNEL})
                if on_batch is not None:
                    on_batch(number, ids or [])
                uow.commit()
            # only now is this batch (and the audit row) durable
            audit_id, total = row_id, total + changed
            if changed and action.startswith("replay"):
                REPLAYS.labels(actor).inc(changed)
            if not ids or (requested is None and changed == 0):
                break  # a filter with nothing left (or nothing changeable) is done
        outcome = _outcome(total, requested)
        with uow_factory() as uow:
            audit_id = _write_audit(
                uow.session, audit_id, uow.now, actor, action, target, total, outcome, reason
            )
            uow.commit()
    except BaseException:
        log.exception("%s by %s interrupted after %d messages", action, actor, total)
        _mark_interrupted(uow_factory, audit_id, actor, action, target, total, reason)
        raise
    log.info("%s by %s: %d messages (%s)", action, actor, total, outcome)
    return ActionResult(action=action, count=total, outcome=outcome, audit_id=audit_id)


def _outcome(total: int, requested: int | None) -> str:
    if total == 0:
        return "nothing matched"
    if requested is not None and total < requested:
        return f"done: {total} of {requested} selected (others no longer eligible)"
    return "done"


def _write_audit(
    session: Session,
    audit_id: int | None,
    now: datetime,
    actor: str,
    action: str,
    target: dict[str, object],
    count: int,
    outcome: str,
    reason: str | None,
) -> int:
    """The action's audit row: written with its first batch, updated by later ones."""
    if audit_id is None:
        return record_audit(
            session,
            at=now,
            actor=actor,
            action=action,
            target=target,
            count=count,
            outcome=outcome,
            reason=reason,
        )
    update_audit(session, audit_id, count=count, outcome=outcome)
    return audit_id


def _mark_interrupted(
    uow_factory: UowFactory,
    audit_id: int | None,
    actor: str,
    action: str,
    target: dict[str, object],
    total: int,
    reason: str | None,
) -> None:
    """Best effort: the committed batches are already counted in the audit row."""
    try:
        with uow_factory() as uow:
            _write_audit(
                uow.session,
                audit_id,
                uow.now,
                actor,
                action,
                target,
                total,
                f"interrupted after {total}",
                reason,
            )
            uow.commit()
    except Exception:
        log.exception("could not record the interruption of %s by %s", action, actor)
