"""Autovacuum keeps up with the outbox (PostgreSQL).

Every outbox message is written once and updated three or four times (claimed,
dispatched, taken over, processed), so the table collects dead row versions four
times as fast as it grows. With PostgreSQL's defaults autovacuum waits for dead rows
worth 20 % of the table: with a week of processed messages kept, hundreds of
thousands. Until then the dead versions fill the table's pages and indexes: fewer
updates fit on their row's page (HOT), and the relay's and workers' statements work
through more of them. Measured in the benchmark (on a server with autovacuum off): a
burst of 3,000 messages drained at 162 to 204 messages/s after the write scenarios
had left ~14,000 dead row versions, at 323 to 345 when the table had been vacuumed
before each scenario.

Vacuum after 1,000 dead rows plus 1 % of the table instead; analyze likewise, so
the planner's picture of the (small) backlog stays current. SQLite has no vacuum
thresholds: nothing to do there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 06:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: storage parameters of "OutboxMessages"
SETTINGS = {
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_analyze_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.02",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    pairs = ", ".join(f"{name} = {value}" for name, value in SETTINGS.items())
    op.execute(f'ALTER TABLE "OutboxMessages" SET ({pairs})')


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f'ALTER TABLE "OutboxMessages" RESET ({", ".join(SETTINGS)})')
