"""A partial index over the live backlog only (not processed, not dead, not
archived): the relay's claim query, the oldest-pending age and the backlog counts
no longer walk past every dead letter.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 21:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PENDING = '"ProcessedAt" IS NULL AND "DeadLetteredAt" IS NULL AND "ArchivedAt" IS NULL'


def upgrade() -> None:
    op.create_index(
        "IX_OutboxMessages_Pending",
        "OutboxMessages",
        ["CreatedAt"],
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )


def downgrade() -> None:
    op.drop_index("IX_OutboxMessages_Pending", table_name="OutboxMessages")
