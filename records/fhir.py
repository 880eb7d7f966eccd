"""FHIR R4 into de-identified MEDS events, from Bundle files or Bulk Data NDJSON.

``location`` is a folder of Bundle ``.json`` files (one per patient, as Synthea writes
them), a folder of Bulk Data ``.ndjson`` / ``.ndjson.gz`` files (one resource type per
file), or one such file (a ``.json`` file whose first line is a whole non-Bundle
resource is read as NDJSON). NDJSON is streamed line by line and appended to the
working DuckDB in Arrow batches of ``batch_rows``; a Bundle is parsed one file at a
time. The connector fills the core's raw tables (see ``records.pull``); the checks,
quarantine, pseudonyms, date shifts and the PHI gate are the core's.

What is read (an allow-list; nothing else of a resource is looked at):

- ``Patient``: ``id``, ``birthDate``, ``deceasedDateTime``, ``gender``. Its row is
  counted in the report's table ``person``; gender is a static event
  (``Gender//F|M|O|U``, src_table ``person``), a death date a ``MEDS_DEATH`` event
  (src_table ``death``). Names, ``identifier``, ``telecom``, ``address`` and
  ``contact`` are read only to feed the PHI gate (``ctx.identifiers``), never stored.
- ``Encounter`` -> ``Visit//<class>`` (AMB->OP, IMP->IP, EMER->ER, other class codes
  kept as they are) at ``period.start``.
- ``Condition`` -> ``code`` at ``onsetDateTime``, else ``onsetPeriod.start``, else
  ``recordedDate``.
- ``Observation`` -> ``code`` at ``effectiveDateTime``, else ``effectivePeriod.start``,
  else ``effectiveInstant``, else ``issued``; ``valueQuantity.value`` (or
  ``valueInteger``) as the numeric value. Each ``component`` is its own event (own
  code and value, location ``...:component <j>``); an Observation with components
  gives an event of its own only when it has a ``value[x]`` itself (a blood-pressure
  panel gives systolic and diastolic only, as OMOP ETLs do). ``valueString`` and
  every other free text are dropped; the coded fact stays.
- ``MedicationRequest`` -> ``medicationCodeableConcept`` (or a ``medicationReference``
  to a contained, bundled or separately exported ``Medication``) at ``authoredOn``.
- ``Procedure`` -> ``code`` at ``performedDateTime`` / ``performedPeriod.start``;
  ``Immunization`` -> ``vaccineCode`` at ``occurrenceDateTime``.
- ``Medication`` is read only to resolve references. Every other resource type is not
  used: it is counted in the report under ``fhir.skipped`` and never quarantined, so
  it cannot push a pull over the bad-record threshold. So are resources whose
  ``status`` says the event did not happen (``not-done``, ``cancelled``) and refuted
  Conditions; ``entered-in-error`` ones are quarantined.

Conventions (shared with ``records.omop`` so that one dataset pulls into the same
events from either source):

- codes are ``SYSTEM//CODE``; known systems are shortened to OMOP vocabulary ids
  (``SYSTEMS``); an unknown system URL keeps its last path segment, upper-cased
  (``http://acme.org/CodeSystem/lab-codes`` -> ``LAB-CODES``), a coding without a
  system is ``LOCAL``. The first coding whose system is known wins, else the first
  coding with a code. Every coding's ``display`` feeds ``metadata/codes.parquet``.
  A unit is the Quantity's UCUM ``code`` (``mg/dL``, what OMOP's unit concept_code
  gives) when the Quantity is UCUM-coded, else its ``unit`` text, else its ``code``.
- times are naive UTC: an offset is applied, then dropped; a date alone is midnight;
  a partial date is completed as OMOP completes a year of birth (``YYYY`` -> July
  1st, ``YYYY-MM`` -> the 1st).
- ``src_key`` is ``<ResourceType>/<id>`` (a repeated id is a duplicate; components
  add ``#component <j>``); ``src_row`` is the location: ``<file>:<line>`` (1-based)
  for NDJSON, ``<file>:entry <i>`` (0-based, as ``Bundle.entry[i]``) for Bundles.
  Synthea names Bundle files after the patient (``Ada662_Lovelace123_<uuid>.json``),
  so a Bundle file whose name holds one of its patients' identifiers or ids, or that
  could not be parsed (its identifiers are unknown), is named ``bundle #<n>``: the
  n-th ``.json`` file of the folder in name order.
- rejects (``raw_rejects``) carry a location and a reason, never content. A Bundle
  file that does not parse, or an unreadable entry, counts against ``person`` (one
  Bundle is one patient); a bad NDJSON line against its file's resource type.
  Reasons do not repeat the location (it is the quarantine's ``location`` column),
  so that the report can count them.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import zlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from forewarn.records import deid, schema
from forewarn.records.pull import PullContext, PullResult, append, run_pull

log = logging.getLogger("forewarn")

SYSTEMS = {
    "http://snomed.info/sct": "SNOMED",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://www.ama-assn.org/go/cpt": "CPT4",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://www.whocc.no/atc": "ATC",
    "http://unitsofmeasure.org": "UCUM",
    "urn:oid:2.16.840.1.113883.6.96": "SNOMED",
    "urn:oid:2.16.840.1.113883.6.1": "LOINC",
    "urn:oid:2.16.840.1.113883.6.88": "RxNorm",
    "urn:oid:2.16.840.1.113883.6.90": "ICD10CM",
    "urn:oid:2.16.840.1.113883.12.292": "CVX",
    "urn:oid:2.16.840.1.113883.6.12": "CPT4",
    "urn:oid:2.16.840.1.113883.6.8": "UCUM",
}
UCUM = "http://unitsofmeasure.org"
VISITS = {"AMB": "OP", "IMP": "IP", "EMER": "ER"}
VISIT_NAMES = {"OP": "Outpatient Visit", "IP": "Inpatient Visit", "ER": "Emergency Room Visit"}
GENDERS = {"female": "Gender//F", "male": "Gender//M", "other": "Gender//O", "unknown": "Gender//U"}
GENDER_NAMES = {
    "Gender//F": "FEMALE",
    "Gender//M": "MALE",
    "Gender//O": "OTHER",
    "Gender//U": "UNKNOWN",
}
# US Core race and ethnicity: their OMB categories, as the OMOP Race and Ethnicity
# vocabularies' codes (``schema.AUDIT_LEVELS``), so both formats audit the same levels.
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
OMB_CATEGORIES = {
    f"{US_CORE}us-core-race": {"1002-5": "Race//1", "2028-9": "Race//2", "2054-5": "Race//3", "2076-8": "Race//4",
                               "2106-3": "Race//5"},
    f"{US_CORE}us-core-ethnicity": {"2135-2": "Ethnicity//Hispanic", "2186-5": "Ethnicity//Not Hispanic"},
}
OMB_VOCABULARY = {f"{US_CORE}us-core-race": schema.RACE_VOCABULARY, f"{US_CORE}us-core-ethnicity": schema.ETHNICITY_VOCABULARY}
OMB_UNKNOWN = {"UNK", "ASKU"}  # NullFlavor: unknown, asked but declined
NOT_HAPPENED = {"not-done", "cancelled"}
LOG_EVERY_LINES = 1_000_000

TIME_FORMAT = "expected a FHIR dateTime (YYYY-MM-DD[Thh:mm:ss[+zz:zz]]); fix the value"
_TOKEN = re.compile(r"[A-Za-z0-9']+")
_NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")

EVENT_SCHEMA = pa.schema(
    [
        ("src_table", pa.string()),
        ("src_row", pa.string()),
        ("src_key", pa.string()),
        ("source_id", pa.string()),
        ("time", pa.timestamp("us")),
        ("code", pa.string()),
        ("numeric_value", pa.float64()),
        ("unit", pa.string()),
        ("reason", pa.string()),
    ]
)
PERSON_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("birth", pa.timestamp("us")),
        ("death", pa.timestamp("us")),
        ("src_row", pa.string()),
    ]
)
REJECT_SCHEMA = pa.schema(
    [("src_table", pa.string()), ("src_row", pa.string()), ("reason", pa.string())]
)
MEDICATION_SCHEMA = pa.schema(
    [("ref", pa.string()), ("code", pa.string()), ("reason", pa.string()), ("src_row", pa.string())]
)
PENDING_SCHEMA = pa.schema(
    [
        ("src_row", pa.string()),
        ("src_key", pa.string()),
        ("source_id", pa.string()),
        ("time", pa.timestamp("us")),
        ("ref", pa.string()),
        ("reason", pa.string()),
    ]
)
WORK_DDL = """
CREATE TABLE fhir_medications (ref VARCHAR, code VARCHAR, reason VARCHAR, src_row VARCHAR);
CREATE TABLE fhir_pending (src_row VARCHAR, src_key VARCHAR, source_id VARCHAR, time TIMESTAMP, ref VARCHAR, reason VARCHAR);
"""

# Where each resource type keeps its time, in order of preference.
_TIME_PATHS = {
    "Encounter": ("period.start",),
    "Condition": ("onsetDateTime", "onsetPeriod.start", "recordedDate"),
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
    "MedicationRequest": ("authoredOn",),
    "Procedure": (
        "performedDateTime",
        "performedPeriod.start",
        "occurrenceDateTime",
        "occurrencePeriod.start",
    ),
    "Immunization": ("occurrenceDateTime",),
}
TIME_PATHS = {t: tuple((p, tuple(p.split("."))) for p in paths) for t, paths in _TIME_PATHS.items()}


def pull_fhir(
    location: str | Path,
    out_dir: Path,
    *,
    site: str,
    config: deid.DeidConfig,
    now: datetime | None = None,
    shard_subjects: int = 100_000,
    max_bad_fraction: float = 0.05,
    batch_rows: int = 100_000,
    part: tuple[int, int] | None = None,
) -> PullResult:
    """Pull FHIR R4 from a folder of Bundle ``.json`` files, a folder of Bulk Data
    ``.ndjson[.gz]`` files, or one such file; see the module docstring."""
    location, out_dir = Path(location), Path(out_dir)
    layout, _ = detect_layout(location)
    return run_pull(
        f"pull {site} (fhir, {layout})",
        out_dir,
        lambda ctx: load_fhir(ctx, location, batch_rows=batch_rows),
        site=site,
        config=config,
        now=now,
        shard_subjects=shard_subjects,
        max_bad_fraction=max_bad_fraction,
        part=part,  # FHIR files are not split by patient: every part reads them and keeps its patients
    )


def detect_layout(location: Path) -> tuple[str, list[Path]]:
    """``("bundles" | "ndjson", files)`` for ``location``; a clear error when it is neither."""
    location = Path(location)
    what = (
        "pass a folder of FHIR Bundle .json files, a folder of Bulk Data .ndjson/.ndjson.gz files, "
        "or one such file"
    )
    if not location.exists():
        raise FileNotFoundError(f"FHIR source {str(location)!r} does not exist; {what}.")
    if location.is_dir():
        files = sorted(p for p in location.iterdir() if p.is_file() and not p.name.startswith("."))
        ndjson = [p for p in files if _is_ndjson(p.name)]
        bundles = [p for p in files if p.name.lower().endswith(".json")]
        if ndjson and bundles:
            raise ValueError(
                f"FHIR folder {str(location)!r} holds both Bundle .json files ({len(bundles)}) and NDJSON files "
                f"({len(ndjson)}); pull one layout at a time (move the other files out)."
            )
        if ndjson or bundles:
            return ("ndjson", ndjson) if ndjson else ("bundles", bundles)
        raise ValueError(
            f"FHIR source {str(location)!r} must hold FHIR Bundle .json or Bulk Data .ndjson/.ndjson.gz files; "
            f"it holds neither ({len(files)} other file(s)); {what}."
        )
    if _is_ndjson(location.name):
        return "ndjson", [location]
    if location.name.lower().endswith(".json"):
        return ("ndjson" if _first_line_is_resource(location) else "bundles"), [location]
    raise ValueError(
        f"FHIR source {str(location)!r} must be a .json (Bundle) or .ndjson/.ndjson.gz (Bulk Data) file; "
        f"got {location.suffix or 'a file without an extension'!r}; {what}."
    )


def load_fhir(ctx: PullContext, location: Path, *, batch_rows: int = 100_000) -> dict[str, Any]:
    """Fill the core's raw tables from ``location``; returns what the pull report adds."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1; got {batch_rows!r}.")
    location = Path(location)
    layout, files = detect_layout(location)
    ctx.con.execute(WORK_DDL)
    loader = _Loader(ctx, batch_rows)
    for n, path in enumerate(files, 1):
        if layout == "bundles":
            loader.bundle(path, n)
        else:
            loader.ndjson(path, n)
    loader.finish()
    shown = (
        location
        if location.is_dir()
        else location.parent / (loader.labels.get(location) or location.name)
    )
    ctx.source = {"format": "fhir", "layout": layout, "location": str(shown)}
    return {
        "fhir": {
            "layout": layout,
            "files": len(files),
            "resources": dict(sorted(loader.read.items())),
            "skipped": dict(sorted(loader.skipped.items())),
            "locations": (
                "<file>:<line> (1-based) for NDJSON; <file>:entry <i> (0-based) for Bundles, where a file whose "
                "name holds patient identifiers, or that did not parse, is 'bundle #<n>': the n-th .json file by name"
            ),
        }
    }


