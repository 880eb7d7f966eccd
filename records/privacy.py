"""Small-cell suppression for every aggregate that leaves a site."""

from __future__ import annotations

import bisect

import numpy as np

MIN_CELL = 11


def month_span(span) -> list[str | None]:
    """A data source's first and last event dates (ISO, after the date shift) as they may
    leave the site: to the month ("2014-01-01" -> "2014-01"). Each exact date is one
    person's (shifted) event; None stays None."""
    return [None if d is None else str(d)[:7] for d in span]


def suppress(count: int | None, *, min_cell: int = MIN_CELL) -> int | None:
    """``count`` when it is 0 or at least ``min_cell``, else ``None`` (suppressed).

    Zero is not identifying and is kept, as the OHDSI and HIPAA practice does.
    """
    if count is None:
        return None
    return count if count == 0 or count >= min_cell else None


def rounded(count: int, *, min_cell: int = MIN_CELL) -> int:
    """``count`` rounded to the nearest multiple of ``min_cell`` (halves up): for a number
    that leaves the site at full precision but must not give an exact count back (a
    difference with another published count could be 1..10). A count of ``min_cell`` or
    more stays at least ``min_cell``."""
    return int(np.floor(count / min_cell + 0.5)) * min_cell


def rounded_shares(counts: list[int], *, min_cell: int = MIN_CELL) -> list[float]:
    """Shares of ``counts`` (cells of one whole) after :func:`rounded`; they sum to 1
    (all 0 when every cell rounds to 0)."""
    values = [rounded(c, min_cell=min_cell) for c in counts]
    total = sum(values)
    return [v / total for v in values] if total else [0.0 for _ in counts]


def shown(count: int | None, *, min_cell: int = MIN_CELL) -> str:
    """A count for a report: ``"<11"`` when suppressed."""
    value = suppress(count, min_cell=min_cell)
    return f"<{min_cell}" if value is None else f"{value:,}"


def complementary(
    parts: list[int | None],
    *,
    spare: tuple[int, ...] = (),
    force: tuple[int, ...] = (),
    floors: dict[int, int] | None = None,
    min_cell: int = MIN_CELL,
) -> set[int]:
    """The parts to withhold (see :func:`withhold`), whether or not that was enough."""
    return withhold(parts, spare=spare, force=force, floors=floors, min_cell=min_cell)[0]


def withhold(
    parts: list[int | None],
    *,
    spare: tuple[int, ...] = (),
    force: tuple[int, ...] = (),
    floors: dict[int, int] | None = None,
    min_cell: int = MIN_CELL,
) -> tuple[set[int], bool]:
    """Indices of ``parts`` to withhold besides those :func:`suppress` hides, when the
    parts add up to a total published elsewhere (complementary suppression).

    A reader knows the hidden parts' sum (the total less the shown parts) and what each
    hidden part's label tells: a suppressed part ("<11") is 1 to ``min_cell - 1``; a part
    withheld here ("withheld") is one that could have been shown, so ``min_cell`` or
    more; a part in ``force`` (withheld for another reason, e.g. a level with too few
    subjects) is 0 or more. ``floors`` raises those lower bounds where the reader knows
    more (a subgroup level shown as not suppressed has 11 or more subjects, events and
    non-events, so 22 or more rows). Parts are withheld, the smallest other non-zero part
    first (indices in ``spare`` last): one at least beside any part of 1 to
    ``min_cell - 1``, whatever their sum (a part withheld only where that sum is small
    would say so), and then until every hidden part of 1 to ``min_cell - 1``
    is left at least two possible values, up to ``min_cell - 1`` included, and no hidden
    part in ``force`` is pinned to one value: a reader learns neither a small count nor
    that it is smaller than the rule hides. An already-suppressed part (None) counts as
    hidden, of unknown size: with it, the sum is unknown and only a single hidden part
    is exposed.

    Returns the parts to withhold and whether the hidden parts are still exposed: when
    every non-zero part is withheld and the labels still pin one (a "<11" part of 1
    beside a withheld 11, summing to a published 12), withholding cannot help; the
    caller must hide the labels too (a subgroup marks the whole group suppressed).
    """
    floors = floors or {}
    values = [None if i in force else suppress(v, min_cell=min_cell) for i, v in enumerate(parts)]
    hidden = {i for i, v in enumerate(values) if v is None}
    extra: set[int] = set()

    def bounds(i: int) -> tuple[float, float]:
        """What a reader knows of hidden part ``i``: its lowest and highest value."""
        if i in force or parts[i] is None:
            return floors.get(i, 0), np.inf
        if i in extra:
            return max(min_cell, floors.get(i, 0)), np.inf
        return max(1, floors.get(i, 0)), min_cell - 1

    def exposed() -> bool:
        if len(hidden) == 1:
            return True
        if not hidden or any(parts[i] is None for i in hidden):
            return False
        total = sum(parts[i] for i in hidden)
        known = {i: bounds(i) for i in hidden}
        low_sum = sum(lo for lo, _ in known.values())
        high_sum = sum(hi for _, hi in known.values())
        for i in hidden:
            small = 0 < parts[i] < min_cell
            if not small and i not in force:
                continue
            lo, hi = known[i]
            top = min(hi, total - (low_sum - lo))
            bottom = max(lo, total - (high_sum - hi))
            if bottom >= top or (small and top < min_cell - 1):
                return True
        return False

    def pick_one() -> bool:
        left = [i for i, v in enumerate(values) if i not in hidden and v]
        if not left:
            return False
        preferred = [i for i in left if i not in spare] or left
        pick = min(preferred, key=lambda i: values[i])
        hidden.add(pick)
        extra.add(pick)
        return True

    # One part at least beside any small one, whatever the hidden sum: a part withheld
    # only where that sum is small would tell the reader it was (each of two "<11" parts
    # 9 or fewer when a withheld one appears beside them, 10 or more between them when not).
    small = [i for i in hidden if i not in force and parts[i] is not None and 0 < parts[i] < min_cell]
    if small and not any(parts[i] is None for i in hidden) and not pick_one() and exposed():
        return extra, True
    while exposed():
        if not pick_one():
            return extra, True
    return extra, False


