"""Synthetic, Synthea-style FHIR R4 populations, written by the tests (never committed data).

A population is a list of plain dicts, one per patient: ``{"Patient": <resource>,
"resources": [<resources of that patient>]}``. Resources refer to each other as
``<Type>/<id>``; ``write_bundles`` rewrites that to ``urn:uuid:<id>`` as Synthea does,
``write_ndjson`` keeps it, as a Bulk Data export does. Every identifier is obviously
fake: names carry Synthea's digits, SSNs start with 999, phones are 555-01xx numbers,
e-mails are at example.com.
"""

from __future__ import annotations

import base64
import gzip
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
from helpers import fake_ssn

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

GIVEN = [
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Claude",
    "Radia",
    "Kenneth",
]
FAMILY = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Shannon",
    "Perlman",
    "Thompson",
]
STREETS = ["Fake Street", "Imaginary Lane", "Example Avenue", "Nowhere Road"]
CITIES = [("Springfield", "01101"), ("Shelbyville", "01102"), ("Ogdenville", "01103")]
CONDITIONS = [
    ("44054006", "Diabetes mellitus type 2 (disorder)"),
    ("38341003", "Hypertensive disorder, systemic arterial (disorder)"),
    ("195662009", "Acute viral pharyngitis (disorder)"),
    ("10509002", "Acute bronchitis (disorder)"),
]
DRUGS = [
    ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("313782", "Acetaminophen 325 MG Oral Tablet"),
]
PROCEDURES = [
    ("73761001", "Colonoscopy (procedure)"),
    ("430193006", "Medication reconciliation (procedure)"),
]
VACCINES = [
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("113", "Td (adult) preservative free"),
]
CLASSES = ["AMB", "AMB", "AMB", "IMP", "EMER", "VR", "HH"]
OFFSETS = [timedelta(0), timedelta(hours=2), timedelta(hours=-5), timedelta(hours=5, minutes=30)]
END = datetime(2024, 6, 30)


# --- resource builders (also used by the golden test) ----------------------------------


def fhir_time(utc: datetime, offset: timedelta = timedelta(0)) -> str:
    """``utc`` written as a FHIR dateTime in a local time zone ``offset`` hours from UTC."""
    if offset == timedelta(0):
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return utc.replace(tzinfo=UTC).astimezone(timezone(offset)).isoformat()


def coding(system: str, code: str, display: str | None = None) -> dict:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(*codings: dict, text: str | None = None) -> dict:
    out: dict = {"coding": list(codings)}
    if text:
        out["text"] = text
    return out


def ref(rtype: str, rid: str) -> dict:
    return {"reference": f"{rtype}/{rid}"}


def patient(
    pid: str,
    *,
    given: str,
    family: str,
    gender: str,
    birth: str,
    deceased: str | None = None,
    ssn: str = fake_ssn("999", "00", "0000"),
    mrn: str = "MRN0000000",
    phone: str = "617-555-0100",
    email: str | None = None,
    line: str = "1 Fake Street",
    city: str = "Springfield",
    postal: str = "01101",
    licence: str = "S99900000",
    passport: str = "X00000000X",
) -> dict:
    """A Synthea-style Patient, narrative and every kind of identifier included."""
    email = email or f"{given.lower()}.{family.lower()}@example.com"
    out = {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{given} {family}, SSN {ssn}</div>',
        },
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": f"{given} {family}",
            },
        ],
        "identifier": [
            {"system": "https://github.com/synthetichealth/synthea", "value": pid},
            {
                "type": concept(
                    coding(
                        "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "MR",
                        "Medical Record Number",
                    )
                ),
                "system": "http://hospital.smarthealthit.org",
                "value": mrn,
            },
            {
                "type": concept(
                    coding(
                        "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "SS",
                        "Social Security Number",
                    )
                ),
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": ssn,
            },
            {
                "type": concept(
                    coding(
                        "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "DL",
                        "Driver's license number",
                    )
                ),
                "system": "urn:oid:2.16.840.1.113883.4.3.25",
                "value": licence,
            },
            {
                "type": concept(
                    coding(
                        "http://terminology.hl7.org/CodeSystem/v2-0203", "PPN", "Passport Number"
                    )
                ),
                "system": "http://standardhealthrecord.org/fhir/StructureDefinition/passportNumber",
                "value": passport,
            },
        ],
        "name": [{"use": "official", "family": family, "given": [given], "prefix": ["Mx."]}],
        "telecom": [
            {"system": "phone", "value": phone, "use": "home"},
            {"system": "email", "value": email},
        ],
        "gender": gender,
        "birthDate": birth,
        "address": [
            {
                "line": [line],
                "city": city,
                "state": "Massachusetts",
                "postalCode": postal,
                "country": "US",
            }
        ],
    }
    if deceased:
        out["deceasedDateTime"] = deceased
    return out


