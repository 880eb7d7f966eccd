"""Clinical validation records against values computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import expit, logit

from forewarn.evaluation import clinical, metrics
from forewarn.records import privacy

# Ten rows, five events. Flagging p >= 0.3 flags the last six rows:
#   flagged     y = 0 1 0 1 1 1  -> tp 4, fp 2
#   not flagged y = 0 0 1 0      -> fn 1, tn 3
Y10 = np.array([0, 0, 1, 0, 0, 1, 0, 1, 1, 1], bool)
P10 = np.array([0.05, 0.10, 0.15, 0.20, 0.30, 0.35, 0.50, 0.60, 0.70, 0.90])


def times20(*arrays):
    """The same case 20 times over: every rate unchanged, every non-zero count >= 20."""
    return [np.tile(a, 20) for a in arrays]


@pytest.fixture(scope="module")
def calibrated():
    rng = np.random.default_rng(7)
    p = expit(rng.normal(-1.0, 1.0, 20_000))
    return rng.random(p.size) < p, p


# ------------------------------------------------------------------ threshold table


def test_threshold_table_by_hand_is_withheld_small_and_shown_large():
    small = clinical.threshold_table(Y10, P10, thresholds=[0.3], alert_rates=[]).iloc[0]
    # tp 4, fp 2, fn 1, tn 3 are all 1..10: the whole 2x2 and its rates are withheld.
    assert [small[c] for c in ("tp", "fp", "fn", "tn")] == [None] * 4
    assert [small[c] for c in ("sensitivity", "specificity", "ppv", "npv")] == [None] * 4
    assert small["alert_rate"] is None and small["alerts_per_1000"] is None  # 6 alerts
    assert small["kind"] == "threshold" and small["threshold"] == 0.3

    big = clinical.threshold_table(*times20(Y10, P10), thresholds=[0.3], alert_rates=[]).iloc[0]
    assert [big[c] for c in ("tp", "fp", "fn", "tn")] == [80, 40, 20, 60]
    assert big["sensitivity"] == pytest.approx(4 / 5)  # tp / (tp + fn)
    assert big["specificity"] == pytest.approx(3 / 5)  # tn / (tn + fp)
    assert big["ppv"] == pytest.approx(4 / 6)  # tp / (tp + fp)
    assert big["npv"] == pytest.approx(3 / 4)  # tn / (tn + fn)
    assert big["alert_rate"] == pytest.approx(0.6) and big["alerts_per_1000"] == pytest.approx(600)
    assert isinstance(big["tp"], int)


def test_threshold_zero_flags_everyone_and_keeps_zero_counts():
    row = clinical.threshold_table(*times20(Y10, P10), thresholds=[0.0], alert_rates=[]).iloc[0]
    # Zero is not identifying, so fn = tn = 0 are shown; npv has no denominator.
    assert [row[c] for c in ("tp", "fp", "fn", "tn")] == [100, 100, 0, 0]
    assert row["sensitivity"] == 1.0 and row["specificity"] == 0.0 and row["npv"] is None


def test_alert_budget_with_ties_flags_every_tied_risk():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.8])
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 0, 1], bool)
    table = clinical.threshold_table(*times20(y, p), thresholds=[], alert_rates=[0.1, 0.4])
    assert list(table["kind"]) == ["alert budget"] * 2 and list(table["alert_budget"]) == [0.1, 0.4]
    # Budget 10%: the 90% quantile is 0.8, and all three tied 0.8s are flagged: 30%.
    ten = table.iloc[0]
    assert ten["threshold"] == 0.8 and ten["alert_rate"] == pytest.approx(0.3)
    assert [ten[c] for c in ("tp", "fp", "fn", "tn")] == [40, 20, 40, 100]
    # Budget 40%: the 60% quantile is the observed 0.7, flagging 4 of 10 rows.
    forty = table.iloc[1]
    assert forty["threshold"] == 0.7 and forty["alert_rate"] == pytest.approx(0.4)
    # Unreplicated: the threshold is still shown, the 3 alerts are not.
    small = clinical.threshold_table(y, p, thresholds=[], alert_rates=[0.1]).iloc[0]
    assert small["threshold"] == 0.8 and small["alert_rate"] is None


def test_alert_budget_threshold_set_on_other_rows_is_scored_here_unchanged():
    # The tuning rows' 70% quantile ("higher": position 6.3 rounds up to 7) is 0.5, so a
    # 30% budget flags p >= 0.5 on Y10 / P10: 0.50 0.60 0.70 0.90 with y = 0 1 1 1 ->
    # tp 3, fp 1; not flagged y = 0 0 1 0 0 1 -> fn 2, tn 4 (x 20 below).
    tuning = np.array([0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.6, 0.7])
    row = clinical.threshold_table(*times20(Y10, P10), thresholds=[], alert_rates=[0.3],
                                   budget_from=tuning).iloc[0]
    assert row["threshold"] == 0.5 and row["alert_budget"] == 0.3
    assert [row[c] for c in ("tp", "fp", "fn", "tn")] == [60, 20, 40, 80]
    assert row["alert_rate"] == pytest.approx(0.4)  # not the 30% asked: the rows differ
    # Without it, the budget's threshold comes from these rows: the top 30% is p >= 0.6.
    assert clinical.threshold_table(Y10, P10, thresholds=[], alert_rates=[0.3]).iloc[0]["threshold"] == 0.6
    with pytest.raises(ValueError, match="budget_from must hold at least one risk"):
        clinical.threshold_table(Y10, P10, alert_rates=[0.3], budget_from=[])


# -------------------------------------------------------------------- decision curve


def test_decision_curve_by_hand():
    # pt = 0.2, weight 0.2 / 0.8 = 0.25. p >= 0.2 flags the last seven rows:
    # y = 0 0 1 0 1 1 1 -> tp 4, fp 3 of n = 10.
    # model: 4/10 - 3/10 * 0.25 = 0.325; treat all: 0.5 - 0.5 * 0.25 = 0.375.
    curve = clinical.decision_curve(*times20(Y10, P10), thresholds=[0.2])
    row = curve.iloc[0]
    assert row["net_benefit_model"] == pytest.approx(0.325)
    assert row["net_benefit_all"] == pytest.approx(0.375) and row["net_benefit_none"] == 0.0
    small = clinical.decision_curve(Y10, P10, thresholds=[0.2]).iloc[0]
    assert small["net_benefit_model"] is None and small["net_benefit_all"] is None


def test_decision_curve_default_thresholds():
    curve = clinical.decision_curve(*times20(Y10, P10))
    assert len(curve) == 53 and list(curve["threshold"].iloc[:4]) == [0.001, 0.002, 0.005, 0.01]
    assert curve["threshold"].iloc[-1] == 0.5
    assert curve.loc[curve["threshold"] == 0.2, "net_benefit_model"].item() == pytest.approx(0.325)
    assert list(curve.columns) == [
        "threshold",
        "net_benefit_model",
        "net_benefit_all",
        "net_benefit_none",
    ]


# ----------------------------------------------------------------------- calibration


def test_calibrated_risks_give_slope_one_and_citl_zero(calibrated):
    y, p = calibrated
    stats = clinical.calibration_stats(y, p)
    assert stats["calibration_slope"] == pytest.approx(1.0, abs=0.1)
    assert stats["calibration_in_the_large"] == pytest.approx(0.0, abs=0.1)
    assert stats["calibration_intercept"] == pytest.approx(0.0, abs=0.1)
    assert stats["ece"] < 0.02 and stats["suppressed"] is False
    assert stats["observed_rate"] == pytest.approx(y.mean()) and stats[
        "mean_predicted"
    ] == pytest.approx(p.mean())
    assert stats["brier"] == pytest.approx(metrics.point_metrics(y, p)["brier"])
    assert stats["n"] == 20_000 and stats["events"] == int(y.sum())


def test_miscalibration_moves_slope_and_citl_the_right_way(calibrated):
    y, p = calibrated
    # Risks shrunk toward 0.5 (too moderate): the true slope is 2.
    assert clinical.calibration_stats(y, expit(0.5 * logit(p)))["calibration_slope"] > 1.5
    # Risks pushed to the extremes (overfit): the true slope is 0.5.
    assert clinical.calibration_stats(y, expit(2 * logit(p)))["calibration_slope"] < 0.7
    # Risks too high by one logit: CITL is about -1.
    too_high = clinical.calibration_stats(y, expit(logit(p) + 1))
    assert too_high["calibration_in_the_large"] == pytest.approx(-1.0, abs=0.1)
    assert too_high["calibration_slope"] == pytest.approx(1.0, abs=0.1)


def test_ece_by_hand():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.3, 0.6, 0.8])
    # Two equal-frequency bins {0.1, 0.3} and {0.6, 0.8}:
    # |0.5 - 0.2| * 2/4 + |0.5 - 0.7| * 2/4 = 0.15 + 0.10.
    assert clinical.expected_calibration_error(y, p, bins=2) == pytest.approx(0.25)
    # Ten bins: each row alone, so ECE = mean |y - p| = (0.1 + 0.7 + 0.6 + 0.2) / 4.
    assert clinical.expected_calibration_error(y, p) == pytest.approx(0.4)


def test_the_records_ece_is_over_the_published_groups():
    # 44 rows, 22 at risk 0.2 (5 events) and 22 at 0.8 (17 events). Over the two raw
    # bins: (|5 - 4.4| + |17 - 17.6|) / 44 = 1.2 / 44. But the boundary between them
    # would leave 5 non-events above it, so the published curve has one group, and the
    # record's ECE is over it: |22 - 22| / 44 = 0. The raw value, beside the curve, would
    # have given |events - 4.4| of a group nobody may count.
    y = np.r_[np.arange(22) < 5, np.arange(22) < 17]
    p = np.r_[np.full(22, 0.2), np.full(22, 0.8)]
    assert clinical.expected_calibration_error(y, p, bins=2) == pytest.approx(1.2 / 44)
    curve = metrics.calibration_curve(y, p, bins=2)
    assert curve["n"].tolist() == [44]
    assert clinical.calibration_stats(y, p, bins=2)["ece"] == pytest.approx(0.0, abs=1e-12)
    assert clinical.curve_ece(curve) == pytest.approx(0.0, abs=1e-12)
    # 11 events and 11 non-events in each half: the boundary is published, and the ECE
    # is over both groups: (|11 - 4.4| + |11 - 17.6|) / 44 = 0.3.
    y = np.r_[np.arange(22) < 11, np.arange(22) < 11]
    assert metrics.calibration_curve(y, p, bins=2)["n"].tolist() == [22, 22]
    assert clinical.calibration_stats(y, p, bins=2)["ece"] == pytest.approx(0.3)
    # A given curve is used as it is (the one published beside the record).
    given = pd.DataFrame([{"bin": 1, "n": 30, "events": 3, "mean_predicted": 0.2, "observed": 0.1},
                          {"bin": 2, "n": 10, "events": 5, "mean_predicted": 0.6, "observed": 0.5}])
    assert clinical.calibration_stats(y, p, curve=given)["ece"] == pytest.approx((30 * 0.1 + 10 * 0.1) / 40)
    withheld = pd.DataFrame([{"bin": 1, "n": None, "events": None, "mean_predicted": None, "observed": None}])
    assert clinical.curve_ece(withheld) is None


def test_calibration_stats_withheld_on_a_small_set():
    stats = clinical.calibration_stats([0, 1, 0, 1], [0.1, 0.3, 0.6, 0.8])
    assert stats["suppressed"] is True and stats["n"] is None and stats["events"] is None
    assert stats["ece"] is None and stats["calibration_slope"] is None and stats["brier"] is None


def test_undefined_fits_are_none_not_errors():
    # One class: no CITL, no slope. Constant risk: no slope.
    none_happen = clinical.calibration_stats(np.zeros(30, bool), np.linspace(0.1, 0.9, 30))
    assert (
        none_happen["calibration_in_the_large"] is None and none_happen["calibration_slope"] is None
    )
    constant = clinical.calibration_stats(np.repeat([0, 1], 20), np.full(40, 0.3))
    # logit(0.5) - logit(0.3) = log(7/3).
    assert constant["calibration_in_the_large"] == pytest.approx(np.log(7 / 3))
    assert constant["calibration_slope"] is None


def test_calibration_in_brief_keeps_small_sets_and_matches_hand_values():
    # Two risk groups, four rows each: risk 0.2 with 2 events, risk 0.5 with 3. Two groups
    # make the slope fit saturated: its line passes through both groups' observed rates,
    # so b = (logit 0.75 - logit 0.5) / (logit 0.5 - logit 0.2) = log 3 / log 4.
    y = np.array([1, 1, 0, 0, 1, 1, 1, 0], bool)
    p = np.array([0.2] * 4 + [0.5] * 4)
    got = clinical.calibration_in_brief(y, p)
    assert got["mean_predicted"] == pytest.approx(0.35) and got["observed_rate"] == 5 / 8
    assert got["observed_to_expected"] == pytest.approx(0.625 / 0.35)
    assert got["calibration_slope"] == pytest.approx(np.log(3) / np.log(4))
    # the calibration-in-the-large a solves its score equation: expected events = 5
    a = got["calibration_in_the_large"]
    assert 4 * expit(a + logit(0.2)) + 4 * expit(a) == pytest.approx(5)
    # nothing is withheld (the set has 5 events), and what does not exist is None
    assert clinical.calibration_in_brief(np.array([1, 0, 0, 0], bool), np.full(4, 0.5)) == {
        "mean_predicted": 0.5, "observed_rate": 0.25, "observed_to_expected": 0.5,
        "calibration_in_the_large": pytest.approx(-np.log(3)), "calibration_slope": None}
    assert clinical.calibration_in_brief(np.zeros(0, bool), np.zeros(0))["observed_to_expected"] is None
    assert clinical.calibration_in_brief(np.zeros(3, bool), np.zeros(3))["observed_to_expected"] is None


def test_smoothed_calibration_follows_the_diagonal_on_calibrated_risks(calibrated):
    y, p = calibrated
    curve = clinical.smoothed_calibration(y, p, points=40)
    predicted = curve["predicted"].to_numpy(float)
    observed = curve["observed"].to_numpy(float)
    assert len(curve) == 40 and np.all(np.diff(predicted) >= 0)
    assert np.abs(observed - predicted).max() < 0.06 and np.abs(observed - predicted).mean() < 0.02
    assert np.diff(observed).min() > -0.01  # monotone up to noise
    # Risks shrunk to expit(logit(p) / 2): the curve follows the true risk
    # expit(2 logit(q)), below the diagonal at the low end and above it at the top.
    shrunk = clinical.smoothed_calibration(y, expit(0.5 * logit(p)), points=10)
    q, seen = shrunk["predicted"].to_numpy(float), shrunk["observed"].to_numpy(float)
    assert seen == pytest.approx(expit(2 * logit(q)), abs=0.03)
    assert seen[0] < q[0] - 0.05 and seen[-1] > q[-1] + 0.05


def test_smoothed_calibration_withheld_on_a_small_set():
    curve = clinical.smoothed_calibration(Y10, P10, points=5)
    # The risks' quantiles go with it: knots at i / (n - 1) would tell a small set's size.
    assert list(curve["observed"]) == [None] * 5 and list(curve["predicted"]) == [None] * 5


# -------------------------------------------------------------------------- lead time


def lead_frame(copies: int = 1, *, undetected_copies: int | None = None) -> pd.DataFrame:
    nat = pd.NaT
    # (subject, prediction time, label, probability, outcome time); the label is the
    # task's: the outcome lies in this prediction time's time-at-risk.
    one = [
        # Subject 1: an alert on 01-01 is labelled negative (the outcome is too far off)
        # and does not count; the first positive row 03-01 is below threshold; the first
        # true-positive alert is 04-01, 9 days before the outcome on 04-10 (the later
        # 04-05 alert does not count).
        (1, "2021-01-01", False, 0.8, "2021-04-10"),
        (1, "2021-03-01", True, 0.2, "2021-04-10"),
        (1, "2021-04-01", True, 0.7, "2021-04-10"),
        (1, "2021-04-05", True, 0.9, "2021-04-10"),
        # Subject 3: one true-positive alert, 30 days before the outcome.
        (3, "2021-05-01", True, 0.6, "2021-05-31"),
        # Subject 4: no outcome, alerts are false positives and not counted.
        (4, "2021-05-01", False, 0.9, nat),
        # Subject 5: an outcome years after its only (negative) row, alerted: not a
        # subject with the outcome in any time-at-risk, so neither counted nor detected.
        (5, "2019-01-01", False, 0.99, "2023-01-01"),
    ]
    # Subject 2: positive rows below threshold; the alerts at and after the outcome are
    # labelled negative: not detected.
    two = [
        (2, "2021-06-20", True, 0.1, "2021-06-30"),
        (2, "2021-06-30", False, 0.95, "2021-06-30"),
        (2, "2021-07-05", False, 0.99, "2021-06-30"),
    ]
    undetected_copies = copies if undetected_copies is None else undetected_copies
    rows = [(s + 10 * k, *rest) for k in range(copies) for s, *rest in one]
    rows += [(s + 10 * k, *rest) for k in range(undetected_copies) for s, *rest in two]
    frame = pd.DataFrame(
        rows, columns=["subject_id", "prediction_time", "label", "probability", "outcome_time"]
    )
    frame["prediction_time"] = pd.to_datetime(frame["prediction_time"])
    frame["outcome_time"] = pd.to_datetime(frame["outcome_time"])
    return frame


def test_lead_times_by_hand_suppressed_then_shown():
    small = clinical.lead_times(lead_frame(), threshold=0.5)
    # 3 subjects with a positive row (1, 2, 3), 2 detected: all below 11.
    assert small == {
        "subjects_with_outcome": None,
        "detected": None,
        "median_days": None,
        "q25_days": None,
        "q75_days": None,
    }
    big = clinical.lead_times(lead_frame(20), threshold=0.5)
    # 60 with an outcome, 40 detected: 20 leads of 9 days and 20 of 30 days (subject 1's
    # negative-row alert 99 days ahead would have made 20 of them 99).
    # The sample median of the sorted 40 would be 19.5, two patients' average; published
    # is the mean of the 11 nearest it (sorted positions 15-25: five 9s, six 30s).
    assert big == {
        "subjects_with_outcome": 60,
        "detected": 40,
        "median_days": 20.0,  # group_quantiles: the mean of sorted 15-25, 225 / 11, to a day
        "q25_days": 9.0,
        "q75_days": 30.0,
    }


def test_group_quantiles_by_hand():
    # 0..21 (22 values): the median's rank 10.5 rounds up to 11, positions 6-16, mean 11;
    # q25's rank 5.25 -> 5, positions 0-10 (moved inward: 5 - 5 = 0), mean 5; q75's rank
    # 15.75 -> 16, positions 11-21, mean 16; q0 and q1 sit at the ends: 5 and 16.
    values = np.arange(22)[::-1]  # order does not matter
    assert clinical.group_quantiles(values, [0.5, 0.25, 0.75, 0.0, 1.0]) == [11.0, 5.0, 16.0, 5.0, 16.0]
    # Exactly 11 values: every quantile is their mean, 0.1 + ... + 1.1 -> 6.6 / 11 = 0.6 -> 1.
    assert clinical.group_quantiles(np.arange(1, 12) / 10, [0.25, 0.5]) == [1.0, 1.0]
    # To a whole number: six 2s and five 3s average 27 / 11 = 2.45 -> 2.
    assert clinical.group_quantiles([2.0] * 6 + [3.0] * 5, [0.5]) == [2.0]
    with pytest.raises(ValueError, match="at least 11 values; got 10"):
        clinical.group_quantiles(np.arange(10), [0.5])


def test_lead_time_quantiles_are_no_single_patients_interval():
    # 40 detected with distinct leads 1, 2, ..., 40 days (one positive row each, alerted):
    # the sample median (20.5) and quartiles are one or two patients' intervals; published
    # are means of 11: median positions 15-25 (16..26, mean 21), q25 rank 9.75 -> 10,
    # positions 5-15 (6..16, mean 11), q75 rank 29.25 -> 29, positions 24-34 (25..35, 30).
    when = pd.Timestamp("2021-01-01")
    frame = pd.DataFrame({
        "subject_id": np.arange(40),
        "prediction_time": [when] * 40,
        "label": True,
        "probability": 0.9,
        "outcome_time": [when + pd.Timedelta(days=d) for d in range(1, 41)],
    })
    record = clinical.lead_times(frame, threshold=0.5)
    assert (record["q25_days"], record["median_days"], record["q75_days"]) == (11.0, 21.0, 30.0)


def test_lead_times_hides_detected_when_the_undetected_are_few():
    # 20 x (subjects 1, 3) + 5 x subject 2: 45 with an outcome, 40 detected, 5 not.
    record = clinical.lead_times(lead_frame(20, undetected_copies=5), threshold=0.5)
    assert record["subjects_with_outcome"] == 45 and record["detected"] is None
    assert record["median_days"] == 20.0


def test_lead_times_hides_detected_when_the_threshold_rows_2x2_is_withheld():
    """With 5 false-alert rows the threshold table withholds its cells at this threshold;
    the detected count (true alerts, one time a subject) would give them back from the
    alerts per 1,000, so it is withheld too. The quantiles stay: they count nobody."""
    frame = lead_frame(20)
    false_alerts = np.flatnonzero(~frame["label"].to_numpy() & (frame["probability"].to_numpy() >= 0.5))
    assert false_alerts.size == 100
    frame.loc[false_alerts[5:], "probability"] = 0.0
    record = clinical.lead_times(frame, threshold=0.5)
    assert record["subjects_with_outcome"] == 60 and record["detected"] is None
    assert record["median_days"] == 20.0
    row = clinical.threshold_table(frame["label"], frame["probability"], thresholds=[0.5], alert_rates=[])
    assert row["fp"].isna().all() and row["sensitivity"].isna().all()


def test_lead_times_threshold_changes_who_is_detected():
    # At 0.8 subject 1's first true-positive alert is 04-05 (5 days); subject 3 is no
    # longer detected; subject 1's 0.8 alert on a negative row still does not count.
    record = clinical.lead_times(lead_frame(20), threshold=0.8)
    assert record["detected"] == 20 and record["median_days"] == 5.0


def test_lead_times_refuses_a_positive_label_without_a_later_outcome():
    frame = lead_frame()
    frame.loc[4, "outcome_time"] = pd.NaT  # subject 3's only row, labelled positive
    with pytest.raises(ValueError, match=r"row 4 \(subject 3\) has none"):
        clinical.lead_times(frame, threshold=0.5)


# -------------------------------------------------------------------------- subgroups


def subgroup_frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    men = np.repeat(np.arange(60), 2)  # 60 subjects, two prediction times each
    y_men = rng.random(men.size) < 0.4
    p_men = np.clip(0.3 * y_men + 0.7 * rng.random(men.size), 0, 1)
    women = np.arange(100, 105)  # 5 subjects
    return pd.DataFrame(
        {
            "subject_id": np.r_[men, women],
            "y": np.r_[y_men, [True, False, True, False, True]],
            "p": np.r_[p_men, [0.9, 0.1, 0.8, 0.3, 0.6]],
            "sex": ["M"] * men.size + ["F"] * 5,
            "site": ["A"] * men.size + [None] * 5,
        }
    )


def test_subgroups_suppress_small_levels_and_match_point_metrics():
    frame = subgroup_frame()
    table = clinical.subgroup_metrics(frame, groups=("sex", "site"))
    assert list(zip(table["group"], table["level"], strict=True)) == [
        ("sex", "F"),
        ("sex", "M"),
        ("site", "A"),
        ("site", None),  # missing values form their own level
    ]
    women = table.iloc[0]
    assert women["suppressed"] is True and women["subjects"] is None and women["events"] is None
    assert [women[c] for c in ("auroc", "auprc", "brier", "calibration_in_the_large")] == [None] * 4

    men = table.iloc[1]
    m = frame["sex"] == "M"
    expected = metrics.point_metrics(frame.loc[m, "y"], frame.loc[m, "p"])
    assert men["suppressed"] is False
    # The men's counts would give the women's back from the held-out totals (125 rows):
    # withheld with them (complementary suppression), and so is every metric that would
    # give them back beside the totals: the observed rate (times the rows), CITL and the
    # intercept (the observed rate beside the mean predicted risk), the AUROC (times
    # events x non-events a multiple of 1/2), AUPRC, Brier, slope, ECE. The mean predicted
    # risk stays.
    assert [men["subjects"], men["rows"], men["events"]] == [None, None, None]
    assert [men[c] for c in clinical.COUNT_BEARING if c in men] == [None] * 8  # no CIs without a bootstrap
    assert men["mean_predicted"] == pytest.approx(expected["mean_predicted"])
    # Where nothing forces a level's counts away, its metrics are the point metrics.
    alone = clinical.subgroup_metrics(frame[m], groups=("sex",)).iloc[0]
    assert alone["events"] == int(frame.loc[m, "y"].sum())
    assert alone["auroc"] == pytest.approx(expected["auroc"]) and alone["auprc"] == pytest.approx(expected["auprc"])
    assert alone["brier"] == pytest.approx(expected["brier"])
    citl = clinical.calibration_stats(frame.loc[m, "y"], frame.loc[m, "p"])["calibration_in_the_large"]
    assert alone["calibration_in_the_large"] == pytest.approx(citl)
    assert table.iloc[3]["suppressed"] is True


def test_subgroup_counts_shown_when_no_level_is_small():
    frame = subgroup_frame()
    frame = frame[frame["sex"] == "M"].assign(site=np.where(frame["subject_id"] < 30, "A", "B")[: 120])
    table = clinical.subgroup_metrics(frame, groups=("site",))
    y = frame["y"].to_numpy()
    a = frame["site"].to_numpy() == "A"
    assert list(table["subjects"]) == [30, 30] and list(table["rows"]) == [60, 60]
    assert list(table["events"]) == [int(y[a].sum()), int(y[~a].sum())]
    assert min(table["events"]) >= 11


def test_a_group_whose_levels_pin_each_other_through_the_total_is_suppressed_whole():
    # Men: 30 subjects, 11 with the event; women: 15, none. Held-out events are 11, and a
    # level shown as not suppressed has 11 or more: withholding the men's counts would
    # still pin the women's events at 0 (and 3 would be pinned at 0..3). So neither level
    # shows a count, a flag that tells them apart, or a metric.
    for women_events in (0, 3):
        frame = pd.DataFrame({"subject_id": np.arange(45), "sex": ["M"] * 30 + ["F"] * 15,
                              "y": [k < 11 for k in range(30)] + [k < women_events for k in range(15)],
                              "p": np.linspace(0.05, 0.95, 45)})
        table = clinical.subgroup_metrics(frame, groups=("sex",))
        assert table["suppressed"].tolist() == [True, True]
        for column in ("subjects", "rows", "events", "auroc", "mean_predicted"):
            assert table[column].tolist() == [None, None], column
    # With 30 men's events beside the women's 3 (a hidden sum of 33), the women's 3 keeps its
    # range (0..22) and the men's level shows its metrics.
    frame = pd.DataFrame({"subject_id": np.arange(75), "sex": ["M"] * 60 + ["F"] * 15,
                          "y": [k < 30 for k in range(60)] + [k < 3 for k in range(15)], "p": np.linspace(0.05, 0.95, 75)})
    table = clinical.subgroup_metrics(frame, groups=("sex",))
    assert table["suppressed"].tolist() == [True, False] and table["events"].tolist() == [None, None]
    assert table["mean_predicted"].iloc[1] is not None


def test_a_shown_level_whose_events_are_withheld_withholds_its_size_too():
    # Men: 11 events in 22 rows (11 subjects each way); women: 10 events in 15 rows. The
    # men's events are withheld beside the women's; were the men's 22 rows shown, their
    # events would be 11 exactly (11+ non-event rows), and the women's 21 - 11 = 10.
    frame = pd.DataFrame({"subject_id": np.arange(37), "sex": ["M"] * 22 + ["F"] * 15,
                          "y": [k < 11 for k in range(22)] + [k < 10 for k in range(15)],
                          "p": np.linspace(0.05, 0.95, 37)})
    table = clinical.subgroup_metrics(frame, groups=("sex",))
    women, men = table.iloc[0], table.iloc[1]
    assert women["suppressed"] is True and men["suppressed"] is False
    assert [men["rows"], men["subjects"], men["events"]] == [None, None, None]


def utility_frame() -> pd.DataFrame:
    """Two sites of 100 subjects, one row each, whose 2x2 tables at 0.5 are set by hand.
    A: 28 events at 0.7 and 12 at 0.3; non-events 15 at 0.6 and 45 at 0.1.
    B: 18 events at 0.8 and 12 at 0.2; non-events 11 at 0.55 and 59 at 0.05."""
    parts = {"A": [(True, 0.7, 28), (True, 0.3, 12), (False, 0.6, 15), (False, 0.1, 45)],
             "B": [(True, 0.8, 18), (True, 0.2, 12), (False, 0.55, 11), (False, 0.05, 59)]}
    rows = [(site, y, p) for site, spec in parts.items() for y, p, n in spec for _ in range(n)]
    frame = pd.DataFrame(rows, columns=["site", "y", "p"])
    return frame.assign(subject_id=np.arange(len(frame)))


def test_subgroups_carry_calibration_and_utility_at_one_threshold():
    frame = utility_frame()
    table = clinical.subgroup_metrics(frame, groups=("site",), threshold=0.5)
    a, b = table.iloc[0], table.iloc[1]
    # A: tp 28, fp 15, fn 12, tn 45. B: tp 18, fp 11, fn 12, tn 59.
    assert [a[k] for k in ("subjects", "rows", "events")] == [100, 100, 40]
    assert [a["sensitivity"], a["specificity"], a["ppv"], a["npv"], a["alerts_per_1000"]] == pytest.approx(
        [28 / 40, 45 / 60, 28 / 43, 45 / 57, 430.0])
    assert [b["sensitivity"], b["specificity"], b["ppv"], b["npv"], b["alerts_per_1000"]] == pytest.approx(
        [18 / 30, 59 / 70, 18 / 29, 59 / 71, 290.0])
    assert a["observed_rate"] == pytest.approx(0.4) and b["observed_rate"] == pytest.approx(0.3)
    stats = clinical.calibration_stats(frame.loc[frame["site"] == "A", "y"], frame.loc[frame["site"] == "A", "p"])
    for key in ("calibration_slope", "calibration_intercept", "ece"):
        assert a[key] == pytest.approx(stats[key])
    # Net benefit at t = 0.5 (weight t / (1 - t) = 1): A (28 - 15) / 100, B (18 - 11) / 100;
    # treating all: the observed rate less the non-events, 0.4 - 0.6 and 0.3 - 0.7.
    assert [a["net_benefit"], b["net_benefit"]] == pytest.approx([0.13, 0.07])
    assert [a["net_benefit_all"], b["net_benefit_all"]] == pytest.approx([-0.2, -0.4])


def test_subgroup_net_benefit_weighs_false_alerts_by_the_threshold_odds():
    # At t = 0.25 (weight 1/3) A alerts on all 40 events and 15 non-events: (40 - 15/3) / 100;
    # B on 18 events and 11 non-events: (18 - 11/3) / 100. Treating all: 0.4 - 0.6/3, 0.3 - 0.7/3.
    table = clinical.subgroup_metrics(utility_frame(), groups=("site",), threshold=0.25)
    assert list(table["net_benefit"]) == pytest.approx([0.35, (18 - 11 / 3) / 100])
    assert list(table["net_benefit_all"]) == pytest.approx([0.2, 0.3 - 0.7 / 3])
    # At t = 1 the weight is infinite: no net benefit to show; no threshold, no columns.
    at_one = clinical.subgroup_metrics(utility_frame(), groups=("site",), threshold=1.0)
    assert at_one[["net_benefit", "net_benefit_all"]].isna().all().all()
    assert "net_benefit" not in clinical.subgroup_metrics(utility_frame(), groups=("site",)).columns


def test_subgroup_lead_times_are_each_levels_own():
    # Eleven copies of lead_frame's people. Level X holds subjects 1 and 2 (22 people, each
    # with an event row and a non-event row): the eleven 1s are detected 9 days ahead.
    # Level Y holds 3, 4 and 5: the eleven 3s are detected 30 days ahead; 4 and 5 never
    # have the outcome in a time-at-risk.
    frame = lead_frame(11).rename(columns={"label": "y", "probability": "p"})
    frame["g"] = np.where(frame["subject_id"] % 10 <= 2, "X", "Y")
    table = clinical.subgroup_metrics(frame, groups=("g",), threshold=0.5).set_index("level")
    # (11 detected each: a median, but no quartiles below 22)
    assert table.loc["X", list(clinical.LEAD_COLUMNS_BY_LEVEL)].tolist() == [9.0, None, None]
    assert table.loc["Y", list(clinical.LEAD_COLUMNS_BY_LEVEL)].tolist() == [30.0, None, None]
    both = clinical.subgroup_metrics(frame.assign(g="Z"), groups=("g",), threshold=0.5).iloc[0]
    assert [both[k] for k in clinical.LEAD_COLUMNS_BY_LEVEL] == [20.0, 9.0, 30.0]  # 22 detected: quartiles too
    # The whole set's lead time mixes them (22 detected: the median is the mean of 5 nines
    # and 6 thirties, 20.45 -> 20).
    assert clinical.lead_times(lead_frame(11), threshold=0.5)["median_days"] == 20.0
    # Ten 1s and twelve 2s: X is shown (22 people, events and non-events) but its 10
    # detected are too few for a lead time.
    frame = lead_frame(10, undetected_copies=12).rename(columns={"label": "y", "probability": "p"})
    frame["g"] = "X"
    row = clinical.subgroup_metrics(frame[frame["subject_id"] % 10 <= 2], groups=("g",), threshold=0.5).iloc[0]
    assert row["suppressed"] is False and row["auroc"] is not None
    assert [row[k] for k in clinical.LEAD_COLUMNS_BY_LEVEL] == [None] * 3
    # A positive label without a later outcome is named by its row in the whole frame.
    frame = lead_frame(11).rename(columns={"label": "y", "probability": "p"}).assign(g="X")
    frame.loc[4, "outcome_time"] = pd.NaT
    with pytest.raises(ValueError, match=r"row 4 \(subject 3\) has none"):
        clinical.subgroup_metrics(frame, groups=("g",), threshold=0.5)


def test_subgroup_columns_that_would_rebuild_a_withheld_count_go_with_it():
    # A third site of 5 subjects (2 events): suppressed, and its counts could come back
    # from the held-out totals minus A's and B's. Complementary suppression withholds one
    # more level's rows (A: 100 rows, tied with B, first) and one more level's events (B:
    # 30 < A's 40), and B's size with its events. Wherever a level's size or events are withheld, the observed rate and
    # the utility columns go too (rate x rows gives events; PPV x alerts / sensitivity too).
    frame = utility_frame()
    small = pd.DataFrame({"site": "C", "y": [True, False, True, False, False], "p": 0.5,
                          "subject_id": np.arange(200, 205)})
    table = clinical.subgroup_metrics(pd.concat([frame, small], ignore_index=True), groups=("site",), threshold=0.5)
    a, b, c = (r for r in table.to_dict(orient="records"))
    assert c["suppressed"] is True and [c["subjects"], c["rows"], c["events"]] == [None, None, None]
    assert [a["subjects"], a["rows"], a["events"]] == [None, None, 40]
    # B's events are withheld, and so is its size: 100 rows shown beside events known to
    # leave 11+ non-event rows would bound them (since session 27).
    assert [b["subjects"], b["rows"], b["events"]] == [None, None, None]
    for row in (a, b):
        assert [row[k] for k in ("observed_rate", "sensitivity", "specificity", "ppv", "npv", "alerts_per_1000")] == [None] * 6
        # ... and so do the AUROC and the calibration columns: B's AUROC at full precision
        # times its 100 rows' events x non-events must be a multiple of 1/2, which leaves few
        # event counts possible (its mean predicted risk picks one); A's gives its rows.
        assert [row[k] for k in clinical.COUNT_BEARING if k in row] == [None] * 9  # with treating all's net benefit
        assert row["mean_predicted"] is not None


def test_subgroup_utility_withheld_when_a_cell_is_small():
    # 40 subjects, one row each: 20 events. At 0.5 only 3 events are flagged (tp = 3), so
    # sensitivity would give the 1..10 count away; discrimination is still shown.
    y = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    p = np.r_[[0.9, 0.8, 0.7], np.linspace(0.3, 0.45, 17), np.linspace(0.05, 0.4, 20)]
    frame = pd.DataFrame({"subject_id": np.arange(40), "y": y, "p": p, "site": "A"})
    row = clinical.subgroup_metrics(frame, groups=("site",), threshold=0.5).iloc[0]
    assert row["suppressed"] is False and row["auroc"] is not None
    assert [row[k] for k in ("sensitivity", "specificity", "ppv", "npv", "alerts_per_1000")] == [None] * 5


def test_subgroups_count_people_not_rows():
    # 30 subjects; 3 of them carry 5 positive rows each. 15 event rows, but only 3
    # people with an event: the level is suppressed.
    subject = np.r_[np.repeat([0, 1, 2], 5), np.arange(3, 30)]
    frame = pd.DataFrame(
        {
            "subject_id": subject,
            "y": np.r_[np.ones(15, bool), np.zeros(27, bool)],
            "p": np.linspace(0.05, 0.95, subject.size),
            "site": "A",
        }
    )
    row = clinical.subgroup_metrics(frame, groups=("site",)).iloc[0]
    assert (
        row["suppressed"] is True
        and row["subjects"] == 30
        and row["events"] is None
        and row["auroc"] is None
    )


def test_subgroup_bootstrap_interval():
    table = clinical.subgroup_metrics(subgroup_frame(), groups=("sex",), n_boot=30, seed=1)
    women, men = table.iloc[0], table.iloc[1]
    assert women["auroc_ci_low"] is None and women["auroc_ci_high"] is None
    assert women["auprc_ci_low"] is None and women["auprc_ci_high"] is None
    assert men["auroc_ci_low"] is None  # its counts give the 5 women's back: withheld with them
    # The men alone, two levels of 30 subjects: each level's interval is the same patient
    # bootstrap as the whole set's, within the level.
    m = subgroup_frame()
    m = m[m["sex"] == "M"].assign(sex=lambda f: np.where(f["subject_id"] < 30, "early", "late"))
    late = clinical.subgroup_metrics(m, groups=("sex",), n_boot=30, seed=1).iloc[1]
    assert late["level"] == "late" and late["auroc_ci_low"] <= late["auroc"] <= late["auroc_ci_high"]
    m = m[m["sex"] == "late"]
    ci = metrics.bootstrap_ci(m["y"].to_numpy(bool), m["p"].to_numpy(float), m["subject_id"].to_numpy(),
                              n_boot=30, seed=1, metrics=("auroc", "auprc"))
    assert (late["auprc_ci_low"], late["auprc_ci_high"]) == ci["auprc"]
    assert (late["auroc_ci_low"], late["auroc_ci_high"]) == ci["auroc"]


def test_age_band():
    ages = [0, 17.9, 18, 39.99, 40, 49, 50, 65, 79.9, 80, 90, np.nan]
    assert list(clinical.age_band(ages)) == [
        "<18", "<18", "18-39", "18-39", "40-49", "40-49", "50-59", "60-69", "70-79", "80+", "80+", None,
    ]  # fmt: skip
    assert list(clinical.age_band(pd.Series([45.0, 72.0]))) == ["40-49", "70-79"]


def test_age_bands_are_ordered_as_ages_in_subgroups():
    frame = subgroup_frame()
    frame["age_band"] = clinical.age_band(np.where(frame["subject_id"] % 2 == 0, 85, 12))
    assert list(clinical.subgroup_metrics(frame, groups=("age_band",))["level"]) == ["<18", "80+"]


# ------------------------------------------------------------------------- validation


def test_external_recalibration_returns_aggregate_calibrator_parameters():
    from forewarn.evaluation.validation import recalibration_summary
    from forewarn.models.calibration import Calibrator, fit_calibrator

    # Isotonic knots are block means and rates over 11+ rows, events and non-events.
    p = np.repeat([0.1, 0.3, 0.6], 22)
    y = np.r_[np.zeros(22), np.ones(11), np.zeros(11), np.ones(22)].astype(bool)
    summary = recalibration_summary(fit_calibrator(p, y, "isotonic"))
    assert summary["method"] == "isotonic" and summary["rates"] == [0.0, 0.5, 1.0]
    assert summary["knots"] == pytest.approx([0.1, 0.3, 0.6])
    sigmoid = Calibrator("sigmoid", a=-0.25, b=0.8)
    assert recalibration_summary(sigmoid) == {
        "method": "sigmoid", "fitted_on": "tuning split of the validating site", "a": -0.25, "b": 0.8,
    }


def lead_with(**changes) -> pd.DataFrame:
    frame = lead_frame()
    for column, value in changes.items():
        frame[column] = value
    return frame


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: clinical.calibration_stats([0, 1, 0, 1, 1], [0.1] * 6),
            "y and p must have the same length; got 5 and 6.",
        ),
        (
            lambda: clinical.threshold_table([0, 1], [0.5, 1.2]),
            "p must be probabilities in [0, 1]; got values outside: 1.2.",
        ),
        (
            lambda: clinical.decision_curve([0, 1], [0.5, np.nan]),
            "p must be probabilities in [0, 1]; got values outside: nan.",
        ),
        (
            lambda: clinical.calibration_stats([0, 2], [0.5, 0.5]),
            "y must be 0/1 or boolean; got values outside: 2.",
        ),
        (
            lambda: clinical.smoothed_calibration([[0, 1]], [[0.5, 0.5]]),
            "y must be one-dimensional; got shape (1, 2).",
        ),
        (lambda: clinical.calibration_stats([], []), "y and p must not be empty; got 0 rows."),
        (
            lambda: clinical.calibration_stats([0, 1], ["a", "b"]),
            "p must be numeric; got dtype '<U1'.",
        ),
        (
            lambda: clinical.threshold_table(Y10, P10, thresholds=[1.5]),
            "thresholds must lie in [0, 1]; got 1.5.",
        ),
        (
            lambda: clinical.threshold_table(Y10, P10, alert_rates=[0]),
            "alert_rates must lie in (0, 1]; got 0.0.",
        ),
        (
            lambda: clinical.decision_curve(Y10, P10, thresholds=[1.0]),
            "thresholds must lie in (0, 1); got 1.0.",
        ),
        (
            lambda: clinical.lead_times(lead_frame(), threshold=2),
            "threshold must lie in [0, 1]; got 2.0.",
        ),
        (
            lambda: clinical.lead_times(lead_with(outcome_time="2021-01-01"), threshold=0.5),
            "outcome_time must be datetime64; got dtype 'str'.",
        ),
        (
            lambda: clinical.lead_times(
                lead_with(outcome_time=pd.date_range("2022-01-01", periods=10)), threshold=0.5
            ),
            "outcome_time must be one value per subject; got differing values for 2 subjects.",
        ),
        (
            lambda: clinical.subgroup_metrics(subgroup_frame()),
            "frame must have columns ['y', 'p', 'subject_id', 'age_band', 'sex', 'site']; "
            "got ['subject_id', 'y', 'p', 'sex', 'site'] (missing ['age_band']).",
        ),
        (lambda: clinical.age_band([30, -1]), "age_years must be non-negative; got -1.0."),
    ],
)
def test_input_errors_say_what_was_wrong(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_records_are_json_friendly():
    import json

    table = clinical.threshold_table(Y10, P10)
    json.dumps(table.to_dict(orient="records"), allow_nan=False)  # None, never NaN
    json.dumps(
        clinical.subgroup_metrics(subgroup_frame(), groups=("sex",)).to_dict(orient="records"),
        allow_nan=False,
    )
    json.dumps(clinical.lead_times(lead_frame(20), threshold=0.5), allow_nan=False)
    json.dumps(clinical.calibration_stats(*times20(Y10, P10)), allow_nan=False)


def test_subgroup_utility_withholds_a_second_level_so_the_first_cannot_come_back():
    """Levels' 2x2 cells at one threshold add up to the whole set's: level A has 5 false
    alerts (withheld), so the level with the smallest true alerts of the others (C, 12)
    is withheld too; B stays. The sizes, events and AUROCs are untouched."""

    def level(name, tp, fn, fp, tn):
        y = [True] * (tp + fn) + [False] * (fp + tn)
        p = [0.9] * tp + [0.1] * fn + [0.9] * fp + [0.1] * tn
        return pd.DataFrame({"y": y, "p": p, "g": name})

    frame = pd.concat([level("A", 20, 20, 5, 95), level("B", 15, 15, 20, 80), level("C", 12, 18, 30, 70)],
                      ignore_index=True)
    frame["subject_id"] = np.arange(len(frame))
    table = clinical.subgroup_metrics(frame, groups=("g",), threshold=0.5).set_index("level")
    assert table.loc["B", "sensitivity"] == 0.5 and table.loc["B", "ppv"] == pytest.approx(15 / 35)
    assert table.loc["B", "alerts_per_1000"] == pytest.approx(1000 * 35 / 130)
    for name in ("A", "C"):
        assert table.loc[name, list(clinical.UTILITY_COLUMNS)].isna().all(), name
    assert list(table["events"]) == [40, 30, 30] and not table["auroc"].isna().any()
    # Without A's small cell every level shows its utility.
    frame.loc[(frame["g"] == "A") & ~frame["y"] & (frame["p"] == 0.1), "p"] = 0.9
    table = clinical.subgroup_metrics(frame, groups=("g",), threshold=0.5)
    assert not table[list(clinical.UTILITY_COLUMNS)].isna().any().any()


def band_case():
    """Events: 20 at risk 0.9, 5 at 0.6, 20 at 0.2; non-events: 15 at 0.9, 30 at 0.6, 100 at 0.1.
    At 0.8: 20 / 15 / 25 / 130 (tp, fp, fn, tn); at 0.5: 25 / 45 / 20 / 100; at 0.15: 45 / 45 / 0 / 100.
    Each table alone is shown; 0.8 and 0.5 together give the 5 events at 0.6 away."""
    y = np.r_[np.ones(45, bool), np.zeros(145, bool)]
    p = np.r_[[0.9] * 20, [0.6] * 5, [0.2] * 20, [0.9] * 15, [0.6] * 30, [0.1] * 100]
    return y, p


def test_disclosed_thresholds_keep_no_band_of_1_to_10_between_shown_tables():
    y, p = band_case()
    assert clinical.disclosed_thresholds(y, p, [0.8, 0.5, 0.15]) == [True, False, True]
    # The first in priority wins: 0.5 first withholds 0.8 instead; 0.15 differs from 0.5
    # by 20 events and no non-events.
    assert clinical.disclosed_thresholds(y, p, [0.5, 0.8, 0.15]) == [True, False, True]
    assert clinical.disclosed_thresholds(y, p, [0.95, 0.05]) == [True, True]  # nothing flagged; everything flagged
    # A table with a small cell of its own is never shown: 0.7 above 0.6's 5 events, alone.
    y2 = np.r_[y, np.ones(5, bool)]
    assert clinical.disclosed_thresholds(y2, np.r_[p, [0.95] * 5], [0.92]) == [False]  # 5 alerts


def test_threshold_table_withholds_a_row_whole_when_it_would_give_a_band_away():
    y, p = band_case()
    # Fixed thresholds in ascending order: 0.15, then 0.5 (20 events more than 0.15 flags,
    # no non-events), then 0.8, 5 events off 0.5: withheld whole.
    table = clinical.threshold_table(y, p, thresholds=[0.15, 0.5, 0.8], alert_rates=[])
    assert list(table["tp"]) == [45, 25, None] and list(table["fp"]) == [45, 45, None]
    assert table.loc[2, list(clinical.WITHHELD_WITH_CELLS)].isna().all() and table.loc[2, "threshold"] == 0.8
    # An alert budget comes first: flagging 35 of 190 sets its threshold at 0.9 (20 / 15).
    table = clinical.threshold_table(y, p, thresholds=[0.5, 0.8], alert_rates=[35 / 190], operating_budget=35 / 190)
    assert list(table["kind"]) == ["threshold", "threshold", "alert budget"]
    assert list(table["tp"]) == [None, 20, 20]  # 0.5: 5 events off the budget's; 0.8 flags the same rows
    table = clinical.threshold_table(y, p, thresholds=[0.5], alert_rates=[35 / 190], operating_budget=35 / 190)
    assert list(table["tp"]) == [None, 20]  # 0.5 is 5 events off the operating point: withheld, not the budget


def test_decision_curve_shows_net_benefit_only_beside_the_tables_shown():
    y, p = band_case()
    alone = clinical.decision_curve(y, p, thresholds=[0.5])
    assert alone.loc[0, "net_benefit_model"] == pytest.approx(25 / 190 - 45 / 190 * 1.0)
    beside = clinical.decision_curve(y, p, thresholds=[0.5], disclosed=[0.8])
    assert beside.loc[0, "net_benefit_model"] is None
    assert beside.loc[0, "net_benefit_all"] == pytest.approx(45 / 190 - 145 / 190)


def test_disclosed_curve_steps_by_11_or_more_of_each():
    """band_case from the top: 0.9 flags 20 / 15 (kept); 0.6 adds 5 events and 30
    non-events (a band of 5 events: skipped); 0.2 then adds 25 / 30 (kept); 0.1 adds 0 / 100."""
    y, p = band_case()
    curve = clinical.disclosed_curve(y, p)
    assert list(zip(curve["tp"], curve["fp"], strict=True)) == [(0, 0), (20, 15), (45, 45), (45, 145)]
    assert pd.isna(curve["precision"].iloc[0]) and curve["precision"].iloc[1] == pytest.approx(20 / 35)
    assert curve["tpr"].tolist() == [0, 20 / 45, 1, 1] and curve["fpr"].tolist() == [0, 15 / 145, 45 / 145, 1]
    # The last kept point must leave 0 or 11+ of each unflagged: with 5 more events at 0.05,
    # (45, 145) would leave 5 events and (45, 45) 5 events too, so the curve goes from
    # (20, 15) straight to the end.
    y2, p2 = np.r_[y, np.ones(5, bool)], np.r_[p, [0.05] * 5]
    curve = clinical.disclosed_curve(y2, p2)
    assert list(zip(curve["tp"], curve["fp"], strict=True)) == [(0, 0), (20, 15), (50, 145)]
    assert clinical.disclosed_curve(np.r_[np.ones(5, bool), np.zeros(50, bool)], np.linspace(0, 1, 55)).empty


def test_one_ledger_keeps_the_curve_from_leaving_a_small_band_beside_the_table():
    """band_case: the table shows the threshold 0.6 (25 events, 45 non-events). On its
    own the curve would go through 0.9 (20 / 15), 5 events from the table's row; with the
    table's cut-off in the ledger it steps from the origin to the table's row instead,
    then on to 0.2 (45 / 45) and the end."""
    y, p = band_case()
    ledger = privacy.Cutoffs(y, p)
    assert clinical.disclosed_thresholds(y, p, [0.6], ledger) == [True]
    assert ledger.kept == [0, 70, 190]
    curve = clinical.disclosed_curve(y, p, cutoffs=ledger)
    assert list(zip(curve["tp"], curve["fp"], strict=True)) == [(0, 0), (25, 45), (45, 45), (45, 145)]
    # the same ledger now refuses 0.9 for a later table
    assert clinical.disclosed_thresholds(y, p, [0.9], ledger) == [False]


def test_cutoffs_ledger_admits_only_bands_of_0_or_11_plus_and_nothing_when_totals_are_withheld():
    y = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    p = np.linspace(1, 0, 60)  # the 30 events rank first
    ledger = privacy.Cutoffs(y, p)
    assert ledger.flagged(0.5) == 30 and ledger.counts(30) == (30, 0)
    assert ledger.add(30)  # 30 / 0 above, 0 / 30 below
    assert not ledger.admits(35)  # 5 non-events beside the cut-off at 30
    assert ledger.admits(41) and not ledger.admits(55)  # 11 beside 30; 5 left below
    assert ledger.neighbours(35) == (30, 60) and ledger.neighbours(30) == (30, 30)
    closed = privacy.Cutoffs(np.r_[np.ones(5, bool), np.zeros(30, bool)], np.linspace(1, 0, 35))
    assert not closed.open and not any(closed.admits(k) for k in (0, 20, 35))
    with pytest.raises(ValueError, match="a cut-off flags 0 to 60 rows; got 61"):
        ledger.admits(61)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(60, 400), st.floats(0.02, 0.5))
def test_no_two_published_cut_offs_of_one_ranking_leave_a_band_of_1_to_10(seed, n, prevalence):
    """Everything evaluate publishes from one model's risks, filled into one ledger in its
    order (threshold table, decision curve, calibration groups, ROC points): the rows
    each published number flags, taken two at a time, differ by 0 or 11+ events and
    0 or 11+ non-events. Risks are rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    p = np.round(np.clip(rng.beta(1, 6, n) + 0.25 * y * rng.random(n), 0, 1), 2)
    ledger = privacy.Cutoffs(y, p)
    table = clinical.threshold_table(y, p, alert_rates=(0.01, 0.05, 0.1, 0.2), cutoffs=ledger, operating_budget=0.05)
    dca = clinical.decision_curve(y, p, cutoffs=ledger)
    calibration = metrics.calibration_curve(y, p, cutoffs=ledger)
    curve = clinical.disclosed_curve(y, p, cutoffs=ledger)
    published = {(0, 0), (int(y.sum()), int((~y).sum()))} if ledger.open else set()
    published |= {(r["tp"], r["fp"]) for r in table.to_dict("records") if r["tp"] is not None}
    published |= {ledger.counts(ledger.flagged(r["threshold"])) for r in dca.to_dict("records")
                  if r["net_benefit_model"] is not None}
    shown = calibration.dropna(subset=["n"]).iloc[::-1]  # from the highest risk down
    published |= {(int(e), int(k) - int(e)) for e, k in zip(shown["events"].cumsum(), shown["n"].cumsum(), strict=True)}
    published |= set(zip(curve["tp"].astype(int), curve["fp"].astype(int), strict=True))
    for a in published:
        for b in published:
            assert all(d == 0 or d >= privacy.MIN_CELL for d in (abs(a[0] - b[0]), abs(a[1] - b[1]))), (a, b)
    if not ledger.open:
        assert len(published) == 0 and curve.empty and calibration["n"].isna().all()


