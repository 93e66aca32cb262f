"""Dead letters made by hand, for the dashboard tests and the benchmark.

``seed_dead_letters(conn, n)`` inserts ``n`` realistic dead letters (several message
types and error classes, ~15 fingerprint groups, tracebacks of about 1 KB, spread
over 30 days and 500 events) in bulk. The benchmark uses it to prove the < 300 ms
dead-letter list / filter / group-count target on PostgreSQL with 100,000 rows::

    from tests.integration.dead_letters import seed_dead_letters
    with engine.begin() as conn:
        seed_dead_letters(conn, 100_000)
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert

from webapp.adapters.tables import outbox_attempts, outbox_messages

MESSAGE_TYPES = [
    "RegistrationCreated",
    "RegistrationPromoted",
    "WaitlistPositionChanged",
    "RegistrationCancelled",
]
ERRORS = [
    ("smtplib.SMTPServerDisconnected", "Connection unexpectedly closed", "webapp/adapters/mail.py"),
    ("ConnectionRefusedError", "[Errno 111] Connection refused", "webapp/adapters/mail.py"),
    ("KeyError", "'email'", "webapp/services/async_handlers.py"),
    ("TimeoutError", "timed out", "webapp/adapters/mail.py"),
]


def make_traceback(error_type: str, message: str, frame_file: str, detail: str = "") -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "/app/workers/jobs.py", line 88, in handle_message\n'
        "    handler(message, ctx)\n"
        f'  File "/app/{frame_file}", line 41, in send_confirmation_mail\n'
        "    ctx.mailer.send(view['email'], 'confirmation', context, message_key=key)\n"
        '  File "/usr/lib/python3.11/smtplib.py", line 1021, in send_message\n'
        "    return self.sendmail(from_addr, to_addrs, flatmsg, mail_options, rcpt_options)\n"
        '  File "/usr/lib/python3.11/smtplib.py", line 876, in sendmail\n'
        "    (code, resp) = self.mail(from_addr, esmtp_opts)\n"
        '  File "/usr/lib/python3.11/smtplib.py", line 405, in getreply\n'
        "    raise SMTPServerDisconnected('Connection unexpectedly closed')\n"
        f"{error_type}: {message}{detail}\n"
    )


def fingerprint(message_type: str, error_type: str, frame: str) -> str:
    return hashlib.sha256(f"{message_type}|{error_type}|{frame}".encode()).hexdigest()[:16]


def dead_letter_row(
    *,
    message_type: str = "RegistrationCreated",
    error_type: str = "KeyError",
    error_message: str = "'email'",
    frame_file: str = "webapp/services/async_handlers.py",
    data: dict[str, Any] | None = None,
    dead_at: datetime | None = None,
    event_id: int | None = 1,
    retry_count: int = 3,
) -> dict[str, Any]:
    """One dead-letter row, as the worker leaves it after the last failed attempt."""
    dead_at = dead_at or datetime.now(UTC)
    payload = data or {"event_id": event_id, "registration_id": str(uuid.uuid4())}
    return {
        "Id": uuid.uuid4(),
        "Type": message_type,
        "Data": json.dumps(payload, separators=(",", ":")),
        "CreatedAt": dead_at - timedelta(minutes=2),
        "Error": make_traceback(error_type, error_message, frame_file),
        "RetryCount": retry_count,
        "MaxRetryCount": 3,
        "NextRetryAt": None,
        "ErrorType": error_type,
        "ErrorSummary": f"{error_type}: {error_message.splitlines()[0]}"[:300],
        "Fingerprint": fingerprint(message_type, error_type, frame_file),
        "DeadLetteredAt": dead_at,
        "ReplayCount": 0,
        "EventId": event_id,
    }


def attempt_rows(row: dict[str, Any], worker: str = "worker-1") -> list[dict[str, Any]]:
    """The failed attempts that led to ``row`` being dead-lettered."""
    return [
        {
            "MessageId": row["Id"],
            "AttemptedAt": row["CreatedAt"] + timedelta(seconds=5 * 2**i),
            "Worker": worker,
            "DurationMs": 12,
            "Succeeded": False,
            "ErrorType": row["ErrorType"],
            "Error": row["Error"],
        }
        for i in range(row["RetryCount"])
    ]


def seed_dead_letters(
    conn: Connection,
    n: int,
    *,
    seed: int = 42,
    with_attempts: bool = False,
    chunk: int = 5000,
    now: datetime | None = None,
) -> int:
    """Insert ``n`` varied dead letters (bulk, in ``chunk``-row statements); returns n."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    # ~15 groups: not every type fails with every error
    combos = [(t, e) for t in MESSAGE_TYPES for e in ERRORS][:15]
    inserted = 0
    while inserted < n:
        rows = []
        attempts: list[dict[str, Any]] = []
        for _ in range(min(chunk, n - inserted)):
            message_type, (error_type, message, frame) = combos[
                min(int(rng.expovariate(0.35)), len(combos) - 1)
            ]
            event_id = rng.randint(1, 500)
            email = f"attendee{rng.randint(1, 10**6)}@example.test"
            row = dead_letter_row(
                message_type=message_type,
                error_type=error_type,
                error_message=f"{message} (to {email})",
                frame_file=frame,
                data={
                    "event_id": event_id,
                    "registration_id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "email": email,
                },
                dead_at=now - timedelta(seconds=rng.uniform(0, 30 * 86400)),
                event_id=event_id,
            )
            row["Id"] = uuid.UUID(int=rng.getrandbits(128))
            rows.append(row)
            if with_attempts:
                attempts.extend(attempt_rows(row))
        conn.execute(insert(outbox_messages), rows)
        if attempts:
            conn.execute(insert(outbox_attempts), attempts)
        inserted += len(rows)
    return inserted
