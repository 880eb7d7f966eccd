"""Characteristics of the participants (TRIPOD+AI item 20a; OHDSI PatientLevelPrediction's
covariate summary): for the development rows (train and tuning splits) and the held-out
rows, each with and without the outcome, the number of prediction times and subjects, age,
sex, race and ethnicity (where the records hold them; never predictors), and the model's
most important predictors (how often each is recorded and its mean where recorded), with
the standardized mean difference between the development rows with and without the
outcome.

Aggregates only, under the rule of 11 (:mod:`forewarn.records.privacy`):

- the four groups' counts form a 2x2 table whose margins the report publishes (each
  split's size, the labelled total with the outcome), so when one is 1..10 all four are
  withheld;
- a "recorded" cell is shown only when the group holds at least 11 subjects, at least
  11 of whom have the predictor recorded (or none) and at least 11 a prediction time
  without it (or none); otherwise it is ``"<11"`` (too few recorded, or a small group) or
  ``"withheld"`` (too few without: the complement would give the small count away), and
  the percentage goes with it; in a group whose own count is hidden, the percentage is
  shown without the count (the two would give the group's size away);
- a mean (SD) is shown only over at least 11 subjects' values;
- a standardized mean difference is shown only when both of its cells are;
- race and ethnicity are one row per level, and a group's levels add up to its rows: so
  where a level's development cell is hidden, shown levels are withheld beside it,
  smallest first (one at least), until no hidden one comes back by subtraction or is
  bounded below 10 (:func:`_level_cells`, :func:`privacy.withhold`). Their held-out cells are the subgroup table's published
  rows and events of the level (with the outcome = events, without = rows - events),
  shown only where that table shows both, so they publish nothing it does not;
- no number is published at a precision that would give a hidden count back. A share
  whose group size is hidden is rounded to a step coarser than one row in the smallest
  group the published margins allow (1 / that size); exact, n / n_group would give
  n_group (and so the small group beside it) by its denominator. A mean and SD are
  rounded to 4 significant digits and to no finer than the values' own lattice over 11
  (integer values: 0.1; one decimal: 0.01), so the sum / count behind a mean cannot be
  solved for the count of rows it is over, which the table may hide (a "withheld"
  recorded cell, or a group whose size is hidden). The standardized mean difference
  comes from the rounded cells. The fewest rows the margins allow a group
  (:func:`_size_floors`) can lie far below its split's size: a development group with
  the outcome hidden because the held-out one is small.

"Recorded" follows the sparse matrix's structure: a stored entry (absent means missing,
not zero, as everywhere in Forewarn).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from forewarn.records import privacy, schema

AGE = "AGE/years/at_prediction/t"
FEMALE = "Gender//F/static/present/static"
SUPPRESSED, WITHHELD = "suppressed", "withheld"
GROUPS = (
    ("development", True), ("development", False), ("held_out", True), ("held_out", False),
)
GROUP_SPLITS = {"development": (schema.TRAIN, schema.TUNING), "held_out": (schema.HELD_OUT,)}


def _group_masks(rows: pd.DataFrame) -> list[np.ndarray]:
    split = rows[schema.SPLIT].to_numpy()
    label = rows[schema.BOOLEAN_VALUE].to_numpy(bool)
    return [np.isin(split, GROUP_SPLITS[name]) & (label == outcome) for name, outcome in GROUPS]


def _table_2x2(parts: list[int]) -> list[int | None]:
    """The four groups' counts as they may leave the site. They form a 2x2 table (split by
    outcome) whose every margin the report publishes (each split's rows and subjects, the
    labelled total with the outcome), so one hidden cell comes back from any other by
    subtraction: when one is 1..10, all four are withheld."""
    shown = [privacy.suppress(v) for v in parts]
    return [None] * len(parts) if any(v is None for v in shown) else shown


def _subjects(subject: np.ndarray, mask: np.ndarray) -> int:
    return int(np.unique(subject[mask]).size)


def _step(finest: float) -> float:
    """The smallest power of ten at least ``finest``."""
    return float(10.0 ** np.ceil(np.log10(finest))) if finest > 0 else 0.0


def _round(value: float, step: float) -> float:
    """``value`` to the nearest multiple of ``step`` (a power of ten)."""
    return float(round(value, -int(round(np.log10(step))))) if step > 0 else float(value)


def _lattice(values: np.ndarray) -> float:
    """The finest decimal grid the values lie on (1, 0.1, ..., 1e-6); 0 when none (their
    sums then are not on a grid that a count could be solved from)."""
    for j in range(7):
        scaled = values * 10.0**j
        if np.allclose(scaled, np.round(scaled), rtol=0, atol=1e-6):
            return 10.0**-j
    return 0.0


def _recorded_cell(recorded: np.ndarray, subject: np.ndarray, group: np.ndarray, size_hidden: bool,
                   low: int) -> dict:
    """How many of the group's rows have the predictor recorded, under the rule of 11;
    with ``size_hidden`` (the group's count is suppressed or withheld) the percentage
    only, since a count and its percentage give the group's size away, and that rounded
    so that every group size the published margins allow for it fits it (a step of at
    least 1 / ``low``, the fewest rows they allow it: :func:`_size_floors`)."""
    n_group = int(group.sum())
    yes = group & recorded
    with_it, without_it = _subjects(subject, yes), _subjects(subject, group & ~recorded)
    if n_group == 0:
        return {"n": 0, "pct": None, "status": "empty"}
    if _subjects(subject, group) < privacy.MIN_CELL or 0 < with_it < privacy.MIN_CELL:
        # a group of fewer than 11 subjects shows nothing of them, not even "none recorded"
        return {"n": None, "pct": None, "status": SUPPRESSED}
    if 0 < without_it < privacy.MIN_CELL:
        return {"n": None, "pct": None, "status": WITHHELD}
    return _share(int(yes.sum()), n_group, size_hidden, low)


def _share(n: int, n_group: int, size_hidden: bool, low: int) -> dict:
    """A shown count and its share of the group; only the share, rounded to a step of at
    least 1 / ``low``, where the group's size is hidden (withheld where ``low`` < 11)."""
    if not size_hidden:
        return {"n": n, "pct": n / n_group, "status": "shown"}
    if low < privacy.MIN_CELL:
        return {"n": None, "pct": None, "status": WITHHELD}
    return {"n": None, "pct": _round(n / n_group, _step(1 / low)), "status": "shown"}


def _size_floors(sizes: list[int], split_rows: dict[str, int], statuses: list[str]) -> list[int]:
    """The fewest rows each of the four groups may hold for a reader who knows the
    published margins (each split's rows and the labelled rows with the outcome) and the
    groups' labels: the table has one free cell (the held-out rows with the outcome,
    ``x``), each group's size is a line in it, and each label bounds it (``"<11"``: 1 to
    10; withheld: 0 or 11 or more; shown: that count). A hidden group's share is rounded
    for the smallest size these allow, not for its split's size, which a group hidden
    because a small one beside it is may lie far below."""
    with_outcome = sizes[0] + sizes[2]
    dev, held = split_rows["development"], split_rows["held_out"]

    def table(x: int) -> list[int]:
        return [with_outcome - x, dev - with_outcome + x, x, held - x]

    def fits(x: int) -> bool:
        for n, label, size in zip(table(x), statuses, sizes, strict=True):
            if n < 0 or (label == SUPPRESSED and not 0 < n < privacy.MIN_CELL) or (
                    label == WITHHELD and 0 < n < privacy.MIN_CELL) or (label == "shown" and n != size):
                return False
        return True

    feasible = [x for x in range(0, min(with_outcome, held) + 1) if fits(x)]
    return [min(table(x)[g] for x in feasible) for g in range(4)]


def _mean_cell(values: np.ndarray, subject: np.ndarray, mask: np.ndarray) -> dict:
    """Mean and SD of ``values`` over the rows in ``mask``, shown over 11 subjects or more."""
    if _subjects(subject, mask) < privacy.MIN_CELL:
        return {"mean": None, "sd": None, "status": SUPPRESSED if mask.any() else "empty"}
    v = values[mask].astype(float)
    mean, sd = float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
    # 4 significant digits, and no finer than the values' grid over 11: then every count of
    # 11 or more rows has a sum on the grid whose mean rounds to the one shown
    grid = _lattice(v) / privacy.MIN_CELL
    step = max(_step(abs(mean) / 10_000) if mean else 0.0, _step(grid))
    sd_step = max(_step(sd / 10_000) if sd else 0.0, step)
    return {"mean": _round(mean, step), "sd": _round(sd, sd_step), "status": "shown"}


def _ratio(difference: float, pooled: float) -> float | None:
    """difference / pooled SD; 0 for no difference, None (undefined) for a difference
    with no spread on either side."""
    if pooled > 0:
        return float(difference / pooled)
    return 0.0 if difference == 0 else None


def _smd_binary(a: dict, b: dict) -> float | None:
    if a["pct"] is None or b["pct"] is None:
        return None
    p1, p0 = a["pct"], b["pct"]
    pooled = np.sqrt((p1 * (1 - p1) + p0 * (1 - p0)) / 2)
    return _ratio(p1 - p0, pooled)


def _smd_mean(a: dict, b: dict) -> float | None:
    if a["mean"] is None or b["mean"] is None:
        return None
    pooled = np.sqrt((a["sd"] ** 2 + b["sd"] ** 2) / 2)
    return _ratio(a["mean"] - b["mean"], pooled)


def _level_order(levels: list) -> list:
    """The standard levels in the vocabulary's order, then the rest (Multiple, Other, a
    site's own codes) by name, then unrecorded (None) last."""
    standard = list(schema.AUDIT_LEVELS.values())
    known = [v for v in levels if v is not None]
    return (sorted((v for v in known if v in standard), key=standard.index)
            + sorted(v for v in known if v not in standard) + ([None] if None in levels else []))


def _level_cells(level_masks: list[np.ndarray], subject: np.ndarray, group: np.ndarray, size_hidden: bool,
                 low: int) -> list[dict]:
    """One development group's cells of a race or ethnicity row per level. The levels
    partition the group, so they are decided together:

    - a group of fewer than 11 subjects shows nothing, every level alike (empty ones too);
    - a level of 1 to 10 subjects is "<11"; then shown levels are withheld beside it
      (:func:`privacy.withhold` over the levels' rows, the "<11" ones at 1 or more rows):
      always one at least, the smallest, whatever the hidden ones' sum (a withheld level
      that appeared only when that sum was small would bound it), and more until no
      hidden level is pinned or bounded below 10 by the group's rows less the shown
      levels and the labels ("withheld" is 11 or more);
    - where that cannot be had, every level is withheld alike."""
    k = len(level_masks)
    if not group.any():
        return [{"n": 0, "pct": None, "status": "empty"} for _ in range(k)]
    if _subjects(subject, group) < privacy.MIN_CELL:
        return [{"n": None, "pct": None, "status": SUPPRESSED} for _ in range(k)]
    parts = [int((m & group).sum()) for m in level_masks]
    small = tuple(i for i, m in enumerate(level_masks) if 0 < _subjects(subject, m & group) < privacy.MIN_CELL)
    floors = dict.fromkeys(small, 1)
    extra, exposed = privacy.withhold(parts, force=small, floors=floors)
    extra = set(extra) - set(small)
    if small and not extra:
        shown = [i for i in range(k) if i not in small and parts[i]]
        if not shown:
            exposed = True
        else:
            first = min(shown, key=lambda i: (parts[i], i))
            more, exposed = privacy.withhold(parts, force=(*small, first), floors=floors | {first: privacy.MIN_CELL})
            extra = (set(more) | {first}) - set(small)
    if exposed:
        return [{"n": None, "pct": None, "status": WITHHELD} for _ in range(k)]
    n_group = int(group.sum())
    return [{"n": None, "pct": None, "status": SUPPRESSED} if i in small
            else {"n": None, "pct": None, "status": WITHHELD} if i in extra
            else _share(parts[i], n_group, size_hidden, low) for i in range(k)]


def _mirrored_cell(published: dict | None, outcome: bool, group_rows: int | None, *, listed: bool = True) -> dict:
    """A held-out cell of a race or ethnicity level from the subgroup table's published
    row for it (``None``: no held-out row has the level, so 0): with the outcome its
    events, without them its rows less its events; hidden where the table hides either,
    where the held-out group's own count is (a share would give it back), or where the
    table has no row of the group at all (``listed`` False: nothing to mirror)."""
    if group_rows is None or not listed:
        return {"n": None, "pct": None, "status": WITHHELD}
    if group_rows == 0:
        return {"n": 0, "pct": None, "status": "empty"}
    if published is None:
        return {"n": 0, "pct": 0.0, "status": "shown"}
    if published.get("rows") is None or published.get("events") is None:
        return {"n": None, "pct": None, "status": SUPPRESSED}
    n = int(published["events"]) if outcome else int(published["rows"]) - int(published["events"])
    return {"n": n, "pct": n / group_rows, "status": "shown"}


def characteristics(X: sp.csr_matrix, rows: pd.DataFrame, columns: pd.DataFrame, importance: pd.DataFrame,
                    *, top: int = 10, audit: dict[str, np.ndarray] | None = None,
                    subgroups: list[dict] | None = None) -> dict:
    """The participants' characteristics as a plain record for the report and MLflow.

    ``X``, ``rows`` and ``columns`` are a feature matrix (every split); ``importance`` is
    the model's global SHAP importance (``name``, ``description``), most important first;
    its first ``top`` predictors that are not age or sex are summarised. ``audit`` maps a
    subgroup column (``race``, ``ethnicity``) to each row's level (None: unrecorded;
    ``evaluation.evaluate.audit_levels``), and ``subgroups`` is the held-out subgroup table
    as published (``clinical.subgroup_metrics``), from which those rows' held-out cells
    come; a column whose every level is None is left out.
    """
    if X.shape[0] != len(rows):
        raise ValueError(f"characteristics: the matrix has {X.shape[0]} rows but rows.parquet has {len(rows)}; "
                         "they must come from the same feature matrix")
    X = sp.csc_matrix(X)
    subject = rows[schema.SUBJECT_ID].to_numpy()
    masks = _group_masks(rows)
    position = {name: i for i, name in enumerate(columns["name"])}
    raw_rows, raw_subjects = [int(m.sum()) for m in masks], [_subjects(subject, m) for m in masks]
    counts, subjects = _table_2x2(raw_rows), _table_2x2(raw_subjects)

    def status(shown: int | None, raw: int) -> str:  # why a count is hidden: small itself, or its complement's
        return "shown" if shown is not None else SUPPRESSED if privacy.suppress(raw) is None else WITHHELD

    groups = [{"split": name, "outcome": outcome, "rows": c, "subjects": s,
               "rows_status": status(c, rc), "subjects_status": status(s, rs)}
              for (name, outcome), c, s, rc, rs in zip(GROUPS, counts, subjects, raw_rows, raw_subjects, strict=True)]
    dev_with, dev_without = 0, 1  # the groups the standardized mean difference compares
    # each split's rows, published beside the table (the report's splits), and the fewest
    # rows each group may hold for a reader of those margins
    split_rows = {name: int(np.isin(rows[schema.SPLIT].to_numpy(), splits).sum()) for name, splits in GROUP_SPLITS.items()}
    low = _size_floors(raw_rows, split_rows, [g["rows_status"] for g in groups])

    def column(name: str) -> tuple[np.ndarray, np.ndarray]:  # (recorded, values) per row
        j = position[name]
        recorded = np.zeros(X.shape[0], dtype=bool)
        start, end = X.indptr[j], X.indptr[j + 1]
        recorded[X.indices[start:end]] = True
        values = np.zeros(X.shape[0])
        values[X.indices[start:end]] = X.data[start:end]
        return recorded, values

    out_rows = []

    def add_recorded(label: str, recorded: np.ndarray, feature: str | None = None) -> None:
        cells = [_recorded_cell(recorded, subject, m, g["rows"] is None, floor)
                 for m, g, floor in zip(masks, groups, low, strict=True)]
        out_rows.append({"label": label, "kind": "recorded", "feature": feature, "cells": cells,
                         "smd": _smd_binary(cells[dev_with], cells[dev_without])})

    def add_mean(label: str, recorded: np.ndarray, values: np.ndarray, feature: str | None = None) -> None:
        cells = [_mean_cell(values, subject, m & recorded) for m in masks]
        out_rows.append({"label": label, "kind": "mean", "feature": feature, "cells": cells,
                         "smd": _smd_mean(cells[dev_with], cells[dev_without])})

    if AGE in position:
        recorded, values = column(AGE)
        add_mean("Age at the prediction time (years), mean (SD)", recorded, values, AGE)
    if FEMALE in position:
        add_recorded("Female, n (%)", column(FEMALE)[0], FEMALE)
    for group, levels in (audit or {}).items():
        levels = np.asarray(levels, dtype=object)
        if levels.size != X.shape[0]:
            raise ValueError(f"characteristics: {group} has {levels.size} levels for {X.shape[0]} rows; "
                             "give one level per row of rows.parquet (None where unrecorded)")
        present = pd.unique(levels).tolist()
        if all(v is None for v in present):
            continue
        order = _level_order(present)
        level_masks = [np.array([v is None for v in levels]) if level is None else levels == level for level in order]
        published = {r["level"]: r for r in subgroups or [] if r["group"] == group}
        per_level = [[None] * len(masks) for _ in order]
        for g_index, (m, g) in enumerate(zip(masks, groups, strict=True)):
            if g["split"] == "development":
                cells = _level_cells(level_masks, subject, m, g["rows"] is None, low[g_index])
            else:
                cells = [_mirrored_cell(published.get(level), g["outcome"], g["rows"], listed=bool(published))
                         for level in order]
            for k, cell in enumerate(cells):
                per_level[k][g_index] = cell
        for level, cells in zip(order, per_level, strict=True):
            out_rows.append({"label": f"{group.capitalize()}: {'not recorded' if level is None else level}, n (%)",
                             "kind": "recorded", "feature": None, "group": group, "level": level, "cells": cells,
                             "smd": _smd_binary(cells[dev_with], cells[dev_without])})
    described = dict(zip(columns["name"], columns.get("description", columns["name"]), strict=True))
    chosen = [n for n in importance["name"] if n in position and n not in (AGE, FEMALE)][:top]
    for name in chosen:
        recorded, values = column(name)
        description = described.get(name, name)
        add_recorded(f"{description}: recorded, n (%)", recorded, name)
        if not name.endswith("static/present/static"):  # a presence flag has no value beyond being recorded
            add_mean(f"{description}: mean (SD) where recorded", recorded, values, name)
    return {"groups": groups, "rows": out_rows, "top": len(chosen),
            "note": "development = train and tuning splits; standardized mean difference = development rows with "
                    "the outcome against those without"}
