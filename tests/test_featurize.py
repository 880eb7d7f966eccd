"""Windowed features: a golden case by eye, both window boundaries, and a brute-force
property test that also shows events after the prediction time never change a feature."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from helpers import label_table, write_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forewarn.features.featurize import FeatureConfig, featurize
from forewarn.records import schema

T = datetime(2020, 12, 31)
HBA1C = "LOINC//4548-4"
ALL_AGGS = [
    "code/count", "code/days_since_last", "value/count", "value/sum", "value/sum_sqd", "value/min", "value/max",
    "value/mean", "value/last", "value/slope",
]


def run(tmp_path, rows, labels, config, splits=None):
    write_events(tmp_path / "events", rows)
    subjects = sorted({r[0] for r in labels})
    splits = splits if splits is not None else pd.DataFrame({"subject_id": subjects, "split": "train"})
    X, r, c = featurize(tmp_path / "events", label_table(labels), splits, tmp_path / "out", config).load()
    return X.toarray(), r, c


def golden_rows():
    return [
        (1, None, "Gender//F", None),
        (1, datetime(1980, 1, 1), "MEDS_BIRTH", None),
        (1, datetime(2020, 1, 1), HBA1C, 5.0),  # exactly t - 365d: outside the 365d window
        (1, datetime(2020, 6, 1), HBA1C, 6.0),
        (1, datetime(2020, 12, 1), HBA1C, 9.0),  # exactly t - 30d: outside 30d, inside 365d
        (1, T, HBA1C, 7.0),  # exactly t: inside every window
        (1, T, "Visit//OP", None),
        (1, datetime(2021, 1, 1), HBA1C, 100.0),  # after t: never seen
    ]


def test_golden_values_and_both_window_boundaries(tmp_path):
    X, rows, cols = run(tmp_path, golden_rows(), [(1, T, True)], FeatureConfig(min_code_subjects=1))
    got = dict(zip(cols["name"], X[0], strict=True))
    assert got["AGE/years/at_prediction/t"] == pytest.approx((T - datetime(1980, 1, 1)).days / 365.25)
    assert got["Gender//F/static/present/static"] == 1
    expected = {
        "30d": {"code/count": 1, "value/mean": 7.0, "value/min": 7.0, "value/max": 7.0, "value/last": 7.0},
        "365d": {"code/count": 3, "value/mean": 22 / 3, "value/min": 6.0, "value/max": 9.0, "value/last": 7.0},
        "full": {"code/count": 4, "value/mean": 6.75, "value/min": 5.0, "value/max": 9.0, "value/last": 7.0},
    }
    for window, aggs in expected.items():
        for agg, value in aggs.items():
            assert got[f"{HBA1C}/{agg}/{window}"] == pytest.approx(value), (agg, window)
    assert got["Visit//OP/code/count/30d"] == 1
    assert "Visit//OP/value/mean/30d" not in got  # codes without values get no value columns
    assert list(rows["subject_id"]) == [1] and rows["split"].tolist() == ["train"]


def test_readable_names_from_code_descriptions(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_events(tmp_path / "events", golden_rows())
    codes = tmp_path / "codes.parquet"
    pq.write_table(pa.table({"code": [HBA1C], "description": ["Hemoglobin A1c"], "parent_codes": [[]]}), codes)
    m = featurize(
        tmp_path / "events", label_table([(1, T, True)]), pd.DataFrame({"subject_id": [1], "split": ["train"]}),
        tmp_path / "out", FeatureConfig(min_code_subjects=1), codes_path=codes,
    )
    names = dict(zip(m.load()[2]["name"], m.load()[2]["description"], strict=True))
    assert names[f"{HBA1C}/value/last/365d"] == "Hemoglobin A1c (LOINC 4548-4), last value, 365 days"
    assert names[f"{HBA1C}/code/count/full"] == "Hemoglobin A1c (LOINC 4548-4), count, all history"
    assert names["AGE/years/at_prediction/t"] == "Age in years at prediction time"


def test_vocabulary_comes_from_the_train_split_only(tmp_path):
    rows = [(1, T, "A//train-only", 1.0), (2, T, "B//held-out-only", 1.0), (1, T, "C//both", None), (2, T, "C//both", None)]
    splits = pd.DataFrame({"subject_id": [1, 2], "split": ["train", "held_out"]})
    X, _, cols = run(tmp_path, rows, [(1, T, True), (2, T, False)], FeatureConfig(min_code_subjects=1), splits)
    codes = set(cols["code"])
    assert "A//train-only" in codes and "C//both" in codes and "B//held-out-only" not in codes


@pytest.mark.parametrize("bad", [{"windows": ["7"]}, {"windows": ["0d"]}, {"aggs": ["value/median"]}, {"window": ["7d"]}])
def test_feature_config_errors(bad):
    with pytest.raises(ValueError):
        FeatureConfig(**bad)


def brute_force(events, t, code, window_days, agg):
    """The definition, written the slow way: t - w < e <= t."""
    lo = None if window_days is None else t - timedelta(days=window_days)
    inside = sorted([(e, v) for (e, c, v) in events if c == code and e <= t and (lo is None or e > lo)], key=lambda x: x[0])
    values = [v for _, v in inside if v is not None]
    if agg == "code/count":
        return len(inside) or None
    if agg == "code/days_since_last":
        return (t - inside[-1][0]).total_seconds() / 86400 if inside else None
    if not values:
        return None
    if agg == "value/slope":
        pts = [((e - datetime(2000, 1, 1)).total_seconds() / 86400 / 365.25, v) for e, v in inside if v is not None]
        if len(pts) < 2 or len({x for x, _ in pts}) < 2:
            return None
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return {
        "value/count": len(values), "value/sum": sum(values), "value/sum_sqd": sum(v * v for v in values),
        "value/min": min(values), "value/max": max(values), "value/mean": sum(values) / len(values),
        "value/last": values[-1],
    }[agg]


event = st.tuples(
    st.integers(-400, 400).map(lambda d: T + timedelta(days=d)),
    st.sampled_from(["X//1", "X//2"]),
    st.one_of(st.none(), st.integers(-50, 50).map(float)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(event, min_size=1, max_size=25), offsets=st.lists(st.integers(-100, 100), min_size=1, max_size=3, unique=True))
def test_matches_the_definition_and_never_sees_the_future(tmp_path_factory, events, offsets):
    # Distinct event times keep "last value" well defined.
    seen, unique_events = set(), []
    for e in events:
        if (e[0], e[1]) not in seen:
            seen.add((e[0], e[1]))
            unique_events.append(e)
    times = [T + timedelta(days=o) for o in offsets]
    config = FeatureConfig(windows=["1d", "30d", "365d", "full"], aggs=ALL_AGGS, min_code_subjects=1)
    base = [(1, None, "Gender//M", None), (1, datetime(1970, 1, 1), "MEDS_BIRTH", None), (1, datetime(1990, 1, 1), "X//1", 1.0), (1, datetime(1990, 1, 1), "X//2", 2.0)]
    rows = base + [(1, e, c, v) for e, c, v in unique_events]
    labels = [(1, t, False) for t in times]
    tmp = tmp_path_factory.mktemp("prop")
    X, rows_out, cols = run(tmp, rows, labels, config)
    all_events = [(datetime(1990, 1, 1), "X//1", 1.0), (datetime(1990, 1, 1), "X//2", 2.0), *unique_events]
    for i, t in enumerate(rows_out["prediction_time"].dt.to_pydatetime()):
        for j, (code, agg, window) in enumerate(zip(cols["code"], cols["agg"], cols["window"], strict=True)):
            if not code.startswith("X//"):
                continue
            expected = brute_force(all_events, t, code, None if window == "full" else int(window[:-1]), agg)
            tolerance = 1e-2 if agg == "value/slope" else 1e-4  # float32 storage of a ratio of sums
            assert X[i, j] == pytest.approx(0.0 if expected is None else expected, rel=1e-4, abs=tolerance), (t, code, agg, window)
    # Planting events after every prediction time (outcome codes included) changes nothing.
    last_t = max(times)
    future = [(1, last_t + timedelta(days=d), c, 99.0) for d in (1, 30) for c in ("X//1", "X//2", "SNOMED//44054006")]
    X2, _, cols2 = run(tmp_path_factory.mktemp("prop"), rows + future, labels, config)
    shared = [n for n in cols["name"] if n in set(cols2["name"])]
    a = pd.DataFrame(X, columns=cols["name"])[shared]
    b = pd.DataFrame(X2, columns=cols2["name"])[shared]
    assert np.array_equal(a.to_numpy(), b.to_numpy())
    assert set(cols2["name"]) - set(cols["name"]) <= {n for n in cols2["name"] if n.startswith("SNOMED//")}
    assert not pd.DataFrame(X2, columns=cols2["name"]).filter(like="SNOMED//").to_numpy().any()


def test_labels_without_events_get_rows(tmp_path):
    rows = [(1, T, "X//1", 1.0)]
    labels = [(1, T, True), (7, T, False)]
    X, r, _ = run(tmp_path, rows, labels, FeatureConfig(min_code_subjects=1), pd.DataFrame({"subject_id": [1, 7], "split": ["train", "train"]}))
    assert list(r[schema.SUBJECT_ID]) == [1, 7] and X.shape[0] == 2 and not X[1].any()


def test_rollup_static_first_and_parallel_shards_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        (1, None, "Gender//F", None), (1, None, "STATIC//HEIGHT", 170.0), (1, datetime(1980, 1, 1), "MEDS_BIRTH", None),
        (1, datetime(2020, 1, 1), "ICD10CM//E11.9", None), (1, datetime(2020, 2, 1), "ICD10CM//E11.65", None),
        (1, datetime(2020, 3, 1), "LOCAL//A1C", 7.0),
    ]
    write_events(tmp_path / "events", rows, shard="0")
    write_events(tmp_path / "events", [(2, datetime(2020, 3, 1), "ICD10CM//E11.9", None), (2, datetime(1970, 1, 1), "MEDS_BIRTH", None)], shard="1")
    codes = tmp_path / "codes.parquet"
    pq.write_table(pa.table({"code": ["LOCAL//A1C"], "description": ["A1c"], "parent_codes": [["LOINC//4548-4"]]}), codes)
    labels = label_table([(1, T, True), (2, T, False)])
    splits = pd.DataFrame({"subject_id": [1, 2], "split": ["train", "train"]})
    config = FeatureConfig(windows=["full"], aggs=["code/count", "value/last", "static/first"], min_code_subjects=1)
    one = featurize(tmp_path / "events", labels, splits, tmp_path / "one", config, codes_path=codes).load()
    two = featurize(tmp_path / "events", labels, splits, tmp_path / "two", config.model_copy(update={"n_workers": 2}), codes_path=codes).load()
    assert (one[0] != two[0]).nnz == 0 and one[2].equals(two[2])
    got = dict(zip(one[2]["name"], one[0].toarray()[0], strict=True))
    assert got["ICD10CM//E11/code/count/full"] == 2  # E11.9 and E11.65 roll up to E11
    assert got["ICD10CM//E11.9/code/count/full"] == 1
    assert got["LOINC//4548-4/value/last/full"] == 7.0  # metadata parent
    assert got["STATIC//HEIGHT/static/first/static"] == 170.0
    assert got["Gender//F/static/present/static"] == 1
    no_rollup = config.model_copy(update={"rollup_icd10": False, "parent_codes": False})
    names = set(featurize(tmp_path / "events", labels, splits, tmp_path / "three", no_rollup, codes_path=codes).load()[2]["name"])
    assert "ICD10CM//E11/code/count/full" not in names and "LOINC//4548-4/value/last/full" not in names


def test_min_code_frequency(tmp_path):
    rows = [(s, T, "COMMON//1", None) for s in range(1, 11)] + [(1, T, "RARE//1", None)]
    splits = pd.DataFrame({"subject_id": range(1, 11), "split": "train"})
    _, _, cols = run(tmp_path, rows, [(s, T, False) for s in range(1, 11)], FeatureConfig(min_code_subjects=1, min_code_frequency=0.2), splits)
    assert set(cols["code"]) == {"AGE", "COMMON//1"}


def test_no_column_that_no_train_row_can_fill(tmp_path):
    """The vocabulary counts a code anywhere in a train subject's record, so a code seen
    only after every prediction time (here the outcome's) once became a column that no row
    could hold: gone, with the column of a code some train row holds kept (LATE//1, seen
    by subject 2's later prediction time). Given columns (a model's, applied elsewhere)
    are kept whole, empty or not."""
    rows = [(s, None, "Gender//F", None) for s in (1, 2)]
    rows += [(1, T, "EARLY//1", None), (2, T - timedelta(days=3), "EARLY//1", None)]
    rows += [(1, T + timedelta(days=1), "OUTCOME//1", None), (2, T + timedelta(days=70), "OUTCOME//1", None)]
    rows += [(2, T + timedelta(days=40), "LATE//1", None), (2, T + timedelta(days=50), "LATE//1", None)]
    labels = [(1, T, False), (2, T, False), (2, T + timedelta(days=60), True)]
    config = FeatureConfig(windows=["full"], aggs=["code/count", "static/present"], min_code_subjects=1)
    X, _, cols = run(tmp_path / "own", rows, labels, config)
    # AGE stays though no one here has a birth record: it is no code, and subgroups read it.
    assert list(cols["name"]) == ["AGE/years/at_prediction/t", "EARLY//1/code/count/full",
                                  "Gender//F/static/present/static", "LATE//1/code/count/full"]
    assert X[:, 3].tolist() == [0, 0, 2]  # unstored: 0 in the dense view
    everything = pd.DataFrame({"name": ["AGE/years/at_prediction/t", "OUTCOME//1/code/count/full"], "code": ["AGE", "OUTCOME//1"],
                               "agg": ["years/at_prediction", "code/count"], "window": ["t", "full"]})
    write_events(tmp_path / "given" / "events", rows)
    m = featurize(tmp_path / "given" / "events", label_table(labels), pd.DataFrame({"subject_id": [1, 2], "split": "train"}),
                  tmp_path / "given" / "out", config, columns=everything)
    assert list(m.load()[2]["name"]) == ["AGE/years/at_prediction/t", "OUTCOME//1/code/count/full"]
    assert m.load()[0].nnz == 0


def test_given_columns_apply_a_model_trained_elsewhere(tmp_path):
    X, _, cols = run(tmp_path / "a", golden_rows(), [(1, T, True)], FeatureConfig(min_code_subjects=1))
    other = [(2, datetime(1990, 1, 1), "MEDS_BIRTH", None), (2, T, HBA1C, 8.0), (2, T, "LOCAL//unseen", 1.0)]
    write_events(tmp_path / "b" / "events", other)
    m = featurize(tmp_path / "b" / "events", label_table([(2, T, False)]), pd.DataFrame({"subject_id": [2], "split": ["held_out"]}),
                  tmp_path / "b" / "out", FeatureConfig(min_code_subjects=1), columns=cols)
    Xb, _, cols_b = m.load()
    assert list(cols_b["name"]) == list(cols["name"])  # same columns, same order
    got = dict(zip(cols_b["name"], Xb.toarray()[0], strict=True))
    assert got[f"{HBA1C}/value/last/30d"] == 8.0 and got["Visit//OP/code/count/full"] == 0


def test_shards_linked_from_folders_with_the_same_file_names(tmp_path):
    """Events gathered from two sites as links to their ``0.parquet`` shards: each shard
    keeps its own block (the spill names come from the full target path)."""
    write_events(tmp_path / "a", [(1, T, "X//1", 1.0), (1, datetime(1980, 1, 1), "MEDS_BIRTH", None)], shard="0")
    write_events(tmp_path / "b", [(2, T, "X//1", 5.0), (2, T, "X//1", 6.0)], shard="0")
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "a-0.parquet").symlink_to(tmp_path / "a" / "0.parquet")
    (tmp_path / "events" / "b-0.parquet").symlink_to(tmp_path / "b" / "0.parquet")
    splits = pd.DataFrame({"subject_id": [1, 2], "split": ["train", "train"]})
    config = FeatureConfig(windows=["full"], aggs=["value/count", "value/sum"], min_code_subjects=1)
    X, rows, columns = featurize(tmp_path / "events", label_table([(2, T, True), (1, T, False)]), splits, tmp_path / "out", config).load()
    got = {(s, n): v for s, row in zip(rows[schema.SUBJECT_ID], X.toarray(), strict=True) for n, v in zip(columns["name"], row, strict=True)}
    assert got[(1, "X//1/value/count/full")] == 1 and got[(1, "X//1/value/sum/full")] == 1.0
    assert got[(2, "X//1/value/count/full")] == 2 and got[(2, "X//1/value/sum/full")] == 11.0
    assert not list((tmp_path / "out").glob(".shards-*"))  # the spilled blocks are gone


def test_subject_batches_within_a_shard_give_the_same_matrix(tmp_path):
    rng = np.random.default_rng(4)
    rows = [(s, None, "Gender//F" if s % 2 else "Gender//M", None) for s in range(1, 8)]
    rows += [(s, datetime(1960 + s, 1, 1), "MEDS_BIRTH", None) for s in range(1, 8)]
    rows += [(int(s), T - timedelta(days=int(d)), code, float(v)) for s, d, code, v in zip(
        rng.integers(1, 8, 300), rng.integers(0, 900, 300), rng.choice(["LAB//A", "LAB//B"], 300), rng.normal(5, 2, 300), strict=True)]
    rows.sort(key=lambda r: (r[0], r[1] or datetime.min))
    write_events(tmp_path / "events", rows)
    labels = label_table([(s, T - timedelta(days=k * 100), k % 2 == 0) for s in range(1, 9) for k in range(2)])
    splits = pd.DataFrame({"subject_id": range(1, 9), "split": "train"})
    config = FeatureConfig(aggs=ALL_AGGS + ["static/present"], min_code_subjects=1)
    whole = featurize(tmp_path / "events", labels, splits, tmp_path / "whole", config).load()
    batched = featurize(tmp_path / "events", labels, splits, tmp_path / "batched", config.model_copy(update={"batch_subjects": 2})).load()
    assert whole[0].shape == (16, len(whole[2])) and whole[0].nnz > 100
    assert (whole[0] != batched[0]).nnz == 0 and whole[1].equals(batched[1]) and whole[2].equals(batched[2])


def test_a_slope_needs_values_spanning_slope_min_days(tmp_path):
    """Weight 80 kg, then 82 kg five days later: 2 kg in 5 days is a slope of 146 kg a
    year, noise read as a trend. With ``slope_min_days`` 30 the 5-day pair has no slope;
    a third value 60 days before gives one (least squares over all three, per year)."""
    W = "LOINC//29463-7"
    t = datetime(2021, 1, 1)
    short = [(1, None, "Gender//M", None), (1, datetime(1970, 1, 1), "MEDS_BIRTH", None),
             (1, t - timedelta(days=10), W, 80.0), (1, t - timedelta(days=5), W, 82.0)]
    config = FeatureConfig(windows=["365d"], aggs=["value/slope"], min_code_subjects=1)
    X, _, cols = run(tmp_path / "a", short, [(1, t, False)], config)
    slope = list(cols["name"]).index(f"{W}/value/slope/365d")
    assert X[0, slope] == pytest.approx(2 / (5 / 365.25), rel=1e-4)  # 146.1 a year
    X, _, cols = run(tmp_path / "b", short, [(1, t, False)], config.model_copy(update={"slope_min_days": 30}))
    assert f"{W}/value/slope/365d" not in set(cols["name"]) or X[0, list(cols["name"]).index(f"{W}/value/slope/365d")] == 0
    longer = [*short, (1, t - timedelta(days=70), W, 79.0)]
    X, _, cols = run(tmp_path / "c", longer, [(1, t, False)], config.model_copy(update={"slope_min_days": 30}))
    days = np.array([-70.0, -10.0, -5.0]) / 365.25
    values = np.array([79.0, 80.0, 82.0])
    expected = np.polyfit(days, values, 1)[0]
    assert X[0, list(cols["name"]).index(f"{W}/value/slope/365d")] == pytest.approx(expected, rel=1e-3)


def test_race_and_ethnicity_are_never_predictors_unless_asked(tmp_path):
    """Static codes of the Race and Ethnicity vocabularies (any case: a MEDS source's
    ``RACE//WHITE`` too) are the fairness audit's subgroups: by default no column is
    made of them, while the gender code beside them is; ``audit_vocabularies: []``
    lets them in like any code."""
    rows = [(s, None, code, None) for s in (1, 2) for code in ("Gender//F", "Race//5", "Ethnicity//Hispanic", "RACE//WHITE")]
    rows += [(s, datetime(1970, 1, 1), "MEDS_BIRTH", None) for s in (1, 2)]
    labels = [(1, T, True), (2, T, False)]
    _, _, cols = run(tmp_path / "a", rows, labels, FeatureConfig(min_code_subjects=1))
    assert sorted(cols["name"]) == ["AGE/years/at_prediction/t", "Gender//F/static/present/static"]
    X, _, cols = run(tmp_path / "b", rows, labels, FeatureConfig(min_code_subjects=1, audit_vocabularies=[]))
    assert sorted(cols["name"]) == ["AGE/years/at_prediction/t", "Ethnicity//Hispanic/static/present/static",
                                    "Gender//F/static/present/static", "RACE//WHITE/static/present/static",
                                    "Race//5/static/present/static"]
    assert X[:, list(cols["name"]).index("Race//5/static/present/static")].tolist() == [1, 1]
    # one vocabulary named: the other comes in
    _, _, cols = run(tmp_path / "c", rows, labels, FeatureConfig(min_code_subjects=1, audit_vocabularies=["race"]))
    assert "Ethnicity//Hispanic/static/present/static" in set(cols["name"]) and not any(
        n.lower().startswith("race//") for n in cols["name"])
