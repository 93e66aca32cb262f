"""``make bench``: seed PostgreSQL, start gunicorn + relay + worker on loopback, drive
the scenarios from a separate load-generator process, run the baseline build and a raw
pgbench of the registration transaction, check correctness, and write
``bench/results/<timestamp>.json`` and ``docs/PERFORMANCE.md``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

from bench import report
from bench.loadgen import REQUESTS_PER_CONNECTION
from bench.seed import Seeded, SeedPlan, seed, seed_dead_letters
from bench.stack import ROOT, Stack, WebSettings, metric_delta, wait_for
from bench.stats import summarize, sustained_rate

ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = os.environ.get("BENCH_DB_NAME", "les_bench")
REDIS_BASE = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
REDIS_DB, CACHE_DB = 10, 11  # dedicated numbers: only these two are ever flushed
SECRET_KEY = "bench-secret-key-not-for-production-0123456789"  # noqa: S105
METRICS_TOKEN = "bench-metrics-token"  # noqa: S105

READ_SCENARIOS = ("event_list", "event_detail")
WRITE_SCENARIOS = ("register_free", "register_full", "hot_event", "cancel_promotion")
#: run order: reads first, the paced background-latency run before the cancellations
#: (whose waitlist fan-out keeps the worker busy long after the scenario)
ALL_SCENARIOS = (
    "event_list",
    "event_detail",
    "read_mix",
    "register_free",
    "background",
    "hot_event",
    "register_full",
    "cancel_promotion",
)


@dataclass
class Options:
    quick: bool = False
    duration: float = 6.0
    warmup: float = 1.0
    concurrencies: tuple[int, ...] = (1, 8, 32)
    scenarios: tuple[str, ...] = ALL_SCENARIOS
    baseline_scenarios: tuple[str, ...] = (
        "event_list",
        "event_detail",
        "register_free",
        "read_mix",
    )
    baseline_concurrencies: tuple[int, ...] = (1, 32)
    background_rate: float = 500.0
    #: a rate the machine sustains, for the relay's own latency (issue 3's target)
    background_light_rate: float = 20.0
    background_duration: float = 8.0
    #: outbox messages committed at once for the drain measurement
    background_burst: int = 3000
    pgbench_duration: float = 8.0
    dead_letters: int = 100_000
    #: longest wait for the outbox backlog after a scenario / at the end: long enough
    #: that a write row's drain, and so its sustained rate, is measured (cancellations
    #: left more than 15 s of work on a fast machine, 2,000-2,900 messages)
    settle_s: float = 45.0
    drain_s: float = 45.0
    web: WebSettings = field(default_factory=WebSettings)
    baseline: bool = True
    pgbench: bool = True
    profile: str | None = None
    #: py-spy samples every thread, waiting ones too (wall time), not only the GIL's
    profile_idle: bool = False
    requests_per_connection: int = REQUESTS_PER_CONNECTION
    seed_plan: SeedPlan = field(default_factory=SeedPlan)

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> Options:
        p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
        p.add_argument("--quick", action="store_true", help="short runs (< 2 minutes)")
        p.add_argument("--duration", type=float, help="seconds per scenario and concurrency")
        p.add_argument("--concurrency", type=str, help="comma-separated, default 1,8,32")
        p.add_argument("--scenarios", type=str, help=f"subset of {','.join(ALL_SCENARIOS)}")
        p.add_argument("--worker-class", default=None, help="gunicorn worker class")
        p.add_argument("--workers", type=int, default=None)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument(
            "--web-nice",
            type=int,
            default=None,
            metavar="N",
            help="run the web at niceness N (WEB_CPU_NICE, 0-19), below the relay and "
            "workers; default 0, as in production",
        )
        p.add_argument("--no-baseline", action="store_true")
        p.add_argument("--no-pgbench", action="store_true")
        p.add_argument("--dead-letters", type=int, default=None)
        p.add_argument(
            "--requests-per-connection",
            type=int,
            default=None,
            help="requests a load generator connection serves before its client opens a "
            f"new one, between operations (default {REQUESTS_PER_CONNECTION})",
        )
        p.add_argument(
            "--profile",
            default=None,
            metavar="SCENARIO[:ROLE]",
            help="py-spy the processes of ROLE (web, relay or worker; default web) during "
            "this scenario at the highest concurrency",
        )
        p.add_argument(
            "--profile-idle",
            action="store_true",
            help="with --profile: sample waiting threads too (where a request's wall "
            "time goes), instead of only the thread holding the GIL (its CPU)",
        )
        a = p.parse_args(argv)
        o = cls(quick=a.quick)
        if a.quick:
            o.duration, o.warmup = 1.2, 0.5
            o.concurrencies = (1, 32)
            o.background_duration, o.pgbench_duration = 3.0, 2.0
            o.background_burst = 200
            o.baseline_scenarios = ("event_detail", "register_free")
            o.baseline_concurrencies = (32,)
            o.settle_s, o.drain_s = 0.5, 5.0
            o.dead_letters = 10_000  # the full run proves the 100,000 figure
        if a.duration:
            o.duration = a.duration
        if a.concurrency:
            o.concurrencies = tuple(int(c) for c in a.concurrency.split(","))
        if a.scenarios:
            o.scenarios = tuple(s for s in a.scenarios.split(",") if s)
            unknown = set(o.scenarios) - set(ALL_SCENARIOS)
            if unknown:
                p.error(f"unknown scenarios: {sorted(unknown)}")
        if a.worker_class:
            o.web.worker_class = a.worker_class
        if a.workers:
            o.web.workers = a.workers
        if a.threads:
            o.web.threads = a.threads
        if a.web_nice is not None:
            from webapp.cpu_priority import parse_niceness

            try:  # the service's own rule for WEB_CPU_NICE
                o.web.cpu_nice = parse_niceness(str(a.web_nice), 0)
            except ValueError as error:
                p.error(f"--web-nice: {error}")
        o.baseline = not a.no_baseline
        o.pgbench = not a.no_pgbench
        if a.dead_letters is not None:
            o.dead_letters = a.dead_letters
        if a.requests_per_connection is not None:
            if a.requests_per_connection < 1:
                p.error("--requests-per-connection must be at least 1")
            o.requests_per_connection = a.requests_per_connection
        o.profile = a.profile
        if a.profile_idle and not a.profile:
            p.error("--profile-idle needs --profile SCENARIO[:ROLE]")
        o.profile_idle = a.profile_idle
        return o


def db_url(name: str = DB_NAME) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -- database ---------------------------------------------------------------------------
def recreate_database() -> bool:
    """Drop and create the bench database; returns whether pg_stat_statements works."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    from webapp.adapters.migrate import upgrade

    upgrade(db_url())
    try:
        with psycopg.connect(db_url(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
        return True
    except psycopg.Error:
        return False


def flush_redis() -> None:
    for number in (REDIS_DB, CACHE_DB):
        redis.Redis.from_url(f"{REDIS_BASE}/{number}").flushdb()


def pg_counters(conn: psycopg.Connection[Any], statements: bool) -> dict[str, float]:
    row = conn.execute(
        "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched, "
        "tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = %s",
        (DB_NAME,),
    ).fetchone()
    assert row is not None
    out = {"transactions": float(row[0]), "tuples_read": float(row[1]), "tuples_written": row[2]}
    if statements:
        calls = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d "
            "ON d.oid = s.dbid WHERE d.datname = %s",
            (DB_NAME,),
        ).fetchone()
        out["statements"] = float(calls[0]) if calls else 0.0
    return out


# -- the run ------------------------------------------------------------------------------
def job_enqueue_times(redis_url: str | None = None) -> dict[Any, datetime]:
    """When each outbox message's first finished job went into Redis (RQ's
    ``enqueued_at``), from the outbox queue's finished jobs (kept for the relay's
    ``RESULT_TTL``), by message id; the benchmark's queue database by default."""
    from uuid import UUID

    from rq.job import Job
    from rq.registry import FinishedJobRegistry
    from rq.serializers import JSONSerializer

    from workers import OUTBOX_QUEUE, job_message_ids

    connection = redis.Redis.from_url(redis_url or f"{REDIS_BASE}/{REDIS_DB}")
    registry = FinishedJobRegistry(OUTBOX_QUEUE, connection=connection, serializer=JSONSerializer)
    ids = registry.get_job_ids()
    times: dict[Any, datetime] = {}
    for start in range(0, len(ids), 500):
        for job in Job.fetch_many(ids[start : start + 500], connection, JSONSerializer):
            if job is None or job.enqueued_at is None:
                continue
            at = job.enqueued_at.replace(tzinfo=UTC)
            for message_id in job_message_ids(job):
                key = UUID(message_id)
                times[key] = min(at, times.get(key, at))
    connection.close()
    return times


def app_env(
    database_url: str,
    mailbox: Path,
    *,
    baseline: bool = False,
    redis_db: int = REDIS_DB,
    cache_db: int = CACHE_DB,
) -> dict[str, str]:
    """The app's environment in the benchmark: production settings, but rate limits far
    above the offered load and no trace collector; ``baseline`` turns the cache off and
    runs every handler inline."""
    return {
        "ENV": "production",
        "SECRET_KEY": SECRET_KEY,
        "DATABASE_URL": database_url,
        "REDIS_URL": f"{REDIS_BASE}/{redis_db}",
        "CACHE_REDIS_URL": f"{REDIS_BASE}/{cache_db}",
        "METRICS_TOKEN": METRICS_TOKEN,
        "PUBLIC_BASE_URL": "http://127.0.0.1",
        "MAILBOX_DIR": str(mailbox),
        "SMTP_HOST": "",
        # the load comes from one address: limits far above the offered load
        "RATELIMIT_REGISTRATION": "10000000 per minute",
        "RATELIMIT_LOGIN": "10000000 per minute",
        "CACHE_ENABLED": "false" if baseline else "true",
        "OUTBOX_SYNC_HANDLERS": "true" if baseline else "false",
        # tracing on as in production (spans for Flask, SQLAlchemy, Redis; the sampler
        # of the environment, by default at most TRACES_PER_SECOND new traces a second
        # per process), but no collector runs here: spans are dropped, not exported
        "OTEL_TRACES_EXPORTER": os.environ.get("BENCH_OTEL_TRACES_EXPORTER", "none"),
    }


def tracing_setting(environ: Mapping[str, str]) -> str:
    """Which traces the benchmark's processes record, for the report."""
    from webapp.observability.sampling import parse_traces_per_second

    named = environ.get("OTEL_TRACES_SAMPLER", "").strip()
    if named:
        argument = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        return f"OpenTelemetry's `{named}` sampler" + (f" ({argument})" if argument else "")
    per_second = parse_traces_per_second(environ.get("TRACES_PER_SECOND"))
    return (
        f"at most {per_second:g} new traces a second per process, each recorded whole "
        "(the production default, `TRACES_PER_SECOND`)"
    )


def py_spy_command(pid: int, seconds: int, out: Path, *, idle: bool = False) -> list[str]:
    """py-spy recording ``pid`` and its children for ``seconds`` into ``out`` (raw
    stacks). By default only the thread holding the GIL is sampled: where the CPU
    goes. ``idle`` samples every thread, waiting ones too: where a request's wall time
    goes (a round trip to PostgreSQL or Redis, the wait for the GIL after it)."""
    return [
        str(Path(sys.executable).parent / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--idle" if idle else "--gil",
        "--duration",
        str(seconds),
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]


class Bench:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.workdir = Path(tempfile.mkdtemp(prefix="les-bench-"))
        self.results: dict[str, Any] = {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "quick" if options.quick else "full",
            "machine": machine(),
            "settings": {
                "tracing": tracing_setting(os.environ),
                "duration_s": options.duration,
                "warmup_s": options.warmup,
                "concurrencies": list(options.concurrencies),
                "web": asdict(options.web) | {"description": options.web.describe()},
            },
            "scenarios": [],
            "baseline": {"scenarios": []},
        }
        self.seeded: Seeded | None = None
        self.stat_statements = False
        self.token_cursor = 0
        self.conn: psycopg.Connection[Any] | None = None

    def env(self, baseline: bool) -> dict[str, str]:
        # one mail file per logical mail, both builds
        return app_env(db_url(), self.workdir / "mailbox", baseline=baseline)

    # -- scenario plumbing ------------------------------------------------------------------
    def spec(self, scenario: str, concurrency: int, stage: str) -> dict[str, Any]:
        s = self.seeded
        assert s is not None
        spec: dict[str, Any] = {
            "scenario": scenario,
            "concurrency": concurrency,
            "duration": self.o.duration,
            "warmup": self.o.warmup,
            "email_prefix": f"{stage[0]}{scenario[:3]}{concurrency}x{int(time.time()) % 100000}",
            "seed": concurrency,
            "requests_per_connection": self.o.requests_per_connection,
        }
        if scenario == "event_list":
            spec["event_ids"] = [0]
        elif scenario == "event_detail":
            spec["event_ids"] = s.open_ids + s.full_ids + s.mid_ids
        elif scenario in ("register_free", "background"):
            spec["event_ids"] = s.open_ids
        elif scenario == "register_full":
            spec["event_ids"] = s.full_ids
        elif scenario == "hot_event":
            index = self.o.concurrencies.index(concurrency) if stage == "main" else -1
            spec["event_ids"] = [s.hot_ids[index % len(s.hot_ids)]]
        elif scenario == "cancel_promotion":
            from webapp.services.status_links import make_token

            budget = len(s.cancellable) // max(len(self.o.concurrencies), 1)
            ids = s.cancellable[self.token_cursor : self.token_cursor + budget]
            self.token_cursor += len(ids)
            spec["tokens"] = [make_token(SECRET_KEY, i) for i in ids]
        elif scenario == "read_mix":
            spec["event_ids"] = s.open_ids + s.mid_ids + s.full_ids[:10]
            spec["write_event_ids"] = s.open_ids
        return spec

    def run_scenario(self, stack: Stack, scenario: str, concurrency: int, stage: str) -> dict:
        assert self.conn is not None
        spec = self.spec(scenario, concurrency, stage) | {"port": stack.port}
        before_metrics = stack.metrics()
        before_pg = pg_counters(self.conn, self.stat_statements)
        before_cpu = stack.cpu_seconds()
        before_workers = stack.web_worker_cpu_seconds()
        profiler = self.start_profiler(stack, scenario, concurrency)
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "bench.loadgen"],
            input=json.dumps(spec).encode(),
            capture_output=True,
            cwd=ROOT,
            timeout=spec["duration"] + spec["warmup"] + 60,
            check=False,
        )
        wall = time.perf_counter() - started
        if profiler is not None:
            profiler.wait(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed: {proc.stderr.decode()[-2000:]}")
        result: dict[str, Any] = json.loads(proc.stdout)
        after_cpu = stack.cpu_seconds()
        after_workers = stack.web_worker_cpu_seconds()
        after_pg = pg_counters(self.conn, self.stat_statements)
        after_metrics = stack.metrics()
        requests = max(result["requests"], 1)
        # server-side CPU share over the whole loadgen run (warmup included)
        result["server_cpu_share"] = {
            role: round(used / wall, 3)
            for role, used in Stack.cpu_used(before_cpu, after_cpu).items()
        }
        result["web_workers"] = Stack.worker_shares(before_workers, after_workers, wall)
        result["db_transactions_per_request"] = round(
            (after_pg["transactions"] - before_pg["transactions"]) / requests, 2
        )
        if self.stat_statements:
            result["sql_statements_per_request_all_processes"] = round(
                (after_pg["statements"] - before_pg["statements"]) / requests, 2
            )
        statements = metric_delta(
            before_metrics, after_metrics, "les_db_statement_duration_seconds_count"
        )
        if statements is not None:
            result["sql_statements_per_request_web"] = round(statements / requests, 2)
        waits = metric_delta(before_metrics, after_metrics, "les_db_pool_wait_seconds_count")
        waited = metric_delta(before_metrics, after_metrics, "les_db_pool_wait_seconds_sum")
        if waits:
            #: mean wait for a pooled connection in the web (pool sizing evidence)
            result["db_pool_wait_ms_mean"] = round((waited or 0) / waits * 1000, 3)
            result["db_pool_checkouts_per_request"] = round(waits / requests, 2)
        hits = metric_delta(before_metrics, after_metrics, "les_cache_requests_total", result="hit")
        misses = metric_delta(
            before_metrics, after_metrics, "les_cache_requests_total", result="miss"
        )
        cache_errors = metric_delta(
            before_metrics, after_metrics, "les_cache_requests_total", result="error"
        )
        if hits is not None and misses is not None:
            lookups = hits + misses + (cache_errors or 0)
            result["cache"] = {
                "hits": hits,
                "misses": misses,
                "errors": cache_errors,
                "hit_rate": round(hits / lookups, 4) if lookups else None,
            }
        result["stage"] = stage
        log(
            f"{stage} {scenario} c={concurrency}: {result['requests_per_s']} req/s, "
            f"{result['ops_per_s']} ops/s, errors={result['errors']} "
            f"{primary_latency(result)} loadgen cpu={result['loadgen_cpu_share']}"
        )
        if result["errors"]:
            log(f"  error samples: {result['error_samples'][:3]}")
        return result

    def start_profiler(
        self, stack: Stack, scenario: str, concurrency: int
    ) -> subprocess.Popen[bytes] | None:
        if self.o.profile is None or concurrency != max(self.o.concurrencies):
            return None
        wanted, _, role = self.o.profile.partition(":")
        role = role or "web"
        pids = stack.pids(role)
        if wanted != scenario or not pids:
            return None
        out = ROOT / "var" / "bench" / f"profile-{scenario}-{role}-{int(time.time())}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        log(f"py-spy recording {role} (pid {pids[0]} and its children) -> {out}")
        return subprocess.Popen(
            py_spy_command(
                pids[0], int(self.o.duration + self.o.warmup), out, idle=self.o.profile_idle
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    # -- stages -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        log(f"workdir {self.workdir}")
        self.stat_statements = recreate_database()
        flush_redis()
        self.seeded = seed(db_url(), self.o.seed_plan, random.Random(42))
        self.results["seed"] = self.seeded.summary()
        log(f"seeded {self.results['seed']}")
        self.conn = psycopg.connect(db_url(), autocommit=True)
        autovacuum = self.conn.execute("SHOW autovacuum").fetchone()[0]  # type: ignore[index]
        self.results["vacuum"] = {"server_autovacuum": autovacuum, "runs": 0, "seconds": 0.0}
        self.results["statements_probe"] = statements_probe(self.env(False), self.seeded)
        log(f"SQL statements per request (in-process probe): {self.results['statements_probe']}")

        stack = Stack("main", self.env(False), self.workdir, self.o.web)
        stack.start()
        try:
            # the probe's cancellation mails a 600-person waitlist: let the worker finish
            self.results["initial_settle"] = self.settle(self.o.drain_s)
            for scenario in self.o.scenarios:
                if scenario == "background":
                    self.results["background"] = self.background(stack)
                    self.results["background_light"] = self.background(
                        stack, self.o.background_light_rate
                    )
                    self.results["background_burst"] = self.background_burst(stack)
                    continue
                for concurrency in self.o.concurrencies:
                    result = self.run_scenario(stack, scenario, concurrency, "main")
                    if scenario == "hot_event":
                        result["overbooking"] = self.overbooking(result)
                    result["outbox_after"] = self.settle(self.o.settle_s)
                    result["sustained_ops_per_s"] = sustained_rate(result)
                    self.results["scenarios"].append(result)
            self.results["worker_throughput"] = self.worker_throughput()
            self.results["correctness"] = self.correctness(stack, baseline=False)
            self.results["peak_rss_mb"] = stack.peak_rss
        finally:
            stack.stop()
        self.mail_check(self.results["correctness"], "main")
        log(f"main stage done after {time.perf_counter() - t0:.0f}s")

        if self.o.baseline:
            self.results["baseline"] = self.baseline()
        self.results["dead_letters"] = self.dead_letter_scale()
        if self.o.pgbench:
            self.results["pgbench"] = self.pgbench()
        self.results["ratios"] = report.ratios(self.results)
        self.results["targets"] = report.evaluate_targets(self.results)
        self.results["total_seconds"] = round(time.perf_counter() - t0, 1)
        self.results["machine"]["python_yardstick_ms_end"] = python_yardstick_ms()
        self.conn.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.results

    def overbooking(self, result: dict[str, Any]) -> dict[str, Any]:
        assert self.conn is not None and self.seeded is not None
        rows = self.conn.execute(
            'SELECT e."Id", e."Capacity", e."ConfirmedCount", e."WaitlistCount", '
            '(SELECT count(*) FROM "EventRegistrations" r WHERE r."EventId" = e."Id" '
            'AND r."Status" = \'Confirmed\') FROM "Events" e WHERE e."Id" = ANY(%s)',
            (self.seeded.hot_ids,),
        ).fetchall()
        over = [r[0] for r in rows if r[2] > r[1] or r[4] > r[1]]
        return {"overbooked_events": over, "events": [list(r) for r in rows]}

    def background(self, stack: Stack, rate: float | None = None) -> dict[str, Any]:
        """Paced registrations (``rate``, default the target rate), then commit ->
        handler done per message."""
        assert self.conn is not None
        rate = rate or self.o.background_rate
        self.settle(self.o.drain_s)  # start with an empty outbox
        since = self.conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        spec = self.spec("background", 32, "main") | {
            "port": stack.port,
            "rate": rate,
            "duration": self.o.background_duration,
            "warmup": 0,
        }
        proc = subprocess.run(
            [sys.executable, "-m", "bench.loadgen"],
            input=json.dumps(spec).encode(),
            capture_output=True,
            cwd=ROOT,
            timeout=spec["duration"] + 60,
            check=True,
        )
        load = json.loads(proc.stdout)
        drained = wait_for(lambda: self.pending(since) == 0, timeout=self.o.drain_s)
        rows = self.conn.execute(
            'SELECT "Type", extract(epoch FROM ("ProcessedAt" - "CreatedAt")) '
            'FROM "OutboxMessages" WHERE "CreatedAt" >= %s AND "ProcessedAt" IS NOT NULL',
            (since,),
        ).fetchall()
        inbox = self.conn.execute(
            'SELECT extract(epoch FROM (p."ProcessedAt" - m."CreatedAt")) FROM '
            '"ProcessedMessages" p JOIN "OutboxMessages" m ON m."Id" = p."MessageId" '
            'WHERE m."CreatedAt" >= %s',
            (since,),
        ).fetchall()
        split = self.conn.execute(
            'SELECT extract(epoch FROM ("DispatchedAt" - "CreatedAt")), '
            'extract(epoch FROM ("ProcessedAt" - "DispatchedAt")) FROM "OutboxMessages" '
            'WHERE "CreatedAt" >= %s AND "ProcessedAt" IS NOT NULL '
            'AND "DispatchedAt" IS NOT NULL',
            (since,),
        ).fetchall()
        handled = self.conn.execute(
            'SELECT "Id", "CreatedAt", "ProcessedAt" FROM "OutboxMessages" '
            'WHERE "CreatedAt" >= %s AND "ProcessedAt" IS NOT NULL',
            (since,),
        ).fetchall()
        enqueued = job_enqueue_times()
        queued = [
            ((enqueued[i] - created).total_seconds(), (processed - enqueued[i]).total_seconds())
            for i, created, processed in handled
            if i in enqueued
        ]
        by_type: dict[str, list[float]] = {}
        for kind, seconds in rows:
            by_type.setdefault(kind, []).append(float(seconds))
        every = [float(s) for _, s in rows]
        result = {
            "target_rate_per_s": rate,
            "achieved_registrations_per_s": load["ops_per_s"],
            "load_errors": load["errors"],
            "load_error_samples": load["error_samples"][:3],
            "post_latency_ms": load["latency_ms"].get("post"),
            "drained": drained,
            "pending_after_wait": self.pending(since),
            "messages": len(every),
            "commit_to_done_ms": summarize(every),
            #: to each handler's inbox row, written when the handler starts (it commits
            #: with the handler's writes), or at its end for a handler with checkpoints
            "commit_to_inbox_row_ms": summarize(float(r[0]) for r in inbox),
            #: the relay's claim marks a message dispatched (DispatchedAt), just before
            #: its job goes to Redis: commit -> claimed, and claimed -> done
            "commit_to_dispatch_ms": summarize(float(a) for a, _ in split),
            "dispatch_to_done_ms": summarize(float(b) for _, b in split),
            #: relay share (commit -> job in Redis, RQ's ``enqueued_at`` of the message's
            #: first job) and worker share (job in Redis -> done)
            "commit_to_enqueued_ms": summarize(a for a, _ in queued),
            "enqueued_to_done_ms": summarize(b for _, b in queued),
            "by_type_ms": {k: summarize(v) for k, v in sorted(by_type.items())},
        }
        log(
            f"background: {load['ops_per_s']} reg/s (target {rate}), "
            f"commit->done {result['commit_to_done_ms']}"
        )
        return result

    def background_burst(self, stack: Stack) -> dict[str, Any]:
        """The relay and workers alone, with both cores: ``background_burst``
        RegistrationCreated messages of seeded registrations committed in one
        transaction (as a burst of registrations leaves them), then the time until
        the last is processed, and the relay's and workers' CPU meanwhile."""
        assert self.conn is not None
        n = self.o.background_burst
        self.settle(self.o.drain_s)
        before = stack.cpu_seconds()
        started = time.perf_counter()
        with self.conn.transaction():
            since = self.conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            self.conn.execute(
                'INSERT INTO "OutboxMessages" ("Id", "Type", "Data", "CreatedAt", '
                '"RetryCount", "MaxRetryCount", "EventId") '
                "SELECT gen_random_uuid(), 'RegistrationCreated', "
                "json_build_object('event_id', r.\"EventId\", 'registration_id', "
                'r."Id"::text, \'attendee_id\', r."UserId"::text, \'status\', r."Status", '
                "'position', NULL)::text, now(), 0, 3, r.\"EventId\" "
                'FROM "EventRegistrations" r WHERE r."Status" = \'Confirmed\' '
                "ORDER BY random() LIMIT %s",
                (n,),
            )
        drained = wait_for(lambda: self.pending(since) == 0, timeout=max(self.o.drain_s, 120))
        wall = time.perf_counter() - started
        cpu = Stack.cpu_used(before, stack.cpu_seconds())
        latencies = [
            float(r[0])
            for r in self.conn.execute(
                'SELECT extract(epoch FROM ("ProcessedAt" - "CreatedAt")) FROM "OutboxMessages" '
                'WHERE "CreatedAt" >= %s AND "ProcessedAt" IS NOT NULL',
                (since,),
            )
        ]
        # one transaction wrote them all (CreatedAt = its now()): the drain took as
        # long as the slowest message's commit -> done
        done, span = len(latencies), max(latencies, default=0.0)
        result = {
            "messages": n,
            "processed": done,
            "drained": drained,
            "drain_s": round(span, 2),
            "messages_per_s": round(done / span, 1) if span else None,
            "commit_to_done_ms": summarize(latencies),
            "cpu_cores": {role: round(used / wall, 2) for role, used in cpu.items()},
            "cpu_ms_per_message": {
                role: round(used / max(done, 1) * 1000, 2)
                for role, used in cpu.items()
                if role in ("relay", "worker")
            },
        }
        log(f"background burst: {result}")
        return result

    def settle(self, limit: float) -> dict[str, Any]:
        """Let the relay and worker catch up (bounded) so the next scenario starts quiet;
        records the backlog left by this one and how long it took to drain."""
        backlog = self.pending()
        started = time.perf_counter()
        # polled often: the drain time counts against the scenario's sustained rate
        drained = (
            wait_for(lambda: self.pending() == 0, timeout=limit, interval=0.05) if backlog else True
        )
        drain_s = round(time.perf_counter() - started, 2) if backlog else 0.0
        self.vacuum()
        return {
            "pending_at_end": backlog,
            "drained": drained,
            "pending_after_wait": 0 if drained else self.pending(),
            #: until the outbox was empty (None: not within ``limit``)
            "drain_s": drain_s if drained else None,
            "wait_s": round(time.perf_counter() - started, 2),
        }

    def vacuum(self) -> None:
        """Where the server's autovacuum is off (as on the shared test server here),
        vacuum between runs, outside the timed windows, as autovacuum would in
        production: without it the outbox's dead row versions pile up from scenario
        to scenario (each message is updated three or four times) and slow every
        later run's relay and workers (migration 0007)."""
        assert self.conn is not None
        record = self.results["vacuum"]
        if record["server_autovacuum"] == "on":
            return
        started = time.perf_counter()
        self.conn.execute("VACUUM (ANALYZE)")
        record["runs"] += 1
        record["seconds"] = round(record["seconds"] + time.perf_counter() - started, 2)

    def worker_throughput(self) -> dict[str, Any]:
        """Handler runs and mails per second over the whole run, from the inbox rows."""
        assert self.conn is not None
        row = self.conn.execute(
            'SELECT count(*), extract(epoch FROM max("ProcessedAt") - min("ProcessedAt")) '
            'FROM "ProcessedMessages"'
        ).fetchone()
        assert row is not None
        runs, span = int(row[0]), float(row[1] or 0)
        busiest = self.conn.execute(
            'SELECT count(*) FROM "ProcessedMessages" '
            "GROUP BY date_trunc('second', \"ProcessedAt\") ORDER BY 1 DESC LIMIT 10"
        ).fetchall()
        return {
            "handler_runs": runs,
            "span_s": round(span, 1),
            "handler_runs_per_s_average": round(runs / span, 1) if span else None,
            #: mean of the ten busiest seconds: the worker pool's capacity when saturated
            "handler_runs_per_s_busiest": round(sum(r[0] for r in busiest) / len(busiest), 1)
            if busiest
            else None,
        }

    def pending(self, since: Any = None) -> int:
        assert self.conn is not None
        query = (
            'SELECT count(*) FROM "OutboxMessages" WHERE "ProcessedAt" IS NULL '
            'AND "DeadLetteredAt" IS NULL AND "ArchivedAt" IS NULL'
        )
        params: tuple[Any, ...] = ()
        if since is not None:
            query += ' AND "CreatedAt" >= %s'
            params = (since,)
        row = self.conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0

    def correctness(self, stack: Stack | None, baseline: bool) -> dict[str, Any]:
        assert self.conn is not None
        drained = wait_for(lambda: self.pending() == 0, timeout=self.o.drain_s)
        c = self.conn
        over = c.execute(
            'SELECT count(*) FROM "Events" e WHERE e."ConfirmedCount" > e."Capacity" OR '
            '(SELECT count(*) FROM "EventRegistrations" r WHERE r."EventId" = e."Id" '
            'AND r."Status" = \'Confirmed\') > e."Capacity"'
        ).fetchone()[0]  # type: ignore[index]
        counters_off = c.execute(
            'SELECT count(*) FROM "Events" e LEFT JOIN (SELECT "EventId", '
            "count(*) FILTER (WHERE \"Status\" = 'Confirmed') AS conf, "
            "count(*) FILTER (WHERE \"Status\" = 'Waitlisted') AS wait "
            'FROM "EventRegistrations" GROUP BY "EventId") r ON r."EventId" = e."Id" '
            'WHERE coalesce(r.conf, 0) <> e."ConfirmedCount" '
            'OR coalesce(r.wait, 0) <> e."WaitlistCount"'
        ).fetchone()[0]  # type: ignore[index]
        duplicates = c.execute(
            'SELECT count(*) FROM (SELECT 1 FROM "EventRegistrations" '
            'WHERE "Status" <> \'Cancelled\' GROUP BY "EventId", "UserId" '
            "HAVING count(*) > 1) d"
        ).fetchone()[0]  # type: ignore[index]
        seats_wasted = c.execute(
            'SELECT count(*) FROM "Events" WHERE "ConfirmedCount" < "Capacity" '
            'AND "WaitlistCount" > 0'
        ).fetchone()[0]  # type: ignore[index]
        outbox = dict(
            c.execute(
                "SELECT CASE WHEN \"ProcessedAt\" IS NOT NULL THEN 'processed' "
                "WHEN \"DeadLetteredAt\" IS NOT NULL THEN 'dead' ELSE 'pending' END, count(*) "
                'FROM "OutboxMessages" GROUP BY 1'
            ).fetchall()
        )
        # the baseline build never reads or writes the cache: what the main build left
        # there (until its entries expire) says nothing about the baseline's writes
        stale = None if baseline else self.stale_cached_counts()
        stale_registrations = None if baseline else self.stale_cached_registrations()
        result = {
            "outbox_drained": drained,
            "events_over_capacity": over,
            "events_with_counter_mismatch": counters_off,
            "duplicate_active_registrations": duplicates,
            "free_seats_with_waitlist": seats_wasted,
            "events_with_stale_cached_counts": stale,
            "stale_cached_registrations": stale_registrations,
            "outbox": outbox,
        }
        result["ok"] = (
            drained
            and over == 0
            and counters_off == 0
            and duplicates == 0
            and seats_wasted == 0
            and not stale
            and not stale_registrations
            and outbox.get("pending", 0) == 0
        )
        return result

    def stale_cached_counts(self) -> int:
        """Events whose counts in the cache (Redis) differ from the database: the
        writers store their own committed counts, in whatever order their after-commit
        hooks run, so a wrong guard would show here."""
        from webapp.adapters.cache import key_prefix, loads

        assert self.conn is not None
        rows = self.conn.execute(
            'SELECT "Id", "Capacity", "ConfirmedCount", "WaitlistCount" FROM "Events"'
        ).fetchall()
        cache = redis.Redis.from_url(f"{REDIS_BASE}/{CACHE_DB}")
        prefix = key_prefix({"DATABASE_URL": db_url()})
        cached = cache.mget([f"{prefix}counts:{row[0]}" for row in rows])
        stale = 0
        for row, raw in zip(rows, cached, strict=True):
            if raw is None:
                continue
            value = loads(raw)
            stale += value != {
                "capacity": row[1],
                "confirmed_count": row[2],
                "waitlist_count": row[3],
            }
        return stale

    def stale_cached_registrations(self) -> int:
        """Cached registration records (status, queue key, cancellation time) and
        cached waitlist positions that differ from the database. Writers store the
        records they changed and the places they added with their commits, each under
        the generation read before it: a wrong guard would show here."""
        from webapp.adapters.cache import key_prefix, loads

        assert self.conn is not None
        cache = redis.Redis.from_url(f"{REDIS_BASE}/{CACHE_DB}")
        prefix = key_prefix({"DATABASE_URL": db_url()})
        stale = 0
        keys = list(cache.scan_iter(match=f"{prefix}registration:*", count=1000))
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            cached = {
                str(value["registration_id"]): value
                for value in (loads(raw) for raw in cache.mget(batch) if raw is not None)
            }
            rows = self.conn.execute(
                'SELECT "Id"::text, "Status", "PositionInQueue", "CancelledAt" '
                'FROM "EventRegistrations" WHERE "Id" = ANY(%s::uuid[])',
                (list(cached),),
            ).fetchall()
            actual = {row[0]: row[1:] for row in rows}
            for registration_id, value in cached.items():
                mine = (value["status"], value["queue_key"], value["cancelled_at"])
                stale += actual.get(registration_id) != mine
        for key in cache.scan_iter(match=f"{prefix}waitlist:*", count=1000):
            event_id = int(key.decode().rsplit(":", 1)[1])
            positions = dict(
                self.conn.execute(
                    'SELECT "PositionInQueue", row_number() OVER (ORDER BY "PositionInQueue") '
                    'FROM "EventRegistrations" WHERE "EventId" = %s AND "Status" = %s',
                    (event_id, "Waitlisted"),
                ).fetchall()
            )
            for queue_key, raw in cache.hgetall(key).items():
                stale += positions.get(int(queue_key)) != loads(raw)
        return stale

    def mail_check(self, result: dict[str, Any], label: str) -> None:
        """After the processes stopped (nothing in flight): one mail file per mail the
        handlers recorded as sent in the inbox (a file is written before its inbox row
        commits, so a job killed in between leaves one file more, never one less)."""
        assert self.conn is not None
        expected = expected_mails(self.conn)
        mailbox = self.workdir / "mailbox"
        mails = len(list(mailbox.glob("*.eml"))) if mailbox.exists() else 0
        result["mails_written"] = mails
        result["mails_expected"] = expected
        result["mails_match"] = expected is None or mails == expected["total"]
        result["ok"] = bool(result["ok"] and result["mails_match"])
        log(f"correctness ({label}): {result}")

    def baseline(self) -> dict[str, Any]:
        """The same app with caching off and every handler run inline (synchronously)."""
        assert self.conn is not None
        log("baseline build: CACHE_ENABLED=false, OUTBOX_SYNC_HANDLERS=true")
        stack = Stack("baseline", self.env(True), self.workdir, self.o.web)
        stack.start()
        out: dict[str, Any] = {"scenarios": []}
        try:
            for scenario in self.o.baseline_scenarios:
                for concurrency in self.o.baseline_concurrencies:
                    self.vacuum()
                    out["scenarios"].append(
                        self.run_scenario(stack, scenario, concurrency, "baseline")
                    )
            out["correctness"] = self.correctness(stack, baseline=True)
            out["peak_rss_mb"] = stack.peak_rss
        finally:
            stack.stop()
        self.mail_check(out["correctness"], "baseline")
        return out

    def dead_letter_scale(self) -> dict[str, Any]:
        assert self.seeded is not None
        count = self.o.dead_letters
        if count <= 0:
            return {"dead_letters": 0, "available": False}
        seconds = seed_dead_letters(db_url(), count, self.seeded.open_ids + self.seeded.full_ids)
        log(f"seeded {count} dead letters in {seconds:.1f}s")
        return {"dead_letters": count, "seed_seconds": round(seconds, 2)} | time_dashboard(
            self.env(False), self.seeded
        )

    def pgbench(self) -> dict[str, Any]:
        """The transaction over the open events (as register_free spreads its load),
        and at 32 clients on one event row (as the hot event concentrates it): what
        PostgreSQL alone does when every registration queues for the same row lock.
        The one event is an open one (capacity 100,000), as pgbench does not check
        capacity and the hot events' capacities are checked at the end."""
        assert self.seeded is not None
        out: dict[str, Any] = {"script": "bench/pgbench_register.sql", "runs": [], "one_event": []}
        duration, workdir = self.o.pgbench_duration, self.workdir
        for clients in (1, 32):
            out["runs"].append(run_pgbench(clients, duration, self.seeded.open_ids, workdir))
            log(f"pgbench c={clients}: {out['runs'][-1]}")
        one = self.seeded.open_ids[:1]
        out["one_event"].append(run_pgbench(32, duration, one, workdir, name="one-event"))
        log(f"pgbench c=32, one event row: {out['one_event'][-1]}")
        return out


def primary_latency(result: dict[str, Any]) -> str:
    kind = report.primary_kind(result["scenario"])
    lat = result["latency_ms"].get(kind) or {}
    return f"{kind} p50={lat.get('p50')} p95={lat.get('p95')} p99={lat.get('p99')} ms"


def expected_mails(conn: psycopg.Connection[Any]) -> dict[str, int] | None:
    """Mails the handlers recorded as done (one inbox row per mail-sending handler run
    and per waitlist notice): compared with the files in MAILBOX_DIR."""
    rows = conn.execute(  # per-recipient keys ("waitlist-notice/<id>") grouped
        """SELECT split_part("Handler", '/', 1), count(*) FROM "ProcessedMessages" GROUP BY 1"""
    ).fetchall()
    if not rows:
        return None
    by_handler = {str(h): int(n) for h, n in rows}
    mail = {
        h: n
        for h, n in by_handler.items()
        if "mail" in h.lower() or h.startswith("waitlist-notice")
    }
    return {"total": sum(mail.values()), "by_handler": by_handler}


def python_yardstick_ms() -> dict[str, float]:
    """Milliseconds of a fixed pure-Python workload (JSON, dicts, strings, sorting), best
    and median of 15: this machine's speed for pure Python at the moment, a record of
    its drift. It does not predict the service's figures (two runs with the same
    yardstick served one page at 540 and 283 requests/s). Lower is faster."""
    import timeit

    data = {"id": 7, "title": "Event " * 10, "seats": list(range(60)), "venue": {"a": "b" * 80}}

    def work() -> None:
        for i in range(200):
            text = json.dumps(data)
            json.loads(text)
            f"{i}:{text[:40]}".upper().split(":")
            sorted(data["seats"], reverse=True)  # type: ignore[call-overload]

    times = sorted(t / 3 * 1000 for t in timeit.repeat(work, number=3, repeat=15))
    return {"best": round(times[0], 2), "median": round(statistics.median(times), 2)}


def machine() -> dict[str, Any]:
    freq = psutil.cpu_freq()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(ADMIN_URL) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    return {
        "cpu_cores": psutil.cpu_count(logical=True),
        "cpu_model": model,
        "cpu_mhz": round(freq.current) if freq else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "redis": redis.Redis.from_url(f"{REDIS_BASE}/{REDIS_DB}").info()["redis_version"],
        "os": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python_yardstick_ms": python_yardstick_ms(),
    }


# -- in-process measurements (the web's own code, no HTTP in between) -----------------------
def app_from_env(env: dict[str, str]) -> Any:
    """The app as gunicorn builds it, from ``env`` (set in this process), request logs off."""
    import logging

    os.environ.update(env)
    from webapp import create_app

    app = create_app()
    logging.getLogger("les").setLevel(logging.WARNING)  # no request log lines in our output
    return app


def statements_probe(env: dict[str, str], seeded: Seeded) -> dict[str, Any]:
    """Exact SQL statements per request of each hot page, cache cold and warm, counted
    with a SQLAlchemy cursor hook inside the app (Flask test client, same database and
    cache as the benchmark)."""
    from sqlalchemy import event

    from webapp.extensions import get_db

    app = app_from_env(env)
    engine = get_db(app).engine
    counter: dict[str, Any] = {"n": 0, "sql": [], "background": 0}
    request_thread = threading.get_ident()  # the test client runs requests in this thread

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.get_ident() != request_thread:  # e.g. the cache warmer's thread
            counter["background"] += 1
            return
        counter["n"] += 1
        counter["sql"].append(" ".join(statement.split())[:90])

    event.listen(engine, "before_cursor_execute", count)
    client = app.test_client()
    base = "https://localhost"
    headers = {"Referer": base + "/"}
    out: dict[str, Any] = {}

    def measure(name: str, method: str, path: str, data: dict[str, str] | None = None) -> Any:
        counter["n"], counter["sql"], counter["background"] = 0, [], 0
        response = client.open(path, method=method, data=data, base_url=base, headers=headers)
        time.sleep(0.3)  # let after-commit background work (cache warming) show up
        out[name] = {
            "statements": counter["n"],
            "status": response.status_code,
            #: statements other threads of the process ran meanwhile (cache warming)
            "background_statements": counter["background"],
        }
        if method == "POST":
            out[name]["sql"] = counter["sql"]
        return response

    from bench.loadgen import form_fields

    event_id = seeded.open_ids[-1]
    full_id = seeded.full_ids[-1]
    redis.Redis.from_url(env["CACHE_REDIS_URL"]).flushdb()
    measure("event_list_cold", "GET", "/")
    measure("event_list_warm", "GET", "/")
    measure("event_detail_cold", "GET", f"/events/{event_id}")
    page = measure("event_detail_warm", "GET", f"/events/{event_id}")
    fields = form_fields(page.data)
    fields.update(name="Probe Person", email="probe-1@bench.example.com")
    posted = measure("register_post", "POST", f"/events/{event_id}/register", fields)
    location = posted.headers.get("Location", "/")
    measure("status_after_register", "GET", location)
    measure("status_warm", "GET", location)
    page = measure("register_full_form", "GET", f"/events/{full_id}")
    fields = form_fields(page.data)
    fields.update(name="Probe Person", email="probe-2@bench.example.com")
    measure("register_post_waitlist", "POST", f"/events/{full_id}/register", fields)
    from webapp.services.status_links import make_token

    token = make_token(SECRET_KEY, seeded.cancellable.pop())  # pop: never reused by the load
    page = measure("cancel_form", "GET", f"/registrations/{token}/cancel")
    fields = form_fields(page.data)
    measure("cancel_post_with_promotion", "POST", f"/registrations/{token}/cancel", fields)
    event.remove(engine, "before_cursor_execute", count)
    out["cpu_ms_per_request"] = cpu_per_request(client, base, headers, seeded)
    out["worker_per_message"] = worker_per_message(app)
    engine.dispose()
    return out


def worker_per_message(app: Any) -> dict[str, Any]:
    """CPU time and SQL statements of the worker's job code per outbox message
    (in-process, no RQ in between): the RegistrationCreated messages of the CPU
    probe's registrations, handled the way one worker job handles them. The stack
    is not running yet, so nothing else claims them."""
    from sqlalchemy import event, select

    from webapp.adapters.mail import make_mailer
    from webapp.adapters.tables import outbox_messages
    from webapp.extensions import get_db
    from webapp.services.delivery import Deliverer

    o = outbox_messages.c
    db = get_db(app)
    with db.engine.connect() as conn:
        ids = [
            row[0]
            for row in conn.execute(
                select(o.Id)
                .where(o.ProcessedAt.is_(None), o.Type == "RegistrationCreated")
                .order_by(o.CreatedAt)
            )
        ]
    if not ids:
        return {"messages": 0}
    deliverer = Deliverer(db, make_mailer(app.config), app.config, "bench-probe")
    statements = {"n": 0}

    def count(*_args: Any) -> None:
        statements["n"] += 1

    event.listen(db.engine, "before_cursor_execute", count)
    started = time.process_time()
    try:
        outcomes = deliverer.process_many(ids)
    finally:
        cpu = time.process_time() - started
        event.remove(db.engine, "before_cursor_execute", count)
    return {
        "messages": len(ids),
        "processed": sum(1 for outcome in outcomes if outcome.status == "processed"),
        "cpu_ms_per_message": round(cpu / len(ids) * 1000, 3),
        "statements_per_message": round(statements["n"] / len(ids), 2),
    }


def cpu_per_request(client: Any, base: str, headers: dict[str, str], seeded: Seeded) -> dict:
    """CPU time of the app's own work per request (Flask test client, warm cache, no
    HTTP server): the ceiling on throughput is cores / this. Median of 5 batches."""
    from bench.loadgen import form_fields

    def timed(call: Any, n: int) -> float:
        batches = []
        for _ in range(5):
            started = time.process_time()
            for i in range(n):
                call(i)
            batches.append((time.process_time() - started) / n * 1000)
        return round(sorted(batches)[2], 3)

    event_id = seeded.open_ids[-2]
    counter = {"n": 0}
    #: the request thread's own CPU per step of the flow (background threads excluded)
    steps: dict[str, list[float]] = {"form_get": [], "post": [], "status_get": []}

    def step(name: str, call: Any) -> Any:
        started = time.thread_time()
        result = call()
        steps[name].append((time.thread_time() - started) * 1000)
        return result

    def register(_i: int) -> None:
        counter["n"] += 1
        page = step(
            "form_get",
            lambda: client.get(f"/events/{event_id}", base_url=base, headers=headers),
        )
        fields = form_fields(page.data)
        fields.update(name="Cpu Probe", email=f"cpu-{counter['n']}@bench.example.com")
        posted = step(
            "post",
            lambda: client.post(
                f"/events/{event_id}/register", data=fields, base_url=base, headers=headers
            ),
        )
        assert posted.status_code == 303, posted.status_code
        step(
            "status_get",
            lambda: client.get(posted.headers["Location"], base_url=base, headers=headers),
        )

    client.get("/", base_url=base, headers=headers)
    client.get(f"/events/{event_id}", base_url=base, headers=headers)
    return {
        "event_list": timed(lambda _i: client.get("/", base_url=base, headers=headers), 40),
        "event_detail": timed(
            lambda _i: client.get(f"/events/{event_id}", base_url=base, headers=headers), 40
        ),
        "registration_flow_3_requests": timed(register, 8),
        **{
            f"registration_{name}_request_thread": round(statistics.median(values), 3)
            for name, values in steps.items()
        },
    }


def time_dashboard(env: dict[str, str], seeded: Seeded) -> dict[str, Any]:
    """Server time of the dead-letter list, filters and group counts (the dashboard's own
    query functions), median and worst of 5 runs each."""
    try:
        from webapp.adapters import dashboard_queries as dq
    except ModuleNotFoundError:
        return {"available": False}
    from datetime import timedelta

    from webapp.extensions import get_db

    app = app_from_env(env)
    engine = get_db(app).engine
    today = datetime.now(UTC).date()
    filters = {
        "none": dq.DeadLetterFilter(),
        "type": dq.DeadLetterFilter(type="RegistrationPromoted"),
        "error_type": dq.DeadLetterFilter(error_type="SMTPServerDisconnected"),
        "text": dq.DeadLetterFilter(text="dead letter 4242,"),
        # broad searches: an error class (1 in 6 dead letters), and a term in every one
        "text_broad": dq.DeadLetterFilter(text="SMTPServerDisconnected"),
        "text_all": dq.DeadLetterFilter(text="example.com"),
        "date_range": dq.DeadLetterFilter(since=today - timedelta(days=3), until=today),
        "event_id": dq.DeadLetterFilter(event_id=seeded.open_ids[3]),
        "combined": dq.DeadLetterFilter(
            type="RegistrationCreated",
            error_type="TimeoutError",
            since=today - timedelta(days=7),
        ),
    }
    timings: dict[str, Any] = {}
    with engine.connect() as conn:
        fingerprint = dq.dead_letter_groups(conn, dq.DeadLetterFilter(), limit=1)[0]["Fingerprint"]
        filters["fingerprint"] = dq.DeadLetterFilter(fingerprint=fingerprint)
        calls: dict[str, Any] = {}
        for name, flt in filters.items():
            calls[f"page[{name}]"] = lambda f=flt: dq.dead_letter_page(conn, f, 0, 50)
            calls[f"page_deep[{name}]"] = lambda f=flt: dq.dead_letter_page(conn, f, 5000, 50)
            calls[f"count[{name}]"] = lambda f=flt: dq.dead_letter_count(conn, f)
            calls[f"groups[{name}]"] = lambda f=flt: dq.dead_letter_groups(conn, f)
        calls["facets[Type]"] = lambda: dq.facet_counts(conn, "Type")
        calls["facets[ErrorType]"] = lambda: dq.facet_counts(conn, "ErrorType")
        calls["facets"] = lambda: dq.facets(conn)  # both in one pass, as the list page does
        calls["outbox_counts"] = lambda: dq.outbox_counts(conn)
        for name, call in calls.items():
            samples = []
            rows = None
            for _ in range(5):
                started = time.perf_counter()
                value = call()
                samples.append(time.perf_counter() - started)
                rows = len(value) if isinstance(value, list | dict) else value
            samples.sort()
            timings[name] = {
                "median_ms": round(samples[2] * 1000, 1),
                "max_ms": round(samples[-1] * 1000, 1),
                "result": rows,
            }
    pages = time_dashboard_pages(app, filters)
    engine.dispose()
    worst = max(t["max_ms"] for t in timings.values())
    slow = sorted((n for n, t in timings.items() if t["median_ms"] >= 300), key=str)
    log(f"dashboard queries: worst {worst} ms; over 300 ms: {slow}")
    if pages:
        log(f"dashboard pages: worst {max(t['max_ms'] for t in pages.values())} ms")
    return {
        "available": True,
        "timings": timings,
        "worst_ms": worst,
        "over_300ms": slow,
        "pages": pages,
        "pages_worst_ms": max((t["max_ms"] for t in pages.values()), default=None),
    }


def time_dashboard_pages(app: Any, filters: dict[str, Any]) -> dict[str, Any]:
    """Whole requests of the operator's dead-letter pages (login, role check, queries,
    template), signed in as an operator: Flask test client, so server time only."""
    import secrets

    from bench.loadgen import form_fields

    try:
        from webapp.services import staff
    except ModuleNotFoundError:
        return {}
    password = secrets.token_urlsafe(24)
    with app.app_context():
        staff.create_user(
            "bench-operator@bench.example.com", "Bench Operator", "operator", password
        )
    client = app.test_client()
    base = "https://localhost"
    headers = {"Referer": base + "/"}
    page = client.get("/login", base_url=base, headers=headers)
    fields = form_fields(page.data)
    fields.update(email="bench-operator@bench.example.com", password=password)
    signed_in = client.post("/login", data=fields, base_url=base, headers=headers)
    if signed_in.status_code != 302:
        return {"error": {"median_ms": None, "max_ms": None, "status": signed_in.status_code}}
    urls = {"overview": "/admin/operator/"}
    for name, flt in filters.items():
        query = "&".join(f"{k}={v}" for k, v in flt.to_args().items())
        urls[f"list[{name}]"] = f"/admin/operator/dead-letters?{query}"
        urls[f"groups[{name}]"] = f"/admin/operator/dead-letters?part=summary&{query}"
    timings: dict[str, Any] = {}
    for name, url in urls.items():
        hx = {"HX-Request": "true"} if name.startswith("groups[") else {}
        samples, status = [], 0
        for _ in range(5):
            started = time.perf_counter()
            response = client.get(url, base_url=base, headers=headers | hx)
            samples.append(time.perf_counter() - started)
            status = response.status_code
        samples.sort()
        timings[name] = {
            "median_ms": round(samples[2] * 1000, 1),
            "max_ms": round(samples[-1] * 1000, 1),
            "status": status,
        }
    return timings


# -- pgbench ------------------------------------------------------------------------------
def run_pgbench(
    clients: int, duration: float, event_ids: list[int], workdir: Path, name: str = "spread"
) -> dict:
    """The registration transaction's SQL with no Python in the way."""
    logdir = workdir / f"pgbench-{name}-{clients}"
    logdir.mkdir(parents=True, exist_ok=True)
    url = psycopg.conninfo.conninfo_to_dict(db_url())
    argv = [
        "pgbench",
        "-n",
        "-h",
        str(url.get("host", "127.0.0.1")),
        "-p",
        str(url.get("port", 5432)),
        "-U",
        str(url.get("user", "postgres")),
        "-f",
        str(ROOT / "bench" / "pgbench_register.sql"),
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(max(int(duration), 1)),
        "-M",
        "prepared",
        "-D",
        f"min_event={min(event_ids)}",
        "-D",
        f"max_event={max(event_ids)}",
        "-l",
        "--log-prefix",
        str(logdir / "log"),
        DB_NAME,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=workdir)
    if proc.returncode != 0:
        return {"clients": clients, "error": proc.stderr[-1000:]}
    tps = None
    for line in proc.stdout.splitlines():
        if line.startswith("tps =") and "without initial" in line:
            tps = float(line.split("=")[1].split()[0])
    latencies = []
    for path in logdir.glob("log*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]) / 1e6)
    failed = sum(1 for line in proc.stdout.splitlines() if "failed" in line and "0 (" not in line)
    return {"clients": clients, "tps": tps, "latency_ms": summarize(latencies), "failed": failed}


def main(argv: list[str] | None = None) -> int:
    options = Options.parse(argv)
    bench = Bench(options)
    results = bench.run()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = ROOT / "bench" / "results" / f"{stamp}{'-quick' if options.quick else ''}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    docs = ROOT / "docs" / "PERFORMANCE.md"
    docs.parent.mkdir(exist_ok=True)
    analysis_file = ROOT / "bench" / "ANALYSIS.md"
    analysis = analysis_file.read_text() if analysis_file.exists() else ""
    docs.write_text(report.markdown(results, path.relative_to(ROOT).as_posix(), analysis))
    log(f"wrote {path.relative_to(ROOT)} and docs/PERFORMANCE.md in {results['total_seconds']}s")
    log(f"targets: {report.target_tally(results['targets'])}")
    return 0
