"""The synthetic two-site OMOP network: determinism, schema, integrity and clinical signal."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from forewarn.records import demo

SPEC_COLUMNS: dict[str, dict[str, str]] = {
    "person": {
        "person_id": "BIGINT",
        "gender_concept_id": "INTEGER",
        "year_of_birth": "INTEGER",
        "month_of_birth": "INTEGER",
        "day_of_birth": "INTEGER",
        "birth_datetime": "TIMESTAMP",
        "race_concept_id": "INTEGER",
        "ethnicity_concept_id": "INTEGER",
        "person_source_value": "VARCHAR",
        "gender_source_value": "VARCHAR",
        "patient_name": "VARCHAR",
    },
    "observation_period": {
        "observation_period_id": "BIGINT",
        "person_id": "BIGINT",
        "observation_period_start_date": "DATE",
        "observation_period_end_date": "DATE",
        "period_type_concept_id": "INTEGER",
    },
    "visit_occurrence": {
        "visit_occurrence_id": "BIGINT",
        "person_id": "BIGINT",
        "visit_concept_id": "INTEGER",
        "visit_start_date": "DATE",
        "visit_start_datetime": "TIMESTAMP",
        "visit_end_date": "DATE",
        "visit_end_datetime": "TIMESTAMP",
        "visit_type_concept_id": "INTEGER",
        "visit_source_value": "VARCHAR",
    },
    "condition_occurrence": {
        "condition_occurrence_id": "BIGINT",
        "person_id": "BIGINT",
        "condition_concept_id": "INTEGER",
        "condition_start_date": "DATE",
        "condition_start_datetime": "TIMESTAMP",
        "condition_type_concept_id": "INTEGER",
        "visit_occurrence_id": "BIGINT",
        "condition_source_value": "VARCHAR",
        "condition_source_concept_id": "INTEGER",
    },
    "drug_exposure": {
        "drug_exposure_id": "BIGINT",
        "person_id": "BIGINT",
        "drug_concept_id": "INTEGER",
        "drug_exposure_start_date": "DATE",
        "drug_exposure_start_datetime": "TIMESTAMP",
        "drug_exposure_end_date": "DATE",
        "drug_type_concept_id": "INTEGER",
        "quantity": "DOUBLE",
        "days_supply": "INTEGER",
        "visit_occurrence_id": "BIGINT",
        "drug_source_value": "VARCHAR",
    },
    "measurement": {
        "measurement_id": "BIGINT",
        "person_id": "BIGINT",
        "measurement_concept_id": "INTEGER",
        "measurement_date": "DATE",
        "measurement_datetime": "TIMESTAMP",
        "measurement_type_concept_id": "INTEGER",
        "value_as_number": "DOUBLE",
        "unit_concept_id": "INTEGER",
        "unit_source_value": "VARCHAR",
        "visit_occurrence_id": "BIGINT",
        "measurement_source_value": "VARCHAR",
    },
    "procedure_occurrence": {
        "procedure_occurrence_id": "BIGINT",
        "person_id": "BIGINT",
        "procedure_concept_id": "INTEGER",
        "procedure_date": "DATE",
        "procedure_datetime": "TIMESTAMP",
        "procedure_type_concept_id": "INTEGER",
        "visit_occurrence_id": "BIGINT",
        "procedure_source_value": "VARCHAR",
    },
    "death": {
        "person_id": "BIGINT",
        "death_date": "DATE",
        "death_datetime": "TIMESTAMP",
        "death_type_concept_id": "INTEGER",
        "cause_concept_id": "INTEGER",
    },
    "concept": {
        "concept_id": "INTEGER",
        "concept_name": "VARCHAR",
        "domain_id": "VARCHAR",
        "vocabulary_id": "VARCHAR",
        "concept_class_id": "VARCHAR",
        "standard_concept": "VARCHAR",
        "concept_code": "VARCHAR",
        "valid_start_date": "DATE",
        "valid_end_date": "DATE",
        "invalid_reason": "VARCHAR",
    },
    "concept_relationship": {
        "concept_id_1": "INTEGER",
        "concept_id_2": "INTEGER",
        "relationship_id": "VARCHAR",
        "valid_start_date": "DATE",
        "valid_end_date": "DATE",
        "invalid_reason": "VARCHAR",
    },
}

# Clinical tables and the date/datetime columns that must lie in the observed life.
EVENT_TIMES: dict[str, list[str]] = {
    "visit_occurrence": [
        "visit_start_date",
        "visit_start_datetime",
        "visit_end_date",
        "visit_end_datetime",
    ],
    "condition_occurrence": ["condition_start_date", "condition_start_datetime"],
    "drug_exposure": [
        "drug_exposure_start_date",
        "drug_exposure_start_datetime",
        "drug_exposure_end_date",
    ],
    "measurement": ["measurement_date", "measurement_datetime"],
    "procedure_occurrence": ["procedure_date", "procedure_datetime"],
}
EVENT_DATETIME = {
    "condition_occurrence": "condition_start_datetime",
    "drug_exposure": "drug_exposure_start_datetime",
    "measurement": "measurement_datetime",
    "procedure_occurrence": "procedure_datetime",
}


def _dump(path: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM {t}").fetchall() for t in SPEC_COLUMNS}
    finally:
        con.close()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return demo.generate_network(tmp_path_factory.mktemp("small"), people=300, seed=7)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Big enough for prevalences, including about 0.3% pancreatic cancer."""
    return demo.generate_network(tmp_path_factory.mktemp("large"), people=20_000, seed=3)


