"""Pull OMOP CDM v5.4 tables from a DuckDB file into de-identified MEDS events.

One SQL pass maps each clinical table to ``(person, time, code, value)`` rows:
concept ids become ``VOCABULARY//CODE`` through the ``concept`` table
(``OMOP//<concept_id>`` when a concept is missing there; a zero concept falls back
to the row's source concept). Rows that cannot be placed in time (no date, before
birth, after death, in the future) or have no concept at all go to ``quarantine/``
with a reason, and the pull report reconciles ``read = kept + quarantined`` per table.

Only allow-listed columns are ever selected: person_source_value (the MRN), names,
``*_source_value`` free text and exact birth dates never leave the database. Person
ids become keyed-hash pseudonyms and every time moves by the subject's offset
(``records.deid``) before anything is written; the PHI scan gate then reads back
every string the pull wrote.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from forewarn.records import deid, schema
from forewarn.records.progress import stage

# (table, person column, time expression, concept expression, value expression)
# Only these columns are read: the allow-list.
CLINICAL_TABLES: dict[str, tuple[str, str, str]] = {
    "visit_occurrence": (
        "COALESCE(visit_start_datetime, CAST(visit_start_date AS TIMESTAMP))",
        "visit_concept_id",
        "NULL",
    ),
    "condition_occurrence": (
        "COALESCE(condition_start_datetime, CAST(condition_start_date AS TIMESTAMP))",
        "COALESCE(NULLIF(condition_concept_id, 0), NULLIF(condition_source_concept_id, 0))",
        "NULL",
    ),
    "drug_exposure": (
        "COALESCE(drug_exposure_start_datetime, CAST(drug_exposure_start_date AS TIMESTAMP))",
        "COALESCE(NULLIF(drug_concept_id, 0), NULLIF(drug_source_concept_id, 0))",
        "NULL",
    ),
    "procedure_occurrence": (
        "COALESCE(procedure_datetime, CAST(procedure_date AS TIMESTAMP))",
        "COALESCE(NULLIF(procedure_concept_id, 0), NULLIF(procedure_source_concept_id, 0))",
        "NULL",
    ),
    "measurement": (
        "COALESCE(measurement_datetime, CAST(measurement_date AS TIMESTAMP))",
        "COALESCE(NULLIF(measurement_concept_id, 0), NULLIF(measurement_source_concept_id, 0))",
        "value_as_number",
    ),
}
OPTIONAL_COLUMNS = (
    "drug_source_concept_id",
    "procedure_source_concept_id",
    "measurement_source_concept_id",
    "condition_source_concept_id",
)
OBSERVATION_START = schema.OBSERVATION_START
OBSERVATION_END = schema.OBSERVATION_END
RESERVED_DESCRIPTIONS = {
    schema.BIRTH_CODE: "Birth",
    schema.DEATH_CODE: "Death",
    OBSERVATION_START: "Start of an observation period",
    OBSERVATION_END: "End of an observation period",
}


@dataclass(frozen=True)
class PullResult:
    """Where a pull wrote its output, and its headline counts."""

    site: str
    out_dir: Path
    events_dir: Path
    codes_path: Path
    report_path: Path
    subjects: int
    events: int
    quarantined: int


def pull_omop_duckdb(
    db_path: Path,
    out_dir: Path,
    *,
    site: str,
    config: deid.DeidConfig,
    shard_subjects: int = 100_000,
    now: datetime | None = None,
) -> PullResult:
    """Pull one site's OMOP DuckDB file into ``out_dir`` (events, codes, report, quarantine)."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(
            f"OMOP DuckDB file {str(db_path)!r} does not exist; pass the path of the site's database."
        )
    out_dir = Path(out_dir)
    now = now or datetime.now()
    with stage(f"pull {site}") as counts:
        con = duckdb.connect(str(db_path), read_only=True)
        try:
            result = _pull(con, db_path, out_dir, site, config, shard_subjects, now)
        finally:
            con.close()
        counts.update(subjects=result.subjects, events=result.events, quarantined=result.quarantined)
    return result


def _require(con: duckdb.DuckDBPyConnection, table: str, columns: list[str], db_path: Path) -> None:
    present = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()
    }
    if not present:
        raise ValueError(
            f"{db_path}: OMOP table {table!r} is missing; an OMOP CDM v5.4 source must have it."
        )
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(
            f"{db_path}: OMOP table {table!r} must have columns {missing}; they are missing. "
            "Check the CDM version (v5.4 expected) or add the columns (they may be null)."
        )


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()
    }


