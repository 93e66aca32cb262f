"""The schema comes only from migrations, on PostgreSQL and SQLite alike."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, inspect, select, text

from tests.conftest import scratch_database
from webapp.adapters.db import normalize_url
from webapp.adapters.migrate import downgrade, upgrade
from webapp.adapters.tables import metadata, outbox_messages

EXPECTED_POSTGRES_INDEXES = {
    # name: (table, fragment the definition must contain)
    "IX_EventRegistrations_EventId_Status": ("EventRegistrations", '("EventId", "Status")'),
    "IX_EventRegistrations_EventId_Waitlisted": (
        "EventRegistrations",
        '("EventId", "PositionInQueue") WHERE (("Status")::text = \'Waitlisted\'::text)',
    ),
    "IX_EventRegistrations_UserId": ("EventRegistrations", '("UserId")'),
    "IX_Events_StartDate": ("Events", '("StartDate")'),
    "IX_Users_Email": ("Users", '("Email")'),
    "IX_OutboxMessages_Unprocessed": (
        "OutboxMessages",
        '("CreatedAt") WHERE ("ProcessedAt" IS NULL)',
    ),
}


@pytest.mark.postgres
def test_postgres_has_the_performance_indexes(pg_url: str) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT indexname, tablename, indexdef FROM pg_indexes WHERE schemaname='public'")
        ).all()
    engine.dispose()
    found = {r.indexname: (r.tablename, r.indexdef) for r in rows}
    for name, (table, fragment) in EXPECTED_POSTGRES_INDEXES.items():
        assert name in found, f"missing index {name}"
        assert found[name][0] == table
        assert fragment in found[name][1], found[name][1]


@pytest.mark.postgres
def test_postgres_outbox_has_exactly_the_planned_columns_and_defaults(pg_url: str) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    columns = {c["name"]: c for c in inspect(engine).get_columns("OutboxMessages")}
    engine.dispose()
    planned = [
        "Id", "Type", "Data", "CreatedAt", "ProcessedAt", "Error",
        "RetryCount", "MaxRetryCount", "NextRetryAt",
    ]  # fmt: skip
    assert set(planned) <= set(columns)
    assert str(columns["Id"]["type"]) == "UUID"
    assert columns["ProcessedAt"]["nullable"] and columns["Error"]["nullable"]
    assert columns["NextRetryAt"]["nullable"]
    assert columns["RetryCount"]["default"] == "0"
    assert columns["MaxRetryCount"]["default"] == "3"


@pytest.mark.postgres
def test_overbooking_check_constraint_exists(pg_url: str) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    checks = {c["name"]: c["sqltext"] for c in inspect(engine).get_check_constraints("Events")}
    engine.dispose()
    assert '"ConfirmedCount" <= "Capacity"' in checks["CK_Events_confirmed_within_capacity"]


def test_sqlite_migrates_up_and_down_and_matches_the_model(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    upgrade(url)
    engine = create_engine(url)
    inspector = inspect(engine)
    assert set(inspector.get_table_names()) - {"alembic_version"} == set(metadata.tables)
    index_names = {i["name"] for i in inspector.get_indexes("EventRegistrations")}
    assert {
        "IX_EventRegistrations_EventId_Status",
        "IX_EventRegistrations_EventId_Waitlisted",
        "IX_EventRegistrations_UserId",
        "UX_EventRegistrations_Active",
    } <= index_names
    engine.dispose()
    downgrade(url, "base")
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()


@pytest.mark.postgres
def test_migrations_match_the_table_definitions(pg_url: str) -> None:
    """No drift: autogenerate finds nothing to change against the migrated database."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


# -- 0005: ErrorSummary, backfilled from what the worker wrote before it existed ---------
FAILED_BEFORE_0005 = {
    # Error as webapp.services.delivery wrote it: "Class: message", blank line, traceback
    "smtp": (
        "SMTPDataError: (550, b'mailbox unavailable')\n\nTraceback (most recent call last):\n"
        '  File "/app/webapp/adapters/mail.py", line 107, in _send_smtp\n'
        "smtplib.SMTPDataError: (550, b'mailbox unavailable')\n",
        "smtplib.SMTPDataError",
    ),
    "builtin": ("KeyError: 'email'\n\nTraceback (most recent call last):\n", "builtins.KeyError"),
    "no_message": ("Traceback (most recent call last):\n  ...\n", "TimeoutError"),
    "pending": (None, None),
    # 3 KB: PostgreSQL kept it compressed inside the row before 0005
    "long": (
        "OSError: disk full\n\nTraceback (most recent call last):\n"
        + '  File "/app/webapp/adapters/mail.py", line 150, in _write_mailbox\n' * 40,
        "builtins.OSError",
    ),
}
SUMMARIES_AFTER_0005 = {
    "smtp": "smtplib.SMTPDataError: (550, b'mailbox unavailable')",
    "builtin": "KeyError: 'email'",
    "no_message": "TimeoutError",
    "pending": None,
    "long": "OSError: disk full",
}


