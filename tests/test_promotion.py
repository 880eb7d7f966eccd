from __future__ import annotations

import pytest

from forewarn.models.promotion import CONSTANT_RISK, PromotionConfig, decide, decide_network

CONFIG = PromotionConfig(auroc_margin=0.02, slope_low=0.8, slope_high=1.25)


def test_first_model_is_promoted():
    d = decide({"auroc_ci_low": 0.7, "calibration_slope": 1.0}, None, CONFIG)
    assert d == {"promoted": True, "champion_version": None, "test": "marginal",
                 "reasons": ["there is no champion yet", "calibration slope 1.000 is within [0.8, 1.25]"]}


@pytest.mark.parametrize(
    ("slope", "reasons"),
    [
        (1.3, ["calibration slope 1.300 is outside [0.8, 1.25]",
               "a first champion needs its calibration slope within the bounds too"]),
        (0.79, ["calibration slope 0.790 is outside [0.8, 1.25]",
                "a first champion needs its calibration slope within the bounds too"]),
    ],
)
def test_first_model_with_a_slope_out_of_bounds_stays_challenger(slope, reasons):
    d = decide({"auroc_ci_low": 0.7, "calibration_slope": slope}, None, CONFIG)
    assert d == {"promoted": False, "champion_version": None, "test": "marginal",
                 "reasons": ["there is no champion yet", *reasons]}


def test_first_model_without_a_slope_is_promoted_and_says_it_was_not_judged():
    # Held-out metrics withheld (1-10 events or non-events): nothing to judge, nothing to serve otherwise.
    d = decide({"auroc_ci_low": None, "calibration_slope": None}, None, CONFIG)
    assert d == {"promoted": True, "champion_version": None, "test": "marginal", "reasons": [
        "there is no champion yet", "calibration slope could not be estimated",
        "promoted only because there is no champion: its calibration was not judged, review it before use"]}


def test_a_model_that_gives_every_held_out_row_the_same_risk_is_never_promoted():
    # a first model with its metrics withheld would be promoted unjudged; a constant one is not
    d = decide({"auroc_ci_low": None, "calibration_slope": None, "constant_risk": True}, None, CONFIG)
    assert d["promoted"] is False and d["reasons"][0] == CONSTANT_RISK
    assert d["reasons"][1:] == decide({"auroc_ci_low": None, "calibration_slope": None}, None, CONFIG)["reasons"]
    assert CONSTANT_RISK.startswith("the model gives every held-out row the same risk: it ranks no one")
    # whatever else it passes
    passing = {"auroc_ci_low": 0.9, "calibration_slope": 1.0}
    assert decide(passing, {"auroc": 0.80, "version": "3"}, CONFIG)["promoted"] is True
    d = decide(passing | {"constant_risk": True}, {"auroc": 0.80, "version": "3"}, CONFIG)
    assert d["promoted"] is False and d["champion_version"] == "3" and d["reasons"][0] == CONSTANT_RISK
    assert decide(passing | {"constant_risk": False}, None, CONFIG)["promoted"] is True


@pytest.mark.parametrize(("low", "promoted"), [(0.501, True), (0.5, False), (0.43, False), (None, True)])
def test_a_model_whose_auroc_interval_reaches_one_half_is_never_promoted(low, promoted):
    from forewarn.models.promotion import no_better_than_chance

    # a first model: non-inferiority is vacuous, and a slope within the bounds would let it in
    d = decide({"auroc_ci_low": low, "calibration_slope": 1.0 if low is not None else None}, None, CONFIG)
    assert d["promoted"] is promoted
    if not promoted:
        assert d["reasons"][0] == (f"its AUROC's lower 95% bound {low:.3f} is not above 0.5: it has not shown that it "
                                   "ranks people with the outcome above people without it better than chance, and "
                                   "cannot serve as champion") == no_better_than_chance(low)
        assert d["reasons"][1:] == ["there is no champion yet", "calibration slope 1.000 is within [0.8, 1.25]"]
    # beside a weak champion (one promoted with its metrics withheld) the margin alone would let it in
    weak = decide({"auroc_ci_low": low, "calibration_slope": 1.0}, {"auroc": 0.51, "version": "1"}, CONFIG)
    assert weak["promoted"] is (low is not None and low > 0.5) and (low is not None or "could not be estimated" in weak["reasons"][0])


