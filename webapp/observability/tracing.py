"""Trace context helpers: carry the W3C context through the outbox into workers."""

from __future__ import annotations

import json

from opentelemetry import propagate


def current_trace_context() -> str | None:
    """The active span's W3C headers as JSON, or None when nothing is being traced."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None