def test_operating_point_intervals_are_the_patient_bootstrap_of_each_rate():
    """Each shown row's sensitivity, specificity, PPV and NPV interval is the percentile
    interval of that rate over the same patient-bootstrap replicates as the AUROC's
    (metrics.bootstrap_weights), the threshold held fixed; a withheld row has none."""
    rng = np.random.default_rng(5)
    subjects = np.repeat(np.arange(150), 2)  # two prediction times a subject
    y = rng.random(subjects.size) < 0.3
    p = np.clip(0.35 * y + 0.65 * rng.random(subjects.size), 0, 1)
    table = clinical.threshold_table(y, p, thresholds=[0.5, 0.99], alert_rates=[0.1], subjects=subjects, n_boot=40, seed=3)
    shown, withheld, budget = (r for r in table.to_dict(orient="records"))
    assert withheld["tp"] is None and all(withheld[f"{k}_ci_{e}"] is None for k in clinical.RATES for e in ("low", "high"))
    flag = p >= 0.5
    draws = {k: [] for k in clinical.RATES}
    for w in metrics.bootstrap_weights(subjects, n_boot=40, seed=3):
        for row in w:
            tp, fp = row[y & flag].sum(), row[~y & flag].sum()
            fn, tn = row[y & ~flag].sum(), row[~y & ~flag].sum()
            draws["sensitivity"].append(tp / (tp + fn))
            draws["specificity"].append(tn / (tn + fp))
            draws["ppv"].append(tp / (tp + fp))
            draws["npv"].append(tn / (tn + fn))
    for rate, values in draws.items():
        assert (shown[f"{rate}_ci_low"], shown[f"{rate}_ci_high"]) == pytest.approx(
            (np.quantile(values, 0.025), np.quantile(values, 0.975)))
        assert shown[f"{rate}_ci_low"] <= shown[rate] <= shown[f"{rate}_ci_high"]
    assert budget["sensitivity_ci_low"] is not None
    # without subjects (or replicates) the table has no interval columns
    assert "sensitivity_ci_low" not in clinical.threshold_table(y, p, thresholds=[0.5]).columns


