"""Operator dashboard pages: what viewers and operators see and may do."""

# ruff: noqa: F811  (the login_as fixture is imported, then requested by name)

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert, select

from tests.conftest import csrf_token_from
from tests.integration.dead_letters import attempt_rows, dead_letter_row
from tests.integration.staff_fixtures import (
    LoginAs,
    login_as,  # noqa: F401
)
from webapp.adapters.tables import audit_log, outbox_attempts, outbox_messages
from webapp.extensions import get_db

pytestmark = pytest.mark.redis
om = outbox_messages.c
BASE = "/admin/operator"


def _insert(app: Flask, rows: list[dict[str, Any]], attempts: bool = False) -> None:
    with get_db(app).engine.begin() as conn:
        conn.execute(insert(outbox_messages), rows)
        if attempts:
            conn.execute(insert(outbox_attempts), [a for r in rows for a in attempt_rows(r)])


def _dead_ids(app: Flask) -> set[str]:
    with get_db(app).engine.connect() as conn:
        rows = conn.execute(
            select(om.Id).where(om.DeadLetteredAt.is_not(None), om.ArchivedAt.is_(None))
        )
        return {str(r[0]) for r in rows}


def _audit_actions(app: Flask) -> list[tuple[str, int | None]]:
    with get_db(app).engine.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.Action, audit_log.c.Count).where(
                audit_log.c.Action.not_like("staff.%")
            )
        )
        return [(r.Action, r.Count) for r in rows]


def _token(client: FlaskClient, path: str = BASE + "/") -> str:
    return csrf_token_from(client.get(path).text)


