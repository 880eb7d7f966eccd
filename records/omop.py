"""OMOP CDM v5.4 into de-identified MEDS events, from DuckDB, any SQLAlchemy database,
or a folder of Parquet/CSV tables.

The source is exposed to a working DuckDB database as schema ``src`` (DuckDB:
attached read-only; folder: views over the files; SQLAlchemy: the allow-listed
columns streamed in chunks), then one SQL pass maps each table to events: concept ids
become ``VOCABULARY//CODE`` through ``concept`` (``OMOP//<concept_id>`` when the
concept table lacks it; a zero concept falls back to the row's source concept).
Only allow-listed columns are ever selected: ``person_source_value`` (the MRN),
names and ``*_source_value`` text never reach the working tables. The rest — checks,
quarantine, pseudonyms, date shifts, the PHI gate — is ``records.pull``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from forewarn.records import deid, schema
from forewarn.records.pull import PullContext, PullResult, part_predicate, run_pull


@dataclass(frozen=True)
class Clinical:
    """How one OMOP clinical table maps to events."""

    datetime_col: str
    date_col: str
    concept_cols: tuple[str, ...]  # the first non-zero wins (standard, then source concept)
    key: str
    value_col: str | None = None
    unit_col: str | None = None


CLINICAL_TABLES: dict[str, Clinical] = {
    "visit_occurrence": Clinical("visit_start_datetime", "visit_start_date", ("visit_concept_id",), "visit_occurrence_id"),
    "condition_occurrence": Clinical(
        "condition_start_datetime", "condition_start_date", ("condition_concept_id", "condition_source_concept_id"),
        "condition_occurrence_id",
    ),
    "drug_exposure": Clinical(
        "drug_exposure_start_datetime", "drug_exposure_start_date", ("drug_concept_id", "drug_source_concept_id"),
        "drug_exposure_id",
    ),
    "procedure_occurrence": Clinical(
        "procedure_datetime", "procedure_date", ("procedure_concept_id", "procedure_source_concept_id"),
        "procedure_occurrence_id",
    ),
    "measurement": Clinical(
        "measurement_datetime", "measurement_date", ("measurement_concept_id", "measurement_source_concept_id"),
        "measurement_id", "value_as_number", "unit_concept_id",
    ),
    "observation": Clinical(
        "observation_datetime", "observation_date", ("observation_concept_id", "observation_source_concept_id"),
        "observation_id", "value_as_number", "unit_concept_id",
    ),
}
# Columns a table must have; optional ones (source concepts, datetimes) are filled with NULL when absent.
REQUIRED = {
    "person": ["person_id", "gender_concept_id", "year_of_birth"],
    "concept": ["concept_id", "vocabulary_id", "concept_code"],
    "observation_period": ["person_id", "observation_period_start_date", "observation_period_end_date"],
    "visit_occurrence": ["person_id", "visit_concept_id", "visit_start_date"],
    "condition_occurrence": ["person_id", "condition_concept_id", "condition_start_date"],
    "drug_exposure": ["person_id", "drug_concept_id", "drug_exposure_start_date"],
    "procedure_occurrence": ["person_id", "procedure_concept_id", "procedure_date"],
    "measurement": ["person_id", "measurement_concept_id", "measurement_date"],
    "observation": ["person_id", "observation_concept_id", "observation_date"],
    "death": ["person_id", "death_date"],
    # Vocabulary: only its "Maps to" rows are read (source code -> standard code, kept as
    # the source code's parent_codes in metadata/codes.parquet).
    "concept_relationship": ["concept_id_1", "concept_id_2", "relationship_id"],
}
VOCABULARY_TABLES = ("concept", "concept_relationship")
OPTIONAL = {
    "person": ["month_of_birth", "day_of_birth", "birth_datetime", "race_concept_id", "ethnicity_concept_id"],
    "concept": ["concept_name"],
    "concept_relationship": ["invalid_reason"],
    "observation_period": ["observation_period_id"],
    "visit_occurrence": ["visit_start_datetime", "visit_occurrence_id"],
    "condition_occurrence": ["condition_start_datetime", "condition_source_concept_id", "condition_occurrence_id"],
    "drug_exposure": ["drug_exposure_start_datetime", "drug_source_concept_id", "drug_exposure_id"],
    "procedure_occurrence": ["procedure_datetime", "procedure_source_concept_id", "procedure_occurrence_id"],
    "measurement": ["measurement_datetime", "measurement_source_concept_id", "value_as_number", "unit_concept_id", "measurement_id"],
    "observation": ["observation_datetime", "observation_source_concept_id", "value_as_number", "unit_concept_id", "observation_id"],
    "death": ["death_datetime"],
}
# Read only to feed the PHI gate: identifier values this source holds.
IDENTIFIER_COLUMNS = {
    "person": ("person_source_value", "patient_name", "given_name", "family_name", "name", "address", "phone", "email", "ssn"),
}


def pull_omop(
    location: str | Path,
    out_dir: Path,
    *,
    site: str,
    config: deid.DeidConfig,
    now: datetime | None = None,
    shard_subjects: int = 100_000,
    max_bad_fraction: float = 0.05,
    db_schema: str | None = None,
    chunk_rows: int = 200_000,
    part: tuple[int, int] | None = None,
) -> PullResult:
    """Pull OMOP from a DuckDB file, a folder of ``<table>.parquet|.csv`` files, or a
    SQLAlchemy URL (``postgresql://...``; ``db_schema`` picks the schema)."""
    kind = _kind(location)

    def load(ctx: PullContext) -> None:
        vocabulary = {}
        if kind == "duckdb":
            _attach_duckdb(ctx, Path(location))
        elif kind == "folder":
            _attach_folder(ctx, Path(location))
        else:
            vocabulary = _copy_sqlalchemy(ctx, str(location), db_schema, chunk_rows, part=part)
        ctx.source = {"format": "omop", "engine": kind, "location": _safe_location(location)}
        if vocabulary:
            ctx.source["vocabulary_rows_read"] = vocabulary
        load_omop(ctx)

    return run_pull(f"pull {site} (omop, {kind})", out_dir, load, site=site, config=config, now=now,
                    shard_subjects=shard_subjects, max_bad_fraction=max_bad_fraction, part=part)


def pull_omop_duckdb(db_path: Path, out_dir: Path, **kwargs) -> PullResult:
    """Pull one site's OMOP DuckDB file (see ``pull_omop``)."""
    if not Path(db_path).is_file():
        raise FileNotFoundError(f"OMOP DuckDB file {str(db_path)!r} does not exist; pass the path of the site's database.")
    return pull_omop(Path(db_path), out_dir, **kwargs)


def _kind(location: str | Path) -> str:
    text = str(location)
    if re.match(r"^[a-z][a-z0-9+]*://", text):
        return "sqlalchemy"
    path = Path(location)
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "duckdb"
    raise FileNotFoundError(
        f"OMOP source {text!r} does not exist; pass a DuckDB file, a folder of <table>.parquet/.csv files, "
        "or a SQLAlchemy URL such as postgresql://user@host/db."
    )


def _safe_location(location: str | Path) -> str:
    """The location without credentials, for the report."""
    return re.sub(r"//[^@/]*@", "//***@", str(location))


def _attach_duckdb(ctx: PullContext, path: Path) -> None:
    ctx.con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")


def _attach_folder(ctx: PullContext, folder: Path) -> None:
    ctx.con.execute("CREATE SCHEMA src")
    for table in ["person", *VOCABULARY_TABLES, "observation_period", *CLINICAL_TABLES, "death"]:
        parquet = [p for p in (folder / f"{table}.parquet", folder / table) if p.exists()]
        csv = folder / f"{table}.csv"
        if parquet:
            target = parquet[0] if parquet[0].is_file() else parquet[0] / "*.parquet"
            ctx.con.execute(f"CREATE VIEW src.{table} AS SELECT * FROM read_parquet('{target}')")
        elif csv.is_file():
            ctx.con.execute(
                f"CREATE VIEW src.{table} AS SELECT * FROM read_csv('{csv}', header = true, all_varchar = true)"
            )


# Concept ids per vocabulary query: the server gets them as one IN list (bound parameters).
# SQL Server takes at most 2,100 parameters a statement and Oracle 1,000 items an IN list.
VOCABULARY_IDS_PER_QUERY = 5_000
VOCABULARY_IDS_BY_DIALECT = {"mssql": 2_000, "oracle": 1_000}


def _copy_sqlalchemy(ctx: PullContext, url: str, db_schema: str | None, chunk_rows: int, *,
                     part: tuple[int, int] | None = None) -> dict[str, int]:
    """Stream the allow-listed columns of each OMOP table into the working database
    (with ``part``, only that part's rows: the server filters on ``person_id``).

    The vocabulary is not copied whole (a full OMOP vocabulary holds millions of concepts
    and tens of millions of relationships): after the person and clinical tables, the
    server sends only the "Maps to" rows of the concept ids those tables use, then the
    concept rows of those ids and of their "Maps to" targets. The pull is the same as
    from the whole vocabulary. Returns how many vocabulary rows came, per table."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        present = set(inspector.get_table_names(schema=db_schema))
        ctx.con.execute("CREATE SCHEMA src")
        prefix = f'"{db_schema}".' if db_schema else ""
        with engine.connect() as conn:

            def columns(table: str) -> list[str]:
                have = {c["name"] for c in inspector.get_columns(table, schema=db_schema)}
                wanted = [c for c in REQUIRED[table] + OPTIONAL[table] if c in have]
                return list(dict.fromkeys(wanted))

            def copy(table: str, sql: str, params: dict | None = None) -> int:
                return _stream_rows(ctx, conn, table, columns(table), sa.text(sql), params, chunk_rows)

            def ensure(table: str) -> None:
                """The table exists in ``src`` when it does on the server, if empty (untyped columns)."""
                if not _src_has(ctx, table):
                    _append(ctx, table, pa.table({c: pa.array([]) for c in columns(table)}))

            for table in [t for t in REQUIRED if t in present and t not in VOCABULARY_TABLES]:
                ident = [c for c in IDENTIFIER_COLUMNS.get(table, ()) if c in {c["name"] for c in inspector.get_columns(table, schema=db_schema)}]
                if ident:
                    rows = conn.execute(sa.text(f"SELECT DISTINCT {', '.join(ident)} FROM {prefix}{table}"))
                    ctx.identifiers |= {str(v) for row in rows for v in row if v is not None}
                where = f" WHERE {_server_part(part)}" if part and part[1] > 1 and "person_id" in REQUIRED[table] else ""
                copy(table, f"SELECT {', '.join(columns(table))} FROM {prefix}{table}{where}")
                ensure(table)
            used = _used_concept_ids(ctx)
            counts = {}
            if "concept_relationship" in present:
                sql = (f"SELECT {', '.join(columns('concept_relationship'))} FROM {prefix}concept_relationship "
                       "WHERE relationship_id = 'Maps to' AND concept_id_1 IN :ids")
                counts["concept_relationship"] = sum(copy("concept_relationship", sql, {"ids": ids}) for ids in _id_chunks(used, engine.dialect.name))
                ensure("concept_relationship")
                targets = ctx.con.execute("SELECT DISTINCT TRY_CAST(concept_id_2 AS BIGINT) FROM src.concept_relationship").fetchall()
                used |= {int(r[0]) for r in targets if r[0] is not None}
            if "concept" in present:
                sql = f"SELECT {', '.join(columns('concept'))} FROM {prefix}concept WHERE concept_id IN :ids"
                counts["concept"] = sum(copy("concept", sql, {"ids": ids}) for ids in _id_chunks(used, engine.dialect.name))
                ensure("concept")
    finally:
        engine.dispose()
    return counts


def _used_concept_ids(ctx: PullContext) -> set[int]:
    """Every concept id in a ``*concept_id`` column of the tables copied into ``src`` so far."""
    selects = [
        f"SELECT TRY_CAST({column} AS BIGINT) AS id FROM src.{table}"
        for table, column in ctx.con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'src' AND column_name LIKE '%concept_id'"
        ).fetchall()
    ]
    if not selects:
        return set()
    rows = ctx.con.execute(f"SELECT DISTINCT id FROM ({' UNION ALL '.join(selects)}) WHERE id IS NOT NULL").fetchall()
    return {int(r[0]) for r in rows}


def _id_chunks(ids: set[int], dialect: str = ""):
    """``ids`` sorted, in lists of at most ``VOCABULARY_IDS_PER_QUERY`` (fewer where the
    database ``dialect`` limits parameters; none when ``ids`` is empty)."""
    ordered = sorted(ids)
    size = min(VOCABULARY_IDS_PER_QUERY, VOCABULARY_IDS_BY_DIALECT.get(dialect, VOCABULARY_IDS_PER_QUERY))
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


def _stream_rows(ctx: PullContext, conn, table: str, wanted: list[str], query, params: dict | None, chunk_rows: int) -> int:
    """Append the rows of ``query`` (columns ``wanted``) to ``src.<table>``, ``chunk_rows`` at
    a time, creating the table from the first rows. Returns how many rows came."""
    import sqlalchemy as sa

    if params and any(isinstance(v, list) for v in params.values()):
        query = query.bindparams(*[sa.bindparam(k, expanding=True) for k, v in params.items() if isinstance(v, list)])
    result = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows).execute(query, params or {})
    n = 0
    while rows := result.fetchmany(chunk_rows):
        _append(ctx, table, pa.table({c: _column([r[i] for r in rows]) for i, c in enumerate(wanted)}))
        n += len(rows)
    return n


def _column(values: list) -> pa.Array:
    """One streamed column as Arrow. A SQL NUMERIC (the CDM's type for ``value_as_number``
    on PostgreSQL) comes as Python Decimals, which Arrow would type with the precision and
    scale of this chunk alone, so that a later chunk's values were rounded or refused:
    they become float64, as the DuckDB and file sources give them."""
    array = pa.array(values)
    return array.cast(pa.float64()) if pa.types.is_decimal(array.type) else array


def _src_has(ctx: PullContext, table: str) -> bool:
    return bool(ctx.con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'src' AND table_name = ?", [table]).fetchall()[0][0])


def _append(ctx: PullContext, table: str, batch: pa.Table) -> None:
    """Insert ``batch`` into ``src.<table>``, creating the table from it when it does not
    exist. A column that is all NULL in the creating batch is created VARCHAR: it would
    otherwise take DuckDB's NULL type, which no later chunk's values can be inserted into
    (every read of ``src`` casts with TRY_CAST, so text holds any of them)."""
    if not _src_has(ctx, table):
        batch = pa.table({c: batch[c].cast(pa.string()) if pa.types.is_null(batch[c].type) else batch[c] for c in batch.column_names})
    ctx.con.register("_chunk", batch)
    ctx.con.execute(f"INSERT INTO src.{table} SELECT * FROM _chunk" if _src_has(ctx, table) else f"CREATE TABLE src.{table} AS SELECT * FROM _chunk")
    ctx.con.unregister("_chunk")


def _server_part(part: tuple[int, int]) -> str:
    """``part_predicate`` for a server that holds ``person_id`` as an integer (the CDM's
    type): plain SQL, so that the server does the filtering."""
    index, count = part
    return f"COALESCE(((CAST(person_id AS BIGINT) % {count}) + {count}) % {count}, 0) = {index}"


def _columns(ctx: PullContext, table: str) -> set[str]:
    return {
        r[0]
        for r in ctx.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'src' AND table_name = ? "
            "UNION SELECT column_name FROM duckdb_columns() WHERE database_name = 'src' AND table_name = ?",
            [table, table],
        ).fetchall()
    }


def _tables(ctx: PullContext) -> set[str]:
    return {
        r[0]
        for r in ctx.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'src' OR table_catalog = 'src'"
        ).fetchall()
    }


def load_omop(ctx: PullContext) -> None:
    """Fill the raw tables from ``src.*``; see the module docstring."""
    con = ctx.con
    tables = _tables(ctx)
    for table in ("person", "concept"):
        if table not in tables:
            raise ValueError(
                f"OMOP table {table!r} is missing from the source; an OMOP CDM v5.4 source must have it."
            )
    cols = {t: _columns(ctx, t) for t in tables if t in REQUIRED}
    for table, have in cols.items():
        missing = [c for c in REQUIRED[table] if c not in have]
        if missing:
            raise ValueError(
                f"OMOP table {table!r} must have columns {missing}; they are missing. "
                "Check the CDM version (v5.4 expected) or add the columns (they may be null)."
            )
    # Views with every optional column present (NULL when the source lacks it) and typed;
    # with a part, only the rows of that part's persons (every table but concept has person_id).
    where = {t: part_predicate("person_id", ctx.part) if "person_id" in REQUIRED[t] else "TRUE" for t in cols}
    ctx.part_applied = True
    for table in cols:
        ctx.read_counts[table] = con.execute(f"SELECT count(*) FROM src.{table} WHERE {where[table]}").fetchone()[0]
    for table in VOCABULARY_TABLES:
        ctx.read_counts.pop(table, None)
    for table, have in cols.items():
        select = ", ".join(
            [c for c in REQUIRED[table] + OPTIONAL[table] if c in have]
            + [f"NULL AS {c}" for c in OPTIONAL[table] if c not in have]
        )
        con.execute(f"CREATE VIEW v_{table} AS SELECT {select} FROM src.{table} WHERE {where[table]}")
    if "person" in cols:
        ident = [c for c in IDENTIFIER_COLUMNS["person"] if c in cols["person"]]
        for c in ident:
            ctx.identifiers |= {str(r[0]) for r in con.execute(f"SELECT DISTINCT {c} FROM src.person WHERE {c} IS NOT NULL").fetchall()}

    con.execute(
        """
        CREATE TEMP TABLE code_map AS
        SELECT TRY_CAST(concept_id AS BIGINT) AS concept_id, vocabulary_id || '//' || concept_code AS code,
               concept_code, concept_name AS description
        FROM v_concept;
        INSERT INTO code_descriptions SELECT code, description FROM code_map;
        """
    )
    if "concept_relationship" in cols:
        # A non-standard code (an ICD10CM diagnosis a site's ETL left unmapped) also
        # counts at the standard code it "Maps to", so that one clinical concept is one
        # feature across sites whatever vocabulary each site's rows carry.
        con.execute(
            """
            INSERT INTO code_parents
            SELECT DISTINCT a.code, b.code
            FROM v_concept_relationship r
            JOIN code_map a ON a.concept_id = TRY_CAST(r.concept_id_1 AS BIGINT)
            JOIN code_map b ON b.concept_id = TRY_CAST(r.concept_id_2 AS BIGINT)
            WHERE r.relationship_id = 'Maps to' AND COALESCE(CAST(r.invalid_reason AS VARCHAR), '') = ''
              AND a.code <> b.code
            """
        )
    birth = (
        "COALESCE(TRY_CAST(birth_datetime AS TIMESTAMP), "
        "TRY_CAST(make_timestamp(TRY_CAST(year_of_birth AS INTEGER), COALESCE(TRY_CAST(month_of_birth AS INTEGER), 7), "
        "COALESCE(TRY_CAST(day_of_birth AS INTEGER), 1), 0, 0, 0) AS TIMESTAMP))"
    )
    death = "NULL"
    if "death" in cols:
        death = (
            "(SELECT min(COALESCE(TRY_CAST(death_datetime AS TIMESTAMP), TRY_CAST(death_date AS TIMESTAMP))) "
            "FROM v_death d WHERE CAST(d.person_id AS VARCHAR) = CAST(p.person_id AS VARCHAR))"
        )
    con.execute(
        f"""
        INSERT INTO raw_persons
        SELECT CAST(person_id AS VARCHAR), {birth}, {death}, 'person row ' || CAST(row_number() OVER () AS VARCHAR)
        FROM v_person p
        """
    )
    # Gender, race and ethnicity are static events of the person row (race and ethnicity
    # only where recorded: 0 is OMOP's "No matching concept"); race and ethnicity are the
    # fairness audit's subgroups, never predictors (``features.audit_vocabularies``).
    for column, skip_zero in (("gender_concept_id", False), ("race_concept_id", True), ("ethnicity_concept_id", True)):
        recorded = f"p.{column} IS NOT NULL" + (f" AND COALESCE(TRY_CAST(p.{column} AS BIGINT), -1) <> 0" if skip_zero else "")
        con.execute(
            f"""
            INSERT INTO raw_events
            WITH p AS (SELECT *, 'person row ' || CAST(row_number() OVER () AS VARCHAR) AS src_row FROM v_person)
            SELECT 'person', p.src_row, NULL, CAST(p.person_id AS VARCHAR), NULL,
                   COALESCE(m.code, 'OMOP//' || CAST(p.{column} AS VARCHAR)), NULL, NULL,
                   CASE WHEN TRY_CAST(p.{column} AS BIGINT) IS NULL
                        THEN 'person.{column}: expected an integer concept id; fix the value' END
            FROM p LEFT JOIN code_map m ON m.concept_id = TRY_CAST(p.{column} AS BIGINT)
            WHERE {recorded}
            """
        )
    if "observation_period" in cols:
        for col, code in (
            ("observation_period_start_date", schema.OBSERVATION_START),
            ("observation_period_end_date", schema.OBSERVATION_END),
        ):
            con.execute(
                f"""
                INSERT INTO raw_events
                WITH o AS (SELECT *, 'observation_period row ' || CAST(row_number() OVER () AS VARCHAR) AS src_row FROM v_observation_period)
                SELECT 'observation_period', src_row, CAST(observation_period_id AS VARCHAR), CAST(person_id AS VARCHAR),
                       TRY_CAST({col} AS TIMESTAMP), '{code}', NULL, NULL,
                       CASE WHEN {col} IS NOT NULL AND TRY_CAST({col} AS TIMESTAMP) IS NULL
                            THEN 'observation_period.{col}: expected a date (YYYY-MM-DD); fix the value' END
                FROM o
                """
            )
    for table, spec in CLINICAL_TABLES.items():
        if table in cols:
            con.execute(_clinical_sql(table, spec))
    if "death" in cols:
        con.execute(
            f"""
            INSERT INTO raw_events
            WITH x AS (SELECT *, 'death row ' || CAST(row_number() OVER () AS VARCHAR) AS src_row FROM v_death)
            SELECT 'death', src_row, CAST(person_id AS VARCHAR), CAST(person_id AS VARCHAR),
                   COALESCE(TRY_CAST(death_datetime AS TIMESTAMP), TRY_CAST(death_date AS TIMESTAMP)), '{schema.DEATH_CODE}',
                   NULL, NULL,
                   CASE WHEN death_date IS NOT NULL AND TRY_CAST(death_date AS TIMESTAMP) IS NULL
                        THEN 'death.death_date: expected a date (YYYY-MM-DD); fix the value' END
            FROM x
            """
        )


def _clinical_sql(table: str, spec: Clinical) -> str:
    t = f"COALESCE(TRY_CAST(x.{spec.datetime_col} AS TIMESTAMP), TRY_CAST(x.{spec.date_col} AS TIMESTAMP))"
    c = "COALESCE(" + ", ".join(f"NULLIF(TRY_CAST(x.{col} AS BIGINT), 0)" for col in spec.concept_cols) + ")"
    raw_value = f"x.{spec.value_col}" if spec.value_col else "NULL"
    value = f"TRY_CAST(x.{spec.value_col} AS DOUBLE)" if spec.value_col else "NULL"
    unit = "um.concept_code" if spec.unit_col else "NULL"  # the unit itself (mg/dL), as FHIR gives it
    unit_join = f"LEFT JOIN code_map um ON um.concept_id = TRY_CAST(x.{spec.unit_col} AS BIGINT)" if spec.unit_col else ""
    return f"""
        INSERT INTO raw_events
        WITH x AS (SELECT *, '{table} row ' || CAST(row_number() OVER () AS VARCHAR) AS src_row FROM v_{table})
        SELECT '{table}', x.src_row, CAST(x.{spec.key} AS VARCHAR), CAST(x.person_id AS VARCHAR), {t},
               CASE WHEN {c} IS NULL THEN NULL ELSE COALESCE(m.code, 'OMOP//' || CAST({c} AS VARCHAR)) END,
               {value}, {unit},
               CASE
                 WHEN {c} IS NULL THEN '{table}: no concept id (concept and source concept are 0 or empty); map the row'
                 WHEN x.{spec.date_col} IS NOT NULL AND {t} IS NULL
                   THEN '{table}.{spec.date_col}: expected a date (YYYY-MM-DD); fix the value'
                 WHEN {raw_value} IS NOT NULL AND {value} IS NULL
                   THEN '{table}.{spec.value_col}: expected a number; fix the value or leave it empty'
               END
        FROM x LEFT JOIN code_map m ON m.concept_id = {c} {unit_join}
        """
