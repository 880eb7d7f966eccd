"""One small clinical dataset, written in each source format a site may hold.

The same people and events as OMOP CDM (DuckDB or a folder of CSV/Parquet), as a MEDS
dataset and as FHIR R4 (Bundles or Bulk NDJSON) must pull into identical MEDS events.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

# (person id, sex, birth, death or None, MRN, name)
PEOPLE = [
    (1, "F", datetime(1950, 3, 15), None, "MRN00000001", "Ada Lovelace"),
    (2, "M", datetime(1961, 6, 1), datetime(2019, 5, 2, 8, 0), "MRN00000002", "Alan Turing"),
    (3, "F", datetime(1978, 11, 30), None, "MRN00000003", "Grace Hopper"),
]
# (id, person, kind, vocabulary, code, time, value, unit, description)
EVENTS = [
    (10, 1, "visit", "Visit", "OP", datetime(2016, 5, 1, 9, 30), None, None, "Outpatient Visit"),
    (11, 1, "measurement", "LOINC", "4548-4", datetime(2016, 5, 1, 9, 30), 6.1, "%", "Hemoglobin A1c"),
    (12, 1, "measurement", "LOINC", "1558-6", datetime(2016, 5, 1, 9, 30), 118.0, "mg/dL", "Fasting glucose"),
    (13, 1, "condition", "SNOMED", "44054006", datetime(2017, 1, 1, 10, 0), None, None, "Type 2 diabetes mellitus"),
    (14, 1, "drug", "RxNorm", "6809", datetime(2017, 1, 2, 11, 0), None, None, "metformin"),
    (15, 2, "visit", "Visit", "ER", datetime(2018, 2, 1, 22, 15), None, None, "Emergency Room Visit"),
    (16, 2, "condition", "ICD10CM", "C25.9", datetime(2018, 2, 1, 22, 15), None, None, "Malignant neoplasm of pancreas"),
    (17, 2, "procedure", "CPT4", "74177", datetime(2018, 2, 2, 9, 0), None, None, "CT abdomen and pelvis"),
    (18, 2, "measurement", "LOINC", "29463-7", datetime(2018, 2, 1, 22, 15), 61.5, "kg", "Body weight"),
    (19, 3, "visit", "Visit", "OP", datetime(2020, 7, 7, 14, 0), None, None, "Outpatient Visit"),
    (20, 3, "measurement", "LOINC", "8480-6", datetime(2020, 7, 7, 14, 0), 128.0, "mm[Hg]", "Systolic blood pressure"),
]
GENDER_CONCEPT = {"F": 8532, "M": 8507}
# person -> (race, ethnicity) as (OMOP concept id, OMOP code, name, US Core OMB code); person 3
# has none recorded (OMOP's race 0, "No matching concept", and a NULL ethnicity)
RACE = {1: (8527, "Race//5", "White", "2106-3"), 2: (8516, "Race//3", "Black or African American", "2054-5")}
ETHNICITY = {1: (38003564, "Ethnicity//Not Hispanic", "Not Hispanic or Latino", "2186-5"),
             2: (38003563, "Ethnicity//Hispanic", "Hispanic or Latino", "2135-2")}
TABLE = {"visit": "visit_occurrence", "condition": "condition_occurrence", "drug": "drug_exposure",
         "procedure": "procedure_occurrence", "measurement": "measurement"}


def _concepts():
    """concept rows (id, name, vocabulary, code) for every code and unit used."""
    rows = {(8532, "FEMALE", "Gender", "F"), (8507, "MALE", "Gender", "M")}
    rows |= {(cid, name, code.split("//")[0], code.split("//")[1]) for cid, code, name, _ in [*RACE.values(), *ETHNICITY.values()]}
    ids = {}
    for i, (_, _, _, vocab, code, _, _, unit, desc) in enumerate(EVENTS):
        cid = ids.setdefault((vocab, code), 100 + i)
        rows.add((cid, desc, vocab, code))
        if unit:
            uid = ids.setdefault(("UCUM", unit), 900 + len(ids))
            rows.add((uid, unit, "UCUM", unit))
    return sorted(rows), ids


def write_omop_duckdb(path: Path) -> Path:
    concepts, ids = _concepts()
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE concept (concept_id INTEGER, concept_name VARCHAR, domain_id VARCHAR, vocabulary_id VARCHAR, concept_code VARCHAR)")
    con.executemany("INSERT INTO concept VALUES (?, ?, 'x', ?, ?)", concepts)
    con.execute("CREATE TABLE person (person_id BIGINT, gender_concept_id INTEGER, year_of_birth INTEGER, birth_datetime TIMESTAMP, "
                "race_concept_id INTEGER, ethnicity_concept_id INTEGER, person_source_value VARCHAR, patient_name VARCHAR)")
    con.executemany("INSERT INTO person VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
        (p, GENDER_CONCEPT[s], b.year, b, RACE[p][0] if p in RACE else 0, ETHNICITY[p][0] if p in ETHNICITY else None, mrn, name)
        for p, s, b, _, mrn, name in PEOPLE])
    con.execute("CREATE TABLE death (person_id BIGINT, death_date DATE, death_datetime TIMESTAMP)")
    con.executemany("INSERT INTO death VALUES (?, ?, ?)", [(p, d.date(), d) for p, _, _, d, _, _ in PEOPLE if d])
    con.execute("CREATE TABLE visit_occurrence (visit_occurrence_id BIGINT, person_id BIGINT, visit_concept_id INTEGER, visit_start_date DATE, visit_start_datetime TIMESTAMP)")
    con.execute("CREATE TABLE condition_occurrence (condition_occurrence_id BIGINT, person_id BIGINT, condition_concept_id INTEGER, condition_start_date DATE, condition_start_datetime TIMESTAMP)")
    con.execute("CREATE TABLE drug_exposure (drug_exposure_id BIGINT, person_id BIGINT, drug_concept_id INTEGER, drug_exposure_start_date DATE, drug_exposure_start_datetime TIMESTAMP)")
    con.execute("CREATE TABLE procedure_occurrence (procedure_occurrence_id BIGINT, person_id BIGINT, procedure_concept_id INTEGER, procedure_date DATE, procedure_datetime TIMESTAMP)")
    con.execute("CREATE TABLE measurement (measurement_id BIGINT, person_id BIGINT, measurement_concept_id INTEGER, measurement_date DATE, measurement_datetime TIMESTAMP, value_as_number DOUBLE, unit_concept_id INTEGER)")
    for eid, pid, kind, vocab, code, t, value, unit, _ in EVENTS:
        row = [eid, pid, ids[(vocab, code)], t.date(), t]
        if kind == "measurement":
            row += [value, ids[("UCUM", unit)]]
        con.execute(f"INSERT INTO {TABLE[kind]} VALUES ({', '.join('?' * len(row))})", row)
    con.close()
    return path


def write_omop_folder(folder: Path, *, csv_tables: tuple[str, ...] = ("measurement", "person")) -> Path:
    """The same tables as files: CSV for ``csv_tables``, Parquet for the rest."""
    db = write_omop_duckdb(folder.with_suffix(".tmp.duckdb"))
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db))
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
        if table in csv_tables:
            con.execute(f"COPY {table} TO '{folder / (table + '.csv')}' (HEADER, DELIMITER ',')")
        else:
            con.execute(f"COPY {table} TO '{folder / (table + '.parquet')}' (FORMAT parquet)")
    con.close()
    db.unlink()
    return folder


def write_meds(root: Path) -> Path:
    rows = []
    for pid, sex, birth, death, _, _ in PEOPLE:
        rows += [(pid, None, f"Gender//{sex}", None, None), (pid, birth, "MEDS_BIRTH", None, None)]
        rows += [(pid, None, audit[pid][1], None, None) for audit in (RACE, ETHNICITY) if pid in audit]
        if death:
            rows.append((pid, death, "MEDS_DEATH", None, None))
    for _, pid, _, vocab, code, t, value, unit, _ in EVENTS:
        rows.append((pid, t, f"{vocab}//{code}", value, unit))
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "subject_id": pa.array([r[0] for r in rows], pa.int64()),
            "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "code": pa.array([r[2] for r in rows], pa.string()),
            "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
            "text_value": pa.array(["a free-text note about Ada"] + [None] * (len(rows) - 1), pa.large_string()),
            "unit": pa.array([r[4] for r in rows], pa.string()),
        }
    )
    pq.write_table(table.slice(0, 7), root / "data" / "0.parquet")
    pq.write_table(table.slice(7), root / "data" / "1.parquet")
    descriptions = {f"{v}//{c}": d for _, _, _, v, c, _, _, _, d in EVENTS}
    pq.write_table(
        pa.table({"code": list(descriptions), "description": list(descriptions.values()),
                  "parent_codes": [["LOINC//LP16413-5"] if c == "LOINC//4548-4" else [] for c in descriptions]}),
        root / "metadata" / "codes.parquet",
    )
    pq.write_table(pa.table({"subject_id": [1, 2, 3], "split": ["train", "tuning", "held_out"]}), root / "metadata" / "subject_splits.parquet")
    (root / "metadata" / "dataset.json").write_text(json.dumps({"dataset_name": "crossformat", "meds_version": "0.4.1"}))
    return root


def copy_to_postgres(source: Path, engine, db_schema: str) -> str:
    """Every table of the DuckDB file ``source`` into ``db_schema`` on ``engine``; returns
    the SQLAlchemy URL to pull from."""
    con = duckdb.connect(str(source), read_only=True)
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
        con.execute(f"SELECT * FROM {table}").df().to_sql(table, engine, schema=db_schema, index=False)
    con.close()
    return engine.url.render_as_string(hide_password=False)
