"""The web process's observability: request ids in and out, JSON request log lines
without secrets, and the custom metrics a scrape shows after real use cases."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import make_app
from tests.integration.observability_processes import samples
from webapp.extensions import get_db
from webapp.observability.collectors import statement_labels
from webapp.services import registrations


def test_statement_labels_are_bounded():
    assert statement_labels('SELECT * FROM "Events" WHERE 1') == ("select", "Events")
    assert statement_labels('INSERT INTO "OutboxMessages" (x) VALUES (1)') == (
        "insert",
        "OutboxMessages",
    )
    assert statement_labels("UPDATE secret_table SET x=1") == ("update", "other")
    assert statement_labels('WITH q AS (SELECT 1) DELETE FROM "Events"') == ("delete", "Events")
    assert statement_labels("PRAGMA foreign_keys=ON") == ("other", "none")


def test_request_id_is_taken_or_made_and_returned(client):
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123.x"})
    assert given.headers["X-Request-ID"] == "abc-123.x"
    invalid = client.get("/healthz", headers={"X-Request-ID": "<script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", invalid.headers["X-Request-ID"])


@pytest.mark.postgres
@pytest.mark.redis
def test_request_log_line_is_json_with_ids_and_no_status_token(postgres_url, redis_url, capsys):
    app = make_app(postgres_url, redis_url, LOG_LEVEL="INFO", LOG_SAMPLE_RATE=1.0)
    try:
        capsys.readouterr()
        response = app.test_client().get(
            "/registrations/eyJpZCI6InNlY3JldCJ9.signature", headers={"X-Request-ID": "req-7"}
        )
        assert response.status_code in (404, 410)
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
        mine = [x for x in lines if x.get("request_id") == "req-7" and x["logger"] == "les.http"]
        assert mine, lines
        line = mine[-1]
        assert line["status"] == response.status_code
        assert line["route"] == "/registrations/<token>"
        assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
        assert "eyJpZCI6InNlY3JldCJ9" not in json.dumps(lines)
    finally:
        get_db(app).dispose()


@pytest.mark.redis
@pytest.mark.parametrize(("rate", "kept_ok_lines"), [(0.0, 0), (1.0, 20)])
def test_successful_requests_are_sampled_and_errors_always_logged(
    sqlite_url, redis_url, capsys, rate, kept_ok_lines
):
    app = make_app(sqlite_url, redis_url, LOG_LEVEL="INFO", LOG_SAMPLE_RATE=rate)
    try:
        client = app.test_client()
        capsys.readouterr()
        for _ in range(20):
            assert client.get("/").status_code == 200
        assert client.get("/events/987654").status_code == 404
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
        http = [x for x in lines if x["logger"] == "les.http"]
        assert len([x for x in http if x["status"] == 200]) == kept_ok_lines
        (missing,) = [x for x in http if x["status"] == 404]  # never sampled away
        assert missing["route"] == "/events/<int:event_id>" and "sample_rate" not in missing
    finally:
        get_db(app).dispose()


@pytest.mark.postgres
@pytest.mark.redis
def test_scrape_shows_statements_promotions_and_top_waitlists(postgres_url, redis_url):
    from datetime import UTC, datetime, timedelta

    from webapp.services.events import EventDetails, create_event

    app = make_app(postgres_url, redis_url)
    try:
        app.extensions["les.business_gauges"].min_interval = 0  # no throttling here
        client = app.test_client()
        before = client.get("/metrics").get_data(as_text=True)
        uow = get_db(app).unit_of_work
        start = datetime.now(UTC) + timedelta(days=4)
        event_id = create_event(uow, EventDetails("One seat", "d", "Room", start, True), 1)
        first = registrations.register(uow, event_id, "Ann Example", "ann@example.com")
        registrations.register(uow, event_id, "Bob Example", "bob@example.com")
        registrations.register(uow, event_id, "Cat Example", "cat@example.com")
        registrations.cancel(uow, first.registration_id)

        text = client.get("/metrics").get_data(as_text=True)

        def value(name: str, **labels: str) -> float:
            return sum(v for _, v in samples(text, name, **labels))

        def previous(name: str, **labels: str) -> float:
            return sum(v for _, v in samples(before, name, **labels))

        assert value("les_promotions_total") == previous("les_promotions_total") + 1
        inserts = "les_db_statement_duration_seconds_count"
        assert value(inserts, kind="insert", table="OutboxMessages") > previous(
            inserts, kind="insert", table="OutboxMessages"
        )
        # one insert per registration, each counted (the statement's labels are worked
        # out on its first execution and remembered)
        assert (
            value(inserts, kind="insert", table="EventRegistrations")
            == previous(inserts, kind="insert", table="EventRegistrations") + 3
        )
        assert value("les_waitlist_length", event=str(event_id)) == 1  # Cat still waits
        assert value("les_event_registrations", event=str(event_id)) == 2
        assert value("les_outbox_messages", state="pending") >= 4  # no relay here
        assert value("les_outbox_oldest_pending_age_seconds") >= 0
    finally:
        get_db(app).dispose()
