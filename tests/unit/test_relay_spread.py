"""How many jobs the relay spreads a small batch over while the queue is empty."""

from __future__ import annotations

import os

import pytest

from workers.relay import spread_jobs


def test_no_more_jobs_than_workers_or_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each job costs RQ's per-job work: pieces the cores cannot run at once only add
    CPU, so two cores get two jobs even with four worker processes."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert spread_jobs({"BACKGROUND_MAX_CONCURRENCY": 4}) == 2
    assert spread_jobs({"BACKGROUND_MAX_CONCURRENCY": 1}) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert spread_jobs({"BACKGROUND_MAX_CONCURRENCY": 4}) == 4
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: no spreading
    assert spread_jobs({"BACKGROUND_MAX_CONCURRENCY": 4}) == 1


def test_the_setting_wins_for_workers_on_other_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    config = {"BACKGROUND_MAX_CONCURRENCY": 4, "RELAY_SPREAD_JOBS": 12}
    assert spread_jobs(config) == 12
    assert spread_jobs(config | {"RELAY_SPREAD_JOBS": 0}) == 2  # 0: the default
