"""The load generator against a tiny keep-alive HTTP server on loopback."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bench.loadgen import Run

PAGE = b"<html><body>events</body></html>"


async def _serve(spec: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """Run the load generator against a server that counts connections and requests."""
    counts = {"connections": 0, "requests": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts["connections"] += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                counts["requests"] += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(PAGE), PAGE)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await Run({**spec, "port": port}).main()
    return result, counts["connections"], counts["requests"]


def _run(spec: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """In a thread of its own: the browser tests' Playwright keeps an event loop
    running in the main thread, where ``asyncio.run`` refuses to start."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(_serve(spec))).result()


def test_each_client_reconnects_once_its_connection_served_its_requests() -> None:
    spec = {
        "scenario": "event_list",
        "concurrency": 2,
        "duration": 0.3,
        "requests_per_connection": 4,
    }
    result, connections, requests = _run(spec)
    assert result["errors"] == 0
    assert result["operations"] == requests > 20
    # a new connection for every 4 page views of each client (the last may be partial)
    assert requests / 4 <= connections <= requests / 4 + 2
    assert result["connects"] == connections
    assert result["requests_per_connection"] == 4


def test_a_connection_for_the_whole_run_when_asked() -> None:
    spec = {
        "scenario": "event_list",
        "concurrency": 3,
        "duration": 0.2,
        "requests_per_connection": 10**9,
    }
    result, connections, requests = _run(spec)
    assert result["operations"] == requests > 10
    assert connections == result["connects"] == 3


def test_requests_per_connection_must_be_positive() -> None:
    with pytest.raises(ValueError, match="requests_per_connection"):
        Run(
            {
                "scenario": "event_list",
                "concurrency": 1,
                "duration": 0.1,
                "port": 1,
                "requests_per_connection": 0,
            }
        )
