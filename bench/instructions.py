"""Instructions per outbox message of the worker's job code, and per request of the
web, counted by valgrind's callgrind: ``python -m bench.instructions [--web]``.

The benchmark's timings drift with the machine (here the same code's CPU per
message moved by 2x within the hour), so they cannot tell a change of a few per cent.
An instruction count does: it is the same for the same code and data, whatever else
the machine does. This seeds a scratch PostgreSQL database with RegistrationCreated
messages, runs the worker's job code (``Deliverer.process_many``, jobs of 10 or of
``--job-size``, mails into a folder, tracing on as in production) under callgrind
for N1 and then N2 other messages, and reports ``(I(N2) - I(N1)) / (N2 - N1)``: the
start-up and imports cancel out. Compare two commits by running it in a work tree of each.

``--cancellations N1,N2`` measures the work a cancellation with promotion leaves
the workers instead, per cancellation: its messages (cancelled, promoted, the
waitlist's move), the promotion mail and the waitlist's fan-out, which reads the ten
people nearest a seat and mails the two the move brought past a milestone, each
recipient claimed and committed on its own.

``--relay N1,N2`` counts the relay's instructions per pass that finds one message
(claim and mark dispatched, enqueue to Redis), as at a light load, where every commit
wakes the relay for its message alone.

``--web`` does the same for the web's request code, with the benchmark's production
settings (cache, rate limiter, CSRF, tracing on) through Flask's test client: a
cached event list (``list``), a cached event page (``detail``) and a registration
flow (``flow``: GET the form, POST it, GET the status page after the 303), each
measured in two processes of N1 and N2 operations. The test client's own work is in
the count (the same for every commit), gunicorn's is not. Redis databases 12 and 13
are flushed and used, so one run at a time: a second one started meanwhile stops at
once with a message (a lock file in the temp directory).

Every trace is recorded (``OTEL_TRACES_SAMPLER=parentbased_always_on``): the
production default records at most ``TRACES_PER_SECOND`` new traces a second, so
under valgrind's slowness it would record more of the operations than at full speed,
and the count would depend on the clock. ``OTEL_TRACES_SAMPLER=always_off`` counts
the work of a process beyond its budget, where no trace is recorded.

The web's cache warmer is off in the measured process (``CACHE_WARM=off`` unless
set): it runs on a clock, at most once every 1.2 s, so under valgrind, where a flow
takes about a second, it ran about once a flow instead of once in a hundred, and
added 2 to 3 M instructions to a flow's count, more or less with the machine's speed
(22.31 and 22.89 M for one state of the code, one run after the other; 19.95 and
20.08 M without it). The flow waits for the record's refresh-ahead after its POST,
so the status page's GET does not race the refresh. Each count is given for all the
process's threads and for its main thread alone (the requests, the jobs, the passes).

Counts are the measured process only (not PostgreSQL or Redis), and valgrind needs
``PYTHONMALLOC=malloc``, which makes allocation-heavy code look dearer than it is.
The measured process's string hashes are seeded alike (``PYTHONHASHSEED=0`` unless
set; with a random seed, two runs of one commit differed by 2 to 2.4 %). Even so, a
flow's count moves with the machine: how often a client polls a socket that is not
ready yet, or a thread waits for the GIL, depends on timing. On a steady machine two
runs agreed within 0.3 %; on an unsteady one, four runs of two commits that differ
by 1.7 % of a flow spread over 19.70 to 21.15 M (main thread). There, count the
changed code alone in a loop under callgrind.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, NamedTuple

import psycopg
import redis

from bench.harness import ADMIN_URL, REDIS_BASE, app_env, app_from_env, db_url
from bench.seed import NOTICE_MAX_POSITION

JOB_SIZE = 10
EVENTS = 20
#: the web's measured operations and their default N1,N2
WEB_KINDS = {"list": "50,250", "detail": "50,250", "flow": "20,100"}
WEB_REDIS_DB, WEB_CACHE_DB = 12, 13
#: the measured process is the relay (``--relay``)
RELAY = "relay"


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


#: waitlisted people near a seat (``WAITLIST_NOTICE_MAX_POSITION``), as in the benchmark
NEAR = NOTICE_MAX_POSITION
#: notices per cancellation once a waitlist has been moving for a while (those
#: nearest a seat told where they stand): the person the move brings within ``NEAR``
#: places, and the one it makes next in line
NOTICES = 2


def seed_cancellations(database_url: str, cancellations: int) -> int:
    """``cancellations`` cancellations of confirmed seats over full events with
    waitlists, after the registrations' own messages are deleted, and with the people
    near a seat told where they stand (as a running service has): returns the
    messages per cancellation."""
    from sqlalchemy import delete, func, insert, literal, select

    from webapp.adapters.tables import outbox_messages, waitlist_notices
    from webapp.adapters.tables import registrations as r
    from webapp.extensions import get_db
    from webapp.services import events, registrations

    app = _app(database_url, tempfile.mkdtemp(prefix="les-instructions-"))
    db = get_db(app)
    per_event = -(-cancellations // EVENTS)
    details = events.EventDetails(
        title="Cancellations",
        description="d",
        venue="v",
        start_date=datetime.now(UTC) + timedelta(days=3),
    )
    seats: list[uuid.UUID] = []
    for e in range(EVENTS):
        event_id = events.create_event(db.unit_of_work, details, per_event)
        for n in range(2 * per_event + NEAR + 1):  # the seats, then the waitlist
            outcome = registrations.register(
                db.unit_of_work, event_id, "Guest", f"e{e}g{n}@example.test"
            )
            if n < per_event:
                seats.append(outcome.registration_id)
    told = select(r.c.Id, r.c.PositionInQueue, literal(datetime.now(UTC))).where(
        r.c.Status == "Waitlisted", r.c.PositionInQueue <= NEAR
    )
    with db.engine.begin() as conn:
        conn.execute(delete(outbox_messages))
        conn.execute(insert(waitlist_notices).from_select(list(waitlist_notices.c), told))
    for registration_id in seats[:cancellations]:
        registrations.cancel(db.unit_of_work, registration_id)
    with db.engine.connect() as conn:
        pending = conn.execute(select(func.count()).select_from(outbox_messages)).scalar_one()
    db.dispose()
    if pending % cancellations:
        raise RuntimeError(f"{pending} messages for {cancellations} cancellations")
    return pending // cancellations


def handle(database_url: str, start: int, count: int, job_size: int = JOB_SIZE) -> None:
    """The measured process: messages ``[start, start + count)`` in jobs of
    ``job_size``."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation
    from sqlalchemy import select

    from webapp.adapters.mail import make_mailer
    from webapp.adapters.tables import outbox_messages
    from webapp.extensions import get_db
    from webapp.services.delivery import Deliverer
    from workers.jobs import traced

    mailbox = tempfile.mkdtemp(prefix="les-instructions-")
    app = _app(database_url, mailbox)
    db = get_db(app)
    o = outbox_messages.c
    with db.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(select(o.Id).order_by(o.CreatedAt, o.Id))]
    ids = ids[start : start + count]
    # as a worker process runs them: its jobs' connection kept from one to the next
    deliverer = Deliverer(
        db, make_mailer(app.config), app.config, "instructions", keep_connection=True
    )
    for k in range(0, len(ids), job_size):
        # as an OutboxWorker runs a job: RQ's traffic without spans, the job's own
        # as ``workers.jobs`` decides
        with suppress_instrumentation(), traced():
            outcomes = deliverer.process_many(ids[k : k + job_size])
        assert {x.status for x in outcomes} == {"processed"}, outcomes
    deliverer.release_connection()
    db.dispose()
    shutil.rmtree(mailbox, ignore_errors=True)


