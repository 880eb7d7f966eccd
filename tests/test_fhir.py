"""FHIR R4 -> MEDS pull: a golden case by eye, Bundles = NDJSON = OMOP, no identifier in
any output, the PHI gate, and bad input quarantined with its location and reason."""

from __future__ import annotations

import gzip
import json
import logging
import re
from datetime import datetime, timedelta

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fhir_fixtures import (
    CVX,
    LOINC,
    RXNORM,
    SNOMED,
    claim,
    coding,
    component,
    concept,
    condition,
    document,
    encounter,
    fhir_time,
    identifier_strings,
    immunization,
    medication,
    medication_request,
    observation,
    patient,
    population,
    procedure,
    write_bundles,
    write_ndjson,
)
from helpers import fake_ssn

from forewarn.records import deid, fhir, schema
from forewarn.records.fhir import pull_fhir
from forewarn.records.pull import PullFailed, open_context

KEY = deid.DeidConfig(b"fhir-golden-secret-0123456789", max_shift_days=365)
NOW = datetime(2025, 1, 1)
LAB = "http://acme.example/CodeSystem/lab-codes"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def golden():
    """Two patients, by eye: every resource type, time zones, components, a death."""
    ada = patient(
        "p-ada",
        given="Ada662",
        family="Lovelace123",
        gender="female",
        birth="1950-03-15",
        ssn=fake_ssn("999", "10", "0001"),
        mrn="MRN0000001",
        phone="617-555-0101",
    )
    alan = patient(
        "p-alan",
        given="Alan401",
        family="Turing808",
        gender="male",
        birth="1920-06-01",
        deceased="2016-12-31T12:00:00Z",
        ssn=fake_ssn("999", "10", "0002"),
        mrn="MRN0000002",
        phone="617-555-0102",
    )
    a, b = "p-ada", "p-alan"
    bp = [
        component(concept(coding(LOINC, "8480-6", "Systolic blood pressure")), 120, "mm[Hg]"),
        component(concept(coding(LOINC, "8462-4", "Diastolic blood pressure")), 80, "mm[Hg]"),
    ]
    amlodipine = concept(coding(RXNORM, "197361", "amlodipine 5 MG Oral Tablet"))
    return [
        {
            "Patient": ada,
            "resources": [
                encounter(
                    "e1", a, "AMB", "2016-05-01T09:30:00+02:00", note="Ada662 Lovelace123 came in"
                ),
                observation(
                    "o1",
                    a,
                    concept(coding(LOINC, "4548-4", "Hemoglobin A1c")),
                    "2016-05-01T09:30:00+02:00",
                    value=6.1,
                    unit="%",
                    note="call 617-555-0101",
                ),
                observation(
                    "o2",
                    a,
                    concept(coding(LOINC, "85354-9", "Blood pressure panel")),
                    "2016-05-01T07:30:00Z",
                    components=bp,
                ),
                observation(
                    "o3",
                    a,
                    concept(coding(LAB, "GLU-F"), coding(LOINC, "1558-6", "Fasting glucose")),
                    "2016-05-01T07:30:00Z",
                    value="118",
                    unit="mg/dL",
                ),  # first known system; a number as text
                observation(
                    "o4",
                    a,
                    concept(coding(LOINC, "72166-2", "Tobacco smoking status")),
                    "2016-05-01",
                    value_concept=concept(coding(SNOMED, "266919005", "Never smoked tobacco")),
                ),
                observation(
                    "o5",
                    a,
                    concept(coding(LOINC, "48767-8", "Annotation comment")),
                    "2016-05-02T10:00:00-05:00",
                    value_string="Ada662 Lovelace123 asked for a call back at 617-555-0101",
                ),
                observation(
                    "o6",
                    a,
                    concept(coding(LAB, "K-SERUM", "Potassium")),
                    "2016-05-03T08:00:00Z",
                    value=4.1,
                    unit="mmol/L",
                ),  # an unknown system keeps its last path segment
                condition(
                    "c1",
                    a,
                    concept(
                        coding(SNOMED, "44054006", "Type 2 diabetes mellitus"), text="diabetes"
                    ),
                    "2017-01-01",
                    note="Ada662 worried",
                ),
                medication_request(
                    "m1",
                    a,
                    "2017-01-02T06:00:00-05:00",
                    code=concept(coding(RXNORM, "6809", "metformin")),
                ),
                medication_request(
                    "m2",
                    a,
                    "2017-02-01",
                    contained=concept(coding(RXNORM, "860975", "metformin ER 500 MG")),
                ),
                procedure(
                    "pr1",
                    a,
                    concept(coding(SNOMED, "73761001", "Colonoscopy")),
                    "2018-01-01T10:00:00Z",
                ),
                immunization(
                    "i1", a, concept(coding(CVX, "140", "Influenza, seasonal")), "2019-10-01"
                ),
                claim("cl1", a, "Ada662 Lovelace123"),
                document("d1", a, f"Ada662 Lovelace123, SSN {fake_ssn('999', '10', '0001')}"),
            ],
        },
        {
            "Patient": alan,
            "resources": [
                medication("med1", amlodipine),
                encounter("e2", b, "EMER", "2016-02-01T08:00:00Z"),
                encounter("e3", b, "HH", "2016-03-01T03:00:00-05:00"),
                observation(
                    "o7",
                    b,
                    concept(coding(LOINC, "8867-4", "Heart rate")),
                    "2016-02-01T08:00:00Z",
                    value=72,
                    unit="/min",
                ),
                medication_request("m3", b, "2016-02-01T09:00:00Z", medication="med1"),
                condition(
                    "c2",
                    b,
                    concept(coding(ICD10CM, "C25.9", "Malignant neoplasm of pancreas")),
                    "2016-06-01",
                ),
            ],
        },
    ]