@pytest.fixture(params=["academic", "community"])
def small_db(request: pytest.FixtureRequest, small: dict[str, Path]):
    con = duckdb.connect(str(small[request.param]), read_only=True)
    yield con
    con.close()


def test_network_layout_and_split(small: dict[str, Path]) -> None:
    assert set(small) == {"academic", "community"}
    for site, path in small.items():
        assert path == path.parent.parent / site / "omop.duckdb"
        assert path.is_file()
        assert not path.with_name(path.name + ".tmp").exists()
    people = {}
    for site, path in small.items():
        con = duckdb.connect(str(path), read_only=True)
        people[site] = con.execute("SELECT count(*) FROM person").fetchone()[0]
        con.close()
    assert people == {"academic": 120, "community": 180}


def test_same_seed_identical_different_seed_differs(small: dict[str, Path], tmp_path: Path) -> None:
    again = demo.generate_network(tmp_path / "again", people=300, seed=7)
    other = demo.generate_network(tmp_path / "other", people=300, seed=8)
    for site in small:
        first, second, third = _dump(small[site]), _dump(again[site]), _dump(other[site])
        for table in SPEC_COLUMNS:
            assert first[table] == second[table], (
                f"{site}.{table} differs between runs with one seed"
            )
        assert first["concept"] == third["concept"]
        for table in ("person", "visit_occurrence", "measurement", "condition_occurrence"):
            assert first[table] != third[table], f"{site}.{table} is the same under another seed"


def test_sites_get_different_seeds() -> None:
    assert demo.site_seed(7, "academic") != demo.site_seed(7, "community")
    assert demo.site_seed(7, "academic") != demo.site_seed(8, "academic")


def test_generate_site_counts_match_tables(tmp_path: Path) -> None:
    path = tmp_path / "one" / "omop.duckdb"
    counts = demo.generate_site(path, demo.SITES["community"], 150, seed=1)
    assert set(counts) == set(SPEC_COLUMNS)
    con = duckdb.connect(str(path), read_only=True)
    for table, n in counts.items():
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == n
    con.close()
    assert counts["person"] == counts["observation_period"] == 150
    # Every ICD10CM condition concept "Maps to" its standard SNOMED concept.
    con = duckdb.connect(str(path), read_only=True)
    maps = con.execute(
        "SELECT a.vocabulary_id, a.concept_code, b.vocabulary_id, b.concept_code, b.standard_concept FROM concept_relationship r "
        "JOIN concept a ON a.concept_id = r.concept_id_1 JOIN concept b ON b.concept_id = r.concept_id_2 WHERE r.relationship_id = 'Maps to'"
    ).fetchall()
    con.close()
    assert len(maps) == counts["concept_relationship"] == len(demo.COND_ICD10_ID)
    assert ("ICD10CM", "R10.9", "SNOMED", "21522001", "S") in maps and {m[:3:2] for m in maps} == {("ICD10CM", "SNOMED")}
    # Writing again replaces the file.
    assert demo.generate_site(path, demo.SITES["community"], 150, seed=1) == counts


def test_tables_and_column_types(small_db: duckdb.DuckDBPyConnection) -> None:
    for table, columns in SPEC_COLUMNS.items():
        found = dict(
            small_db.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?",
                [table],
            ).fetchall()
        )
        assert found, f"table {table} is missing"
        for column, dtype in columns.items():
            assert found.get(column) == dtype, f"{table}.{column}: {found.get(column)} != {dtype}"


