"""The documented input schemas: raw events and the item catalogue.

Events (one row per user action):
    user_id          integer (64-bit), required
    item_id          integer (64-bit), required; must exist in the catalogue
    event_type       one of ``view``, ``click``, ``cart``, ``purchase``
    event_timestamp  ISO 8601 (UTC assumed when no offset) or epoch seconds; not in the future
    price            optional, decimal >= 0 (the unit price paid or shown)
    session_id       optional, free text; when absent, sessions are derived from 30-minute gaps
    event_id         optional, free text: the client's idempotency key (an event_id is stored once)
    recommendation_id  optional, free text: the ``/recommend`` answer the event responds to

Item catalogue (one row per item):
    item_id          integer (64-bit), required, unique
    category         text, required
    title            text, required
    description      text, optional
    price            optional, decimal >= 0
"""
from __future__ import annotations

from dataclasses import dataclass

EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase")
"""Event types in funnel order; their position is the integer code stored in Postgres."""

EVENT_TYPE_CODES: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}


@dataclass(frozen=True)
class TableSchema:
    """Column contract of one input kind."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


EVENTS = TableSchema(
    name="events",
    required=("user_id", "item_id", "event_type", "event_timestamp"),
    optional=("price", "session_id", "event_id", "recommendation_id"),
)

ITEMS = TableSchema(
    name="items",
    required=("item_id", "category", "title"),
    optional=("description", "price"),
)