def dispatch(database_url: str, count: int) -> None:
    """The measured relay process: ``count`` passes of one message each, enqueued
    into Redis database 12 (the oldest messages not yet leased)."""
    from webapp.extensions import get_db
    from workers.relay import Relay

    app = _app(database_url, tempfile.mkdtemp(prefix="les-instructions-"))
    db = get_db(app)
    queue = redis.Redis.from_url(app.config["REDIS_URL"])
    relay = Relay(db, queue, database_url, name="instructions", batch_size=1, parallel_jobs=2)
    for _ in range(count):
        assert relay.dispatch_once() == 1
    relay.release_connection()
    db.dispose()


def browse(database_url: str, kind: str, start: int, count: int) -> None:
    """The measured web process: ``count`` operations of ``kind``, numbered from
    ``start`` (a registration's e-mail address carries its number)."""
    from sqlalchemy import select

    from bench.loadgen import form_fields
    from webapp.adapters.tables import events as events_table
    from webapp.extensions import get_db

    mailbox = Path(tempfile.mkdtemp(prefix="les-instructions-"))
    env = app_env(database_url, mailbox, redis_db=WEB_REDIS_DB, cache_db=WEB_CACHE_DB)
    app = app_from_env(env)
    with get_db(app).engine.connect() as conn:
        ids = [r[0] for r in conn.execute(select(events_table.c.Id).order_by(events_table.c.Id))]
    refresher = app.extensions["les.cache_refresher"]
    _wait_for_near_cache(app)
    client = app.test_client()
    base = "https://localhost"
    headers = {"Referer": base + "/"}

    def get(path: str) -> Any:
        response = client.get(path, base_url=base, headers=headers)
        assert response.status_code == 200, (path, response.status_code)
        return response

    for n in range(start, start + count):
        event_id = ids[n % len(ids)]
        if kind == "list":
            get("/")
        elif kind == "detail":
            get(f"/events/{event_id}")
        else:
            fields = form_fields(get(f"/events/{event_id}").data)
            fields.update(name="Instructions Guest", email=f"web{n}@bench.example.com")
            posted = client.post(
                f"/events/{event_id}/register", data=fields, base_url=base, headers=headers
            )
            assert posted.status_code == 303, posted.status_code
            refresher.wait_idle()  # the record's refresh-ahead before the redirect's GET
            get(posted.headers["Location"])
    get_db(app).dispose()
    shutil.rmtree(mailbox, ignore_errors=True)


