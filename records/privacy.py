"""Small-cell suppression for every aggregate that leaves a site."""

from __future__ import annotations

MIN_CELL = 11


def suppress(count: int | None, *, min_cell: int = MIN_CELL) -> int | None:
    """``count`` when it is 0 or at least ``min_cell``, else ``None`` (suppressed).

    Zero is not identifying and is kept, as the OHDSI and HIPAA practice does.
    """
    if count is None:
        return None
    return count if count == 0 or count >= min_cell else None


def shown(count: int | None, *, min_cell: int = MIN_CELL) -> str:
    """A count for a report: ``"<11"`` when suppressed."""
    value = suppress(count, min_cell=min_cell)
    return f"<{min_cell}" if value is None else f"{value:,}"
