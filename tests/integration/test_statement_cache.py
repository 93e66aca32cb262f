"""Every statement a registration's life runs (register, waitlist, cancel with
promotion, the relay's pass, the worker's handlers) reuses SQLAlchemy's compiled
form once warm. A statement SQLAlchemy cannot cache (its dialects' ON CONFLICT
inserts, for one) is compiled again on every call, as the attendee upsert and the
popularity counter were, on every registration."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, select
from sqlalchemy.engine.default import CACHE_HIT, CACHE_MISS

from tests.conftest import make_app
from webapp.adapters import outbox_relay
from webapp.adapters.mail import make_mailer
from webapp.adapters.tables import outbox_messages
from webapp.extensions import get_db
from webapp.services import events as event_service
from webapp.services import registrations as registration_service
from webapp.services.delivery import Deliverer
from webapp.services.unit_of_work import utcnow


@pytest.fixture
def app(db_url: str, redis_url: str, tmp_path: Any) -> Iterator[Flask]:
    app = make_app(db_url, redis_url, MAILBOX_DIR=str(tmp_path / "mailbox"), SMTP_HOST="")
    yield app
    get_db(app).dispose()


def _life_of_registrations(app: Flask, round_no: int) -> None:
    """Two people register for a one-seat event (one confirmed, one waiting), the
    first cancels (the second is promoted), and the relay and a worker handle every
    message."""
    db = get_db(app)
    details = event_service.EventDetails(
        title=f"Cache Conf {round_no}",
        description="d",
        venue="Hall 2",
        start_date=datetime.now(UTC) + timedelta(days=3),
    )
    event_id = event_service.create_event(db.unit_of_work, details, 1)
    first = registration_service.register(
        db.unit_of_work, event_id, "Ada", f"ada-{round_no}@example.test", f"key-a-{round_no}"
    )
    registration_service.register(
        db.unit_of_work, event_id, "Bea", f"bea-{round_no}@example.test", f"key-b-{round_no}"
    )
    registration_service.cancel(db.unit_of_work, first.registration_id)
    with db.write_sessions() as session, session.begin():
        ids = [c.id for c in outbox_relay.claim(session, utcnow(), "relay-test", 100, 30.0)]
    outcomes = Deliverer(db, make_mailer(app.config), app.config, "test-worker").process_many(ids)
    assert {o.status for o in outcomes} == {"processed"}


def test_a_registrations_statements_are_compiled_once(app: Flask) -> None:
    engine = get_db(app).engine
    seen: Counter[tuple[str, str]] = Counter()

    def record(
        _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        if context.compiled is None:  # driver SQL (SQLite's BEGIN IMMEDIATE): nothing to compile
            return
        seen[(str(context.cache_hit), " ".join(statement.split())[:120])] += 1

    _life_of_registrations(app, 1)  # warm: first compilations
    event.listen(engine, "after_cursor_execute", record)
    try:
        _life_of_registrations(app, 2)
    finally:
        event.remove(engine, "after_cursor_execute", record)

    compiled_again = {
        sql: n for (hit, sql), n in seen.items() if hit not in {str(CACHE_HIT), str(CACHE_MISS)}
    }
    assert compiled_again == {}
    assert sum(n for (hit, _), n in seen.items() if hit == str(CACHE_HIT)) > 20
    with get_db(app).engine.connect() as conn:
        pending = conn.execute(
            select(outbox_messages.c.Id).where(outbox_messages.c.ProcessedAt.is_(None))
        ).all()
    assert pending == []


def test_the_counter_upsert_takes_only_the_tables_own_columns() -> None:
    from webapp.services.async_handlers import _increment_stmt

    with pytest.raises(ValueError, match="not a counter"):
        _increment_stmt((('Registrations" = 0; --', 1),))
    sql = str(_increment_stmt((("Cancellations", 1),)))
    assert '"Cancellations" = "EventStats"."Cancellations" + excluded."Cancellations"' in sql