def test_anonymous_is_sent_to_login(client: FlaskClient) -> None:
    response = client.get(BASE + "/dead-letters")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_overview_counts_pending_retrying_and_dead(
    app: Flask, client: FlaskClient, login_as: LoginAs
) -> None:
    now = datetime.now(UTC)
    pending = dead_letter_row() | {"DeadLetteredAt": None, "RetryCount": 0, "Error": None}
    pending["CreatedAt"] = now - timedelta(minutes=3)
    retrying = dead_letter_row() | {
        "DeadLetteredAt": None,
        "RetryCount": 1,
        "NextRetryAt": now + timedelta(seconds=30),
    }
    _insert(app, [pending, retrying, dead_letter_row(), dead_letter_row()])
    login_as("viewer")

    page = client.get(BASE + "/")
    assert page.status_code == 200
    html = page.text
    assert '<strong id="pending-count">1</strong>' in html
    assert '<strong id="retrying-count">1</strong>' in html
    assert '<strong id="dead-count">2</strong>' in html
    assert "3.0 min" in html or "3.1 min" in html  # oldest pending age
    assert 'hx-trigger="every 5s"' in html
    assert "<polyline" in html  # the backlog chart is drawn server-side

    fragment = client.get(BASE + "/", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<section id="overview"')
    assert "<html" not in fragment.text


def test_overview_counts_rq_jobs_not_messages(
    app: Flask, client: FlaskClient, login_as: LoginAs
) -> None:
    """Under load the relay puts several messages in one job: the queue depth is
    shown as jobs, next to the outbox's own message counts."""
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from workers import HANDLE_MESSAGES_JOB, OUTBOX_QUEUE

    queue = Queue(
        OUTBOX_QUEUE,
        connection=redis.Redis.from_url(app.config["REDIS_URL"]),
        serializer=JSONSerializer,
    )
    queue.enqueue(HANDLE_MESSAGES_JOB, [str(uuid.uuid4()) for _ in range(10)])
    queue.enqueue(HANDLE_MESSAGES_JOB, [str(uuid.uuid4())])
    login_as("viewer")
    html = client.get(BASE + "/").text
    assert '<dd id="queues">outbox: 2 jobs</dd>' in html
    assert "a job carries one or more outbox messages" in html


def test_overview_shows_the_outbox_tables_row_versions_on_postgresql(
    app: Flask, client: FlaskClient, login_as: LoginAs
) -> None:
    _insert(app, [dead_letter_row()])
    login_as("viewer")
    html = client.get(BASE + "/").text
    if get_db(app).engine.dialect.name == "sqlite":
        assert 'id="outbox-table"' not in html  # SQLite keeps no such statistics
        return
    assert re.search(
        r'<dd id="outbox-table" class="">\d+ live, \d+ dead; '
        r"(never vacuumed|vacuumed [\d.]+ (s|min|h) ago)</dd>",
        html,
    ), html


def test_overview_warns_when_autovacuum_falls_behind(
    app: Flask, client: FlaskClient, login_as: LoginAs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webapp.adapters import outbox_relay

    behind = {"live_rows": 100_000.0, "dead_rows": 250_000.0, "last_vacuum_timestamp": 0.0}
    monkeypatch.setattr(outbox_relay, "table_upkeep", lambda _conn: behind)
    login_as("viewer")
    html = client.get(BASE + "/").text
    assert '<dd id="outbox-table" class="op-bad">100000 live, 250000 dead; never vacuumed.' in html
    assert "is autovacuum on, or held back by an old transaction?" in html


def test_outbox_vacuum_is_overdue_at_five_times_autovacuums_threshold() -> None:
    from webapp.services.dashboard import table_upkeep

    now = datetime.now(UTC)
    # 100,000 live rows: autovacuum starts at 2,000 dead ones (migration 0007)
    behind = {"live_rows": 100_000.0, "dead_rows": 10_001.0, "last_vacuum_timestamp": 0.0}
    upkeep = table_upkeep(behind, now)
    assert upkeep is not None and upkeep.overdue and upkeep.vacuumed_ago is None
    recent = now.timestamp() - 90
    keeping_up = behind | {"dead_rows": 9_999.0, "last_vacuum_timestamp": recent}
    upkeep = table_upkeep(keeping_up, now)
    assert upkeep is not None and not upkeep.overdue
    assert upkeep.vacuumed_ago == pytest.approx(90, abs=1)
    assert table_upkeep(None, now) is None  # SQLite


def test_dead_letters_filter_by_error_class_and_text(
    app: Flask, client: FlaskClient, login_as: LoginAs
) -> None:
    key_errors = [dead_letter_row(error_type="KeyError") for _ in range(3)]
    timeout = dead_letter_row(
        error_type="TimeoutError",
        error_message="smtp.example.test timed out",
        data={"email": "ada@example.test", "event_id": 5},
        event_id=5,
    )
    _insert(app, [*key_errors, timeout])
    login_as("viewer")

    page = client.get(BASE + "/dead-letters", query_string={"error_type": "KeyError"})
    assert page.status_code == 200
    assert '<strong id="match-count">3</strong>' in page.text
    assert str(timeout["Id"]) not in page.text

    by_payload = client.get(BASE + "/dead-letters", query_string={"q": "ADA@example"})
    assert '<strong id="match-count">1</strong>' in by_payload.text
    assert str(timeout["Id"]) in by_payload.text
    assert "Text in error message or payload" in by_payload.text

    by_message = client.get(BASE + "/dead-letters", query_string={"q": "example.test TIMED"})
    assert '<strong id="match-count">1</strong>' in by_message.text
    assert str(timeout["Id"]) in by_message.text

    by_event = client.get(BASE + "/dead-letters", query_string={"event_id": "5"})
    assert '<strong id="match-count">1</strong>' in by_event.text

    literal = client.get(BASE + "/dead-letters", query_string={"q": "100%"})
    assert '<strong id="match-count">0</strong>' in literal.text  # % is not a wildcard

    summary = client.get(
        BASE + "/dead-letters",
        query_string={"error_type": "KeyError", "part": "summary"},
        headers={"HX-Request": "true"},
    )
    assert summary.text.lstrip().startswith('<section id="dead-summary"')
    assert '<td class="op-num">3</td>' in summary.text  # the KeyError group


def test_a_bad_filter_gets_a_clear_400(client: FlaskClient, login_as: LoginAs) -> None:
    login_as("viewer")
    response = client.get(BASE + "/dead-letters", query_string={"since": "yesterday"})
    assert response.status_code == 400
    assert "must be a date like 2026-01-31" in response.text
    response = client.get(
        BASE + "/dead-letters", query_string={"since": "2026-02-01", "until": "2026-01-01"}
    )
    assert response.status_code == 400
    assert "after" in response.text


def test_detail_shows_payload_traceback_and_attempts(
    app: Flask, client: FlaskClient, login_as: LoginAs
) -> None:
    row = dead_letter_row(error_type="KeyError", data={"registration_id": "r-42", "event_id": 1})
    _insert(app, [row], attempts=True)
    login_as("viewer")

    page = client.get(f"{BASE}/dead-letters/{row['Id']}")
    assert page.status_code == 200
    html = page.text
    assert "&#34;registration_id&#34;: &#34;r-42&#34;" in html  # pretty JSON, escaped
    assert "Traceback (most recent call last)" in html
    assert html.count("<details>") == 3
    assert 'id="replay-one"' not in html  # a viewer gets no action buttons

    missing = client.get(f"{BASE}/dead-letters/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404


def test_viewer_sees_no_replay_button_and_a_forged_post_is_refused(
    app: Flask, client: FlaskClient, login_as: LoginAs
) -> None:
    row = dead_letter_row()
    _insert(app, [row])
    login_as("viewer")

    page = client.get(BASE + "/dead-letters")
    assert str(row["Id"]) in page.text
    assert "Replay selected" not in page.text
    assert 'id="replay-matching"' not in page.text
    token = csrf_token_from(page.text)

    forged = client.post(
        BASE + "/dead-letters/replay", data={"csrf_token": token, "ids": str(row["Id"])}
    )
    assert forged.status_code == 403
    forged = client.post(
        BASE + "/dead-letters/matching/replay", data={"csrf_token": token, "confirmed_count": "1"}
    )
    assert forged.status_code == 403
    assert _dead_ids(app) == {str(row["Id"])}
    assert _audit_actions(app) == []


def test_post_without_csrf_token_is_refused(
    app: Flask, client: FlaskClient, login_as: LoginAs
) -> None:
    row = dead_letter_row()
    _insert(app, [row])
    login_as("operator")
    response = client.post(BASE + "/dead-letters/replay", data={"ids": str(row["Id"])})
    assert response.status_code == 400
    assert _dead_ids(app) == {str(row["Id"])}


def test_operator_replays_a_selection_and_the_audit_log_shows_it(
    app: Flask, client: FlaskClient, login_as: LoginAs
) -> None:
    rows = [dead_letter_row() for _ in range(3)]
    _insert(app, rows)
    user = login_as("operator")
    token = _token(client, BASE + "/dead-letters")

    response = client.post(
        BASE + "/dead-letters/replay",
        data={"csrf_token": token, "ids": [str(rows[0]["Id"]), str(rows[1]["Id"])]},
    )
    assert response.status_code == 302
    assert _dead_ids(app) == {str(rows[2]["Id"])}
    followed = client.get(response.headers["Location"])
    assert "Replayed 2 message(s)" in followed.text

    audit = client.get(BASE + "/audit").text
    assert user.email in audit
    assert '<td class="audit-action">replay</td>' in audit
    assert '<td class="op-num audit-count">2</td>' in audit


def test_replay_everything_matching_confirms_the_exact_count_first(
    app: Flask, client: FlaskClient, login_as: LoginAs
) -> None:
    mails = [dead_letter_row(error_type="ConnectionRefusedError") for _ in range(4)]
    other = dead_letter_row(error_type="KeyError")
    _insert(app, [*mails, other])
    login_as("operator")

    confirm = client.get(
        BASE + "/dead-letters/confirm/replay", query_string={"error_type": "ConnectionRefusedError"}
    )
    assert confirm.status_code == 200
    assert '<strong id="confirm-count">4</strong>' in confirm.text
    token = csrf_token_from(confirm.text)
    form = {"csrf_token": token, "error_type": "ConnectionRefusedError"}

    # one more arrived since the operator looked: ask again, change nothing
    late = dead_letter_row(error_type="ConnectionRefusedError")
    _insert(app, [late])
    stale = client.post(
        BASE + "/dead-letters/matching/replay", data=form | {"confirmed_count": "4"}
    )
    assert stale.status_code == 409
    assert '<strong id="confirm-count">5</strong>' in stale.text
    assert len(_dead_ids(app)) == 6

    done = client.post(BASE + "/dead-letters/matching/replay", data=form | {"confirmed_count": "5"})
    assert done.status_code == 302
    assert _dead_ids(app) == {str(other["Id"])}
    assert _audit_actions(app) == [("replay_filter", 5)]
    with get_db(app).engine.connect() as conn:
        target = conn.execute(
            select(audit_log.c.Target).where(audit_log.c.Action == "replay_filter")
        ).scalar_one()
    assert json.loads(target) == {"filter": {"error_type": "ConnectionRefusedError"}}


def test_archive_needs_a_reason(app: Flask, client: FlaskClient, login_as: LoginAs) -> None:
    row = dead_letter_row()
    _insert(app, [row])
    login_as("operator")
    token = _token(client, BASE + "/dead-letters")

    refused = client.post(
        BASE + "/dead-letters/archive", data={"csrf_token": token, "ids": str(row["Id"])}
    )
    assert refused.status_code == 400
    assert "Give a reason" in refused.text
    assert _dead_ids(app) == {str(row["Id"])}

    done = client.post(
        BASE + "/dead-letters/archive",
        data={"csrf_token": token, "ids": str(row["Id"]), "reason": "test data"},
    )
    assert done.status_code == 302
    assert _dead_ids(app) == set()
    assert _audit_actions(app) == [("archive", 1)]


def test_replay_needs_a_recent_login(app: Flask, client: FlaskClient, login_as: LoginAs) -> None:
    row = dead_letter_row()
    _insert(app, [row])
    login_as("operator")
    token = _token(client, BASE + "/dead-letters")
    with client.session_transaction() as session:
        session["login_at"] = time.time() - 3600

    response = client.post(
        BASE + "/dead-letters/replay", data={"csrf_token": token, "ids": str(row["Id"])}
    )
    assert response.status_code == 302
    assert "/login/confirm" in response.headers["Location"]
    assert _dead_ids(app) == {str(row["Id"])}


def test_retries_page_and_retry_now(app: Flask, client: FlaskClient, login_as: LoginAs) -> None:
    later = datetime.now(UTC) + timedelta(minutes=10)
    waiting = dead_letter_row(error_type="TimeoutError") | {
        "DeadLetteredAt": None,
        "RetryCount": 2,
        "NextRetryAt": later,
    }
    _insert(app, [waiting])
    login_as("operator")

    page = client.get(BASE + "/retries")
    assert "TimeoutError" in page.text and "2 / 3" in page.text
    token = csrf_token_from(page.text)
    response = client.post(
        BASE + "/retries/retry-now", data={"csrf_token": token, "ids": str(waiting["Id"])}
    )
    assert response.status_code == 302
    with get_db(app).engine.connect() as conn:
        due = conn.execute(select(om.NextRetryAt).where(om.Id == waiting["Id"])).scalar_one()
    assert due <= datetime.now(UTC)
    assert _audit_actions(app) == [("retry_now", 1)]
