"""The NumPy event scan behind ``build_labels`` gives exactly the labels, attrition and
outcome times of the DuckDB SQL reference (``candidates_sql``), on awkward layouts:
several shards, small row groups, subjects split across row groups and shards, rows not
in subject order, events without a time, NaN and null values, prefix codes."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forewarn.features import labels as L
from forewarn.records import schema

DESCRIPTION = (
    "Prediction time at a visit; feature window ends at the prediction time; label from the "
    "first outcome after the gap; cannot leak because labels read only the future."
)
EGFR = "LOINC//62238-1"
CODES = [
    schema.BIRTH_CODE, schema.OBSERVATION_START, "Visit//OP", "Visit//ER", "ICD10CM//E11.9", "ICD10CM//E11.65",
    "ICD10CM//E10.9", "SNOMED//44054006", "SNOMED//714628002", "ICD10CM//R73.03", EGFR, "LOINC//4548-4", "RX//1",
    schema.DEATH_CODE,  # a positive whose record a death ended keeps its label without full follow-up
]
WEIGHTS = np.array([2, 2, 10, 3, 1, 1, 1, 1, 1, 1, 4, 3, 5, 0.5], float)


def random_events(folder, seed: int, *, subjects: int = 80) -> None:
    """Random MEDS-like events in three shards with row groups of 29 rows."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**12, subjects, replace=False).astype(np.int64)
    per = rng.integers(0, 40, subjects)
    subj = np.repeat(ids, per)
    n = subj.size
    codes = rng.choice(len(CODES), n, p=WEIGHTS / WEIGHTS.sum())
    start = np.datetime64("2010-01-01T00:00:00", "us").astype(np.int64)
    span = 12 * 365 * 86_400 * 10**6
    # Most events on whole days (ties with day arithmetic), some at arbitrary microseconds.
    times = start + np.where(rng.random(n) < 0.7, rng.integers(0, span // L.DAY_US, n) * L.DAY_US, rng.integers(0, span, n))
    birth = codes == 0
    times[birth] = start - rng.integers(20, 80, birth.sum()) * 365 * L.DAY_US
    values = np.where(np.isin(codes, [10, 11]), rng.normal(62, 10, n), np.nan).astype(np.float32)
    value_null = ~np.isin(codes, [10, 11]) | (rng.random(n) < 0.05)
    values[rng.random(n) < 0.03] = np.nan  # NaN is no measurement
    time_null = rng.random(n) < 0.03
    table = pa.table(
        {
            schema.SUBJECT_ID: pa.array(subj, pa.int64()),
            schema.TIME: pa.array(times.astype("datetime64[us]"), pa.timestamp("us"), mask=time_null),
            schema.CODE: pa.array(np.array(CODES, object)[codes], pa.string()),
            schema.NUMERIC_VALUE: pa.array(values, pa.float32(), mask=value_null),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    # Shard 0 sorted by (subject, time); shard 1 shuffled; shard 2 shares subjects with shard 1.
    order = rng.permutation(n)
    cut1, cut2 = n // 3, 2 * n // 3
    first = table.take(order[:cut1]).sort_by([(schema.SUBJECT_ID, "ascending"), (schema.TIME, "ascending")])
    pq.write_table(first, folder / "0.parquet", row_group_size=29)
    pq.write_table(table.take(order[cut1:cut2]), folder / "1.parquet", row_group_size=29)
    pq.write_table(table.take(order[cut2:]), folder / "2.parquet", row_group_size=29)


def task(prediction_times: dict, **changes) -> L.TaskSpec:
    data = {
        "name": "scan",
        "description": DESCRIPTION,
        "population": {"min_age_years": 18, "max_age_years": 90, "min_prior_observation_days": 200},
        "prediction_times": prediction_times,
        "gap_days": 30,
        "horizon_days": 700,
        "outcome": {"codes": ["SNOMED//44054006", "ICD10CM//E11*"]},
    } | changes
    return L.parse_task(data)


SPECS = {
    "at_codes": task({"at_codes": ["Visit//OP", "Visit//E*"], "max_per_subject": 3, "seed": 4}),
    "at_codes_all": task({"at_codes": ["Visit//OP"], "max_per_subject": 1000}),
    "trigger": task({"at_first_of": ["SNOMED//714628002", "ICD10CM//R73*"]}),
    "every_days": task({"every_days": 97, "max_per_subject": 4}),
    "values": task(
        {"at_codes": ["Visit//OP"], "max_per_subject": 2},
        outcome={
            "codes": ["ICD10CM//E11.9"],
            "values": [
                {"code": EGFR, "below": 55, "times": 2, "min_days_apart": 90},
                {"code": "LOINC//4548-4", "below": 57.3},
            ],
        },
    ),
    "no_prior": task(
        {"at_codes": ["RX//1"], "max_per_subject": 1000},
        population={"min_age_years": 0, "max_age_years": 130, "min_prior_observation_days": 0},
        outcome={"values": [{"code": EGFR, "below": 50, "times": 2, "min_days_apart": 0}]},
    ),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(SPECS))
def test_scan_matches_the_sql_reference(tmp_path, seed, name):
    random_events(tmp_path / "e", seed)
    spec = SPECS[name]
    ours, ours_attrition = L.build_labels(tmp_path / "e", spec)
    ref, ref_attrition = L.label_frame(L.reference_candidates(tmp_path / "e", spec), spec)
    assert ours.num_rows > 0
    assert ours.schema == ref.schema
    assert ours.equals(ref)
    assert ours_attrition == ref_attrition
    got, want = L.outcome_times(tmp_path / "e", spec), L.reference_outcome_times(tmp_path / "e", spec)
    assert list(got.columns) == list(want.columns)
    assert got[schema.SUBJECT_ID].tolist() == want[schema.SUBJECT_ID].tolist()
    assert got["outcome_time"].to_numpy("datetime64[us]").tolist() == want["outcome_time"].to_numpy("datetime64[us]").tolist()


def test_labels_written_are_byte_identical_to_the_reference(tmp_path):
    random_events(tmp_path / "e", 7)
    spec = SPECS["at_codes"]
    ours = L.write_labels(L.build_labels(tmp_path / "e", spec)[0], tmp_path / "ours.parquet")
    ref = L.write_labels(L.label_frame(L.reference_candidates(tmp_path / "e", spec), spec)[0], tmp_path / "ref.parquet")
    assert ours.read_bytes() == ref.read_bytes()


def test_a_nan_measurement_is_never_beyond_a_threshold(tmp_path):
    rows = [
        (1, datetime(1970, 1, 1), schema.BIRTH_CODE, None),
        (1, datetime(2015, 1, 1), schema.OBSERVATION_START, None),
        (1, datetime(2020, 1, 1), "Visit//OP", None),
        (1, datetime(2020, 6, 1), EGFR, float("nan")),
        (1, datetime(2023, 1, 1), "Visit//OP", None),
    ]
    folder = tmp_path / "e"
    folder.mkdir()
    pq.write_table(
        pa.table({
            schema.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
            schema.TIME: pa.array([r[1] for r in rows], pa.timestamp("us")),
            schema.CODE: pa.array([r[2] for r in rows]),
            schema.NUMERIC_VALUE: pa.array([r[3] for r in rows], pa.float32()),
        }),
        folder / "0.parquet",
    )
    spec = task({"at_codes": ["Visit//OP"]}, outcome={"values": [{"code": EGFR, "above": 90}]})
    labels, _ = L.build_labels(folder, spec)
    assert labels.to_pylist() == [{"subject_id": 1, "prediction_time": datetime(2020, 1, 1), "boolean_value": False}]
    assert L.outcome_times(folder, spec).empty


def test_no_event_shards_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MEDS event shards"):
        L.build_labels(tmp_path, SPECS["at_codes"])
