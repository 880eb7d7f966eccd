"""A seeded synthetic two-site network written as OMOP CDM v5.4 tables in DuckDB.

``generate_network`` writes ``<out_dir>/<site>/omop.duckdb`` for the two sites in
``SITES``: an older, sicker, lab-heavy *academic* centre and a larger, younger
*community* network whose ETL codes about 40% of conditions directly in ICD10CM
(the vocabulary's ``concept_relationship`` says which SNOMED concept each "Maps to").
``generate_site`` writes one site. The same ``(people, seed)`` gives identical table
contents; everything is vectorised with numpy over chunks of people.

The clinical model, per person (all times in days since 1970-01-01):

* sex, age, height, BMI, a family-type random effect; an observation period that
  starts at the window start or later (late entry) and ends at the window end, at
  loss to follow-up or at death (Gompertz hazard raised by comorbidity);
* type 2 diabetes from a liability on age, BMI and the random effect (prevalent
  cases are diagnosed in their first year); HbA1c, fasting glucose and BMI rise over
  the 1-3 years before diagnosis, a prediabetes code comes 6-24 months before for some
  (and to many with a high-normal HbA1c who do not progress),
  metformin (later insulin for some) and HbA1c checks follow;
* hypertension and hyperlipidaemia the same way (blood pressure / cholesterol rise
  before, drugs lower them after); CKD from a linear eGFR decline that is steeper for
  diabetic and hypertensive people, coded after eGFR crosses 60 (stage 3) and 30
  (stage 4), with dialysis for some;
* pancreatic cancer (rare): weight loss, abdominal pain, ER visits and new-onset
  diabetes in the months before diagnosis, a CT abdomen at diagnosis, and high
  mortality after;
* noise: acute and chronic unrelated conditions, their drugs, office visits, panels
  and screening colonoscopies;
* race and ethnicity (OMOP Race and Ethnicity concepts, some unrecorded), drawn from a
  stream of their own by the site's shares and independent of all the above: the
  evaluation's fairness audit has levels to show, and any difference between them is
  chance (drawing them changed no other table).

Concept ids: standard concepts use their OHDSI Athena ids where those are well
known; ICD10CM and CPT4 concepts, and SNOMED "weight loss", use ids from the OMOP
site-local range (>= 2,000,000,000). Downstream code should key on
``vocabulary_id`` and ``concept_code``, which follow the real vocabularies.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

log = logging.getLogger("forewarn")

YEAR = 365.25
DAY_S = 86_400
NEVER = 10**7  # a day number far beyond any window: "does not happen"
CHUNK_PEOPLE = 50_000  # people simulated at once; fixed, so output does not depend on memory
EHR = 32817  # type concept: EHR
EHR_PRESCRIPTION = 32838
MALE, FEMALE = 8507, 8532
# OMOP Race concepts in the order of ``SiteProfile.race_shares``, and Ethnicity's two.
RACES = (8527, 8516, 8515, 8657, 8557)  # White, Black or African American, Asian, AIAN, NHPI
HISPANIC, NOT_HISPANIC = 38003563, 38003564
OUTPATIENT, INPATIENT, EMERGENCY = 9202, 9201, 9203


@dataclass(frozen=True)
class SiteProfile:
    """How one site's population and record-keeping differ.

    Risk multipliers scale the yearly hazards (or odds) of the baseline model.
    """

    name: str
    share: float  # fraction of the network's people at this site
    age_mean: float  # age at the window start, years
    age_sd: float
    age_min: int
    age_max: int
    female_share: float
    bmi_mean: float
    t2d_risk: float  # type 2 diabetes (prevalence odds and incidence hazard)
    htn_risk: float  # hypertension
    hld_risk: float  # hyperlipidaemia
    ckd_risk: float  # odds of being a fast eGFR decliner
    cancer_risk: float  # pancreatic cancer hazard
    death_risk: float  # all-cause mortality hazard
    outpatient_rate: float  # routine outpatient visits per person-year (age 50, average frailty)
    er_rate: float  # emergency visits per person-year
    ip_rate: float  # inpatient stays per person-year
    lab_rate: float  # multiplier on the share of outpatient visits with a lab draw
    icd10_share: float  # fraction of condition rows whose condition_concept_id is ICD10CM
    late_entry_share: float  # fraction whose observation starts after the window start
    lost_share: float  # fraction lost to follow-up before the window end
    visit_source_values: tuple[str, str, str] = ("OP", "IP", "ER")  # outpatient, inpatient, ER
    # Race (``RACES``' order; the rest unrecorded, concept 0) and Hispanic ethnicity, drawn
    # from a stream of their own and independent of everything else: the fairness audit's
    # subgroups, whose metrics then differ by chance alone.
    race_shares: tuple[float, float, float, float, float] = (0.62, 0.15, 0.06, 0.01, 0.005)
    hispanic_share: float = 0.15
    ethnicity_unrecorded_share: float = 0.06


SITES: dict[str, SiteProfile] = {
    "academic": SiteProfile(
        name="academic",
        share=0.4,
        age_mean=58.0,
        age_sd=15.0,
        age_min=18,
        age_max=95,
        female_share=0.52,
        bmi_mean=29.0,
        t2d_risk=1.0,
        htn_risk=1.1,
        hld_risk=1.1,
        ckd_risk=1.0,
        cancer_risk=1.2,
        death_risk=1.15,
        outpatient_rate=2.2,
        er_rate=0.25,
        ip_rate=0.08,
        lab_rate=1.5,
        icd10_share=0.0,
        late_entry_share=0.3,
        lost_share=0.17,
        visit_source_values=("AMB", "IMP", "EMER"),
        race_shares=(0.56, 0.18, 0.10, 0.01, 0.005),
        hispanic_share=0.12,
    ),
    "community": SiteProfile(
        name="community",
        share=0.6,
        age_mean=45.0,
        age_sd=16.0,
        age_min=18,
        age_max=95,
        female_share=0.53,
        bmi_mean=28.5,
        t2d_risk=1.0,
        htn_risk=1.0,
        hld_risk=1.0,
        ckd_risk=1.0,
        cancer_risk=1.0,
        death_risk=1.0,
        outpatient_rate=2.0,
        er_rate=0.2,
        ip_rate=0.05,
        lab_rate=0.8,
        icd10_share=0.4,
        late_entry_share=0.35,
        lost_share=0.2,
        visit_source_values=("office visit", "inpatient admission", "emergency room"),
        race_shares=(0.68, 0.14, 0.03, 0.02, 0.005),
        hispanic_share=0.19,
        ethnicity_unrecorded_share=0.10,
    ),
}

# Baseline yearly pancreatic-cancer hazard at age 65 without diabetes (before the site's
# cancer_risk); about 0.3% of people are diagnosed over the ten-year window.
PANCREATIC_CANCER_HAZARD_65 = 5.5e-4

# Prediabetes coding. Until session 39 a code was given to 60% of incident diabetes cases and
# to 35% of non-cases with baseline HbA1c >= 5.7, so about 90% of coded people developed
# diabetes within two years: one code nearly decided the label, which is not what records show.
PREDIABETES_CASE_SHARE = 0.3  # incident cases coded 6-24 months before diagnosis
PREDIABETES_NOISE_A1C = 5.4  # baseline HbA1c (%) from which non-cases may be coded
PREDIABETES_NOISE_SHARE = 0.5  # of those non-cases, the share coded at some visit

# ---------------------------------------------------------------------------------------
# Concepts
# ---------------------------------------------------------------------------------------

# fmt: off
# (key, concept_id, name, domain, vocabulary, class, standard, code)
_Concept = tuple[str, int, str, str, str, str, str | None, str]
_CONCEPTS: list[_Concept] = [
    ("none", 0, "No matching concept", "Metadata", "None", "Undefined", None, "No matching concept"),
    ("male", MALE, "MALE", "Gender", "Gender", "Gender", "S", "M"),
    ("female", FEMALE, "FEMALE", "Gender", "Gender", "Gender", "S", "F"),
    ("white", 8527, "White", "Race", "Race", "Race", "S", "5"),
    ("black", 8516, "Black or African American", "Race", "Race", "Race", "S", "3"),
    ("asian", 8515, "Asian", "Race", "Race", "Race", "S", "2"),
    ("aian", 8657, "American Indian or Alaska Native", "Race", "Race", "Race", "S", "1"),
    ("nhpi", 8557, "Native Hawaiian or Other Pacific Islander", "Race", "Race", "Race", "S", "4"),
    ("hispanic", HISPANIC, "Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "S", "Hispanic"),
    ("not_hispanic", NOT_HISPANIC, "Not Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "S", "Not Hispanic"),
    ("op", OUTPATIENT, "Outpatient Visit", "Visit", "Visit", "Visit", "S", "OP"),
    ("ip", INPATIENT, "Inpatient Visit", "Visit", "Visit", "Visit", "S", "IP"),
    ("er", EMERGENCY, "Emergency Room Visit", "Visit", "Visit", "Visit", "S", "ER"),
    ("ehr", EHR, "EHR", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976890"),
    ("ehr_rx", EHR_PRESCRIPTION, "EHR prescription", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976914"),
    # UCUM units
    ("u_pct", 8554, "percent", "Unit", "UCUM", "Unit", "S", "%"),
    ("u_mgdl", 8840, "milligram per deciliter", "Unit", "UCUM", "Unit", "S", "mg/dL"),
    ("u_kgm2", 9531, "kilogram per square meter", "Unit", "UCUM", "Unit", "S", "kg/m2"),
    ("u_kg", 9529, "kilogram", "Unit", "UCUM", "Unit", "S", "kg"),
    ("u_egfr", 720870, "milliliter per minute per 1.73 square meter", "Unit", "UCUM", "Unit", "S", "mL/min/{1.73_m2}"),
    ("u_mmhg", 8876, "millimeter mercury column", "Unit", "UCUM", "Unit", "S", "mm[Hg]"),
    ("u_min", 8541, "per minute", "Unit", "UCUM", "Unit", "S", "/min"),
]

# Conditions: key -> (SNOMED id, SNOMED code, SNOMED name, ICD10CM code, ICD10CM name).
_CONDITIONS: dict[str, tuple[int, str, str, str, str]] = {
    "t2d": (201826, "44054006", "Type 2 diabetes mellitus", "E11.9", "Type 2 diabetes mellitus without complications"),
    "prediabetes": (37018196, "714628002", "Prediabetes", "R73.03", "Prediabetes"),
    "ckd3": (443597, "433144002", "Chronic kidney disease stage 3", "N18.3", "Chronic kidney disease, stage 3 (moderate)"),
    "ckd4": (443612, "431857002", "Chronic kidney disease stage 4", "N18.4", "Chronic kidney disease, stage 4 (severe)"),
    "htn": (320128, "59621000", "Essential hypertension", "I10", "Essential (primary) hypertension"),
    "obesity": (433736, "414916001", "Obesity", "E66.9", "Obesity, unspecified"),
    "hld": (432867, "55822004", "Hyperlipidemia", "E78.5", "Hyperlipidemia, unspecified"),
    "pancreatic_cancer": (4180793, "363418001", "Malignant tumor of pancreas", "C25.9", "Malignant neoplasm of pancreas, unspecified"),
    "weight_loss": (2_000_000_001, "89362005", "Weight loss", "R63.4", "Abnormal weight loss"),
    "abdominal_pain": (200219, "21522001", "Abdominal pain", "R10.9", "Unspecified abdominal pain"),
    "uri": (257011, "54150009", "Upper respiratory infection", "J06.9", "Acute upper respiratory infection, unspecified"),
    "osteoarthritis": (80180, "396275006", "Osteoarthritis", "M19.90", "Unspecified osteoarthritis, unspecified site"),
    "low_back_pain": (194133, "279039007", "Low back pain", "M54.5", "Low back pain"),
    "depression": (440383, "35489007", "Depressive disorder", "F32.9", "Major depressive disorder, single episode, unspecified"),
    "asthma": (317009, "195967001", "Asthma", "J45.909", "Unspecified asthma, uncomplicated"),
    "gerd": (318800, "235595009", "Gastroesophageal reflux disease", "K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    "uti": (81902, "68566005", "Urinary tract infectious disease", "N39.0", "Urinary tract infection, site not specified"),
    "headache": (378253, "25064002", "Headache", "R51.9", "Headache, unspecified"),
}
COND = {k: i for i, k in enumerate(_CONDITIONS)}
_ICD10_BASE = 2_000_001_000
COND_SNOMED_ID = np.array([v[0] for v in _CONDITIONS.values()], dtype=np.int32)
COND_ICD10_ID = np.array([_ICD10_BASE + i + 1 for i in range(len(_CONDITIONS))], dtype=np.int32)
COND_ICD10_CODE = [v[3] for v in _CONDITIONS.values()]

# Measurements: key -> (LOINC id, LOINC code, name, concept class, unit key, decimals).
_MEASUREMENTS: dict[str, tuple[int, str, str, str, str, int]] = {
    "hba1c": (3004410, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "Lab Test", "u_pct", 1),
    "glucose": (3037110, "1558-6", "Fasting glucose [Mass/volume] in Serum or Plasma", "Lab Test", "u_mgdl", 0),
    "bmi": (3038553, "39156-5", "Body mass index (BMI) [Ratio]", "Clinical Observation", "u_kgm2", 1),
    "weight": (3025315, "29463-7", "Body weight", "Clinical Observation", "u_kg", 1),
    "egfr": (3049187, "62238-1", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI)", "Lab Test", "u_egfr", 0),
    "creatinine": (3016723, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "Lab Test", "u_mgdl", 2),
    "sbp": (3004249, "8480-6", "Systolic blood pressure", "Clinical Observation", "u_mmhg", 0),
    "dbp": (3012888, "8462-4", "Diastolic blood pressure", "Clinical Observation", "u_mmhg", 0),
    "hr": (3027018, "8867-4", "Heart rate", "Clinical Observation", "u_min", 0),
    "cholesterol": (3027114, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "Lab Test", "u_mgdl", 0),
}
MEAS = {k: i for i, k in enumerate(_MEASUREMENTS)}
_UNIT_ID = {c[0]: c[1] for c in _CONCEPTS}
_UNIT_CODE = {c[0]: c[7] for c in _CONCEPTS}
MEAS_ID = np.array([v[0] for v in _MEASUREMENTS.values()], dtype=np.int32)
MEAS_UNIT_ID = np.array([_UNIT_ID[v[4]] for v in _MEASUREMENTS.values()], dtype=np.int32)
MEAS_UNIT_CODE = [_UNIT_CODE[v[4]] for v in _MEASUREMENTS.values()]
MEAS_CODE = [v[1] for v in _MEASUREMENTS.values()]
MEAS_SCALE = np.array([10.0 ** v[5] for v in _MEASUREMENTS.values()])

# Drugs (RxNorm ingredients): key -> (id, code, name, source value, days supply, quantity).
_DRUGS: dict[str, tuple[int, str, str, str, int, float]] = {
    "metformin": (1503297, "6809", "metformin", "metformin hydrochloride 500 MG Oral Tablet", 90, 180.0),
    "insulin": (1502905, "274783", "insulin glargine", "insulin glargine 100 UNT/ML Injectable Solution", 30, 15.0),
    "lisinopril": (1308216, "29046", "lisinopril", "lisinopril 10 MG Oral Tablet", 90, 90.0),
    "amlodipine": (1332418, "17767", "amlodipine", "amlodipine 5 MG Oral Tablet", 90, 90.0),
    "atorvastatin": (1545958, "83367", "atorvastatin", "atorvastatin 20 MG Oral Tablet", 90, 90.0),
    "omeprazole": (923645, "7646", "omeprazole", "omeprazole 20 MG Delayed Release Oral Capsule", 30, 30.0),
    "ibuprofen": (1177480, "5640", "ibuprofen", "ibuprofen 400 MG Oral Tablet", 10, 30.0),
    "sertraline": (739138, "36437", "sertraline", "sertraline 50 MG Oral Tablet", 30, 30.0),
    "albuterol": (1154343, "435", "albuterol", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", 30, 1.0),
}
DRUG = {k: i for i, k in enumerate(_DRUGS)}
DRUG_ID = np.array([v[0] for v in _DRUGS.values()], dtype=np.int32)
DRUG_SOURCE = [v[3] for v in _DRUGS.values()]
DRUG_DAYS = np.array([v[4] for v in _DRUGS.values()], dtype=np.int32)
DRUG_QTY = np.array([v[5] for v in _DRUGS.values()])

# Procedures (CPT4): key -> (id, code, name).
_PROCEDURES: dict[str, tuple[int, str, str]] = {
    "office_visit": (2_000_002_001, "99213", "Office or other outpatient visit for the evaluation and management of an established patient"),
    "cmp": (2_000_002_002, "80053", "Comprehensive metabolic panel"),
    "hba1c_test": (2_000_002_003, "83036", "Hemoglobin; glycosylated (A1C)"),
    "ct_abdomen": (2_000_002_004, "74177", "Computed tomography, abdomen and pelvis; with contrast material(s)"),
    "colonoscopy": (2_000_002_005, "45378", "Colonoscopy, flexible; diagnostic"),
    "dialysis": (2_000_002_006, "90935", "Hemodialysis procedure with single evaluation by a physician or other qualified health care professional"),
}
# fmt: on
PROC = {k: i for i, k in enumerate(_PROCEDURES)}
PROC_ID = np.array([v[0] for v in _PROCEDURES.values()], dtype=np.int32)
PROC_CODE = [v[1] for v in _PROCEDURES.values()]


def concept_rows() -> list[tuple]:
    """Every concept the generator uses, as concept-table rows (without valid dates)."""
    rows = [c[1:] for c in _CONCEPTS]
    for i, (sid, code, name, icd, icd_name) in enumerate(_CONDITIONS.values()):
        rows.append((sid, name, "Condition", "SNOMED", "Clinical Finding", "S", code))
        n = len(icd.replace(".", ""))
        klass = "3-char billing code" if n == 3 else f"{n}-char billing code"
        rows.append((int(COND_ICD10_ID[i]), icd_name, "Condition", "ICD10CM", klass, None, icd))
    for cid, code, name, klass, _, _ in _MEASUREMENTS.values():
        rows.append((cid, name, "Measurement", "LOINC", klass, "S", code))
    for cid, code, name, *_ in _DRUGS.values():
        rows.append((cid, name, "Drug", "RxNorm", "Ingredient", "S", code))
    for cid, code, name in _PROCEDURES.values():
        rows.append((cid, name, "Procedure", "CPT4", "CPT4", "S", code))
    return rows


# ---------------------------------------------------------------------------------------
# Output schema: table -> [(column, SQL type)], in write order; the first column orders rows.
# ---------------------------------------------------------------------------------------

TABLES: dict[str, list[tuple[str, str]]] = {
    "person": [
        ("person_id", "BIGINT"),
        ("gender_concept_id", "INTEGER"),
        ("year_of_birth", "INTEGER"),
        ("month_of_birth", "INTEGER"),
        ("day_of_birth", "INTEGER"),
        ("birth_datetime", "TIMESTAMP"),
        ("race_concept_id", "INTEGER"),
        ("ethnicity_concept_id", "INTEGER"),
        ("person_source_value", "VARCHAR"),
        ("gender_source_value", "VARCHAR"),
        ("patient_name", "VARCHAR"),
    ],
    "observation_period": [
        ("observation_period_id", "BIGINT"),
        ("person_id", "BIGINT"),
        ("observation_period_start_date", "DATE"),
        ("observation_period_end_date", "DATE"),
        ("period_type_concept_id", "INTEGER"),
    ],
    "visit_occurrence": [
        ("visit_occurrence_id", "BIGINT"),
        ("person_id", "BIGINT"),
        ("visit_concept_id", "INTEGER"),
        ("visit_start_date", "DATE"),
        ("visit_start_datetime", "TIMESTAMP"),
        ("visit_end_date", "DATE"),
        ("visit_end_datetime", "TIMESTAMP"),
        ("visit_type_concept_id", "INTEGER"),
        ("visit_source_value", "VARCHAR"),
    ],
    "condition_occurrence": [
        ("condition_occurrence_id", "BIGINT"),
        ("person_id", "BIGINT"),
        ("condition_concept_id", "INTEGER"),
        ("condition_start_date", "DATE"),
        ("condition_start_datetime", "TIMESTAMP"),
        ("condition_type_concept_id", "INTEGER"),
        ("visit_occurrence_id", "BIGINT"),
        ("condition_source_value", "VARCHAR"),
        ("condition_source_concept_id", "INTEGER"),
    ],
    "drug_exposure": [
        ("drug_exposure_id", "BIGINT"),
        ("person_id", "BIGINT"),
        ("drug_concept_id", "INTEGER"),
        ("drug_exposure_start_date", "DATE"),
        ("drug_exposure_start_datetime", "TIMESTAMP"),
        ("drug_exposure_end_date", "DATE"),
        ("drug_type_concept_id", "INTEGER"),
        ("quantity", "DOUBLE"),
        ("days_supply", "INTEGER"),
        ("visit_occurrence_id", "BIGINT"),
        ("drug_source_value", "VARCHAR"),
        ("drug_source_concept_id", "INTEGER"),
    ],
    "measurement": [
        ("measurement_id", "BIGINT"),
        ("person_id", "BIGINT"),
        ("measurement_concept_id", "INTEGER"),
        ("measurement_date", "DATE"),
        ("measurement_datetime", "TIMESTAMP"),
        ("measurement_type_concept_id", "INTEGER"),
        ("value_as_number", "DOUBLE"),
        ("unit_concept_id", "INTEGER"),
        ("unit_source_value", "VARCHAR"),
        ("visit_occurrence_id", "BIGINT"),
        ("measurement_source_value", "VARCHAR"),
        ("measurement_source_concept_id", "INTEGER"),
    ],
    "procedure_occurrence": [
        ("procedure_occurrence_id", "BIGINT"),
        ("person_id", "BIGINT"),
        ("procedure_concept_id", "INTEGER"),
        ("procedure_date", "DATE"),
        ("procedure_datetime", "TIMESTAMP"),
        ("procedure_type_concept_id", "INTEGER"),
        ("visit_occurrence_id", "BIGINT"),
        ("procedure_source_value", "VARCHAR"),
        ("procedure_source_concept_id", "INTEGER"),
    ],
    "death": [
        ("person_id", "BIGINT"),
        ("death_date", "DATE"),
        ("death_datetime", "TIMESTAMP"),
        ("death_type_concept_id", "INTEGER"),
        ("cause_concept_id", "INTEGER"),
    ],
    "concept": [
        ("concept_id", "INTEGER"),
        ("concept_name", "VARCHAR"),
        ("domain_id", "VARCHAR"),
        ("vocabulary_id", "VARCHAR"),
        ("concept_class_id", "VARCHAR"),
        ("standard_concept", "VARCHAR"),
        ("concept_code", "VARCHAR"),
        ("valid_start_date", "DATE"),
        ("valid_end_date", "DATE"),
        ("invalid_reason", "VARCHAR"),
    ],
    "concept_relationship": [
        ("concept_id_1", "INTEGER"),
        ("concept_id_2", "INTEGER"),
        ("relationship_id", "VARCHAR"),
        ("valid_start_date", "DATE"),
        ("valid_end_date", "DATE"),
        ("invalid_reason", "VARCHAR"),
    ],
}

_GIVEN_F = "Mary Linda Susan Karen Nancy Betty Helen Sandra Donna Carol Ruth Sharon Laura Sarah Kimberly Deborah Jessica Maria Anna Emily".split()
_GIVEN_M = "James John Robert Michael William David Richard Joseph Thomas Charles Daniel Matthew Anthony Mark Paul Steven Andrew Kenneth Joshua Kevin".split()
_FAMILY = "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Thompson White Harris Clark Lewis Robinson Walker Young Allen King".split()
_NAMES = [f"{g} {f}" for g in _GIVEN_M + _GIVEN_F for f in _FAMILY]


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def generate_network(out_dir: Path, people: int = 10_000, seed: int = 7) -> dict[str, Path]:
    """Write ``out_dir/<site>/omop.duckdb`` for every site in ``SITES``; return the paths.

    People are split by the sites' ``share`` (academic 40%, community 60%); each site
    gets its own seed derived from ``seed`` and the site name.
    """
    if people < len(SITES):
        raise ValueError(f"people must be at least {len(SITES)} (one per site); got {people}.")
    out_dir = Path(out_dir)
    total_share = sum(p.share for p in SITES.values())
    paths: dict[str, Path] = {}
    left = people
    for i, (site, profile) in enumerate(SITES.items()):
        n = left if i == len(SITES) - 1 else max(1, round(people * profile.share / total_share))
        left -= n
        path = out_dir / site / "omop.duckdb"
        generate_site(path, profile, n, site_seed(seed, site))
        paths[site] = path
    return paths


def site_seed(seed: int, site: str) -> int:
    """The seed a site gets in ``generate_network``: derived from the network seed and its name."""
    state = np.random.SeedSequence([seed, zlib.crc32(site.encode())]).generate_state(1, np.uint32)
    return int(state[0])


def generate_site(
    path: Path,
    profile: SiteProfile,
    people: int,
    seed: int,
    *,
    start: date = date(2015, 1, 1),
    end: date = date(2024, 12, 31),
) -> dict[str, int]:
    """Write one site's OMOP CDM tables to the DuckDB file ``path``; return rows per table.

    The file is built under a temporary name next to ``path`` and renamed when complete,
    replacing any file already there.
    """
    if people < 1:
        raise ValueError(f"people must be positive; got {people}.")
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start}).")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    for stale in (tmp, tmp.with_name(tmp.name + ".wal")):
        stale.unlink(missing_ok=True)
    window = (_day(start), _day(end))
    mrn_a, mrn_b = _mrn_key(seed)
    t0 = time.perf_counter()
    counts = dict.fromkeys(TABLES, 0)
    ids = {"visit": 0, "condition": 0, "drug": 0, "measurement": 0, "procedure": 0}
    con = duckdb.connect(str(tmp))
    try:
        con.execute("SET preserve_insertion_order = true")
        con.execute("SET memory_limit = '2GB'")  # bounds the buffer pool on large sites
        created: set[str] = set()
        n_chunks = -(-people // CHUNK_PEOPLE)
        for chunk in range(n_chunks):
            first = chunk * CHUNK_PEOPLE
            n = min(CHUNK_PEOPLE, people - first)
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, chunk])))
            frames = _simulate_chunk(rng, profile, n, first, window, ids, (mrn_a, mrn_b))
            frames["person"] = _with_race(frames["person"], profile, seed, chunk)
            for table, frame in frames.items():
                _write(con, table, frame, table in created)
                created.add(table)
                counts[table] += frame.num_rows
        concepts = _concept_table()
        _write(con, "concept", concepts, False)
        counts["concept"] = concepts.num_rows
        relationships = _concept_relationship_table()
        _write(con, "concept_relationship", relationships, False)
        counts["concept_relationship"] = relationships.num_rows
        con.execute("CHECKPOINT")
    finally:
        con.close()
    tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)
    os.replace(tmp, path)
    log.info(
        "demo site %s: %s people, %s rows in %.1f s -> %s",
        profile.name,
        f"{people:,}",
        f"{sum(counts.values()):,}",
        time.perf_counter() - t0,
        path,
    )
    return counts


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _write(con: duckdb.DuckDBPyConnection, table: str, frame: pa.Table, append: bool) -> None:
    cols = TABLES[table]
    select = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in cols)
    con.register("_chunk", frame)
    try:
        sql = f"SELECT {select} FROM _chunk ORDER BY {cols[0][0]}"
        if append:
            con.execute(f"INSERT INTO {table} {sql}")
        else:
            con.execute(f"CREATE TABLE {table} AS {sql}")
    finally:
        con.unregister("_chunk")


def _with_race(person: pa.Table, profile: SiteProfile, seed: int, chunk: int) -> pa.Table:
    """``person`` with race and ethnicity concepts drawn from their own stream (``[seed,
    chunk, RACE_STREAM]``), so that every other table is what it was before they were drawn."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, chunk, RACE_STREAM])))
    n = person.num_rows
    shares = np.asarray(profile.race_shares, float)
    race = np.asarray((*RACES, 0), np.int32)[rng.choice(len(RACES) + 1, n, p=[*shares, 1 - shares.sum()])]
    u = rng.random(n)
    hispanic = u < profile.hispanic_share
    unrecorded = u >= 1 - profile.ethnicity_unrecorded_share
    ethnicity = np.where(hispanic, HISPANIC, np.where(unrecorded, 0, NOT_HISPANIC)).astype(np.int32)
    for name, values in (("race_concept_id", race), ("ethnicity_concept_id", ethnicity)):
        person = person.set_column(person.schema.get_field_index(name), name, pa.array(values, pa.int32()))
    return person


