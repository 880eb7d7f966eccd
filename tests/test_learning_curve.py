"""Learning curves: nested, outcome-stratified samples of the train subjects; the
learners refitted on each and scored on the held-out split; the published record, the
MLflow metrics by step and the report's table."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from test_models import synthetic_matrix

from forewarn.evaluation.learning_curve import (
    L1,
    XGBOOST,
    LearningCurveConfig,
    falling,
    last_step,
    learning_curve,
    rising,
    sample_sizes,
    train_samples,
)
from forewarn.models.train import (
    ModelConfig,
    fit_l1_logistic,
    fit_xgboost,
    split_masks,
    tree_count_method,
)
from forewarn.records import schema


def test_samples_are_nested_stratified_and_whole_subjects():
    # 20 subjects: 0-3 with the outcome (subject 0 on its second row only), 4-19 without;
    # subjects 0, 5 and 9 have two rows.
    subjects = np.array([*range(20), 0, 5, 9])
    y = np.zeros(23, bool)
    y[[1, 2, 3, 20]] = True
    masks = train_samples(subjects, y, [0.25, 0.5, 1.0], seed=3)
    taken = [set(subjects[m]) for m in masks]
    with_outcome = [len(t & {0, 1, 2, 3}) for t in taken]
    assert with_outcome == [1, 2, 4]  # ceil(0.25 x 4), ceil(0.5 x 4), 4
    assert [len(t) - w for t, w in zip(taken, with_outcome, strict=True)] == [4, 8, 16]  # of the 16 without
    assert taken[0] <= taken[1] <= taken[2] == set(range(20))
    for mask, chosen in zip(masks, taken, strict=True):  # a subject comes with all its rows
        assert set(np.flatnonzero(mask)) == set(np.flatnonzero(np.isin(subjects, list(chosen))))
    # the same seed draws the same samples; another seed others
    assert all((a == b).all() for a, b in zip(masks, train_samples(subjects, y, [0.25, 0.5, 1.0], seed=3), strict=True))
    assert any((a != b).any() for a, b in zip(masks, train_samples(subjects, y, [0.25, 0.5, 1.0], seed=4), strict=True))


def test_a_share_is_rounded_before_it_is_rounded_up():
    (mask,) = train_samples(np.arange(10), np.zeros(10, bool), [0.3], seed=0)
    assert mask.sum() == 3  # 0.3 x 10 is 3.0000000000000004 in floating point


def test_config_sorts_the_shares_and_names_a_bad_one():
    assert LearningCurveConfig(fractions=[1.0, 0.25, 0.5]).fractions == [0.25, 0.5, 1.0]
    assert LearningCurveConfig().fractions == []
    with pytest.raises(ValidationError, match=r"must each lie in \(0, 1\].*\[0\.0, 1\.5\]"):
        LearningCurveConfig(fractions=[0.0, 0.5, 1.5])
    with pytest.raises(ValidationError, match="holds a share twice"):
        LearningCurveConfig(fractions=[0.5, 0.5])
    with pytest.raises(ValidationError, match=r"whole percents .*\[0\.375, 0\.004\]"):
        LearningCurveConfig(fractions=[0.375, 0.004, 0.5])  # each share is a step of the MLflow chart
    assert LearningCurveConfig(fractions=[0.01, 0.07, 0.29]).fractions == [0.01, 0.07, 0.29]


def test_sample_sizes_hide_a_few_subjects_without_the_outcome():
    # 30 subjects on 2 rows each; subjects 0-24 have an event row, 25-29 none.
    subjects = np.repeat(np.arange(30), 2)
    y = np.zeros(60, bool)
    y[0:50:2] = True
    assert sample_sizes(subjects, y) == {"rows": 60, "subjects": 30, "subjects_withheld": False, "event_subjects": None,
                                         "event_subjects_withheld": True}  # 30 - 25 = 5 without
    y[50] = True  # 26 with: 4 without, still withheld
    assert sample_sizes(subjects, y)["event_subjects"] is None
    assert sample_sizes(np.arange(40), np.arange(40) < 20) == {
        "rows": 40, "subjects": 40, "subjects_withheld": False, "event_subjects": 20, "event_subjects_withheld": False}
    assert sample_sizes(np.arange(40), np.arange(40) < 5) == {  # 5 with: small itself, "<11"
        "rows": 40, "subjects": 40, "subjects_withheld": False, "event_subjects": None, "event_subjects_withheld": False}
    # where the whole train split has 1..10 subjects without the outcome, no share shows its subjects
    assert sample_sizes(np.arange(40), np.arange(40) < 20, hide_subjects=True) == {
        "rows": 40, "subjects": None, "subjects_withheld": True, "event_subjects": 20, "event_subjects_withheld": False}


def test_a_train_split_with_few_subjects_without_the_outcome_hides_every_shares_subjects(tmp_path):
    """Two rows a train subject, and all but 5 of them with an event row: the report publishes
    the train subjects with the outcome, so no point may publish the subjects (the 5 would be
    their difference)."""
    matrix = synthetic_matrix(tmp_path, n=900)
    X, rows, _ = matrix.load()
    train = np.flatnonzero((rows[schema.SPLIT] == schema.TRAIN).to_numpy())
    pairs = train[: 2 * (train.size // 2)].reshape(-1, 2)
    rows.loc[pairs[:, 1], schema.SUBJECT_ID] = rows.loc[pairs[:, 0], schema.SUBJECT_ID].to_numpy()
    rows.loc[pairs[:, 0], schema.BOOLEAN_VALUE] = True  # one event row a subject ...
    rows.loc[pairs[:5, 0], schema.BOOLEAN_VALUE] = False  # ... but for 5 subjects
    rows.loc[pairs[:5, 1], schema.BOOLEAN_VALUE] = False
    rows.loc[train[2 * pairs.shape[0]:], schema.BOOLEAN_VALUE] = True  # an odd row left over: a subject with it
    record = learning_curve(X, rows, ModelConfig(n_jobs=1), None, LearningCurveConfig(fractions=[0.5, 1.0]),
                            n_boot=10, seed=0)
    assert [(p["subjects"], p["subjects_withheld"]) for p in record["points"]] == [(None, True), (None, True)]
    assert record["points"][-1]["rows"] == train.size


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
    matrix = synthetic_matrix(tmp_path_factory.mktemp("lc"), n=900)
    X, rows, _ = matrix.load()
    models = ModelConfig(n_jobs=1)
    record = learning_curve(X, rows, models, None, LearningCurveConfig(fractions=[0.02, 0.5, 1.0]), n_boot=20, seed=0)
    return {"X": X, "rows": rows, "models": models, "record": record, "matrix": matrix}


def test_a_sample_too_small_to_train_on_is_not_fitted(curve):
    small, half, whole = curve["record"]["points"]
    rows = curve["rows"]
    train = rows[rows[schema.SPLIT] == schema.TRAIN]
    events = int(train[schema.BOOLEAN_VALUE].sum())
    assert small["fitted"] is False and "fewer than 11 sampled train subjects" in small["reason"]
    assert small["event_subjects"] is None  # ceil(0.02 x events) is 1..10: suppressed
    assert (half["fitted"], whole["fitted"]) == (True, True)
    # one row per subject here: the whole sample is the train split
    assert (whole["rows"], whole["subjects"], whole["event_subjects"]) == (len(train), len(train), events)
    assert half["event_subjects"] == -(-events // 2)
    assert [p["percent"] for p in curve["record"]["points"]] == [2.0, 50.0, 100.0]


def test_the_whole_sample_refits_the_models_learners_as_training_does(curve):
    """At 100% the points are the trees and the L1-logistic that training fits on the whole
    train split, scored on the held-out split."""
    from sklearn.metrics import roc_auc_score

    X, rows, models = curve["X"], curve["rows"], curve["models"]
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool).astype(np.int8)
    subjects = rows[schema.SUBJECT_ID].to_numpy()
    m = split_masks(rows)
    tr, tu, ho = m[schema.TRAIN], m[schema.TUNING], m[schema.HELD_OUT]
    clf = fit_xgboost(X[tr], y[tr], X[tu], y[tu], models, None, tree_count=tree_count_method(y[tu], models),
                      groups=subjects[tr])
    l1, _ = fit_l1_logistic(X[tr], y[tr], X[tu], y[tu], models, subjects[tr])
    whole = curve["record"]["points"][-1]
    assert whole["trees"] == clf.best_iteration + 1 and whole["C"] == l1.C
    assert whole["held_out"][XGBOOST]["auroc"] == pytest.approx(roc_auc_score(y[ho], clf.predict_proba(X[ho])[:, 1]), abs=1e-12)
    assert whole["held_out"][L1]["auroc"] == pytest.approx(roc_auc_score(y[ho], l1.predict_proba(X[ho])), abs=1e-12)
    assert whole["apparent"][L1]["auroc"] == pytest.approx(roc_auc_score(y[tr], l1.predict_proba(X[tr])), abs=1e-12)
    for learner in (XGBOOST, L1):
        held = whole["held_out"][learner]
        assert held["auroc_ci_low"] <= held["auroc"] <= held["auroc_ci_high"] and held["withheld"] is False
    half = curve["record"]["points"][1]
    step = curve["record"]["last_step"]
    assert (step["from"], step["to"], step["level"]) == (50.0, 100.0, 0.9875)  # 95% over four intervals
    for k in (XGBOOST, L1):
        for metric in ("auroc", "auprc"):
            d = step[k][metric]  # the two shares' point estimates, a paired interval around their difference
            assert d["difference"] == pytest.approx(whole["held_out"][k][metric] - half["held_out"][k][metric], abs=2e-6)
            assert d["ci_low"] <= d["difference"] <= d["ci_high"]


def test_the_whole_point_reuses_training_s_own_fits_to_the_last_digit(curve, tmp_path):
    """Training fits the trees (from one base rate) and the L1 on the whole train split as
    the 100% point would: the saved models give that point exactly, and are not fitted
    again."""
    import dataclasses
    import json

    from forewarn.evaluation.evaluate import whole_train_learners
    from forewarn.models.train import train_models

    trained = train_models(curve["matrix"], tmp_path / "models", curve["models"])
    summary = json.loads(trained.summary_path.read_text())
    assert summary["xgboost"]["offset"]["method"] == "none"
    whole = whole_train_learners(trained, summary)
    config = LearningCurveConfig(fractions=[0.02, 0.5, 1.0])
    X, rows, models = curve["X"], curve["rows"], curve["models"]
    assert learning_curve(X, rows, models, None, config, n_boot=20, seed=0, whole=whole) == curve["record"]
    # the point is the given learners' (another C here), not a refit
    clf, l1 = whole
    other = dataclasses.replace(l1, C=l1.C * 10)
    record = learning_curve(X, rows, models, None, config, n_boot=20, seed=0, whole=(clf, other))
    assert record["points"][-1]["C"] == l1.C * 10 and record["points"][1] == curve["record"]["points"][1]
    # trees that boost from the L1's offsets are not the curve's learners: refitted then
    assert whole_train_learners(trained, {"xgboost": {"offset": {"method": "l1"}}}) is None


def test_a_held_out_split_with_few_events_fits_no_point(tmp_path):
    """Every point's held-out metrics would be withheld with 1 to 10 held-out events: the
    curve fits nothing and says why, while the sample sizes are still shown."""
    matrix = synthetic_matrix(tmp_path, n=900)
    X, rows, _ = matrix.load()
    held = np.flatnonzero((rows[schema.SPLIT] == schema.HELD_OUT) & rows[schema.BOOLEAN_VALUE]).tolist()
    rows.loc[held[5:], schema.BOOLEAN_VALUE] = False  # 5 held-out events left
    record = learning_curve(X, rows, ModelConfig(n_jobs=1), None, LearningCurveConfig(fractions=[0.5, 1.0]),
                            n_boot=10, seed=0)
    train = rows[rows[schema.SPLIT] == schema.TRAIN]  # one row per subject
    events = int(train[schema.BOOLEAN_VALUE].sum())
    half = -(-events // 2) + -(-(len(train) - events) // 2)  # each class's half, rounded up
    assert [(p["fitted"], p["subjects"]) for p in record["points"]] == [(False, half), (False, len(train))]
    assert {p["reason"] for p in record["points"]} == {
        "the held-out split has fewer than 11 events or non-events, so every point's metrics would be withheld (or "
        "undefined, with none): none is fitted"}
    rows.loc[held[:5], schema.BOOLEAN_VALUE] = False  # no held-out event at all: no AUROC to draw either
    record = learning_curve(X, rows, ModelConfig(n_jobs=1), None, LearningCurveConfig(fractions=[0.5, 1.0]),
                            n_boot=10, seed=0)
    assert not any(p["fitted"] for p in record["points"]) and record["last_step"] is None
    assert record["last_step"] is None


def point(percent, xgb, l1, *, fitted=True):
    held = {XGBOOST: {"auroc": xgb, "auroc_ci_low": xgb - 0.05, "auroc_ci_high": xgb + 0.04, "auprc": 0.5,
                      "auprc_ci_low": 0.4, "auprc_ci_high": 0.6, "withheld": False},
            L1: {"auroc": l1, "auroc_ci_low": None, "auroc_ci_high": None, "auprc": None, "auprc_ci_low": None,
                 "auprc_ci_high": None, "withheld": True} if l1 is None else
            {"auroc": l1, "auroc_ci_low": l1 - 0.1, "auroc_ci_high": l1 + 0.1, "auprc": 0.3,
             "auprc_ci_low": 0.2, "auprc_ci_high": 0.4, "withheld": False}}
    base = {"fraction": percent / 100, "percent": float(percent), "rows": 40 * percent, "subjects": 30 * percent,
            "event_subjects": None if percent < 10 else 2 * percent, "fitted": fitted, "reason": None}
    if not fitted:
        return base | {"reason": "fewer than 11 sampled train subjects with the outcome or without it: no model is "
                                 "fitted on so few"}
    return base | {"trees": percent, "C": 0.1, "held_out": held,
                   "apparent": {XGBOOST: {"auroc": 0.95, "auprc": 0.9}, L1: {"auroc": 0.9, "auprc": 0.8}}}


def test_the_figure_of_a_curve_with_no_fitted_point_draws_without_a_warning():
    from forewarn.evaluation import plots

    png = plots.learning_curve({"points": [point(50, 0, 0, fitted=False)], "learners": {XGBOOST: "trees", L1: "L1"}})
    assert png.startswith(b"\x89PNG")


def test_the_last_step_is_a_paired_difference_and_rising_needs_an_interval_above_zero():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    subjects = np.arange(400)
    noise = rng.normal(0, 1, 400)
    risk = lambda spread: 1 / (1 + np.exp(-(y + spread * noise)))  # noqa: E731 - risks in (0, 1)
    weak, strong = {k: risk(2.0) for k in (XGBOOST, L1)}, {k: risk(0.5) for k in (XGBOOST, L1)}
    same = last_step(y, subjects, weak, weak, n_boot=50, seed=0)
    assert same[XGBOOST]["auroc"] == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}  # one ranking: no difference
    assert not rising(same)
    gained = last_step(y, subjects, weak, strong, n_boot=50, seed=0)
    assert gained[L1]["auroc"]["ci_low"] > 0 and rising(gained)
    lost = last_step(y, subjects, strong, weak, n_boot=50, seed=0)
    assert not rising(lost)  # a loss is not a rise
    assert falling(lost) == [XGBOOST, L1] and falling(gained) == falling(same) == falling(None) == []
    assert not rising(None)


def test_mlflow_metrics_are_stepped_by_the_percent_of_train_subjects():
    from forewarn.flows.nightly import learning_curve_metrics

    curve = {"points": [point(5, 0, 0, fitted=False), point(50, 0.70, None), point(100, 0.725, 0.805)]}
    assert learning_curve_metrics(curve) == {
        "learning_curve/xgboost/auroc": [(50, 0.70), (100, 0.725)],
        "learning_curve/xgboost/auroc_ci_low": [(50, pytest.approx(0.65)), (100, pytest.approx(0.675))],
        "learning_curve/xgboost/auroc_ci_high": [(50, pytest.approx(0.74)), (100, pytest.approx(0.765))],
        "learning_curve/xgboost/auprc": [(50, 0.5), (100, 0.5)],
        "learning_curve/xgboost/apparent_auroc": [(50, 0.95), (100, 0.95)],
        "learning_curve/l1_logistic/apparent_auroc": [(50, 0.9), (100, 0.9)],
        "learning_curve/l1_logistic/auroc": [(100, 0.805)],
        "learning_curve/l1_logistic/auroc_ci_low": [(100, pytest.approx(0.705))],
        "learning_curve/l1_logistic/auroc_ci_high": [(100, pytest.approx(0.905))],
        "learning_curve/l1_logistic/auprc": [(100, 0.3)],
    }
    assert learning_curve_metrics(None) == {}
    # the last step's verdict, at its share: 1 where an interval lies above 0
    up = {"difference": 0.02, "ci_low": 0.001, "ci_high": 0.04}
    flat = {"difference": 0.0, "ci_low": -0.01, "ci_high": 0.01}
    for gained, flag in ((up, 1.0), (flat, 0.0)):
        step = {"from": 50.0, "to": 100.0, "level": 0.9875, XGBOOST: {"auroc": flat, "auprc": gained},
                L1: {"auroc": flat, "auprc": flat}}
        assert learning_curve_metrics(curve | {"last_step": step})["learning_curve/rising"] == [(100, flag)]


def test_stepped_metrics_reach_a_real_mlflow_store(tmp_path, restore_tracking):
    import mlflow

    from forewarn.flows import tracking

    client = mlflow.MlflowClient(tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    run_id = client.create_run(client.create_experiment("forewarn/lc")).info.run_id
    tracking.log_records(run_id=run_id, params={}, metrics={"held_out/auroc": 0.8}, artifacts={}, dicts={}, note="n",
                         steps={"learning_curve/xgboost/auroc": [(50, 0.70), (100, 0.725)]})
    history = client.get_metric_history(run_id, "learning_curve/xgboost/auroc")
    assert sorted((m.step, m.value) for m in history) == [(50, 0.70), (100, 0.725)]
    metrics = client.get_run(run_id).data.metrics
    # the compare view shows the value at the last step, beside the unstepped metrics
    assert metrics == {"held_out/auroc": 0.8, "learning_curve/xgboost/auroc": 0.725}
