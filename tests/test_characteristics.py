"""The participants' characteristics table (TRIPOD+AI 20a) on a hand-made matrix: one
prediction time per subject, so subjects and rows coincide and every number is checked
by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from forewarn.evaluation.characteristics import AGE, FEMALE, characteristics
from forewarn.records import schema

LAB = "LOINC/4548-4/value/last/365d"
DX = "ICD10CM/E66/static/present/static"

# development with the outcome 24, without 30; held-out with 3, without 12.
GROUP_SIZES = ((schema.TRAIN, True, 24), (schema.TUNING, False, 30), (schema.HELD_OUT, True, 3),
               (schema.HELD_OUT, False, 12))


def matrix():
    split = np.concatenate([[s] * n for s, _, n in GROUP_SIZES])
    label = np.concatenate([[y] * n for _, y, n in GROUP_SIZES])
    n = split.size
    rows = pd.DataFrame({schema.SUBJECT_ID: np.arange(n), schema.SPLIT: split, schema.BOOLEAN_VALUE: label})
    age = np.concatenate([[60.0] * 12 + [70.0] * 12, [50.0] * 15 + [40.0] * 15, [80.0] * 3, [30.0] * 12])
    female = np.concatenate([[1] * 12 + [0] * 12, [1] * 11 + [0] * 19, [1, 0, 0], [1] * 12])
    # the lab: recorded for 20 of 24 (10 at 7, 10 at 9), 15 of 30 (all 5), none held out
    lab = np.concatenate([[7.0] * 10 + [9.0] * 10 + [np.nan] * 4, [5.0] * 15 + [np.nan] * 15, [np.nan] * 15])
    dx = np.concatenate([[1.0] * 24, [np.nan] * 30, [1.0] * 3, [np.nan] * 12])
    dense = np.column_stack([age, np.where(female > 0, 1.0, np.nan), lab, dx])
    r, c = np.nonzero(~np.isnan(dense))
    X = sp.csr_matrix((dense[r, c], (r, c)), shape=dense.shape)
    columns = pd.DataFrame({"name": [AGE, FEMALE, LAB, DX],
                            "description": ["age", "female", "HbA1c (LOINC 4548-4), last value, 365 days", "obesity"]})
    importance = pd.DataFrame({"name": [AGE, LAB, DX, FEMALE]})
    return X, rows, columns, importance


def test_one_small_group_withholds_all_four():
    """The groups form a 2x2 table whose margins the report publishes: the held-out split's
    size (15) gives 3 back from its 12 without the outcome, and the labelled total with
    the outcome (27) gives it back from the development rows' 24; so all four go."""
    record = characteristics(*matrix(), top=1)
    assert [(g["split"], g["outcome"], g["rows"], g["subjects"], g["rows_status"]) for g in record["groups"]] == [
        ("development", True, None, None, "withheld"), ("development", False, None, None, "withheld"),
        ("held_out", True, None, None, "suppressed"),  # 3: below 11
        ("held_out", False, None, None, "withheld"),
    ]
    # With 11 held-out subjects with the outcome every count is shown.
    X, rows, columns, importance = matrix()
    more = pd.DataFrame({schema.SUBJECT_ID: np.arange(100, 108), schema.SPLIT: schema.HELD_OUT, schema.BOOLEAN_VALUE: True})
    X = sp.vstack([X, sp.csr_matrix((8, X.shape[1]))]).tocsr()
    record = characteristics(X, pd.concat([rows, more], ignore_index=True), columns, importance, top=1)
    assert [(g["rows"], g["subjects"], g["rows_status"]) for g in record["groups"]] == [
        (24, 24, "shown"), (30, 30, "shown"), (11, 11, "shown"), (12, 12, "shown")]