def test_every_concept_id_is_in_the_concept_table(small_db: duckdb.DuckDBPyConnection) -> None:
    columns = small_db.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE column_name LIKE '%concept_id' AND table_name <> 'concept'"
    ).fetchall()
    assert len(columns) >= 20
    for table, column in columns:
        missing = small_db.execute(
            f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL "
            f"AND {column} NOT IN (SELECT concept_id FROM concept)"
        ).fetchall()
        assert not missing, f"{table}.{column} uses concepts not in the concept table: {missing}"
    dup = small_db.execute("SELECT count(*) - count(DISTINCT concept_id) FROM concept").fetchone()[
        0
    ]
    assert dup == 0


def test_required_vocabulary_codes() -> None:
    rows = {(r[3], r[6]): r for r in demo.concept_rows()}
    for vocab, codes in {
        "SNOMED": [
            "44054006",
            "714628002",
            "433144002",
            "431857002",
            "59621000",
            "414916001",
            "55822004",
            "363418001",
            "89362005",
            "21522001",
            "54150009",
            "396275006",
            "279039007",
            "35489007",
            "195967001",
            "235595009",
            "68566005",
            "25064002",
        ],
        "ICD10CM": [
            "E11.9",
            "R73.03",
            "N18.3",
            "N18.4",
            "I10",
            "E66.9",
            "E78.5",
            "C25.9",
            "R63.4",
            "R10.9",
            "J06.9",
            "M19.90",
            "M54.5",
            "F32.9",
            "J45.909",
            "K21.9",
            "N39.0",
            "R51.9",
        ],
        "LOINC": [
            "4548-4",
            "1558-6",
            "39156-5",
            "29463-7",
            "62238-1",
            "2160-0",
            "8480-6",
            "8462-4",
            "8867-4",
            "2093-3",
        ],
        "RxNorm": ["6809", "274783", "29046", "17767", "83367", "7646", "5640", "36437", "435"],
        "CPT4": ["99213", "80053", "83036", "74177", "45378", "90935"],
    }.items():
        for code in codes:
            assert (vocab, code) in rows, f"{vocab} {code} missing"
            standard = rows[(vocab, code)][5]
            assert standard == (None if vocab == "ICD10CM" else "S")
    for cid, vocab, code in (
        (9202, "Visit", "OP"),
        (9201, "Visit", "IP"),
        (9203, "Visit", "ER"),
        (8507, "Gender", "M"),
        (8532, "Gender", "F"),
    ):
        assert rows[(vocab, code)][0] == cid


def test_events_inside_observed_life(small_db: duckdb.DuckDBPyConnection) -> None:
    for table, columns in EVENT_TIMES.items():
        for column in columns:
            bad = small_db.execute(
                f"""
                SELECT count(*) FILTER (WHERE x.{column} IS NULL),
                       count(*) FILTER (WHERE CAST(x.{column} AS TIMESTAMP) < p.birth_datetime),
                       count(*) FILTER (WHERE CAST(x.{column} AS DATE) < o.observation_period_start_date),
                       count(*) FILTER (WHERE CAST(x.{column} AS DATE) > o.observation_period_end_date),
                       count(*) FILTER (WHERE CAST(x.{column} AS TIMESTAMP) > d.death_datetime)
                FROM {table} x
                JOIN person p USING (person_id)
                JOIN observation_period o USING (person_id)
                LEFT JOIN death d USING (person_id)
                """
            ).fetchone()
            assert bad == (0, 0, 0, 0, 0), f"{table}.{column}: null/birth/start/end/death {bad}"
    # Deaths end the observation period; periods are well ordered.
    assert (
        small_db.execute(
            "SELECT count(*) FROM death JOIN observation_period USING (person_id) "
            "WHERE death_date <> observation_period_end_date"
        ).fetchone()[0]
        == 0
    )
    assert (
        small_db.execute(
            "SELECT count(*) FROM observation_period o JOIN person p USING (person_id) "
            "WHERE observation_period_end_date < observation_period_start_date "
            "OR observation_period_start_date < CAST(birth_datetime AS DATE)"
        ).fetchone()[0]
        == 0
    )


