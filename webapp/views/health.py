"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive (no dependency checks: a restart would not help them)."""
    return jsonify(status="ok")