def test_the_network_s_floors_hold_at_each_site():
    constant = NEW | {"community": NEW["community"] | {"constant_risk": True}}
    d = decide_network(constant, None, CONFIG)
    assert d["promoted"] is False and d["sites"]["academic"]["promoted"] is True
    assert d["reasons"][:2] == ["refused at community: the network's model must pass the rule at every site",
                                "academic: there is no champion yet"]
    assert f"community: {CONSTANT_RISK}" in d["reasons"]
    chance = NEW | {"academic": {"auroc_ci_low": 0.48, "calibration_slope": 1.0}}
    d = decide_network(chance, {"version": "2", "auroc": {"academic": 0.49, "community": 0.8}}, CONFIG)
    assert d["promoted"] is False and d["sites"]["community"]["promoted"] is True
    assert d["sites"]["academic"]["reasons"][0].startswith("its AUROC's lower 95% bound 0.480 is not above 0.5")


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


NEW = {"academic": {"auroc_ci_low": 0.86, "calibration_slope": 1.0}, "community": {"auroc_ci_low": 0.79, "calibration_slope": 1.1}}


def test_network_model_first_is_promoted_with_each_sites_reasons():
    d = decide_network(NEW, None, CONFIG)
    assert d["promoted"] is True and d["champion_version"] is None
    assert d["reasons"] == ["academic: there is no champion yet", "academic: calibration slope 1.000 is within [0.8, 1.25]",
                            "community: there is no champion yet", "community: calibration slope 1.100 is within [0.8, 1.25]"]


@pytest.mark.parametrize(
    ("aurocs", "refused"),
    [
        ({"academic": 0.88, "community": 0.81}, []),  # 0.86 >= 0.86 and 0.79 >= 0.79: non-inferior at both
        ({"academic": 0.88, "community": 0.815}, ["community"]),  # 0.79 < 0.795: better on average, worse at one site
        ({"academic": 0.90, "community": 0.90}, ["academic", "community"]),
        ({"academic": 0.80}, ["community"]),  # the champion was not scored at community: nothing to be non-inferior to
    ],
)
def test_network_model_must_be_non_inferior_at_every_site(aurocs, refused):
    d = decide_network(NEW, {"version": "2", "auroc": aurocs}, CONFIG)
    assert d["promoted"] is (not refused) and d["champion_version"] == "2"
    assert [s for s, one in d["sites"].items() if not one["promoted"]] == refused
    if refused:
        assert d["reasons"][0] == f"refused at {', '.join(refused)}: the network's model must pass the rule at every site"
    assert "academic: AUROC lower 95% bound 0.860" in " ".join(d["reasons"])
    if "community" not in aurocs:
        assert ("community: champion v2 has no AUROC on this site's held-out rows (not scored there, or no events or no "
                "non-events among them), so non-inferiority cannot be shown") in d["reasons"]


def test_network_model_with_a_bad_slope_at_one_site_is_refused():
    new = NEW | {"community": {"auroc_ci_low": 0.95, "calibration_slope": 1.3}}
    d = decide_network(new, {"version": "1", "auroc": {"academic": 0.8, "community": 0.8}}, CONFIG)
    assert d["promoted"] is False and "community: calibration slope 1.300 is outside [0.8, 1.25]" in d["reasons"]


def test_network_model_is_refused_where_the_champion_has_no_auroc():
    d = decide_network(NEW, {"version": "4", "auroc": {"academic": 0.8, "community": float("nan")}}, CONFIG)
    assert d["promoted"] is False and d["sites"]["academic"]["promoted"] is True
    assert d["sites"]["community"]["reasons"][0].startswith("champion v4 has no AUROC on this site's held-out rows")


def test_network_rule_needs_a_site():
    with pytest.raises(ValueError, match="needs the candidate's held-out metrics at one site"):
        decide_network({}, None, CONFIG)


# A candidate equal to the champion: its marginal interval is as wide as the champion's,
# the paired difference exactly 0.
SAME = {"version": "3", "auroc": 0.80, "paired": {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}}


