"""Output caching of public pages (region ``page_output``).

Only anonymous GETs without a query string and without flashed messages are
served from or stored in the cache, only 200 responses are stored, and the cache
key varies on ``HX-Request`` (the response says ``Vary: HX-Request``).

Two kinds of page:

- site-wide pages (the event list, :data:`CACHED_PAGE_ENDPOINTS`): one copy, dropped
  by every change of any event;
- per-event pages (an event with its registration form,
  :data:`PER_EVENT_PAGE_ENDPOINTS`): one copy per event, dropped by every change of
  that event's details or capacity (registrations change only its live parts).

Personal values: a page's CSRF token belongs to the visitor's session and a form's
idempotency token must be new on every render. Before storing, each is replaced by
a marker; on a hit, the reader's own CSRF token and a fresh value from the view's
generator take their places, so every visitor posts a valid, unique form. A view
registers such a value with :func:`personal_value`, and can keep a render out of
the cache with :func:`do_not_store` (e.g. the event starts before the copy expires).

The stored copy is the page cut at its personal values: literal parts and the names
of the values between them (:func:`_stored_page`), so a hit joins the parts with this
visitor's values in one pass instead of searching the whole page for each marker.
The cache holds JSON, which has no bytes: each literal part is kept as its UTF-8 bytes
spelt as Latin-1 text, so a hit turns it back into bytes with a plain copy instead of
encoding the page again (the event list is ~45 KB; encoding it was ~25 us a view).

Live parts: the few parts of an event page that change with each registration (seats
left, waitlist length, the availability line and the button) go through the same
mechanism (:func:`live_part` in the template, rendered from the event's cached
counts on each hit), so a registration drops the event's counts but not its page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Response, current_app, g, make_response, request, session
from markupsafe import Markup

from webapp.adapters.cache import PAGE_OUTPUT, Slot, get_cache
from webapp.adapters.csrf_tokens import csrf_token

#: site-wide pages: every change of an event drops their keys
CACHED_PAGE_ENDPOINTS = ("public.event_list",)
#: pages of one event (view argument ``event_id``): a change of that event drops them
PER_EVENT_PAGE_ENDPOINTS = ("public.event_detail",)
#: the name of the CSRF token among a stored page's personal values
_CSRF = "csrf-token"
#: a placeholder for a personal value (NUL never occurs in a rendered page)
_MARKER = re.compile(b"\x00([^\x00]+)\x00")


def page_key(endpoint: str, hx: bool, event_id: int | None = None) -> str:
    scope = f"{event_id}:" if event_id is not None else ""
    return f"page:{endpoint}:{scope}{'hx' if hx else 'full'}"


def all_page_keys() -> set[str]:
    """The site-wide pages (dropped by any change of any event)."""
    return {page_key(e, hx) for e in CACHED_PAGE_ENDPOINTS for hx in (False, True)}


def event_page_keys(event_id: int) -> set[str]:
    """The pages of one event (dropped by any change of that event)."""
    return {page_key(e, hx, event_id) for e in PER_EVENT_PAGE_ENDPOINTS for hx in (False, True)}


def personal_value(name: str, value: str) -> str:
    """Mark ``value`` in this render as personal: a cached copy of the page gets a new
    value from the generator the view declared for ``name`` (``cached_page(personal=)``)
    in its place, for each visitor. Returns ``value``."""
    g.setdefault("_personal_values", {})[name] = value
    return value


def live_part(name: str, html: Markup) -> Markup:
    """In a template: ``html`` is a part of the page that a cached copy must not keep
    (it changes with every registration: seats left, the waitlist, the button). Like a
    personal value, each visitor gets it rendered afresh by the view's generator for
    ``name``, so the copy survives the changes it would otherwise be dropped for."""
    personal_value(name, html)
    return html  # already escaped: a macro's output


def do_not_store() -> None:
    """This render must not be cached (it is only right for a short while)."""
    g._page_not_storable = True


def _marker(name: str) -> bytes:
    return b"\x00" + name.encode() + b"\x00"


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


def _slot(hx: bool) -> Slot | None:
    endpoint = request.endpoint
    if endpoint in CACHED_PAGE_ENDPOINTS:
        return Slot(PAGE_OUTPUT, page_key(endpoint, hx))
    if endpoint in PER_EVENT_PAGE_ENDPOINTS:
        event_id = (request.view_args or {}).get("event_id")
        if isinstance(event_id, int):
            return Slot(PAGE_OUTPUT, page_key(endpoint, hx, event_id))
    return None


def _storable(response: Response) -> dict[str, Any] | None:
    if (
        response.status_code != 200
        or response.is_streamed
        or "Set-Cookie" in response.headers
        or g.get("_page_not_storable")
    ):
        return None
    values = dict(g.get("_personal_values", {}))
    token = g.get(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"))
    if token:
        values = {_CSRF: token, **values}
    return _stored_page(response.get_data(), values, response.content_type)


def _stored_page(body: bytes, values: dict[str, str], content_type: str | None) -> dict[str, Any]:
    """The copy of a page to store: ``parts`` alternate literal text (UTF-8 bytes spelt
    as Latin-1, see the module's docstring) and the name of the personal value each
    occurrence of ``values`` (name -> this render's value) was cut out at."""
    for name, value in values.items():
        body = body.replace(value.encode(), _marker(name))
    parts = [
        part.decode() if n % 2 else part.decode("latin-1")
        for n, part in enumerate(_MARKER.split(body))
    ]
    return {"parts": parts, "content_type": content_type}


def _personalise(stored: dict[str, Any], generators: dict[str, Callable[[], str]]) -> bytes:
    """The stored page with this visitor's values: one value per name, fresh from its
    generator (the CSRF token from the visitor's session)."""
    parts = stored.get("parts")
    if parts is None:  # stored by an earlier version of this module
        raise LookupError("parts")
    values: dict[str, bytes] = {}
    for name in set(parts[1::2]):
        if name == _CSRF:
            values[name] = csrf_token().encode()
            continue
        generate = generators.get(name)
        if generate is None:  # stored by another version of the view: do not guess
            raise LookupError(name)
        values[name] = generate().encode()
    return b"".join(
        values[part] if n % 2 else part.encode("latin-1") for n, part in enumerate(parts)
    )


def cached_page(
    view: Callable[..., Any] | None = None,
    *,
    personal: dict[str, Callable[[], str]] | None = None,
) -> Any:
    """Decorator for a public view whose output is the same for every anonymous visitor
    (but for the personal values it declares: name -> generator, see
    :func:`personal_value`)."""
    generators = dict(personal or {})
    if _CSRF in generators:
        raise ValueError(f"{_CSRF!r} names the CSRF token of a cached page: choose another name")

    def decorate(func: Callable[..., Any]) -> Callable[..., Response]:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            layer = get_cache()
            hx = request.headers.get("HX-Request") == "true"
            slot = _slot(hx) if layer.enabled and _cacheable_request() else None
            if slot is None:
                return _finish(make_response(func(*args, **kwargs)), "BYPASS")
            rendered: list[Response] = []

            def render() -> dict[str, Any] | None:
                response = make_response(func(*args, **kwargs))
                rendered.append(response)
                return _storable(response)

            stored = layer.get(slot, render)
            if rendered:
                return _finish(rendered[0], "MISS")
            assert stored is not None  # a hit (the loader did not run)
            try:
                body = _personalise(stored, generators)
            except LookupError:
                return _finish(make_response(func(*args, **kwargs)), "BYPASS")
            return _finish(Response(body, content_type=stored["content_type"]), "HIT")

        return wrapper

    return decorate(view) if view is not None else decorate
