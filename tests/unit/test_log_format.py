"""JSON log lines: the fields every line carries, masking of personal data and
secrets, sampling of high-volume lines."""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from webapp.observability import logs


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logs.build_handler(1.0, stream)
    logger = logging.getLogger("les.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_is_json_with_the_standard_fields(captured):
    logger, stream = captured
    with logs.bound_correlation_id("req-42"):
        logger.info("hello %s", "world")
    (line,) = lines(stream)
    assert line["message"] == "hello world"
    assert line["level"] == "INFO"
    assert line["logger"] == "les.test.logs"
    assert line["request_id"] == "req-42"
    assert str(line["timestamp"]).endswith("+00:00")
    assert "trace_id" in line


def test_trace_id_of_the_active_span_is_on_the_line(captured):
    logger, stream = captured
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logger.warning("inside a span")
    (line,) = lines(stream)
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")


def test_emails_and_names_are_masked_everywhere(captured):
    logger, stream = captured
    logger.info(
        "registered %s for event 3",
        "ada.lovelace@example.org",
        extra={"attendee_name": "Ada Lovelace", "contact": {"email": "grace@navy.mil"}},
    )
    raw = stream.getvalue()
    assert "ada.lovelace@example.org" not in raw and "grace@navy.mil" not in raw
    assert "Lovelace" not in raw
    (line,) = lines(stream)
    assert line["message"] == "registered a***@example.org for event 3"
    assert line["attendee_name"] == "A*** L***"
    assert line["contact"] == {"email": "g***@navy.mil"}


def test_passwords_tokens_and_status_links_are_never_logged(captured):
    logger, stream = captured
    logger.warning(
        "login failed password=hunter2 for https://x.test/registrations/eyJzZWNyZXQ.abc/cancel"
        " with Authorization: Bearer s3cr3t-token and postgresql://les:dbpass@db/les",
        extra={"csrf_token": "tok-1", "password": "hunter2", "api_key": "k-9"},
    )
    raw = stream.getvalue()
    for secret in ("hunter2", "eyJzZWNyZXQ.abc", "s3cr3t-token", "dbpass", "tok-1", "k-9"):
        assert secret not in raw, secret
    (line,) = lines(stream)
    assert "/registrations/[REDACTED]/cancel" in str(line["message"])
    assert line["password"] == "[REDACTED]"


def test_exception_tracebacks_are_masked_too(captured):
    logger, stream = captured
    try:
        raise ValueError("duplicate key for bob@example.com token=abc123")
    except ValueError:
        logger.exception("insert failed")
    raw = stream.getvalue()
    assert "bob@example.com" not in raw and "abc123" not in raw
    (line,) = lines(stream)
    assert "ValueError" in str(line["exc_info"])


def test_debug_and_sampled_lines_are_kept_at_the_configured_rate():
    stream = io.StringIO()
    handler = logs.build_handler(0.1, stream)
    sampler = next(f for f in handler.filters if isinstance(f, logs.SamplingFilter))
    sampler._random = random.Random(7)
    logger = logging.getLogger("les.test.sampling")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        for i in range(1000):
            logger.debug("debug %d", i)
            logger.info("request %d", i, extra={"sample": True})
            logger.info("important %d", i)
    finally:
        logger.removeHandler(handler)
    found = lines(stream)
    debug = [x for x in found if str(x["message"]).startswith("debug")]
    sampled = [x for x in found if str(x["message"]).startswith("request")]
    important = [x for x in found if str(x["message"]).startswith("important")]
    assert len(important) == 1000  # never sampled
    assert 50 < len(debug) < 150 and 50 < len(sampled) < 150
    assert all(x["sample_rate"] == 0.1 for x in debug + sampled)


def test_level_comes_from_the_config():
    stream = io.StringIO()
    root = logging.getLogger()
    previous = root.level
    try:
        handler = logs.configure_logging("WARNING", 1.0, "les-relay", stream)
        logging.getLogger("les.any").info("not shown")
        logging.getLogger("les.any").warning("shown")
        (line,) = lines(stream)
        assert line["message"] == "shown" and line["service"] == "les-relay"
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