def test_calibration_stats_withhold_events_beside_1_to_10_non_events():
    """n less the events would give the 7 non-events back (as metrics.evaluate withholds)."""
    y = np.r_[np.ones(493, bool), np.zeros(7, bool)]
    p = np.linspace(0.2, 0.95, 500)
    stats = clinical.calibration_stats(y, p)
    assert (stats["n"], stats["events"], stats["suppressed"]) == (500, None, True)
    shown = clinical.calibration_stats(np.r_[np.ones(489, bool), np.zeros(11, bool)], p)
    assert (shown["n"], shown["events"], shown["suppressed"]) == (500, 489, False)


def test_calibration_errors_of_two_risk_groups_are_each_groups_own_error():
    """With two distinct risks the local-linear smoother's line passes through each group's
    observed rate, so every row's error is its group's |observed - predicted|: 60 rows at
    0.1 with 12 events (0.2: error 0.1) and 40 at 0.9 with 28 (0.7: error 0.2)."""
    from forewarn.evaluation.clinical import calibration_errors, calibration_stats

    p = np.r_[np.full(60, 0.1), np.full(40, 0.9)]
    y = np.r_[np.arange(60) < 12, np.arange(40) < 28]
    errors = calibration_errors(y, p)
    assert errors == {"ici": pytest.approx(0.14, abs=1e-9), "e50": pytest.approx(0.1, abs=1e-9),
                      "e90": pytest.approx(0.2, abs=1e-9)}  # (60 x 0.1 + 40 x 0.2) / 100; the median; the 90th
    stats = calibration_stats(y, p)
    assert {k: stats[k] for k in errors} == errors
    # one risk for everyone: the smoothed curve is the overall rate
    assert calibration_errors(y, np.full(100, 0.25)) == {"ici": pytest.approx(0.15), "e50": pytest.approx(0.15),
                                                          "e90": pytest.approx(0.15)}  # |0.40 - 0.25|
    # with 1..10 events they are withheld with the other calibration statistics
    few = calibration_stats(np.arange(100) < 5, p)
    assert (few["ici"], few["e50"], few["e90"], few["suppressed"]) == (None, None, None, True)


