"""Small wording helpers shared by every command's output."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 asset`, `2 assets`."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"