def test_age_sex_and_the_top_predictor_by_hand():
    record = characteristics(*matrix(), top=1)
    assert [r["label"] for r in record["rows"]] == [
        "Age at the prediction time (years), mean (SD)", "Female, n (%)",
        "HbA1c (LOINC 4548-4), last value, 365 days: recorded, n (%)",
        "HbA1c (LOINC 4548-4), last value, 365 days: mean (SD) where recorded",
    ]
    age, female, recorded, lab = record["rows"]
    # age: 12 x 60 and 12 x 70 -> mean 65, SD sqrt(24 * 25 / 23) = 5.108; 15 x 50 and 15 x 40
    # -> 45, sqrt(30 * 25 / 29) = 5.086. Whole years: a sum over k rows is a whole number,
    # so a mean is shown to 0.1 (1 / 11 rounded up to a power of ten), and its SD with it.
    assert age["cells"][0] == {"mean": 65.0, "sd": 5.1, "status": "shown"}
    assert age["cells"][1] == {"mean": 45.0, "sd": 5.1, "status": "shown"}
    assert age["cells"][2] == {"mean": None, "sd": None, "status": "suppressed"}  # 3 subjects
    assert age["cells"][3] == {"mean": 30.0, "sd": 0.0, "status": "shown"}
    assert age["smd"] == pytest.approx(20 / 5.1)  # from the rounded cells
    # female: 12 of 24, 11 of 30, 1 of 3 (suppressed), 12 of 12 (none without); percentages
    # only, since the groups' sizes are withheld (see above), and rounded: the development
    # split's 54 rows leave a hidden group 44 to 53 rows, so to 0.1 (1 / 44 rounded up);
    # the held-out split's 15 rows, the "<11" beside it (1 to 10) and its own "withheld" (0 or
    # 11+) leave the held-out group without the outcome 11 to 14 rows: to 0.1 too.
    assert female["cells"][0] == {"n": None, "pct": 0.5, "status": "shown"}
    assert female["cells"][1] == {"n": None, "pct": 0.4, "status": "shown"}  # 11 / 30 = 0.367
    assert female["cells"][2]["status"] == "suppressed" and female["cells"][2]["n"] is None
    assert female["cells"][3] == {"n": None, "pct": 1.0, "status": "shown"}
    p1, p0 = 0.5, 0.4
    assert female["smd"] == pytest.approx((p1 - p0) / math.sqrt((p1 * (1 - p1) + p0 * (1 - p0)) / 2))
    # the lab recorded for 20 of 24: 4 without would give the count away -> withheld
    assert recorded["cells"][0] == {"n": None, "pct": None, "status": "withheld"}
    assert recorded["cells"][1] == {"n": None, "pct": 0.5, "status": "shown"}
    assert recorded["cells"][2]["status"] == "suppressed"  # none of 3 recorded: a group of 3 shows nothing
    assert recorded["cells"][3] == {"n": None, "pct": 0.0, "status": "shown"}  # none of 12 recorded
    assert recorded["smd"] is None  # one of its cells is not shown
    # its values where recorded: 10 x 7 and 10 x 9 -> 8, SD sqrt(20 / 19) = 1.026 -> 1.0; 15 x 5 -> 5, 0
    assert lab["cells"][0] == {"mean": 8.0, "sd": 1.0, "status": "shown"}
    assert lab["cells"][1] == {"mean": 5.0, "sd": 0.0, "status": "shown"}
    assert lab["cells"][3] == {"mean": None, "sd": None, "status": "empty"}
    assert lab["smd"] == pytest.approx(3 / math.sqrt(1.0 / 2))


def test_no_hidden_count_comes_back_from_a_shown_share_or_mean():
    """A reviewer's attack on the demo's reports: a share n / n_group at full precision in
    a group whose size is hidden gave n_group (5,743 held-out rows without a rare outcome,
    so 5 with it) by its denominator; a mean of whole numbers over a hidden count of rows
    gave that count (10,936 / 103). Rounded as shown, every count the published margins
    allow fits: for each candidate size there is a count whose share rounds the same, and
    for each candidate count of 11 or more a whole-number sum whose mean rounds the same."""
    from forewarn.evaluation.characteristics import _mean_cell, _recorded_cell

    rng = np.random.default_rng(0)
    # 5,748 held-out rows: 5,743 without the outcome (its size hidden), 3,080 of them female
    group = np.r_[np.ones(5743, bool), np.zeros(5, bool)]
    female = np.r_[np.arange(5743) < 3080, np.zeros(5, bool)]
    cell = _recorded_cell(female, np.arange(5748), group, True, 5738)  # 5,748 - 10: the fewest it may hold
    assert cell["n"] is None and cell["pct"] == 0.536  # 3,080 / 5,743 = 0.53631...
    for size in range(5738, 5748):  # every size 5,748 - 10 .. 5,747 has a count that rounds alike
        assert any(round(k / size, 3) == 0.536 for k in range(size + 1))
    # 103 whole-number glucose values, their count hidden beside 109 with the outcome
    values = rng.integers(70, 160, 103).astype(float)
    shown = _mean_cell(values, np.arange(103), np.ones(103, bool))
    assert shown["mean"] == round(values.mean(), 1) and shown["mean"] != values.mean()
    for k in range(11, 120):  # every count of 11+ rows has a whole sum whose mean rounds alike
        assert any(round(total / k, 1) == shown["mean"] for total in range(int(shown["mean"] * k) - k, int(shown["mean"] * k) + k))