def test_calibration_errors_are_small_for_calibrated_risks_and_grow_with_miscalibration():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.6, 20_000)
    y = rng.random(p.size) < p
    from forewarn.evaluation.clinical import calibration_errors

    calibrated = calibration_errors(y, p)
    assert calibrated["ici"] < 0.01 and calibrated["e50"] <= calibrated["e90"] < 0.02
    doubled = calibration_errors(y, np.clip(2 * p, 0, 1))  # risks twice the truth: errors about p
    assert doubled["ici"] == pytest.approx(np.mean(np.clip(2 * p, 0, 1) - p), abs=0.01)


def test_calibration_errors_match_the_smoother_at_every_row():
    """The smoother at every row's own risk (while distinct risks x rows stay within the
    budget), or a grid of quantiles and the ends interpolated on the logit scale beyond,
    tails included (a skewed case: most risks small, a few large)."""
    from forewarn.evaluation.clinical import _smoothed_at, calibration_errors

    rng = np.random.default_rng(2)
    p = rng.beta(0.5, 8, 3000)
    y = rng.random(p.size) < np.clip(1.3 * p, 0, 1)
    gap = np.abs(_smoothed_at(y, p, p) - p)
    exact = {"ici": gap.mean(), "e50": np.median(gap), "e90": np.quantile(gap, 0.9)}
    assert calibration_errors(y, p) == {k: pytest.approx(v, rel=1e-12) for k, v in exact.items()}
    # beyond the budget, the interpolated grid: within 0.5% here at 1,000 quantiles, 2% at 100
    assert calibration_errors(y, p, budget=3_000_000) == {k: pytest.approx(v, rel=0.005) for k, v in exact.items()}
    assert calibration_errors(y, p, budget=300_000) == {k: pytest.approx(v, rel=0.02) for k, v in exact.items()}


