"""JSON logs for the web, relay and worker processes.

Every line carries ``timestamp``, ``level``, ``logger``, ``message``, ``service``, the
request/correlation id and the trace id. Personal data and secrets are scrubbed
before a line leaves the process (:class:`RedactingFilter`); high-volume lines
(DEBUG, or ``extra={"sample": True}``) are kept at ``LOG_SAMPLE_RATE``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

#: request id (web) or correlation id (relay/worker: the outbox message id)
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "les_correlation_id", default=None
)

_HANDLER_NAME = "les-json"
_SERVICE = {"name": "les-web"}

EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
#: the signed token of an attendee's status link is a bearer credential
STATUS_TOKEN = re.compile(r"(/registrations/)(?!<token>)[^/\s?#\"'<]+")
#: key=value / key: value pairs whose value is a secret
SECRET_PAIR = re.compile(
    r"(?i)\b((?:password|passwd|pwd|secret|token|api[_-]?key|csrf_token|session)"
    r"[\"']?\s*[=:]\s*[\"']?)([^\s,&\"';}]+)"
)
BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")

REDACTED = "[REDACTED]"
#: extra fields whose value is a secret, whatever it looks like
SECRET_KEYS = re.compile(
    r"(?i)(password|passwd|secret|token|api_?key|authorization|cookie|csrf|credential)"
)
#: extra fields holding a person's name
NAME_KEYS = frozenset(
    {"attendee_name", "full_name", "first_name", "last_name", "display_name", "user_name"}
)
_RECORD_ATTRS = frozenset(
    logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def mask_text(text: str) -> str:
    """Mask emails (``a***@example.org``), status tokens, bearer tokens and secrets."""
    text = EMAIL.sub(r"\1***@\2", text)
    text = STATUS_TOKEN.sub(r"\1" + REDACTED, text)
    text = BEARER.sub(r"\1 " + REDACTED, text)
    text = DSN_PASSWORD.sub(r"\1" + REDACTED + "@", text)
    return SECRET_PAIR.sub(r"\1" + REDACTED, text)


def mask_name(name: str) -> str:
    """``Ada Lovelace`` -> ``A*** L***``."""
    return " ".join(part[:1] + "***" for part in str(name).split()) or "***"


def _mask_value(key: str, value: Any) -> Any:
    if SECRET_KEYS.search(key):
        return REDACTED
    if key.lower() in NAME_KEYS:
        return mask_name(value)
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(key, v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Scrubs the message, its arguments, extra fields and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg} {record.args}"
        record.msg = mask_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
            record.exc_info = None  # the formatter must print the masked text
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS:
                setattr(record, key, _mask_value(key, value))
        return True


class ContextFilter(logging.Filter):
    """Adds the service, the request/correlation id and the trace/span ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = _SERVICE["name"]
        if not getattr(record, "request_id", None):
            record.request_id = correlation_id.get()
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = None
            record.span_id = None
        return True


class SamplingFilter(logging.Filter):
    """Keeps DEBUG lines and lines logged with ``extra={"sample": True}`` at ``rate``."""

    def __init__(self, rate: float, rng: random.Random | None = None) -> None:
        super().__init__()
        self.rate = max(0.0, min(1.0, rate))
        self._random = rng or random.Random()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and not getattr(record, "sample", False):
            return True
        rate = self.decide()
        if rate is not None and rate < 1.0:
            record.sample_rate = rate
        return rate is not None

    def decide(self) -> float | None:
        """One sampling decision: the rate when the line is kept, None when dropped."""
        if self.rate >= 1.0:
            return 1.0
        return self.rate if self._random.random() < self.rate else None


class SampledTemplates(logging.Filter):
    """For a logger of a library: its INFO lines logged with one of ``templates`` (the
    format strings it passes) are high-volume lines, kept at the JSON handler's
    sampling rate and decided before the line is built (see :func:`sample_now`).
    Its other lines, and every line above INFO, pass."""

    def __init__(self, templates: Iterable[str]) -> None:
        super().__init__()
        self.templates = frozenset(templates)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or record.msg not in self.templates:
            return True
        kept = sample_now()
        if kept is None:
            return False
        record.__dict__.update(kept)
        return True


class JsonFormatter(_BaseJsonFormatter):
    """One JSON object per line with stable key names."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault(
            "fmt", "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(trace_id)s"
        )
        kwargs.setdefault(
            "rename_fields",
            {"asctime": "timestamp", "levelname": "level", "name": "logger"},
        )
        kwargs.setdefault("rename_fields_keep_missing", True)
        super().__init__(*args, **kwargs)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop("sample", None)
        for key in ("exc_info", "stack_info"):
            if isinstance(log_data.get(key), str):
                log_data[key] = mask_text(log_data[key])


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (test runners swap it)."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.setStream assigns it
        pass


def build_handler(sample_rate: float, stream: TextIO | None = None) -> logging.Handler:
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(SamplingFilter(sample_rate))
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    return handler


def configure_logging(
    level: str | int = "INFO",
    sample_rate: float = 1.0,
    service: str = "les-web",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install the JSON handler on the root logger (replacing a previous one)."""
    _SERVICE["name"] = service
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    handler = build_handler(sample_rate, stream)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


def configure_from_config(config: dict[str, Any], service: str) -> logging.Handler:
    """Logging of a process from the app settings (LOG_LEVEL, LOG_SAMPLE_RATE)."""
    return configure_logging(
        config.get("LOG_LEVEL") or "INFO",
        float(config.get("LOG_SAMPLE_RATE", 1.0)),
        service,
    )


def _installed_sampler() -> SamplingFilter | None:
    """The sampling filter of the JSON handler on the root logger, if one is installed."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == _HANDLER_NAME:
            for found in handler.filters:
                if isinstance(found, SamplingFilter):
                    return found
    return None


def sample_now() -> dict[str, Any] | None:
    """Decide before building it whether a high-volume line is kept: None when the
    installed handler would drop it, else the ``extra`` fields that mark it as kept
    (with its ``sample_rate`` when sampled). A caller that logs on every request
    skips the record, its formatting and the filters for the lines sampling drops."""
    sampler = _installed_sampler()
    if sampler is None:  # no JSON handler installed: a sampled line, decided later
        return {"sample": True}
    rate = sampler.decide()
    if rate is None:
        return None
    return {"sample_rate": rate} if rate < 1.0 else {}


@contextlib.contextmanager
def bound_correlation_id(value: str | None) -> Iterator[None]:
    """Log lines inside the block carry ``value`` as their request/correlation id
    (the relay and the worker bind the outbox message id)."""
    token = correlation_id.set(value)
    try:
        yield
    finally:
        correlation_id.reset(token)
