"""The production-like setup on loopback: gunicorn, the outbox relay and the RQ worker
as separate processes, plus a sampler of their peak memory and a /metrics reader."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "webapp" / "gunicorn_conf.py"


@dataclass
class WebSettings:
    """The gunicorn worker model (chosen from measurements, see docs/PERFORMANCE.md)."""

    worker_class: str = "gthread"
    workers: int = 2  # one per core: the request path is CPU-bound Python (GIL per process)
    threads: int = 8  # overlap the ~25 PostgreSQL/Redis round trips of a registration
    backlog: int = 2048
    keepalive: int = 5
    #: ``WEB_CPU_NICE``: 0 runs the web at the relay's and workers' priority, as by default
    cpu_nice: int = 0

    def describe(self) -> str:
        if self.worker_class == "gthread":
            text = f"gunicorn gthread, {self.workers} workers x {self.threads} threads"
        else:
            text = f"gunicorn {self.worker_class}, {self.workers} workers"
        if self.cpu_nice:
            text += f", below the relay and workers' CPU priority (WEB_CPU_NICE={self.cpu_nice})"
        return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """One running build of the service (optimized or baseline)."""

    name: str
    env: dict[str, str]
    workdir: Path
    web: WebSettings
    with_background: bool = True
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    peak_rss: dict[str, dict[str, float]] = field(default_factory=dict)
    _sampler: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, role: str, argv: list[str], extra_env: dict[str, str]) -> None:
        metrics_dir = self.workdir / f"prom-{self.name}-{role}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env = {**os.environ, **self.env, **extra_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        log = open(self.workdir / f"{self.name}-{role}.log", "ab")  # noqa: SIM115
        self.processes[role] = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def start(self) -> None:
        gunicorn = [
            sys.executable,
            "-m",
            "gunicorn",
            *(["-c", str(GUNICORN_CONF)] if GUNICORN_CONF.exists() else []),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--worker-class",
            self.web.worker_class,
            "--workers",
            str(self.web.workers),
            "--threads",
            str(self.web.threads),
            "--backlog",
            str(self.web.backlog),
            "--keep-alive",
            str(self.web.keepalive),
            "webapp.wsgi:app" if (ROOT / "webapp" / "wsgi.py").exists() else "webapp:create_app()",
        ]
        self._spawn("web", gunicorn, {"WEB_CPU_NICE": str(self.web.cpu_nice)})
        if self.with_background:
            self._spawn("relay", [sys.executable, "-m", "workers.relay"], {})
            self._spawn("worker", [sys.executable, "-m", "workers"], {})
        self._wait_ready()
        self._stop.clear()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for role, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} {role} exited with {proc.returncode}; see "
                        f"{self.workdir / f'{self.name}-{role}.log'}:\n{self.log_tail(role)}"
                    )
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as response:  # noqa: S310 - http on loopback
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} web did not answer /healthz within {timeout}s")

    def log_tail(self, role: str, lines: int = 30) -> str:
        path = self.workdir / f"{self.name}-{role}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def pids(self, role: str) -> list[int]:
        proc = self.processes.get(role)
        if proc is None or proc.poll() is not None:
            return []
        try:
            parent = psutil.Process(proc.pid)
            return [parent.pid] + [c.pid for c in parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _sample(self) -> None:
        peaks: dict[str, dict[str, float]] = defaultdict(lambda: {"total_mb": 0.0, "max_mb": 0.0})
        while not self._stop.is_set():
            for role in self.processes:
                sizes = []
                for pid in self.pids(role):
                    try:
                        sizes.append(psutil.Process(pid).memory_info().rss / 2**20)
                    except psutil.NoSuchProcess:
                        continue
                if sizes:
                    peak = peaks[role]
                    peak["total_mb"] = round(max(peak["total_mb"], sum(sizes)), 1)
                    peak["max_mb"] = round(max(peak["max_mb"], max(sizes)), 1)
                    peak["processes"] = max(peak.get("processes", 0), len(sizes))
            self.peak_rss = {k: dict(v) for k, v in peaks.items()}
            self._stop.wait(0.25)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each role's process tree: every live process, plus
        the children each has reaped (a gunicorn worker recycled by ``max_requests``, an
        RQ work horse that lived one job). A process that ends between two samples is
        counted in full by its parent once reaped, so the difference of two samples is
        the tree's CPU in between."""
        out: dict[str, float] = {}
        for role in self.processes:
            total = 0.0
            for pid in self.pids(role):
                try:
                    times = psutil.Process(pid).cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += times.user + times.system + times.children_user + times.children_system
            out[role] = total
        return out

    def web_worker_cpu_seconds(self) -> dict[int, float]:
        """CPU seconds used so far by each live gunicorn worker (the master excluded), by
        pid: how evenly the workers share the load (a worker serves the connections it
        accepted, for as long as they stay open)."""
        out: dict[int, float] = {}
        for pid in self.pids("web")[1:]:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            out[pid] = times.user + times.system
        return out

    @staticmethod
    def worker_shares(
        before: dict[int, float], after: dict[int, float], wall: float
    ) -> dict[str, Any]:
        """Cores used by each web worker between two samples of
        :meth:`web_worker_cpu_seconds`, largest first, and how many workers were
        replaced meanwhile (``max_requests``; a new one counts from its start)."""
        shares = sorted(
            (round((used - before.get(pid, 0.0)) / wall, 2) for pid, used in after.items()),
            reverse=True,
        )
        return {"cores": shares, "replaced": len(set(before) - set(after))}

    @staticmethod
    def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU seconds per role between two samples of :meth:`cpu_seconds`."""
        return {role: max(used - before.get(role, 0.0), 0.0) for role, used in after.items()}

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every role, SIGKILL what is still running after ``grace`` seconds (a
        worker in the middle of a long fan-out job; delivery is at-least-once and the
        correctness checks ran before the stop)."""
        self._stop.set()
        for proc in self.processes.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for proc in self.processes.values():  # children left in the group (work horses)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._sampler is not None:
            self._sampler.join(timeout=2)

    # -- /metrics ------------------------------------------------------------------------
    def metrics(self) -> dict[str, float] | None:
        """Samples of the web's /metrics as ``{'name{labels}': value}``; None if absent."""
        request = urllib.request.Request(self.base_url + "/metrics")  # noqa: S310
        token = self.env.get("METRICS_TOKEN")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                text = response.read().decode()
        except OSError:
            return None
        return parse_prometheus(text)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        except ValueError:
            continue
    return samples


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def metric_delta(
    before: dict[str, float] | None, after: dict[str, float] | None, name: str, **labels: str
) -> float | None:
    if before is None or after is None:
        return None
    if not any(k.partition("{")[0] == name for k in after):
        return None
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


def wait_for(predicate: Any, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