def test_subgroup_gaps_compare_only_the_published_levels():
    """The fairness summary by hand: race has three published levels (AUROC 0.80, 0.70,
    0.75), one suppressed (0.95, never compared) and the missing level (0.99, no category
    to speak of); a metric shown at only one level gives no gap, nor does the site."""
    from forewarn.evaluation.clinical import subgroup_gaps

    def level(group, name, auroc, sensitivity=None, suppressed=False):
        return {"group": group, "level": name, "suppressed": suppressed, "auroc": auroc, "sensitivity": sensitivity,
                "ppv": None, "alerts_per_1000": None, "calibration_in_the_large": None}

    subgroups = [level("site", "academic", 0.8), level("race", "White", 0.80, 0.5), level("race", "Asian", 0.70),
                 level("race", "Black or African American", 0.75, 0.375), level("race", "Multiple", 0.95, 0.9, True),
                 level("race", None, 0.99, 0.1), level("sex", "F", 0.82), level("sex", "M", None, 0.4)]
    assert subgroup_gaps(subgroups) == [
        {"group": "race", "metric": "auroc", "gap": pytest.approx(0.10), "low_level": "Asian", "low": 0.70,
         "high_level": "White", "high": 0.80, "levels": 3},
        {"group": "race", "metric": "sensitivity", "gap": 0.125, "low_level": "Black or African American", "low": 0.375,
         "high_level": "White", "high": 0.5, "levels": 2},
    ]
    assert subgroup_gaps([]) == [] and subgroup_gaps(subgroups, names=("ppv",)) == []