D = datetime
GOLDEN = {
    ("p-ada", None, "Gender//F", None, None),
    ("p-ada", D(1950, 3, 15), "MEDS_BIRTH", None, None),
    ("p-ada", D(2016, 5, 1, 7, 30), "Visit//OP", None, None),  # 09:30+02:00 in UTC
    ("p-ada", D(2016, 5, 1, 7, 30), "LOINC//4548-4", 6.1, "%"),
    ("p-ada", D(2016, 5, 1, 7, 30), "LOINC//8480-6", 120.0, "mm[Hg]"),  # components, no panel event
    ("p-ada", D(2016, 5, 1, 7, 30), "LOINC//8462-4", 80.0, "mm[Hg]"),
    ("p-ada", D(2016, 5, 1, 7, 30), "LOINC//1558-6", 118.0, "mg/dL"),
    ("p-ada", D(2016, 5, 1), "LOINC//72166-2", None, None),  # a date alone is midnight
    ("p-ada", D(2016, 5, 2, 15, 0), "LOINC//48767-8", None, None),  # the free text is gone
    ("p-ada", D(2016, 5, 3, 8, 0), "LAB-CODES//K-SERUM", 4.1, "mmol/L"),
    ("p-ada", D(2017, 1, 1), "SNOMED//44054006", None, None),
    ("p-ada", D(2017, 1, 2, 11, 0), "RxNorm//6809", None, None),
    ("p-ada", D(2017, 2, 1), "RxNorm//860975", None, None),  # a contained Medication
    ("p-ada", D(2018, 1, 1, 10, 0), "SNOMED//73761001", None, None),
    ("p-ada", D(2019, 10, 1), "CVX//140", None, None),
    ("p-alan", None, "Gender//M", None, None),
    ("p-alan", D(1926, 12, 31, 12, 0), "MEDS_BIRTH", None, None),  # 96 at death: aged 90
    ("p-alan", D(2016, 2, 1, 8, 0), "Visit//ER", None, None),
    ("p-alan", D(2016, 2, 1, 8, 0), "LOINC//8867-4", 72.0, "/min"),
    ("p-alan", D(2016, 2, 1, 9, 0), "RxNorm//197361", None, None),  # a bundled Medication
    ("p-alan", D(2016, 3, 1, 8, 0), "Visit//HH", None, None),
    ("p-alan", D(2016, 6, 1), "ICD10CM//C25.9", None, None),
    ("p-alan", D(2016, 12, 31, 12, 0), "MEDS_DEATH", None, None),
}


def _pull(src, out, **kwargs):
    return pull_fhir(
        src, out, site="golden", config=KEY, now=NOW, **{"max_bad_fraction": 1.0, **kwargs}
    )


def _events(result, people) -> set[tuple]:
    """Output events with pseudonyms and date shifts undone."""
    ids, shifts = deid.pseudonymize(people, KEY)
    source = {int(s): p for p, s in zip(people, ids, strict=True)}
    offset = {int(s): int(d) for s, d in zip(ids, shifts, strict=True)}
    events = pd.read_parquet(result.events_dir)
    times = events[schema.TIME] - pd.to_timedelta(events[schema.SUBJECT_ID].map(offset), unit="D")
    return {
        (
            source[s],
            None if pd.isna(t) else t.to_pydatetime(),
            c,
            None if pd.isna(v) else round(float(v), 3),
            None if pd.isna(u) else u,
        )
        for s, t, c, v, u in zip(
            events[schema.SUBJECT_ID],
            times,
            events[schema.CODE],
            events[schema.NUMERIC_VALUE],
            events[schema.UNIT],
            strict=True,
        )
    }


def _tables(result) -> dict[str, tuple[int, int, int]]:
    report = json.loads(result.report_path.read_text())
    return {name: (t["read"], t["kept"], t["quarantined"]) for name, t in report["tables"].items()}


def _quarantine(result) -> set[tuple[str, str, str]]:
    q = pd.read_parquet(result.out_dir / schema.QUARANTINE_DIR / "records.parquet")
    return set(zip(q["src_table"], q["location"], q["reason"], strict=True))


@pytest.fixture
def pulled(tmp_path):
    return _pull(write_bundles(golden(), tmp_path / "bundles"), tmp_path / "out")


# --- 1. golden ---------------------------------------------------------------------------


