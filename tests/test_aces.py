"""One task written both ways, as a Forewarn task and as an ACES config, gives the same labels."""

from __future__ import annotations

from datetime import datetime, timedelta

from helpers import write_events

from forewarn.features import labels as L
from forewarn.features.aces_tasks import aces_labels, is_aces_config
from forewarn.records import schema

T = datetime(2020, 1, 1)
D = timedelta(days=1)
ACES_T2D = """
predicates:
  visit:
    code: "Visit//OP"
  t2d:
    code: {regex: "^(SNOMED//44054006|ICD10CM//E11.*)$"}
trigger: visit
windows:
  history:
    start: null
    end: trigger
    start_inclusive: true
    end_inclusive: true
    has: {t2d: "(None, 0)"}
    index_timestamp: end
  gap:
    start: trigger
    end: start + 90d
    start_inclusive: false
    end_inclusive: false
    has: {t2d: "(None, 0)"}
  target:
    start: gap.end
    end: start + 640d
    start_inclusive: true
    end_inclusive: true
    label: t2d
  follow:
    start: target.end
    end: null
    start_inclusive: true
    end_inclusive: true
    has: {_ANY_EVENT: "(1, None)"}
"""
FOREWARN_T2D = {
    "name": "t2d_both_ways",
    "description": "Prediction time at every outpatient visit; feature window ends there; label from the first "
    "diabetes code 90-730 days later; cannot leak because labels read only the future.",
    "population": {"min_age_years": 0, "max_age_years": 130, "min_prior_observation_days": 0},
    "prediction_times": {"at_codes": ["Visit//OP"], "max_per_subject": 1000},
    "gap_days": 90,
    "horizon_days": 730,
    "outcome": {"codes": ["SNOMED//44054006", "ICD10CM//E11*"]},
}


def dataset(folder):
    # subject: (visit offsets in days, outcome offset and code or None, last observed offset)
    cases = {
        1: ([0], (91, "SNOMED//44054006"), 900),
        2: ([0], (90, "ICD10CM//E11.9"), 900),  # first day after the gap
        3: ([0], (89, "SNOMED//44054006"), 900),  # inside the gap: excluded
        4: ([0], (0, "ICD10CM//E11.65"), 900),  # at the prediction time: prevalent
        5: ([0], (730, "SNOMED//44054006"), 900),  # last day of the horizon
        6: ([0], (731, "SNOMED//44054006"), 900),  # after the horizon: negative
        7: ([0], None, 730),  # observed exactly to the horizon: negative
        8: ([0], None, 729),  # censored
        9: ([0, 400, 700], (800, "ICD10CM//E11.9"), 1500),  # several visits, each labelled
        10: ([0], (200, "ICD10CM//E10.9"), 900),  # type 1 diabetes is not an outcome
        11: ([0], (100, "SNOMED//44054006"), 400),  # the outcome, then no record to the horizon: censored
    }
    rows = []
    for s, (visits, outcome, last) in cases.items():
        rows += [(s, datetime(1970, 1, 1), "MEDS_BIRTH", None), (s, T - 400 * D, schema.OBSERVATION_START, None)]
        rows += [(s, T + v * D, "Visit//OP", None) for v in visits]
        if outcome:
            rows.append((s, T + outcome[0] * D, outcome[1], None))
        rows.append((s, T + last * D, schema.OBSERVATION_END, None))
    write_events(folder, rows)
    return folder


def test_forewarn_task_and_aces_config_give_the_same_labels(tmp_path):
    events = dataset(tmp_path / "events")
    config = tmp_path / "t2d.yaml"
    config.write_text(ACES_T2D)
    assert is_aces_config(config)
    ours, _ = L.build_labels(events, L.parse_task(FOREWARN_T2D))
    theirs = aces_labels(config, events)
    assert theirs.schema.equals(schema.LABEL_SCHEMA)
    assert theirs.to_pylist() == ours.to_pylist()
    got = {(r["subject_id"], (r["prediction_time"] - T).days): r["boolean_value"] for r in ours.to_pylist()}
    assert got == {
        (1, 0): True, (2, 0): True, (5, 0): True, (6, 0): False, (7, 0): False,
        (9, 0): False, (9, 400): True, (9, 700): True, (10, 0): False,
    }


def test_forewarn_task_files_are_not_aces_configs(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("name: x\n")
    assert not is_aces_config(path)


def test_a_positive_whose_record_a_death_ended_is_kept_where_aces_drops_it(tmp_path):
    """The one difference: ACES's follow window needs an event after the target window; a
    Forewarn task keeps a positive whose record a death ended (the outcome, then death)."""
    rows = [(1, datetime(1970, 1, 1), "MEDS_BIRTH", None), (1, T - 400 * D, schema.OBSERVATION_START, None),
            (1, T, "Visit//OP", None), (1, T + 100 * D, "SNOMED//44054006", None),
            (1, T + 300 * D, schema.DEATH_CODE, None)]
    events = write_events(tmp_path / "events", rows).parent
    config = tmp_path / "t2d.yaml"
    config.write_text(ACES_T2D)
    ours, _ = L.build_labels(events, L.parse_task(FOREWARN_T2D))
    assert [(r["subject_id"], r["boolean_value"]) for r in ours.to_pylist()] == [(1, True)]
    assert aces_labels(config, events).num_rows == 0
