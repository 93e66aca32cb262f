"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29 19:38:06.215530
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "AuditLog",
        sa.Column("Id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("At", sa.DateTime(timezone=True), nullable=False),
        sa.Column("Actor", sa.String(length=254), nullable=False),
        sa.Column("Action", sa.String(length=100), nullable=False),
        sa.Column("Target", sa.Text(), nullable=True),
        sa.Column("Count", sa.Integer(), nullable=True),
        sa.Column("Outcome", sa.String(length=100), nullable=False),
        sa.Column("Reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("Id", name=op.f("PK_AuditLog")),
    )
    with op.batch_alter_table("AuditLog", schema=None) as batch_op:
        batch_op.create_index("IX_AuditLog_At", ["At"], unique=False)

    op.create_table(
        "Events",
        sa.Column("Id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("Title", sa.String(length=200), nullable=False),
        sa.Column("Description", sa.Text(), server_default="", nullable=False),
        sa.Column("Venue", sa.String(length=200), server_default="", nullable=False),
        sa.Column("StartDate", sa.DateTime(timezone=True), nullable=False),
        sa.Column("Capacity", sa.Integer(), nullable=False),
        sa.Column("ConfirmedCount", sa.Integer(), server_default="0", nullable=False),
        sa.Column("WaitlistCount", sa.Integer(), server_default="0", nullable=False),
        sa.Column("LastQueueKey", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "RegistrationOpen", sa.Boolean(), server_default=sa.text("(true)"), nullable=False
        ),
        sa.Column("CreatedAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("UpdatedAt", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('"Capacity" >= 0', name=op.f("CK_Events_capacity_not_negative")),
        sa.CheckConstraint(
            '"ConfirmedCount" <= "Capacity"', name=op.f("CK_Events_confirmed_within_capacity")
        ),
        sa.CheckConstraint('"ConfirmedCount" >= 0', name=op.f("CK_Events_confirmed_not_negative")),
        sa.CheckConstraint('"WaitlistCount" >= 0', name=op.f("CK_Events_waitlist_not_negative")),
        sa.PrimaryKeyConstraint("Id", name=op.f("PK_Events")),
    )
    with op.batch_alter_table("Events", schema=None) as batch_op:
        batch_op.create_index("IX_Events_StartDate", ["StartDate"], unique=False)

    op.create_table(
        "OutboxMessages",
        sa.Column("Id", sa.Uuid(), nullable=False),
        sa.Column("Type", sa.String(length=255), nullable=False),
        sa.Column("Data", sa.Text(), nullable=False),
        sa.Column("CreatedAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ProcessedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("Error", sa.Text(), nullable=True),
        sa.Column("RetryCount", sa.Integer(), server_default="0", nullable=False),
        sa.Column("MaxRetryCount", sa.Integer(), server_default="3", nullable=False),
        sa.Column("NextRetryAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("TraceContext", sa.Text(), nullable=True),
        sa.Column("ErrorType", sa.String(length=255), nullable=True),
        sa.Column("Fingerprint", sa.String(length=64), nullable=True),
        sa.Column("DeadLetteredAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ReplayCount", sa.Integer(), server_default="0", nullable=False),
        sa.Column("LockedUntil", sa.DateTime(timezone=True), nullable=True),
        sa.Column("LockedBy", sa.String(length=200), nullable=True),
        sa.Column("DispatchedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("EventId", sa.Integer(), nullable=True),
        sa.Column("ArchivedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ArchiveReason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("Id", name=op.f("PK_OutboxMessages")),
    )
    with op.batch_alter_table("OutboxMessages", schema=None) as batch_op:
        batch_op.create_index(
            "IX_OutboxMessages_DeadLetters",
            ["DeadLetteredAt"],
            unique=False,
            postgresql_where=sa.text('"DeadLetteredAt" IS NOT NULL AND "ArchivedAt" IS NULL'),
            sqlite_where=sa.text('"DeadLetteredAt" IS NOT NULL AND "ArchivedAt" IS NULL'),
        )
        batch_op.create_index("IX_OutboxMessages_ProcessedAt", ["ProcessedAt"], unique=False)
        batch_op.create_index(
            "IX_OutboxMessages_Unprocessed",
            ["CreatedAt"],
            unique=False,
            postgresql_where=sa.text('"ProcessedAt" IS NULL'),
            sqlite_where=sa.text('"ProcessedAt" IS NULL'),
        )

    op.create_table(
        "ProcessedMessages",
        sa.Column("MessageId", sa.Uuid(), nullable=False),
        sa.Column("Handler", sa.String(length=200), nullable=False),
        sa.Column("ProcessedAt", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("MessageId", "Handler", name=op.f("PK_ProcessedMessages")),
    )
    op.create_table(
        "StaffUsers",
        sa.Column("Id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("Email", sa.String(length=254), nullable=False),
        sa.Column("Name", sa.String(length=200), nullable=False),
        sa.Column("PasswordHash", sa.String(length=255), nullable=False),
        sa.Column("Role", sa.String(length=16), nullable=False),
        sa.Column("Active", sa.Boolean(), server_default=sa.text("(true)"), nullable=False),
        sa.Column("CreatedAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("LastLoginAt", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "\"Role\" IN ('viewer', 'operator')", name=op.f("CK_StaffUsers_role_known")
        ),
        sa.PrimaryKeyConstraint("Id", name=op.f("PK_StaffUsers")),
    )
    with op.batch_alter_table("StaffUsers", schema=None) as batch_op:
        batch_op.create_index("UX_StaffUsers_Email", ["Email"], unique=True)

    op.create_table(
        "Users",
        sa.Column("Id", sa.Uuid(), nullable=False),
        sa.Column("Name", sa.String(length=200), nullable=False),
        sa.Column("Email", sa.String(length=254), nullable=False),
        sa.Column("CreatedAt", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("Id", name=op.f("PK_Users")),
    )
    with op.batch_alter_table("Users", schema=None) as batch_op:
        batch_op.create_index("IX_Users_Email", ["Email"], unique=True)

    op.create_table(
        "EventRegistrations",
        sa.Column("Id", sa.Uuid(), nullable=False),
        sa.Column("EventId", sa.Integer(), nullable=False),
        sa.Column("UserId", sa.Uuid(), nullable=False),
        sa.Column(
            "Status",
            sa.String(length=16),
            nullable=False,
        ),
        sa.Column("PositionInQueue", sa.BigInteger(), nullable=True),
        sa.Column("IdempotencyKey", sa.String(length=64), nullable=True),
        sa.Column("CreatedAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("UpdatedAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ConfirmedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("CancelledAt", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "\"Status\" IN ('Confirmed', 'Waitlisted', 'Cancelled')",
            name=op.f("CK_EventRegistrations_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["EventId"],
            ["Events.Id"],
            name=op.f("FK_EventRegistrations_EventId_Events"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["UserId"], ["Users.Id"], name=op.f("FK_EventRegistrations_UserId_Users")
        ),
        sa.PrimaryKeyConstraint("Id", name=op.f("PK_EventRegistrations")),
    )
    with op.batch_alter_table("EventRegistrations", schema=None) as batch_op:
        batch_op.create_index(
            "IX_EventRegistrations_EventId_Status", ["EventId", "Status"], unique=False
        )
        batch_op.create_index(
            "IX_EventRegistrations_EventId_Waitlisted",
            ["EventId", "PositionInQueue"],
            unique=True,
            postgresql_where=sa.text("\"Status\" = 'Waitlisted'"),
            sqlite_where=sa.text("\"Status\" = 'Waitlisted'"),
        )
        batch_op.create_index("IX_EventRegistrations_UserId", ["UserId"], unique=False)
        batch_op.create_index(
            "UX_EventRegistrations_Active",
            ["EventId", "UserId"],
            unique=True,
            postgresql_where=sa.text("\"Status\" <> 'Cancelled'"),
            sqlite_where=sa.text("\"Status\" <> 'Cancelled'"),
        )
        batch_op.create_index(
            "UX_EventRegistrations_IdempotencyKey", ["IdempotencyKey"], unique=True
        )

    op.create_table(
        "EventStats",
        sa.Column("EventId", sa.Integer(), nullable=False),
        sa.Column("Registrations", sa.Integer(), server_default="0", nullable=False),
        sa.Column("Waitlisted", sa.Integer(), server_default="0", nullable=False),
        sa.Column("Cancellations", sa.Integer(), server_default="0", nullable=False),
        sa.Column("Promotions", sa.Integer(), server_default="0", nullable=False),
        sa.Column("UpdatedAt", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["EventId"],
            ["Events.Id"],
            name=op.f("FK_EventStats_EventId_Events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("EventId", name=op.f("PK_EventStats")),
    )
    op.create_table(
        "OutboxAttempts",
        sa.Column("Id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("MessageId", sa.Uuid(), nullable=False),
        sa.Column("AttemptedAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("Worker", sa.String(length=200), nullable=False),
        sa.Column("DurationMs", sa.Integer(), nullable=True),
        sa.Column("Succeeded", sa.Boolean(), nullable=False),
        sa.Column("ErrorType", sa.String(length=255), nullable=True),
        sa.Column("Error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["MessageId"],
            ["OutboxMessages.Id"],
            name=op.f("FK_OutboxAttempts_MessageId_OutboxMessages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("Id", name=op.f("PK_OutboxAttempts")),
    )
    with op.batch_alter_table("OutboxAttempts", schema=None) as batch_op:
        batch_op.create_index("IX_OutboxAttempts_MessageId", ["MessageId"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("OutboxAttempts", schema=None) as batch_op:
        batch_op.drop_index("IX_OutboxAttempts_MessageId")

    op.drop_table("OutboxAttempts")
    op.drop_table("EventStats")
    with op.batch_alter_table("EventRegistrations", schema=None) as batch_op:
        batch_op.drop_index("UX_EventRegistrations_IdempotencyKey")
        batch_op.drop_index(
            "UX_EventRegistrations_Active",
            postgresql_where=sa.text("\"Status\" <> 'Cancelled'"),
            sqlite_where=sa.text("\"Status\" <> 'Cancelled'"),
        )
        batch_op.drop_index("IX_EventRegistrations_UserId")
        batch_op.drop_index(
            "IX_EventRegistrations_EventId_Waitlisted",
            postgresql_where=sa.text("\"Status\" = 'Waitlisted'"),
            sqlite_where=sa.text("\"Status\" = 'Waitlisted'"),
        )
        batch_op.drop_index("IX_EventRegistrations_EventId_Status")

    op.drop_table("EventRegistrations")
    with op.batch_alter_table("Users", schema=None) as batch_op:
        batch_op.drop_index("IX_Users_Email")

    op.drop_table("Users")
    with op.batch_alter_table("StaffUsers", schema=None) as batch_op:
        batch_op.drop_index("UX_StaffUsers_Email")

    op.drop_table("StaffUsers")
    op.drop_table("ProcessedMessages")
    with op.batch_alter_table("OutboxMessages", schema=None) as batch_op:
        batch_op.drop_index(
            "IX_OutboxMessages_Unprocessed",
            postgresql_where=sa.text('"ProcessedAt" IS NULL'),
            sqlite_where=sa.text('"ProcessedAt" IS NULL'),
        )
        batch_op.drop_index("IX_OutboxMessages_ProcessedAt")
        batch_op.drop_index(
            "IX_OutboxMessages_DeadLetters",
            postgresql_where=sa.text('"DeadLetteredAt" IS NOT NULL AND "ArchivedAt" IS NULL'),
            sqlite_where=sa.text('"DeadLetteredAt" IS NOT NULL AND "ArchivedAt" IS NULL'),
        )

    op.drop_table("OutboxMessages")
    with op.batch_alter_table("Events", schema=None) as batch_op:
        batch_op.drop_index("IX_Events_StartDate")

    op.drop_table("Events")
    with op.batch_alter_table("AuditLog", schema=None) as batch_op:
        batch_op.drop_index("IX_AuditLog_At")

    op.drop_table("AuditLog")
