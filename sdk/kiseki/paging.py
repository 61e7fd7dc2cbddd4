"""Pages of results that remember where the next page starts."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class PagedList(list[T], Generic[T]):
    """A list of results plus `token`: pass it as `page_token` to get the next page (None: last page)."""

    def __init__(self, items: list[T], token: str | None) -> None:
        super().__init__(items)
        self.token = token