def _insert_failed_messages(url: str) -> dict[str, uuid.UUID]:
    """Outbox rows of a database at revision 0004 (no ErrorSummary column yet)."""
    ids = {name: uuid.uuid4() for name in FAILED_BEFORE_0005}
    now = datetime.now(UTC)
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        for name, (error, error_type) in FAILED_BEFORE_0005.items():
            conn.execute(
                insert(outbox_messages).values(
                    Id=ids[name],
                    Type="RegistrationCreated",
                    Data="{}",
                    CreatedAt=now,
                    Error=error,
                    ErrorType=error_type,
                    DeadLetteredAt=now if error else None,
                )
            )
    engine.dispose()
    return ids


def _summaries(url: str, ids: dict[str, uuid.UUID]) -> dict[str, str | None]:
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        result = conn.execute(select(outbox_messages.c.Id, outbox_messages.c.ErrorSummary))
        rows = {r.Id: r.ErrorSummary for r in result}
    engine.dispose()
    return {name: rows[i] for name, i in ids.items()}


def test_sqlite_0005_backfills_the_error_summary_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    upgrade(url, "0004")
    ids = _insert_failed_messages(url)
    upgrade(url)
    assert _summaries(url, ids) == SUMMARIES_AFTER_0005
    downgrade(url, "0004")
    engine = create_engine(url)
    assert "ErrorSummary" not in {c["name"] for c in inspect(engine).get_columns("OutboxMessages")}
    engine.dispose()


@pytest.mark.postgres
def test_postgres_0005_backfills_moves_the_search_index_and_downgrades(
    pg_server_url: str,
) -> None:
    with scratch_database(pg_server_url, "0005") as url:
        upgrade(url, "0004")
        ids = _insert_failed_messages(url)
        stored, length = _stored_size(url, ids["long"])
        assert stored < length / 2  # compressed, in the row
        upgrade(url)
        assert _summaries(url, ids) == SUMMARIES_AFTER_0005
        stored, length = _stored_size(url, ids["long"])
        assert stored >= length  # rewritten: out of line, uncompressed
        after = _outbox_storage(url)
        assert after["trigram_indexes"] == {
            "IX_OutboxMessages_DeadErrorSummaryTrgm",
            "IX_OutboxMessages_DeadDataTrgm",
        }
        # tracebacks out of line; ILIKE on the summary and payload under "C"
        assert after["columns"] == {"Data": ("x", "C"), "Error": ("e", "default")} | {
            "ErrorSummary": ("x", "C")
        }
        downgrade(url, "0004")
        before = _outbox_storage(url)
        assert before["trigram_indexes"] == {
            "IX_OutboxMessages_DeadErrorTrgm",
            "IX_OutboxMessages_DeadDataTrgm",
        }
        assert before["columns"] == {"Data": ("x", "default"), "Error": ("x", "default")}
        upgrade(url)
        assert _summaries(url, ids) == SUMMARIES_AFTER_0005


# -- 0007: autovacuum keeps up with the outbox's churn -------------------------------------
def _outbox_reloptions(url: str) -> set[str]:
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        options = conn.execute(
            text("SELECT reloptions FROM pg_class WHERE oid = '\"OutboxMessages\"'::regclass")
        ).scalar_one()
    engine.dispose()
    return set(options or [])


@pytest.mark.postgres
def test_postgres_0007_vacuums_the_outbox_after_a_thousand_dead_rows(pg_server_url: str) -> None:
    """PostgreSQL's default (dead rows worth 20 % of the table) would let a week of
    processed messages pile up hundreds of thousands of dead row versions."""
    with scratch_database(pg_server_url, "0007") as url:
        upgrade(url)
        assert _outbox_reloptions(url) == {
            "autovacuum_vacuum_threshold=1000",
            "autovacuum_vacuum_scale_factor=0.01",
            "autovacuum_analyze_threshold=1000",
            "autovacuum_analyze_scale_factor=0.02",
        }
        downgrade(url, "0006")
        assert _outbox_reloptions(url) == set()
        upgrade(url)
        assert len(_outbox_reloptions(url)) == 4


def _stored_size(url: str, message_id: uuid.UUID) -> tuple[int, int]:
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        row = conn.execute(
            text(
                'SELECT pg_column_size("Error") AS stored, octet_length("Error") AS length '
                'FROM "OutboxMessages" WHERE "Id" = :id'
            ),
            {"id": message_id},
        ).one()
    engine.dispose()
    return row.stored, row.length


def _outbox_storage(url: str) -> dict[str, Any]:
    """Trigram indexes, and storage / collation of the text columns that matter."""
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        indexes = conn.execute(
            text(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'OutboxMessages' "
                "AND indexdef LIKE '%gin_trgm_ops%'"
            )
        ).scalars()
        columns = conn.execute(
            text(
                "SELECT a.attname, a.attstorage, c.collname FROM pg_attribute a "
                "LEFT JOIN pg_collation c ON c.oid = a.attcollation "
                "WHERE a.attrelid = '\"OutboxMessages\"'::regclass "
                "AND a.attname IN ('Data', 'Error', 'ErrorSummary') AND NOT a.attisdropped"
            )
        ).all()
        result = {
            "trigram_indexes": set(indexes),
            "columns": {r.attname: (r.attstorage, r.collname) for r in columns},
        }
    engine.dispose()
    return result