# --- reading ---------------------------------------------------------------------


class _Loader:
    """Maps resources to raw rows and appends them in Arrow batches."""

    def __init__(self, ctx: PullContext, batch_rows: int) -> None:
        self.ctx = ctx
        self.batch_rows = batch_rows
        self.events: list[tuple] = []
        self.persons: list[tuple] = []
        self.rejects: list[tuple] = []
        self.medications: list[tuple] = []
        self.pending: list[tuple] = []
        self.descriptions: dict[str, str] = {}
        self.read: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.labels: dict[Path, str] = {}
        self._flushed_rejects = 0
        self._since_flush = (
            0  # resources mapped since the last flush: bounds every buffer, not only events
        )
        self._vocabularies: dict[Any, tuple[str, bool]] = {}
        self._times: dict[str, datetime] = {}
        self.handlers = {
            "Patient": self._patient,
            "Encounter": self._encounter,
            "Condition": self._condition,
            "Observation": self._observation,
            "MedicationRequest": self._medication_request,
            "Procedure": self._coded("Procedure", "code", "subject"),
            "Immunization": self._coded("Immunization", "vaccineCode", "patient"),
            "Medication": self._medication,
        }

    # -- files --

    def ndjson(self, path: Path, n: int) -> None:
        name = path.name
        label = name if _name_is_safe(name, set(), ()) else f"file #{n}"
        self.labels[path] = label
        ftype = _type_from_name(name, self.handlers)
        gz = name.lower().endswith(".gz")
        truncated = (EOFError, zlib.error, gzip.BadGzipFile) if gz else ()
        loads, resource, events = orjson.loads, self.resource, self.events
        lineno = 0
        with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
            try:
                for raw in fh:
                    lineno += 1
                    self._since_flush += 1
                    if self._since_flush >= self.batch_rows or len(events) >= self.batch_rows:
                        self.flush()
                    if lineno % LOG_EVERY_LINES == 0:
                        log.info(
                            "fhir %s: %s lines, %s resources used, %s skipped, %s rejected",
                            label,
                            f"{lineno:,}",
                            f"{sum(self.read.values()):,}",
                            f"{sum(self.skipped.values()):,}",
                            f"{self.rejected:,}",
                        )
                    loc = f"{label}:{lineno}"
                    try:
                        res = loads(raw)
                    except orjson.JSONDecodeError:
                        if not raw.strip():
                            continue
                        res, problem = _json_problem(raw, bundle=False)
                        if problem:
                            self.reject(
                                _table(ftype) or label,
                                loc,
                                f"NDJSON line: not valid JSON ({problem}); fix or remove the line",
                            )
                            continue
                    rtype = resource(res, loc, None, _table(ftype) or label, "NDJSON line")
                    if ftype is None and rtype in self.handlers:
                        ftype = rtype
            except truncated as exc:
                log.warning(
                    "fhir %s: the gzip stream ends early (%s) after line %s",
                    label,
                    type(exc).__name__,
                    lineno,
                )
                self.reject(
                    _table(ftype) or label,
                    f"{label}:{lineno + 1}",
                    "NDJSON file: ends early (truncated or corrupt gzip stream); the lines from here on are missing; "
                    "re-export the file",
                )
        self.flush()

    def bundle(self, path: Path, n: int) -> None:
        tag = f"bundle #{n}"
        data = path.read_bytes()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc, problem = _json_problem(data, bundle=True)
            if problem:
                self.labels[path] = tag
                self.reject(
                    "person", tag, f"Bundle: not valid JSON ({problem}); fix or re-export the file"
                )
                return
        del data
        if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
            entries = doc.get("entry") or []
        elif isinstance(doc, dict) and isinstance(doc.get("resourceType"), str):
            entries = [{"resource": doc}]  # a file holding one resource
        else:
            entries = None
        if not isinstance(entries, list):
            self.labels[path] = tag
            self.reject(
                "person",
                tag,
                "Bundle: not a FHIR Bundle (expected resourceType Bundle with an entry list); fix or re-export the file",
            )
            return
        # Pass 1: what references resolve to, and this file's identifiers (to judge its name).
        refs: dict[str, tuple[str, Any]] = {}
        found: set[str] = set()
        ids: list[str] = []
        resources: list[Any] = []
        for entry in entries:
            res = entry.get("resource") if isinstance(entry, dict) else None
            resources.append(res)
            if not isinstance(res, dict):
                continue
            rtype, rid = res.get("resourceType"), res.get("id")
            if rtype == "Patient":
                found |= _identifiers(res)
            if isinstance(rtype, str) and isinstance(rid, str) and rid:
                if rtype == "Patient":
                    ids.append(rid)
                full = entry.get("fullUrl")
                if isinstance(full, str) and full:
                    refs[full] = (rtype, rid)
                refs[f"{rtype}/{rid}"] = (rtype, rid)
        label = path.name if _name_is_safe(path.name, found, ids) else tag
        self.labels[path] = label
        # Pass 2: Medications first, so that a request may come before what it refers to.
        for i, (entry, res) in enumerate(zip(entries, resources, strict=True)):
            if isinstance(res, dict) and res.get("resourceType") == "Medication":
                self.read["Medication"] += 1
                full = entry.get("fullUrl")
                for ref, resolved in self.medication(res, f"{label}:entry {i}", full).items():
                    refs[ref] = ("Medication", resolved)
        # Pass 3: everything else.
        for i, (entry, res) in enumerate(zip(entries, resources, strict=True)):
            loc = f"{label}:entry {i}"
            if res is None and isinstance(entry, dict) and isinstance(entry.get("request"), dict):
                self.skipped["Bundle.entry (request without a resource)"] += 1
                continue
            if isinstance(res, dict) and res.get("resourceType") == "Medication":
                continue
            self.resource(res, loc, refs, "person", "Bundle.entry")
            self._since_flush += 1
            if self._since_flush >= self.batch_rows or len(self.events) >= self.batch_rows:
                self.flush()

    # -- resources --

    @property
    def rejected(self) -> int:
        return self._flushed_rejects + len(self.rejects)

    def reject(self, table: str, loc: str, reason: str) -> None:
        self.rejects.append((table, loc, reason))

    def resource(self, res: Any, loc: str, refs: dict | None, table: str, what: str) -> str | None:
        """Map one resource; returns its type. ``table`` takes the rejects whose type is unknown."""
        if not isinstance(res, dict):
            self.reject(
                table, loc, f"{what}: expected a FHIR resource (a JSON object); fix or remove it"
            )
            return None
        rtype = res.get("resourceType")
        handler = self.handlers.get(rtype)
        if handler is None:
            if isinstance(rtype, str) and rtype:
                self.skipped[rtype] += 1
            else:
                self.reject(
                    table, loc, f"{what}: not a FHIR resource (no resourceType); fix or remove it"
                )
            return rtype
        skip = _did_not_happen(res, rtype)
        if skip:
            self.skipped[f"{rtype} ({skip})"] += 1
            return rtype
        self.read[rtype] += 1
        try:
            self.events += handler(res, loc, refs)
        except (TypeError, AttributeError, ValueError, KeyError, OverflowError) as exc:
            self.reject(
                _table(rtype),
                loc,
                f"{rtype}: unexpected structure ({type(exc).__name__}); check the resource against FHIR R4",
            )
        return rtype

    def _patient(self, res: dict, loc: str, refs: dict | None) -> list[tuple]:
        self.ctx.identifiers |= _identifiers(res)
        pid = res.get("id")
        if not isinstance(pid, str) or not pid:
            self.reject("person", loc, "Patient.id: missing; every Patient needs an id")
            return []
        events = []
        birth, reason = self.time(res.get("birthDate"), "Patient", "birthDate")
        if reason:
            events.append(("person", loc, None, pid, None, None, None, None, reason))
        death = None
        if res.get("deceasedDateTime") is not None:
            death, reason = self.time(res["deceasedDateTime"], "Patient", "deceasedDateTime")
            events.append(("death", loc, pid, pid, death, schema.DEATH_CODE, None, None, reason))
        self.persons.append((pid, birth, death, loc))
        gender = res.get("gender")
        if gender is not None:
            code = GENDERS.get(gender) if isinstance(gender, str) else None
            reason = (
                None
                if code
                else "Patient.gender: expected male, female, other or unknown; fix the value"
            )
            events.append(("person", loc, None, pid, None, code, None, None, reason))
        events += [("person", loc, None, pid, None, code, None, None, None) for code in _omb_codes(res)]
        return events

    def _head(self, res: dict, rtype: str, subject: str, refs: dict | None) -> tuple:
        """``(src_key, source_id, time, reason)`` shared by the events of one resource."""
        rid = res.get("id")
        if isinstance(rid, str) and rid:
            key, reason = f"{rtype}/{rid}", None
        else:
            key, reason = None, f"{rtype}.id: missing; every {rtype} needs an id"
        sid, problem = self.subject(res.get(subject), rtype, subject, refs)
        reason = reason or problem
        if res.get("status") == "entered-in-error":
            reason = reason or f"{rtype}.status: entered-in-error; the source withdrew this record"
        path, value = _pick(res, TIME_PATHS[rtype])
        time, problem = self.time(value, rtype, path)
        return key, sid, time, reason or problem

    def _encounter(self, res: dict, loc: str, refs: dict | None) -> list[tuple]:
        key, sid, time, reason = self._head(res, "Encounter", "subject", refs)
        cls = res.get("class")
        if isinstance(cls, list):  # R5: a list of CodeableConcepts
            cls = cls[0] if cls else None
            if isinstance(cls, dict) and isinstance(cls.get("coding"), list):
                cls = cls["coding"][0] if cls["coding"] else None
        value = cls.get("code") if isinstance(cls, dict) else None
        code = None
        if isinstance(value, str) and value.strip():
            visit = VISITS.get(value.strip(), value.strip())
            code = f"Visit//{visit}"
            if code not in self.descriptions:
                display = VISIT_NAMES.get(visit) or cls.get("display")
                if isinstance(display, str) and display:
                    self.descriptions[code] = display
        else:
            reason = (
                reason
                or "Encounter.class: missing; every Encounter needs a class code (AMB, IMP, EMER, ...)"
            )
        return [("Encounter", loc, key, sid, time, code, None, None, reason)]

    def _condition(self, res: dict, loc: str, refs: dict | None) -> list[tuple]:
        key, sid, time, reason = self._head(res, "Condition", "subject", refs)
        if "entered-in-error" in _verification(res):
            reason = (
                reason
                or "Condition.verificationStatus: entered-in-error; the source withdrew this record"
            )
        code, problem = self.code(res.get("code"), "Condition", "code")
        return [("Condition", loc, key, sid, time, code, None, None, reason or problem)]

    def _coded(self, rtype: str, field: str, subject: str):
        def handle(res: dict, loc: str, refs: dict | None) -> list[tuple]:
            key, sid, time, reason = self._head(res, rtype, subject, refs)
            code, problem = self.code(res.get(field), rtype, field)
            return [(rtype, loc, key, sid, time, code, None, None, reason or problem)]

        return handle

    def _observation(self, res: dict, loc: str, refs: dict | None) -> list[tuple]:
        key, sid, time, reason = self._head(res, "Observation", "subject", refs)
        components = res.get("component")
        events = []
        if not components or any(k.startswith("value") for k in res):
            code, problem = self.code(res.get("code"), "Observation", "code")
            value, unit, bad = self.value(res, "Observation")
            events.append(
                ("Observation", loc, key, sid, time, code, value, unit, reason or problem or bad)
            )
        if components:
            if not isinstance(components, list):
                raise TypeError("component")
            for j, comp in enumerate(components):
                cloc, ckey = f"{loc}:component {j}", (f"{key}#component {j}" if key else None)
                if not isinstance(comp, dict):
                    events.append(
                        (
                            "Observation",
                            cloc,
                            ckey,
                            sid,
                            time,
                            None,
                            None,
                            None,
                            reason or "Observation.component: expected an object; fix the resource",
                        )
                    )
                    continue
                code, problem = self.code(comp.get("code"), "Observation", "component.code")
                value, unit, bad = self.value(comp, "Observation.component")
                events.append(
                    (
                        "Observation",
                        cloc,
                        ckey,
                        sid,
                        time,
                        code,
                        value,
                        unit,
                        reason or problem or bad,
                    )
                )
        return events

    def _medication_request(self, res: dict, loc: str, refs: dict | None) -> list[tuple]:
        key, sid, time, reason = self._head(res, "MedicationRequest", "subject", refs)
        concept, ref = res.get("medicationCodeableConcept"), res.get("medicationReference")
        if isinstance(res.get("medication"), dict):  # R5: a CodeableReference
            concept, ref = res["medication"].get("concept"), res["medication"].get("reference")
        field = "medicationCodeableConcept"
        if (
            concept is None
            and isinstance(ref, dict)
            and isinstance(ref.get("reference"), str)
            and ref["reference"]
        ):
            target = ref["reference"]
            if target.startswith("#"):
                contained = [
                    c
                    for c in res.get("contained") or ()
                    if isinstance(c, dict)
                    and c.get("resourceType") == "Medication"
                    and c.get("id") == target[1:]
                ]
                if not contained:
                    problem = "MedicationRequest.medicationReference: refers to a contained Medication that is not there; fix the reference"
                    return [
                        (
                            "MedicationRequest",
                            loc,
                            key,
                            sid,
                            time,
                            None,
                            None,
                            None,
                            reason or problem,
                        )
                    ]
                concept, field = contained[0].get("code"), "contained Medication.code"
            elif refs is not None and refs.get(target, ("",))[0] == "Medication":
                code, problem = refs[target][1]
                return [
                    ("MedicationRequest", loc, key, sid, time, code, None, None, reason or problem)
                ]
            else:
                self.pending.append((loc, key, sid, time, _medication_ref(target), reason))
                return []
        elif concept is None:
            problem = "MedicationRequest.medication[x]: missing; give medicationCodeableConcept or medicationReference"
            return [("MedicationRequest", loc, key, sid, time, None, None, None, reason or problem)]
        code, problem = self.code(concept, "MedicationRequest", field)
        return [("MedicationRequest", loc, key, sid, time, code, None, None, reason or problem)]

    def _medication(self, res: dict, loc: str, refs: dict | None) -> list[tuple]:
        self.medication(res, loc, None)
        return []

    def medication(
        self, res: dict, loc: str, full: Any
    ) -> dict[str, tuple[str | None, str | None]]:
        """Register a Medication under the references that name it; returns them with its ``(code, reason)``."""
        resolved = self.code(res.get("code"), "Medication", "code")
        rid = res.get("id")
        refs = [f"Medication/{rid}"] if isinstance(rid, str) and rid else []
        refs += [full] if isinstance(full, str) and full else []
        for ref in refs:
            self.medications.append((ref, *resolved, loc))
        return dict.fromkeys(refs, resolved)

    # -- fields --

    def subject(
        self, value: Any, rtype: str, field: str, refs: dict | None
    ) -> tuple[str | None, str | None]:
        if value is not None and not isinstance(value, dict):
            return (
                None,
                f"{rtype}.{field}: expected a Reference (an object with a reference); fix the resource",
            )
        ref = value.get("reference") if value is not None else None
        if not isinstance(ref, str) or not ref:
            return None, f"{rtype}.{field}: missing; every {rtype} needs a reference to its Patient"
        if refs is not None and ref in refs:
            kind, rid = refs[ref]
            if kind == "Patient":
                return rid, None
        elif ref.startswith("Patient/") and ref.count("/") == 1:
            return ref[8:], None
        elif ref.startswith("urn:uuid:"):
            return ref[9:], None
        else:
            parts = ref.split("/")
            if len(parts) >= 4 and parts[-2] == "_history":
                parts = parts[:-2]
            if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
                return parts[-1], None
        return (
            None,
            f"{rtype}.{field}: expected a reference to a Patient (Patient/<id> or urn:uuid:<id>); fix the reference",
        )

    def time(self, value: Any, rtype: str, field: str) -> tuple[datetime | None, str | None]:
        if value is None:
            return None, None
        cached = self._times.get(value) if isinstance(value, str) else None
        if cached is not None:
            return cached, None
        try:
            parsed = parse_time(value)
        except (ValueError, TypeError, OverflowError):
            return None, f"{rtype}.{field}: {TIME_FORMAT}"
        if len(self._times) > 200_000:
            self._times.clear()
        self._times[value] = parsed
        return parsed, None

    def code(self, concept: Any, rtype: str, field: str) -> tuple[str | None, str | None]:
        if not isinstance(concept, dict):
            if concept is None:
                return None, f"{rtype}.{field}: missing; map the record to a code"
            return None, f"{rtype}.{field}: expected a CodeableConcept; fix the resource"
        codings = concept.get("coding")
        if codings is not None and not isinstance(codings, list):
            return None, f"{rtype}.{field}.coding: expected a list of codings; fix the resource"
        best, best_known, descriptions = None, False, self.descriptions
        for coding in codings or ():
            if not isinstance(coding, dict):
                continue
            value = coding.get("code")
            if not isinstance(value, str) or not (value := value.strip()):
                continue
            system = coding.get("system")
            if isinstance(system, str) or system is None:
                vocabulary = self._vocabularies.get(system)
                if vocabulary is None:
                    vocabulary = self._vocabularies[system] = vocabulary_of(system)
            else:
                vocabulary = ("LOCAL", False)
            full = f"{vocabulary[0]}//{value}"
            if full not in descriptions:
                display = coding.get("display")
                if isinstance(display, str) and display:
                    descriptions[full] = display
            if best is None or (vocabulary[1] and not best_known):
                best, best_known = full, vocabulary[1]
        if best is None:
            if codings:
                return None, f"{rtype}.{field}: no coding has a code; map it to a code system"
            return None, f"{rtype}.{field}: no coding (text only); map it to a code system"
        return best, None

    def value(self, obj: dict, what: str) -> tuple[float | None, str | None, str | None]:
        """``(numeric_value, unit, reason)`` of ``valueQuantity`` (or ``valueInteger``)."""
        quantity = obj.get("valueQuantity")
        if quantity is None:
            number = obj.get("valueInteger")
            if number is None:
                return None, None, None
            if type(number) is int:
                return float(number), None, None
            return (
                None,
                None,
                f"{what}.valueInteger: expected an integer; fix the value or leave it empty",
            )
        if not isinstance(quantity, dict):
            return None, None, f"{what}.valueQuantity: expected a Quantity; fix the resource"
        raw, number = quantity.get("value"), None
        if type(raw) is float or type(raw) is int:
            number = float(raw)
        elif isinstance(raw, str):
            try:
                number = float(raw)
            except ValueError:
                number = None
        if raw is not None and (number is None or not math.isfinite(number)):
            return (
                None,
                None,
                f"{what}.valueQuantity.value: expected a number; fix the value or leave it empty",
            )
        code, unit = quantity.get("code"), quantity.get("unit")
        if (
            isinstance(code, str)
            and code
            and (quantity.get("system") == UCUM or not (isinstance(unit, str) and unit))
        ):
            return number, code, None  # the UCUM code (mg/dL), as OMOP's unit concept_code gives it
        return number, unit if isinstance(unit, str) and unit else None, None

    # -- batches --

    def flush(self) -> None:
        self._since_flush = 0
        for rows, table, arrow_schema in (
            (self.events, "raw_events", EVENT_SCHEMA),
            (self.persons, "raw_persons", PERSON_SCHEMA),
            (self.rejects, "raw_rejects", REJECT_SCHEMA),
            (self.medications, "fhir_medications", MEDICATION_SCHEMA),
            (self.pending, "fhir_pending", PENDING_SCHEMA),
        ):
            if rows:
                if table == "raw_rejects":
                    self._flushed_rejects += len(rows)
                append(self.ctx, table, _arrow(rows, arrow_schema))
                rows.clear()

    def finish(self) -> None:
        self.flush()
        con = self.ctx.con
        # A MedicationRequest that refers to a Medication elsewhere takes that Medication's code.
        con.execute(
            """
            INSERT INTO raw_events
            SELECT 'MedicationRequest', p.src_row, p.src_key, p.source_id, p.time, m.code, NULL, NULL,
                   COALESCE(p.reason, m.reason, CASE WHEN m.ref IS NULL THEN 'MedicationRequest.medicationReference: refers '
                            || 'to a Medication that is not in the source; add the Medication or use medicationCodeableConcept' END)
            FROM fhir_pending p
            LEFT JOIN (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY ref ORDER BY src_row) AS nth
                                      FROM fhir_medications) WHERE nth = 1) m USING (ref)
            """
        )
        # A repeated Patient: the core quarantines its birth; its gender goes with it.
        con.execute(
            """
            UPDATE raw_events SET reason = 'person id: repeats an earlier person; remove the repeat'
            WHERE src_table = 'person' AND reason IS NULL AND src_row IN (
              SELECT src_row FROM (SELECT src_row, row_number() OVER (PARTITION BY source_id ORDER BY src_row) AS nth
                                   FROM raw_persons) WHERE nth > 1)
            """
        )
        descriptions = dict(self.descriptions)
        for code, name in (*GENDER_NAMES.items(), *schema.AUDIT_LEVELS.items()):
            descriptions.setdefault(code, name)
        append(
            self.ctx,
            "code_descriptions",
            pa.table(
                {
                    "code": pa.array(list(descriptions), pa.string()),
                    "description": pa.array(list(descriptions.values()), pa.string()),
                }
            ),
        )
        con.execute("DROP TABLE fhir_pending; DROP TABLE fhir_medications")