RACE_STREAM = 0x7ACE


def _concept_table() -> pa.Table:
    rows = sorted(concept_rows(), key=lambda r: r[0])
    cols = list(zip(*rows, strict=True))
    n = len(rows)
    return pa.table(
        {
            "concept_id": pa.array(cols[0], pa.int32()),
            "concept_name": pa.array(cols[1], pa.string()),
            "domain_id": pa.array(cols[2], pa.string()),
            "vocabulary_id": pa.array(cols[3], pa.string()),
            "concept_class_id": pa.array(cols[4], pa.string()),
            "standard_concept": pa.array(cols[5], pa.string()),
            "concept_code": pa.array(cols[6], pa.string()),
            "valid_start_date": pa.array([date(1970, 1, 1)] * n, pa.date32()),
            "valid_end_date": pa.array([date(2099, 12, 31)] * n, pa.date32()),
            "invalid_reason": pa.nulls(n, pa.string()),
        }
    )


def _concept_relationship_table() -> pa.Table:
    """The vocabulary's "Maps to" rows: each ICD10CM condition concept to its standard
    SNOMED concept, as OHDSI's vocabularies have them (the community site's ETL writes
    ICD10CM concepts into ``condition_concept_id`` for some rows)."""
    n = len(COND_ICD10_ID)
    return pa.table(
        {
            "concept_id_1": pa.array(COND_ICD10_ID, pa.int32()),
            "concept_id_2": pa.array(COND_SNOMED_ID, pa.int32()),
            "relationship_id": pa.array(["Maps to"] * n, pa.string()),
            "valid_start_date": pa.array([date(1970, 1, 1)] * n, pa.date32()),
            "valid_end_date": pa.array([date(2099, 12, 31)] * n, pa.date32()),
            "invalid_reason": pa.nulls(n, pa.string()),
        }
    )