def suppress_parts(
    parts: list[int | None],
    *,
    spare: tuple[int, ...] = (),
    force: tuple[int, ...] = (),
    floors: dict[int, int] | None = None,
) -> list[int | None]:
    """``parts`` of a published total as they may leave the site: each suppressed below
    11, those in ``force`` withheld, and the parts :func:`complementary` names withheld
    (None) too."""
    extra = complementary(parts, spare=spare, force=force, floors=floors) | set(force)
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


class Cutoffs:
    """The cut-offs of one ranking of an evaluation set whose counts have left the site.

    A threshold row, an alert budget, a decision-curve point, a calibration bin's
    boundary and a point of the ROC or precision-recall curve each flag the ``k``
    highest-risk rows of the same ranking (``p >= t`` never splits tied risks), and
    each publishes, or lets a reader work out, the events and non-events among them.
    Any two published cut-offs of one ranking give the band of rows between them away
    by subtraction. So a cut-off is admitted only when its events and non-events differ
    from those of the nearest admitted cut-off on either side by 0 or at least
    ``min_cell`` each; every difference between admitted cut-offs is then a sum of such
    bands, and so 0 or at least ``min_cell`` too. Flagging nothing and flagging every
    row (the published totals) are admitted from the start, unless the totals
    themselves are withheld (1 to ``min_cell - 1`` events or non-events); then no
    cut-off is admitted, not even those two (a cut-off's 2x2 table holds the totals). One ledger serves every table and figure drawn from one model's
    risks, in the order they are published: the first come first.

    ``y``: the outcomes; ``p``: the risks. A cut-off is given as the number of rows it
    flags, ``k`` (the rows of the ``k`` highest risks), or as a threshold (:meth:`flagged`).
    A monotone transformation of ``p`` (a calibrator) ranks the rows alike and may share
    the ledger through ``k``.
    """

    def __init__(self, y, p, *, min_cell: int = MIN_CELL) -> None:
        y = np.asarray(y, bool)
        p = np.asarray(p, float)
        order = np.argsort(-p, kind="stable")
        self._descending = p[order]
        self._tp = np.r_[0, np.cumsum(y[order])]
        self.n = int(y.size)
        self.min_cell = min_cell
        events = int(self._tp[-1])
        self.open = all(suppress(c, min_cell=min_cell) is not None for c in (events, self.n - events))
        self.kept: list[int] = [0, self.n]

    def flagged(self, threshold: float) -> int:
        """How many rows ``p >= threshold`` flags."""
        return int(np.searchsorted(-self._descending, -float(threshold), side="right"))

    def counts(self, k: int) -> tuple[int, int]:
        """(events, non-events) among the ``k`` highest-risk rows."""
        tp = int(self._tp[k])
        return tp, int(k) - tp

    def neighbours(self, k: int) -> tuple[int, int]:
        """The nearest admitted cut-offs at or below ``k`` rows and at or above it."""
        i = bisect.bisect_left(self.kept, k)
        if i < len(self.kept) and self.kept[i] == k:
            return k, k
        return self.kept[i - 1], self.kept[i]

    def _band(self, a: int, b: int) -> bool:
        tp = int(self._tp[b] - self._tp[a])
        fp = (b - a) - tp
        return suppress(tp, min_cell=self.min_cell) is not None and suppress(fp, min_cell=self.min_cell) is not None

    def admits(self, k: int) -> bool:
        """Whether the cut-off at ``k`` rows may be published beside those admitted."""
        k = int(k)
        if not 0 <= k <= self.n:
            raise ValueError(f"a cut-off flags 0 to {self.n} rows; got {k}.")
        if not self.open:  # a cut-off's 2x2 table holds the withheld totals in its cells
            return False
        low, high = self.neighbours(k)
        return low == k or (self._band(low, k) and self._band(k, high))

    def add(self, k: int) -> bool:
        """Admit the cut-off at ``k`` rows if it may be published; whether it was."""
        ok = self.admits(k)
        if ok and k not in self.kept:
            bisect.insort(self.kept, int(k))
        return ok
