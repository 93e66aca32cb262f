"""Read-side SQL of the operator dashboard: outbox state counts, throughput, backlog,
dead letters (filters, fingerprint groups, pages, detail) and the audit log.

Every dead-letter predicate starts with ``"DeadLetteredAt" IS NOT NULL AND
"ArchivedAt" IS NULL``, the exact predicate of the partial indexes created by the
``0002`` dashboard-indexes migration, so PostgreSQL can use them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Select,
    and_,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
)

from webapp.adapters.tables import audit_log, outbox_attempts, outbox_messages

om = outbox_messages.c

#: longest free-text search accepted (a longer one is a mistake, not a search)
TEXT_MAX = 200
NAME_MAX = 255


class FilterError(ValueError):
    """A dead-letter filter that cannot be understood; the message says why."""


@dataclass(frozen=True)
class DeadLetterFilter:
    """What the operator narrowed the dead-letter list down to (all optional)."""

    type: str | None = None
    error_type: str | None = None
    text: str | None = None
    since: date | None = None
    until: date | None = None
    event_id: int | None = None
    fingerprint: str | None = None

    @classmethod
    def from_args(cls, args: Any) -> DeadLetterFilter:
        """Parse query-string / form values; raises :class:`FilterError` on bad input."""

        def text_value(name: str, limit: int) -> str | None:
            value = (args.get(name) or "").strip()
            if len(value) > limit:
                raise FilterError(f"'{name}' is longer than {limit} characters.")
            return value or None

        def date_value(name: str) -> date | None:
            value = (args.get(name) or "").strip()
            if not value:
                return None
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise FilterError(f"'{name}' must be a date like 2026-01-31.") from None

        event_raw = (args.get("event_id") or "").strip()
        event_id: int | None = None
        if event_raw:
            if not event_raw.isdigit() or len(event_raw) > 9:
                raise FilterError("'event_id' must be a whole number.")
            event_id = int(event_raw)
        since, until = date_value("since"), date_value("until")
        if since and until and since > until:
            raise FilterError("'since' is after 'until'.")
        return cls(
            type=text_value("type", NAME_MAX),
            error_type=text_value("error_type", NAME_MAX),
            text=text_value("q", TEXT_MAX),
            since=since,
            until=until,
            event_id=event_id,
            fingerprint=text_value("fingerprint", 64),
        )

    def to_args(self) -> dict[str, str]:
        """The query-string form of this filter (inverse of :meth:`from_args`)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out["q" if f.name == "text" else f.name] = (
                value.isoformat() if isinstance(value, date) else str(value)
            )
        return out

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(data, default=str, sort_keys=True)

    @property
    def is_empty(self) -> bool:
        return not self.to_args()


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def dead_condition() -> ColumnElement[bool]:
    return and_(om.DeadLetteredAt.is_not(None), om.ArchivedAt.is_(None))


def dead_letter_conditions(
    flt: DeadLetterFilter, dead_before: datetime | None = None
) -> list[ColumnElement[bool]]:
    """WHERE clauses of the dead letters matching ``flt``."""
    conds: list[ColumnElement[bool]] = [dead_condition()]
    if flt.type:
        conds.append(om.Type == flt.type)
    if flt.error_type:
        conds.append(om.ErrorType == flt.error_type)
    if flt.fingerprint:
        conds.append(om.Fingerprint == flt.fingerprint)
    if flt.event_id is not None:
        conds.append(om.EventId == flt.event_id)
    if flt.since:
        conds.append(om.DeadLetteredAt >= datetime.combine(flt.since, time.min, tzinfo=UTC))
    if flt.until:
        end = datetime.combine(flt.until + timedelta(days=1), time.min, tzinfo=UTC)
        conds.append(om.DeadLetteredAt < end)
    if dead_before is not None:
        conds.append(om.DeadLetteredAt <= dead_before)
    if flt.text:
        # the error summary and the payload, not the traceback: a broad term would
        # otherwise read (detoast) kilobytes of traceback for every matching row
        pattern = _like_pattern(flt.text)
        conds.append(
            or_(om.ErrorSummary.ilike(pattern, escape="\\"), om.Data.ilike(pattern, escape="\\"))
        )
    return conds


