"""A cached page's personal values are named; one name belongs to the CSRF token."""

from __future__ import annotations

import pytest

from webapp.adapters.cache_pages import cached_page


def test_a_view_cannot_name_a_personal_value_like_the_csrf_token() -> None:
    """The stored copy marks the visitor's CSRF token with this name: a view's value
    under the same name would be served as the visitor's token, or the token as it."""
    with pytest.raises(ValueError, match="CSRF token"):
        cached_page(personal={"csrf-token": lambda: "x"})


def test_other_names_are_accepted() -> None:
    decorate = cached_page(personal={"idempotency_token": lambda: "x"})
    assert callable(decorate)
