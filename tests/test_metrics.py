"""Evaluation against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from forewarn.evaluation import metrics
from forewarn.records import privacy

Y = np.array([0, 0, 1, 0, 1, 1], bool)
P = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9])


def test_six_row_case_by_hand():
    m = metrics.point_metrics(Y, P)
    # Positives beat negatives in 1 + 2 + 3 of 9 pairs.
    assert m["auroc"] == pytest.approx(6 / 9)
    # Precision at each positive, ranked by risk: 1/1, 2/3, 3/5.
    assert m["auprc"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.64 + 0.09 + 0.01) / 6)
    assert m["prevalence"] == 0.5 and m["mean_predicted"] == pytest.approx(3.25 / 6)


def test_one_class_gives_nan_not_an_error():
    m = metrics.point_metrics(np.zeros(4, bool), np.array([0.1, 0.2, 0.3, 0.4]))
    assert np.isnan(m["auroc"]) and np.isnan(m["auprc"]) and m["brier"] == pytest.approx(0.075)


def test_bootstrap_is_seeded_and_resamples_subjects_not_rows():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    subjects = np.arange(300)
    a = metrics.bootstrap_ci(y, p, subjects, n_boot=100, seed=5)
    assert a == metrics.bootstrap_ci(y, p, subjects, n_boot=100, seed=5)
    point = metrics.point_metrics(y, p)
    assert a["auroc"][0] < point["auroc"] < a["auroc"][1]
    # Each subject seen twice: a patient bootstrap gives exactly the same interval,
    # where a row bootstrap would wrongly narrow it.
    doubled = metrics.bootstrap_ci(np.repeat(y, 2), np.repeat(p, 2), np.repeat(subjects, 2), n_boot=100, seed=5)
    assert doubled["auroc"] == pytest.approx(a["auroc"]) and doubled["auprc"] == pytest.approx(a["auprc"])


def test_calibration_curve_and_small_cell_suppression():
    p = np.linspace(0.01, 0.99, 220)
    y = p > 0.5
    curve = metrics.calibration_curve(y, p, bins=10)
    assert list(curve["n"]) == [22] * 10
    assert list(curve["events"]) == [0] * 5 + [22] * 5
    assert curve["mean_predicted"].iloc[0] == pytest.approx(p[:22].mean())
    small = metrics.calibration_curve(y[:100], p[:100], bins=10)
    assert list(small["n"]) == [None] * 10 and list(small["observed"]) == [None] * 10
    assert list(curve["events"])[0] == 0 and isinstance(list(curve["events"])[0], int)


def test_evaluate_record_suppresses_small_counts():
    rec = metrics.evaluate(Y, P, np.arange(6), n_boot=20, seed=0)
    assert rec["n"] is None and rec["events"] is None and rec["subjects"] is None and rec["prevalence"] is None
    assert rec["auroc"] == pytest.approx(6 / 9) and "auroc_ci_low" in rec and "auprc_ci_high" in rec


@pytest.mark.parametrize(("count", "kept"), [(0, 0), (1, None), (10, None), (11, 11), (5000, 5000), (None, None)])
def test_suppress(count, kept):
    assert privacy.suppress(count) == kept
    assert privacy.shown(count) == ("<11" if kept is None else f"{kept:,}")