def _matching(
    conn: Connection, flt: DeadLetterFilter, dead_before: datetime | None = None
) -> list[ColumnElement[bool]]:
    """:func:`dead_letter_conditions`, planned for this very search term: a term in
    every dead letter and a term in one need different plans, and psycopg prepares a
    statement run five times on a connection, whose generic plan would then serve
    every term alike (a trigram bitmap rechecking all 100,000 rows for a page of 50)."""
    if flt.text and conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
    return dead_letter_conditions(flt, dead_before)


# -- overview ------------------------------------------------------------------------------
def _pending_condition() -> ColumnElement[bool]:
    return and_(om.ProcessedAt.is_(None), om.DeadLetteredAt.is_(None), om.ArchivedAt.is_(None))


def outbox_counts(conn: Connection) -> dict[str, int]:
    """Pending (never failed), retrying (failed, in backoff) and dead (not archived).
    The backlog is counted over IX_OutboxMessages_Pending, the dead letters over
    their own partial index: neither walks the other's rows."""
    backlog = select(
        func.coalesce(func.sum(case((om.RetryCount == 0, 1), else_=0)), 0).label("pending"),
        func.coalesce(func.sum(case((om.RetryCount > 0, 1), else_=0)), 0).label("retrying"),
    ).where(_pending_condition())
    row = conn.execute(backlog).one()
    dead = conn.execute(select(func.count()).where(dead_condition())).scalar_one()
    return {"pending": int(row.pending), "retrying": int(row.retrying), "dead": int(dead)}


def oldest_pending_created_at(conn: Connection) -> datetime | None:
    value = conn.execute(select(func.min(om.CreatedAt)).where(_pending_condition())).scalar()
    return _as_utc(value)


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite aggregate results skip the column type
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _minute_bucket(conn: Connection, column: Any) -> ColumnElement[Any]:
    """Minutes since the epoch, as an integer, on either backend."""
    if conn.dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column) / 60), BigInteger)
    return cast(func.strftime("%s", column), Integer) / 60


def per_minute_statement(
    conn: Connection, column: Any, since: datetime, *extra: ColumnElement[bool]
) -> Select[Any]:
    """How many rows have ``column`` in each minute since ``since`` (minute, n)."""
    bucket = _minute_bucket(conn, column).label("minute")
    return (
        select(bucket, func.count().label("n"))
        .where(column >= since, *extra)
        .group_by(literal_column("minute"))
    )


def _per_minute(
    conn: Connection, column: Any, since: datetime, *extra: ColumnElement[bool]
) -> dict[int, int]:
    stmt = per_minute_statement(conn, column, since, *extra)
    return {int(r.minute): int(r.n) for r in conn.execute(stmt)}


@dataclass
class Throughput:
    """Per-minute series over the last ``minutes`` minutes, oldest first."""

    minute_starts: list[datetime]
    processed: list[int]
    backlog: list[int]  # pending + retrying at the end of each minute


def throughput(
    conn: Connection,
    now: datetime,
    minutes: int = 60,
    counts: dict[str, int] | None = None,
) -> Throughput:
    """Messages processed per minute and the backlog over the last ``minutes``.

    The backlog at the end of each minute is rebuilt backwards from the current
    backlog: going back one minute adds what was processed or dead-lettered in it
    and removes what was created in it (replays in the window are not visible in
    the table, so a replayed burst appears at its replay time as a step).
    """
    current_minute = int(now.timestamp()) // 60
    first_minute = current_minute - minutes + 1
    start = datetime.fromtimestamp(first_minute * 60, UTC)
    processed = _per_minute(conn, om.ProcessedAt, start)
    dead = _per_minute(conn, om.DeadLetteredAt, start)
    created = _per_minute(
        conn, om.CreatedAt, start, or_(om.ProcessedAt.is_(None), om.ProcessedAt >= start)
    )
    counts = counts or outbox_counts(conn)
    level = counts["pending"] + counts["retrying"]
    backlog_rev: list[int] = []
    for minute in range(current_minute, first_minute - 1, -1):
        backlog_rev.append(max(level, 0))
        level += processed.get(minute, 0) + dead.get(minute, 0) - created.get(minute, 0)
    minute_range = range(first_minute, current_minute + 1)
    return Throughput(
        minute_starts=[datetime.fromtimestamp(m * 60, UTC) for m in minute_range],
        processed=[processed.get(m, 0) for m in minute_range],
        backlog=list(reversed(backlog_rev)),
    )