def _pull(con, db_path, out_dir, site, config, shard_subjects, now) -> PullResult:
    _require(con, "person", ["person_id", "gender_concept_id", "year_of_birth"], db_path)
    _require(con, "concept", ["concept_id", "vocabulary_id", "concept_code", "concept_name"], db_path)
    present_tables = {
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    mem = duckdb.connect()  # working database; the source stays read-only
    mem.sql(f"ATTACH '{db_path}' AS src (READ_ONLY)")
    mem.execute(
        "CREATE TEMP TABLE code_map AS SELECT concept_id, vocabulary_id || '//' || concept_code AS code, "
        "concept_name AS description FROM src.concept"
    )
    # Persons: birth from birth_datetime or year/month/day; never the source value.
    person_cols = _columns(con, "person")
    month = "COALESCE(month_of_birth, 7)" if "month_of_birth" in person_cols else "7"
    day = "COALESCE(day_of_birth, 1)" if "day_of_birth" in person_cols else "1"
    birth = f"make_timestamp(year_of_birth, {month}, {day}, 0, 0, 0)"
    if "birth_datetime" in person_cols:
        birth = f"COALESCE(birth_datetime, {birth})"
    mem.execute(
        f"CREATE TEMP TABLE persons AS SELECT person_id, gender_concept_id, {birth} AS birth FROM src.person"
    )
    person_ids = [r[0] for r in mem.execute("SELECT person_id FROM persons ORDER BY person_id").fetchall()]
    subject_ids, shifts = deid.pseudonymize(person_ids, config)
    mem.register(
        "pseudo_arrow",
        pa.table({"person_id": pa.array(person_ids, pa.int64()), "subject_id": subject_ids, "shift_days": shifts}),
    )
    mem.execute("CREATE TEMP TABLE pseudo AS SELECT * FROM pseudo_arrow")
    mem.unregister("pseudo_arrow")
    deaths = "death" in present_tables
    if deaths:
        mem.execute(
            "CREATE TEMP TABLE deaths AS SELECT person_id, min(COALESCE(death_datetime, CAST(death_date AS TIMESTAMP))) AS death "
            "FROM src.death GROUP BY person_id"
        )
    else:
        mem.execute("CREATE TEMP TABLE deaths (person_id BIGINT, death TIMESTAMP)")

    # Raw events with the source table they came from.
    selects = [
        "SELECT person_id, CAST(NULL AS TIMESTAMP) AS time, gender_concept_id AS concept_id, "
        "CAST(NULL AS VARCHAR) AS fixed_code, CAST(NULL AS DOUBLE) AS value, 'person' AS src_table, "
        "CAST(person_id AS VARCHAR) AS src_row FROM persons",
        f"SELECT person_id, birth, NULL, '{schema.BIRTH_CODE}', NULL, 'person', CAST(person_id AS VARCHAR) FROM persons",
    ]
    read_tables = ["person"]
    if "observation_period" in present_tables:
        read_tables.append("observation_period")
        for col, code in (("observation_period_start_date", OBSERVATION_START), ("observation_period_end_date", OBSERVATION_END)):
            selects.append(
                f"SELECT person_id, CAST({col} AS TIMESTAMP), NULL, '{code}', NULL, 'observation_period', "
                "person_id || ':' || CAST(observation_period_start_date AS VARCHAR) FROM src.observation_period"
            )
    for table, (time_expr, concept_expr, value_expr) in CLINICAL_TABLES.items():
        if table not in present_tables:
            continue
        cols = _columns(con, table)
        for optional in OPTIONAL_COLUMNS:
            if optional.split("_")[0] == table.split("_")[0] and optional not in cols:
                concept_expr = concept_expr.replace(f", NULLIF({optional}, 0)", "")
        read_tables.append(table)
        selects.append(
            f"SELECT person_id, {time_expr}, {concept_expr}, NULL, CAST({value_expr} AS DOUBLE), '{table}', NULL FROM src.{table}"
        )
    if deaths:
        read_tables.append("death")
        selects.append(
            f"SELECT person_id, COALESCE(death_datetime, CAST(death_date AS TIMESTAMP)), NULL, '{schema.DEATH_CODE}', "
            "NULL, 'death', NULL FROM src.death"
        )
    mem.execute("CREATE TEMP TABLE raw AS " + " UNION ALL ".join(selects))

    now_lit = now.strftime("%Y-%m-%d %H:%M:%S")
    mem.execute(
        f"""
        CREATE TEMP TABLE checked AS
        SELECT r.src_table, COALESCE(r.src_row, CAST(row_number() OVER () AS VARCHAR)) AS src_row, p.subject_id, p.shift_days, r.time, r.value,
               COALESCE(r.fixed_code, m.code, 'OMOP//' || CAST(r.concept_id AS VARCHAR)) AS code,
               CASE
                 WHEN p.subject_id IS NULL THEN 'person_id not in the person table'
                 WHEN r.fixed_code IS NULL AND r.concept_id IS NULL THEN 'no concept id (concept and source concept are 0 or null)'
                 WHEN r.time IS NULL AND r.src_table <> 'person' THEN 'missing date'
                 WHEN r.time IS NULL AND r.fixed_code = '{schema.BIRTH_CODE}' THEN 'missing birth date'
                 WHEN r.time > TIMESTAMP '{now_lit}' THEN 'date in the future'
                 WHEN r.time IS NOT NULL AND CAST(r.time AS DATE) < CAST(ps.birth AS DATE) THEN 'date before birth'
                 WHEN r.time IS NOT NULL AND d.death IS NOT NULL AND CAST(r.time AS DATE) > CAST(d.death AS DATE)
                      AND r.src_table NOT IN ('death', 'observation_period') THEN 'date after death'
                 ELSE NULL
               END AS reason
        FROM raw r
        LEFT JOIN pseudo p USING (person_id)
        LEFT JOIN persons ps USING (person_id)
        LEFT JOIN deaths d USING (person_id)
        LEFT JOIN code_map m ON m.concept_id = r.concept_id
        """
    )
    # Ages over 89 collapse to 90: the birth event moves to 90 years before the
    # subject's last kept event.
    mem.execute(
        f"""
        CREATE TEMP TABLE kept AS
        WITH k AS (SELECT * FROM checked WHERE reason IS NULL),
        last AS (SELECT subject_id, max(time) AS last_time FROM k GROUP BY subject_id)
        SELECT k.subject_id,
               CASE WHEN k.code = '{schema.BIRTH_CODE}' AND k.time < l.last_time - INTERVAL 90 YEAR
                    THEN l.last_time - INTERVAL 90 YEAR ELSE k.time END
                 + k.shift_days * INTERVAL 1 DAY AS time,
               k.code, CAST(k.value AS FLOAT) AS numeric_value, CAST(NULL AS VARCHAR) AS text_value,
               k.src_table, k.src_row,
               (k.code = '{schema.BIRTH_CODE}' AND k.time < l.last_time - INTERVAL 90 YEAR) AS age_capped
        FROM k JOIN last l USING (subject_id)
        """
    )
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / schema.EVENTS_DIR).mkdir(parents=True)
    (tmp / "metadata").mkdir()
    (tmp / schema.QUARANTINE_DIR).mkdir()

    n_subjects = len(person_ids)
    n_shards = max(1, -(-n_subjects // shard_subjects))
    events = 0
    for shard in range(n_shards):
        table = mem.sql(
            "SELECT subject_id, time, code, numeric_value, text_value FROM kept "
            f"WHERE subject_id % {n_shards} = {shard} ORDER BY subject_id, time NULLS FIRST, code, numeric_value"
        ).to_arrow_table()
        table = schema.align(table, schema.DATA_SCHEMA, what=f"events shard {shard}")
        pq.write_table(table, tmp / schema.EVENTS_DIR / f"{shard}.parquet")
        events += table.num_rows

    quarantine = mem.sql(
        "SELECT src_table, subject_id, time + shift_days * INTERVAL 1 DAY AS time, code, "
        "CAST(value AS FLOAT) AS numeric_value, reason FROM checked WHERE reason IS NOT NULL "
        "ORDER BY src_table, subject_id, time, code"
    ).to_arrow_table()
    pq.write_table(quarantine, tmp / schema.QUARANTINE_DIR / "events.parquet")

    codes = mem.sql(
        "SELECT DISTINCT k.code, m.description FROM kept k LEFT JOIN code_map m ON m.code = k.code ORDER BY k.code"
    ).to_arrow_table()
    descriptions = [
        d if d is not None else RESERVED_DESCRIPTIONS.get(c) for c, d in zip(
            codes.column("code").to_pylist(), codes.column("description").to_pylist(), strict=True
        )
    ]
    codes_table = pa.table(
        {
            schema.CODE: codes.column("code"),
            "description": pa.array(descriptions, pa.string()),
            "parent_codes": pa.array([[] for _ in descriptions], pa.list_(pa.string())),
        }
    )
    pq.write_table(schema.align(codes_table, schema.CODES_SCHEMA, what="codes"), tmp / schema.CODES_FILE)

    # Reconcile in source rows: a row is quarantined when any event it gave was.
    per_table = {}
    rows = mem.execute(
        "SELECT src_table, count(DISTINCT src_row), count(DISTINCT src_row) FILTER (WHERE reason IS NOT NULL) "
        "FROM checked GROUP BY src_table"
    ).fetchall()
    by_table = {r[0]: (r[1], r[2]) for r in rows}
    for name in read_tables:
        read, bad = by_table.get(name, (0, 0))
        reasons = dict(
            mem.execute(
                "SELECT reason, count(DISTINCT src_row) FROM checked WHERE src_table = ? AND reason IS NOT NULL "
                "GROUP BY reason ORDER BY reason",
                [name],
            ).fetchall()
        )
        per_table[name] = {"read": read, "kept": read - bad, "quarantined": bad, "reasons": reasons}
    span = mem.execute("SELECT min(time), max(time) FROM kept WHERE time IS NOT NULL").fetchone()
    quarantined = sum(t["quarantined"] for t in per_table.values())
    report = {
        "site": site,
        "source": {"format": "omop", "engine": "duckdb"},
        "subjects": n_subjects,
        "events": events,
        "quarantined": quarantined,
        "shards": n_shards,
        "ages_capped_at_90": mem.execute("SELECT count(*) FROM kept WHERE age_capped").fetchone()[0],
        "time_span": [span[0].date().isoformat() if span[0] else None, span[1].date().isoformat() if span[1] else None],
        "tables": per_table,
        "deid": {"pseudonyms": "HMAC-SHA256", "max_shift_days": config.max_shift_days},
    }
    (tmp / schema.PULL_REPORT).write_text(json.dumps(report, indent=2, default=str))
    mem.close()

    # PHI gate over every string written, with the identifiers this source held.
    identifiers = _source_identifiers(con, present_tables)
    problems = scan_output(tmp, identifiers)
    if problems:
        shutil.rmtree(tmp)
    deid.gate(problems, site=site)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return PullResult(
        site=site,
        out_dir=out_dir,
        events_dir=out_dir / schema.EVENTS_DIR,
        codes_path=out_dir / schema.CODES_FILE,
        report_path=out_dir / schema.PULL_REPORT,
        subjects=n_subjects,
        events=events,
        quarantined=quarantined,
    )


IDENTIFIER_COLUMNS = {
    "person": ("person_source_value", "patient_name", "given_name", "family_name", "name", "address", "phone", "email", "ssn"),
}


def _source_identifiers(con: duckdb.DuckDBPyConnection, present_tables: set[str]) -> set[str]:
    """Every identifier value the source holds in the columns we know carry them."""
    found: set[str] = set()
    for table, candidates in IDENTIFIER_COLUMNS.items():
        if table not in present_tables:
            continue
        cols = _columns(con, table)
        for col in candidates:
            if col in cols:
                found.update(
                    str(v[0]) for v in con.execute(f"SELECT DISTINCT {col} FROM {table} WHERE {col} IS NOT NULL").fetchall()
                )
    return found


def scan_output(folder: Path, identifiers: set[str]) -> list[str]:
    """Scan every string column of every Parquet file and every JSON file under ``folder``."""
    problems: list[str] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for field in table.schema:
                if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                    values = table.column(field.name).unique().to_pylist()
                    problems += deid.scan_strings(values, identifiers, where=f"{rel}:{field.name}")
        elif path.suffix == ".json":
            problems += deid.scan_strings([path.read_text()], identifiers, where=str(rel))
    return problems
