"""The text of an item that is embedded, and its cache key (kept free of heavy imports)."""
from __future__ import annotations

import hashlib


def item_text(title: str, description: str | None) -> str:
    """Canonical text embedded for an item: "<title>. <description>", parts stripped, empty parts dropped."""
    parts = [part.strip() for part in (title, description or "")]
    return ". ".join(part for part in parts if part)


def text_sha256(text: str) -> str:
    """Hex sha256 of the utf-8 encoded text; the cache key of its embedding."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