# --- helpers -------------------------------------------------------------------------


def parse_time(value: Any) -> datetime:
    """A FHIR date / dateTime / instant as a naive UTC datetime; ``ValueError`` when it is not one."""
    if type(value) is not str:
        raise TypeError("not a string")
    n = len(value)
    if n >= 10:
        if value[4] != "-" or value[7] != "-" or (n > 10 and value[10] != "T"):
            raise ValueError("not a FHIR dateTime")
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        return parsed
    if n == 7 and value[4] == "-" and value[:4].isdigit() and value[5:].isdigit():
        return datetime(int(value[:4]), int(value[5:]), 1)
    if n == 4 and value.isdigit():
        return datetime(int(value), 7, 1)
    raise ValueError("not a FHIR dateTime")


def vocabulary_of(system: str | None) -> tuple[str, bool]:
    """``(vocabulary, known)`` for a coding's system URL."""
    if system in SYSTEMS:
        return SYSTEMS[system], True
    if not isinstance(system, str) or not system.strip():
        return "LOCAL", False
    last = re.split(r"[/:#]", system.strip().rstrip("/#:"))[-1]
    last = re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-").upper()
    return last or "LOCAL", False


def _did_not_happen(res: dict, rtype: str) -> str | None:
    """Why a resource records no event (``status not-done``, a refuted Condition), else None."""
    status = res.get("status")
    if status in NOT_HAPPENED:
        return f"status {status}"
    if rtype == "Condition" and "refuted" in _verification(res):
        return "refuted"
    return None