def test_a_presence_flag_has_no_mean_row_and_top_limits_the_predictors():
    record = characteristics(*matrix(), top=2)
    labels = [r["label"] for r in record["rows"]]
    assert record["top"] == 2
    assert labels[-1] == "obesity: recorded, n (%)" and "obesity: mean (SD) where recorded" not in labels
    dx = record["rows"][-1]
    # recorded for all 24 and none of 30: nothing is small; no spread on either side, so no SMD
    assert dx["cells"][0] == {"n": None, "pct": 1.0, "status": "shown"}  # the groups' sizes are withheld
    assert dx["cells"][1] == {"n": None, "pct": 0.0, "status": "shown"}
    assert dx["cells"][2]["status"] == "suppressed"  # 3 of 3 recorded: 3 subjects
    assert dx["smd"] is None


def test_rows_and_matrix_must_match():
    X, rows, columns, importance = matrix()
    with pytest.raises(ValueError, match="the matrix has 69 rows but rows.parquet has 68"):
        characteristics(X, rows.iloc[:-1], columns, importance)


def test_per_row_shap_figures_draw_no_feature_recorded_or_missing_in_1_to_10_rows():
    from forewarn.evaluation.evaluate import absent_as_nan, plotted_features

    n = 40
    present = {0: 0, 1: 5, 2: 11, 3: 35, 4: 40, 5: 29, 6: 30}  # column -> rows recorded
    r = np.concatenate([np.arange(k) for k in present.values()])
    c = np.concatenate([[j] * k for j, k in present.items()])
    X = sp.csr_matrix((np.ones(r.size), (r, c)), shape=(n, len(present)))
    # 0: none recorded (nothing to draw); 1: 5 recorded; 3: 5 missing; 6: 10 missing -> never drawn; 2, 4 (all), 5 are
    assert plotted_features(X, [6, 5, 4, 3, 2, 1, 0], top=10) == [5, 4, 2]
    assert plotted_features(X, [6, 5, 4, 3, 2, 1, 0], top=2) == [5, 4]
    small = sp.csr_matrix(np.array([[0.0, 2.5], [7.0, 0.0]]))
    small.eliminate_zeros()
    dense = absent_as_nan(small)
    assert np.isnan(dense[0, 0]) and dense[0, 1] == 2.5 and dense[1, 0] == 7.0 and np.isnan(dense[1, 1])
    # a stored zero is a recorded value of 0, not absent
    stored = sp.csr_matrix((np.array([0.0]), (np.array([0]), np.array([0]))), shape=(1, 2))
    assert absent_as_nan(stored)[0, 0] == 0.0 and np.isnan(absent_as_nan(stored)[0, 1])


def test_per_row_shap_figures_draw_no_value_beyond_the_11th_smallest_or_largest_subjects():
    """A drawn value has 11 subjects at or below it and 11 at or above it. Column 0: 25
    subjects with 1..25: the 11th smallest is 11, the 11th largest 15, so 1..10 are drawn
    at 11 and 16..25 at 15. Column 1: 14 subjects with 1..14: the 11th smallest (11) is
    above the 11th largest (4), so no value may be drawn. Column 2: 10 subjects: none."""
    from forewarn.evaluation.evaluate import top_coded

    data = np.full((25, 3), np.nan)
    data[:, 0] = np.arange(1, 26)
    data[:14, 1] = np.arange(1, 15)
    data[:10, 2] = 3.0
    out = top_coded(data, np.arange(25))
    assert out[:, 0].tolist() == [11] * 11 + [12, 13, 14] + [15] * 11
    assert np.isnan(out[:, 1]).all() and np.isnan(out[:, 2]).all()
    # By subjects, not rows: 21 subjects with 1..21 and one with three rows, 1000, 2000, 3000.
    # Their largest values: 3000, 21, 20, ... -> the 11th is 12 (by rows it would be 14);
    # their smallest: 1, ..., 21, 1000 -> the 11th is 11.
    col = np.r_[np.arange(1, 22), 1000, 2000, 3000].astype(float).reshape(-1, 1)
    out = top_coded(col, np.r_[np.arange(21), 99, 99, 99])
    assert out[:, 0].tolist() == [11] * 11 + [12] * 13
    assert np.isnan(top_coded(np.full((3, 1), np.nan), np.arange(3))).all()


