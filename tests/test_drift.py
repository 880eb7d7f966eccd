"""Drift before retraining: PSI, the reference profile, compare and the policy's decision.

Golden cases small enough to check by hand. The reference matrix has 44 train rows
(11 each of values 1, 2, 3 and 11 missing) and 11 tuning rows the profile must ignore.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from forewarn.evaluation.drift import (
    ACTIONS,
    EPS,
    DriftPolicy,
    _merge_small,
    assess,
    combine,
    compare,
    decide,
    drift_metrics,
    markdown,
    psi,
    reference_profile,
    vocabulary,
)
from forewarn.records import schema
from forewarn.records.config import explain

NAN = np.nan
CODES = ["LOINC//4548-4", "ICD10CM//E66", "RXNORM//6809", "LOINC//2345-7", "SNOMED//38341003"]


def matrix(dense: np.ndarray) -> sp.csr_matrix:
    """CSR with NaN cells left unstored (missing) and zeros stored (present)."""
    dense = np.asarray(dense, dtype=np.float32)
    r, c = np.nonzero(~np.isnan(dense))
    return sp.csr_matrix((dense[r, c], (r, c)), shape=dense.shape)


def frame(labels: list[bool], splits: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            schema.SUBJECT_ID: np.arange(len(labels), dtype=np.int64) + 73_100_000_001,
            schema.PREDICTION_TIME: pd.Timestamp("2020-01-01"),
            schema.BOOLEAN_VALUE: labels,
            schema.SPLIT: splits,
        }
    )


COLUMNS = pd.DataFrame(
    {
        "name": [
            "AGE/years/at_prediction/t",
            "LOINC//4548-4/value/last/365d",
            "ICD10CM//E66/code/count/full",
            "RXNORM//6809/code/count/365d",
            "LOINC//2345-7/value/mean/30d",
            "SNOMED//38341003/code/count/full",
        ],
        "code": ["AGE", *CODES],
        "agg": [
            "years/at_prediction",
            "value/last",
            "code/count",
            "code/count",
            "value/mean",
            "code/count",
        ],
        "window": ["t", "365d", "full", "365d", "30d", "full"],
        "description": [
            "Age at prediction time",
            "HbA1c: last value (365 days)",
            "Obesity: count (all history)",
            "Metformin: count (365 days)",
            "Glucose: mean value (30 days)",
            "Hypertension: count (all history)",
        ],
    }
)
IMPORTANCE = pd.DataFrame(
    {
        "name": COLUMNS["name"],
        "mean_abs_shap": [0.10, 0.50, 0.30, 0.20, 0.0, 0.05],
    }
)
HBA1C, OBESITY, METFORMIN = COLUMNS["name"][1], COLUMNS["name"][2], COLUMNS["name"][3]


def reference_data() -> tuple[sp.csr_matrix, pd.DataFrame]:
    n_train, n_tune = 44, 11
    n = n_train + n_tune
    dense = np.full((n, len(COLUMNS)), NAN)
    dense[:, 0] = np.arange(n) % 40 + 40  # age, present for everyone
    # HbA1c: 11 x 1, 11 x 2, 11 x 3, 11 missing in train; tuning rows all 100 (ignored).
    dense[:n_train, 1] = [1.0] * 11 + [2.0] * 11 + [3.0] * 11 + [NAN] * 11
    dense[n_train:, 1] = 100.0
    # Obesity count: only 5 train rows have it -> too few values to profile.
    dense[:5, 2] = 1.0
    # Metformin count: 40 of 44 train rows have it (4 missing, folded into the first bin).
    dense[:40, 3] = [0.0] * 20 + [2.0] * 20
    # Glucose has zero importance; hypertension is present for all train rows.
    dense[:n_train, 5] = [1.0] * 22 + [4.0] * 22
    labels = [True] * 11 + [False] * 33 + [True] * 11
    splits = [schema.TRAIN] * n_train + [schema.TUNING] * n_tune
    return matrix(dense), frame(labels, splits)


@pytest.fixture
def reference() -> dict:
    X, rows = reference_data()
    return reference_profile(X, rows, COLUMNS, IMPORTANCE, DriftPolicy(bins=3, top_features=3))


def train_only(X: sp.csr_matrix, rows: pd.DataFrame) -> tuple[sp.csr_matrix, pd.DataFrame]:
    keep = (rows[schema.SPLIT] == schema.TRAIN).to_numpy()
    return X[np.flatnonzero(keep)], rows[keep].reset_index(drop=True)


# ------------------------------------------------------------------------------- psi


def test_psi_of_two_small_share_vectors_by_hand():
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5)
    # = 0.25 ln 2 + 0.25 ln 1.5 = 0.25 * 0.693147 + 0.25 * 0.405465 = 0.274653
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.274653, abs=1e-6)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # Symmetric in its arguments.
    assert psi([0.25, 0.75], [0.5, 0.5]) == pytest.approx(psi([0.5, 0.5], [0.25, 0.75]))


def test_psi_counts_an_empty_bin_as_eps():
    # Expected [1, 0] -> [1, 1e-4]: (0.9 - 1) ln 0.9 + (0.1 - 1e-4) ln(0.1 / 1e-4)
    # = 0.0105361 + 0.0999 * 6.9077553 = 0.7006209
    assert EPS == 1e-4
    assert psi([1.0, 0.0], [0.9, 0.1]) == pytest.approx(0.7006209, abs=1e-6)
    assert psi([1.0, 0.0], [0.9, 0.1], eps=1e-2) == pytest.approx(
        -0.1 * math.log(0.9) + 0.09 * math.log(10), abs=1e-9
    )


def test_psi_rejects_mismatched_or_negative_shares():
    with pytest.raises(ValueError, match="one length"):
        psi([0.5, 0.5], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        psi([0.5, 0.5], [1.5, -0.5])
    with pytest.raises(ValueError, match="eps must be > 0"):
        psi([1.0], [1.0], eps=0)


# --------------------------------------------------------------------------- profile


def test_reference_profile_bins_shares_and_prevalence_by_eye(reference):
    assert reference["split"] == "train" and reference["n_rows"] == 44
    assert reference["prevalence"] == 0.25  # 11 of 44 train rows; the tuning rows are ignored
    assert reference["n_columns"] == 6
    assert reference["vocabulary"] == sorted(CODES)  # no AGE
    names = [f["name"] for f in reference["features"]]
    # Ranked by mean |SHAP|: HbA1c 0.5, obesity 0.3 (too few values: skipped), metformin 0.2,
    # age 0.1; glucose (importance 0) never counts.
    assert names == [HBA1C, METFORMIN, "AGE/years/at_prediction/t"]
    assert reference["skipped"] == [
        {"name": OBESITY, "reason": "fewer than 11 train rows have a value"}
    ]
    hba1c = reference["features"][0]
    # Tertiles of the 33 present train values (11 x 1, 2, 3): cuts at the 11th and 22nd
    # value, 1 and 2; bins (-inf, 1], (1, 2], (2, inf) hold 11 rows each, 11 rows missing.
    assert hba1c["edges"] == [1.0, 2.0]
    assert hba1c["shares"] == [0.25, 0.25, 0.25] and hba1c["missing"] == 0.25
    assert not hba1c["missing_in_first_bin"]
    assert hba1c["column"] == 1 and hba1c["description"] == "HbA1c: last value (365 days)"
    assert hba1c["mean_abs_shap"] == 0.5


def test_reference_profile_folds_a_small_missing_count_into_the_first_bin(reference):
    metformin = reference["features"][1]
    # 20 x 0 and 20 x 2 present; tertile cuts 0 and 2, and 2 is the maximum (dropped), so one
    # cut at 0: bins (-inf, 0] 20 rows, (0, inf) 20 rows. The 4 missing rows would be a cell
    # under 11: they are counted in the first bin, 24 rows. The published shares round
    # each count to a multiple of 11 (24 -> 22, 20 -> 22): 0.5 and 0.5, not 24 / 44.
    assert metformin["edges"] == [0.0]
    assert metformin["missing"] is None and metformin["missing_in_first_bin"]
    assert metformin["shares"] == [0.5, 0.5]


def test_merge_small_merges_into_the_smaller_neighbour():
    # 4 (bin 2) is the smallest small bin: neighbours 20 and 30, joins 20 (cut 2 goes).
    # Then 5 (bin 0) joins bin 1 (cut 1 goes): [29, 30] with the cut at 3.
    assert _merge_small([1.0, 2.0, 3.0], [5, 20, 4, 30], 11) == ([3.0], [29, 30])
    assert _merge_small([1.0], [3, 4], 11) == ([], [7])  # still small: the caller skips it
    assert _merge_small([1.0, 2.0], [11, 0, 12], 11) == ([1.0, 2.0], [11, 0, 12])


def test_no_stored_share_stands_for_1_to_10_rows():
    rng = np.random.default_rng(3)
    n = 57
    dense = np.full((n, 3), NAN)
    dense[:, 0] = np.arange(n)  # 57 distinct values: 10 bins of 5 or 6 rows
    dense[:, 1] = rng.integers(0, 4, n)  # few distinct values, uneven bins
    dense[:50, 2] = rng.normal(size=50)  # 7 missing
    columns = pd.DataFrame(
        {
            "name": ["a/code/count/full", "b/code/count/full", "c/value/mean/full"],
            "code": ["a", "b", "c"],
            "description": ["a", "b", "c"],
        }
    )
    importance = pd.DataFrame({"name": columns["name"], "mean_abs_shap": [3.0, 2.0, 1.0]})
    rows = frame([True] * 20 + [False] * 37, [schema.TRAIN] * n)
    profile = reference_profile(matrix(dense), rows, columns, importance, DriftPolicy(bins=10))
    assert [f["name"] for f in profile["features"]] == list(columns["name"])
    for f in profile["features"]:
        shares = f["shares"] + ([f["missing"]] if f["missing"] is not None else [])
        assert sum(shares) == pytest.approx(1.0)
        # Each share is a count rounded to a multiple of 11 over their total (11 k of 11 T
        # rows): some whole T gives every share as k / T with k whole, none of 1..10 rows.
        assert any(np.allclose(np.array(shares) * t, np.round(np.array(shares) * t)) for t in range(1, n + 1)), shares
        assert len(f["shares"]) == len(f["edges"]) + 1
    assert len(profile["features"][0]["edges"]) >= 2  # merged, not collapsed to one bin
    assert profile["features"][2]["missing_in_first_bin"]
    # The profile travels as JSON and holds no subject ids.
    text = json.dumps(profile)
    assert all(str(s) not in text for s in rows[schema.SUBJECT_ID])


def test_prevalence_is_withheld_when_train_events_are_few():
    X, rows = reference_data()
    rows = rows.copy()
    rows[schema.BOOLEAN_VALUE] = [True] * 5 + [False] * 50
    assert reference_profile(X, rows, COLUMNS, IMPORTANCE)["prevalence"] is None


def test_reference_profile_needs_11_train_rows():
    X, rows = reference_data()
    rows = rows.copy()
    rows[schema.SPLIT] = [schema.TRAIN] * 10 + [schema.HELD_OUT] * 45
    with pytest.raises(ValueError, match="at least 11 rows to be profiled; got 10"):
        reference_profile(X, rows, COLUMNS, IMPORTANCE)


# --------------------------------------------------------------------------- compare


# Identical data against the reference: (24/44 - 1/2) ln(48/44) + (20/44 - 1/2) ln(40/44).
METFORMIN_ROUNDING_PSI = (24 / 44 - 0.5) * np.log(48 / 44) + (20 / 44 - 0.5) * np.log(40 / 44)
# Age 40..79 then 40..43 over the 44 train rows, cut at 50 and 65: 15, 15 and 14 rows.
AGE_ROUNDING_PSI = sum((c / 44 - 1 / 3) * np.log(3 * c / 44) for c in (15, 15, 14))


def test_identical_data_has_psi_zero_but_for_the_rounding_and_takes_the_stable_action(reference):
    X, rows = train_only(*reference_data())
    record = compare(reference, X, rows, vocabulary(COLUMNS), columns=COLUMNS)
    # Only the reference's rounding moves it: metformin's 24 and 20 rows were published as
    # 22 and 22 (0.5 each), age's 15, 15 and 14 as 11 each; HbA1c's are multiples of 11.
    assert [f["psi"] for f in record["features"]] == [0.0, pytest.approx(METFORMIN_ROUNDING_PSI),
                                                      pytest.approx(AGE_ROUNDING_PSI)]
    # Metformin's 4 missing rows are counted in its first bin, as the reference's are.
    assert [f["psi_withheld"] for f in record["features"]] == [False, False, False]
    assert record["max_psi"] == pytest.approx(METFORMIN_ROUNDING_PSI) and record["drifted_features"] == []
    assert max(METFORMIN_ROUNDING_PSI, AGE_ROUNDING_PSI) < 0.01  # far below the 0.25 that means drift
    assert record["prevalence"] == {
        "reference": 0.25,
        "new": 0.25,
        "relative_change": 0.0,
        "rounding": 5.5 / 44,
        "drifted": False,
    }
    assert record["vocabulary"]["lost"] == 0.0 and record["vocabulary"]["jaccard"] == 1.0
    assert record["n_rows"] == {"reference": 44, "new": 44} and record["split"] == "all"
    decision = decide(record, DriftPolicy())
    assert decision["action"] == "retrain" and not decision["drifted"]
    assert decision["meaning"] == ACTIONS["retrain"]
    assert decide(record, DriftPolicy(on_stable="skip"))["action"] == "skip"
    json.dumps(record | {"decision": decision})


def test_split_restricts_the_rows_compared(reference):
    X, rows = reference_data()
    # All 55 rows: the 11 tuning rows (HbA1c 100) land in the top bin, so the bins hold
    # 11, 11, 22 and 11 missing: shares 0.2, 0.2, 0.4, 0.2 against 0.25 each.
    everything = compare(reference, X, rows, vocabulary(COLUMNS))
    expected = 3 * (0.2 - 0.25) * math.log(0.2 / 0.25) + (0.4 - 0.25) * math.log(0.4 / 0.25)
    assert everything["features"][0]["psi"] == pytest.approx(expected)
    train = compare(reference, X, rows, vocabulary(COLUMNS), split=schema.TRAIN)
    assert train["features"][0]["psi"] == 0.0 and train["split"] == "train"


def test_a_shifted_feature_drifts_and_is_named_in_the_reasons(reference):
    X, rows = train_only(*reference_data())
    X = X.tolil()
    X[:33, 1] = 3.0  # every present HbA1c value is now 3: bins [0, 0, 0.75], missing 0.25
    X = X.tocsr()
    record = compare(reference, X, rows, vocabulary(COLUMNS))
    # 2 x (1e-4 - 0.25) ln(1e-4 / 0.25) + (0.75 - 0.25) ln 3 + 0
    # = 2 x 0.2499 x 7.8240460 + 0.5 x 1.0986123 = 3.9104582 + 0.5493061 = 4.4597643
    assert record["features"][0]["psi"] == pytest.approx(4.4597643, abs=1e-6)
    assert record["max_psi"] == record["features"][0]["psi"]
    assert record["drifted_features"] == [HBA1C]
    decision = decide(record, DriftPolicy())
    assert decision["drifted"] and decision["action"] == "alert"
    assert any(
        HBA1C in r and "HbA1c: last value (365 days)" in r and "4.460" in r
        for r in decision["reasons"]
    )
    assert decide(record, DriftPolicy(on_drift="skip"))["action"] == "skip"
    assert decide(record, DriftPolicy(psi_threshold=5.0))["action"] == "retrain"


def test_prevalence_change_beyond_the_policy_is_drift(reference):
    X, rows = train_only(*reference_data())
    rows = rows.copy()
    rows[schema.BOOLEAN_VALUE] = [True] * 33 + [False] * 11  # 25% -> 75%: +200%
    record = compare(reference, X, rows, vocabulary(COLUMNS))
    assert record["prevalence"]["new"] == 0.75
    assert record["prevalence"]["relative_change"] == pytest.approx(2.0)
    # The reference's rate is rounded (counts to multiples of 11), so up to 5.5 / 44 of
    # the move is not counted: (0.5 - 0.125) / 0.25 = 1.5 of the champion's rate.
    assert record["prevalence"]["rounding"] == 5.5 / 44
    assert record["prevalence"]["drifted"] and record["drifted_features"] == []
    decision = decide(record, DriftPolicy())
    assert decision["drifted"] and decision["action"] == "alert"
    assert any("prevalence changed" in r and "+200.0%" in r for r in decision["reasons"])
    assert decide(record, DriftPolicy(prevalence_change=1.49))["drifted"]
    assert not decide(record, DriftPolicy(prevalence_change=1.5))["drifted"]  # equal is not beyond


def test_new_prevalence_with_few_events_is_withheld_not_drift(reference):
    X, rows = train_only(*reference_data())
    rows = rows.copy()
    rows[schema.BOOLEAN_VALUE] = [True] * 3 + [False] * 41
    record = compare(reference, X, rows, vocabulary(COLUMNS))
    assert record["prevalence"]["new"] is None and record["prevalence"]["relative_change"] is None
    decision = decide(record, DriftPolicy())
    assert not decision["drifted"]
    assert any("prevalence not compared" in r for r in decision["reasons"])


def test_vocabulary_churn(reference):
    X, rows = train_only(*reference_data())
    # Champion: 5 codes. New: 4 of them (LOINC//2345-7 lost) plus 2 unknown ones.
    new = [c for c in CODES if c != "LOINC//2345-7"] + ["ICD10CM//E11", "LOINC//17856-6", "AGE"]
    record = compare(reference, X, rows, new)
    vocab = record["vocabulary"]
    assert vocab["champion"] == 5 and vocab["current"] == 6
    assert vocab["lost"] == pytest.approx(1 / 5) and vocab["new"] == pytest.approx(2 / 6)
    assert vocab["jaccard"] == pytest.approx(4 / 7)
    assert vocab["lost_codes"] == ["LOINC//2345-7"]
    assert vocab["new_codes"] == ["ICD10CM//E11", "LOINC//17856-6"]
    decision = decide(record, DriftPolicy())
    # lost 20% is not above 20%; new 33.3% is.
    assert decision["drifted"] and decision["action"] == "alert"
    assert [r for r in decision["reasons"] if "vocabulary" in r] == [
        "vocabulary churn: 33.3% of the new vocabulary's codes are unknown to the champion (> 20%)"
    ]
    assert not decide(record, DriftPolicy(churn_threshold=0.4))["drifted"]


def test_compare_checks_the_champions_columns_and_row_count(reference):
    X, rows = train_only(*reference_data())
    with pytest.raises(ValueError, match="champion's 6 columns"):
        compare(reference, X[:, :5], rows, [])
    swapped = COLUMNS.iloc[[0, 3, 2, 1, 4, 5]].reset_index(drop=True)
    with pytest.raises(ValueError, match="champion's order"):
        compare(reference, X, rows, [], columns=swapped)
    with pytest.raises(ValueError, match="at least 11 new rows; got 10"):
        compare(reference, X[:10], rows[:10], [])


def test_the_profile_survives_a_json_round_trip(reference):
    X, rows = train_only(*reference_data())
    restored = json.loads(json.dumps(reference))
    assert compare(restored, X, rows, vocabulary(COLUMNS)) == compare(
        reference, X, rows, vocabulary(COLUMNS)
    )


# ------------------------------------------------ small cells of the new data


DIABETES, HBA1C_ONLY = "ICD10CM//E11/code/count/full", "LOINC//4548-4/value/last/365d"
PRESENCE = pd.DataFrame(
    {
        "name": [DIABETES, HBA1C_ONLY],
        "code": ["ICD10CM//E11", "LOINC//4548-4"],
        "description": ["Type 2 diabetes: count (all history)", "HbA1c: last value (365 days)"],
    }
)
WITHHELD_REASON = "PSI withheld: a bin of today's data holds fewer than 11 rows"


def presence_data(present: int, missing_hba1c: int = 11) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """44 train rows: the diabetes code in the first ``present`` (a present/absent feature,
    value 1); HbA1c 11 x 1, 11 x 2, then 3 up to row 44 - ``missing_hba1c``, missing after."""
    dense = np.full((44, 2), NAN)
    dense[:present, 0] = 1.0
    dense[:, 1] = [1.0] * 11 + [2.0] * 11 + [3.0] * 22
    dense[44 - missing_hba1c :, 1] = NAN
    return matrix(dense), frame([True] * 11 + [False] * 33, [schema.TRAIN] * 44)


@pytest.fixture
def presence() -> dict:
    # Diabetes in 22 of 44 train rows: one value bin (a single value, no cut) and the
    # missing bin, shares 0.5 and 0.5. HbA1c: 0.25 in each of 3 bins and missing.
    X, rows = presence_data(22)
    importance = pd.DataFrame({"name": PRESENCE["name"], "mean_abs_shap": [0.4, 0.3]})
    profile = reference_profile(X, rows, PRESENCE, importance, DriftPolicy(bins=3))
    assert [(f["edges"], f["shares"], f["missing"]) for f in profile["features"]] == [
        ([], [0.5], 0.5),
        ([1.0, 2.0], [0.25, 0.25, 0.25], 0.25),
    ]
    return profile


def test_a_psi_that_gives_away_a_new_bin_of_1_to_10_rows_is_withheld(presence):
    # Today 4 of 44 rows have the code: bins [4, 40]. The exact PSI,
    # (4/44 - 0.5) ln(2/11) + (40/44 - 0.5) ln(20/11) = 0.409091 x 1.704748 + 0.409091 x 0.597837
    # = 0.697397 + 0.244570 = 0.941967, with n = 44 would give the 4 back.
    exact = psi([0.5, 0.5], [4 / 44, 40 / 44])
    assert exact == pytest.approx(0.941967, abs=1e-6)
    X, rows = presence_data(4)
    drift = assess(presence, X, rows, vocabulary(PRESENCE), DriftPolicy())
    record, decision = drift["compare"], drift["decision"]
    diabetes, hba1c = record["features"]
    assert diabetes["psi"] is None and diabetes["psi_withheld"] is True
    assert diabetes["drifted"] is True  # decided on the exact PSI: 0.942 > 0.25
    assert hba1c["psi"] == 0.0 and hba1c["psi_withheld"] is False and not hba1c["drifted"]
    assert record["max_psi"] == 0.0  # the published PSIs only
    assert record["drifted_features"] == [DIABETES] and record["n_rows"]["new"] == 44
    # The policy acts on the exact value: alert by default, retrain or skip as configured.
    assert decision["drifted"] and decision["action"] == "alert"
    assert (
        f"feature {DIABETES} (Type 2 diabetes: count (all history)) drifted: PSI > 0.25 ({WITHHELD_REASON})"
        in decision["reasons"]
    )
    policy = DriftPolicy(on_drift="retrain")
    assert (
        assess(presence, X, rows, vocabulary(PRESENCE), policy)["decision"]["action"] == "retrain"
    )
    # Deciding on the published record (its drifted flag) comes to the same decision.
    assert decide(record, DriftPolicy()) == decision
    metrics = drift_metrics(drift)
    assert metrics["drift/max_psi"] == 0.0 and metrics["drift/features_drifted"] == 1.0
    text = markdown(drift)
    assert "| Type 2 diabetes: count (all history) | withheld | yes |" in text
    assert "PSI withheld for 1 feature (a bin of today's data holds fewer than 11 rows)" in text
    # Nothing published quotes the exact PSI, to 3 or 5 decimals.
    published = json.dumps(drift) + text
    for digits in (3, 5):
        assert f"{exact:.{digits}f}" not in published
    # Above the threshold the PSI was not drift: said so, with the published PSIs only.
    calm = assess(presence, X, rows, vocabulary(PRESENCE), DriftPolicy(psi_threshold=1.0))
    assert not calm["decision"]["drifted"] and calm["compare"]["drifted_features"] == []
    assert calm["decision"]["reasons"][0] == (
        f"no top feature drifted: largest published PSI 0.000 ({HBA1C_ONLY}, HbA1c: last value (365 days)) "
        "<= 1 over 2 features; PSI withheld for 1 of them (a bin of today's data holds fewer than 11 rows)"
    )
    assert "0.942" not in json.dumps(calm)


def test_a_missing_bin_of_1_to_10_rows_withholds_the_psi_and_max_psi_may_be_none(presence):
    # Diabetes in 22 rows (as in the reference), HbA1c missing in 4 rows only: HbA1c's
    # bins hold 11, 11, 29 and, its separate missing bin, 4 rows.
    X, rows = presence_data(22, missing_hba1c=4)
    drift = assess(presence, X, rows, vocabulary(PRESENCE), DriftPolicy())
    record = drift["compare"]
    assert [f["psi"] for f in record["features"]] == [0.0, None]
    assert record["features"][1]["psi_withheld"] and record["max_psi"] == 0.0
    # Both withheld: max_psi is None, and so no drift/max_psi metric.
    X, rows = presence_data(4, missing_hba1c=4)
    drift = assess(presence, X, rows, vocabulary(PRESENCE), DriftPolicy(psi_threshold=5.0))
    record = drift["compare"]
    assert [f["psi"] for f in record["features"]] == [None, None] and record["max_psi"] is None
    assert "drift/max_psi" not in drift_metrics(drift)
    assert drift["decision"]["reasons"][0] == (
        "no top feature drifted: PSI <= 5 over 2 features; PSI withheld for each "
        "(a bin of today's data holds fewer than 11 rows)"
    )


def test_a_psi_whose_new_bins_hold_0_or_at_least_11_rows_is_published(presence):
    # 11 of 44 rows have the code: bins [11, 33], shares 0.25 and 0.75:
    # 0.25 ln 2 + 0.25 ln 1.5 = 0.274653 (as in the hand-checked PSI above).
    X, rows = presence_data(11)
    drift = assess(presence, X, rows, vocabulary(PRESENCE), DriftPolicy())
    diabetes = drift["compare"]["features"][0]
    assert diabetes["psi"] == pytest.approx(0.274653, abs=1e-6) and not diabetes["psi_withheld"]
    assert drift["compare"]["max_psi"] == diabetes["psi"] and diabetes["drifted"]
    assert any("drifted: PSI 0.275 > 0.25" in r for r in drift["decision"]["reasons"])
    # Nobody has it: bins [0, 44]. An empty bin discloses no small count.
    # (1e-4 - 0.5) ln(1e-4 / 0.5) + 0.5 ln 2 = 0.4999 x 8.517193 + 0.346574 = 4.604318
    X, rows = presence_data(0)
    diabetes = compare(presence, X, rows, vocabulary(PRESENCE))["features"][0]
    assert diabetes["psi"] == pytest.approx(4.604318, abs=1e-6) and not diabetes["psi_withheld"]


# ---------------------------------------------------------------------------- decide


def test_no_champion_means_retrain():
    for policy in (DriftPolicy(), DriftPolicy(on_stable="skip", on_drift="skip")):
        decision = decide(None, policy)
        assert decision["action"] == "retrain" and decision["reasons"] == ["no champion"]
        assert not decision["drifted"]
    record = assess(None, None, None, [], DriftPolicy(on_stable="skip"))
    assert record == {"compare": None, "decision": decide(None, DriftPolicy(on_stable="skip"))}
    assert "No champion before this run" in markdown(record) and "No champion before this run" in markdown(None)
    assert "**Action: retrain** (train a challenger" in markdown(record)
    assert drift_metrics(record) == {"drift/detected": 0.0} and drift_metrics(None) == {}


def test_assess_metrics_and_markdown(reference):
    X, rows = train_only(*reference_data())
    record = assess(reference, X, rows, vocabulary(COLUMNS), DriftPolicy())
    assert record["compare"] == compare(
        reference, X, rows, vocabulary(COLUMNS), policy=DriftPolicy()
    )
    assert record["decision"] == decide(record["compare"], DriftPolicy())
    assert record["decision"]["action"] == "retrain"
    assert drift_metrics(record) == {
        "drift/detected": 0.0,
        "drift/max_psi": pytest.approx(METFORMIN_ROUNDING_PSI),
        "drift/features_drifted": 0.0,
        "drift/prevalence_relative_change": 0.0,
        "drift/vocabulary_lost": 0.0,
        "drift/vocabulary_new": 0.0,
        "drift/vocabulary_jaccard": 1.0,
    }
    json.dumps(record)
    text = markdown(record)
    assert "**Action: retrain**" in text and "| HbA1c: last value (365 days) | 0.000 |" in text


# ---------------------------------------------------------------------------- policy


def test_policy_rejects_unknown_actions_and_bad_thresholds():
    with pytest.raises(ValidationError) as err:
        DriftPolicy(on_drift="panic")
    assert "on_drift" in str(err.value) and "'retrain', 'alert' or 'skip'" in str(err.value)
    with pytest.raises(ValidationError, match="on_stable"):
        DriftPolicy(on_stable="alert")  # alerting needs drift
    with pytest.raises(ValidationError, match="psi_threshold"):
        DriftPolicy(psi_threshold=0)
    with pytest.raises(ValidationError, match="churn_threshold"):
        DriftPolicy(churn_threshold=1.5)
    with pytest.raises(ValidationError) as err:
        DriftPolicy(psi_treshold=0.2)
    message = explain(err.value, DriftPolicy)
    assert "psi_treshold: unknown key" in message and "'psi_threshold'" in message
    for name, field in DriftPolicy.model_fields.items():
        assert field.description, name


def _site(action: str, drifted: bool, reason: str) -> dict:
    return {"action": action, "drifted": drifted, "reasons": [reason]}


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        (("retrain", "retrain"), "retrain"),
        (("alert", "retrain"), "alert"),  # one site alerting holds the network's model back
        (("skip", "alert"), "alert"),
        (("skip", "retrain"), "retrain"),  # one site wanting a new model trains one
        (("skip", "skip"), "skip"),  # only when every site skips
    ],
)
def test_combine_one_action_for_a_model_every_site_relies_on(actions, expected):
    sites = {"academic": _site(actions[0], actions[0] != "retrain", "a moved"),
             "community": _site(actions[1], False, "c stable")}
    out = combine(sites, DriftPolicy(on_drift="alert"))
    assert out["action"] == expected and out["meaning"] == ACTIONS[expected]
    assert out["drifted"] is (actions[0] != "retrain")
    assert out["reasons"] == ["academic: a moved", "community: c stable"]


def test_combine_needs_a_site():
    with pytest.raises(ValueError, match="combine needs the drift decision of one site at least"):
        combine({}, DriftPolicy())


def test_profile_shares_and_prevalence_are_rounded_to_11_rows_so_tuning_counts_stay_hidden():
    """The profile covers the train split only; the report publishes development rows
    (train and tuning). Exact train shares would give tuning counts back by subtraction:
    40 train events of 800 and 6 tuning events (46 in development) gave 46 - 0.05 x 800 = 6."""
    n_train, n_tune = 800, 40
    dense = np.full((n_train + n_tune, len(COLUMNS)), NAN)
    dense[:, 0] = np.arange(n_train + n_tune) % 50 + 30
    dense[:300, 1] = np.arange(300) % 7 + 5.0  # HbA1c in 300 train rows (7 more in tuning below)
    dense[n_train:n_train + 7, 1] = 6.0
    labels = [True] * 40 + [False] * 760 + [True] * 6 + [False] * 34
    rows = frame(labels, [schema.TRAIN] * n_train + [schema.TUNING] * n_tune)
    profile = reference_profile(matrix(dense), rows, COLUMNS, IMPORTANCE, DriftPolicy(bins=3, top_features=3))
    # Events 40 -> 44, non-events 760 -> 759 (69 x 11): 44 / 803, not 40 / 800.
    assert profile["prevalence"] == 44 / 803
    assert 46 - profile["prevalence"] * profile["n_rows"] == pytest.approx(2.17, abs=0.01)  # not the 6
    hba1c = next(f for f in profile["features"] if f["name"] == "LOINC//4548-4/value/last/365d")
    # 500 missing of 800 -> 495 (45 x 11); present rows in 300 split over its bins, each rounded.
    assert hba1c["missing"] * 800 != 500 and round(hba1c["missing"] * sum_elevens(hba1c)) == 495


def sum_elevens(feature: dict) -> int:
    """The rounded total (a multiple of 11) the feature's shares are a fraction of."""
    shares = feature["shares"] + [feature["missing"]]
    return next(t for t in range(11, 100_000, 11) if np.allclose(np.array(shares) * t / 11, np.round(np.array(shares) * t / 11)))


def test_the_reference_rate_s_rounding_alone_is_not_prevalence_drift():
    """16 train events of 1,000 are published as 11 of 990 (counts to multiples of 11): the
    same data again (1.6%) is +44% of that, near the 50% that means drift; the rounding's
    5.5 / 1,000 is not counted, so it is stable, while a real doubling still drifts."""
    from forewarn.evaluation.drift import _rounded_shares, prevalence_drifted

    then = _rounded_shares([16, 984])[0]
    assert then == 11 / 990
    assert not prevalence_drifted(then, 0.016, 5.5 / 1000, DriftPolicy())
    assert prevalence_drifted(then, 0.032, 5.5 / 1000, DriftPolicy())
    assert prevalence_drifted(then, 0.017, 0.0, DriftPolicy())  # without the allowance the rounding would alarm


def test_a_psi_next_to_its_threshold_is_shown_to_the_digit_that_tells_them_apart():
    from forewarn.evaluation.drift import _psi_text

    assert [_psi_text(p, 0.25) for p in (0.2503, 0.2497, 0.25, 0.31, 0.250004)] == [
        "0.2503", "0.2497", "0.250", "0.310", "0.250004"]
