"""An index over every dead-lettered message, archived ones included: the operator
overview's "dead-lettered per minute" series (which rebuilds the backlog, so an
archived dead letter still counts in the minute it died) read the whole outbox
table, and grew with every processed message.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DEAD = '"DeadLetteredAt" IS NOT NULL'


def upgrade() -> None:
    op.create_index(
        "IX_OutboxMessages_DeadLetteredAt",
        "OutboxMessages",
        ["DeadLetteredAt"],
        postgresql_where=sa.text(DEAD),
        sqlite_where=sa.text(DEAD),
    )


def downgrade() -> None:
    op.drop_index("IX_OutboxMessages_DeadLetteredAt", table_name="OutboxMessages")
