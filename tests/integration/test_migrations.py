"""The schema comes only from migrations, on PostgreSQL and SQLite alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from webapp.adapters.migrate import downgrade, upgrade
from webapp.adapters.tables import metadata

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