def test_golden_events(pulled):
    got = _events(pulled, ["p-ada", "p-alan"])
    assert got == GOLDEN
    assert pulled.events == len(GOLDEN)
    table = pq.read_table(pulled.events_dir / "0.parquet")
    assert table.schema.equals(schema.DATA_SCHEMA)
    assert not {"p-ada", "p-alan"} & set(map(str, table.column(schema.SUBJECT_ID).to_pylist()))


def test_golden_report_and_descriptions(pulled):
    report = json.loads(pulled.report_path.read_text())
    assert _tables(pulled) == {
        "person": (2, 2, 0),
        "death": (1, 1, 0),
        "Encounter": (3, 3, 0),
        "Observation": (8, 8, 0),
        "Condition": (2, 2, 0),
        "MedicationRequest": (3, 3, 0),
        "Procedure": (1, 1, 0),
        "Immunization": (1, 1, 0),
    }
    assert report["source"]["layout"] == "bundles"
    assert report["fhir"]["skipped"] == {
        "Claim": 1,
        "DocumentReference": 1,
        "Organization": 1,
        "Practitioner": 1,
    }
    assert report["fhir"]["resources"]["Medication"] == 1
    codes = pd.read_parquet(pulled.codes_path)
    described = dict(zip(codes[schema.CODE], codes["description"], strict=True))
    assert described["LOINC//4548-4"] == "Hemoglobin A1c"
    assert described["RxNorm//860975"] == "metformin ER 500 MG"  # contained Medication
    assert described["RxNorm//197361"] == "amlodipine 5 MG Oral Tablet"  # bundled Medication
    assert described["Visit//OP"] == "Outpatient Visit" and described["Gender//F"] == "FEMALE"
    assert described["MEDS_BIRTH"] == "Birth" and pd.isna(described["Visit//HH"])
    assert "LAB-CODES//GLU-F" not in described  # only codes of kept events


def test_loaded_rows_keep_locations_keys_and_units(tmp_path):
    src = tmp_path / "nd"
    write_ndjson(golden(), src)
    ctx = open_context(tmp_path / "out")
    try:
        fhir.load_fhir(ctx, src)
        rows = ctx.con.execute(
            "SELECT src_table, src_row, src_key, code, numeric_value, unit FROM raw_events "
            "WHERE src_key LIKE 'Observation/o2%' OR src_key = 'Observation/o1' ORDER BY src_row"
        ).fetchall()
        persons = ctx.con.execute("SELECT * FROM raw_persons ORDER BY source_id").fetchall()
    finally:
        ctx.con.close()
    assert rows == [
        ("Observation", "Observation.ndjson:1", "Observation/o1", "LOINC//4548-4", 6.1, "%"),
        (
            "Observation",
            "Observation.ndjson:2:component 0",
            "Observation/o2#component 0",
            "LOINC//8480-6",
            120.0,
            "mm[Hg]",
        ),
        (
            "Observation",
            "Observation.ndjson:2:component 1",
            "Observation/o2#component 1",
            "LOINC//8462-4",
            80.0,
            "mm[Hg]",
        ),
    ]
    assert persons == [
        ("p-ada", D(1950, 3, 15), None, "Patient.ndjson:1"),
        ("p-alan", D(1920, 6, 1), D(2016, 12, 31, 12, 0), "Patient.ndjson:2"),
    ]
    assert {
        "Ada662 Lovelace123",
        "Lovelace123",
        fake_ssn("999", "10", "0001"),
        "MRN0000001",
        "617-555-0101",
        "1 Fake Street",
        "Springfield 01101",
        "ada662.lovelace123@example.com",
    } <= ctx.identifiers


# --- 2. Bundles, NDJSON and OMOP pull into the same events --------------------------------


@pytest.mark.parametrize("pop", ["golden", "population"])
def test_ndjson_pulls_into_the_same_bytes_as_bundles(tmp_path, pop):
    people = golden() if pop == "golden" else population(30, seed=5)
    bundles = _pull(write_bundles(people, tmp_path / "b"), tmp_path / "out-b")
    write_ndjson(people, tmp_path / "n")
    write_ndjson(people, tmp_path / "z", compress=True)
    ndjson = _pull(tmp_path / "n", tmp_path / "out-n")
    gz = _pull(tmp_path / "z", tmp_path / "out-z", batch_rows=7)  # small batches change nothing
    reference = (bundles.events_dir / "0.parquet").read_bytes()
    assert (ndjson.events_dir / "0.parquet").read_bytes() == reference
    assert (gz.events_dir / "0.parquet").read_bytes() == reference
    assert _tables(bundles) == _tables(ndjson) == _tables(gz)
    assert bundles.quarantined == 0 and bundles.events > 20


