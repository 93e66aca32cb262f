"""Dashboard read queries: counts, throughput/backlog series, groups, and the indexes
that keep the dead-letter list fast (EXPLAIN on PostgreSQL; the timing itself is the
benchmark's job, with ``tests.integration.dead_letters.seed_dead_letters``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, insert, select, text

from tests.integration.dead_letters import dead_letter_row, seed_dead_letters
from webapp.adapters import dashboard_queries as q
from webapp.adapters.dashboard_queries import DeadLetterFilter
from webapp.adapters.db import normalize_url
from webapp.adapters.tables import outbox_messages

om = outbox_messages.c


def _message(created: datetime, **kw: Any) -> dict[str, Any]:
    row = dead_letter_row() | {"DeadLetteredAt": None, "RetryCount": 0, "Error": None}
    row["ProcessedAt"] = None
    row.update(CreatedAt=created, **kw)
    return row


def test_throughput_and_backlog_series_follow_the_table(db_url: str) -> None:
    now = datetime(2030, 1, 1, 12, 30, 30, tzinfo=UTC)
    minute = timedelta(minutes=1)
    rows = [
        # created 10 minutes ago, processed 5 minutes ago
        *(_message(now - 10 * minute, ProcessedAt=now - 5 * minute) for _ in range(3)),
        # created 4 minutes ago, still pending
        *(_message(now - 4 * minute) for _ in range(2)),
        # created 20 minutes ago, dead-lettered 2 minutes ago
        _message(now - 20 * minute, RetryCount=3, DeadLetteredAt=now - 2 * minute),
        # processed long before the window: invisible
        _message(now - 3 * 60 * minute, ProcessedAt=now - 2 * 60 * minute),
    ]
    engine = create_engine(normalize_url(db_url))
    with engine.begin() as conn:
        conn.execute(insert(outbox_messages), rows)
    with engine.connect() as conn:
        series = q.throughput(conn, now, minutes=60)
        counts = q.outbox_counts(conn)
    engine.dispose()

    assert counts == {"pending": 2, "retrying": 0, "dead": 1}
    assert len(series.processed) == len(series.backlog) == 60
    assert series.processed[-6] == 3 and sum(series.processed) == 3
    backlog = dict(zip(range(-60, 0), series.backlog, strict=True))
    # index -1 is the current minute; each value is the backlog at the end of that minute
    assert backlog[-1] == 2  # now: the two pending ones
    assert backlog[-3] == 2  # the minute the old one died
    assert backlog[-4] == 3  # ...before that it was waiting too
    assert backlog[-6] == 1  # the three were processed, the two not yet created
    assert backlog[-7] == 4  # the three waiting + the old one
    assert backlog[-11] == 4  # the minute the three were created
    assert backlog[-12] == 1  # only the old one
    assert backlog[-22] == 0  # before anything was created
    assert backlog[-60] == 0


def test_groups_are_counted_by_fingerprint_biggest_first(db_url: str) -> None:
    engine = create_engine(normalize_url(db_url))
    rows = [dead_letter_row(error_type="KeyError") for _ in range(3)]
    rows += [dead_letter_row(error_type="TimeoutError", error_message="smtp timed out")]
    archived = dead_letter_row(error_type="TimeoutError") | {"ArchivedAt": datetime.now(UTC)}
    with engine.begin() as conn:
        conn.execute(insert(outbox_messages), rows)
        conn.execute(insert(outbox_messages), [archived])
    with engine.connect() as conn:
        groups = q.dead_letter_groups(conn, DeadLetterFilter())
        only_timeouts = q.dead_letter_groups(conn, DeadLetterFilter(text="SMTP TIMED"))
        capped = q.dead_letter_count(conn, DeadLetterFilter(), cap=2)
    engine.dispose()
    assert [(g["ErrorType"], g["Count"]) for g in groups] == [("KeyError", 3), ("TimeoutError", 1)]
    assert groups[1]["ErrorSummary"] == "TimeoutError: smtp timed out"
    assert [(g["ErrorType"], g["Count"]) for g in only_timeouts] == [("TimeoutError", 1)]
    assert capped == 2


def test_the_summary_counts_every_match_even_beyond_the_groups_shown(db_url: str) -> None:
    rows = [dead_letter_row(error_type="KeyError") for _ in range(3)]
    rows += [dead_letter_row(message_type="RegistrationPromoted", error_type="TimeoutError")]
    engine = create_engine(normalize_url(db_url))
    with engine.begin() as conn:
        conn.execute(insert(outbox_messages), rows)
    with engine.connect() as conn:
        total, groups = q.dead_letter_summary(conn, DeadLetterFilter(), limit=1)
        nothing = q.dead_letter_summary(conn, DeadLetterFilter(text="no such text"))
        facets = q.facets(conn)
    engine.dispose()
    assert total == 4 and [g["Count"] for g in groups] == [3]
    assert nothing == (0, [])
    assert facets == {
        "Type": [("RegistrationCreated", 3), ("RegistrationPromoted", 1)],
        "ErrorType": [("KeyError", 3), ("TimeoutError", 1)],
    }


def test_text_search_finds_the_error_class_its_message_and_the_payload(db_url: str) -> None:
    """The search looks at ErrorSummary and Data, case-insensitively, not at the traceback."""
    smtp = dead_letter_row(
        error_type="smtplib.SMTPServerDisconnected",
        error_message="Connection unexpectedly closed\nsecond line",
        data={"event_id": 7, "email": "zoe@example.test"},
    )
    other = dead_letter_row(error_type="KeyError", error_message="'email'")
    engine = create_engine(normalize_url(db_url))
    with engine.begin() as conn:
        conn.execute(insert(outbox_messages), [smtp, other])
    found: dict[str, set[Any]] = {}
    with engine.connect() as conn:
        for term in ("SMTPServerDisconnected", "unexpectedly CLOSED", "ZOE@Example", "'email'"):
            flt = DeadLetterFilter(text=term)
            found[term] = {r["Id"] for r in q.dead_letter_page(conn, flt, 0, 50)}
            assert q.dead_letter_count(conn, flt) == len(found[term])
    engine.dispose()
    assert smtp["ErrorSummary"] == (
        "smtplib.SMTPServerDisconnected: Connection unexpectedly closed"
    )
    assert found == {
        "SMTPServerDisconnected": {smtp["Id"]},
        "unexpectedly CLOSED": {smtp["Id"]},
        "ZOE@Example": {smtp["Id"]},
        "'email'": {other["Id"]},
    }


@pytest.mark.postgres
def test_a_text_search_is_planned_for_its_own_term(postgres_url: str) -> None:
    """A prepared statement's generic plan must not serve a term in every dead letter
    with the plan of a rare one: text searches get custom plans in their transaction."""
    engine = create_engine(normalize_url(postgres_url))
    with engine.connect() as conn:
        q.dead_letter_page(conn, DeadLetterFilter(type="RegistrationCreated"), 0, 50)
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"
        q.dead_letter_page(conn, DeadLetterFilter(text="example"), 0, 50)
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
    with engine.connect() as conn:  # the next transaction is back to normal
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"
    engine.dispose()


def _plan(conn: Connection, stmt: Any) -> str:
    compiled = stmt.compile(dialect=conn.dialect)
    rows = conn.exec_driver_sql("EXPLAIN " + compiled.string, compiled.params)
    return "\n".join(r[0] for r in rows)


@pytest.mark.postgres
def test_every_dead_letter_query_shape_has_an_index(postgres_url: str) -> None:
    """With sequential scans priced out, each filter still finds an index whose partial
    predicate matches: the 100,000-row benchmark relies on these plans."""
    engine = create_engine(normalize_url(postgres_url))
    with engine.begin() as conn:
        seed_dead_letters(conn, 2000)
        conn.execute(text('ANALYZE "OutboxMessages"'))
    with engine.connect() as conn:  # selective values, as an operator's filter would be
        rare_type = min(q.facet_counts(conn, "Type"), key=lambda f: f[1])[0]
        rare_error = min(q.facet_counts(conn, "ErrorType"), key=lambda f: f[1])[0]
        one_email = json.loads(conn.execute(select(om.Data).limit(1)).scalar_one())["email"]
    filters = {
        "": DeadLetterFilter(),  # any of the partial indexes will do
        "IX_OutboxMessages_DeadByType": DeadLetterFilter(type=rare_type),
        "IX_OutboxMessages_DeadByErrorType": DeadLetterFilter(error_type=rare_error),
        "IX_OutboxMessages_DeadByEvent": DeadLetterFilter(event_id=42),
        "IX_OutboxMessages_DeadByFingerprint": DeadLetterFilter(fingerprint="abc"),
        # at 2,000 rows a btree partial index beats the trigram GIN indexes; at 100,000
        # the plan is a BitmapOr of IX_OutboxMessages_Dead{ErrorSummary,Data}Trgm
        "IX_OutboxMessages_Dead": DeadLetterFilter(text=one_email),
    }
    with engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        for index, flt in filters.items():
            conds = q.dead_letter_conditions(flt)
            page = (
                select(om.Id)
                .where(*conds)
                .order_by(om.DeadLetteredAt.desc(), om.Id.desc())
                .limit(50)
            )
            count = select(om.Id).where(*conds)
            for stmt in (page, count):
                plan = _plan(conn, stmt)
                assert "Seq Scan" not in plan, plan
                if stmt is count:
                    assert index in plan, plan  # the filter's own index
        groups = _plan(
            conn,
            select(om.Fingerprint, text("count(*)"))
            .where(q.dead_condition())
            .group_by(om.Fingerprint),
        )
        assert "Seq Scan" not in groups
    engine.dispose()


def test_the_dead_lettered_per_minute_series_reads_an_index(db_url: str) -> None:
    """The overview's series counts every dead letter of the last hour, archived ones
    too; it must not read the whole outbox, which grows with every processed message."""
    engine = create_engine(normalize_url(db_url))
    since = datetime.now(UTC) - timedelta(hours=1)
    with engine.begin() as conn:
        seed_dead_letters(conn, 200)
        if conn.dialect.name == "postgresql":
            conn.execute(text('ANALYZE "OutboxMessages"'))
    with engine.connect() as conn:
        stmt = q.per_minute_statement(conn, om.DeadLetteredAt, since)
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            plan = _plan(conn, stmt)
        else:
            compiled = stmt.compile(dialect=conn.dialect)
            params = tuple(compiled.params[name] for name in compiled.positiontup or ())
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, params)
            plan = "\n".join(str(r[-1]) for r in rows)
    engine.dispose()
    assert "IX_OutboxMessages_DeadLetteredAt" in plan, plan