# -- retries -------------------------------------------------------------------------------
def retrying_messages(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    """Messages in backoff: failed at least once, not yet dead, next attempt soonest first."""
    stmt = (
        select(
            om.Id,
            om.Type,
            om.RetryCount,
            om.MaxRetryCount,
            om.NextRetryAt,
            om.ErrorType,
            om.ErrorSummary,
            om.CreatedAt,
            om.EventId,
        )
        .where(_pending_condition(), om.RetryCount > 0)
        .order_by(om.NextRetryAt.asc(), om.CreatedAt.asc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(stmt)]


def _with_error_summary(row: dict[str, Any]) -> dict[str, Any]:
    row["ErrorSummary"] = error_summary(row.get("Error"))
    return row


def error_summary(error: str | None) -> str:
    """The last non-empty line of a traceback: ``ValueError: bad address`` (for the
    attempts, which keep no summary column)."""
    if not error:
        return ""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# -- dead letters --------------------------------------------------------------------------
_LIST_COLUMNS = (
    om.Id,
    om.Type,
    om.ErrorType,
    om.Fingerprint,
    om.DeadLetteredAt,
    om.CreatedAt,
    om.RetryCount,
    om.ReplayCount,
    om.EventId,
    om.ErrorSummary,
)


def dead_letter_page(
    conn: Connection, flt: DeadLetterFilter, offset: int, limit: int
) -> list[dict[str, Any]]:
    stmt = (
        select(*_LIST_COLUMNS)
        .where(*_matching(conn, flt))
        .order_by(om.DeadLetteredAt.desc(), om.Id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(stmt)]


def dead_letter_count(conn: Connection, flt: DeadLetterFilter, cap: int | None = None) -> int:
    """How many dead letters match; with ``cap`` stop counting at ``cap`` (cheap)."""
    inner = select(om.Id).where(*_matching(conn, flt))
    if cap is not None:
        inner = inner.limit(cap)
    return int(conn.execute(select(func.count()).select_from(inner.subquery())).scalar_one())


def dead_letter_groups(
    conn: Connection, flt: DeadLetterFilter, limit: int = 50
) -> list[dict[str, Any]]:
    """Groups by fingerprint (type + error class + first application frame), biggest first,
    each with a sample message's type, error class and error summary."""
    return dead_letter_summary(conn, flt, limit)[1]


def dead_letter_summary(
    conn: Connection, flt: DeadLetterFilter, limit: int = 50
) -> tuple[int, list[dict[str, Any]]]:
    """The exact number of matching dead letters and their ``limit`` biggest groups
    (:func:`dead_letter_groups`), in one pass over the matches: the total is summed
    over every group before the limit applies."""
    fp = func.coalesce(om.Fingerprint, "")
    stmt = (
        select(
            fp.label("Fingerprint"),
            func.count().label("Count"),
            func.max(om.DeadLetteredAt).label("LastAt"),
            func.sum(func.count()).over().label("Total"),
        )
        .where(*_matching(conn, flt))
        .group_by(fp)
        .order_by(func.count().desc(), fp)
        .limit(limit)
    )
    rows = conn.execute(stmt).all()
    total = int(rows[0].Total) if rows else 0
    groups = [{k: v for k, v in r._mapping.items() if k != "Total"} for r in rows]
    for group in groups:
        group["LastAt"] = _as_utc(group["LastAt"])
        sample_fp = (
            om.Fingerprint.is_(None)
            if not group["Fingerprint"]
            else om.Fingerprint == group["Fingerprint"]
        )
        sample = conn.execute(
            select(om.Id, om.Type, om.ErrorType, om.ErrorSummary)
            .where(dead_condition(), sample_fp)
            .order_by(om.DeadLetteredAt.desc())
            .limit(1)
        ).first()
        group["Type"] = sample.Type if sample else ""
        group["ErrorType"] = sample.ErrorType if sample else ""
        group["ErrorSummary"] = (sample.ErrorSummary or "") if sample else ""
    return total, groups


def facet_counts(conn: Connection, column_name: str, limit: int = 100) -> list[tuple[str, int]]:
    """Distinct values of ``Type`` or ``ErrorType`` among dead letters, for the filter form."""
    return facets(conn, limit)[column_name]


def facets(conn: Connection, limit: int = 100) -> dict[str, list[tuple[str, int]]]:
    """:func:`facet_counts` of ``Type`` and ``ErrorType`` from one pass over the dead
    letters (their combinations are few: message types x error classes)."""
    stmt = (
        select(om.Type, om.ErrorType, func.count())
        .where(dead_condition())
        .group_by(om.Type, om.ErrorType)
    )
    counts: dict[str, dict[str, int]] = {"Type": {}, "ErrorType": {}}
    for type_name, error_type, n in conn.execute(stmt):
        for name, value in (("Type", type_name), ("ErrorType", error_type)):
            if value is not None:
                counts[name][value] = counts[name].get(value, 0) + int(n)
    return {name: sorted(values.items())[:limit] for name, values in counts.items()}


def matching_dead_ids(
    conn: Connection,
    flt: DeadLetterFilter,
    limit: int,
    dead_before: datetime | None = None,
    lock: bool = False,
) -> list[uuid.UUID]:
    """Ids of up to ``limit`` matching dead letters, oldest first (for batched actions).

    With ``lock`` on PostgreSQL the rows are locked (``SKIP LOCKED``: a concurrent
    batch of another operator takes the others)."""
    stmt = (
        select(om.Id)
        .where(*_matching(conn, flt, dead_before))
        .order_by(om.DeadLetteredAt.asc(), om.Id.asc())
        .limit(limit)
    )
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return [row[0] for row in conn.execute(stmt)]


def message_detail(conn: Connection, message_id: uuid.UUID) -> dict[str, Any] | None:
    row = conn.execute(select(outbox_messages).where(om.Id == message_id)).first()
    if row is None:
        return None
    detail = dict(row._mapping)
    try:
        detail["PrettyData"] = json.dumps(json.loads(detail["Data"]), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        detail["PrettyData"] = detail["Data"]
    detail["ErrorSummary"] = detail["ErrorSummary"] or error_summary(detail["Error"])
    detail["State"] = message_state(detail)
    oa = outbox_attempts.c
    attempts = conn.execute(
        select(oa.AttemptedAt, oa.Worker, oa.DurationMs, oa.Succeeded, oa.ErrorType, oa.Error)
        .where(oa.MessageId == message_id)
        .order_by(oa.AttemptedAt.asc(), oa.Id.asc())
    )
    detail["Attempts"] = [_with_error_summary(dict(a._mapping)) for a in attempts]
    return detail


def message_state(row: dict[str, Any]) -> str:
    if row.get("ArchivedAt") is not None:
        return "archived"
    if row.get("ProcessedAt") is not None:
        return "processed"
    if row.get("DeadLetteredAt") is not None:
        return "dead"
    if row.get("RetryCount", 0) > 0:
        return "retrying"
    return "pending"


# -- audit log -----------------------------------------------------------------------------
def audit_entries(conn: Connection, offset: int = 0, limit: int = 50) -> list[dict[str, Any]]:
    a = audit_log.c
    stmt = select(audit_log).order_by(a.At.desc(), a.Id.desc()).offset(offset).limit(limit)
    return [dict(r._mapping) for r in conn.execute(stmt)]


def audit_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())
