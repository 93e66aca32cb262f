"""The visitor's signed CSRF token, signed once per session token in each process.

Flask-WTF keeps a random token in the session and hands the page a signed copy
(itsdangerous: JSON, HMAC, base64), which it signs again on every request: about
0.15 ms, 15 % of the CPU of a cached page view, since the layout puts the token on
every page for HTMX. With ``WTF_CSRF_TIME_LIMIT = None`` a signed token never
expires, so the copy signed for the session's previous page is exactly as valid as
a fresh one: this module keeps it in a bounded map per app and process, and
Flask-WTF's own per-request slot (``g.<field name>``) gets it from there.

With a time limit set, every call signs afresh (a kept copy would expire early).
"""

from __future__ import annotations

from flask import Flask, current_app, g, session
from flask_wtf.csrf import generate_csrf

from webapp.adapters.lru import LruMap

_EXTENSION = "les.csrf_tokens"
#: session tokens whose signed copy is kept (LRU): about 200 bytes each
MAX_KEPT = 10_000


class SignedTokens(LruMap[str, str]):
    """Session token -> its signed copy, for the most recent ``max_kept`` sessions."""

    def __init__(self, max_kept: int = MAX_KEPT) -> None:
        super().__init__(max_kept)


def _kept(app: Flask) -> SignedTokens | None:
    """The app's map, or None when tokens must be signed afresh (a time limit)."""
    if app.config.get("WTF_CSRF_TIME_LIMIT") is not None:
        return None
    return app.extensions.get(_EXTENSION)  # type: ignore[no-any-return]


def _field() -> str:
    return str(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"))


def csrf_token() -> str:
    """The signed CSRF token for this request's session (``generate_csrf``'s value,
    signed at most once per session token in this process)."""
    field = _field()
    signed: str | None = g.get(field)  # signed or primed earlier in this request
    if signed is None:
        signed = generate_csrf()
    kept = _kept(current_app)
    raw = session.get(field)
    if kept is not None and raw is not None:
        kept.put(raw, signed)
    return signed


def _prime_from_kept() -> None:
    """Before each request: hand Flask-WTF the kept signed copy of the session's token,
    so forms and templates of this request reuse it instead of signing again."""
    kept = _kept(current_app)
    if kept is None:
        return
    field = _field()
    raw = session.get(field)
    if raw is not None and field not in g:
        signed = kept.get(raw)
        if signed is not None:
            setattr(g, field, signed)


def init_app(app: Flask) -> None:
    """Keep signed tokens for this app, and give templates :func:`csrf_token`. Call it
    after ``CSRFProtect.init_app``: Flask-WTF sets ``csrf_token`` as a Jinja global and
    in a context processor, and the later context processor wins."""
    app.extensions[_EXTENSION] = SignedTokens()
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.context_processor(lambda: {"csrf_token": csrf_token})
    app.before_request(_prime_from_kept)


__all__ = ["MAX_KEPT", "SignedTokens", "csrf_token", "init_app"]
