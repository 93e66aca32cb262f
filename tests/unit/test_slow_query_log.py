"""The "slow query" log lines (``webapp.observability.collectors.SlowQueryLog``): the
first slow statement of a kind and table is logged at once; those after it within
the interval are counted, and the next line says how many were not logged and the
slowest of them. Other kinds and tables have their own interval; 0 logs them all."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from tests.unit.fake_clock import Clock
from webapp.observability.collectors import SlowQueryLog

LOCK = 'SELECT "Events"."Id" FROM "Events" WHERE "Events"."Id" = %(id)s FOR UPDATE'


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "les.db" and r.getMessage() == "slow query"]


def test_a_burst_of_one_slow_statement_is_one_line_then_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    slow = SlowQueryLog(1.0, clock)
    caplog.set_level(logging.WARNING, logger="les.db")

    slow.note("select", "Events", LOCK, 240.0)
    for elapsed in (180.0, 410.5, 120.0):
        clock.now += 0.2
        slow.note("select", "Events", LOCK, elapsed)
    first = _lines(caplog)
    assert len(first) == 1
    assert first[0].levelno == logging.WARNING
    assert (first[0].duration_ms, first[0].kind, first[0].table) == (240.0, "select", "Events")
    assert first[0].statement == LOCK
    assert not hasattr(first[0], "suppressed")

    clock.now += 0.5  # a second after the line: the next one is logged, with the count
    slow.note("select", "Events", LOCK, 130.0)
    second = _lines(caplog)[1]
    assert second.duration_ms == 130.0
    assert (second.suppressed, second.suppressed_slowest_ms) == (3, 410.5)

    clock.now += 1.0  # nothing held back since: no count
    slow.note("select", "Events", LOCK, 150.0)
    assert len(_lines(caplog)) == 3
    assert not hasattr(_lines(caplog)[2], "suppressed")


def test_each_kind_and_table_has_its_own_interval(caplog: pytest.LogCaptureFixture) -> None:
    slow = SlowQueryLog(1.0, Clock())
    caplog.set_level(logging.WARNING, logger="les.db")

    slow.note("select", "Events", LOCK, 200.0)
    slow.note("update", "Events", 'UPDATE "Events" SET x = 1', 150.0)
    slow.note("insert", "OutboxMessages", 'INSERT INTO "OutboxMessages" VALUES (1)', 120.0)
    slow.note("select", "Events", LOCK, 300.0)

    assert [(r.kind, r.table) for r in _lines(caplog)] == [
        ("select", "Events"),
        ("update", "Events"),
        ("insert", "OutboxMessages"),
    ]


def test_an_interval_of_zero_logs_every_slow_statement(caplog: pytest.LogCaptureFixture) -> None:
    slow = SlowQueryLog(0.0, Clock())
    caplog.set_level(logging.WARNING, logger="les.db")

    for elapsed in (101.0, 102.0, 103.0):
        slow.note("select", "Events", LOCK, elapsed)

    assert [r.duration_ms for r in _lines(caplog)] == [101.0, 102.0, 103.0]


def test_a_long_statement_is_cut_in_the_line(caplog: pytest.LogCaptureFixture) -> None:
    slow = SlowQueryLog(1.0, Clock())
    caplog.set_level(logging.WARNING, logger="les.db")

    slow.note("select", "Events", "SELECT " + "x, " * 400 + "1", 500.0)

    assert len(_lines(caplog)[0].statement) == 500


def test_a_forked_child_logs_though_a_thread_of_the_parent_held_the_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker forks its work horse while another of its threads may be inside
    ``note``: the child starts with the lock free, so its first slow statement does
    not wait forever for a thread it does not have."""
    from webapp.observability import collectors

    monkeypatch.setattr(collectors, "_slow_queries", SlowQueryLog(0.0))
    collectors._slow_queries._lock.acquire()  # as if another thread were logging
    try:
        pid = os.fork()
        if pid == 0:  # the child: log a slow statement, then leave at once
            try:
                collectors._slow_queries.note("select", "Events", LOCK, 150.0)
            finally:
                os._exit(0)
    finally:
        collectors._slow_queries._lock.release()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the child waited for a lock a thread of its parent held at the fork")
