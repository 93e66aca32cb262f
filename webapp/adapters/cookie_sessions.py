"""Flask's signed-cookie sessions, with each distinct cookie verified once per process.

Every page carries the visitor's CSRF token (the layout puts it there for HTMX), so
every visitor has a session cookie, and Flask verifies it on every request: build a
serializer, check the HMAC, decode base64 and the tagged JSON. A browser sends the
same cookie until the session changes, so this interface keeps the decoded content of
the cookies it verified (an LRU map per process, keyed by the signing keys and the
exact cookie text) and hands each request its own copy. The cookie's age is checked
against ``PERMANENT_SESSION_LIFETIME`` on every request, as Flask does; a cookie that
fails verification is never kept; a changed secret key finds nothing kept.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from flask import Flask, Request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature, URLSafeTimedSerializer

from webapp.adapters.lru import LruMap

#: verified cookies kept per process (a few hundred bytes each)
MAX_KEPT = 10_000
_SCALARS = (str, int, float, bool, type(None))


def _own_copy(data: dict[str, Any]) -> dict[str, Any]:
    """A copy the request may change freely (flashed messages are lists)."""
    if all(isinstance(value, _SCALARS) for value in data.values()):
        return dict(data)
    return copy.deepcopy(data)


class VerifiedCookieSessions(SecureCookieSessionInterface):
    """``SecureCookieSessionInterface`` that remembers the cookies it verified."""

    def __init__(self, max_kept: int = MAX_KEPT) -> None:
        self._verified: LruMap[tuple[Any, str], tuple[dict[str, Any], float]] = LruMap(max_kept)
        self._serializers: LruMap[tuple[Any, ...], URLSafeTimedSerializer] = LruMap(8)

    def _keys(self, app: Flask) -> tuple[Any, ...]:
        return (*(app.config["SECRET_KEY_FALLBACKS"] or ()), app.secret_key)

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            return None
        keys = self._keys(app)
        serializer = self._serializers.get(keys)
        if serializer is None:
            serializer = super().get_signing_serializer(app)
            assert serializer is not None
            self._serializers.put(keys, serializer)
        return serializer

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        value = request.cookies.get(self.get_cookie_name(app))
        if not value:
            return self.session_class()
        max_age = app.permanent_session_lifetime.total_seconds()
        key = (self._keys(app), value)
        kept = self._verified.get(key)
        if kept is not None and time.time() - kept[1] <= max_age:
            return self.session_class(_own_copy(kept[0]))
        try:
            data, signed_at = serializer.loads(value, max_age=int(max_age), return_timestamp=True)
        except BadSignature:  # includes an expired signature
            return self.session_class()
        self._verified.put(key, (data, signed_at.timestamp()))
        return self.session_class(_own_copy(data))