def race_case():
    """One row a subject. Development with the outcome, 42: White 20, Black 14, Asian 3,
    unrecorded 5; without, 52: White 30, Black 17, unrecorded 5; held-out with, 15, and
    without, 30 (their levels come from the subgroup table below)."""
    sizes = ((schema.TRAIN, True, 42), (schema.TUNING, False, 52), (schema.HELD_OUT, True, 15),
             (schema.HELD_OUT, False, 30))
    split = np.concatenate([[s] * n for s, _, n in sizes])
    label = np.concatenate([[y] * n for _, y, n in sizes])
    rows = pd.DataFrame({schema.SUBJECT_ID: np.arange(split.size), schema.SPLIT: split, schema.BOOLEAN_VALUE: label})
    white, black, asian = "White", "Black or African American", "Asian"
    race = np.array([white] * 20 + [black] * 14 + [asian] * 3 + [None] * 5
                    + [white] * 30 + [black] * 17 + [None] * 5
                    + [white] * 12 + [black] * 2 + [None] * 1 + [white] * 13 + [black] * 12 + [None] * 5, dtype=object)
    X = sp.csr_matrix((split.size, 1))
    columns = pd.DataFrame({"name": ["x"], "description": ["x"]})
    importance = pd.DataFrame({"name": []})
    # the held-out subgroup table as published: White 25 rows, 12 events; Black 14 rows,
    # events suppressed (2 with the outcome); unrecorded 6 rows: all suppressed
    subgroups = [{"group": "race", "level": white, "rows": 25, "events": 12},
                 {"group": "race", "level": black, "rows": 14, "events": None},
                 {"group": "race", "level": None, "rows": None, "events": None},
                 {"group": "sex", "level": "F", "rows": 45, "events": 15}]
    audit = {"race": race, "ethnicity": np.array([None] * split.size, dtype=object)}
    return X, rows, columns, importance, audit, subgroups


def test_race_levels_by_hand_with_their_complements_withheld():
    """A level's development cell under 11 subjects is hidden, and the smallest shown level
    beside it is withheld until no hidden count comes back from the group's rows by
    subtraction, nor is bounded below 10. With the outcome: Asian 3 and unrecorded 5 are
    hidden, but 42 - 20 - 14 = 8 would say each is 8 or fewer: Black (14) goes too, and
    then the hidden 22, less Black's 11 or more, leave Asian up to 11. Without: unrecorded
    5 alone would come back, so Black (17) goes (22 less 11: up to 11); Asian 0 is no
    count to hide. (Black at 12 and 15 would not be enough: White goes too.)
    Held-out cells are
    the subgroup table's (White 12 events of 25 rows, so 13 without); Black's events are
    suppressed there, so both of its cells are here; Asian has no held-out row: 0.
    Ethnicity, unrecorded for everyone, has no rows."""
    X, rows, columns, importance, audit, subgroups = race_case()
    record = characteristics(X, rows, columns, importance, audit=audit, subgroups=subgroups)
    assert [g["rows"] for g in record["groups"]] == [42, 52, 15, 30]
    race = record["rows"]
    assert [r["label"] for r in race] == ["Race: Asian, n (%)", "Race: Black or African American, n (%)",
                                         "Race: White, n (%)", "Race: not recorded, n (%)"]
    cells = {r["level"]: [(c["n"], c["status"]) for c in r["cells"]] for r in race}
    assert cells == {
        "Asian": [(None, "suppressed"), (0, "shown"), (0, "shown"), (0, "shown")],
        "Black or African American": [(None, "withheld"), (None, "withheld"), (None, "suppressed"), (None, "suppressed")],
        "White": [(20, "shown"), (30, "shown"), (12, "shown"), (13, "shown")],
        None: [(None, "suppressed"), (None, "suppressed"), (None, "suppressed"), (None, "suppressed")],
    }
    white = race[2]
    p1, p0 = 20 / 42, 30 / 52
    assert [c["pct"] for c in white["cells"]] == [p1, p0, 0.8, pytest.approx(13 / 30)]
    assert white["smd"] == pytest.approx((p1 - p0) / math.sqrt((p1 * (1 - p1) + p0 * (1 - p0)) / 2))
    assert race[0]["smd"] is None and all(r["feature"] is None and r["kind"] == "recorded" for r in race)
    # in every group the hidden levels are none, or two or more
    for k in range(4):
        hidden = [r for r in race if r["cells"][k]["status"] != "shown"]
        assert len(hidden) != 1
    # two subjects fewer in Black in each development group (12 and 15), and White goes too
    X, rows, columns, importance, audit, subgroups = race_case()
    audit["race"][[20, 21, 42 + 30, 42 + 31]] = "White"  # two Black subjects of each group now White
    record = characteristics(X, rows, columns, importance, audit=audit, subgroups=subgroups)
    assert [[c["status"] for c in r["cells"][:2]] for r in record["rows"]] == [
        ["suppressed", "shown"], ["withheld", "withheld"], ["withheld", "withheld"], ["suppressed", "suppressed"]]


