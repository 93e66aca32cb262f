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

Live parts: the few parts of an event page that change with each registration (seats
left, waitlist length, the availability line and the button) go through the same
mechanism (:func:`live_part` in the template, rendered from the event's cached
counts on each hit), so a registration drops the event's counts but not its page.
"""

from __future__ import annotations

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
_CSRF_MARKER = "\x00csrf-token\x00"  # a placeholder


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


def _marker(name: str) -> str:
    return f"\x00personal:{name}\x00"


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
    body = response.get_data(as_text=True)
    token = g.get(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"))
    if token:
        body = body.replace(token, _CSRF_MARKER)
    personal = g.get("_personal_values", {})
    for name, value in personal.items():
        body = body.replace(value, _marker(name))
    return {"body": body, "content_type": response.content_type, "personal": sorted(personal)}


def _personalise(stored: dict[str, Any], generators: dict[str, Callable[[], str]]) -> str:
    body: str = stored["body"]
    if _CSRF_MARKER in body:
        body = body.replace(_CSRF_MARKER, csrf_token())
    for name in stored.get("personal", ()):
        generate = generators.get(name)
        if generate is None:  # stored by another version of the view: do not guess
            raise LookupError(name)
        body = body.replace(_marker(name), generate())
    return body


def cached_page(
    view: Callable[..., Any] | None = None,
    *,
    personal: dict[str, Callable[[], str]] | None = None,
) -> Any:
    """Decorator for a public view whose output is the same for every anonymous visitor
    (but for the personal values it declares: name -> generator, see
    :func:`personal_value`)."""
    generators = dict(personal or {})

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