def _verification(res: dict) -> set:
    value = res.get("verificationStatus")
    codings = value.get("coding") if isinstance(value, dict) else None
    return (
        {c.get("code") for c in codings if isinstance(c, dict)}
        if isinstance(codings, list)
        else set()
    )


def _pick(res: dict, paths: tuple) -> tuple[str, Any]:
    for path, parts in paths:
        value = res
        for part in parts:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return path, value
    return paths[0][0], None


def _omb_codes(patient: dict) -> list[str]:
    """A Patient's US Core race and ethnicity (each extension's ``ombCategory`` codings) as
    static codes: an OMB category as the OMOP vocabulary's code (``Race//5``), any other
    code as ``Race//<code>``; unknown or declined (``UNK``, ``ASKU``) and the detailed
    codes are not recorded. Each distinct code once, in order."""
    codes: list[str] = []
    for ext in patient.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") not in OMB_CATEGORIES:
            continue
        known, vocabulary = OMB_CATEGORIES[ext["url"]], OMB_VOCABULARY[ext["url"]]
        for part in ext.get("extension") or []:
            coding = part.get("valueCoding") if isinstance(part, dict) and part.get("url") == "ombCategory" else None
            code = coding.get("code") if isinstance(coding, dict) else None
            if isinstance(code, str) and code and code not in OMB_UNKNOWN:
                codes.append(known.get(code, f"{vocabulary}//{code}"))
    return list(dict.fromkeys(codes))


