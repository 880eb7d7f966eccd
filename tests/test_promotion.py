from __future__ import annotations

import pytest

from forewarn.models.promotion import PromotionConfig, decide

CONFIG = PromotionConfig(auroc_margin=0.02, slope_low=0.8, slope_high=1.25)


def test_first_model_is_promoted():
    d = decide({"auroc_ci_low": 0.7, "calibration_slope": 1.0}, None, CONFIG)
    assert d == {"promoted": True, "champion_version": None,
                 "reasons": ["there is no champion yet", "calibration slope 1.000 is within [0.8, 1.25]"]}


@pytest.mark.parametrize(
    ("slope", "reasons"),
    [
        (1.3, ["calibration slope 1.300 is outside [0.8, 1.25]",
               "promoted only because there is no champion: review its calibration before use"]),
        (None, ["calibration slope could not be estimated"]),
    ],
)
def test_first_model_is_promoted_and_a_bad_slope_is_said(slope, reasons):
    d = decide({"auroc_ci_low": 0.7, "calibration_slope": slope}, None, CONFIG)
    assert d == {"promoted": True, "champion_version": None, "reasons": ["there is no champion yet", *reasons]}


@pytest.mark.parametrize(
    ("low", "slope", "promoted"),
    [(0.781, 1.0, True), (0.78, 1.0, True), (0.779, 1.0, False), (0.9, 0.79, False), (0.9, 1.26, False), (0.9, None, False)],
)
def test_non_inferiority_and_calibration(low, slope, promoted):
    d = decide({"auroc_ci_low": low, "calibration_slope": slope}, {"auroc": 0.80, "version": "3"}, CONFIG)
    assert d["promoted"] is promoted and d["champion_version"] == "3"
    assert "champion v3 AUROC 0.800 - margin 0.02 = 0.780" in d["reasons"][0]


def test_bounds_must_be_ordered():
    with pytest.raises(ValueError, match="slope_low must be < slope_high"):
        PromotionConfig(slope_low=1.5, slope_high=1.2)
