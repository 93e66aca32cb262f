"""The application class remembers which hooks and views are coroutine functions,
and answers as Flask does."""

from __future__ import annotations

from typing import Any

import pytest

from webapp.flask_app import LiveEventFlask


def test_plain_views_and_hooks_run_as_they_are_and_their_answer_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = LiveEventFlask(__name__)
    calls: list[str] = []

    @app.before_request
    def remember() -> None:
        calls.append("hook")

    @app.get("/")
    def index() -> str:
        return "ok"

    asked = []
    import inspect

    import flask.app

    real = inspect.iscoroutinefunction

    def counting(func: Any) -> bool:
        asked.append(func)
        return real(func)

    # Flask's own question and ours
    monkeypatch.setattr(flask.app, "iscoroutinefunction", counting)
    monkeypatch.setattr(inspect, "iscoroutinefunction", counting)
    client = app.test_client()
    for _ in range(5):
        assert client.get("/").get_data(as_text=True) == "ok"
    assert calls == ["hook"] * 5
    assert asked.count(remember) == 1 and asked.count(index) == 1  # not once a request


def test_an_async_view_goes_to_flasks_async_support(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in Flask: wrapped by ``async_to_sync`` (which needs the ``async`` extra)."""
    app = LiveEventFlask(__name__)

    async def page() -> str:
        return "async"

    wrapped: list[Any] = []
    monkeypatch.setattr(app, "async_to_sync", lambda f: wrapped.append(f) or (lambda: "ran"))
    app.add_url_rule("/a", view_func=page)
    assert app.test_client().get("/a").get_data(as_text=True) == "ran"
    assert wrapped == [page]


def test_an_unhashable_callable_is_asked_each_time() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> str:
            return "x"

    app = LiveEventFlask(__name__)
    view = Unhashable()
    assert app.ensure_sync(view) is view
