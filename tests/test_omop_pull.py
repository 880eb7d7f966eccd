"""Golden OMOP -> MEDS pull on a tiny DuckDB written here, checked by eye."""

from __future__ import annotations

import json
from datetime import datetime

import duckdb
import pandas as pd
import pytest

from forewarn.records import deid, schema
from forewarn.records.omop import pull_omop, pull_omop_duckdb
from forewarn.records.pull import PullFailed

KEY = deid.DeidConfig(b"golden-test-secret-0123456789", max_shift_days=365)
NOW = datetime(2025, 1, 1)


def make_omop(path, *, leak_concept_code: str | None = None):
    con = duckdb.connect(str(path))
    con.execute(
        """
        CREATE TABLE concept (concept_id INTEGER, concept_name VARCHAR, domain_id VARCHAR, vocabulary_id VARCHAR,
                              concept_class_id VARCHAR, standard_concept VARCHAR, concept_code VARCHAR);
        INSERT INTO concept VALUES
          (8507, 'MALE', 'Gender', 'Gender', 'Gender', 'S', 'M'),
          (8532, 'FEMALE', 'Gender', 'Gender', 'Gender', 'S', 'F'),
          (9202, 'Outpatient Visit', 'Visit', 'Visit', 'Visit', 'S', 'OP'),
          (201826, 'Type 2 diabetes mellitus', 'Condition', 'SNOMED', 'Clinical Finding', 'S', '44054006'),
          (45576876, 'Type 2 diabetes mellitus without complications', 'Condition', 'ICD10CM', '5-char', NULL, 'E11.9'),
          (3004410, 'Hemoglobin A1c', 'Measurement', 'LOINC', 'Lab Test', 'S', '4548-4'),
          (1503297, 'metformin', 'Drug', 'RxNorm', 'Ingredient', 'S', '6809');
        CREATE TABLE concept_relationship (concept_id_1 INTEGER, concept_id_2 INTEGER, relationship_id VARCHAR,
                                           invalid_reason VARCHAR);
        INSERT INTO concept_relationship VALUES
          (45576876, 201826, 'Maps to', NULL),     -- the ICD10CM code's standard concept
          (45576876, 3004410, 'Maps to', 'D'),     -- a deprecated mapping: ignored
          (45576876, 1503297, 'Is a', NULL),       -- not a mapping: ignored
          (201826, 201826, 'Maps to', NULL);       -- a standard concept maps to itself: no parent
        CREATE TABLE person (person_id BIGINT, gender_concept_id INTEGER, year_of_birth INTEGER, month_of_birth INTEGER,
                             day_of_birth INTEGER, birth_datetime TIMESTAMP, person_source_value VARCHAR, patient_name VARCHAR);
        INSERT INTO person VALUES
          (1, 8532, 1950, 3, 15, '1950-03-15 00:00:00', 'MRN00000001', 'Ada Lovelace'),
          (2, 8507, 1920, 6, 1, NULL, 'MRN00000002', 'Alan Turing');
        CREATE TABLE observation_period (observation_period_id BIGINT, person_id BIGINT,
                                         observation_period_start_date DATE, observation_period_end_date DATE);
        INSERT INTO observation_period VALUES (10, 1, '2015-01-01', '2020-12-31'), (11, 2, '2015-01-01', '2016-12-31');
        CREATE TABLE visit_occurrence (visit_occurrence_id BIGINT, person_id BIGINT, visit_concept_id INTEGER,
                                       visit_start_date DATE, visit_start_datetime TIMESTAMP, visit_source_value VARCHAR);
        INSERT INTO visit_occurrence VALUES (100, 1, 9202, '2016-05-01', '2016-05-01 09:30:00', 'clinic note: Ada'),
                                            (101, 2, 9202, '2016-02-01', NULL, NULL);
        CREATE TABLE condition_occurrence (condition_occurrence_id BIGINT, person_id BIGINT, condition_concept_id INTEGER,
                                           condition_start_date DATE, condition_start_datetime TIMESTAMP,
                                           condition_source_value VARCHAR, condition_source_concept_id INTEGER);
        INSERT INTO condition_occurrence VALUES
          (200, 1, 201826, '2017-01-01', NULL, 'E11.9', 45576876),
          (201, 1, 0, '2018-01-01', NULL, 'E11.9', 45576876),
          (202, 1, 0, '2018-02-01', NULL, 'free text', 0),
          (203, 2, 201826, NULL, NULL, 'E11.9', 45576876),
          (204, 1, 999999, '2018-03-01', NULL, 'X', NULL);
        CREATE TABLE measurement (measurement_id BIGINT, person_id BIGINT, measurement_concept_id INTEGER,
                                  measurement_date DATE, measurement_datetime TIMESTAMP, value_as_number DOUBLE);
        INSERT INTO measurement VALUES
          (300, 1, 3004410, '2016-05-01', '2016-05-01 09:30:00', 6.1),
          (301, 1, 3004410, '1949-01-01', NULL, 5.0),
          (302, 2, 3004410, '2017-06-01', NULL, 5.5),
          (303, 1, 3004410, '2099-01-01', NULL, 5.2);
        CREATE TABLE drug_exposure (drug_exposure_id BIGINT, person_id BIGINT, drug_concept_id INTEGER,
                                    drug_exposure_start_date DATE, drug_exposure_start_datetime TIMESTAMP);
        INSERT INTO drug_exposure VALUES (400, 1, 1503297, '2017-01-02', NULL);
        CREATE TABLE death (person_id BIGINT, death_date DATE, death_datetime TIMESTAMP);
        INSERT INTO death VALUES (2, '2016-12-31', NULL);
        """
    )
    if leak_concept_code:
        con.execute(f"UPDATE concept SET concept_code = '{leak_concept_code}' WHERE concept_id = 201826")
    con.close()
    return path


