"""Wake the relays from the database: a statement-level trigger on OutboxMessages
issues NOTIFY after every insert (PostgreSQL only; delivered at commit, dropped on
rollback). The unit of work no longer sends its own pg_notify round trip.

Revision ID: 0003
Revises: dash01
Create Date: 2026-11-29 20:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "dash01"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION les_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('outbox_messages', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        'CREATE TRIGGER "TR_OutboxMessages_Notify" AFTER INSERT ON "OutboxMessages" '
        "FOR EACH STATEMENT EXECUTE FUNCTION les_outbox_notify()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute('DROP TRIGGER IF EXISTS "TR_OutboxMessages_Notify" ON "OutboxMessages"')
    op.execute("DROP FUNCTION IF EXISTS les_outbox_notify()")
