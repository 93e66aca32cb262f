"""Output caching of public pages (region ``page_output``).

Only anonymous GETs without a query string and without flashed messages are
served from or stored in the cache, only 200 responses are stored, and the cache
key varies on ``HX-Request`` (the response says ``Vary: HX-Request``). The page's
CSRF token is personal: it is replaced by a marker before storing and by the
reader's own token when serving, so every visitor posts with a valid token.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Response, current_app, g, make_response, request, session
from flask_wtf.csrf import generate_csrf

from webapp.adapters.cache import PAGE_OUTPUT, Slot, get_cache

#: endpoints whose output is cached; every change of an event drops their keys
CACHED_PAGE_ENDPOINTS = ("public.event_list",)
_TOKEN_MARKER = "\x00csrf-token\x00"  # noqa: S105 (a placeholder, not a secret)


def page_key(endpoint: str, hx: bool) -> str:
    return f"page:{endpoint}:{'hx' if hx else 'full'}"


def all_page_keys() -> set[str]:
    return {page_key(e, hx) for e in CACHED_PAGE_ENDPOINTS for hx in (False, True)}


def _cacheable_request() -> bool:
    if request.method != "GET" or request.query_string:
        return False
    if "_flashes" in session or "_user_id" in session:
        return False
    remember = current_app.config.get("REMEMBER_COOKIE_NAME", "remember_token")
    return remember not in request.cookies


def _finish(response: Response, state: str) -> Response:
    response.vary.add("HX-Request")
    response.headers["X-Cache"] = state
    return response


def cached_page(view: Callable[..., Any]) -> Callable[..., Response]:
    """Decorator for a public view whose output is the same for every anonymous visitor."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        layer = get_cache()
        if not layer.enabled or not _cacheable_request() or request.endpoint is None:
            return _finish(make_response(view(*args, **kwargs)), "BYPASS")
        hx = request.headers.get("HX-Request") == "true"
        slot = Slot(PAGE_OUTPUT, page_key(request.endpoint, hx))
        rendered: list[Response] = []

        def render() -> dict[str, Any] | None:
            response = make_response(view(*args, **kwargs))
            rendered.append(response)
            if (
                response.status_code != 200
                or response.is_streamed
                or "Set-Cookie" in (response.headers)
            ):
                return None
            body = response.get_data(as_text=True)
            token = g.get(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"))
            if token:
                body = body.replace(token, _TOKEN_MARKER)
            return {"body": body, "content_type": response.content_type}

        stored = layer.get(slot, render)
        if rendered:
            return _finish(rendered[0], "MISS")
        assert stored is not None  # a hit (the loader did not run)
        body = stored["body"]
        if _TOKEN_MARKER in body:
            body = body.replace(_TOKEN_MARKER, generate_csrf())
        return _finish(Response(body, content_type=stored["content_type"]), "HIT")

    return wrapper
