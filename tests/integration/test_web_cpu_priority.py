"""``WEB_CPU_NICE`` under a real gunicorn: the master, its workers and their request
threads run at that niceness, and so does the master's session group (the test starts
gunicorn in a session of its own, as the benchmark does); a bad value stops gunicorn
with the reason; unset, the web keeps the priority it was started with."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from tests.integration.observability_processes import Gunicorn, app_env

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def _threads_niceness(pid: int) -> set[int]:
    """The niceness of every thread of ``pid`` (Linux keeps one per thread)."""
    return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_the_web_runs_below_the_workers_priority_when_asked(postgres_url, redis_url, tmp_path):
    env = app_env(postgres_url, redis_url, WEB_CPU_NICE="7", GUNICORN_THREADS="4", LOG_LEVEL="INFO")
    server = Gunicorn(env, workers=2, tmp=tmp_path)
    try:
        master = psutil.Process(server.proc.pid)
        workers = master.children()
        assert len(workers) == 2
        for process in [master, *workers]:
            assert _threads_niceness(process.pid) == {7}, process
        group = Path(f"/proc/{master.pid}/autogroup")
        if group.exists():  # a kernel with session groups ("autogroup")
            assert group.read_text().split()[-2:] == ["nice", "7"]
        assert "web CPU priority lowered (WEB_CPU_NICE): niceness 7" in server.log_path.read_text()
    finally:
        server.stop()


def test_unset_the_web_keeps_its_priority(postgres_url, redis_url, tmp_path):
    server = Gunicorn(app_env(postgres_url, redis_url), workers=1, tmp=tmp_path)
    try:
        master = psutil.Process(server.proc.pid)
        for process in [master, *master.children()]:
            assert _threads_niceness(process.pid) == {os.getpriority(os.PRIO_PROCESS, 0)}
        assert "WEB_CPU_NICE" not in server.log_path.read_text()
    finally:
        server.stop()


def test_a_bad_value_stops_gunicorn_with_the_reason(postgres_url, redis_url, tmp_path):
    env = app_env(postgres_url, redis_url, WEB_CPU_NICE="low")
    with pytest.raises(AssertionError, match=r"WEB_CPU_NICE must be a whole number from 0 to 19"):
        Gunicorn(env, workers=1, tmp=tmp_path)
