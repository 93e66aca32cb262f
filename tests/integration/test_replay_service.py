"""The replay service: operator actions on dead letters, audited in the same transaction."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, insert, select

from tests.integration.dead_letters import attempt_rows, dead_letter_row
from webapp.adapters.dashboard_queries import DeadLetterFilter, dead_letter_count
from webapp.adapters.tables import audit_log, outbox_attempts, outbox_messages
from webapp.extensions import get_db
from webapp.observability.metrics import REPLAYS
from webapp.services import replay

om = outbox_messages.c


def _engine(app: Flask) -> Engine:
    return get_db(app).engine


def _insert(app: Flask, rows: list[dict[str, Any]], attempts: bool = False) -> None:
    with _engine(app).begin() as conn:
        conn.execute(insert(outbox_messages), rows)
        if attempts:
            conn.execute(insert(outbox_attempts), [a for r in rows for a in attempt_rows(r)])


def _row(app: Flask, message_id: Any) -> Any:
    with _engine(app).connect() as conn:
        return conn.execute(select(outbox_messages).where(om.Id == message_id)).one()


def _audit(app: Flask) -> list[Any]:
    with _engine(app).connect() as conn:
        return list(conn.execute(select(audit_log).order_by(audit_log.c.Id)))


def _uow(app: Flask) -> replay.UowFactory:
    return get_db(app).unit_of_work


def test_replay_one_dead_letter_resets_its_retry_budget_and_is_audited(app: Flask) -> None:
    row = dead_letter_row(error_type="KeyError")
    _insert(app, [row], attempts=True)
    before = REPLAYS.labels("op@example.test")._value.get()

    result = replay.replay_messages(_uow(app), [str(row["Id"])], actor="op@example.test")

    assert (result.count, result.outcome) == (1, "done")
    after = _row(app, row["Id"])
    assert after.RetryCount == 0
    assert after.NextRetryAt is None and after.DeadLetteredAt is None
    assert after.ProcessedAt is None  # back in the relay's queue
    assert after.ReplayCount == 1
    assert "KeyError" in after.Error  # the last error stays visible
    with _engine(app).connect() as conn:
        attempts = conn.execute(
            select(outbox_attempts).where(outbox_attempts.c.MessageId == row["Id"])
        ).all()
    assert len(attempts) == 3  # history kept
    (entry,) = _audit(app)
    assert (entry.Actor, entry.Action, entry.Count, entry.Outcome) == (
        "op@example.test",
        "replay",
        1,
        "done",
    )
    assert json.loads(entry.Target) == {"ids": [str(row["Id"])]}
    assert REPLAYS.labels("op@example.test")._value.get() == before + 1


def test_replay_skips_messages_that_are_not_dead_letters(app: Flask) -> None:
    dead = dead_letter_row()
    processed = dead_letter_row() | {
        "DeadLetteredAt": None,
        "ProcessedAt": datetime.now(UTC),
        "RetryCount": 1,
    }
    _insert(app, [dead, processed])

    result = replay.replay_messages(_uow(app), [dead["Id"], processed["Id"]], actor="op")

    assert result.count == 1
    assert result.outcome.startswith("done: 1 of 2")
    assert _row(app, processed["Id"]).ReplayCount == 0
    assert _row(app, processed["Id"]).RetryCount == 1


def test_replay_matching_a_filter_leaves_other_dead_letters_alone(app: Flask) -> None:
    mails = [dead_letter_row(message_type="RegistrationCreated", event_id=7) for _ in range(4)]
    others = [dead_letter_row(message_type="RegistrationPromoted", event_id=7) for _ in range(3)]
    _insert(app, mails + others)
    flt = DeadLetterFilter(type="RegistrationCreated", event_id=7)

    result = replay.replay_matching(_uow(app), flt, actor="op", batch_size=3)

    assert (result.count, result.outcome) == (4, "done")
    assert all(_row(app, r["Id"]).DeadLetteredAt is None for r in mails)
    assert all(_row(app, r["Id"]).DeadLetteredAt is not None for r in others)
    (entry,) = _audit(app)
    assert entry.Action == "replay_filter"
    assert json.loads(entry.Target)["filter"] == {"event_id": 7, "type": "RegistrationCreated"}
    assert entry.Count == 4


def test_an_interrupted_replay_loses_no_message_and_the_audit_counts_what_was_done(
    app: Flask,
) -> None:
    rows = [dead_letter_row(dead_at=datetime.now(UTC) - timedelta(minutes=i)) for i in range(25)]
    _insert(app, rows)

    def crash_in_third_batch(number: int, ids: list[Any]) -> None:
        if number == 3:
            raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError, match="connection lost"):
        replay.replay_matching(
            _uow(app), DeadLetterFilter(), actor="op", batch_size=10, on_batch=crash_in_third_batch
        )

    states = [_row(app, r["Id"]) for r in rows]
    requeued = [s for s in states if s.DeadLetteredAt is None]
    still_dead = [s for s in states if s.DeadLetteredAt is not None]
    assert len(requeued) == 20 and len(still_dead) == 5
    assert all(s.ReplayCount == 1 and s.RetryCount == 0 for s in requeued)
    assert all(s.ReplayCount == 0 and s.RetryCount == 3 for s in still_dead)
    (entry,) = _audit(app)
    assert (entry.Count, entry.Outcome) == (20, "interrupted after 20")

    # running it again finishes the job, and nothing is replayed twice
    result = replay.replay_matching(_uow(app), DeadLetterFilter(), actor="op", batch_size=10)
    assert result.count == 5
    assert all(_row(app, r["Id"]).ReplayCount == 1 for r in rows)


def test_archive_needs_a_reason_and_records_it(app: Flask) -> None:
    row = dead_letter_row()
    _insert(app, [row])

    with pytest.raises(replay.ActionRefused, match="reason"):
        replay.archive_messages(_uow(app), [row["Id"]], actor="op", reason="  ")
    assert _row(app, row["Id"]).ArchivedAt is None
    assert _audit(app) == []

    result = replay.archive_messages(_uow(app), [row["Id"]], actor="op", reason="attendee deleted")

    assert result.count == 1
    archived = _row(app, row["Id"])
    assert archived.ArchivedAt is not None
    assert archived.ArchiveReason == "attendee deleted"
    with _engine(app).connect() as conn:
        assert dead_letter_count(conn, DeadLetterFilter()) == 0
    (entry,) = _audit(app)
    assert (entry.Action, entry.Reason, entry.Count) == ("archive", "attendee deleted", 1)


def test_archive_matching_a_filter(app: Flask) -> None:
    rows = [dead_letter_row(error_type="KeyError") for _ in range(3)]
    keep = dead_letter_row(error_type="TimeoutError")
    _insert(app, [*rows, keep])

    result = replay.archive_matching(
        _uow(app), DeadLetterFilter(error_type="KeyError"), actor="op", reason="bad data"
    )

    assert result.count == 3
    assert _row(app, keep["Id"]).ArchivedAt is None


def test_retry_now_makes_a_message_in_backoff_due_and_keeps_its_count(app: Flask) -> None:
    later = datetime.now(UTC) + timedelta(minutes=10)
    waiting = dead_letter_row() | {"DeadLetteredAt": None, "RetryCount": 2, "NextRetryAt": later}
    _insert(app, [waiting])

    result = replay.retry_now(_uow(app), [waiting["Id"]], actor="op")

    assert result.count == 1
    row = _row(app, waiting["Id"])
    assert row.NextRetryAt <= datetime.now(UTC)
    assert row.RetryCount == 2
    assert _audit(app)[0].Action == "retry_now"


def test_bad_message_ids_are_refused_and_nothing_is_written(app: Flask) -> None:
    with pytest.raises(replay.ActionRefused, match="not a message id"):
        replay.replay_messages(_uow(app), ["not-a-uuid"], actor="op")
    with pytest.raises(replay.ActionRefused, match="at least one"):
        replay.replay_messages(_uow(app), [], actor="op")
    assert _audit(app) == []


@pytest.mark.postgres
def test_two_operators_replaying_the_same_filter_replay_each_message_once(
    postgres_url: str, redis_url: str
) -> None:
    from tests.conftest import make_app

    app = make_app(postgres_url, redis_url)
    rows = [dead_letter_row() for _ in range(300)]
    _insert(app, rows)
    results: list[replay.ActionResult] = []

    def run(actor: str) -> None:
        results.append(
            replay.replay_matching(_uow(app), DeadLetterFilter(), actor=actor, batch_size=20)
        )

    threads = [threading.Thread(target=run, args=(f"op{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(r.count for r in results) == 300
    with _engine(app).connect() as conn:
        counts = conn.execute(select(om.ReplayCount)).scalars().all()
    assert sorted(set(counts)) == [1]
    get_db(app).dispose()