def test_race_held_out_cells_without_the_subgroup_table_are_withheld_and_levels_must_match_rows():
    X, rows, columns, importance, audit, _ = race_case()
    record = characteristics(X, rows, columns, importance, audit=audit)
    assert all(r["cells"][k]["status"] == "withheld" for r in record["rows"] for k in (2, 3))
    with pytest.raises(ValueError, match="race has 138 levels for 139 rows"):
        characteristics(X, rows, columns, importance, audit={"race": audit["race"][:-1]})


def level_group(counts: dict[str, int]):
    """One development group of one row a subject, its levels' masks in ``LEVELS`` order."""
    levels = np.array([level for level, n in counts.items() for _ in range(n)], dtype=object)
    masks = [levels == level for level in LEVELS]
    return masks, np.arange(levels.size), np.ones(levels.size, bool)


LEVELS = ("Asian", "Black or African American", "White")


def statuses(cells):
    return [c["status"] if c["status"] != "shown" else c["n"] for c in cells]


def test_a_groups_race_levels_are_hidden_alike_where_any_label_would_tell():
    """A reviewer's attacks on the levels' labels, each with the group's rows published:
    5 White with the outcome (a group of 5): every level "<11", the empty one too (else
    the labels say all 5 are White); 11 White and 1 Black: withholding White would leave
    Black 12 - 11 = 1, so every level is withheld alike; White 300, Black 5, Asian 4: White
    is withheld beside them, and so it is beside Black 6 and Asian 5, whose sum alone
    would not need it (a withheld level only where the hidden sum is small would say so)."""
    from forewarn.evaluation.characteristics import _level_cells

    assert statuses(_level_cells(*level_group({"White": 5}), False, 5)) == ["suppressed"] * 3
    assert statuses(_level_cells(*level_group({"White": 11, "Black or African American": 1}), False, 12)) == [
        "withheld"] * 3
    for black, asian in ((5, 4), (6, 5)):
        cells = _level_cells(*level_group({"White": 300, "Black or African American": black, "Asian": asian}), False, 309)
        assert statuses(cells) == ["suppressed", "suppressed", "withheld"], (black, asian)
    # nothing small: every level shown, an empty one as 0
    cells = _level_cells(*level_group({"White": 30, "Black or African American": 20}), False, 50)
    assert statuses(cells) == [0, 20, 30] and [c["pct"] for c in cells] == [0.0, 0.4, 0.6]


def test_a_hidden_groups_shares_are_rounded_for_the_smallest_size_its_margins_allow():
    """A reviewer's attack: development 300 with the outcome (150 / 90 / 60 by level) and
    1,700 without, held-out 5 with and 500 without: all four sizes hidden (5 is small).
    Rounded for the development split (2,000 - 10 rows: 0.001) the shares 0.5 / 0.3 / 0.2
    fit 300 alone of the sizes the margins allow (295 to 304: 305 with the outcome less
    the held-out 1 to 10), which gives the held-out 5 back. The labels and margins allow
    295 to 304, so the step is 0.01, and every one of those sizes fits."""
    from forewarn.evaluation.characteristics import _level_cells, _size_floors

    floors = _size_floors([300, 1700, 5, 500], {"development": 2000, "held_out": 505},
                          ["withheld", "withheld", "suppressed", "withheld"])
    assert floors == [295, 1696, 1, 495]
    cells = _level_cells(*level_group({"White": 150, "Black or African American": 90, "Asian": 60}), True, floors[0])
    shares = [c["pct"] for c in cells]
    assert shares == [0.2, 0.3, 0.5] and all(c["n"] is None for c in cells)
    for size in range(295, 305):
        assert all(any(round(k / size, 2) == share for k in range(size + 1)) for share in shares)
    # shown groups have their own sizes; a 2x2 with nothing hidden has no window
    assert _size_floors([300, 1700, 15, 500], {"development": 2000, "held_out": 515}, ["shown"] * 4) == [300, 1700, 15, 500]


def test_a_subgroup_table_without_the_groups_rows_gives_its_held_out_cells_nothing_to_mirror():
    X, rows, columns, importance, audit, subgroups = race_case()
    record = characteristics(X, rows, columns, importance, audit=audit,
                             subgroups=[r for r in subgroups if r["group"] != "race"])
    assert all(r["cells"][k]["status"] == "withheld" for r in record["rows"] for k in (2, 3))