def test_the_crossformat_dataset_pulls_as_omop_does(tmp_path):
    """One dataset as OMOP CDM and as FHIR (local time zones included): identical events."""
    from crossformat import ETHNICITY, EVENTS, PEOPLE, RACE, write_omop_duckdb

    from forewarn.records.omop import pull_omop

    systems = {
        "LOINC": LOINC,
        "SNOMED": SNOMED,
        "RxNorm": RXNORM,
        "ICD10CM": ICD10CM,
        "CPT4": "http://www.ama-assn.org/go/cpt",
    }
    people = []
    for pid, sex, birth, death, mrn, name in PEOPLE:
        given, family = name.split()
        p = patient(
            str(pid),
            given=given,
            family=family,
            gender={"F": "female", "M": "male"}[sex],
            birth=birth.date().isoformat(),
            deceased=fhir_time(death, timedelta(hours=2)) if death else None,
            mrn=mrn,
        )
        # US Core race and ethnicity: the OMB category (and a detailed code, not read)
        for url, audit, detail in (("us-core-race", RACE, "2108-9"), ("us-core-ethnicity", ETHNICITY, "2148-5")):
            omb = audit.get(pid, (None, None, None, "UNK"))[3]  # UNK: unknown, as person 3's is
            p["extension"].append({"url": f"http://hl7.org/fhir/us/core/StructureDefinition/{url}", "extension": [
                {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": omb}},
                {"url": "detailed", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": detail}},
                {"url": "text", "valueString": "as the patient said"}]})
        resources = []
        for eid, owner, kind, vocab, code, t, value, unit, desc in EVENTS:
            if owner != pid:
                continue
            i, s, when = (
                str(eid),
                str(pid),
                fhir_time(t, timedelta(hours=-5)),
            )  # local time, 5 h behind UTC
            cc = concept(coding(systems[vocab], code, desc)) if vocab in systems else None
            if kind == "visit":
                resources.append(encounter(i, s, {"OP": "AMB", "ER": "EMER"}[code], when))
            elif kind == "measurement":
                resources.append(observation(i, s, cc, when, value=value, unit=unit))
            elif kind == "condition":
                resources.append(condition(i, s, cc, when))
            elif kind == "drug":
                resources.append(medication_request(i, s, when, code=cc))
            else:
                resources.append(procedure(i, s, cc, when))
        people.append({"Patient": p, "resources": resources})
    omop = pull_omop(
        write_omop_duckdb(tmp_path / "omop.duckdb"),
        tmp_path / "out-omop",
        site="x",
        config=KEY,
        now=NOW,
    )
    write_ndjson(people, tmp_path / "nd")
    for src in (write_bundles(people, tmp_path / "b"), tmp_path / "nd"):
        result = pull_fhir(src, tmp_path / f"out-{src.name}", site="x", config=KEY, now=NOW)
        assert pq.read_table(result.events_dir / "0.parquet").equals(
            pq.read_table(omop.events_dir / "0.parquet")
        ), src.name


# --- 3. no identifier reaches any output --------------------------------------------------


def _output_strings(folder) -> list[tuple[str, str]]:
    """Every string an output file holds: Parquet string columns (lists included), JSON text, other bytes."""
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for name in table.column_names:
                column = table.column(name)
                if pa.types.is_list(column.type):
                    column = pa.compute.list_flatten(column)
                if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                    out += [(f"{path.name}:{name}", v) for v in column.to_pylist() if v is not None]
        else:
            out.append((path.name, path.read_bytes().decode("utf-8", "replace")))
    return out


@pytest.mark.parametrize("layout", ["bundles", "ndjson"])
def test_no_identifier_of_a_synthea_population_reaches_any_output(tmp_path, layout):
    people = population(50, seed=7)
    src = tmp_path / "src"
    if layout == "bundles":
        write_bundles(people, src)
        # One Bundle is cut short: its patient's identifiers are never read, and its file
        # name (given_family_id.json) must not become a location.
        files = sorted(p.name for p in src.iterdir())
        victim = next(
            f for f in files if f.startswith(people[3]["Patient"]["name"][0]["given"][0] + "_")
        )
        (src / victim).write_bytes((src / victim).read_bytes()[:5000])
    else:
        write_ndjson(people, src, compress=True)
    result = _pull(src, tmp_path / "out", max_bad_fraction=0.05)
    needles = {s.lower() for person in people for s in identifier_strings(person)}
    assert len(needles) > 50 * 10
    leaks = [
        (where, n)
        for where, text in _output_strings(result.out_dir)
        for n in needles
        if n in text.lower()
    ]
    assert leaks == []
    assert result.subjects == (49 if layout == "bundles" else 50) and result.events > 1000
    if layout == "bundles":
        assert _tables(result)["person"] == (50, 49, 1)
        [(table, location, reason)] = _quarantine(result)
        assert (table, location) == ("person", f"bundle #{files.index(victim) + 1}")
        assert reason.startswith("Bundle: not valid JSON (") and reason.endswith(
            "); fix or re-export the file"
        )


# --- 4. the PHI gate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leak", "where", "kind"),
    [
        ({"code": fake_ssn("999", "12", "3456")}, "events/0.parquet:code", "matches the SSN pattern"),
        ({"code": "617-555-0142"}, "events/0.parquet:code", "matches the phone number pattern"),
        (
            {"code": "ada662@example.com"},
            "events/0.parquet:code",
            "matches the email address pattern",
        ),
        (
            {"code": "MRN0000001"},
            "events/0.parquet:code",
            "equals an identifier seen in the source",
        ),
        (
            {"code": "Ada662 Lovelace123"},
            "events/0.parquet:code",
            "equals an identifier seen in the source",
        ),
        (
            {"display": "Ada662 Lovelace123"},
            "metadata/codes.parquet:description",
            "equals an identifier seen in the source",
        ),
        (
            {"unit": "Lovelace123"},
            "events/0.parquet:unit",
            "equals an identifier seen in the source",
        ),
    ],
    ids=["ssn", "phone", "email", "mrn", "name", "display", "unit"],
)
def test_phi_gate_catches_each_planted_leak_and_publishes_nothing(tmp_path, leak, where, kind):
    people = golden()
    o1 = people[0]["resources"][1]
    if "unit" in leak:
        o1["valueQuantity"] = {"value": 6.1, "unit": leak["unit"]}
    else:
        o1["code"]["coding"][0].update(leak)
    write_ndjson(people, tmp_path / "src")
    with pytest.raises(deid.PHILeakError, match=rf"{where}: a value {kind}"):
        _pull(tmp_path / "src", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no out dir, no *.partial-* left


# --- 5. bad input ---------------------------------------------------------------------------


def _lines(*resources) -> bytes:
    return b"".join(r if isinstance(r, bytes) else orjson.dumps(r) + b"\n" for r in resources)


def bad_export(folder):
    """A Bulk Data export with one of each kind of bad record (see the expectations below)."""
    folder.mkdir()
    p1 = patient(
        "p1",
        given="Ada662",
        family="Lovelace123",
        gender="female",
        birth="1970-01-01",
        deceased="2020-06-01T00:00:00Z",
    )
    p2 = patient("p2", given="Alan401", family="Turing808", gender="male", birth="1980-01-01")
    no_id = {
        k: v
        for k, v in patient(
            "p3", given="Grace1", family="Hopper1", gender="female", birth="1990-01-01"
        ).items()
        if k != "id"
    }
    (folder / "Patient.ndjson").write_bytes(_lines(p1, p2, no_id, p2, b"\n"))
    no_subject = {
        k: v for k, v in encounter("e3", "p1", "AMB", "2019-01-01").items() if k != "subject"
    }
    (folder / "Encounter.ndjson").write_bytes(
        _lines(
            encounter("e1", "p1", "AMB", "2019-01-01T10:00:00Z"),
            encounter("e2", "nobody", "AMB", "2019-01-01"),  # an unknown patient
            no_subject,
            encounter("e1", "p1", "AMB", "2019-01-01T10:00:00Z"),  # a repeated id
            encounter("e5", "p1", "AMB", "1960-01-01"),  # before birth
            encounter("e6", "p1", "AMB", "2021-01-01"),  # after death
            encounter("e7", "p2", "AMB", "2030-01-01"),  # in the future
            encounter("e8", "p2", "AMB", "2019-13-45"),  # not a date
            b'{"resourceType": "Encounter", "id": "e9" "subject": {"reference": "Patient/p2"}}\n',
            encounter("e10", "p2", "IMP", "2019-02-01T00:00:00+01:00"),
        )
    )
    lab = concept(coding(LOINC, "2339-0", "Glucose"))
    bp = [
        component(concept(coding(LOINC, "8480-6")), 120, "mm[Hg]"),
        component(concept(coding(LOINC, "8462-4")), 80, "mm[Hg]"),
    ]
    bp[1]["valueQuantity"]["value"] = "n/a"
    (folder / "Observation.ndjson").write_bytes(
        _lines(
            observation("o1", "p2", lab, "2019-01-01", value=5.5, unit="mmol/L"),
            observation("o2", "p2", lab, "2019-01-01", value="abc", unit="mmol/L"),  # not a number
            observation(
                "o3", "p2", {"text": "blood sugar, Ada662's sister"}, "2019-01-01", value=5.0
            ),  # text only
            observation("o4", "p2", concept(coding(LOINC, "85354-9")), "2019-01-01", components=bp),
            {**observation("o5", "p2", lab, "2019-01-01", value=5.0), "status": "entered-in-error"},
        )
    )
    (folder / "MedicationRequest.ndjson").write_bytes(
        _lines(
            medication_request("m1", "p2", "2019-01-01", medication="not-exported"),
            medication_request("m2", "p2", "2019-01-01", code=concept(coding(RXNORM, "6809"))),
        )
    )
    conditions = [
        condition(f"c{i}", "p2", concept(coding(SNOMED, "44054006")), "2019-01-01")
        for i in range(3)
    ]
    (folder / "Condition.ndjson.gz").write_bytes(
        gzip.compress(_lines(*conditions))[:-8]
    )  # the gzip trailer is cut off
    (folder / "Immunization.ndjson").write_bytes(
        _lines(
            {
                **immunization("i1", "p2", concept(coding(CVX, "140")), "2019-01-01"),
                "status": "not-done",
            },
        )
    )
    (folder / "Claim.ndjson").write_bytes(
        _lines(*(claim(f"cl{i}", "p2", "Alan401 Turing808") for i in range(5)))
    )
    return folder


BAD_QUARANTINE = {
    ("person", "Patient.ndjson:3", "Patient.id: missing; every Patient needs an id"),
    ("person", "Patient.ndjson:4", "person id: repeats an earlier person; remove the repeat"),
    (
        "Encounter",
        "Encounter.ndjson:2",
        "person: no such person in the person/patient table; add the person or drop the row",
    ),
    (
        "Encounter",
        "Encounter.ndjson:3",
        "Encounter.subject: missing; every Encounter needs a reference to its Patient",
    ),
    (
        "Encounter",
        "Encounter.ndjson:4",
        "Encounter id: repeats an earlier row's id; remove the repeat",
    ),
    (
        "Encounter",
        "Encounter.ndjson:5",
        "date: before the person's birth; correct the date or the birth date",
    ),
    (
        "Encounter",
        "Encounter.ndjson:6",
        "date: after the person's death; correct the date or the death date",
    ),
    ("Encounter", "Encounter.ndjson:7", "date: in the future (after the pull); correct the date"),
    ("Encounter", "Encounter.ndjson:8", f"Encounter.period.start: {fhir.TIME_FORMAT}"),
    (
        "Encounter",
        "Encounter.ndjson:9",
        "NDJSON line: not valid JSON (Expecting ',' delimiter at column 42); fix or remove the line",
    ),
    (
        "Observation",
        "Observation.ndjson:2",
        "Observation.valueQuantity.value: expected a number; fix the value or leave it empty",
    ),
    (
        "Observation",
        "Observation.ndjson:3",
        "Observation.code: no coding (text only); map it to a code system",
    ),
    (
        "Observation",
        "Observation.ndjson:4:component 1",
        "Observation.component.valueQuantity.value: expected a number; fix the value or leave it empty",
    ),
    (
        "Observation",
        "Observation.ndjson:5",
        "Observation.status: entered-in-error; the source withdrew this record",
    ),
    (
        "MedicationRequest",
        "MedicationRequest.ndjson:1",
        "MedicationRequest.medicationReference: refers to a Medication that is not in the source; "
        "add the Medication or use medicationCodeableConcept",
    ),
    (
        "Condition",
        "Condition.ndjson.gz:4",
        "NDJSON file: ends early (truncated or corrupt gzip stream); the lines from here on are missing; re-export the file",
    ),
}


def test_bad_records_are_quarantined_with_location_and_reason(tmp_path):
    result = _pull(bad_export(tmp_path / "src"), tmp_path / "out")
    assert _quarantine(result) == BAD_QUARANTINE
    assert _tables(result) == {  # read = kept + quarantined, per table
        "person": (4, 2, 2),
        "death": (1, 1, 0),
        "Encounter": (10, 2, 8),
        "Observation": (6, 2, 4),
        "MedicationRequest": (2, 1, 1),
        "Condition": (4, 3, 1),
    }
    report = json.loads(result.report_path.read_text())
    assert report["fhir"]["skipped"] == {"Claim": 5, "Immunization (status not-done)": 1}
    assert not any("Ada662" in r or "sister" in r for _, _, r in BAD_QUARANTINE)


def test_too_many_bad_records_fail_the_pull_with_the_reasons(tmp_path):
    src = bad_export(tmp_path / "src")
    with pytest.raises(PullFailed) as failed:
        _pull(src, tmp_path / "out", max_bad_fraction=0.05)
    message = str(failed.value)
    assert "Encounter: 8 of 10 (" in message and "Observation: 4 of 6 (" in message
    assert (
        "NDJSON line: not valid JSON (Expecting ',' delimiter at column 42); fix or remove the line 1"
        in message
    )
    assert "raise max_bad_fraction" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_wrong_shapes_are_quarantined_with_the_field(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    lab = concept(coding(LOINC, "2339-0"))
    (src / "Patient.ndjson").write_bytes(
        _lines(
            patient("p1", given="Ada662", family="Lovelace123", gender="robot", birth="1970-13-01"),
            patient(
                "p2", given="Alan401", family="Turing808", gender="male", birth="1970"
            ),  # a year: July 1st
        )
    )
    (src / "Observation.ndjson").write_bytes(
        _lines(
            {**observation("o1", "p2", lab, "2019-01-01"), "component": {"code": 1}},
            observation("o2", "p2", {"coding": {"code": "x"}}, "2019-01-01"),
            {**observation("o3", "p2", lab, "2019-01-01"), "subject": "Patient/p2"},
            b'{"resourceType": "Observation", "id": "o4", "subject": {"reference": "Patient/p2"}, '
            b'"code": {"coding": [{"system": "http://loinc.org", "code": "1"}]}, "valueQuantity": {"value": NaN}}\n',
            b"[1, 2]\n",
            b'{"id": "o6"}\n',
            # a value and components: the Observation's own event, then each component's
            observation(
                "o7",
                "p2",
                lab,
                "2019-01-01",
                value=5.0,
                unit="mg/dL",
                components=[component(concept(coding(LOINC, "8480-6")), 120, "mm[Hg]")],
            ),
        )
    )
    (src / "Encounter.ndjson").write_bytes(  # FHIR R5: class is a list of CodeableConcepts
        _lines(
            {**encounter("e1", "p2", "AMB", "2019-01-01"), "class": [{"coding": [{"code": "IMP"}]}]}
        )
    )
    result = _pull(src, tmp_path / "out")
    assert _quarantine(result) == {
        ("person", "Patient.ndjson:1", f"Patient.birthDate: {fhir.TIME_FORMAT}"),
        (
            "person",
            "Patient.ndjson:1",
            "Patient.gender: expected male, female, other or unknown; fix the value",
        ),
        (
            "Observation",
            "Observation.ndjson:1",
            "Observation: unexpected structure (TypeError); check the resource against FHIR R4",
        ),
        (
            "Observation",
            "Observation.ndjson:2",
            "Observation.code.coding: expected a list of codings; fix the resource",
        ),
        (
            "Observation",
            "Observation.ndjson:3",
            "Observation.subject: expected a Reference (an object with a reference); fix the resource",
        ),
        (
            "Observation",
            "Observation.ndjson:4",
            "Observation.valueQuantity.value: expected a number; fix the value or leave it empty",
        ),
        (
            "Observation",
            "Observation.ndjson:5",
            "NDJSON line: expected a FHIR resource (a JSON object); fix or remove it",
        ),
        (
            "Observation",
            "Observation.ndjson:6",
            "NDJSON line: not a FHIR resource (no resourceType); fix or remove it",
        ),
    }
    assert {(p, t, c, v) for p, t, c, v, _ in _events(result, ["p1", "p2"])} == {
        ("p2", None, "Gender//M", None),
        ("p2", D(1970, 7, 1), "MEDS_BIRTH", None),
        ("p2", D(2019, 1, 1), "Visit//IP", None),
        ("p2", D(2019, 1, 1), "LOINC//2339-0", 5.0),
        ("p2", D(2019, 1, 1), "LOINC//8480-6", 120.0),
    }
    assert _tables(result)["person"] == (2, 1, 1)


def test_skipped_resource_types_never_fail_a_pull(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "Patient.ndjson").write_bytes(
        _lines(
            patient("p1", given="Ada662", family="Lovelace123", gender="female", birth="1970-01-01")
        )
    )
    (src / "Encounter.ndjson").write_bytes(_lines(encounter("e1", "p1", "AMB", "2019-01-01")))
    (src / "Claim.ndjson").write_bytes(_lines(*(claim(f"c{i}", "p1", "x") for i in range(100))))
    result = pull_fhir(src, tmp_path / "out", site="s", config=KEY, now=NOW)  # default threshold
    assert result.quarantined == 0 and result.events == 3
    assert json.loads(result.report_path.read_text())["fhir"]["skipped"] == {"Claim": 100}


def test_a_gzip_stream_cut_in_the_middle_keeps_what_was_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "Patient.ndjson").write_bytes(
        _lines(
            patient("p1", given="Ada662", family="Lovelace123", gender="female", birth="1970-01-01")
        )
    )
    lines = _lines(
        *(
            observation(f"o{i}", "p1", concept(coding(LOINC, "2339-0")), "2019-01-01", value=i)
            for i in range(2000)
        )
    )
    packed = gzip.compress(lines)
    (src / "Observation.ndjson.gz").write_bytes(packed[: len(packed) // 2])
    result = _pull(src, tmp_path / "out")
    read, kept, quarantined = _tables(result)["Observation"]
    assert 0 < kept < 2000 and quarantined == 1 and read == kept + 1
    [(_, location, reason)] = _quarantine(result)
    assert location == f"Observation.ndjson.gz:{kept + 1}" and reason.startswith(
        "NDJSON file: ends early"
    )


def test_bundle_problems_name_the_entry_and_withhold_names_with_identifiers(tmp_path):
    src = tmp_path / "src"
    people = golden()
    del people[0]["resources"][0]["subject"]  # Ada's e1, entry 1 of her Bundle
    del people[1]["resources"][1]["subject"]  # Alan's e2, entry 2 of his
    write_bundles(people, src)
    next(src.glob("Alan401_*.json")).rename(
        src / "patient-0002.json"
    )  # a name that holds nothing identifying
    (src / "truncated.json").write_bytes(b'{"resourceType": "Bundle", "entry": [{"resource": ')
    result = _pull(src, tmp_path / "out")
    files = sorted(p.name for p in src.iterdir())
    ada = files.index(next(f for f in files if f.startswith("Ada662_"))) + 1
    missing = "Encounter.subject: missing; every Encounter needs a reference to its Patient"
    assert _quarantine(result) == {
        (
            "Encounter",
            f"bundle #{ada}:entry 1",
            missing,
        ),  # Ada662_Lovelace123_p-ada.json is not shown
        ("Encounter", "patient-0002.json:entry 2", missing),
        (
            "person",
            f"bundle #{files.index('truncated.json') + 1}",  # its identifiers are unknown: not shown
            "Bundle: not valid JSON (Expecting value at line 1 column 51); fix or re-export the file",
        ),
    }
    assert _tables(result)["person"] == (3, 2, 1)


# --- 6. layouts and errors ------------------------------------------------------------------


def test_single_files_are_accepted(tmp_path):
    people = golden()
    write_ndjson(people, tmp_path / "nd")
    reference = _pull(tmp_path / "nd", tmp_path / "ref")
    single = tmp_path / "all.ndjson"
    single.write_bytes(
        b"".join(
            (tmp_path / "nd" / f).read_bytes()
            for f in sorted(p.name for p in (tmp_path / "nd").iterdir())
        )
    )
    as_json = tmp_path / "all-as.json"  # NDJSON content under a .json name
    as_json.write_bytes(single.read_bytes())
    for src in (single, as_json):
        result = _pull(src, tmp_path / f"out-{src.stem}")
        assert (result.events_dir / "0.parquet").read_bytes() == (
            reference.events_dir / "0.parquet"
        ).read_bytes()
        assert json.loads(result.report_path.read_text())["source"]["layout"] == "ndjson"
    write_bundles(people[:1], tmp_path / "b")
    one = next((tmp_path / "b").glob("Ada662_*.json"))
    result = _pull(one, tmp_path / "out-one")
    assert result.subjects == 1 and json.loads(result.report_path.read_text())["source"][
        "location"
    ].endswith("bundle #1")


def test_a_location_that_is_neither_layout_is_named(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("nothing here")

    def named(path):
        return re.escape(f"FHIR source {str(tmp_path / path)!r}")

    with pytest.raises(
        ValueError, match=named("notes") + " must hold FHIR Bundle .json or Bulk Data"
    ):
        _pull(tmp_path / "notes", tmp_path / "out")
    (tmp_path / "people.csv").write_text("id\n1\n")
    with pytest.raises(ValueError, match=named("people.csv") + r" must be a .json .*got '.csv'"):
        _pull(tmp_path / "people.csv", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=named("missing") + " does not exist"):
        _pull(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.json").write_text("{}")
    (tmp_path / "mixed" / "Patient.ndjson").write_text("")
    with pytest.raises(
        ValueError, match=r"holds both Bundle .json files \(1\) and NDJSON files \(1\)"
    ):
        _pull(tmp_path / "mixed", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mixed",
        "notes",
        "people.csv",
    ]  # no out dir


def test_parse_time_and_vocabulary():
    assert fhir.parse_time("2016-05-01T09:30:00+02:00") == D(2016, 5, 1, 7, 30)
    assert fhir.parse_time("2016-05-01T23:30:00.123-05:00") == D(2016, 5, 2, 4, 30, 0, 123000)
    assert fhir.parse_time("2016-05-01") == D(2016, 5, 1)
    assert fhir.parse_time("2016-05") == D(2016, 5, 1) and fhir.parse_time("2016") == D(2016, 7, 1)
    for bad in ("2016-13-01", "20160501", "2016-05-01 09:30:00", "yesterday", 20160501):
        with pytest.raises((ValueError, TypeError)):
            fhir.parse_time(bad)
    assert fhir.vocabulary_of("http://www.nlm.nih.gov/research/umls/rxnorm") == ("RxNorm", True)
    assert fhir.vocabulary_of("http://acme.example/fhir/CodeSystem/lab-codes/") == (
        "LAB-CODES",
        False,
    )
    assert fhir.vocabulary_of("urn:oid:1.2.3.4") == ("1.2.3.4", False)
    assert fhir.vocabulary_of(None) == ("LOCAL", False)


def test_long_files_log_progress(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(fhir, "LOG_EVERY_LINES", 2)
    write_ndjson(golden(), tmp_path / "nd")
    with caplog.at_level(logging.INFO, logger="forewarn"):
        _pull(tmp_path / "nd", tmp_path / "out")
    assert any(m.startswith("fhir Observation.ndjson: 4 lines, ") for m in caplog.messages)
    assert any(m.startswith("pull golden (fhir, ndjson) done in") for m in caplog.messages)


def test_us_core_race_and_ethnicity_become_the_omop_vocabularies_codes():
    """Each ombCategory coding of US Core's race and ethnicity extensions is a static code:
    an OMB category as the OMOP Race or Ethnicity vocabulary's code, another code under
    the vocabulary's name; unknown or declined, the detailed codes, other extensions and
    repeats give nothing more."""
    from forewarn.records.fhir import _omb_codes

    def ext(url, *codes, detailed=()):
        return {"url": f"http://hl7.org/fhir/us/core/StructureDefinition/{url}", "extension": [
            *({"url": "ombCategory", "valueCoding": {"code": c}} for c in codes),
            *({"url": "detailed", "valueCoding": {"code": c}} for c in detailed)]}

    patient = {"extension": [
        ext("us-core-race", "2106-3", "2028-9", "2106-3", "9999-9", detailed=("2108-9",)),
        ext("us-core-ethnicity", "ASKU"),
        {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": "Springfield"}},
    ]}
    assert _omb_codes(patient) == ["Race//5", "Race//2", "Race//9999-9"]
    assert _omb_codes({"extension": [ext("us-core-ethnicity", "2135-2"), ext("us-core-race", "UNK")]}) == [
        "Ethnicity//Hispanic"]
    assert _omb_codes({}) == [] and _omb_codes({"extension": [{"url": "x"}, "not an object"]}) == []