def encounter(eid: str, pid: str, cls: str, start: str, *, note: str | None = None) -> dict:
    out = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": ACT, "code": cls},
        "type": [
            concept(
                coding(SNOMED, "185349003", "Encounter for check up (procedure)"), text="Check up"
            )
        ],
        "subject": {**ref("Patient", pid), "display": "Mx. Someone"},
        "participant": [
            {"individual": {"reference": "Practitioner/pr-1", "display": "Dr. Nobody"}}
        ],
        "period": {"start": start, "end": start},
    }
    if note:
        out["reasonCode"] = [{"text": note}]
    return out


def observation(
    oid: str,
    pid: str,
    code: dict,
    when: str,
    *,
    value: float | str | None = None,
    unit: str | None = None,
    components: list[dict] | None = None,
    eid: str | None = None,
    value_string: str | None = None,
    value_concept: dict | None = None,
    note: str | None = None,
) -> dict:
    out: dict = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [
            concept(
                coding("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")
            )
        ],
        "code": code,
        "subject": ref("Patient", pid),
        "effectiveDateTime": when,
        "issued": when,
    }
    if eid:
        out["encounter"] = ref("Encounter", eid)
    if value is not None:
        out["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    if value_string is not None:
        out["valueString"] = value_string
    if value_concept is not None:
        out["valueCodeableConcept"] = value_concept
    if components:
        out["component"] = components
    if note:
        out["note"] = [{"text": note}]
    return out


def component(code: dict, value: float, unit: str) -> dict:
    return {
        "code": code,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def condition(cid: str, pid: str, code: dict, onset: str, *, note: str | None = None) -> dict:
    out = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": concept(
            coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")
        ),
        "verificationStatus": concept(
            coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed")
        ),
        "code": code,
        "subject": ref("Patient", pid),
        "onsetDateTime": onset,
        "recordedDate": onset,
    }
    if note:
        out["note"] = [{"text": note}]
    return out


def medication_request(
    mid: str,
    pid: str,
    when: str,
    *,
    code: dict | None = None,
    medication: str | None = None,
    contained: dict | None = None,
) -> dict:
    out: dict = {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": "active",
        "intent": "order",
        "subject": ref("Patient", pid),
        "authoredOn": when,
        "dosageInstruction": [
            {"text": "Take one tablet by mouth, call 617-555-0199 with questions"}
        ],
    }
    if code is not None:
        out["medicationCodeableConcept"] = code
    elif medication is not None:
        out["medicationReference"] = ref("Medication", medication)
    elif contained is not None:
        out["contained"] = [{"resourceType": "Medication", "id": "m0", "code": contained}]
        out["medicationReference"] = {"reference": "#m0"}
    return out


def medication(mid: str, code: dict) -> dict:
    return {"resourceType": "Medication", "id": mid, "status": "active", "code": code}


def procedure(pid_: str, pid: str, code: dict, start: str) -> dict:
    return {
        "resourceType": "Procedure",
        "id": pid_,
        "status": "completed",
        "code": code,
        "subject": ref("Patient", pid),
        "performedPeriod": {"start": start, "end": start},
    }


def immunization(iid: str, pid: str, code: dict, when: str) -> dict:
    return {
        "resourceType": "Immunization",
        "id": iid,
        "status": "completed",
        "vaccineCode": code,
        "patient": ref("Patient", pid),
        "occurrenceDateTime": when,
        "primarySource": True,
    }


def document(did: str, pid: str, text: str) -> dict:
    """A clinical note as an attachment (not used by the connector: skipped)."""
    return {
        "resourceType": "DocumentReference",
        "id": did,
        "status": "current",
        "subject": ref("Patient", pid),
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(text.encode()).decode(),
                }
            }
        ],
    }


def claim(cid: str, pid: str, name: str) -> dict:
    return {
        "resourceType": "Claim",
        "id": cid,
        "status": "active",
        "patient": {**ref("Patient", pid), "display": name},
        "total": {"value": 129.16, "currency": "USD"},
    }


# --- a population --------------------------------------------------------------------


