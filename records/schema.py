"""The one source of truth for column names, dtypes and file names between stages.

Every writer aligns its table to these schemas (``align``) before it writes, so a
later stage can rely on names and types without checking them again.

MEDS 0.4 data schema: ``subject_id`` int64, ``time`` timestamp[us] (null for static
events), ``code`` string (``VOCABULARY//CODE``), ``numeric_value`` float32,
``text_value`` large string, plus the extra column ``unit``. Labels follow the MEDS label schema and predictions the
meds-evaluation prediction schema.
"""

from __future__ import annotations

import pyarrow as pa

SUBJECT_ID = "subject_id"
TIME = "time"
CODE = "code"
NUMERIC_VALUE = "numeric_value"
TEXT_VALUE = "text_value"
UNIT = "unit"
PREDICTION_TIME = "prediction_time"
BOOLEAN_VALUE = "boolean_value"
PREDICTED_BOOLEAN_VALUE = "predicted_boolean_value"
PREDICTED_BOOLEAN_PROBABILITY = "predicted_boolean_probability"
SPLIT = "split"

# MEDS reserved codes.
BIRTH_CODE = "MEDS_BIRTH"
DEATH_CODE = "MEDS_DEATH"
OBSERVATION_START = "MEDS_OBSERVATION_PERIOD//START"
OBSERVATION_END = "MEDS_OBSERVATION_PERIOD//END"

# Race and ethnicity: static codes of the OMOP Race and Ethnicity vocabularies (the OMOP
# pull writes ``person.race_concept_id`` as ``Race//5``; a FHIR pull maps US Core's OMB
# categories to the same codes). They are the fairness audit's subgroups, never predictors
# (``features.audit_vocabularies``).
RACE_VOCABULARY, ETHNICITY_VOCABULARY = "Race", "Ethnicity"
AUDIT_LEVELS = {
    "Race//1": "American Indian or Alaska Native",
    "Race//2": "Asian",
    "Race//3": "Black or African American",
    "Race//4": "Native Hawaiian or Other Pacific Islander",
    "Race//5": "White",
    "Ethnicity//Hispanic": "Hispanic or Latino",
    "Ethnicity//Not Hispanic": "Not Hispanic or Latino",
}
# A source's own race or ethnicity values that say nothing (MIMIC-IV's admissions, HL7's
# null flavours): read as unrecorded, compared ignoring case.
AUDIT_UNRECORDED = frozenset({
    "UNKNOWN", "UNK", "ASKU", "NULL", "NONE", "NOT REPORTED", "NOT SPECIFIED", "UNKNOWN/NOT SPECIFIED",
    "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER", "DECLINED", "DECLINED TO ANSWER", "REFUSED",
})

TRAIN, TUNING, HELD_OUT = "train", "tuning", "held_out"
SPLITS = (TRAIN, TUNING, HELD_OUT)

DATA_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(TIME, pa.timestamp("us")),
        pa.field(CODE, pa.string(), nullable=False),
        pa.field(NUMERIC_VALUE, pa.float32()),
        pa.field(TEXT_VALUE, pa.large_string()),  # large_string, as the meds package's DataSchema wants
        pa.field(UNIT, pa.string()),  # an extra column (MEDS allows them): the unit of numeric_value
    ]
)

CODES_SCHEMA = pa.schema(
    [
        pa.field(CODE, pa.string(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("parent_codes", pa.list_(pa.string())),
    ]
)

LABEL_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(PREDICTION_TIME, pa.timestamp("us"), nullable=False),
        pa.field(BOOLEAN_VALUE, pa.bool_()),
    ]
)

SPLIT_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(SPLIT, pa.string(), nullable=False),
    ]
)

PREDICTION_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(PREDICTION_TIME, pa.timestamp("us"), nullable=False),
        pa.field(BOOLEAN_VALUE, pa.bool_()),
        pa.field(PREDICTED_BOOLEAN_VALUE, pa.bool_()),
        pa.field(PREDICTED_BOOLEAN_PROBABILITY, pa.float64()),
    ]
)

# File names inside a site's work folder.
EVENTS_DIR = "events"
CODES_FILE = "metadata/codes.parquet"
PULL_REPORT = "pull_report.json"
QUARANTINE_DIR = "quarantine"


def align(table: pa.Table, schema: pa.Schema, *, what: str = "table") -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order, cast to its types.

    Extra columns are dropped and absent nullable columns added as nulls. Missing
    required columns raise a ``ValueError`` that names every missing column at once.
    """
    for f in schema:  # absent nullable columns are added as all-null
        if f.nullable and f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(
            f"{what} must have columns {schema.names}; missing {missing}. "
            "Add them (nullable columns may be all null)."
        )
    arrays = []
    for field in schema:
        column = table.column(field.name)
        if not column.type.equals(field.type):
            column = column.cast(field.type)
        if not field.nullable and column.null_count:
            raise ValueError(
                f"{what}.{field.name} must not be null; got {column.null_count} null value(s)."
            )
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=schema)
