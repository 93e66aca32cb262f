"""Helpers of the outbox/relay/worker/fault tests: a real SMTP server on loopback
(aiosmtpd), free ports, background processes started as subprocesses."""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> Any:
    """``predicate()`` once it is true; on a timeout, an error that says what
    ``describe()`` found (the state a failure needs to be understood)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            found = f": {describe()}" if describe is not None else ""
            raise AssertionError(f"condition not met within {timeout}s{found}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a process's log file (for a failure message)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"({path.name}: {error})"


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.reject or self.sink.reject_to.intersection(envelope.rcpt_tos):
            return "550 mailbox unavailable (test sink is rejecting)"
        mail = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.sink.lock:
            self.sink.messages.append(mail)  # type: ignore[arg-type]
            for rcpt in envelope.rcpt_tos:
                self.sink.received[rcpt] = self.sink.received.get(rcpt, 0) + 1
        return "250 Message accepted for delivery"


class SmtpSink:
    """A real SMTP server on 127.0.0.1; ``messages`` are the mails it accepted."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        #: envelope recipient -> mails accepted for it
        self.received: dict[str, int] = {}
        self.lock = threading.Lock()
        self.reject = False
        #: refuse only mails to these recipients
        self.reject_to: set[str] = set()
        self.port = free_port()
        self.controller = Controller(_SinkHandler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def config(self) -> dict[str, Any]:
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": self.port, "SMTP_TIMEOUT": 5.0}

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


def body(mail: EmailMessage, subtype: str) -> str:
    part = mail.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    return str(part.get_content())


class Background:
    """A relay or worker pool as a real subprocess, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, **env}
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as a whole
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def descendants(self) -> list[int]:
        found: list[int] = []
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    children = [int(c) for c in task.read_text().split()]
                except OSError:
                    continue
                found.extend(children)
                todo.extend(children)
        return found

    def kill(self) -> None:
        """SIGKILL the process and everything it started (work horses included)."""
        pids = [self.proc.pid, *self.descendants()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return int(self.proc.returncode)

    def stop(self) -> None:
        leftovers = self.descendants()
        self.terminate()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def process_env(database_url: str, redis_url: str, **extra: Any) -> dict[str, str]:
    env = {
        "ENV": "testing",
        "SECRET_KEY": "test-secret",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PUBLIC_BASE_URL": "http://localhost",
        "OTEL_SDK_DISABLED": "true",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def gated_handler_env(
    database_url: str, redis_url: str, smtp: SmtpSink, block: Path, **extra: Any
) -> dict[str, str]:
    """Relay/worker environment whose test handler (``fault_handlers``) waits while
    ``block/gate`` exists (created here): a handler stuck mid-flight."""
    block.mkdir()
    (block / "gate").touch()
    return process_env(
        database_url,
        redis_url,
        **smtp.config(),
        OUTBOX_RETRY_DELAY_SECONDS=0.2,
        LES_EXTRA_HANDLER_MODULES="tests.integration.fault_handlers",
        LES_TEST_BLOCK_DIR=block,
        **extra,
    )


def start_relay(
    tmp_path: Path, env: dict[str, str], name: str = "relay-a", *args: str
) -> Background:
    return Background(["-m", "workers.relay", "--name", name, *args], env, tmp_path / f"{name}.log")


def start_worker(
    tmp_path: Path, env: dict[str, str], name: str = "worker", concurrency: int = 1
) -> Background:
    return Background(
        ["-m", "workers", "--concurrency", str(concurrency)], env, tmp_path / f"{name}.log"
    )


class ThrowawayRedis:
    """A private redis-server on a spare loopback port (no persistence)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ThrowawayRedis:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        wait_until(lambda: _pings(redis.Redis(port=self.port, socket_timeout=0.2)), 10)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ThrowawayPostgres:
    """A private PostgreSQL cluster (initdb + pg_ctl) on a spare loopback port.
    initdb refuses root, so the cluster runs as the ``postgres`` user then."""

    def __init__(self) -> None:
        import tempfile

        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="les-pg-"))
        self.data = self.directory / "data"
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(a) for a in args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, timeout=timeout, capture_output=True)

    def start(self) -> ThrowawayPostgres:
        if self._as_postgres:
            import shutil

            shutil.chown(self.directory, "postgres", "postgres")
        self._run(PG_BIN / "initdb", "-A", "trust", "-U", "postgres", "--no-sync", "-D", self.data)
        self._ctl("start")
        return self

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            PG_BIN / "pg_ctl",
            "-D",
            self.data,
            "-l",
            self.directory / "server.log",
            "-o",
            options,
            "-w",
            action,
            *extra,
        )

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        import shutil

        with contextlib.suppress(Exception):
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


class BlackHole:
    """A TCP server that accepts connections and never answers (a hung Redis)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(50)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()