def identifier_strings(person: dict) -> list[str]:
    """Every identifier of a person as written in the source: names, SSN, MRN, licence,
    passport, phones, e-mails, address lines, and the source id."""
    p = person["Patient"]
    out = [p["id"]]
    for name in p["name"]:
        out += [*name["given"], name["family"], " ".join([*name["given"], name["family"]])]
    out += [i["value"] for i in p["identifier"]]
    out += [t["value"] for t in p["telecom"]]
    for address in p["address"]:
        out += address["line"]
    return out


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _person(rng: random.Random, i: int, encounters: tuple[int, int]) -> dict:
    pid = _uuid(rng)
    given = f"{rng.choice(GIVEN)}{rng.randint(100, 999)}"
    family = f"{rng.choice(FAMILY)}{rng.randint(100, 999)}"
    born = datetime(rng.randint(1935, 1995), rng.randint(1, 12), rng.randint(1, 28))
    dies = rng.random() < 0.15
    death = (
        datetime(rng.randint(2016, 2023), rng.randint(1, 12), rng.randint(1, 28), 12, 0)
        if dies
        else None
    )
    city, postal = rng.choice(CITIES)
    name = f"{given} {family}"
    phone = f"617-555-01{i % 100:02d}"
    person = patient(
        pid,
        given=given,
        family=family,
        gender=rng.choice(["female", "male"]),
        birth=born.strftime("%Y-%m-%d"),
        deceased=fhir_time(death) if death else None,
        ssn=f"999-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
        mrn=f"MRN{rng.randint(10**6, 10**7 - 1)}",
        phone=phone,
        line=f"{rng.randint(1, 999)} {rng.choice(STREETS)}",
        city=city,
        postal=postal,
        licence=f"S999{rng.randint(10**4, 10**5 - 1)}",
        passport=f"X{rng.randint(10**7, 10**8 - 1)}X",
    )
    first = max(born + timedelta(days=365 * 18), datetime(2005, 1, 1))
    last = min(death - timedelta(days=2), END) if death else END
    resources: list[dict] = []
    span = max(0, int((last - first).total_seconds()))
    meds = []
    for _ in range(rng.randint(*encounters) if span else 0):
        t = first + timedelta(seconds=rng.randrange(span))
        t = t.replace(microsecond=0)
        local = rng.choice(OFFSETS)
        when = fhir_time(t, local)
        eid = _uuid(rng)
        resources.append(
            encounter(eid, pid, rng.choice(CLASSES), when, note=f"{name} came in with a cough")
        )
        resources.append(
            observation(
                _uuid(rng),
                pid,
                concept(
                    coding(LOINC, "85354-9", "Blood pressure panel with all children optional")
                ),
                when,
                eid=eid,
                components=[
                    component(
                        concept(coding(LOINC, "8480-6", "Systolic blood pressure")),
                        rng.randint(100, 160),
                        "mm[Hg]",
                    ),
                    component(
                        concept(coding(LOINC, "8462-4", "Diastolic blood pressure")),
                        rng.randint(60, 100),
                        "mm[Hg]",
                    ),
                ],
            )
        )
        resources.append(
            observation(
                _uuid(rng),
                pid,
                concept(coding(LOINC, "39156-5", "Body mass index (BMI) [Ratio]")),
                when,
                eid=eid,
                value=round(rng.uniform(18, 40), 1),
                unit="kg/m2",
            )
        )
        resources.append(
            observation(
                _uuid(rng),
                pid,
                concept(coding(LOINC, "2339-0", "Glucose [Mass/volume] in Blood")),
                when,
                eid=eid,
                value=round(rng.uniform(70, 200), 1),
                unit="mg/dL",
            )
        )
        resources.append(
            observation(
                _uuid(rng),
                pid,
                concept(coding(LOINC, "72166-2", "Tobacco smoking status")),
                when,
                eid=eid,
                value_concept=concept(
                    coding(SNOMED, "266919005", "Never smoked tobacco (finding)"), text="Never"
                ),
            )
        )
        resources.append(
            observation(
                _uuid(rng),
                pid,
                concept(coding(LOINC, "48767-8", "Annotation comment [Interpretation] Narrative")),
                when,
                eid=eid,
                value_string=f"{name} ({person['telecom'][1]['value']}) asked to be called at {phone}",
                note=f"Lives at {person['address'][0]['line'][0]}, SSN {person['identifier'][2]['value']}",
            )
        )
        if rng.random() < 0.4:
            resources.append(
                observation(
                    _uuid(rng),
                    pid,
                    concept(coding(LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood")),
                    when,
                    eid=eid,
                    value=round(rng.uniform(4.5, 9.5), 1),
                    unit="%",
                )
            )
        if rng.random() < 0.3:
            code, display = rng.choice(CONDITIONS)
            resources.append(
                condition(
                    _uuid(rng),
                    pid,
                    concept(coding(SNOMED, code, display), text=display),
                    when,
                    note=f"Discussed with {name}",
                )
            )
        if rng.random() < 0.3:
            code, display = rng.choice(DRUGS)
            cc = concept(coding(RXNORM, code, display), text=display)
            if rng.random() < 0.3:
                mid = _uuid(rng)
                meds.append(medication(mid, cc))
                resources.append(medication_request(_uuid(rng), pid, when, medication=mid))
            else:
                resources.append(medication_request(_uuid(rng), pid, when, code=cc))
        if rng.random() < 0.2:
            code, display = rng.choice(PROCEDURES)
            resources.append(
                procedure(_uuid(rng), pid, concept(coding(SNOMED, code, display)), when)
            )
        if rng.random() < 0.2:
            code, display = rng.choice(VACCINES)
            resources.append(
                immunization(_uuid(rng), pid, concept(coding(CVX, code, display)), when)
            )
        resources.append(claim(_uuid(rng), pid, name))
        if rng.random() < 0.2:
            resources.append(
                document(
                    _uuid(rng), pid, f"Note for {name}, MRN {person['identifier'][1]['value']}"
                )
            )
    return {"Patient": person, "resources": meds + resources}


def people(n: int, seed: int = 0, *, encounters: tuple[int, int] = (2, 5)) -> Iterator[dict]:
    """``population`` as a stream, for populations too large to hold."""
    rng = random.Random(seed)
    for i in range(n):
        yield _person(rng, i, encounters)


def population(n: int, seed: int = 0) -> list[dict]:
    """``n`` synthetic patients (2 to 5 encounters each, ~30 events) as plain dicts."""
    return list(people(n, seed))


ORGANIZATION = {
    "resourceType": "Organization",
    "id": "org-1",
    "name": "Springfield General",
    "telecom": [{"system": "phone", "value": "617-555-0150"}],
}
PRACTITIONER = {
    "resourceType": "Practitioner",
    "id": "pr-1",
    "name": [{"family": "Nobody", "given": ["Doctor"]}],
}


# --- writers -------------------------------------------------------------------------


def _to_urn(value):
    if isinstance(value, dict):
        out = {k: _to_urn(v) for k, v in value.items()}
        target = value.get("reference")
        if (
            isinstance(target, str)
            and "/" in target
            and not target.startswith(("#", "urn:", "http"))
        ):
            out["reference"] = "urn:uuid:" + target.split("/", 1)[1]
        return out
    if isinstance(value, list):
        return [_to_urn(v) for v in value]
    return value


def write_bundles(pop: list[dict], folder: Path) -> Path:
    """One transaction Bundle per patient, named as Synthea names them, plus the
    hospital and practitioner Bundles Synthea writes beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    for person in pop:
        p = person["Patient"]
        entries = [
            {
                "fullUrl": f"urn:uuid:{r['id']}",
                "resource": _to_urn(r),
                "request": {"method": "POST", "url": r["resourceType"]},
            }
            for r in [p, *person["resources"]]
        ]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        name = f"{p['name'][0]['given'][0]}_{p['name'][0]['family']}_{p['id']}.json"
        (folder / name).write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    for name, resource in (
        ("hospitalInformation1.json", ORGANIZATION),
        ("practitionerInformation1.json", PRACTITIONER),
    ):
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}],
        }
        (folder / name).write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    return folder


def write_ndjson(pop, folder: Path, *, compress: bool = False) -> dict[str, int]:
    """A Bulk Data export: one ``<Type>.ndjson`` (or ``.ndjson.gz``) per resource type.
    Returns the number of lines per file."""
    folder.mkdir(parents=True, exist_ok=True)
    handles: dict[str, object] = {}
    counts: dict[str, int] = {}
    try:
        for resource in (ORGANIZATION, PRACTITIONER):
            _write_line(handles, counts, folder, resource, compress)
        for person in pop:
            for resource in [person["Patient"], *person["resources"]]:
                _write_line(handles, counts, folder, resource, compress)
    finally:
        for handle in handles.values():
            handle.close()
    return counts


def _write_line(handles, counts, folder, resource, compress):
    name = f"{resource['resourceType']}.ndjson" + (".gz" if compress else "")
    if name not in handles:
        path = folder / name
        handles[name] = gzip.open(path, "wb", compresslevel=1) if compress else open(path, "wb")  # noqa: SIM115
    handles[name].write(orjson.dumps(resource) + b"\n")
    counts[name] = counts.get(name, 0) + 1


def write_large_ndjson(folder: Path, patients: int, seed: int = 0) -> dict[str, int]:
    """A Bulk Data export big enough to measure a pull: ~100 events per patient
    (12 to 16 encounters), streamed to disk patient by patient in bounded memory.
    ``write_large_ndjson(folder, 10_000)`` gives ~1.1 million events (~1.4 GB)."""
    return write_ndjson(people(patients, seed, encounters=(12, 16)), folder)