def test_the_marginal_rule_decides_by_default_and_shows_the_paired_difference():
    d = decide({"auroc_ci_low": 0.76, "calibration_slope": 1.0}, SAME, CONFIG)
    assert d == {"promoted": False, "champion_version": "3", "test": "marginal", "reasons": [
        "AUROC lower 95% bound 0.760 < champion v3 AUROC 0.800 - margin 0.02 = 0.780 on the same held-out rows",
        "calibration slope 1.000 is within [0.8, 1.25]",
        "for information, not the rule in force (paired test): AUROC minus champion v3's on the same held-out rows "
        "+0.000 (paired 95% CI +0.000 to +0.000); lower bound +0.000 >= -margin -0.020"]}


@pytest.mark.parametrize(("ci_low", "promoted"), [(0.0, True), (-0.02, True), (-0.021, False)])
def test_the_paired_rule_judges_the_difference_on_the_same_rows(ci_low, promoted):
    config = CONFIG.model_copy(update={"test": "paired"})
    champion = SAME | {"paired": {"difference": 0.01, "ci_low": ci_low, "ci_high": 0.03}}
    d = decide({"auroc_ci_low": 0.76, "calibration_slope": 1.0}, champion, config)
    assert d["promoted"] is promoted and d["test"] == "paired"
    assert d["reasons"][0] == (f"AUROC minus champion v3's on the same held-out rows +0.010 (paired 95% CI {ci_low:+.3f} "
                               f"to +0.030); lower bound {ci_low:+.3f} {'>=' if promoted else '<'} -margin -0.020")
    assert d["reasons"][-1] == ("for information, not the rule in force (marginal test): AUROC lower 95% bound 0.760 < "
                                "champion v3 AUROC 0.800 - "
                                "margin 0.02 = 0.780 on the same held-out rows")
    # the slope still has to hold
    assert decide({"auroc_ci_low": 0.9, "calibration_slope": 1.3}, champion, config)["promoted"] is False


