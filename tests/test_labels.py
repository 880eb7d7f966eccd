"""Golden label cases at the boundaries of gap and horizon, and the task spec's errors."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
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


def test_a_positive_needs_follow_up_too_unless_a_death_ended_its_record():
    # (last event, first outcome, death): the outcome 100 days on, inside the window
    cases = {1: (T + 400 * D, T + 100 * D, None),  # the record ends before the horizon: censored
             2: (T + 300 * D, T + 100 * D, T + 300 * D),  # died before the horizon: kept, positive
             3: (T + 730 * D, T + 100 * D, None),  # observed to the horizon: positive
             4: (T + 400 * D, None, T + 400 * D)}  # died without it: censored, as before
    f = pd.DataFrame({"subject_id": list(cases), "prediction_time": [T] * 4, "birth": [datetime(1970, 1, 1)] * 4,
                      "first_time": [datetime(2015, 1, 1)] * 4, "last_time": [c[0] for c in cases.values()],
                      "outcome": [c[1] for c in cases.values()], "death": [c[2] for c in cases.values()]})
    labels, attrition = L.label_frame(f, spec())
    assert labels.to_pydict()["subject_id"] == [2, 3] and labels.to_pydict()["boolean_value"] == [True, True]
    assert attrition["censored"] == {"times": 2, "subjects": 2}
    # follow_up: negatives keeps every positive (PatientLevelPrediction's includeAllOutcomes)
    labels, attrition = L.label_frame(f, spec(follow_up="negatives"))
    assert labels.to_pydict()["subject_id"] == [1, 2, 3] and attrition["censored"] == {"times": 1, "subjects": 1}
    assert spec(follow_up="negatives").digest() != spec().digest()
    # negatives, the rule before the field existed, keeps the digest models were registered under then
    import hashlib

    # (and sample_from "eligible", the draw before that field existed)
    before = hashlib.sha256(spec().model_dump_json(exclude={"follow_up": True, "prediction_times": {"sample_from"}})
                            .encode()).hexdigest()[:16]
    assert spec(follow_up="negatives").digest() == before
    with pytest.raises(ValueError, match="follow_up"):
        spec(follow_up="positives")


def test_temporal_design_excludes_times_whose_horizon_crosses_the_cutoff():
    # Subjects 1, 2, 6 and 7 of the golden cases, all at T; horizon 730 days.
    cases = {s: CASES[s] for s in (1, 2, 6, 7)}
    keep = {1: True, 2: True, 6: False, 7: False}
    cutoff_at_horizon = spec(temporal_split={"held_out_from": T + 730 * D})  # the window ends on the cutoff: kept
    labels, attrition = L.label_frame(frame(cases), cutoff_at_horizon)
    assert dict(zip(labels.column("subject_id").to_pylist(), labels.column("boolean_value").to_pylist(),
                    strict=True)) == keep
    assert attrition["crosses_cutoff"] == {"times": 0, "subjects": 0}
    # A day earlier, every window ends after the cutoff: none of these times may train.
    labels, attrition = L.label_frame(frame(cases), spec(temporal_split={"held_out_from": T + 729 * D}))
    assert labels.num_rows == 0 and attrition["crosses_cutoff"] == {"times": 4, "subjects": 4}
    # From the cutoff on, times are held out whatever their horizon.
    labels, attrition = L.label_frame(frame(cases), spec(temporal_split={"held_out_from": T}))
    assert labels.num_rows == 4 and attrition["crosses_cutoff"]["times"] == 0
    # Without a temporal split there is no such step.
    assert "crosses_cutoff" not in L.label_frame(frame(cases), spec())[1]


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


def visits(cases: dict, every_days: int, n: int) -> pd.DataFrame:
    """``frame(cases)`` at ``n`` visits ``every_days`` apart from T."""
    return pd.concat([frame(cases, T + k * every_days * D) for k in range(n)], ignore_index=True)


def test_sample_from_population_draws_before_the_outcome_and_follow_up_exclusions():
    # 1: a future case, outcome 500 days after T: visits T and T+365 are positive, T+730 and
    #    T+1095 prevalent. 2: never a case. 3: record ends T+1500, so T+1095 is censored.
    #    4: 17 at T (born mid-2002): T is outside the age range, the later visits are not.
    cases = {1: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 3000 * D, T + 500 * D),
             2: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 3000 * D, None),
             3: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 1500 * D, None),
             4: (datetime(2002, 6, 1), datetime(2015, 1, 1), T + 3000 * D, None)}
    f = visits(cases, 365, 4)
    rows = {seed: L.label_frame(f, spec(prediction_times={"at_codes": ["Visit//OP"], "seed": seed,
                                                          "sample_from": "population"}))
            for seed in range(40)}
    for seed, (labels, attrition) in rows.items():
        # the draw is the eligible draw of the same seed on the times only the population
        # criteria remove (no outcome, nobody censored), kept where it survives the exclusions
        drawn, _ = L.label_frame(f.assign(outcome=None, last_time=T + 9000 * D),
                                 spec(prediction_times={"at_codes": ["Visit//OP"], "seed": seed}))
        every, _ = L.label_frame(f, spec(prediction_times={"at_codes": ["Visit//OP"], "max_per_subject": 10}))
        keys = ["subject_id", "prediction_time"]
        expected = drawn.to_pandas()[keys].merge(every.to_pandas(), on=keys)
        assert labels.to_pandas().equals(expected), seed
        assert list(attrition) == ["candidates", "age", "prior_observation", "sampled_out", "prevalent", "in_gap",
                                   "censored", "labelled", "positive"]
        assert attrition["sampled_out"] == {"times": 16 - 1 - 4, "subjects": 0}  # one drawn of each subject's times
        assert attrition["candidates"]["times"] - sum(v["times"] for k, v in attrition.items() if k not in (
            "candidates", "labelled", "positive")) == attrition["labelled"]["times"] == labels.num_rows
    # subject 1 is labelled (positive) only when its draw falls before the onset; under the
    # eligible draw it always is, and always positive
    one = [labels.to_pandas().set_index("subject_id")["boolean_value"].get(1) for labels, _ in rows.values()]
    assert {True, None} == set(one) and sum(v is None for v in one) >= 10
    eligible, _ = L.label_frame(f, spec())
    assert eligible.to_pandas().set_index("subject_id")["boolean_value"].to_dict() == {1: True, 2: False, 3: False,
                                                                                        4: False}


def test_sample_from_population_counts_people_by_their_times_at_risk():
    # 600 people with yearly visits at T + k years (k = 0..9), fully observed. 300 become
    # cases 200 days after visit j (j = 2, 5 or 8, 100 each): their visits k <= j are at
    # risk, k > j prevalent, and k = j - 1 and j positive (the onset 565 and 200 days on).
    onset = {s: T + (365 * (2 + 3 * (s % 3)) + 200) * D for s in range(300)}
    cases = {s: (datetime(1970, 1, 1), datetime(2015, 1, 1), T + 10_000 * D, onset.get(s)) for s in range(600)}
    f = visits(cases, 365, 10)
    every, _ = L.label_frame(f, spec(prediction_times={"at_codes": ["Visit//OP"], "max_per_subject": 100}))
    eligible, _ = L.label_frame(f, spec())
    population, _ = L.label_frame(f, spec(prediction_times={"at_codes": ["Visit//OP"], "sample_from": "population"}))
    rate = {k: float(np.mean(v.column("boolean_value").to_pylist())) for k, v in (
        ("every", every), ("eligible", eligible), ("population", population))}
    # every time at risk: 300 * 10 + 100 * (3 + 6 + 9) = 4,800 times, 600 positive: 0.125
    assert (every.num_rows, rate["every"]) == (4800, 0.125)
    # drawn among the times at risk, each person counts once: a case's draw is positive
    # with chance 2/3, 2/6 or 2/9, so 122.2 of 600 in expectation (0.204)
    assert eligible.num_rows == 600 and abs(rate["eligible"] - 122.2 / 600) < 0.04
    # drawn among all ten times: a case's draw is at risk with chance (j + 1)/10 and
    # positive with chance 2/10: 300 + 100 * (0.3 + 0.6 + 0.9) = 480 rows and 60 positives
    # in expectation, the rate of the times at risk (0.125)
    assert abs(population.num_rows - 480) < 25 and abs(rate["population"] - 0.125) < 0.04
    assert rate["population"] < 0.75 * rate["eligible"]


def test_sample_from_eligible_keeps_the_task_digest():
    base = spec()
    assert spec(prediction_times={"at_codes": ["Visit//OP"], "max_per_subject": 1, "seed": 0,
                                  "sample_from": "eligible"}).digest() == base.digest()
    assert spec(prediction_times={"at_codes": ["Visit//OP"], "sample_from": "population"}).digest() != base.digest()


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
        ({"horizon": 3}, r"horizon: unknown key; allowed keys here are \['description', 'follow_up', 'gap_days', 'horizon_days'"),
        ({"population": {"min_age": 3}}, r"population.min_age: unknown key; allowed keys here are \['max_age_years', 'min_age_years'"),
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


def _subject(s, extra, *, birth=datetime(1970, 1, 1), start=datetime(2015, 1, 1), end=datetime(2024, 1, 1)):
    return [
        (s, birth, "MEDS_BIRTH", None), (s, start, schema.OBSERVATION_START, None), (s, end, schema.OBSERVATION_END, None),
        *[(s, t, c, v) for t, c, v in extra],
    ]


def test_trigger_every_n_days_and_lab_defined_outcomes(tmp_path):
    egfr = "LOINC//62238-1"
    rows = (
        # 1: a prediabetes trigger, then CKD by eGFR < 60 twice >= 90 days apart (outcome = the second low value)
        _subject(1, [(datetime(2017, 1, 1), "SNOMED//714628002", None), (datetime(2017, 6, 1), egfr, 55.0),
                     (datetime(2017, 7, 1), egfr, 58.0), (datetime(2017, 10, 1), egfr, 50.0)])
        # 2: low eGFR twice but only 30 days apart, then normal: not an outcome
        + _subject(2, [(datetime(2017, 1, 1), "SNOMED//714628002", None), (datetime(2017, 6, 1), egfr, 55.0),
                       (datetime(2017, 7, 1), egfr, 57.0), (datetime(2018, 1, 1), egfr, 80.0)])
    )
    write_events(tmp_path / "e", rows)
    ckd = spec(
        prediction_times={"at_first_of": ["SNOMED//714628002"]},
        outcome={"codes": ["SNOMED//433144002"], "values": [{"code": egfr, "below": 60, "times": 2, "min_days_apart": 90}]},
    )
    labels, attrition = L.build_labels(tmp_path / "e", ckd)
    assert labels.to_pylist() == [
        {"subject_id": 1, "prediction_time": datetime(2017, 1, 1), "boolean_value": True},  # 2017-10-01 is 273 days later
        {"subject_id": 2, "prediction_time": datetime(2017, 1, 1), "boolean_value": False},
    ]
    yearly = spec(prediction_times={"every_days": 365, "max_per_subject": 10}, outcome={"codes": ["X//never"]})
    times = [r["prediction_time"] for r in L.build_labels(tmp_path / "e", yearly)[0].to_pylist() if r["subject_id"] == 1]
    # From start + 365 days prior observation, every 365 days, while the horizon is still observed.
    assert times == [datetime(2016, 1, 1), datetime(2016, 12, 31), datetime(2017, 12, 31), datetime(2018, 12, 31),
                     datetime(2019, 12, 31), datetime(2020, 12, 30), datetime(2021, 12, 30)]


def test_a_confirmed_lab_criterion_at_or_above_a_cut_off(tmp_path):
    """HbA1c >= 6.5 confirmed by a later result (T2D's criterion): 6.5 itself counts, one
    high value or two at the same instant do not, and a criterion met at or before the
    prediction time makes the case prevalent."""
    a1c, visit = "LOINC//4548-4", "Visit//OP"
    t0 = datetime(2017, 1, 1)
    rows = (
        # 1: 6.5 then 6.7 a week later: an outcome on 2017-06-08 (the confirming result)
        _subject(1, [(t0, visit, None), (datetime(2017, 6, 1), a1c, 6.5), (datetime(2017, 6, 8), a1c, 6.7)])
        # 2: one high value, then normal: not an outcome
        + _subject(2, [(t0, visit, None), (datetime(2017, 6, 1), a1c, 7.0), (datetime(2017, 9, 1), a1c, 6.4)])
        # 3: two high values at the same instant (a duplicate row): not confirmed
        + _subject(3, [(t0, visit, None), (datetime(2017, 6, 1), a1c, 7.0), (datetime(2017, 6, 1), a1c, 7.1)])
        # 4: confirmed before the visit: prevalent, excluded
        + _subject(4, [(datetime(2016, 3, 1), a1c, 6.8), (datetime(2016, 4, 1), a1c, 6.9), (t0, visit, None)])
        # 5: a single high value before the visit, confirmed after it: an outcome, not prevalent
        + _subject(5, [(datetime(2016, 3, 1), a1c, 6.8), (t0, visit, None), (datetime(2018, 2, 1), a1c, 6.6)])
    )
    write_events(tmp_path / "e", rows)
    t2d = spec(
        prediction_times={"at_codes": [visit]},
        outcome={"codes": ["ICD10CM//E11*"], "values": [{"code": a1c, "at_least": 6.5, "times": 2}]},
    )
    labels, attrition = L.build_labels(tmp_path / "e", t2d)
    assert [(r["subject_id"], r["boolean_value"]) for r in labels.to_pylist()] == [
        (1, True), (2, False), (3, False), (5, True),
    ]
    ref, ref_attrition = L.label_frame(L.reference_candidates(tmp_path / "e", t2d), t2d)
    assert labels.equals(ref) and attrition == ref_attrition
    times = L.outcome_times(tmp_path / "e", t2d)
    assert dict(zip(times[schema.SUBJECT_ID], times["outcome_time"], strict=True)) == {
        1: datetime(2017, 6, 8), 4: datetime(2016, 4, 1), 5: datetime(2018, 2, 1),
    }
    assert t2d.outcome.values[0].bound == ("at_least", 6.5) and t2d.outcome.values[0].sql() == ">= 6.5"
    with pytest.raises(ValueError, match="exactly one of below, above, at_most or at_least"):
        spec(outcome={"values": [{"code": a1c, "at_least": 6.5, "above": 6.5}]})


@pytest.mark.parametrize("bad", [{"at_codes": ["A"], "every_days": 30}, {}])
def test_prediction_times_need_exactly_one_source(bad):
    with pytest.raises(ValueError, match="give exactly one of at_codes, every_days, at_first_of"):
        spec(prediction_times=bad)


def test_temporal_split(tmp_path):
    labels = pa.table(
        {
            "subject_id": pa.array([1, 1, 2, 3], pa.int64()),
            "prediction_time": pa.array([datetime(2018, 1, 1), datetime(2021, 1, 1), datetime(2019, 12, 31), datetime(2020, 1, 1)], pa.timestamp("us")),
            "boolean_value": [False, True, False, True],
        }
    )
    splits = L.temporal_splits(labels, datetime(2020, 1, 1), seed=0).to_pandas()
    assert list(splits["split"])[1] == "held_out" and list(splits["split"])[3] == "held_out"
    assert set(list(splits["split"])[:1] + list(splits["split"])[2:3]) <= {"train", "tuning"}
    merged = L.split_rows(labels.to_pandas(), splits)
    assert len(merged) == 4 and merged["split"].notna().all()


def test_shipped_tasks_parse():
    assert L.builtin_tasks() == ["ckd3_2y", "pancreatic_cancer_1y", "t2d_2y"]
    ckd = L.load_task("ckd3_2y")
    assert ckd.outcome.values[0].below == 60 and ckd.outcome.values[0].min_days_apart == 90
    t2d = L.load_task("t2d_2y")
    assert [(v.code, v.bound, v.times) for v in t2d.outcome.values] == [
        ("LOINC//4548-4", ("at_least", 6.5), 2), ("LOINC//1558-6", ("at_least", 126.0), 2),
    ]
    pc = L.load_task("pancreatic_cancer_1y")
    assert (pc.gap_days, pc.horizon_days, pc.prediction_times.max_per_subject) == (90, 365, 6)


def test_latest_eligible_times_for_scoring(tmp_path):
    """Each person a screening model should score now, at their latest candidate time."""
    e = tmp_path / "events"
    rows = []
    for s, birth, start, visits, outcome, died in (
        (1, datetime(1970, 1, 1), datetime(2015, 1, 1), [T, T + 30 * D], None, None),  # latest visit, nothing after
        (2, datetime(1970, 1, 1), datetime(2015, 1, 1), [T, T + 30 * D], T + 10 * D, None),  # diagnosed between visits
        (3, datetime(1970, 1, 1), datetime(2015, 1, 1), [T], T, None),  # outcome at the visit
        (4, datetime(2003, 6, 1), datetime(2015, 1, 1), [T], None, None),  # 16 at the visit
        (5, datetime(1970, 1, 1), T - 100 * D, [T], None, None),  # 100 days of prior record
        (6, datetime(1970, 1, 1), datetime(2015, 1, 1), [T], T + 30 * D, None),  # diagnosed since the visit
        (7, datetime(1970, 1, 1), datetime(2015, 1, 1), [T], None, T + 40 * D),  # died since
        (8, datetime(1929, 6, 1), datetime(2015, 1, 1), [T - 400 * D, T], None, None),  # 89, then 90.6 at the latest
        (9, None, datetime(2015, 1, 1), [T], None, None),  # no birth recorded: no age
        (10, datetime(1970, 1, 1), datetime(2015, 1, 1), [T + 5 * D], None, None),
    ):
        rows += [(s, birth, "MEDS_BIRTH", None)] if birth else []
        rows += [(s, start, schema.OBSERVATION_START, None)]
        rows += [(s, v, "Visit//OP", None) for v in visits]
        rows += [(s, outcome, "ICD10CM//E11.9", None)] if outcome else []
        rows += [(s, died, schema.DEATH_CODE, None)] if died else []
    write_events(e, rows)
    times, counts = L.latest_eligible_times(e, spec())
    assert times.to_pylist() == [
        {"subject_id": 1, "prediction_time": T + 30 * D, "boolean_value": None},
        {"subject_id": 10, "prediction_time": T + 5 * D, "boolean_value": None},
    ]
    assert counts == {"candidates": 10, "outcome_recorded": 3, "died": 1, "age": 3, "prior_observation": 1,
                      "eligible": 2}


def test_follow_up_of_scored_times_in_a_later_pull(tmp_path):
    """What a later pull says became of people scored at T (gap 90, horizon 730 days)."""
    e = tmp_path / "events"
    rows = []
    for s, last, outcome, died in (
        (1, T + 800 * D, T + 91 * D, None),  # outcome in the window: the label would be positive
        (2, T + 800 * D, T + 730 * D, None),  # on the horizon's last day: still in it
        (3, T + 800 * D, T + 731 * D, None),  # after the horizon: no outcome
        (4, T + 730 * D, None, None),  # observed exactly to the horizon
        (5, T + 800 * D, T + 89 * D, None),  # inside the gap
        (6, T + 800 * D, T, None),  # dated at the scored time itself (recorded since)
        (7, T + 100 * D, None, T + 100 * D),  # died before the horizon
        (8, T + 729 * D, None, None),  # follow-up still open
    ):
        rows += [(s, datetime(2015, 1, 1), schema.OBSERVATION_START, None), (s, T, "Visit//OP", None),
                 (s, last, "Visit//OP", None)]
        rows += [(s, outcome, "ICD10CM//E11.9", None)] if outcome else []
        rows += [(s, died, schema.DEATH_CODE, None)] if died else []
    write_events(e, rows)
    ids = np.array([1, 2, 3, 4, 5, 6, 7, 8, 99, 1])
    times = np.array([T] * 9 + [T + 100 * D], "datetime64[us]")  # 99 is not in the pull; 1 again, later
    seen = times.copy()  # each shown on the day of its prediction time: the label rules
    got = L.follow_up(e, spec(), ids, times, seen)
    assert got["status"].tolist() == ["outcome", "outcome", "no_outcome", "no_outcome", "outcome_in_gap",
                                      "outcome_before", "died", "pending", "not_in_pull", "outcome_before"]
    assert got["outcome_time"].tolist()[:3] == [pd.Timestamp(T + 91 * D), pd.Timestamp(T + 730 * D), pd.NaT]
    assert got["outcome_time"].isna().tolist() == [False, False, True, True, False, False, True, True, True, False]
    assert (got["seen_until"].to_numpy() == seen).all()
    # shown later: 1 when the record ran to T + 95 (the outcome, on day 91, was dated before it: recorded
    # since); 3 with the window closed; 4 and 8 with no time given: this pull's last event, so a scoring
    # of tonight's whose record already runs to the horizon has nothing left to predict
    later = L.follow_up(e, spec(), [1, 3, 4, 8], times[:4], np.array([T + 95 * D, T + 730 * D, "NaT", "NaT"],
                                                                      "datetime64[us]"))
    assert later["status"].tolist() == ["outcome_before", "window_passed", "window_passed", "pending"]
    assert later["seen_until"].tolist() == [pd.Timestamp(T + 95 * D), pd.Timestamp(T + 730 * D),
                                            pd.Timestamp(T + 730 * D), pd.Timestamp(T + 729 * D)]
    # an outcome in the window whose record then ends before the horizon, without a death, waits as the
    # label would (censored); under follow_up negatives it counts
    short = tmp_path / "short"
    write_events(short, [(1, datetime(2015, 1, 1), schema.OBSERVATION_START, None), (1, T, "Visit//OP", None),
                         (1, T + 100 * D, "ICD10CM//E11.9", None), (1, T + 400 * D, "Visit//OP", None)])
    assert L.follow_up(short, spec(), [1], times[:1], seen[:1])["status"].tolist() == ["pending"]
    assert L.follow_up(short, spec(follow_up="negatives"), [1], times[:1], seen[:1])["status"].tolist() == ["outcome"]
    empty = tmp_path / "none"
    write_events(empty, [])
    assert L.follow_up(empty, spec(), ids[:2], times[:2])["status"].tolist() == ["not_in_pull", "not_in_pull"]
