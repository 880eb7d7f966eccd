"""Golden label cases at the boundaries of gap and horizon, and the task spec's errors."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from helpers import write_events

from forewarn.features import labels as L
from forewarn.records import schema

T = datetime(2020, 1, 1)
D = timedelta(days=1)
DESCRIPTION = (
    "Prediction time at an outpatient visit; feature window ends at the prediction time; "
    "label from the first outcome code after the gap; cannot leak because labels read only the future."
)


def spec(**changes) -> L.TaskSpec:
    data = {
        "name": "golden",
        "description": DESCRIPTION,
        "population": {"min_age_years": 18, "max_age_years": 90, "min_prior_observation_days": 365},
        "prediction_times": {"at_codes": ["Visit//OP"], "max_per_subject": 1, "seed": 0},
        "gap_days": 90,
        "horizon_days": 730,
        "outcome": {"codes": ["SNOMED//44054006", "ICD10CM//E11*"]},
    } | changes
    return L.parse_task(data)


# subject: (birth, first event, last event, first outcome or None) -> expected label or exclusion step
CASES = {
    1: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 900 * D, T + 91 * D, True),
    2: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 900 * D, T + 90 * D, True),  # first day after the gap
    3: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 900 * D, T + 89 * D, "in_gap"),
    4: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 900 * D, T, "prevalent"),  # outcome at t is prevalent
    5: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 900 * D, T + 730 * D, True),  # last day of the horizon
    6: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 900 * D, T + 731 * D, False),  # after the horizon
    7: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 730 * D, None, False),  # observed exactly to the horizon
    8: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 729 * D, None, "censored"),
    9: (datetime(2003, 1, 2), datetime(2015, 1, 1), T + 900 * D, None, "age"),  # 17 at t
    10: (datetime(1970, 1, 1), T - 364 * D, T + 900 * D, None, "prior_observation"),
}


def frame(cases=CASES, t=T):
    return pd.DataFrame(
        {
            "subject_id": list(cases),
            "prediction_time": [t] * len(cases),
            "birth": [c[0] for c in cases.values()],
            "first_time": [c[1] for c in cases.values()],
            "last_time": [c[2] for c in cases.values()],
            "outcome": [c[3] for c in cases.values()],
        }
    )


def test_golden_labels_and_attrition():
    labels, attrition = L.label_frame(frame(), spec())
    got = dict(zip(labels.column("subject_id").to_pylist(), labels.column("boolean_value").to_pylist(), strict=True))
    assert got == {1: True, 2: True, 5: True, 6: False, 7: False}
    assert labels.schema.equals(schema.LABEL_SCHEMA)
    removed = {k: v["times"] for k, v in attrition.items()}
    assert removed == {
        "candidates": 10, "age": 1, "prior_observation": 1, "prevalent": 1, "in_gap": 1,
        "censored": 1, "sampled_out": 0, "labelled": 5, "positive": 3,
    }


def test_no_prevalent_subject_is_ever_labelled():
    rng = np.random.default_rng(0)
    n = 500
    times = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 2000, n), unit="D")
    outcome = pd.Timestamp("2018-01-01") + pd.to_timedelta(rng.integers(0, 3000, n), unit="D")
    f = pd.DataFrame(
        {
            "subject_id": np.arange(n) // 3,
            "prediction_time": times,
            "birth": pd.Timestamp("1960-01-01"),
            "first_time": pd.Timestamp("2010-01-01"),
            "last_time": pd.Timestamp("2030-01-01"),
            "outcome": outcome,
        }
    )
    labels, _ = L.label_frame(f, spec(prediction_times={"at_codes": ["Visit//OP"], "max_per_subject": 3}))
    chosen = labels.to_pandas().merge(f, on=["subject_id", "prediction_time"])
    assert len(chosen) > 50
    assert (chosen["outcome"] > chosen["prediction_time"] + pd.Timedelta(days=89)).all()


def test_sampling_is_seeded_and_capped():
    cases = {s: (datetime(1970, 1, 1), datetime(2010, 1, 1), datetime(2030, 1, 1), None, False) for s in range(1, 4)}
    f = pd.concat([frame(cases, T + k * 30 * D) for k in range(6)], ignore_index=True)
    two = spec(prediction_times={"at_codes": ["Visit//OP"], "max_per_subject": 2, "seed": 1})
    a, attrition = L.label_frame(f, two)
    b, _ = L.label_frame(f.sample(frac=1, random_state=3), two)
    assert a.equals(b)  # independent of input order
    assert a.num_rows == 6 and attrition["sampled_out"]["times"] == 12
    other, _ = L.label_frame(f, spec(prediction_times={"at_codes": ["Visit//OP"], "max_per_subject": 2, "seed": 2}))
    assert not other.equals(a)


def test_build_labels_reads_events_with_prefix_and_cross_vocabulary_outcomes(tmp_path):
    e = tmp_path / "events"
    rows = []
    for s, outcome_code in ((1, "ICD10CM//E11.9"), (2, "SNOMED//44054006"), (3, "ICD10CM//E10.9")):
        rows += [
            (s, datetime(1970, 1, 1), "MEDS_BIRTH", None),
            (s, datetime(2015, 1, 1), schema.OBSERVATION_START, None),
            (s, T, "Visit//OP", None),
            (s, T + 200 * D, outcome_code, None),
            (s, T + 800 * D, schema.OBSERVATION_END, None),
        ]
    write_events(e, rows)
    labels, attrition = L.build_labels(e, spec())
    assert dict(zip(labels.column("subject_id").to_pylist(), labels.column("boolean_value").to_pylist(), strict=True)) == {
        1: True, 2: True, 3: False,  # E10 (type 1) is not an E11* outcome
    }


def test_builtin_task_loads_and_has_units():
    task = L.load_task("t2d_2y")
    assert (task.gap_days, task.horizon_days) == (90, 730)
    assert task.outcome.codes == ["SNOMED//44054006", "ICD10CM//E11*"]
    assert len(task.digest()) == 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"horizon": 3}, r"horizon: unknown key; allowed keys are \['description', 'gap_days', 'horizon_days'"),
        ({"population": {"min_age": 3}}, r"population.min_age: unknown key; allowed keys are \['max_age_years', 'min_age_years'"),
        ({"gap_days": 800}, "gap_days must be < horizon_days"),
        ({"description": "A task about diabetes that says nothing of interest at all, really."}, "does not mention"),
    ],
)
def test_task_errors_name_the_key(change, message):
    with pytest.raises(ValueError, match=message):
        spec(**change)


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"built-in task \[.*'t2d_2y'.*\] or a path"):
        L.load_task("nope")


def test_splits_are_stable_and_by_subject():
    ids = np.arange(1, 20001, dtype=np.int64)
    splits = L.assign_splits(ids, seed=0)
    assert list(L.assign_splits(ids[5000:6000], seed=0)) == list(splits[5000:6000])  # others do not move a subject
    share = {name: float(np.mean(splits == name)) for name in schema.SPLITS}
    assert share == pytest.approx({"train": 0.7, "tuning": 0.15, "held_out": 0.15}, abs=0.01)
    assert (L.assign_splits(ids, seed=1) != splits).mean() > 0.3
    with pytest.raises(ValueError, match="sum to 1"):
        L.assign_splits(ids, fractions=(0.5, 0.2, 0.2))
