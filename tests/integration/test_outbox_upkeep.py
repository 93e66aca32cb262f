"""The outbox table's upkeep on /metrics: PostgreSQL's count of its dead row
versions (every message is updated several times) and when it was last vacuumed,
for the "Outbox & workers" dashboard and the LesOutboxNotVacuumed alert."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from tests.conftest import make_app, scratch_database
from tests.integration.observability_processes import samples
from tests.integration.outbox_support import wait_until
from webapp.adapters import outbox_relay
from webapp.adapters.db import normalize_url
from webapp.adapters.migrate import upgrade
from webapp.extensions import get_db
from webapp.services import registrations
from webapp.services.events import EventDetails, create_event
from webapp.services.unit_of_work import utcnow


def _upkeep(client: FlaskClient) -> dict[str, float]:
    """``live`` / ``dead`` row versions and ``last_vacuum``, as a scrape shows them."""
    exposition = client.get("/metrics").get_data(as_text=True)
    return {
        labels.get("version", "last_vacuum"): value
        for name in ("les_outbox_table_rows", "les_outbox_table_last_vacuum_timestamp_seconds")
        for labels, value in samples(exposition, name, table="OutboxMessages")
    }


@pytest.mark.postgres
@pytest.mark.redis
def test_metrics_show_the_outbox_dead_rows_until_it_is_vacuumed(
    pg_server_url: str, redis_url: str
) -> None:
    with scratch_database(pg_server_url, "upkeep") as url:  # no other test's transactions
        upgrade(url)
        app = make_app(url, redis_url)
        try:
            app.extensions["les.business_gauges"].min_interval = 0  # no throttling here
            db = get_db(app)
            start = datetime.now(UTC) + timedelta(days=3)
            event_id = create_event(db.unit_of_work, EventDetails("Talk", "d", "R", start, True), 9)
            for i in range(5):
                registrations.register(db.unit_of_work, event_id, f"P {i}", f"p{i}@example.com")
            # a relay's claim, and its release after a failed enqueue: two updates of
            # each message
            with db.write_sessions() as session, session.begin():
                claimed = outbox_relay.claim(session, utcnow(), "relay-test", 100, 30.0)
            with db.write_sessions() as session, session.begin():
                outbox_relay.release(session, claimed, "relay-test")
            assert len(claimed) >= 5
            db.engine.dispose()  # a backend hands its table statistics over as it exits

            client = app.test_client()
            n = len(claimed)

            def settled() -> dict[str, float] | None:
                """Once every exiting backend has handed its counts over."""
                figures = _upkeep(client)
                done = figures.get("live") == n and figures.get("dead", 0) >= 2 * n
                return figures if done else None

            before = wait_until(settled, 10)
            assert before["last_vacuum"] == 0  # never vacuumed

            engine = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(text('VACUUM "OutboxMessages"'))
            engine.dispose()
            after = wait_until(lambda: (f := _upkeep(client)).get("dead") == 0 and f, 10)
            assert after["live"] == n
            assert abs(after["last_vacuum"] - time.time()) < 60
        finally:
            get_db(app).dispose()


def test_sqlite_keeps_no_table_statistics(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'u.sqlite3'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert outbox_relay.table_upkeep(conn) is None
    engine.dispose()
