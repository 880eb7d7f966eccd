"""MEDS input, and one dataset in every source format pulling into identical events."""

from __future__ import annotations

import json
from datetime import datetime

import meds
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from crossformat import copy_to_postgres, write_meds, write_omop_duckdb, write_omop_folder

from forewarn.records import deid, schema
from forewarn.records.meds_source import pull_meds
from forewarn.records.omop import pull_omop

KEY = deid.DeidConfig(b"crossformat-secret-0123456789", max_shift_days=100)
NOW = datetime(2025, 1, 1)


def _pull(kind, tmp_path):
    src = tmp_path / f"src-{kind}"
    if kind == "omop-duckdb":
        return pull_omop(write_omop_duckdb(src.with_suffix(".duckdb")), tmp_path / kind, site="x", config=KEY, now=NOW)
    if kind == "omop-folder":
        return pull_omop(write_omop_folder(src), tmp_path / kind, site="x", config=KEY, now=NOW)
    return pull_meds(write_meds(src), tmp_path / kind, site="x", config=KEY, now=NOW)


@pytest.mark.parametrize("kind", ["omop-folder", "meds"])
def test_every_format_pulls_into_identical_events(tmp_path, kind):
    reference = pq.read_table(_pull("omop-duckdb", tmp_path).events_dir / "0.parquet")
    other = pq.read_table(_pull(kind, tmp_path).events_dir / "0.parquet")
    assert reference.num_rows == 3 * 2 + 1 + 11 + 4  # gender + birth each, one death, 11 events, 2 races and ethnicities
    assert other.equals(reference), kind
    assert reference.column("unit").to_pylist().count("mg/dL") == 1


def test_output_is_valid_meds(tmp_path):
    result = _pull("omop-duckdb", tmp_path)
    meds.DataSchema.validate(pq.read_table(result.events_dir / "0.parquet"))
    meds.CodeMetadataSchema.validate(pq.read_table(result.codes_path))


def test_meds_drops_free_text_and_keeps_descriptions(tmp_path):
    result = _pull("meds", tmp_path)
    events = pq.read_table(result.events_dir)
    assert events.column("text_value").null_count == events.num_rows
    codes = dict(zip(*pq.read_table(result.codes_path, columns=["code", "description"]).to_pydict().values(), strict=True))
    assert codes["LOINC//4548-4"] == "Hemoglobin A1c"
    parents = pq.read_table(result.codes_path, columns=["code", "parent_codes"]).to_pydict()
    assert {c: p for c, p in zip(parents["code"], parents["parent_codes"], strict=True) if p} == {"LOINC//4548-4": ["LOINC//LP16413-5"]}
    report = json.loads(result.report_path.read_text())
    assert {t: (v["read"], v["kept"]) for t, v in report["tables"].items()} == {
        "data": (12, 12), "person": (3, 3), "static": (7, 7),  # 3 genders, 2 races, 2 ethnicities
    }


