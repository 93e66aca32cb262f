"""dashboard indexes: dead-letter filters, fingerprint groups, free-text search

Partial indexes over the live dead letters (the predicate the dashboard's queries
repeat), so the list, its filters and the group counts stay fast with 100,000 dead
letters. On PostgreSQL the free-text search over Error and Data uses pg_trgm GIN
indexes (pg_trgm is a trusted extension: the database owner may create it).

Revision ID: dash01
Revises: 0001
Create Date: 2026-11-29 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "dash01"
down_revision = "0001"
branch_labels = None
depends_on = None

DEAD = '"DeadLetteredAt" IS NOT NULL AND "ArchivedAt" IS NULL'

BTREE = {
    "IX_OutboxMessages_DeadByType": ["Type", "DeadLetteredAt"],
    "IX_OutboxMessages_DeadByErrorType": ["ErrorType", "DeadLetteredAt"],
    "IX_OutboxMessages_DeadByFingerprint": ["Fingerprint", "DeadLetteredAt"],
    "IX_OutboxMessages_DeadByEvent": ["EventId", "DeadLetteredAt"],
}
TRIGRAM = {
    "IX_OutboxMessages_DeadErrorTrgm": "Error",
    "IX_OutboxMessages_DeadDataTrgm": "Data",
}


def upgrade() -> None:
    for name, columns in BTREE.items():
        op.create_index(
            name,
            "OutboxMessages",
            columns,
            postgresql_where=sa.text(DEAD),
            sqlite_where=sa.text(DEAD),
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, column in TRIGRAM.items():
            op.create_index(
                name,
                "OutboxMessages",
                [column],
                postgresql_using="gin",
                postgresql_ops={column: "gin_trgm_ops"},
                postgresql_where=sa.text(DEAD),
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in TRIGRAM:
            op.drop_index(name, table_name="OutboxMessages")
    for name in BTREE:
        op.drop_index(name, table_name="OutboxMessages")