def _identifiers(res: dict) -> set[str]:
    """Every name, identifier value, telecom value and address of a Patient (and its contacts)."""
    found: set[str] = set()

    def add(value: Any) -> None:
        if isinstance(value, str) and len(value := value.strip()) >= 3:
            found.add(value)
            tokens = _TOKEN.findall(value)
            if len(tokens) == 2 and " ".join(tokens) != value:
                found.add(" ".join(tokens))  # the gate compares words: "MRN-0042" -> "MRN 0042"

    def names(value: Any) -> None:
        for name in value if isinstance(value, list) else [value]:
            if not isinstance(name, dict):
                continue
            given = [g for g in name.get("given") or () if isinstance(g, str)]
            family = name.get("family") if isinstance(name.get("family"), str) else None
            add(" ".join([*given, family] if family else given))
            add(family)
            add(name.get("text"))
            for g in given:
                if family:
                    add(f"{g} {family}")

    def addresses(value: Any) -> None:
        for address in value if isinstance(value, list) else [value]:
            if not isinstance(address, dict):
                continue
            for line in address.get("line") or ():
                add(line)
            add(address.get("text"))
            city, postal = address.get("city"), address.get("postalCode")
            if isinstance(city, str) and isinstance(postal, str):
                add(f"{city} {postal}")

    def values(value: Any) -> None:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                add(item.get("value"))

    names(res.get("name"))
    values(res.get("identifier"))
    values(res.get("telecom"))
    addresses(res.get("address"))
    for contact in res.get("contact") or ():
        if isinstance(contact, dict):
            names(contact.get("name"))
            values(contact.get("telecom"))
            addresses(contact.get("address"))
    return found