def test_meds_schema_errors_name_the_file(tmp_path):
    root = tmp_path / "bad"
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.table({"subject_id": [1], "time": [datetime(2020, 1, 1)], "numeric_value": [1.0]}), root / "data" / "0.parquet")
    (root / "data" / "1.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(ValueError, match=r"(?s)data/0.parquet: .*code.*data/1.parquet: cannot be read as Parquet"):
        pull_meds(root, tmp_path / "out", site="x", config=KEY)
    with pytest.raises(FileNotFoundError, match="is not a MEDS dataset: it has no data/ folder"):
        pull_meds(tmp_path, tmp_path / "out", site="x", config=KEY)


def test_second_birth_row_is_quarantined(tmp_path):
    root = write_meds(tmp_path / "m")
    extra = pa.table(
        {"subject_id": pa.array([1], pa.int64()), "time": pa.array([datetime(1951, 1, 1)], pa.timestamp("us")),
         "code": ["MEDS_BIRTH"], "numeric_value": pa.array([None], pa.float32()), "text_value": pa.array([None], pa.large_string()),
         "unit": pa.array([None], pa.string())}
    )
    pq.write_table(extra, root / "data" / "2.parquet")
    result = pull_meds(root, tmp_path / "out", site="x", config=KEY, now=NOW, max_bad_fraction=1.0)
    report = json.loads(result.report_path.read_text())
    assert report["tables"]["person"] == {
        "read": 4, "kept": 3, "quarantined": 1,
        "reasons": {"MEDS_BIRTH: a second birth event for the subject; keep one": 1},
    }
    births = pq.read_table(result.events_dir).filter(pa.compute.equal(pa.compute.field("code"), schema.BIRTH_CODE))
    assert births.num_rows == 3


@pytest.mark.parametrize("ids_per_query", [5_000, 3], ids=["one-query", "chunked"])
def test_postgresql_sends_only_the_vocabulary_the_site_uses(tmp_path, pg_schema, monkeypatch, ids_per_query):
    """A full OMOP vocabulary is millions of rows: the server sends the "Maps to" rows of
    the concepts the clinical tables use and the concepts they and their targets need,
    and the pull is the same as from the whole vocabulary."""
    import duckdb

    from forewarn.records import omop

    monkeypatch.setattr(omop, "VOCABULARY_IDS_PER_QUERY", ids_per_query)
    engine, db_schema = pg_schema
    source = write_omop_duckdb(tmp_path / "src.duckdb")
    c25 = 106  # crossformat's concept id of ICD10CM C25.9 (malignant neoplasm of pancreas), used by person 2
    con = duckdb.connect(str(source))
    used_concepts = con.execute("SELECT count(*) FROM concept").fetchall()[0][0]  # crossformat's: every one is used
    con.executemany("INSERT INTO concept VALUES (?, ?, 'x', ?, ?)", [
        (7000, "Malignant tumor of pancreas", "SNOMED", "363418001"), (7001, "Neoplasm of pancreas", "SNOMED", "126859007"),
        (7002, "Unused target", "SNOMED", "1"), (7003, "Retired target", "SNOMED", "2"), (5000, "Unused source", "ICD10CM", "Z99")])
    con.execute("CREATE TABLE concept_relationship (concept_id_1 INTEGER, concept_id_2 INTEGER, relationship_id VARCHAR, invalid_reason VARCHAR)")
    # The retired mapping is of the last used id (8532, the female gender concept): with 3 ids a
    # query its row comes after src.concept_relationship was created from rows whose
    # invalid_reason is all NULL.
    con.executemany("INSERT INTO concept_relationship VALUES (?, ?, ?, ?)", [
        (c25, 7000, "Maps to", None), (c25, 7001, "Is a", None), (5000, 7002, "Maps to", None), (8532, 7003, "Maps to", "D")])
    con.close()
    url = copy_to_postgres(source, engine, db_schema)
    result = pull_omop(url, tmp_path / "pg", site="x", config=KEY, now=NOW, db_schema=db_schema, chunk_rows=4)
    reference = pull_omop(source, tmp_path / "ref", site="x", config=KEY, now=NOW)
    assert pq.read_table(result.events_dir / "0.parquet").equals(pq.read_table(reference.events_dir / "0.parquet"))
    codes = pq.read_table(result.codes_path)
    assert codes.equals(pq.read_table(reference.codes_path))
    parents = dict(zip(codes.column("code").to_pylist(), codes.column("parent_codes").to_pylist(), strict=True))
    assert parents["ICD10CM//C25.9"] == ["SNOMED//363418001"]  # "Maps to", valid; not "Is a"
    assert parents["Gender//F"] == []  # its only mapping is retired
    report = json.loads(result.report_path.read_text())
    # The two "Maps to" rows of used concepts (the retired one is dropped after); every used concept and both targets.
    assert report["source"]["vocabulary_rows_read"] == {"concept_relationship": 2, "concept": used_concepts + 2}
    assert "vocabulary_rows_read" not in json.loads(reference.report_path.read_text())["source"]


def test_postgresql_numeric_values_are_not_typed_by_the_first_chunk(tmp_path, pg_schema):
    """The CDM's PostgreSQL DDL makes value_as_number NUMERIC (Python Decimals): streamed a
    row at a time, 6.1 first must not make the column DECIMAL(2,1) for 118.0 and 61.5."""
    import sqlalchemy as sa

    engine, db_schema = pg_schema
    source = write_omop_duckdb(tmp_path / "src.duckdb")
    url = copy_to_postgres(source, engine, db_schema)
    with engine.begin() as conn:
        conn.execute(sa.text(f'ALTER TABLE "{db_schema}".measurement ALTER COLUMN value_as_number TYPE numeric'))
    result = pull_omop(url, tmp_path / "pg", site="x", config=KEY, now=NOW, db_schema=db_schema, chunk_rows=1)
    reference = pull_omop(source, tmp_path / "ref", site="x", config=KEY, now=NOW)
    assert pq.read_table(result.events_dir / "0.parquet").equals(pq.read_table(reference.events_dir / "0.parquet"))
    values = pq.read_table(result.events_dir / "0.parquet").column("numeric_value").drop_null().to_pylist()
    assert sorted(values) == [6.099999904632568, 61.5, 118.0, 128.0]  # float32 in MEDS: 6.1 as float32


def test_vocabulary_id_lists_fit_each_database():
    from forewarn.records.omop import _id_chunks

    ids = set(range(4_500))
    assert [len(c) for c in _id_chunks(ids, "postgresql")] == [4_500]
    assert [len(c) for c in _id_chunks(ids, "mssql")] == [2_000, 2_000, 500]  # SQL Server: 2,100 parameters
    assert [len(c) for c in _id_chunks(ids, "oracle")] == [1_000] * 4 + [500]  # Oracle: 1,000 items an IN list
    assert list(_id_chunks(set())) == []


def test_omop_on_postgresql_pulls_identically(tmp_path, pg_schema):
    engine, db_schema = pg_schema
    source = write_omop_duckdb(tmp_path / "src.duckdb")
    url = copy_to_postgres(source, engine, db_schema)
    result = pull_omop(url, tmp_path / "pg", site="x", config=KEY, now=NOW, db_schema=db_schema, chunk_rows=4)
    reference = pull_omop(source, tmp_path / "ref", site="x", config=KEY, now=NOW)
    assert pq.read_table(result.events_dir / "0.parquet").equals(pq.read_table(reference.events_dir / "0.parquet"))
    report = json.loads(result.report_path.read_text())
    assert report["source"]["engine"] == "sqlalchemy" and report["tables"]["measurement"]["read"] == 4
