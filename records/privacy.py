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


def complementary(
    parts: list[int | None], *, spare: tuple[int, ...] = (), force: tuple[int, ...] = (), min_cell: int = MIN_CELL
) -> set[int]:
    """Indices of ``parts`` to withhold besides those :func:`suppress` hides, when the
    parts add up to a total published elsewhere (complementary suppression).

    When exactly one part is hidden, or the hidden parts are known to add up to less than
    ``min_cell``, the smallest other non-zero part is withheld too, so the hidden parts
    cannot be recovered by subtraction. Indices in ``spare`` are withheld only when no
    other part is left. An already-suppressed part (None) counts as hidden, of unknown
    size; indices in ``force`` are hidden whatever their size, which stays known for the
    sum (a cell withheld for another reason, e.g. too few subjects).
    """
    values = [None if i in force else suppress(v, min_cell=min_cell) for i, v in enumerate(parts)]
    hidden = {i for i, v in enumerate(values) if v is None}
    extra: set[int] = set()

    def exposed() -> bool:
        if len(hidden) == 1:
            return True
        known = [parts[i] for i in hidden]
        return bool(hidden) and all(k is not None for k in known) and sum(known) < min_cell

    while exposed():
        left = [i for i, v in enumerate(values) if i not in hidden and v]
        if not left:
            break
        preferred = [i for i in left if i not in spare] or left
        pick = min(preferred, key=lambda i: values[i])
        hidden.add(pick)
        extra.add(pick)
    return extra


def suppress_parts(
    parts: list[int | None], *, spare: tuple[int, ...] = (), force: tuple[int, ...] = ()
) -> list[int | None]:
    """``parts`` of a published total as they may leave the site: each suppressed below
    11, those in ``force`` withheld, and the parts :func:`complementary` names withheld
    (None) too."""
    extra = complementary(parts, spare=spare, force=force) | set(force)
    return [None if i in extra else suppress(v) for i, v in enumerate(parts)]


def withheld_bins(sizes: list[int], events: list[int], *, min_cell: int = MIN_CELL) -> set[int]:
    """Indices of bins (each with a size and events, adding up to totals published
    elsewhere) to withhold whole: each bin whose size, events or non-events is 1..10, and
    then, one column at a time until none is left, the bins :func:`complementary` names so
    that no withheld bin's size, events or non-events comes back by subtraction from the
    totals."""
    others = [n - e for n, e in zip(sizes, events, strict=True)]
    columns = (list(events), others, list(sizes))  # the outcome counts first: their extra bin serves all three
    hidden = {i for i in range(len(sizes)) if any(suppress(c[i], min_cell=min_cell) is None for c in columns)}
    while True:
        for column in columns:
            extra = complementary(column, force=tuple(sorted(hidden)), min_cell=min_cell)
            if extra - hidden:
                hidden |= extra
                break
        else:
            return hidden