def _name_is_safe(name: str, identifiers: set[str], ids: list[str] | tuple) -> bool:
    """Whether a file name may be shown as a location: no identifier, no patient id, no PHI pattern."""
    if any(p.search(name) for p in deid.PATTERNS.values()):
        return False
    lowered = name.lower()
    if any(len(i) >= 4 and i.lower() in lowered for i in ids):
        return False
    tokens = [t.lower() for t in _TOKEN.findall(name)]
    candidates = {lowered, *tokens, *(" ".join(p) for p in zip(tokens, tokens[1:], strict=False))}
    return not candidates & {i.lower() for i in identifiers}


def _json_problem(raw: bytes, *, bundle: bool) -> tuple[Any, str | None]:
    """Parse again with the standard library, for a readable message (or a value orjson refuses, e.g. NaN)."""
    try:
        return json.loads(raw), None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}" if bundle else f"column {exc.colno}"
        return None, f"{exc.msg} at {where}"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except RecursionError:
        return None, "nested too deeply"


def _medication_ref(ref: str) -> str:
    """``Medication/<id>`` for relative or absolute references; other forms as they are."""
    parts = ref.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] == "Medication":
        return f"Medication/{parts[-1]}"
    return ref


def _table(rtype: str | None) -> str | None:
    return "person" if rtype == "Patient" else rtype


def _type_from_name(name: str, known: dict) -> str | None:
    """``Observation`` for ``Observation.ndjson``, ``Observation.000.ndjson.gz``, ``1.Observation.ndjson``."""
    return next((part for part in name.split(".") if part in known), None)


def _is_ndjson(name: str) -> bool:
    return name.lower().endswith(_NDJSON_SUFFIXES)


def _first_line_is_resource(path: Path) -> bool:
    """A ``.json`` file whose first line is a whole non-Bundle resource holds NDJSON."""
    with open(path, "rb") as fh:
        first = fh.readline(1 << 24)
    try:
        doc = orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("resourceType"), str)
        and doc["resourceType"] != "Bundle"
    )


def _arrow(rows: list[tuple], arrow_schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [pa.array(list(c), type=f.type) for c, f in zip(columns, arrow_schema, strict=True)],
        schema=arrow_schema,
    )
