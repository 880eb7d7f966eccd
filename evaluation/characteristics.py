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
  smallest first, until no hidden one comes back by subtraction
  (:func:`privacy.withhold`, as the subgroup tables' levels). Their held-out cells are the subgroup table's published
  rows and events of the level (with the outcome = events, without = rows - events),
  shown only where that table shows both, so they publish nothing it does not;
- no number is published at a precision that would give a hidden count back. A share
  whose group size is hidden is rounded to a step coarser than one row in a group the
  size the published split allows (1 / (split rows - 10)); exact, n / n_group would give
  n_group (and so the small group beside it) by its denominator. A mean and SD are
  rounded to 4 significant digits and to no finer than the values' own lattice over 11
  (integer values: 0.1; one decimal: 0.01), so the sum / count behind a mean cannot be
  solved for the count of rows it is over, which the table may hide (a "withheld"
  recorded cell, or a group whose size is hidden). The standardized mean difference
  comes from the rounded cells.

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
                   split_rows: int) -> dict:
    """How many of the group's rows have the predictor recorded, under the rule of 11;
    with ``size_hidden`` (the group's count is suppressed or withheld) the percentage
    only, since a count and its percentage give the group's size away, and that rounded
    so that every group size the published split's rows (``split_rows``) allow for it
    fits it (a step of at least 1 / (split_rows - 10))."""
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
    n = int(yes.sum())
    if not size_hidden:
        return {"n": n, "pct": n / n_group, "status": "shown"}
    low = split_rows - (privacy.MIN_CELL - 1)  # the fewest rows the hidden group may hold
    if low < privacy.MIN_CELL:
        return {"n": None, "pct": None, "status": WITHHELD}
    return {"n": None, "pct": _round(n / n_group, _step(1 / low)), "status": "shown"}


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


def _complement_levels(cells: list[dict], masks: list[np.ndarray]) -> None:
    """Withhold shown levels of one group beside its hidden ones (in place), as
    :func:`privacy.withhold` picks them over the levels' rows (``masks``: each level's rows
    in the group), which add up to the group's: until no hidden level is pinned by the
    total less the shown ones. Where that cannot be had, every level is withheld."""
    force = tuple(i for i, c in enumerate(cells) if c["status"] in (SUPPRESSED, WITHHELD))
    extra, exposed = privacy.withhold([int(m.sum()) for m in masks], force=force)
    for i in range(len(cells)):
        if (exposed and masks[i].any()) or (i in extra and i not in force):
            cells[i] = {"n": None, "pct": None, "status": WITHHELD}


def _mirrored_cell(published: dict | None, outcome: bool, group_rows: int | None) -> dict:
    """A held-out cell of a race or ethnicity level from the subgroup table's published
    row for it (``None``: no held-out row has the level, so 0): with the outcome its
    events, without them its rows less its events; hidden where the table hides either, or
    where the held-out group's own count is (a share would give it back)."""
    if group_rows is None:
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
    # each split's rows, published beside the table (the report's splits)
    split_rows = {name: int(np.isin(rows[schema.SPLIT].to_numpy(), splits).sum()) for name, splits in GROUP_SPLITS.items()}

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
        cells = [_recorded_cell(recorded, subject, m, g["rows"] is None, split_rows[g["split"]])
                 for m, g in zip(masks, groups, strict=True)]
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
                cells = [_recorded_cell(lm, subject, m, g["rows"] is None, split_rows[g["split"]]) for lm in level_masks]
                _complement_levels(cells, [lm & m for lm in level_masks])
            else:
                cells = [_mirrored_cell(published.get(level), g["outcome"], g["rows"]) if subgroups is not None
                         else {"n": None, "pct": None, "status": WITHHELD} for level in order]
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