def test_events_share_their_visit_time(small_db: duckdb.DuckDBPyConnection) -> None:
    for table, column in EVENT_DATETIME.items():
        bad = small_db.execute(
            f"SELECT count(*) FROM {table} x JOIN visit_occurrence v USING (visit_occurrence_id) "
            f"WHERE x.{column} <> v.visit_start_datetime OR x.person_id <> v.person_id"
        ).fetchone()[0]
        orphans = small_db.execute(
            f"SELECT count(*) FROM {table} WHERE visit_occurrence_id NOT IN "
            "(SELECT visit_occurrence_id FROM visit_occurrence)"
        ).fetchone()[0]
        assert (bad, orphans) == (0, 0), table
    hours = small_db.execute(
        "SELECT min(hour(visit_start_datetime)), max(hour(visit_start_datetime)) FROM visit_occurrence "
        "WHERE visit_concept_id = 9202"
    ).fetchone()
    assert hours[0] >= 8 and hours[1] <= 17
    assert (
        small_db.execute(
            "SELECT count(*) FROM visit_occurrence WHERE visit_end_datetime < visit_start_datetime"
        ).fetchone()[0]
        == 0
    )


def test_ids_unique_and_ordered(small_db: duckdb.DuckDBPyConnection) -> None:
    for table in (
        "person",
        "visit_occurrence",
        "condition_occurrence",
        "drug_exposure",
        "measurement",
        "procedure_occurrence",
        "observation_period",
    ):
        column = next(iter(SPEC_COLUMNS[table]))
        ids = [r[0] for r in small_db.execute(f"SELECT {column} FROM {table}").fetchall()]
        assert ids == sorted(set(ids)), f"{table}.{column} not unique and ascending"


def test_icd10_condition_concepts_only_at_community(small: dict[str, Path]) -> None:
    shares = {}
    for site, path in small.items():
        con = duckdb.connect(str(path), read_only=True)
        shares[site] = con.execute(
            "SELECT avg(CAST(c.vocabulary_id = 'ICD10CM' AS DOUBLE)) FROM condition_occurrence o "
            "JOIN concept c ON c.concept_id = o.condition_concept_id"
        ).fetchone()[0]
        # The source value and source concept are always the ICD10CM code.
        mismatched = con.execute(
            "SELECT count(*) FROM condition_occurrence o JOIN concept c "
            "ON c.concept_id = o.condition_source_concept_id "
            "WHERE c.vocabulary_id <> 'ICD10CM' OR c.concept_code <> o.condition_source_value"
        ).fetchone()[0]
        assert mismatched == 0
        con.close()
    assert shares["academic"] == 0
    assert 0.3 < shares["community"] < 0.5


def test_identifiers_present(small_db: duckdb.DuckDBPyConnection) -> None:
    rows = small_db.execute(
        "SELECT person_source_value, patient_name, gender_source_value FROM person"
    ).fetchall()
    mrns = [r[0] for r in rows]
    assert all(re.fullmatch(r"MRN\d{8}", m) for m in mrns)
    assert len(set(mrns)) == len(mrns)
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", r[1]) for r in rows)
    assert {r[2] for r in rows} <= {"M", "F"}
    assert (
        small_db.execute(
            "SELECT count(*) FROM person WHERE (gender_source_value = 'M') <> (gender_concept_id = 8507)"
        ).fetchone()[0]
        == 0
    )


def test_site_profiles_differ() -> None:
    academic, community = demo.SITES["academic"], demo.SITES["community"]
    assert academic.share + community.share == pytest.approx(1.0)
    assert academic.age_mean > community.age_mean
    assert academic.lab_rate > community.lab_rate
    assert academic.icd10_share == 0 and community.icd10_share == pytest.approx(0.4)
    # The pancreatic cancer rate parameter: a rare disease.
    assert 1e-4 < demo.PANCREATIC_CANCER_HAZARD_65 < 2e-3


def _first_codes(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE OR REPLACE TEMP TABLE first_dx AS SELECT person_id, condition_source_value AS code, "
        "min(condition_start_date) AS dx FROM condition_occurrence GROUP BY ALL"
    )


def test_prevalences_plausible(large: dict[str, Path]) -> None:
    people = t2d = pancreatic = 0
    per_site = {}
    for site, path in large.items():
        con = duckdb.connect(str(path), read_only=True)
        _first_codes(con)
        n = con.execute("SELECT count(*) FROM person").fetchone()[0]
        counts = dict(con.execute("SELECT code, count(*) FROM first_dx GROUP BY code").fetchall())
        deaths = con.execute("SELECT count(*) FROM death").fetchone()[0]
        con.close()
        people += n
        t2d += counts.get("E11.9", 0)
        pancreatic += counts.get("C25.9", 0)
        per_site[site] = {k: v / n for k, v in counts.items()} | {"deaths": deaths / n}
    assert 0.08 < t2d / people < 0.25
    assert 0.001 < pancreatic / people < 0.006
    for rates in per_site.values():
        assert 0.15 < rates["I10"] < 0.45
        assert 0.02 < rates["N18.3"] < 0.15
        assert 0.01 < rates["deaths"] < 0.2
    # The academic site is older and sicker.
    for key in ("E11.9", "N18.3", "I10", "deaths"):
        assert per_site["academic"][key] > per_site["community"][key], key