@pytest.fixture
def pulled(tmp_path):
    db = make_omop(tmp_path / "omop.duckdb")
    return pull_omop_duckdb(db, tmp_path / "out", site="golden", config=KEY, now=NOW, max_bad_fraction=1.0)


def _unshift(events: pd.DataFrame) -> pd.DataFrame:
    ids, shifts = deid.pseudonymize([1, 2], KEY)
    source = {int(s): p for p, s in zip([1, 2], ids, strict=True)}
    offset = {int(s): int(d) for s, d in zip(ids, shifts, strict=True)}
    out = events.copy()
    out["person"] = out[schema.SUBJECT_ID].map(source)
    out["time"] = out[schema.TIME] - pd.to_timedelta(out[schema.SUBJECT_ID].map(offset), unit="D")
    return out


def test_golden_events(pulled):
    events = pd.read_parquet(pulled.events_dir)
    got = _unshift(events)
    rows = [
        (p, None if pd.isna(t) else t.to_pydatetime(), c, None if pd.isna(v) else round(float(v), 3))
        for p, t, c, v in zip(got["person"], got["time"], got[schema.CODE], got[schema.NUMERIC_VALUE], strict=True)
    ]
    d = datetime
    expected = {
        (1, None, "Gender//F", None),
        (1, d(1950, 3, 15), "MEDS_BIRTH", None),
        (1, d(2015, 1, 1), "MEDS_OBSERVATION_PERIOD//START", None),
        (1, d(2016, 5, 1, 9, 30), "Visit//OP", None),
        (1, d(2016, 5, 1, 9, 30), "LOINC//4548-4", 6.1),
        (1, d(2017, 1, 1), "SNOMED//44054006", None),
        (1, d(2017, 1, 2), "RxNorm//6809", None),
        (1, d(2018, 1, 1), "ICD10CM//E11.9", None),  # concept 0 falls back to the source concept
        (1, d(2018, 3, 1), "OMOP//999999", None),  # unknown concept keeps its id
        (1, d(2020, 12, 31), "MEDS_OBSERVATION_PERIOD//END", None),
        (2, None, "Gender//M", None),
        (2, d(1926, 12, 31), "MEDS_BIRTH", None),  # 96 at last event -> birth moved so the age is 90
        (2, d(2015, 1, 1), "MEDS_OBSERVATION_PERIOD//START", None),
        (2, d(2016, 2, 1), "Visit//OP", None),
        (2, d(2016, 12, 31), "MEDS_OBSERVATION_PERIOD//END", None),
        (2, d(2016, 12, 31), "MEDS_DEATH", None),
    }
    assert set(rows) == expected and len(rows) == len(expected)
    # Sorted by subject, then time with static rows first.
    assert list(events[schema.SUBJECT_ID]) == sorted(events[schema.SUBJECT_ID])
    assert events.groupby(schema.SUBJECT_ID)[schema.TIME].apply(lambda t: t.isna().iloc[0]).all()


def test_schema_and_dates_are_shifted(pulled):
    import pyarrow.parquet as pq

    table = pq.read_table(next(pulled.events_dir.glob("*.parquet")))
    assert table.schema.equals(schema.DATA_SCHEMA)
    events = pd.read_parquet(pulled.events_dir)
    assert not set(events[schema.SUBJECT_ID]) & {1, 2}
    births = events.loc[events[schema.CODE] == "MEDS_BIRTH", schema.TIME]
    assert pd.Timestamp("1950-03-15") not in set(births)


