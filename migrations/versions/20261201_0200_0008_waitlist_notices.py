"""What the waitlist notices last told each waitlisted attendee.

A queue move mailed everyone it left within ``WAITLIST_NOTICE_MAX_POSITION`` places
of a seat, at every move: someone who climbed from 11th to the front got ten mails,
and each cancellation on a long waitlist cost ten. Now a notice goes out when a move
brings a person past a milestone (into those places, and to the head of the queue),
once per milestone: this table keeps the position each person was last told. A row
goes with its registration.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "WaitlistNotices",
        sa.Column("RegistrationId", sa.Uuid(), nullable=False),
        sa.Column("Position", sa.Integer(), nullable=False),
        sa.Column("NotifiedAt", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["RegistrationId"],
            ["EventRegistrations.Id"],
            name=op.f("FK_WaitlistNotices_RegistrationId_EventRegistrations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("RegistrationId", name=op.f("PK_WaitlistNotices")),
    )


def downgrade() -> None:
    op.drop_table("WaitlistNotices")
