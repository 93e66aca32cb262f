"""dead letters: a short, searchable error summary; tracebacks out of the heap

``ErrorSummary`` holds ``module.Class: first line of the message`` of the last failure
(the worker writes it beside ``Error``). The dashboard's free-text search looks at it
and at the payload, not at the full traceback, so the trigram index moves from
``Error`` to ``ErrorSummary``. Existing rows are backfilled from what ``Error``
already starts with (``Class: message``, as the worker writes it) and ``ErrorType``.

PostgreSQL only, measured with 100,000 dead letters and 2-4 KB tracebacks:

- ``Error`` is stored EXTERNAL (out of line, uncompressed): compressed tracebacks
  (~1 KB) stayed inside the heap rows and doubled the pages every dead-letter count,
  group and facet reads (146 MB -> 66 MB of heap). Rows rewritten here move out too.
- ``ErrorSummary`` and ``Data`` compare under the "C" collation: ILIKE folds ASCII
  case byte by byte instead of lower-casing every row through the locale (about
  twice as fast on a term matching every row). The payload is ASCII JSON anyway,
  and SQLite's LIKE folds ASCII only as well.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 23:00:00
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DEAD = '"DeadLetteredAt" IS NOT NULL AND "ArchivedAt" IS NULL'
SUMMARY_MAX = 300
BATCH = 1000


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("OutboxMessages", sa.Column("ErrorSummary", _summary_type(postgres)))
    if postgres:
        _alter_data_collation(sa.Text(collation="C"))
        op.execute('ALTER TABLE "OutboxMessages" ALTER COLUMN "Error" SET STORAGE EXTERNAL')
    _backfill(rewrite_error=postgres)
    if postgres:
        _create_trigram_index("IX_OutboxMessages_DeadErrorSummaryTrgm", "ErrorSummary")
        op.drop_index("IX_OutboxMessages_DeadErrorTrgm", table_name="OutboxMessages")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _create_trigram_index("IX_OutboxMessages_DeadErrorTrgm", "Error")
        op.drop_index("IX_OutboxMessages_DeadErrorSummaryTrgm", table_name="OutboxMessages")
        op.execute('ALTER TABLE "OutboxMessages" ALTER COLUMN "Error" SET STORAGE EXTENDED')
        _alter_data_collation(sa.Text())
    op.drop_column("OutboxMessages", "ErrorSummary")


def _summary_type(postgres: bool) -> sa.String:
    return sa.String(SUMMARY_MAX, collation="C" if postgres else None)


def _alter_data_collation(type_: sa.Text) -> None:
    """Rebuilds the payload's trigram index; the rows stay as they are."""
    op.alter_column(
        "OutboxMessages", "Data", type_=type_, existing_type=sa.Text(), existing_nullable=False
    )


def _create_trigram_index(name: str, column: str) -> None:
    op.create_index(
        name,
        "OutboxMessages",
        [column],
        postgresql_using="gin",
        postgresql_ops={column: "gin_trgm_ops"},
        postgresql_where=sa.text(DEAD),
    )


def summary(first_line: str | None, error_type: str | None) -> str | None:
    """``ErrorType: message`` from the first line of ``Error`` (``Class: message``);
    the class alone when there is no message."""
    message = ""
    if first_line and ": " in first_line:
        message = first_line.split(": ", 1)[1].strip()
    name = error_type
    for prefix in ("builtins.", "__main__."):
        if name and name.startswith(prefix):
            name = name[len(prefix) :]
    if not name:
        return first_line.strip()[:SUMMARY_MAX] if first_line and first_line.strip() else None
    return (f"{name}: {message}" if message else name)[:SUMMARY_MAX]


def _backfill(rewrite_error: bool) -> None:
    """In batches of :data:`BATCH` rows in ``Id`` order; only the first line of each
    traceback leaves the database. With ``rewrite_error`` the traceback is written
    anew, so it is stored the new way (out of line) rather than kept as it was."""
    conn = op.get_bind()
    om = sa.table(
        "OutboxMessages",
        sa.column("Id", sa.Uuid),
        sa.column("Error", sa.Text),
        sa.column("ErrorType", sa.String),
        sa.column("ErrorSummary", sa.String),
    )
    newline = sa.literal("\n")
    if conn.dialect.name == "postgresql":
        first_line = sa.func.split_part(om.c.Error, newline, 1)
    else:
        first_line = sa.func.substr(om.c.Error, 1, sa.func.instr(om.c.Error + newline, newline) - 1)
    values: dict[str, Any] = {"ErrorSummary": sa.bindparam("b_summary")}
    if rewrite_error:
        values["Error"] = om.c.Error + ""
    update = sa.update(om).where(om.c.Id == sa.bindparam("b_id")).values(values)
    last = None
    while True:
        stmt = (
            sa.select(om.c.Id, first_line.label("first_line"), om.c.ErrorType)
            .where(sa.or_(om.c.Error.is_not(None), om.c.ErrorType.is_not(None)))
            .order_by(om.c.Id)
            .limit(BATCH)
        )
        if last is not None:
            stmt = stmt.where(om.c.Id > last)
        rows = conn.execute(stmt).all()
        if not rows:
            return
        conn.execute(
            update,
            [{"b_id": r.Id, "b_summary": summary(r.first_line, r.ErrorType)} for r in rows],
        )
        last = rows[-1].Id
