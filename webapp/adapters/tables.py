"""The schema as SQLAlchemy Core tables (the migrations create it; tests compare).

Names follow the service's plan (``OutboxMessages``, ``IX_OutboxMessages_Unprocessed``);
the MetaData naming convention keeps the other constraint names stable on
PostgreSQL and SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy import Enum as SqlEnum

from webapp.domain.model import RegistrationStatus

_status_type = SqlEnum(
    RegistrationStatus,
    native_enum=False,
    create_constraint=False,
    length=16,
    values_callable=lambda statuses: [s.value for s in statuses],
    validate_strings=True,
)

metadata = MetaData(
    naming_convention={
        "ix": "IX_%(table_name)s_%(column_0_N_name)s",
        "uq": "UQ_%(table_name)s_%(column_0_N_name)s",
        "ck": "CK_%(table_name)s_%(constraint_name)s",
        "fk": "FK_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "PK_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


users = Table(
    "Users",
    metadata,
    Column("Id", Uuid, primary_key=True),
    Column("Name", String(200), nullable=False),
    #: stored trimmed and lower-cased: unique case-insensitively
    Column("Email", String(254), nullable=False),
    Column("CreatedAt", UtcDateTime, nullable=False),
    Index("IX_Users_Email", "Email", unique=True),
)

events = Table(
    "Events",
    metadata,
    Column("Id", Integer, primary_key=True, autoincrement=True),
    Column("Title", String(200), nullable=False),
    Column("Description", Text, nullable=False, server_default=""),
    Column("Venue", String(200), nullable=False, server_default=""),
    Column("StartDate", UtcDateTime, nullable=False),
    Column("Capacity", Integer, nullable=False),
    #: seats taken; the CHECK below is the overbooking backstop
    Column("ConfirmedCount", Integer, nullable=False, server_default="0"),
    Column("WaitlistCount", Integer, nullable=False, server_default="0"),
    #: last queue key handed out on this event's waitlist (monotonic)
    Column("LastQueueKey", BigInteger, nullable=False, server_default="0"),
    Column("RegistrationOpen", Boolean, nullable=False, server_default=text("true")),
    Column("CreatedAt", UtcDateTime, nullable=False),
    Column("UpdatedAt", UtcDateTime, nullable=False),
    CheckConstraint('"ConfirmedCount" <= "Capacity"', name="confirmed_within_capacity"),
    CheckConstraint('"ConfirmedCount" >= 0', name="confirmed_not_negative"),
    CheckConstraint('"WaitlistCount" >= 0', name="waitlist_not_negative"),
    CheckConstraint('"Capacity" >= 0', name="capacity_not_negative"),
    Index("IX_Events_StartDate", "StartDate"),
)

registrations = Table(
    "EventRegistrations",
    metadata,
    Column("Id", Uuid, primary_key=True),
    Column("EventId", Integer, ForeignKey("Events.Id", ondelete="CASCADE"), nullable=False),
    Column("UserId", Uuid, ForeignKey("Users.Id"), nullable=False),
    Column("Status", _status_type, nullable=False),
    #: stable waitlist queue key; the displayed position is computed when reading
    Column("PositionInQueue", BigInteger, nullable=True),
    #: token of the form that created it: a double submit finds the same row
    Column("IdempotencyKey", String(64), nullable=True),
    Column("CreatedAt", UtcDateTime, nullable=False),
    Column("UpdatedAt", UtcDateTime, nullable=False),
    Column("ConfirmedAt", UtcDateTime, nullable=True),
    Column("CancelledAt", UtcDateTime, nullable=True),
    CheckConstraint("\"Status\" IN ('Confirmed', 'Waitlisted', 'Cancelled')", name="status_known"),
    Index("IX_EventRegistrations_EventId_Status", "EventId", "Status"),
    Index(
        "IX_EventRegistrations_EventId_Waitlisted",
        "EventId",
        "PositionInQueue",
        unique=True,
        postgresql_where=text("\"Status\" = 'Waitlisted'"),
        sqlite_where=text("\"Status\" = 'Waitlisted'"),
    ),
    Index("IX_EventRegistrations_UserId", "UserId"),
    Index(
        "UX_EventRegistrations_Active",
        "EventId",
        "UserId",
        unique=True,
        postgresql_where=text("\"Status\" <> 'Cancelled'"),
        sqlite_where=text("\"Status\" <> 'Cancelled'"),
    ),
    Index("UX_EventRegistrations_IdempotencyKey", "IdempotencyKey", unique=True),
)

outbox_messages = Table(
    "OutboxMessages",
    metadata,
    Column("Id", Uuid, primary_key=True),
    Column("Type", String(255), nullable=False),
    #: the message as JSON text (ASCII); "C" collation on PostgreSQL, for a fast ILIKE
    Column("Data", Text().with_variant(Text(collation="C"), "postgresql"), nullable=False),
    Column("CreatedAt", UtcDateTime, nullable=False),
    Column("ProcessedAt", UtcDateTime, nullable=True),
    #: last error: type, message and traceback
    Column("Error", Text, nullable=True),
    Column("RetryCount", Integer, nullable=False, server_default="0"),
    Column("MaxRetryCount", Integer, nullable=False, server_default="3"),
    Column("NextRetryAt", UtcDateTime, nullable=True),
    # -- added for the relay, the workers and the operator dashboard ---------------
    #: W3C traceparent/tracestate of the request that wrote the message (JSON)
    Column("TraceContext", Text, nullable=True),
    #: exception class of the last failure, for filtering and grouping
    Column("ErrorType", String(255), nullable=True),
    #: type + error class + first application frame, for grouping dead letters
    Column("Fingerprint", String(64), nullable=True),
    #: ``module.Class: first line of the message`` of the last failure: what the
    #: dashboard lists and searches (the traceback in Error can be kilobytes; it is
    #: stored out of line on PostgreSQL, migration 0005)
    Column(
        "ErrorSummary",
        String(300).with_variant(String(300, collation="C"), "postgresql"),
        nullable=True,
    ),
    #: set when RetryCount reached MaxRetryCount: a dead letter, kept until an operator acts
    Column("DeadLetteredAt", UtcDateTime, nullable=True),
    Column("ReplayCount", Integer, nullable=False, server_default="0"),
    #: relay lease: the row is dispatched by LockedBy until LockedUntil
    Column("LockedUntil", UtcDateTime, nullable=True),
    Column("LockedBy", String(200), nullable=True),
    Column("DispatchedAt", UtcDateTime, nullable=True),
    #: event concerned, for the dashboard's filter
    Column("EventId", Integer, nullable=True),
    Column("ArchivedAt", UtcDateTime, nullable=True),
    Column("ArchiveReason", Text, nullable=True),
    Index(
        "IX_OutboxMessages_Unprocessed",
        "CreatedAt",
        postgresql_where=text('"ProcessedAt" IS NULL'),
        sqlite_where=text('"ProcessedAt" IS NULL'),
    ),
    Index(
        "IX_OutboxMessages_DeadLetters",
        "DeadLetteredAt",
        postgresql_where=text('"DeadLetteredAt" IS NOT NULL AND "ArchivedAt" IS NULL'),
        sqlite_where=text('"DeadLetteredAt" IS NOT NULL AND "ArchivedAt" IS NULL'),
    ),
    Index("IX_OutboxMessages_ProcessedAt", "ProcessedAt"),
    #: every dead letter, archived too: the overview's per-minute series (migration 0006)
    Index(
        "IX_OutboxMessages_DeadLetteredAt",
        "DeadLetteredAt",
        postgresql_where=text('"DeadLetteredAt" IS NOT NULL'),
        sqlite_where=text('"DeadLetteredAt" IS NOT NULL'),
    ),
    #: what the relay claims and the backlog gauges count: dead letters excluded, so
    #: 100,000 of them cost the relay nothing (migration 0004)
    Index(
        "IX_OutboxMessages_Pending",
        "CreatedAt",
        postgresql_where=text(
            '"ProcessedAt" IS NULL AND "DeadLetteredAt" IS NULL AND "ArchivedAt" IS NULL'
        ),
        sqlite_where=text(
            '"ProcessedAt" IS NULL AND "DeadLetteredAt" IS NULL AND "ArchivedAt" IS NULL'
        ),
    ),
)

outbox_attempts = Table(
    "OutboxAttempts",
    metadata,
    Column("Id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column(
        "MessageId",
        Uuid,
        ForeignKey("OutboxMessages.Id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("AttemptedAt", UtcDateTime, nullable=False),
    Column("Worker", String(200), nullable=False),
    Column("DurationMs", Integer, nullable=True),
    Column("Succeeded", Boolean, nullable=False),
    Column("ErrorType", String(255), nullable=True),
    Column("Error", Text, nullable=True),
    Index("IX_OutboxAttempts_MessageId", "MessageId"),
)

#: inbox: which handler already handled which message (idempotency)
processed_messages = Table(
    "ProcessedMessages",
    metadata,
    Column("MessageId", Uuid, primary_key=True),
    Column("Handler", String(200), primary_key=True),
    Column("ProcessedAt", UtcDateTime, nullable=False),
)

#: what the waitlist notices last told each waitlisted attendee (their position then):
#: a milestone is mailed once, whichever queue move reaches it first
waitlist_notices = Table(
    "WaitlistNotices",
    metadata,
    Column(
        "RegistrationId",
        Uuid,
        ForeignKey("EventRegistrations.Id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("Position", Integer, nullable=False),
    Column("NotifiedAt", UtcDateTime, nullable=False),
)

event_stats = Table(
    "EventStats",
    metadata,
    Column("EventId", Integer, ForeignKey("Events.Id", ondelete="CASCADE"), primary_key=True),
    Column("Registrations", Integer, nullable=False, server_default="0"),
    Column("Waitlisted", Integer, nullable=False, server_default="0"),
    Column("Cancellations", Integer, nullable=False, server_default="0"),
    Column("Promotions", Integer, nullable=False, server_default="0"),
    Column("UpdatedAt", UtcDateTime, nullable=False),
)

staff_users = Table(
    "StaffUsers",
    metadata,
    Column("Id", Integer, primary_key=True, autoincrement=True),
    Column("Email", String(254), nullable=False),
    Column("Name", String(200), nullable=False),
    Column("PasswordHash", String(255), nullable=False),
    #: 'viewer' sees, 'operator' acts
    Column("Role", String(16), nullable=False),
    Column("Active", Boolean, nullable=False, server_default=text("true")),
    Column("CreatedAt", UtcDateTime, nullable=False),
    Column("LastLoginAt", UtcDateTime, nullable=True),
    CheckConstraint("\"Role\" IN ('viewer', 'operator')", name="role_known"),
    Index("UX_StaffUsers_Email", "Email", unique=True),
)

audit_log = Table(
    "AuditLog",
    metadata,
    Column("Id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("At", UtcDateTime, nullable=False),
    Column("Actor", String(254), nullable=False),
    Column("Action", String(100), nullable=False),
    #: target or filter as JSON
    Column("Target", Text, nullable=True),
    Column("Count", Integer, nullable=True),
    Column("Outcome", String(100), nullable=False),
    Column("Reason", Text, nullable=True),
    Index("IX_AuditLog_At", "At"),
)

# -- operator dashboard indexes (migrations dash01 and 0005) -------------------------------
#: the live dead letters; the dashboard's queries repeat this predicate
_LIVE_DEAD_LETTERS = text('"DeadLetteredAt" IS NOT NULL AND "ArchivedAt" IS NULL')
for _name, _columns in (
    ("IX_OutboxMessages_DeadByType", ("Type", "DeadLetteredAt")),
    ("IX_OutboxMessages_DeadByErrorType", ("ErrorType", "DeadLetteredAt")),
    ("IX_OutboxMessages_DeadByFingerprint", ("Fingerprint", "DeadLetteredAt")),
    ("IX_OutboxMessages_DeadByEvent", ("EventId", "DeadLetteredAt")),
):
    Index(
        _name,
        *(outbox_messages.c[c] for c in _columns),
        postgresql_where=_LIVE_DEAD_LETTERS,
        sqlite_where=_LIVE_DEAD_LETTERS,
    )
#: the free-text search: the error summary and the payload, never the full traceback
for _name, _column in (
    ("IX_OutboxMessages_DeadErrorSummaryTrgm", "ErrorSummary"),
    ("IX_OutboxMessages_DeadDataTrgm", "Data"),
):
    Index(
        _name,
        outbox_messages.c[_column],
        postgresql_using="gin",
        postgresql_ops={_column: "gin_trgm_ops"},
        postgresql_where=_LIVE_DEAD_LETTERS,
    ).ddl_if(dialect="postgresql")