def _dates(days: np.ndarray) -> pa.Array:
    return pa.array(days.astype("datetime64[D]"))


def _stamps(seconds: np.ndarray) -> pa.Array:
    return pa.array(seconds.astype("datetime64[s]"))


def _strings(index: np.ndarray, values: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(
        pa.array(index.astype(np.int32)), pa.array(values, pa.string())
    )


def _day(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def _mrn_key(seed: int) -> tuple[int, int]:
    """An affine bijection of 0..10**8-1 (multiplier coprime to 10): unique 8-digit MRNs."""
    state = np.random.SeedSequence([seed, 0x4D524E]).generate_state(2, np.uint32)
    a = int(state[0]) % 10**8
    a = a - a % 10 + 7  # ends in 7: odd and not a multiple of 5
    return a, int(state[1]) % 10**8


# ---------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _uniform_days(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A uniform whole day in [lo, hi] (hi >= lo), elementwise."""
    return lo + np.floor(rng.random(lo.shape) * (hi - lo + 1)).astype(np.int64)


def _later(day: np.ndarray, years: np.ndarray) -> np.ndarray:
    """``day`` plus ``years`` (capped far in the future), in whole days."""
    return day + np.floor(np.minimum(years, 1000.0) * YEAR).astype(np.int64)


def _within_group_rank(counts: np.ndarray) -> np.ndarray:
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


class _People:
    """Per-person parameters of one chunk, and their latent values at (person, day)."""

    def __init__(self, rng: np.random.Generator, p: SiteProfile, n: int, window: tuple[int, int]):
        w0, w1 = window
        span = w1 - w0
        self.n = n
        self.female = rng.random(n) < p.female_share
        age0 = rng.normal(p.age_mean, p.age_sd, n)
        for _ in range(8):  # redraw out-of-range ages (a truncated normal)
            bad = (age0 < p.age_min) | (age0 > p.age_max)
            if not bad.any():
                break
            age0[bad] = rng.normal(p.age_mean, p.age_sd, int(bad.sum()))
        age0 = np.clip(age0, p.age_min, p.age_max)
        self.birth = w0 - np.floor(age0 * YEAR).astype(np.int64) - 1
        late = rng.random(n) < p.late_entry_share
        s = np.where(
            late,
            w0 + np.floor(rng.random(n) * max(0.0, min(span - 365, 8 * YEAR))).astype(np.int64),
            w0,
        )
        self.s = s
        self.age_s = (s - self.birth) / YEAR
        lost = rng.random(n) < p.lost_share
        ltfu = np.where(lost, _uniform_days(rng, s + 90, np.maximum(s + 90, w1 - 1)), w1)

        self.height = np.where(self.female, rng.normal(1.62, 0.065, n), rng.normal(1.76, 0.07, n))
        sd = 0.19
        self.bmi0 = np.clip(np.exp(rng.normal(np.log(p.bmi_mean) - sd * sd / 2, sd, n)), 16.0, 60.0)
        self.bmi_drift = rng.normal(0.1, 0.15, n)  # kg/m2 per year
        u = rng.normal(0.0, 1.0, n)  # family-type random effect
        age = self.age_s

        # Type 2 diabetes.
        z = 0.045 * (age - 50) + 0.10 * (self.bmi0 - 28) + 0.7 * u + np.log(p.t2d_risk)
        prevalent = rng.random(n) < _sigmoid(-5.0 + z)
        incident_day = _later(s, rng.exponential(1.0, n) / np.exp(-4.3 + z))
        t2d = np.where(prevalent, _uniform_days(rng, s, s + 364), np.minimum(incident_day, NEVER))
        ramp = np.where(prevalent, rng.uniform(2.0, 5.0, n), rng.uniform(1.0, 3.0, n))
        self.a1c0 = np.clip(
            5.25 + 0.006 * (age - 50) + 0.02 * (self.bmi0 - 28) + 0.1 * u + rng.normal(0, 0.17, n),
            4.5,
            6.2,
        )
        self.a1c_peak = 6.6 + rng.gamma(2.0, 0.35, n)
        self.a1c_drop = rng.uniform(0.4, 1.2, n)
        self.bmi_gain = rng.uniform(0.5, 2.5, n)
        self.glucose_offset = rng.normal(0, 5, n)

        # Pancreatic cancer (hazard from the start of observation; no prevalent cases).
        diabetic = t2d < s + 365
        h_pc = (
            PANCREATIC_CANCER_HAZARD_65
            * p.cancer_risk
            * np.exp(0.07 * (age - 65))
            * np.where(diabetic, 2.0, 1.0)
        )
        pc = _later(s + 180, rng.exponential(1.0, n) / h_pc)
        pc = np.minimum(pc, NEVER)
        has_pc = pc <= w1
        # New-onset diabetes in the year before the cancer, for some.
        new_onset = has_pc & (t2d > pc - 90) & (rng.random(n) < 0.35)
        t2d = np.where(new_onset, np.maximum(pc - rng.integers(90, 300, n), s + 30), t2d)
        ramp = np.where(new_onset, rng.uniform(0.3, 0.6, n), ramp)
        prevalent &= ~new_onset
        self.pc_loss_window = np.floor(rng.uniform(0.25, 0.75, n) * YEAR).astype(np.int64)
        self.pc_loss = rng.uniform(0.05, 0.15, n)
        pc_death = np.where(
            rng.random(n) < 0.85,
            pc + 14 + np.floor(rng.exponential(270, n)).astype(np.int64),
            NEVER,
        )

        # Hypertension.
        self.sbp0 = 112 + 0.5 * (age - 40) + 0.7 * (self.bmi0 - 27) + rng.normal(0, 12, n)
        prev_htn = (self.sbp0 >= 140) & (rng.random(n) < 0.85)
        h_htn = np.exp(-3.2 + 0.05 * (self.sbp0 - 125) + 0.01 * (age - 50)) * p.htn_risk
        htn_inc = _later(s, rng.exponential(1.0, n) / h_htn)
        htn = np.where(prev_htn, _uniform_days(rng, s, s + 364), np.minimum(htn_inc, NEVER))
        self.htn_ramp = np.floor(rng.uniform(1.0, 3.0, n) * YEAR).astype(np.int64)
        self.htn_rise = np.where(prev_htn, 0.0, np.maximum(0.0, 147 - self.sbp0))
        self.htn_treat = np.where(rng.random(n) < 0.9, rng.uniform(8, 18, n), 0.0)
        self.sbp_slope = rng.normal(0.3, 0.3, n)
        self.dbp_offset = rng.normal(0, 5, n)
        self.hr0 = rng.normal(73, 8, n)

        # Hyperlipidaemia.
        self.chol0 = 180 + 0.6 * (age - 40) + 0.8 * (self.bmi0 - 27) + rng.normal(0, 30, n)
        prev_hld = (self.chol0 >= 240) & (rng.random(n) < 0.7)
        h_hld = np.exp(-4.0 + 0.025 * (self.chol0 - 200)) * p.hld_risk
        hld_inc = _later(s, rng.exponential(1.0, n) / h_hld)
        hld = np.where(prev_hld, _uniform_days(rng, s, s + 364), np.minimum(hld_inc, NEVER))
        self.chol_rise = np.where(prev_hld, 0.0, np.maximum(0.0, 248 - self.chol0))
        self.statin = rng.random(n) < 0.8

        # CKD: a linear eGFR decline, steeper for fast decliners.
        self.egfr0 = np.clip(118 - 0.85 * (age - 30) + rng.normal(0, 12, n), 20, 140)
        ever_t2d, ever_htn = t2d <= w1, htn <= w1
        fast = rng.random(n) < _sigmoid(
            -3.0 + 1.4 * ever_t2d + 0.9 * ever_htn + 0.03 * (age - 60) + np.log(p.ckd_risk)
        )
        self.egfr_slope = 0.9 + fast * rng.uniform(2.5, 7.0, n)  # mL/min/1.73m2 per year

        def crossing(level: float) -> np.ndarray:
            years = (self.egfr0 - level) / self.egfr_slope
            return np.where(years <= 0, s, s + np.floor(years * YEAR).astype(np.int64))

        t60, t30, t15 = crossing(60), crossing(30), crossing(15)
        ckd3 = np.where(t60 == s, _uniform_days(rng, s, s + 364), t60 + rng.integers(60, 540, n))
        ckd3 = np.where(
            rng.random(n) < 0.85, ckd3, ckd3 + rng.integers(365, 1500, n)
        )  # some coded late
        ckd4 = np.maximum(t30 + rng.integers(60, 365, n), ckd3 + 30)
        dialysis = np.where(
            rng.random(n) < 0.7, np.maximum(t15 + rng.integers(0, 120, n), ckd4), NEVER
        )

        # Death: Gompertz all-cause mortality raised by comorbidity, or the cancer.
        ever_ckd = t60 <= w1
        mult = p.death_risk * np.exp(0.45 * ever_t2d + 0.6 * ever_ckd + 0.15 * ever_htn)
        a_g, b_g = 2.5e-5, 0.085
        age_death = np.log(np.exp(b_g * age) + b_g * rng.exponential(1.0, n) / (a_g * mult)) / b_g
        death = s + np.maximum(1, np.floor((age_death - age) * YEAR)).astype(np.int64)
        death = np.minimum(np.minimum(death, pc_death), NEVER)
        censor = np.minimum(ltfu, w1)
        self.died = death <= censor
        self.death = np.where(self.died, death, NEVER)
        self.obs_end = np.where(self.died, death, censor)
        self.last = self.obs_end - self.died  # last day with events: before the death day

        def seen(day: np.ndarray) -> np.ndarray:
            return np.where(day <= self.last, day, NEVER)

        self.t2d, self.t2d_ramp = seen(t2d), np.floor(ramp * YEAR).astype(np.int64)
        self.t2d_true = t2d
        self.prevalent_t2d = prevalent & (self.t2d < NEVER)
        self.htn_true, self.htn = htn, seen(htn)
        self.hld_true, self.hld = hld, seen(hld)
        self.pc_true, self.pc = pc, seen(pc)
        self.ckd3, self.ckd4, self.dialysis = seen(ckd3), seen(ckd4), seen(dialysis)
        self.metformin = rng.random(n) < 0.88
        self.insulin = seen(
            np.where(rng.random(n) < 0.2, t2d + rng.integers(365, 4 * 365, n), NEVER)
        )
        first_bp = rng.random(n) < 0.6
        second = rng.random(n) < 0.3
        second_day = htn + rng.integers(365, 3 * 365, n)
        self.lisinopril = np.where(first_bp, htn, np.where(second, second_day, NEVER))
        self.amlodipine = np.where(first_bp, np.where(second, second_day, NEVER), htn)
        # Unrelated chronic conditions: osteoarthritis, low back pain, depression, asthma, GERD.
        older = np.clip((age - 30) / 40, 0, 1)
        probs = np.stack(
            [
                0.04 + 0.14 * older,
                np.full(n, 0.10),
                np.full(n, 0.09),
                np.full(n, 0.07),
                np.full(n, 0.10),
            ],
            axis=1,
        )
        self.chronic_noise = rng.random((n, 5)) < probs
        self.frailty = rng.gamma(2.0, 0.5, n)
        # Prediabetes codes: 6-24 months before diabetes for some cases (PREDIABETES_CASE_SHARE),
        # and at a random time for half the people with a high-normal HbA1c who never develop it
        # in the window, so that about a quarter of coded people progress within two years (real
        # coded prediabetes progresses at roughly 5-10% a year; the demo is enriched, not certain).
        pre_case = (
            (self.t2d < NEVER)
            & ~self.prevalent_t2d
            & ~new_onset
            & (rng.random(n) < PREDIABETES_CASE_SHARE)
        )
        pre_day = np.where(pre_case, self.t2d - rng.integers(180, 730, n), NEVER)
        pre_noise = (
            (self.t2d == NEVER)
            & (self.a1c0 >= PREDIABETES_NOISE_A1C)
            & (rng.random(n) < PREDIABETES_NOISE_SHARE)
        )
        pre_day = np.where(pre_noise, _uniform_days(rng, s, np.maximum(s, self.last)), pre_day)
        self.prediabetes = np.where(pre_day >= s, seen(pre_day), NEVER)

    # Latent trajectories, evaluated at visit days (pid indexes the chunk's people).
    def a1c(self, pid: np.ndarray, day: np.ndarray) -> np.ndarray:
        d, ramp = self.t2d_true[pid], self.t2d_ramp[pid]
        base = self.a1c0[pid] + 0.015 * (day - self.s[pid]) / YEAR
        x = np.clip((day - (d - ramp)) / ramp, 0.0, 1.0)
        pre = base + np.maximum(self.a1c_peak[pid] - base, 0) * x**1.5
        since = np.maximum(day - d, 0)
        post = (
            self.a1c_peak[pid]
            - self.a1c_drop[pid] * (1 - np.exp(-since / 90))
            + 0.08 * since / YEAR
        )
        return np.where(day >= d, post, pre)

    def bmi(self, pid: np.ndarray, day: np.ndarray) -> np.ndarray:
        d, ramp = self.t2d_true[pid], self.t2d_ramp[pid]
        x = np.clip((day - (d - ramp)) / ramp, 0.0, 1.0)
        after = np.clip((day - d) / YEAR, 0.0, 1.0)
        value = self.bmi0[pid] + self.bmi_drift[pid] * (day - self.s[pid]) / YEAR
        value = value + self.bmi_gain[pid] * x - 0.5 * after
        w = self.pc_loss_window[pid]
        lost = np.clip((day - (self.pc_true[pid] - w)) / w, 0.0, 1.5)
        return np.maximum(value * (1 - self.pc_loss[pid] * lost), 14.0)

    def sbp(self, pid: np.ndarray, day: np.ndarray) -> np.ndarray:
        d, ramp = self.htn_true[pid], self.htn_ramp[pid]
        x = np.clip((day - (d - ramp)) / ramp, 0.0, 1.0)
        value = (
            self.sbp0[pid]
            + self.sbp_slope[pid] * (day - self.s[pid]) / YEAR
            + self.htn_rise[pid] * x
        )
        treated = np.clip((day - d) / 90, 0.0, 1.0) * self.htn_treat[pid]
        return value - treated

    def cholesterol(self, pid: np.ndarray, day: np.ndarray) -> np.ndarray:
        d = self.hld_true[pid]
        x = np.clip((day - (d - 730)) / 730, 0.0, 1.0)
        value = self.chol0[pid] + self.chol_rise[pid] * x
        return np.where((day >= d + 30) & self.statin[pid], value * 0.72, value)

    def egfr(self, pid: np.ndarray, day: np.ndarray) -> np.ndarray:
        years = (day - self.s[pid]) / YEAR
        return np.maximum(self.egfr0[pid] - self.egfr_slope[pid] * years, 6.0)


# Visit kinds.
(
    ROUTINE,
    FOLLOWUP,
    DX_T2D,
    DX_PRED,
    DX_HTN,
    DX_HLD,
    DX_CKD3,
    DX_CKD4,
    PC_WEIGHT,
    PC_PAIN,
    PC_DX,
    ER_NOISE,
    IP_NOISE,
    DIALYSIS,
) = range(14)
_ACUTE = np.array(
    [COND["uri"], COND["uti"], COND["headache"], COND["abdominal_pain"], COND["low_back_pain"]]
)
_CHRONIC_NOISE = np.array(
    [
        COND["osteoarthritis"],
        COND["low_back_pain"],
        COND["depression"],
        COND["asthma"],
        COND["gerd"],
    ]
)
_CHRONIC_NOISE_DRUG = np.array(
    [
        DRUG["ibuprofen"],
        DRUG["ibuprofen"],
        DRUG["sertraline"],
        DRUG["albuterol"],
        DRUG["omeprazole"],
    ]
)


def _simulate_chunk(
    rng: np.random.Generator,
    p: SiteProfile,
    n: int,
    first: int,
    window: tuple[int, int],
    ids: dict[str, int],
    mrn_key: tuple[int, int],
) -> dict[str, pa.Table]:
    P = _People(rng, p, n, window)
    person_id = np.arange(first + 1, first + n + 1, dtype=np.int64)

    # ---- visits ------------------------------------------------------------------
    pids: list[np.ndarray] = []
    days: list[np.ndarray] = []
    kinds: list[np.ndarray] = []

    def add(pid: np.ndarray, day: np.ndarray, kind: int) -> None:
        pids.append(pid.astype(np.int64))
        days.append(day.astype(np.int64))
        kinds.append(np.full(pid.size, kind, np.int8))

    everyone = np.arange(n)

    def poisson_visits(rate: np.ndarray, lo: np.ndarray, kind: int) -> None:
        ok = lo <= P.last
        dur = np.where(ok, (P.last - lo + 1) / YEAR, 0.0)
        counts = rng.poisson(rate * dur)
        pid = np.repeat(everyone, counts)
        add(pid, _uniform_days(rng, lo[pid], P.last[pid]), kind)

    age_factor = np.exp(0.012 * (P.age_s - 50))
    poisson_visits(p.outpatient_rate * P.frailty * age_factor, P.s, ROUTINE)
    for dx, rate in ((P.t2d, 0.7), (P.htn, 0.3), (P.ckd3, 0.7), (P.hld, 0.2), (P.pc, 5.0)):
        poisson_visits(np.full(n, rate), np.minimum(dx + 1, NEVER), FOLLOWUP)
    comorbid = 1 + 0.5 * ((P.t2d < NEVER).astype(float) + (P.ckd3 < NEVER) + (P.htn < NEVER))
    poisson_visits(p.er_rate * P.frailty, P.s, ER_NOISE)
    poisson_visits(p.ip_rate * P.frailty * comorbid, P.s, IP_NOISE)
    for dx, kind in (
        (P.t2d, DX_T2D),
        (P.prediabetes, DX_PRED),
        (P.htn, DX_HTN),
        (P.hld, DX_HLD),
        (P.ckd3, DX_CKD3),
        (P.ckd4, DX_CKD4),
        (P.pc, PC_DX),
    ):
        has = dx < NEVER
        add(everyone[has], dx[has], kind)
    # Pancreatic cancer prodrome: a weight-loss visit and 1-3 abdominal-pain visits.
    has_pc = P.pc < NEVER
    wl = has_pc & (rng.random(n) < 0.6)
    wl_day = P.pc - rng.integers(30, 180, n)
    wl &= wl_day >= P.s
    add(everyone[wl], wl_day[wl], PC_WEIGHT)
    n_pain = np.where(has_pc, rng.integers(1, 4, n), 0)
    pid = np.repeat(everyone, n_pain)
    pain_day = P.pc[pid] - rng.integers(14, 270, pid.size)
    keep = pain_day >= P.s[pid]
    add(pid[keep], pain_day[keep], PC_PAIN)
    # Dialysis: monthly sessions from its start.
    dial = P.dialysis < NEVER
    n_dial = np.where(dial, np.minimum((P.last - P.dialysis) // 30 + 1, 60), 0)
    pid = np.repeat(everyone, n_dial)
    add(pid, P.dialysis[pid] + 30 * _within_group_rank(n_dial), DIALYSIS)

    v_pid = np.concatenate(pids)
    v_day = np.concatenate(days)
    v_kind = np.concatenate(kinds)
    nv = v_pid.size
    # Visit concept.
    pain_er = rng.random(nv) < 0.6
    dx_ip = rng.random(nv) < 0.6
    v_type = np.zeros(nv, np.int8)  # 0 outpatient, 1 inpatient, 2 ER
    v_type[(v_kind == ER_NOISE) | ((v_kind == PC_PAIN) & pain_er)] = 2
    v_type[(v_kind == IP_NOISE) | ((v_kind == PC_DX) & dx_ip)] = 1
    # Clock times: outpatient 08:00-17:00 in 15-minute slots, ER any time, admissions 06-22h.
    minute = np.select(
        [v_type == 0, v_type == 2],
        [480 + 15 * rng.integers(0, 37, nv), rng.integers(0, 1440, nv)],
        360 + rng.integers(0, 960, nv),
    )
    v_start = v_day * DAY_S + minute * 60
    length = np.select(
        [v_type == 0, v_type == 2],
        [rng.integers(15, 61, nv) * 60, rng.integers(120, 481, nv) * 60],
        (1 + rng.geometric(0.3, nv)) * DAY_S + rng.integers(-240, 240, nv) * 60,
    )
    end_limit = np.where(
        P.died, P.death * DAY_S + 60 * rng.integers(0, 1440, n), P.obs_end * DAY_S + DAY_S - 1
    )
    death_seconds = end_limit  # for decedents: the time of death
    v_end = np.maximum(np.minimum(v_start + length, end_limit[v_pid]), v_start)

    order = np.lexsort((v_kind, v_start, v_pid))
    v_pid, v_day, v_kind, v_type, v_start, v_end = (
        a[order] for a in (v_pid, v_day, v_kind, v_type, v_start, v_end)
    )
    v_id = ids["visit"] + 1 + np.arange(nv, dtype=np.int64)
    ids["visit"] += nv
    is_op, is_ip, is_er = v_type == 0, v_type == 1, v_type == 2
    clinic = is_op & (v_kind != DIALYSIS)

    # ---- latent values at visits ---------------------------------------------------
    def u() -> np.ndarray:
        return rng.random(nv)

    age_v = (v_day - P.birth[v_pid]) / YEAR
    a1c = P.a1c(v_pid, v_day)
    bmi = P.bmi(v_pid, v_day)
    post = {
        name: v_day >= getattr(P, name)[v_pid]
        for name in ("t2d", "htn", "hld", "ckd3", "ckd4", "pc", "insulin")
    }
    post["lisinopril"] = v_day >= P.lisinopril[v_pid]
    post["amlodipine"] = v_day >= P.amlodipine[v_pid]

    cond_v: list[np.ndarray] = []
    cond_k: list[np.ndarray] = []
    drug_v: list[np.ndarray] = []
    drug_k: list[np.ndarray] = []
    meas_v: list[np.ndarray] = []
    meas_k: list[np.ndarray] = []
    meas_x: list[np.ndarray] = []
    proc_v: list[np.ndarray] = []
    proc_k: list[np.ndarray] = []

    def cond(mask: np.ndarray, k: np.ndarray | int) -> None:
        idx = np.flatnonzero(mask)
        cond_v.append(idx)
        cond_k.append(
            np.broadcast_to(np.asarray(k)[mask] if np.ndim(k) else k, idx.shape).astype(np.int16)
        )

    def drug(mask: np.ndarray, k: np.ndarray | int) -> None:
        idx = np.flatnonzero(mask)
        drug_v.append(idx)
        drug_k.append(
            np.broadcast_to(np.asarray(k)[mask] if np.ndim(k) else k, idx.shape).astype(np.int16)
        )

    def proc(mask: np.ndarray, k: int) -> None:
        idx = np.flatnonzero(mask)
        proc_v.append(idx)
        proc_k.append(np.full(idx.size, k, np.int16))

    def meas(mask: np.ndarray, k: int, value: np.ndarray) -> None:
        idx = np.flatnonzero(mask)
        meas_v.append(idx)
        meas_k.append(np.full(idx.size, k, np.int16))
        meas_x.append(np.round(value[idx] * MEAS_SCALE[k]) / MEAS_SCALE[k])

    # ---- conditions ----------------------------------------------------------------
    for kind, key in (
        (DX_T2D, "t2d"),
        (DX_PRED, "prediabetes"),
        (DX_HTN, "htn"),
        (DX_HLD, "hld"),
        (DX_CKD3, "ckd3"),
        (DX_CKD4, "ckd4"),
        (PC_DX, "pancreatic_cancer"),
        (PC_WEIGHT, "weight_loss"),
        (PC_PAIN, "abdominal_pain"),
    ):
        cond(v_kind == kind, COND[key])
    cond((v_kind == PC_DX) & (u() < 0.4), COND["abdominal_pain"])
    cond((v_kind == PC_DX) & (u() < 0.3), COND["weight_loss"])
    routine = clinic & (v_kind <= FOLLOWUP) | is_ip
    recorded = routine & ~np.isin(v_kind, [DX_T2D, DX_HTN, DX_HLD, DX_CKD3, DX_CKD4, PC_DX])
    cond(recorded & (v_day > P.t2d[v_pid]) & (u() < 0.6), COND["t2d"])
    cond(recorded & (v_day > P.htn[v_pid]) & (u() < 0.5), COND["htn"])
    cond(recorded & (v_day > P.hld[v_pid]) & (u() < 0.35), COND["hld"])
    ckd_key = np.where(post["ckd4"], COND["ckd4"], COND["ckd3"])
    cond(recorded & (v_day > P.ckd3[v_pid]) & (u() < 0.45), ckd_key)
    cond(recorded & (v_day > P.pc[v_pid]) & (u() < 0.8), COND["pancreatic_cancer"])
    cond(routine & (bmi >= 30) & (u() < 0.12), COND["obesity"])
    # Unrelated chronic conditions at routine visits, with their drugs.
    for j in range(5):
        coded = clinic & (v_kind == ROUTINE) & P.chronic_noise[v_pid, j] & (u() < 0.3)
        cond(coded, int(_CHRONIC_NOISE[j]))
        drug(coded & (u() < 0.5), int(_CHRONIC_NOISE_DRUG[j]))
    # Acute problems: some routine visits, every ER visit, inpatient stays.
    acute = np.where(
        is_ip,
        rng.choice(_ACUTE[:4], nv, p=[0.4, 0.3, 0.0, 0.3]),
        rng.choice(_ACUTE, nv, p=[0.35, 0.2, 0.15, 0.15, 0.15]),
    )
    has_acute = (
        ((v_kind == ROUTINE) & clinic & (u() < 0.08)) | (v_kind == ER_NOISE) | (v_kind == IP_NOISE)
    )
    cond(has_acute, acute)
    cond(clinic & (v_kind == ROUTINE) & (u() < 0.003), COND["weight_loss"])
    drug(
        has_acute & np.isin(acute, [COND["headache"], COND["low_back_pain"]]) & (u() < 0.4),
        DRUG["ibuprofen"],
    )

    # ---- drugs ---------------------------------------------------------------------
    prescribing = clinic
    drug(prescribing & post["t2d"] & P.metformin[v_pid] & (u() < 0.85), DRUG["metformin"])
    drug(prescribing & post["insulin"] & (u() < 0.85), DRUG["insulin"])
    drug(prescribing & post["htn"] & post["lisinopril"] & (u() < 0.75), DRUG["lisinopril"])
    drug(prescribing & post["htn"] & post["amlodipine"] & (u() < 0.75), DRUG["amlodipine"])
    drug(prescribing & post["hld"] & P.statin[v_pid] & (u() < 0.75), DRUG["atorvastatin"])

    # ---- measurements ---------------------------------------------------------------
    forced_labs = np.isin(v_kind, [DX_T2D, DX_PRED, DX_CKD3, DX_CKD4, PC_DX, DIALYSIS])
    labs = (
        is_ip
        | (is_er & (u() < 0.6))
        | (clinic & (u() < min(1.0, 0.2 * p.lab_rate)))
        | (clinic & post["t2d"] & (u() < 0.3))
        | (clinic & post["ckd3"] & (u() < 0.3))
        | forced_labs
    )
    egfr = P.egfr(v_pid, v_day)
    egfr_m = np.clip(egfr * np.exp(rng.normal(0, 0.06, nv)), 3, 150)
    k_sex = np.where(P.female[v_pid], 0.72, 0.93)
    creat = k_sex * (egfr / 100) ** (-1 / 1.1) * np.exp(rng.normal(0, 0.05, nv))
    meas(labs, MEAS["creatinine"], creat)
    meas(labs, MEAS["egfr"], egfr_m)
    glucose = 90 + 32 * (a1c - 5.4) + P.glucose_offset[v_pid] + rng.normal(0, 8, nv)
    meas(labs & (v_kind != DIALYSIS), MEAS["glucose"], np.maximum(glucose, 50))
    p_a1c = np.where(post["t2d"], 0.85, np.where((age_v >= 45) | (bmi >= 30), 0.4, 0.25))
    a1c_drawn = (
        (labs & (v_kind != DIALYSIS) & (u() < p_a1c)) | (v_kind == DX_T2D) | (v_kind == DX_PRED)
    )
    a1c_drawn |= clinic & post["t2d"] & (u() < 0.3)
    meas(a1c_drawn, MEAS["hba1c"], np.clip(a1c + rng.normal(0, 0.15, nv), 4.0, 15.0))
    chol_drawn = (labs & (u() < 0.3)) | (v_kind == DX_HLD) | (clinic & post["hld"] & (u() < 0.2))
    chol = P.cholesterol(v_pid, v_day) + rng.normal(0, 12, nv)
    meas(chol_drawn, MEAS["cholesterol"], np.maximum(chol, 90))
    vitals = (clinic & (u() < 0.55)) | (is_er & (u() < 0.9)) | is_ip | (v_kind == DX_HTN)
    sbp = P.sbp(v_pid, v_day) + rng.normal(0, 8, nv)
    dbp = 0.5 * sbp + 16 + P.dbp_offset[v_pid] + rng.normal(0, 5, nv)
    meas(vitals, MEAS["sbp"], np.clip(sbp, 80, 230))
    meas(vitals, MEAS["dbp"], np.clip(dbp, 40, 140))
    meas(vitals & (u() < 0.6), MEAS["hr"], np.clip(P.hr0[v_pid] + rng.normal(0, 7, nv), 40, 160))
    weighed = ((clinic | is_ip) & vitals & (u() < 0.6)) | (v_kind == PC_WEIGHT) | (v_kind == PC_DX)
    height2 = P.height[v_pid] ** 2
    weight = bmi * height2 + rng.normal(0, 0.8, nv)
    meas(weighed, MEAS["weight"], weight)
    meas(weighed & (u() < 0.7), MEAS["bmi"], weight / height2)

    # ---- procedures ------------------------------------------------------------------
    proc(clinic & (u() < 0.45), PROC["office_visit"])
    proc(labs & (u() < 0.6), PROC["cmp"])
    proc(a1c_drawn, PROC["hba1c_test"])
    abd = has_acute & (acute == COND["abdominal_pain"])
    proc(
        ((v_kind == PC_DX) & (u() < 0.95))
        | ((v_kind == PC_PAIN) & (u() < 0.3))
        | (abd & (u() < 0.2)),
        PROC["ct_abdomen"],
    )
    proc(
        clinic & (v_kind == ROUTINE) & (age_v >= 50) & (age_v <= 75) & (u() < 0.012),
        PROC["colonoscopy"],
    )
    proc(v_kind == DIALYSIS, PROC["dialysis"])

    # ---- frames -------------------------------------------------------------------------
    frames: dict[str, pa.Table] = {}
    female = P.female
    birth_days = P.birth.astype("datetime64[D]")
    y = birth_days.astype("datetime64[Y]")
    m = birth_days.astype("datetime64[M]")
    birth_s = P.birth * DAY_S + 60 * rng.integers(0, 1440, n)
    name_idx = np.where(female, len(_GIVEN_M), 0) * len(_FAMILY)
    name_idx = (
        name_idx
        + rng.integers(0, len(_GIVEN_F), n) * len(_FAMILY)
        + rng.integers(0, len(_FAMILY), n)
    )
    a, b = mrn_key
    mrn = (a * (person_id - 1) + b) % 10**8
    frames["person"] = pa.table(
        {
            "person_id": person_id,
            "gender_concept_id": np.where(female, FEMALE, MALE).astype(np.int32),
            "year_of_birth": (y.astype(np.int64) + 1970).astype(np.int32),
            "month_of_birth": (m.astype(np.int64) % 12 + 1).astype(np.int32),
            "day_of_birth": ((birth_days - m).astype(np.int64) + 1).astype(np.int32),
            "birth_datetime": _stamps(birth_s),
            "race_concept_id": np.zeros(n, np.int32),
            "ethnicity_concept_id": np.zeros(n, np.int32),
            "person_source_value": pa.array(np.char.add("MRN", np.char.zfill(mrn.astype("U8"), 8))),
            "gender_source_value": _strings(female.astype(np.int32), ["M", "F"]),
            "patient_name": _strings(name_idx, _NAMES),
        }
    )
    frames["observation_period"] = pa.table(
        {
            "observation_period_id": person_id,
            "person_id": person_id,
            "observation_period_start_date": _dates(P.s),
            "observation_period_end_date": _dates(P.obs_end),
            "period_type_concept_id": np.full(n, EHR, np.int32),
        }
    )
    type_ids = np.array([OUTPATIENT, INPATIENT, EMERGENCY], np.int32)
    frames["visit_occurrence"] = pa.table(
        {
            "visit_occurrence_id": v_id,
            "person_id": person_id[v_pid],
            "visit_concept_id": type_ids[v_type],
            "visit_start_date": _dates(v_day),
            "visit_start_datetime": _stamps(v_start),
            "visit_end_date": _dates(v_end // DAY_S),
            "visit_end_datetime": _stamps(v_end),
            "visit_type_concept_id": np.full(nv, EHR, np.int32),
            "visit_source_value": _strings(v_type, list(p.visit_source_values)),
        }
    )

    def events(vs: list[np.ndarray], ks: list[np.ndarray], *extra: list[np.ndarray]):
        v = np.concatenate(vs) if vs else np.zeros(0, np.int64)
        k = np.concatenate(ks) if ks else np.zeros(0, np.int16)
        order = np.lexsort((k, v))
        return v[order], k[order], *(np.concatenate(e)[order] for e in extra)

    cv, ck = events(cond_v, cond_k)
    nc = cv.size
    icd = rng.random(nc) < p.icd10_share
    frames["condition_occurrence"] = pa.table(
        {
            "condition_occurrence_id": _next_ids(ids, "condition", nc),
            "person_id": person_id[v_pid[cv]],
            "condition_concept_id": np.where(icd, COND_ICD10_ID[ck], COND_SNOMED_ID[ck]),
            "condition_start_date": _dates(v_day[cv]),
            "condition_start_datetime": _stamps(v_start[cv]),
            "condition_type_concept_id": np.full(nc, EHR, np.int32),
            "visit_occurrence_id": v_id[cv],
            "condition_source_value": _strings(ck, COND_ICD10_CODE),
            "condition_source_concept_id": COND_ICD10_ID[ck],
        }
    )
    dv, dk = events(drug_v, drug_k)
    nd = dv.size
    supply = DRUG_DAYS[dk]
    frames["drug_exposure"] = pa.table(
        {
            "drug_exposure_id": _next_ids(ids, "drug", nd),
            "person_id": person_id[v_pid[dv]],
            "drug_concept_id": DRUG_ID[dk],
            "drug_exposure_start_date": _dates(v_day[dv]),
            "drug_exposure_start_datetime": _stamps(v_start[dv]),
            "drug_exposure_end_date": _dates(
                np.minimum(v_day[dv] + supply - 1, P.obs_end[v_pid[dv]])
            ),
            "drug_type_concept_id": np.full(nd, EHR_PRESCRIPTION, np.int32),
            "quantity": DRUG_QTY[dk],
            "days_supply": supply,
            "visit_occurrence_id": v_id[dv],
            "drug_source_value": _strings(dk, DRUG_SOURCE),
            "drug_source_concept_id": DRUG_ID[dk],
        }
    )
    mv, mk, mx = events(meas_v, meas_k, meas_x)
    nm = mv.size
    frames["measurement"] = pa.table(
        {
            "measurement_id": _next_ids(ids, "measurement", nm),
            "person_id": person_id[v_pid[mv]],
            "measurement_concept_id": MEAS_ID[mk],
            "measurement_date": _dates(v_day[mv]),
            "measurement_datetime": _stamps(v_start[mv]),
            "measurement_type_concept_id": np.full(nm, EHR, np.int32),
            "value_as_number": mx,
            "unit_concept_id": MEAS_UNIT_ID[mk],
            "unit_source_value": _strings(mk, MEAS_UNIT_CODE),
            "visit_occurrence_id": v_id[mv],
            "measurement_source_value": _strings(mk, MEAS_CODE),
            "measurement_source_concept_id": MEAS_ID[mk],
        }
    )
    pv, pk = events(proc_v, proc_k)
    npr = pv.size
    frames["procedure_occurrence"] = pa.table(
        {
            "procedure_occurrence_id": _next_ids(ids, "procedure", npr),
            "person_id": person_id[v_pid[pv]],
            "procedure_concept_id": PROC_ID[pk],
            "procedure_date": _dates(v_day[pv]),
            "procedure_datetime": _stamps(v_start[pv]),
            "procedure_type_concept_id": np.full(npr, EHR, np.int32),
            "visit_occurrence_id": v_id[pv],
            "procedure_source_value": _strings(pk, PROC_CODE),
            "procedure_source_concept_id": PROC_ID[pk],
        }
    )
    dead = np.flatnonzero(P.died)
    cancer_death = P.pc[dead] < NEVER
    frames["death"] = pa.table(
        {
            "person_id": person_id[dead],
            "death_date": _dates(P.death[dead]),
            "death_datetime": _stamps(death_seconds[dead]),
            "death_type_concept_id": np.full(dead.size, EHR, np.int32),
            "cause_concept_id": np.where(
                cancer_death, COND_SNOMED_ID[COND["pancreatic_cancer"]], 0
            ).astype(np.int32),
        }
    )
    return frames


def _next_ids(ids: dict[str, int], key: str, count: int) -> np.ndarray:
    out = ids[key] + 1 + np.arange(count, dtype=np.int64)
    ids[key] += count
    return out