def test_report_reconciles_and_names_reasons(pulled):
    report = json.loads(pulled.report_path.read_text())
    counts = {name: (t["read"], t["kept"], t["quarantined"]) for name, t in report["tables"].items()}
    assert counts == {
        "person": (2, 2, 0),
        "observation_period": (2, 2, 0),
        "visit_occurrence": (2, 2, 0),
        "condition_occurrence": (5, 3, 2),
        "drug_exposure": (1, 1, 0),
        "measurement": (4, 1, 3),
        "death": (1, 1, 0),
    }
    assert report["tables"]["measurement"]["reasons"] == {
        "date: after the person's death; correct the date or the death date": 1,
        "date: before the person's birth; correct the date or the birth date": 1,
        "date: in the future (after the pull); correct the date": 1,
    }
    assert report["tables"]["condition_occurrence"]["reasons"] == {
        "condition_occurrence: no concept id (concept and source concept are 0 or empty); map the row": 1,
        "date: missing; every clinical row needs a date": 1,
    }
    assert report["ages_capped_at_90"] == 1
    assert report["subjects"] == 2 and report["events"] == 16 and report["quarantined"] == 5
    quarantine = pd.read_parquet(pulled.out_dir / "quarantine" / "records.parquet")
    assert len(quarantine) == 5
    assert set(quarantine["location"]) == {"condition_occurrence row 3", "condition_occurrence row 4", "measurement row 2", "measurement row 3", "measurement row 4"}


def test_no_identifier_reaches_any_output_byte(pulled):
    needles = [b"MRN0000000", b"Lovelace", b"Turing", b"Ada", b"clinic note", b"free text"]
    for path in pulled.out_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [n for n in needles if n in data], path


def test_codes_metadata_has_descriptions(pulled):
    codes = pd.read_parquet(pulled.codes_path)
    described = dict(zip(codes[schema.CODE], codes["description"], strict=True))
    assert described["LOINC//4548-4"] == "Hemoglobin A1c"
    assert described["MEDS_BIRTH"] == "Birth"
    assert pd.isna(described["OMOP//999999"])
    # A source code that "Maps to" a standard concept has it as its parent code (so
    # features count it with the standard code); every other code has none.
    parents = {c: list(p) for c, p in zip(codes[schema.CODE], codes["parent_codes"], strict=True) if len(p)}
    assert parents == {"ICD10CM//E11.9": ["SNOMED//44054006"]}


