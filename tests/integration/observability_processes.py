"""Helpers for the observability tests: real processes on loopback (gunicorn,
Prometheus), free ports, waiting for readiness, scraping."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
METRICS_TOKEN = "test-metrics-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def app_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("OTEL_", "PROMETHEUS_", "GUNICORN_", "WEB_CONCURRENCY", "WEB_CPU_NICE")
        )
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        ENV="production",
        SECRET_KEY="observability-test-secret",
        METRICS_TOKEN=METRICS_TOKEN,
        RATELIMIT_ENABLED="false",
        OTEL_TRACES_EXPORTER="none",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


class Gunicorn:
    """``gunicorn -c webapp/gunicorn_conf.py`` with ``workers`` workers on loopback."""

    def __init__(self, env: dict[str, str], workers: int, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = tmp / "prometheus-multiproc"
        self.metrics_dir.mkdir(exist_ok=True)
        (self.metrics_dir / "counter_999999.db").write_bytes(b"stale")  # must be emptied
        self.log_path = tmp / "gunicorn.log"
        env = dict(
            env,
            BIND=f"127.0.0.1:{self.port}",
            WEB_CONCURRENCY=str(workers),
            PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir),
        )
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(VENV_BIN / "gunicorn"),
                "-c",
                str(ROOT / "webapp" / "gunicorn_conf.py"),
                "--chdir",
                str(ROOT),
                "webapp:create_app()",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: httpx.get(self.url + "/healthz", timeout=2).status_code == 200,
                60,
                "gunicorn to answer /healthz",
                self.proc,
            )
            # the first worker may answer before the master has forked the others
            master = psutil.Process(self.proc.pid)
            wait_until(
                lambda: len(master.children()) >= workers,
                30,
                f"gunicorn to start {workers} workers",
                self.proc,
            )
        except AssertionError:
            self.stop()
            raise AssertionError(self.log_path.read_text()[-3000:]) from None

    def scrape(self) -> str:
        response = httpx.get(
            self.url + "/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # nothing of this server may outlive the test (a stuck worker ignores SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Samples of ``name`` in an exposition whose labels include ``labels``."""
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found.append((sample.labels, sample.value))
    return found


def total(text: str, name: str, **labels: str) -> float:
    return sum(value for _, value in samples(text, name, **labels))