def test_hba1c_rises_before_diabetes_diagnosis(large: dict[str, Path]) -> None:
    for path in large.values():
        con = duckdb.connect(str(path), read_only=True)
        _first_codes(con)
        before, cases = con.execute(
            """
            SELECT avg(m.value_as_number), count(DISTINCT m.person_id) FROM measurement m
            JOIN first_dx f ON f.person_id = m.person_id AND f.code = 'E11.9'
            JOIN observation_period o ON o.person_id = m.person_id
            WHERE m.measurement_source_value = '4548-4'
              AND f.dx > o.observation_period_start_date + INTERVAL 365 DAY
              AND m.measurement_date < f.dx AND m.measurement_date >= f.dx - INTERVAL 365 DAY
            """
        ).fetchone()
        never = con.execute(
            """
            SELECT avg(value_as_number) FROM measurement WHERE measurement_source_value = '4548-4'
              AND person_id NOT IN (SELECT person_id FROM first_dx WHERE code = 'E11.9')
            """
        ).fetchone()[0]
        # eGFR is below 60 when CKD stage 3 is coded.
        egfr = con.execute(
            """
            SELECT median(m.value_as_number) FROM measurement m
            JOIN first_dx f ON f.person_id = m.person_id AND f.code = 'N18.3' AND m.measurement_date = f.dx
            WHERE m.measurement_source_value = '62238-1'
            """
        ).fetchone()[0]
        con.close()
        assert cases >= 30
        assert before > never + 0.5
        assert egfr < 60


def test_race_and_ethnicity_come_from_a_stream_of_their_own(tmp_path: Path) -> None:
    """Race and ethnicity follow the site's shares and nothing else: other shares change
    no other column of any table (so no outcome), and every concept is a Race or Ethnicity
    concept of the concept table, or 0 where unrecorded."""
    import dataclasses

    profile = demo.SITES["academic"]
    other = dataclasses.replace(profile, race_shares=(0.2, 0.2, 0.2, 0.2, 0.1), hispanic_share=0.5)
    a = demo.generate_site(tmp_path / "a.duckdb", profile, 4000, seed=3)
    b = demo.generate_site(tmp_path / "b.duckdb", other, 4000, seed=3)
    assert a == b
    con = duckdb.connect()
    con.execute(f"ATTACH '{tmp_path / 'a.duckdb'}' AS a (READ_ONLY); ATTACH '{tmp_path / 'b.duckdb'}' AS b (READ_ONLY)")
    for table in ("condition_occurrence", "measurement", "visit_occurrence", "death", "drug_exposure"):
        assert con.execute(f"SELECT count(*) FROM (SELECT * FROM a.{table} EXCEPT ALL SELECT * FROM b.{table})").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM (SELECT * EXCLUDE (race_concept_id, ethnicity_concept_id) FROM a.person "
                       "EXCEPT ALL SELECT * EXCLUDE (race_concept_id, ethnicity_concept_id) FROM b.person)").fetchone() == (0,)
    shares = dict(con.execute("SELECT race_concept_id, count(*) / 4000 FROM a.person GROUP BY 1").fetchall())
    for concept, share in zip(demo.RACES, profile.race_shares, strict=True):
        assert shares.get(concept, 0) == pytest.approx(share, abs=0.02), concept
    assert shares[0] == pytest.approx(1 - sum(profile.race_shares), abs=0.02)
    hispanic = con.execute(f"SELECT avg((ethnicity_concept_id = {demo.HISPANIC})::INT) FROM a.person").fetchone()[0]
    assert hispanic == pytest.approx(profile.hispanic_share, abs=0.02)
    assert con.execute("SELECT avg((race_concept_id <> b_race)::INT) FROM (SELECT a.person.race_concept_id, "
                       "b.person.race_concept_id AS b_race FROM a.person JOIN b.person USING (person_id))").fetchone()[0] > 0.3
    vocabularies = con.execute(
        "SELECT DISTINCT c.vocabulary_id FROM a.person p JOIN a.concept c ON c.concept_id IN (p.race_concept_id, "
        "p.ethnicity_concept_id) WHERE c.concept_id <> 0").fetchall()
    assert sorted(vocabularies) == [("Ethnicity",), ("Race",)]