def test_phi_gate_fails_the_pull_and_publishes_nothing(tmp_path):
    db = make_omop(tmp_path / "omop.duckdb", leak_concept_code="MRN00000001")
    with pytest.raises(deid.PHILeakError, match=r"events/0.parquet:code: a value equals an identifier"):
        pull_omop_duckdb(db, tmp_path / "out", site="golden", config=KEY, now=NOW, max_bad_fraction=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["omop.duckdb"]  # nothing published, no leftovers


def test_too_many_bad_records_fail_the_pull_with_the_reasons(tmp_path):
    db = make_omop(tmp_path / "omop.duckdb")
    with pytest.raises(PullFailed, match=r"measurement: 3 of 4 \(date: after the person's death.*raise max_bad_fraction"):
        pull_omop_duckdb(db, tmp_path / "out", site="golden", config=KEY, now=NOW, max_bad_fraction=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["omop.duckdb"]


def test_missing_table_and_column_errors_name_them(tmp_path):
    db = tmp_path / "bad.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE person (person_id BIGINT, year_of_birth INTEGER)")
    con.close()
    with pytest.raises(ValueError, match=r"OMOP table 'concept' is missing"):
        pull_omop_duckdb(db, tmp_path / "out", site="s", config=KEY, now=NOW)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pull_omop_duckdb(tmp_path / "nope.duckdb", tmp_path / "out", site="s", config=KEY, now=NOW)


def test_rerun_is_identical(tmp_path):
    db = make_omop(tmp_path / "omop.duckdb")
    a = pull_omop_duckdb(db, tmp_path / "a", site="golden", config=KEY, now=NOW, max_bad_fraction=1.0)
    b = pull_omop_duckdb(db, tmp_path / "b", site="golden", config=KEY, now=NOW, max_bad_fraction=1.0)
    assert (a.events_dir / "0.parquet").read_bytes() == (b.events_dir / "0.parquet").read_bytes()


def test_csv_folder_bad_values_are_quarantined_with_row_field_and_fix(tmp_path):
    from crossformat import write_omop_folder

    folder = write_omop_folder(tmp_path / "omop")
    lines = (folder / "measurement.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    cols = header.split(",")
    bad_value = rows[0].split(",")
    bad_value[cols.index("value_as_number")] = "abc"
    bad_date = rows[1].split(",")
    bad_date[cols.index("measurement_date")] = "2018-13-45"
    bad_date[cols.index("measurement_datetime")] = ""
    duplicate = rows[2]
    (folder / "measurement.csv").write_text("\n".join([header, ",".join(bad_value), ",".join(bad_date), *rows[2:], duplicate]) + "\n")
    result = pull_omop(folder, tmp_path / "out", site="s", config=KEY, now=NOW, max_bad_fraction=1.0)
    report = json.loads(result.report_path.read_text())
    assert report["tables"]["measurement"] == {
        "read": 5, "kept": 2, "quarantined": 3,
        "reasons": {
            "measurement id: repeats an earlier row's id; remove the repeat": 1,
            "measurement.measurement_date: expected a date (YYYY-MM-DD); fix the value": 1,
            "measurement.value_as_number: expected a number; fix the value or leave it empty": 1,
        },
    }
    quarantine = pd.read_parquet(result.out_dir / "quarantine" / "records.parquet")
    assert sorted(quarantine.loc[quarantine["src_table"] == "measurement", "location"]) == [
        "measurement row 1", "measurement row 2", "measurement row 5",
    ]
    assert all(t["read"] == t["kept"] + t["quarantined"] for t in report["tables"].values())
    assert report["read"] == sum(t["read"] for t in report["tables"].values())


def test_pull_changes_flags_a_feed_that_moved_by_a_fifth_or_more():
    from forewarn.records.pull import pull_changes

    def report(**kept):
        return {"tables": {t: {"read": k, "kept": k, "quarantined": 0} for t, k in kept.items()}, "quarantined": 0}

    before = report(person=1000, measurement=139_839, drug_exposure=5000, visit=400, note=0)
    now = report(person=950, measurement=69_920, drug_exposure=5900, visit=480, note=12, death=0)
    assert pull_changes(before, now) == [
        {"table": "person", "previous": 1000, "now": 950, "change": -0.05, "flagged": False},
        {"table": "measurement", "previous": 139_839, "now": 69_920, "change": -0.5, "flagged": True},
        {"table": "drug_exposure", "previous": 5000, "now": 5900, "change": 0.18, "flagged": False},
        {"table": "visit", "previous": 400, "now": 480, "change": 0.2, "flagged": True},  # a fifth: flagged
        {"table": "note", "previous": 0, "now": 12, "change": None, "flagged": True},  # new
        {"table": "death", "previous": 0, "now": 0, "change": None, "flagged": False},
    ]
    # A table the new pull lacks has lost all its rows.
    assert pull_changes(report(visit=500), report())[0] == {
        "table": "visit", "previous": 500, "now": 0, "change": -1.0, "flagged": True}
    # A pull whose per-table counts are withheld (a quarantine of 1..10) compares nothing.
    small = {"tables": {"person": {"read": 1005, "kept": 1000, "quarantined": 5}}, "quarantined": 5}
    assert pull_changes(small, now) == [] and pull_changes(now, small) == []


def test_race_and_ethnicity_are_static_codes_and_the_audits_levels(tmp_path):
    """``person.race_concept_id`` and ``ethnicity_concept_id`` become static events of
    their OMOP vocabulary codes where recorded (0, "No matching concept", and NULL are
    not; a concept missing from the vocabulary keeps its id, as gender's does), and the
    fairness audit reads its levels from them. A person row counts once however many
    events it gave."""
    from forewarn.evaluation.evaluate import audit_levels

    db = make_omop(tmp_path / "omop.duckdb")
    con = duckdb.connect(str(db))
    con.execute("""
        ALTER TABLE person ADD COLUMN race_concept_id INTEGER;
        ALTER TABLE person ADD COLUMN ethnicity_concept_id INTEGER;
        UPDATE person SET race_concept_id = 8527, ethnicity_concept_id = 0 WHERE person_id = 1;
        UPDATE person SET race_concept_id = NULL, ethnicity_concept_id = 38003563 WHERE person_id = 2;
        INSERT INTO concept VALUES (8527, 'White', 'Race', 'Race', 'Race', 'S', '5'),
                                   (38003563, 'Hispanic or Latino', 'Ethnicity', 'Ethnicity', 'Ethnicity', 'S', 'Hispanic');
    """)
    con.close()
    pulled = pull_omop_duckdb(db, tmp_path / "out", site="golden", config=KEY, now=NOW, max_bad_fraction=1.0)
    got = _unshift(pd.read_parquet(pulled.events_dir))
    static = sorted((int(p), c) for p, c, t in zip(got["person"], got[schema.CODE], got[schema.TIME], strict=True)
                    if pd.isna(t))
    assert static == [(1, "Gender//F"), (1, "Race//5"), (2, "Ethnicity//Hispanic"), (2, "Gender//M")]
    report = json.loads(pulled.report_path.read_text())
    assert (report["tables"]["person"]["read"], report["tables"]["person"]["kept"]) == (2, 2)
    levels = audit_levels(pulled.events_dir).assign(person=lambda f: f["subject_id"].map(
        dict(zip(got[schema.SUBJECT_ID], got["person"], strict=False))))
    assert sorted(zip(levels["person"], levels["race"], levels["ethnicity"], strict=True)) == [
        (1, "White", None), (2, None, "Hispanic or Latino")]
    # the pull's code metadata names them, as the report's subgroup table does
    codes = pd.read_parquet(pulled.codes_path).set_index("code")["description"]
    assert (codes["Race//5"], codes["Ethnicity//Hispanic"]) == ("White", "Hispanic or Latino")


def test_audit_levels_name_several_codes_multiple_and_keep_a_local_vocabularys_codes(tmp_path):
    """A MEDS source's own race codes (``RACE//WHITE``: the vocabulary matched ignoring
    case) keep their local part as the level where 11 or more people of the site hold it,
    and read "Other" where fewer do (a level's name leaves the site); two distinct race
    codes read "Multiple"; a person's static codes stand over timed rows of the same
    vocabulary, and a person with timed rows only reads the codes of the latest time
    one was recorded (two there: "Multiple"); a value that says nothing ("UNKNOWN",
    "declined") is no record at all; and asked for subjects with no code, the
    audit says None. An OMB category's name is shown however few hold it."""
    from helpers import write_events

    from forewarn.evaluation.evaluate import audit_levels

    write_events(tmp_path / "events", [
        (1, None, "Race//5", None), (1, None, "Race//3", None), (1, None, "Ethnicity//Not Hispanic", None),
        (2, None, "RACE//WHITE", None), (2, datetime(2020, 1, 1), "Race//2", None),
        (3, None, "Gender//F", None), (5, None, "Race//LOCAL-17", None), (6, None, "Race//4", None),
        *[(100 + k, None, "RACE//WHITE", None) for k in range(10)],
        # timed only: race at two admissions (the latest reads), ethnicity twice at one
        (7, datetime(2019, 5, 1), "Race//2", None), (7, datetime(2021, 3, 1), "Race//3", None),
        (7, datetime(2021, 3, 1), "Ethnicity//Hispanic", None), (7, datetime(2021, 3, 1), "Ethnicity//Not Hispanic", None),
        (7, datetime(2018, 1, 1), "Ethnicity//Hispanic", None),
        # a value that says nothing is no record: White stands over a later UNKNOWN, and
        # static "declined" leaves the timed rows to speak
        (8, datetime(2019, 1, 1), "RACE//WHITE", None), (8, datetime(2022, 1, 1), "RACE//UNKNOWN", None),
        (8, None, "ETHNICITY//Patient Declined To Answer", None), (8, datetime(2020, 1, 1), "Ethnicity//Hispanic", None),
        (9, None, "RACE//UNABLE TO OBTAIN", None),
    ])
    levels = audit_levels(tmp_path / "events", [3, 2, 1, 4, 2, 5, 6, 7, 8, 9])
    assert levels.to_dict("list") == {
        "subject_id": [1, 2, 3, 4, 5, 6, 7, 8, 9], "race": ["Multiple", "WHITE", None, None, "Other",
                                                             "Native Hawaiian or Other Pacific Islander",
                                                             "Black or African American", "WHITE", None],
        "ethnicity": ["Not Hispanic or Latino", None, None, None, None, None, "Multiple", "Hispanic or Latino", None]}
    # ten people with the local code: its name stays at the site too
    write_events(tmp_path / "fewer", [(2, None, "RACE//WHITE", None), *[(100 + k, None, "RACE//WHITE", None) for k in range(9)]])
    assert set(audit_levels(tmp_path / "fewer")["race"]) == {"Other"}