def _wait_for_near_cache(app: Any, timeout: float = 60.0) -> None:
    """Until the process's near cache receives invalidations and keeps copies, as a
    web worker's does within milliseconds of its start: before, every request read
    Redis, and how many did depended on how soon, under valgrind, its listener
    thread subscribed."""
    from webapp.adapters.cache import get_cache

    near = get_cache(app).near
    deadline = time.monotonic() + timeout
    while near is not None and not near.live:
        if time.monotonic() > deadline:
            raise RuntimeError("the near cache did not go live")
        time.sleep(0.01)


class Counted(NamedTuple):
    """A process's instructions: all its threads', and its main thread's."""

    total: int
    main_thread: int


def counted(
    database_url: str, start: int, count: int, kind: str | None = None, job_size: int = JOB_SIZE
) -> Counted:
    """Instructions of one process handling ``count`` messages from ``start`` in jobs of
    ``job_size`` (with ``kind``: web operations, or relay passes): all its threads',
    and its main thread's (the requests, the jobs or the passes themselves)."""
    out = Path(tempfile.mkdtemp(prefix="les-callgrind-"))
    command = ["valgrind", "--tool=callgrind", "--separate-threads=yes"]
    command += [f"--callgrind-out-file={out / 'callgrind.out'}"]
    command += [sys.executable, "-m", "bench.instructions"]
    if kind is None:
        command += ["--handle", str(start), str(count), "--job-size", str(job_size)]
    elif kind == RELAY:
        command += ["--dispatch", str(count)]
        redis.Redis.from_url(f"{REDIS_BASE}/{WEB_REDIS_DB}").flushdb()
    else:
        command += ["--browse", kind, str(start), str(count)]
        for db in (WEB_REDIS_DB, WEB_CACHE_DB):  # each process starts with a cold cache
            redis.Redis.from_url(f"{REDIS_BASE}/{db}").flushdb()
    env = {
        **os.environ,
        "PYTHONMALLOC": "malloc",
        # string hashes seeded alike in every run: sets and dicts of strings laid out
        # (and walked) the same way, one run's count comparable to another's
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"),
        "LES_INSTRUCTIONS_DB": database_url,
        "OTEL_TRACES_SAMPLER": os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        # the warmer's clock-driven warm-ups out of the count (see the docstring)
        "CACHE_WARM": os.environ.get("CACHE_WARM", "off"),
    }
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        found = re.search(r"Collected : (\d+)", done.stderr)
        main = out / "callgrind.out-01"  # the first thread's file
        main_total = re.search(r"^totals: (\d+)", main.read_text(), re.MULTILINE)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if found is None or main_total is None:
        raise RuntimeError(f"no instruction count from valgrind: {done.stderr[-2000:]}")
    return Counted(int(found.group(1)), int(main_total.group(1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--messages", default="50,250", help="N1,N2 (default 50,250)")
    parser.add_argument(
        "--job-size",
        type=int,
        default=JOB_SIZE,
        help=f"messages per worker job for --messages and --cancellations (default "
        f"{JOB_SIZE}; 1 is the light load's job, where every message is a job of its own)",
    )
    parser.add_argument(
        "--cancellations",
        metavar="N1,N2",
        help="count the workers' instructions per cancellation with promotion instead "
        "(its messages and their mails; try 10,40)",
    )
    parser.add_argument(
        "--relay",
        metavar="N1,N2",
        help="count the relay's instructions per one-message pass instead (try 50,250)",
    )
    parser.add_argument(
        "--web",
        nargs="?",
        const=",".join(WEB_KINDS),
        metavar="KINDS",
        help="count the web's requests instead: comma-separated kinds of "
        f"{', '.join(WEB_KINDS)} (default all; N1,N2 per kind: "
        f"{'; '.join(f'{k} {v}' for k, v in WEB_KINDS.items())})",
    )
    parser.add_argument(
        "--handle", nargs=2, type=int, metavar=("START", "COUNT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--dispatch", type=int, metavar="COUNT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--browse", nargs=3, metavar=("KIND", "START", "COUNT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.job_size < 1:
        parser.error("--job-size counts messages: 1 or more")
    if args.handle:
        handle(os.environ["LES_INSTRUCTIONS_DB"], *args.handle, job_size=args.job_size)
        return 0
    if args.dispatch:
        dispatch(os.environ["LES_INSTRUCTIONS_DB"], args.dispatch)
        return 0
    if args.browse:
        kind, start, count = args.browse
        browse(os.environ["LES_INSTRUCTIONS_DB"], kind, int(start), int(count))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    kinds = [k for k in (args.web or "").split(",") if k]
    unknown = set(kinds) - set(WEB_KINDS)
    if unknown:
        parser.error(f"unknown web kinds: {sorted(unknown)}")
    if sum(map(bool, (kinds, args.cancellations, args.relay))) > 1:
        parser.error("--web, --cancellations and --relay measure different work: one at a time")
    plans = {k: _counts(parser, WEB_KINDS[k]) for k in kinds}
    if args.relay:
        plans = {RELAY: _counts(parser, args.relay)}
    elif not kinds:
        plans = {None: _counts(parser, args.cancellations or args.messages)}
    lock = _one_run_at_a_time()
    if lock is None:
        print(
            "another `python -m bench.instructions` is running on this machine: runs "
            f"share Redis databases {WEB_REDIS_DB} and {WEB_CACHE_DB} and empty them, "
            "so two at once spoil each other's counts; wait for it to finish",
            file=sys.stderr,
        )
        return 2
    name = f"les_instructions_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        from webapp.adapters.migrate import upgrade

        database_url = db_url(name)
        upgrade(database_url)
        per_unit = 1  # messages per measured unit (a message, or a cancellation)
        if args.cancellations:
            per_unit = seed_cancellations(database_url, sum(plans[None]))
        else:
            seed(database_url, sum(plans.get(None) or plans.get(RELAY) or (0,)))
        result: dict[str, Any] = {}
        for kind, (small, large) in plans.items():
            first = counted(database_url, 0, small * per_unit, kind, args.job_size)
            second = counted(database_url, small * per_unit, large * per_unit, kind, args.job_size)
            per = round((second.total - first.total) / (large - small))
            per_main = round((second.main_thread - first.main_thread) / (large - small))
            counts = {
                "instructions": [first.total, second.total],
                "main_thread_instructions": [first.main_thread, second.main_thread],
            }
            unit = {None: "message", RELAY: "pass"}.get(kind, "operation")
            if args.cancellations:
                unit = "cancellation"
            measured = {
                f"instructions_per_{unit}": per,
                f"main_thread_instructions_per_{unit}": per_main,
            }
            if args.cancellations:
                result = {"cancellations": [small, large], **counts, "job_size": args.job_size}
                result["messages_per_cancellation"] = per_unit
            elif kind is None:
                result = {"messages": [small, large], **counts, "job_size": args.job_size}
            elif kind == RELAY:
                result = {"passes": [small, large], **counts}
            else:
                result[kind] = {"operations": [small, large], **counts, **measured}
                continue
            result.update(measured)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(result))
    return 0


#: held (``flock``) by the running measurement; the lock goes with its process
LOCK_PATH = Path(tempfile.gettempdir()) / "les-bench-instructions.lock"


def _one_run_at_a_time() -> IO[str] | None:
    """The lock file, locked for this process; None if another run holds it."""
    handle = LOCK_PATH.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _counts(parser: argparse.ArgumentParser, text: str) -> tuple[int, int]:
    small, large = (int(n) for n in text.split(","))
    if not 0 < small < large:
        parser.error("counts need 0 < N1 < N2")
    return small, large


if __name__ == "__main__":
    sys.exit(main())
