"""Instructions per outbox message of the worker's job code, counted by valgrind's
callgrind: ``python -m bench.instructions``.

The benchmark's timings drift with the machine (here the same code's CPU per
message moved by 2x within the hour), so they cannot tell a change of a few per cent.
An instruction count does: it is the same for the same code and data, whatever else
the machine does. This seeds a scratch PostgreSQL database with RegistrationCreated
messages, runs the worker's job code (``Deliverer.process_many``, jobs of 10, mails
into a folder, tracing on as in production) under callgrind for N1 and then N2 other
messages, and reports ``(I(N2) - I(N1)) / (N2 - N1)``: the start-up and imports
cancel out. Compare two commits by running it in a work tree of each.

Counts are the worker's process only (not PostgreSQL), and valgrind needs
``PYTHONMALLOC=malloc``, which makes allocation-heavy code look dearer than it is.
Repeated runs agree within about 2 %.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.harness import ADMIN_URL, REDIS_BASE, db_url

JOB_SIZE = 10
EVENTS = 20


def _app(database_url: str, mailbox: str) -> Any:
    from webapp import create_app

    return create_app(
        {
            "ENV": "testing",
            "SECRET_KEY": "bench-instructions",
            "DATABASE_URL": database_url,
            "REDIS_URL": f"{REDIS_BASE}/12",
            "RATELIMIT_ENABLED": False,
            "SMTP_HOST": "",
            "MAILBOX_DIR": mailbox,
        }
    )


def seed(database_url: str, messages: int) -> None:
    """``messages`` registrations over a few roomy events: as many pending messages."""
    from webapp.extensions import get_db
    from webapp.services import events, registrations

    app = _app(database_url, tempfile.mkdtemp(prefix="les-instructions-"))
    db = get_db(app)
    details = events.EventDetails(
        title="Instructions",
        description="d",
        venue="v",
        start_date=datetime.now(UTC) + timedelta(days=3),
    )
    ids = [events.create_event(db.unit_of_work, details, 100_000) for _ in range(EVENTS)]
    for n in range(messages):
        registrations.register(db.unit_of_work, ids[n % EVENTS], "Guest", f"g{n}@example.test")
    db.dispose()


def handle(database_url: str, start: int, count: int) -> None:
    """The measured process: messages ``[start, start + count)`` in jobs of 10."""
    from sqlalchemy import select

    from webapp.adapters.mail import make_mailer
    from webapp.adapters.tables import outbox_messages
    from webapp.extensions import get_db
    from webapp.services.delivery import Deliverer

    mailbox = tempfile.mkdtemp(prefix="les-instructions-")
    app = _app(database_url, mailbox)
    db = get_db(app)
    o = outbox_messages.c
    with db.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(select(o.Id).order_by(o.CreatedAt, o.Id))]
    ids = ids[start : start + count]
    deliverer = Deliverer(db, make_mailer(app.config), app.config, "instructions")
    for k in range(0, len(ids), JOB_SIZE):
        outcomes = deliverer.process_many(ids[k : k + JOB_SIZE])
        assert {x.status for x in outcomes} == {"processed"}, outcomes
    db.dispose()
    shutil.rmtree(mailbox, ignore_errors=True)


def counted(database_url: str, start: int, count: int) -> int:
    """Instructions of one process handling ``count`` messages from ``start``."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "bench.instructions", "--handle", str(start), str(count)]
    env = {**os.environ, "PYTHONMALLOC": "malloc", "LES_INSTRUCTIONS_DB": database_url}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--messages", default="50,250", help="N1,N2 (default 50,250)")
    parser.add_argument(
        "--handle", nargs=2, type=int, metavar=("START", "COUNT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.handle:
        handle(os.environ["LES_INSTRUCTIONS_DB"], *args.handle)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    small, large = (int(n) for n in args.messages.split(","))
    if not 0 < small < large:
        parser.error("--messages needs 0 < N1 < N2")
    name = f"les_instructions_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        from webapp.adapters.migrate import upgrade

        database_url = db_url(name)
        upgrade(database_url)
        seed(database_url, small + large)
        first, second = counted(database_url, 0, small), counted(database_url, small, large)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    per_message = (second - first) / (large - small)
    result = {"messages": [small, large], "instructions": [first, second]}
    result["instructions_per_message"] = round(per_message)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