def test_the_paired_rule_refuses_when_the_difference_is_withheld():
    config = CONFIG.model_copy(update={"test": "paired"})
    d = decide({"auroc_ci_low": None, "calibration_slope": None, "withheld": True}, SAME | {"paired": None}, config)
    assert d["promoted"] is False
    assert d["reasons"][0] == ("the paired AUROC difference could not be estimated (withheld with 1 to 10 held-out "
                               "events or non-events, or not computed)")
    assert d["reasons"][-1] == ("no candidate can pass while this held-out split has 1 to 10 events or non-events: "
                                "champion v3 stays until it holds 11 or more of each (more people, a longer horizon or "
                                "a broader outcome)")
    # A difference that is not a number (no bootstrap draw held both classes) is no evidence either.
    nan = {"difference": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    d = decide({"auroc_ci_low": 0.9, "calibration_slope": 1.0}, SAME | {"paired": nan}, config)
    assert d["promoted"] is False and d["reasons"][0].startswith("the paired AUROC difference could not be estimated")


def test_promotion_metrics_leave_out_what_is_missing_or_not_finite():
    from forewarn.flows.nightly import promotion_metrics

    assert promotion_metrics(None) == {}
    assert promotion_metrics({"difference": 0.01, "ci_low": float("nan"), "ci_high": 0.03}, "promotion/academic/") == {
        "promotion/academic/auroc_difference": 0.01, "promotion/academic/auroc_difference_ci_high": 0.03}


def test_the_network_s_paired_rule_holds_at_every_site():
    config = CONFIG.model_copy(update={"test": "paired"})
    champion = {"version": "2", "auroc": {"academic": 0.9, "community": 0.85},
                "paired": {"academic": {"difference": 0.0, "ci_low": -0.01, "ci_high": 0.01},
                           "community": {"difference": -0.02, "ci_low": -0.05, "ci_high": 0.01}}}
    d = decide_network(NEW, champion, config)
    assert d["promoted"] is False
    assert d["reasons"][0] == "refused at community: the network's model must pass the rule at every site"
    assert d["sites"]["academic"]["promoted"] is True and d["sites"]["community"]["promoted"] is False
    assert "community: AUROC minus champion v2's on the same held-out rows -0.020 (paired 95% CI -0.050 to +0.010)" in \
        " ".join(d["reasons"])


def test_the_test_is_marginal_or_paired():
    with pytest.raises(ValueError, match="Input should be 'marginal' or 'paired'"):
        PromotionConfig(test="mcnemar")


def test_a_paired_interval_wholly_below_zero_says_the_candidate_is_worse():
    champion = SAME | {"paired": {"difference": -0.012, "ci_low": -0.029, "ci_high": -0.001}}
    d = decide({"auroc_ci_low": 0.76, "calibration_slope": 1.0}, champion, CONFIG)
    assert d["reasons"][-1] == (
        "for information, not the rule in force (paired test): AUROC minus champion v3's on the same held-out rows -0.012 "
        "(paired 95% CI -0.029 to -0.001); lower bound -0.029 < -margin -0.020; the whole interval lies below 0: worse "
        "than the champion on these rows")
    # A withheld interval under the marginal rule: why no candidate can pass here.
    d = decide({"auroc_ci_low": None, "calibration_slope": None, "withheld": True}, SAME | {"paired": None}, CONFIG)
    assert d["promoted"] is False and d["reasons"][-1].startswith("no candidate can pass while this held-out split")
    # Not withheld, only not estimated (a slope that did not converge): no such claim.
    d = decide({"auroc_ci_low": 0.9, "calibration_slope": None, "withheld": False}, SAME | {"paired": None}, CONFIG)
    assert not any(r.startswith("no candidate can pass") for r in d["reasons"])


def test_the_gate_refuses_a_model_trained_on_degraded_data_on_the_same_held_out_rows(tmp_path):
    """The degraded-data test at the level of the models: a champion trained on clean rows;
    a candidate trained where the strongest predictor was lost before the held-out rows
    (a feed that stopped), both scored on the same clean held-out rows as the nightly flow
    scores them (``held_out_metrics``, ``held_out_summary``, ``paired_auroc``). The
    candidate is refused on AUROC, by either test, with a calibration slope that alone
    would pass; a model as good as the champion passes the paired test. (The flow's own
    degraded night, ``test_flow_e2e``, is refused by its drift alert as well.)"""
    import numpy as np
    from test_models import synthetic_matrix, write_matrix

    from forewarn.evaluation.evaluate import EvaluationConfig, held_out_metrics
    from forewarn.evaluation.validation import held_out_summary, paired_auroc
    from forewarn.models.train import ModelConfig, train_models
    from forewarn.records import schema

    clean = synthetic_matrix(tmp_path)  # the outcome follows columns 0 and 1
    X, rows, _ = clean.load()
    split = rows[schema.SPLIT].to_numpy()
    lost = X.tolil()
    lost[np.flatnonzero(split != "held_out"), 0] = 0
    degraded = write_matrix(tmp_path / "degraded", lost.tocsr(), rows[schema.BOOLEAN_VALUE].to_numpy(bool), split)
    champion = train_models(clean, tmp_path / "champion", ModelConfig(n_jobs=1))
    champion_auroc = held_out_summary(champion, clean)["auroc"]
    assert champion_auroc > 0.9

    def judged(candidate, matrix, test):
        config = PromotionConfig(test=test)
        paired = paired_auroc(candidate, matrix, champion, clean, n_boot=config.bootstrap)
        record = held_out_metrics(candidate, EvaluationConfig(bootstrap=200))
        return record, paired, decide(record, {"auroc": champion_auroc, "version": "1", "paired": paired}, config)

    worse = train_models(degraded, tmp_path / "worse", ModelConfig(n_jobs=1))
    for test in ("marginal", "paired"):
        record, paired, d = judged(worse, degraded, test)
        assert d["promoted"] is False, d
        assert 0.7 <= record["calibration_slope"] <= 1.4  # refused on discrimination alone
        assert paired["ci_high"] < 0  # worse on these rows, beyond doubt
        first = d["reasons"][0]
        if test == "marginal":
            assert first.startswith(f"AUROC lower 95% bound {record['auroc_ci_low']:.3f} < champion v1 AUROC "
                                    f"{champion_auroc:.3f} - margin 0.02")
        else:
            assert first.startswith(f"AUROC minus champion v1's on the same held-out rows {paired['difference']:+.3f}")
            assert first.endswith("worse than the champion on these rows")
    # the same training on the clean rows: nothing lost, nothing to refuse under the paired test
    same = train_models(clean, tmp_path / "same", ModelConfig(n_jobs=1))
    _, paired, d = judged(same, clean, "paired")
    assert paired == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0} and d["promoted"] is True, d
