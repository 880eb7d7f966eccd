"""Training writes both models without pickle, and predictions in the meds-evaluation schema."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from forewarn.features.featurize import FeatureMatrix
from forewarn.models.calibration import (
    MIN_ISOTONIC_EVENTS,
    Calibrator,
    choose_calibrator,
    choose_recalibration,
    fit_calibrator,
    isotonic_blocks,
)
from forewarn.models.train import (
    BLEND_WEIGHTS,
    L1Logistic,
    ModelConfig,
    PrimaryModel,
    choose_blend,
    crossfit_l1_margins,
    crossfit_tree_margins,
    cv_tree_count,
    fit_l1_logistic,
    fit_xgboost,
    is_rare,
    l1_columns,
    load_primary,
    load_xgboost,
    offset_method,
    patient_codes,
    pos_weight,
    ranked_scores,
    rare_defaults_applied,
    released,
    sample_size_warnings,
    subject_folds,
    train_models,
    trainability,
    tree_count_method,
    tuning_weights,
    xgboost_config,
    xgboost_params,
)
from forewarn.records import schema


def write_matrix(folder, X, y, split) -> FeatureMatrix:
    """A FeatureMatrix folder: X, one row per subject at one time, and 30 named columns
    (age and sex first, as the age + sex baseline expects)."""
    rows = pd.DataFrame({schema.SUBJECT_ID: np.arange(X.shape[0]), schema.PREDICTION_TIME: pd.Timestamp(datetime(2020, 1, 1)),
                         schema.BOOLEAN_VALUE: y, schema.SPLIT: split})
    cols = pd.DataFrame({"name": ["AGE/years/at_prediction/t", "Gender//F/static/present/static"] + [f"X//{i}/code/count/full" for i in range(2, 30)]})
    folder.mkdir()
    sp.save_npz(folder / "X.npz", X)
    rows.to_parquet(folder / "rows.parquet")
    cols.to_parquet(folder / "columns.parquet")
    return FeatureMatrix(folder)


def synthetic_matrix(tmp_path, n=900, seed=0, tuning_positives=True) -> FeatureMatrix:
    rng = np.random.default_rng(seed)
    X = sp.random(n, 30, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    signal = np.asarray(X[:, 0].todense()).ravel() + np.asarray(X[:, 1].todense()).ravel()
    y = signal + rng.normal(0, 0.25, n) > 0.6
    split = np.array(["train", "tuning", "held_out"])[rng.choice(3, n, p=[0.6, 0.2, 0.2])]
    if not tuning_positives:
        y[split == "tuning"] = False
    return write_matrix(tmp_path / "m", X, y, split)


def test_train_models(tmp_path):
    matrix = synthetic_matrix(tmp_path)
    config = ModelConfig(n_jobs=1)
    trained = train_models(matrix, tmp_path / "models", config)
    json.loads(trained.xgboost_path.read_text())  # XGBoost's own JSON format, not a pickle
    l1 = L1Logistic.from_json(json.loads(trained.l1_path.read_text()))
    X, rows, _ = matrix.load()
    held = rows[schema.SPLIT] == "held_out"
    for model in ("xgboost", "l1_logistic", "age_sex", "xgboost_uncalibrated"):
        table = pq.read_table(trained.predictions_path(model))
        assert table.schema.names == [*schema.PREDICTION_SCHEMA.names, "split"]
        pred = table.to_pandas()
        assert len(pred) == len(rows)
        if model != "age_sex":
            assert roc_auc_score(pred.loc[held, schema.BOOLEAN_VALUE], pred.loc[held, schema.PREDICTED_BOOLEAN_PROBABILITY]) > 0.8
    np.testing.assert_allclose(
        pq.read_table(trained.predictions_path("l1_logistic")).column(schema.PREDICTED_BOOLEAN_PROBABILITY).to_numpy(),
        l1.predict_proba(X),
    )
    clf = load_xgboost(trained.xgboost_path)
    calibrator = Calibrator.from_json(json.loads(trained.calibration_path.read_text()))
    summary = json.loads(trained.summary_path.read_text())
    # The primary model blends the trees' log-odds with the L1's at the weight chosen on tuning.
    w = summary["xgboost"]["blend"]["weight"]
    assert w == json.loads(trained.blend_path.read_text())["weight"] > 0  # the linear signal: the L1 helps here
    margin = (1 - w) * clf.predict(X, output_margin=True) + w * l1.margin(X)
    np.testing.assert_allclose(
        calibrator(1 / (1 + np.exp(-margin))),
        pq.read_table(trained.predictions_path("xgboost")).column(schema.PREDICTED_BOOLEAN_PROBABILITY).to_numpy(),
        rtol=1e-6,
    )
    assert summary["rows"] == {s: int((rows[schema.SPLIT] == s).sum()) for s in schema.SPLITS}
    assert summary["l1_logistic"]["C"] in config.l1_c_grid


def test_training_is_reproducible(tmp_path):
    matrix = synthetic_matrix(tmp_path)
    a = train_models(matrix, tmp_path / "a", ModelConfig(n_jobs=1))
    b = train_models(matrix, tmp_path / "b", ModelConfig(n_jobs=1))
    assert a.xgboost_path.read_bytes() == b.xgboost_path.read_bytes()


def test_tuning_split_without_positives_is_a_clear_error(tmp_path):
    matrix = synthetic_matrix(tmp_path, tuning_positives=False)
    with pytest.raises(ValueError, match=r"the tuning split must hold both positive and negative labels; it has [\d,]+ rows and 0 positives"):
        train_models(matrix, tmp_path / "models", ModelConfig(n_jobs=1))


def test_calibration_by_hand_and_round_trip():
    # Three blocks of 22 rows: 0 of 22 events at 0.1, 11 of 22 at 0.3, 22 of 22 at 0.6.
    p = np.repeat([0.1, 0.3, 0.6], 22)
    y = np.r_[np.zeros(22), np.ones(11), np.zeros(11), np.ones(22)].astype(bool)
    iso = fit_calibrator(p, y, "isotonic")
    np.testing.assert_allclose(iso.x, [0.1, 0.3, 0.6])  # knots at the blocks' mean risks
    assert iso.y == (0.0, 0.5, 1.0)  # and their event rates
    np.testing.assert_allclose(iso(np.array([0.1, 0.3, 0.6])), [0.0, 0.5, 1.0], atol=1e-6)
    assert iso(np.array([0.2]))[0] == pytest.approx(0.25, abs=1e-6)  # interpolated between knots
    assert iso(np.array([0.45]))[0] == pytest.approx(0.75, abs=1e-6)
    assert np.all(np.diff(iso(np.array([0.01, 0.05, 0.1]))) > 0)  # flat below the first knot: ties broken in p's order
    again = Calibrator.from_json(json.loads(json.dumps(iso.to_json())))
    assert np.array_equal(again(p), iso(p))
    assert np.array_equal(fit_calibrator(p, y, "none")(p), p)


def test_isotonic_pools_blocks_smaller_than_a_cell():
    # Isotonic regression alone keeps the 5 rows at 0.2 (2 events, rate 0.4) as a block:
    # their risks and outcomes would travel with the model. They are pooled with the
    # neighbour of nearer rate (0.5 at 0.3, not 0 at 0.1): 27 rows, 13 events, mean p
    # (5 x 0.2 + 22 x 0.3) / 27.
    p = np.r_[np.full(22, 0.1), np.full(5, 0.2), np.full(22, 0.3)]
    y = np.r_[np.zeros(22), [1, 1, 0, 0, 0], np.ones(11), np.zeros(11)].astype(bool)
    knots, rates, rows, events = isotonic_blocks(p, y)
    np.testing.assert_allclose(knots, [0.1, 7.6 / 27])
    np.testing.assert_allclose(rates, [0.0, 13 / 27])
    assert rows.tolist() == [22, 27] and events.tolist() == [0, 13]
    rng = np.random.default_rng(4)
    p = rng.random(5000) ** 2
    y = rng.random(5000) < p
    knots, rates, rows, events = isotonic_blocks(p, y)
    assert len(knots) > 5 and rows.sum() == 5000 and events.sum() == y.sum()
    assert np.all(np.diff(knots) > 0) and np.all(np.diff(rates) >= 0)  # still monotone
    for count in (rows, events, rows - events):  # no block of 1-10 rows, events or non-events
        assert np.all((count == 0) | (count >= 11))


def test_choose_calibrator_fixes_overconfident_scores():
    rng = np.random.default_rng(0)
    true = rng.random(3000) * 0.3
    y = rng.random(3000) < true
    overconfident = np.clip(true * 2.5, 0, 1)
    calibrator, scores = choose_calibrator(overconfident, y)
    assert calibrator.method in ("sigmoid", "isotonic") and scores[calibrator.method] < scores["none"]
    assert abs(calibrator(overconfident).mean() - y.mean()) < 0.01 < abs(overconfident.mean() - y.mean())


def test_recalibration_keeps_the_shipped_calibrator_unless_a_refit_beats_it():
    rng = np.random.default_rng(0)
    raw = rng.random(3000) * 0.3
    y = rng.random(3000) < raw  # raw is calibrated at this site
    # The shipped risks are this site's truth: no refit beats them by a standard error.
    refit, scores = choose_recalibration(raw * 2.5, y, raw)
    assert refit is None and list(scores) == ["incumbent", "none", "sigmoid", "isotonic"]
    # Shipped risks twice too high here: a refit on the raw scores replaces them, and the
    # simplest within one standard error is the raw risks themselves.
    refit, scores = choose_recalibration(raw, y, np.clip(raw * 2, 0, 1))
    assert refit is not None and refit.method == "none" and scores["none"] < scores["incumbent"]
    # Too few events to cross-validate: the shipped calibrator is kept.
    assert choose_recalibration(raw[:30], np.r_[True, np.zeros(29, bool)], raw[:30]) == (None, {})


def test_class_weighting():
    rare = np.r_[np.ones(10), np.zeros(990)]
    common = np.r_[np.ones(100), np.zeros(900)]
    assert pos_weight(rare, ModelConfig()) == 1.0  # default: unweighted, rare outcomes included
    assert pos_weight(rare, ModelConfig(class_weight="auto")) == 99.0  # auto: balanced below 2% prevalence
    assert pos_weight(common, ModelConfig(class_weight="auto")) == 1.0
    assert pos_weight(common, ModelConfig(class_weight="balanced")) == 9.0
    assert pos_weight(rare, ModelConfig(class_weight="none")) == 1.0


def test_rare_outcome_defaults():
    rare = np.r_[np.ones(19), np.zeros(981)]  # 1.9%
    boundary = np.r_[np.ones(20), np.zeros(980)]  # 2.0%: not rare
    assert is_rare(rare) and not is_rare(boundary)
    p = xgboost_config(rare, ModelConfig())
    assert (p.max_depth, p.min_child_weight, p.max_delta_step) == (3, 0.5, 5.0)
    assert (p.learning_rate, p.n_estimators, p.early_stopping_rounds) == (0.05, 600, 50)  # the rest as configured
    q = xgboost_config(boundary, ModelConfig())
    assert (q.max_depth, q.min_child_weight, q.max_delta_step) == (4, 2.0, 0.0)
    # A setting the study gives itself wins; the others still take the rare defaults.
    study = ModelConfig.model_validate({"xgboost": {"max_depth": 5}})
    assert rare_defaults_applied(rare, study) == {"min_child_weight": 0.5, "max_delta_step": 5.0}
    assert xgboost_config(rare, study).max_depth == 5
    assert rare_defaults_applied(rare, ModelConfig(rare_outcome_defaults=False)) == {}
    assert xgboost_config(rare, ModelConfig(rare_outcome_defaults=False)).max_depth == 4
    # A search trial's parameters win over both.
    assert xgboost_config(rare, ModelConfig(), {"max_depth": 7, "min_child_weight": 3.0}).model_dump()["min_child_weight"] == 3.0
    kwargs = xgboost_params(rare, ModelConfig())
    assert (kwargs["max_delta_step"], kwargs["scale_pos_weight"], kwargs["eval_metric"]) == (5.0, 1.0, "logloss")


def rare_matrix(tmp_path, n=4000, seed=0) -> FeatureMatrix:
    """``synthetic_matrix``'s layout with an outcome of about 1.5% prevalence."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, 30, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    signal = np.asarray(X[:, 2].todense()).ravel() + np.asarray(X[:, 3].todense()).ravel()
    y = signal + rng.normal(0, 0.2, n) > 1.3
    split = np.array(["train", "tuning", "held_out"])[rng.choice(3, n, p=[0.6, 0.2, 0.2])]
    return write_matrix(tmp_path / "rare", X, y, split)


def test_training_a_rare_outcome_records_its_defaults(tmp_path):
    matrix = rare_matrix(tmp_path)
    trained = train_models(matrix, tmp_path / "m", ModelConfig(n_jobs=1))
    summary = json.loads(trained.summary_path.read_text())
    positives, rows = summary["positives"], summary["rows"]
    assert 0 < positives["train"] / rows["train"] < 0.02 and positives["tuning"] > 0
    assert summary["xgboost"]["rare_outcome_defaults"] == {"max_depth": 3, "min_child_weight": 0.5, "max_delta_step": 5.0}
    assert summary["xgboost"]["params"]["max_depth"] == 3 and summary["xgboost"]["scale_pos_weight"] == 1.0
    trees = json.loads(trained.xgboost_path.read_text())["learner"]["gradient_booster"]["model"]["trees"]
    depth = [max(_depths(t)) for t in trees]
    assert max(depth) <= 3  # leaves at most 3 splits deep
    assert summary["calibration"]["method"] in ("none", "sigmoid")  # fewer than 100 tuning events: no isotonic
    # max_delta_step 5 caps every leaf at 5 log-odds before the learning rate (0.05): 0.25.
    leaves = [v for t in trees for v, left in zip(t["split_conditions"], t["left_children"], strict=True) if left == -1]
    assert max(abs(v) for v in leaves) <= 0.25 + 1e-6


def test_parallel_trees_and_per_node_column_sampling_reach_xgboost(tmp_path):
    matrix = synthetic_matrix(tmp_path)
    config = ModelConfig(n_jobs=1, xgboost={"num_parallel_tree": 3, "colsample_bynode": 0.5, "n_estimators": 20})
    kwargs = xgboost_params(np.r_[np.ones(50), np.zeros(50)], config)
    assert (kwargs["num_parallel_tree"], kwargs["colsample_bynode"]) == (3, 0.5)
    trained = train_models(matrix, tmp_path / "m", config)
    model = json.loads(trained.xgboost_path.read_text())["learner"]
    rounds = json.loads(trained.summary_path.read_text())["xgboost"]["best_iteration"] + 1
    assert model["gradient_booster"]["model"]["gbtree_model_param"]["num_parallel_tree"] == "3"
    assert len(model["gradient_booster"]["model"]["trees"]) >= 3 * rounds  # three trees a boosting round


def test_rare_outcomes_boost_from_an_l1_offset_and_predict_with_it(tmp_path):
    assert offset_method(np.r_[np.ones(19), np.zeros(981)], ModelConfig()) == "l1"  # 1.9%: rare
    assert offset_method(np.r_[np.ones(20), np.zeros(980)], ModelConfig()) == "none"  # 2.0%
    assert offset_method(np.r_[np.ones(19), np.zeros(981)], ModelConfig(rare_outcome_defaults=False)) == "none"
    assert offset_method(np.r_[np.ones(20), np.zeros(980)], ModelConfig(offset="l1")) == "l1"
    assert offset_method(np.r_[np.ones(19), np.zeros(981)], ModelConfig(offset="none")) == "none"
    assert offset_method(np.r_[np.ones(99), np.zeros(9_901)], ModelConfig()) == "l1"  # 1%, 99 events
    assert offset_method(np.r_[np.ones(100), np.zeros(9_900)], ModelConfig()) == "none"  # 100 events: the trees alone
    assert offset_method(np.r_[np.ones(100), np.zeros(9_900)], ModelConfig(offset="l1")) == "l1"
    matrix = rare_matrix(tmp_path)
    trained = train_models(matrix, tmp_path / "m", ModelConfig(n_jobs=1, blend="none"))
    summary = json.loads(trained.summary_path.read_text())
    assert summary["xgboost"]["offset"] == {"method": "l1", "model": "l1_logistic", "C": summary["l1_logistic"]["C"], "folds": 5}
    # The offset is the L1-logistic fitted on all of train (the baseline's own coefficients).
    assert trained.offset_path.read_text() == trained.l1_path.read_text()
    model = load_primary(trained)
    X, rows, _ = matrix.load()
    l1 = L1Logistic.from_json(json.loads(trained.l1_path.read_text()))
    margin = model.clf.predict(X, output_margin=True, base_margin=np.zeros(X.shape[0]))  # the trees alone
    expected = 1 / (1 + np.exp(-(l1.margin(X) + margin)))
    saved = pq.read_table(trained.predictions_path("xgboost_uncalibrated")).column(schema.PREDICTED_BOOLEAN_PROBABILITY).to_numpy()
    np.testing.assert_allclose(saved, expected, rtol=1e-5)
    np.testing.assert_allclose(model.probability(X), expected, rtol=1e-5)
    assert not np.allclose(saved, load_xgboost(trained.xgboost_path).predict_proba(X)[:, 1])  # the trees alone differ
    # Retrained without it, the folder holds no stale offset.
    train_models(matrix, tmp_path / "m", ModelConfig(n_jobs=1, offset="none", blend="none"))
    assert not trained.offset_path.exists() and load_primary(trained).offset is None


BEST = ModelConfig(blend_rule="best")  # the best weight itself, without the one-standard-error rule


def test_the_blend_weight_is_the_best_on_tuning_with_ties_to_the_trees():
    y_train = np.r_[np.ones(10), np.zeros(10)]  # common: chosen by AUROC
    y_tune = np.array([1, 0, 1, 0])
    trees = np.array([2.0, 1.0, 0.0, -1.0])  # AUROC 3/4: the second event below the first non-event
    linear = np.array([0.0, 1.0, 3.0, -1.0])  # AUROC 3/4: the first event below it
    # (1 - w) * trees + w * linear: events at 2 - 2w and 3w, non-events at 1 and -1, so both
    # events clear 1 only for 1/3 < w < 1/2: w = 0.4 (AUROC 1); 0.3 and 0.5 tie one pair.
    weight, objective, scores, guard, rule = choose_blend(trees, linear, y_tune, y_train, BEST)
    assert (weight, objective) == (0.4, "auroc")
    assert guard["metric"] == "auprc" and guard["excluded"] == []  # 0.4 also has the best AUPRC
    assert scores["0.4"] == 1.0 and scores["0.3"] == 0.75 and scores["0.5"] == 0.875 and scores["0.0"] == scores["1.0"] == 0.75
    # Equal scores go to the smaller weight (the trees alone here); a rare outcome is chosen by AUPRC.
    assert choose_blend(trees, trees, y_tune, y_train, BEST)[0] == 0.0
    assert choose_blend(trees, linear, y_tune, np.r_[np.ones(1), np.zeros(99)], BEST)[:2] == (0.4, "auprc")
    assert choose_blend(trees, linear, y_tune, y_train, ModelConfig(blend=0.7)) == (0.7, None, {}, None, None)
    assert choose_blend(trees, linear, y_tune, y_train, ModelConfig(blend="none")) == (0.0, None, {}, None, None)
    with pytest.raises(ValueError, match="less than or equal to 1"):
        ModelConfig(blend=1.5)


def test_the_blend_guard_rules_out_weights_below_the_l1_on_the_other_metric():
    y_train = np.r_[np.ones(1), np.zeros(99)]  # rare: chosen by AUPRC, guarded by AUROC
    y = np.array([1, 1, 0, 0, 0, 0])  # events e1, e2; non-events n1..n4
    trees = np.array([3.0, -3.0, 0.0, 0.0, 0.0, 0.0])  # e1 first, e2 last: AUPRC (1 + 2/6) / 2 = 2/3, AUROC 4/8
    linear = np.array([1.2, 1.0, 2.0, 0.0, 0.0, 0.0])  # n1, e1, e2, rest: AUPRC (1/2 + 2/3) / 2 = 7/12, AUROC 6/8
    # Blended, e1 = 3 - 1.8w, e2 = -3 + 4w, n1 = 2w, n2..n4 = 0: up to w = 0.7 the trees' order
    # (AUPRC 2/3, AUROC 1/2); from w = 0.8 the L1's (7/12, 3/4).
    weight, objective, scores, guard, rule = choose_blend(trees, linear, y, y_train, BEST)
    assert (weight, objective) == (0.8, "auprc")  # the smallest weight with AUROC at least the L1's 3/4
    assert scores["0.0"] == pytest.approx(2 / 3) and scores["0.8"] == pytest.approx(7 / 12)
    assert guard == {"metric": "auroc", "l1": 0.75, "excluded": [str(w / 10) for w in range(8)],
                     "by_weight": {str(w / 10): 0.5 if w < 8 else 0.75 for w in range(11)}}
    # Without the guard the best AUPRC wins: the trees alone.
    assert choose_blend(trees, linear, y, y_train, BEST.model_copy(update={"blend_guard": False}))[::3] == (0.0, None)
    # Rows of one class have no AUROC: no guard.
    assert choose_blend(trees, linear, np.ones(6), y_train, BEST)[3] is None
    # The parts swapped: now the trees have AUROC 3/4 and the L1 1/2. Against the L1's floor every
    # weight qualifies and the best AUPRC (2/3, the L1's order, from w = 0.3) wins; with the floor
    # the better part's (blend_guard_floor: better) only the weights with the trees' order qualify.
    weight, _, scores, guard, _ = choose_blend(linear, trees, y, y_train, BEST)
    assert weight == 0.3 and guard["excluded"] == [] and scores["0.3"] == pytest.approx(2 / 3)
    weight, _, scores, guard, _ = choose_blend(linear, trees, y, y_train,
                                               BEST.model_copy(update={"blend_guard_floor": "better"}))
    assert weight == 0.0 and (guard["l1"], guard["floor"]) == (0.5, 0.75)
    assert guard["excluded"] == [str(w / 10) for w in range(3, 11)]


def test_an_l1_that_scores_every_row_alike_is_not_blended_in():
    from forewarn.models.train import BLEND_WEIGHTS

    y_train = np.r_[np.ones(1), np.zeros(99)]
    y = np.array([1, 1, 0, 0, 0, 0])
    trees = np.array([3.0, -3.0, 0.0, 0.0, 0.0, 0.0])  # AUPRC 2/3
    flat = np.full(6, -2.0)  # AUPRC 1/3, the base rate
    weight, objective, scores, guard, rule = choose_blend(trees, flat, y, y_train, ModelConfig())
    assert (weight, objective, guard, rule) == (0.0, "auprc", None, {"name": "constant_l1", "best": 0.0})
    assert scores["1.0"] == pytest.approx(1 / 3) and scores["0.5"] == pytest.approx(2 / 3) and len(scores) == len(BLEND_WEIGHTS)
    # an L1 that kept no column, though its out-of-fold fits (among the rows scored) vary
    assert choose_blend(trees, trees[::-1].copy(), y, y_train, ModelConfig(), constant_l1=True)[0] == 0.0


def test_ranked_scores_of_weighted_rows_with_ties():
    from sklearn.metrics import average_precision_score

    # Scores 3, 2, 2, 1 (sorted), labels 1, 0, 1, 0, weights 1, 2, 1, 1: tie runs {3}, {2, 2}, {1}
    # hold events 1, 1, 0 and non-events 0, 2, 1 (3 in all). AUROC: the first event beats all 3
    # non-events, the second beats 1 and ties 2 (half each): (3 + 2) / (2 * 3) = 5/6. AUPRC: at
    # each run, precision 1/1, 2/4, 2/5; recall rises by 1/2, 1/2, 0: 1/2 + 1/4 = 3/4.
    y, w, z = np.array([1, 0, 1, 0], bool), np.array([1.0, 2.0, 1.0, 1.0]), np.array([3.0, 2.0, 2.0, 1.0])
    scores = ranked_scores(w * y, w * ~y, np.array([0, 1, 3]))
    assert scores == {"auroc": pytest.approx(5 / 6), "auprc": pytest.approx(3 / 4)}
    assert scores["auroc"] == pytest.approx(roc_auc_score(y, z, sample_weight=w))
    assert scores["auprc"] == pytest.approx(average_precision_score(y, z, sample_weight=w))


def test_patient_codes_number_train_then_tuning_patients_whatever_their_ids():
    # String ids (an object column) with unnamed tuning rows: each tuning row its own patient after the train ones.
    assert patient_codes(np.array(["b", "a", "b"], dtype=object), None, 2).tolist() == [1, 0, 1, 2, 3]
    # Named on both sides: equal ids are one patient, negative ids included.
    assert patient_codes(np.array([-1, 5]), np.array([-1, 7]), 2).tolist() == [0, 1, 0, 2]
    assert patient_codes(None, np.array(["x", "y", "x"]), 3).tolist() == [0, 1, 0]
    assert patient_codes(None, None, 3).tolist() == [0, 1, 2]


def test_the_one_se_rule_takes_the_l1_when_every_weight_ranks_alike():
    y_train = np.r_[np.ones(10), np.zeros(10)]  # common: chosen by AUROC
    y = np.array([1, 0, 1, 0, 0, 1])
    z = np.array([3.0, 1.0, 2.0, 0.0, -1.0, 0.5])
    # (1 - w) * z + w * 2z = (1 + w) * z ranks as z at every weight: every score ties (the
    # best is the trees alone), every resample's gap is 0, so every weight is within one
    # standard error of the best and the rule takes the nearest the L1, w = 1.
    weight, objective, scores, guard, rule = choose_blend(z, 2 * z, y, y_train, ModelConfig(blend_rule="one_se"))
    assert (weight, objective) == (1.0, "auroc") and set(scores.values()) == {round(8 / 9, 6)}
    assert rule == {"name": "one_se", "best": 0.0, "tolerance": {str(w / 10): 0.0 for w in range(11)}, "within": [str(w / 10) for w in range(11)]}
    assert choose_blend(z, 2 * z, y, y_train, ModelConfig(blend_rule="best"))[::4] == (0.0, None)
    # Rows of one class: no rule (the weights cannot be scored).
    assert choose_blend(z, 2 * z, np.ones(6), np.r_[np.ones(1), np.zeros(99)], ModelConfig(blend_rule="one_se"))[4] is None


def test_the_one_se_rule_takes_the_largest_weight_within_a_paired_standard_error_of_the_best():
    """Rebuilt by hand: the standard deviation over patient-level resamples of the best
    weight's AUROC minus each allowed weight's, and the largest weight whose gap is within it."""
    rng = np.random.default_rng(5)
    n, draws = 400, 50
    subjects = np.arange(n) // 2  # two rows a patient
    y = (rng.random(n) < 0.3).astype(int)
    trees, linear = 1.0 * y + rng.normal(size=n), 0.9 * y + rng.normal(size=n)
    y_train = np.r_[np.ones(10), np.zeros(10)]
    config = ModelConfig(blend_rule="one_se", blend_rule_draws=draws)
    weight, objective, scores, guard, rule = choose_blend(trees, linear, y, y_train, config, subjects)
    allowed = [w for w in BLEND_WEIGHTS if str(w) not in guard["excluded"]]
    auroc = {w: roc_auc_score(y, (1 - w) * trees + w * linear) for w in allowed}
    best = max(allowed, key=lambda w: (auroc[w], -w))
    uniq, row_subject = np.unique(subjects, return_inverse=True)
    draw = np.random.default_rng(config.seed)
    gaps = {w: [] for w in allowed}
    for _ in range(draws):
        counts = np.bincount(draw.integers(0, uniq.size, uniq.size), minlength=uniq.size)[row_subject]
        keep = counts > 0
        score = {w: roc_auc_score(y[keep], ((1 - w) * trees + w * linear)[keep], sample_weight=counts[keep]) for w in allowed}
        for w in allowed:
            gaps[w].append(score[best] - score[w])
    tolerance = {w: float(np.std(g)) for w, g in gaps.items()}
    within = [w for w in allowed if auroc[best] - auroc[w] <= tolerance[w]]
    assert rule["best"] == best and rule["within"] == [str(w) for w in within]
    assert rule["tolerance"] == pytest.approx({str(w): t for w, t in tolerance.items()}, abs=1e-6)
    assert weight == max(within) > best  # the rule moved the weight toward the L1
    assert choose_blend(trees, linear, y, y_train, config.model_copy(update={"blend_rule": "best"}), subjects)[0] == best


def test_a_blended_model_predicts_the_blend_of_trees_with_offset_and_the_l1(tmp_path):
    matrix = rare_matrix(tmp_path)
    trained = train_models(matrix, tmp_path / "m", ModelConfig(n_jobs=1, blend=0.3))
    summary = json.loads(trained.summary_path.read_text())
    assert summary["xgboost"]["blend"] == {"method": "fixed", "weight": 0.3, "objective": None, "score_by_weight": {}}
    assert summary["xgboost"]["offset"]["method"] == "l1"
    X, _, _ = matrix.load()
    l1 = L1Logistic.from_json(json.loads(trained.l1_path.read_text()))
    trees = load_xgboost(trained.xgboost_path).predict(X, output_margin=True, base_margin=np.zeros(X.shape[0]))
    # The trees boost from the L1 (l1 + trees), then blend with it: 0.7 (l1 + trees) + 0.3 l1.
    expected = 1 / (1 + np.exp(-(0.7 * (l1.margin(X) + trees) + 0.3 * l1.margin(X))))
    model = load_primary(trained)
    assert (model.blend, model.offset is not None, model.linear is not None) == (0.3, True, True)
    np.testing.assert_allclose(model.probability(X), expected, rtol=1e-5)
    saved = pq.read_table(trained.predictions_path("xgboost_uncalibrated")).column(schema.PREDICTED_BOOLEAN_PROBABILITY).to_numpy()
    np.testing.assert_allclose(saved, expected, rtol=1e-5)
    # Retrained without a blend, the folder holds no stale blend.
    train_models(matrix, tmp_path / "m", ModelConfig(n_jobs=1, blend="none"))
    assert not trained.blend_path.exists() and load_primary(trained).blend == 0.0
    with pytest.raises(ValueError, match="needs the L1-logistic it blends with"):
        PrimaryModel(model.clf, None, 0.5)


def test_out_of_fold_tree_margins_are_trees_fitted_on_the_other_folds():
    rng = np.random.default_rng(4)
    X = sp.random(300, 8, density=0.4, format="csr", random_state=4, dtype=np.float32)
    y = (np.asarray(X[:, 0].todense()).ravel() + rng.normal(0, 0.3, 300) > 0.5).astype(int)
    groups = np.arange(300) // 2
    # The trees as XGBoost fits them (the rule of 11 for their leaves off); with it, below.
    config = ModelConfig(n_jobs=1, cv_folds=3, leaf_min_cell=1)
    oof = crossfit_tree_margins(X, y, groups, config, {"max_depth": 2}, 7)
    # Fold 1's rows are scored by 7 depth-2 trees fitted on folds 0 and 2 with the study's other settings.
    fit_rows, score_rows = subject_folds(y, groups, 3, 0)[1]
    kwargs = xgboost_params(y, config, {"max_depth": 2}) | {"n_estimators": 7, "early_stopping_rounds": None}
    import xgboost as xgb

    by_hand = xgb.XGBClassifier(**kwargs, n_jobs=1).fit(X[fit_rows], y[fit_rows])
    np.testing.assert_allclose(oof[score_rows], by_hand.predict(X[score_rows], output_margin=True), rtol=1e-6)
    assert len(by_hand.get_booster().get_dump()) == 7
    # By default each fold's trees are released as the shipped model's are (models.release).
    safe = ModelConfig(n_jobs=1, cv_folds=3)
    released_oof = crossfit_tree_margins(X, y, groups, safe, {"max_depth": 2}, 7)
    by_hand_released = released(by_hand, X[fit_rows], y[fit_rows], groups[fit_rows], kwargs, None, safe)
    np.testing.assert_allclose(released_oof[score_rows], by_hand_released.predict(X[score_rows], output_margin=True),
                               rtol=1e-6)
    # From offsets: each fold's trees start from its rows' offsets.
    start = np.linspace(-1, 1, 300)
    moved = crossfit_tree_margins(X, y, groups, config, {"max_depth": 2}, 7, start)
    by_hand.fit(X[fit_rows], y[fit_rows], base_margin=start[fit_rows])
    np.testing.assert_allclose(moved[score_rows], by_hand.predict(X[score_rows], output_margin=True, base_margin=start[score_rows]),
                               rtol=1e-6)
    # Nested (offset_c): the fold's trees are fitted from L1 offsets out of fold within folds 0
    # and 2 alone, so fold 1's labels reach neither the trees nor their starting points; the
    # scored rows still start from their own offsets.
    nested = crossfit_tree_margins(X, y, groups, config, {"max_depth": 2}, 7, start, offset_c=0.3)
    inner = crossfit_l1_margins(X[fit_rows], y[fit_rows], groups[fit_rows], 0.3, 3, 0, config.l1_tol)
    by_hand.fit(X[fit_rows], y[fit_rows], base_margin=inner)
    np.testing.assert_allclose(nested[score_rows], by_hand.predict(X[score_rows], output_margin=True, base_margin=start[score_rows]),
                               rtol=1e-6)
    assert not np.allclose(nested[score_rows], moved[score_rows])
    # A fold whose other folds hold no event gets their smoothed base rate, or its own offsets.
    one = np.zeros(300, int)
    one[0] = 1
    margins = crossfit_tree_margins(X, one, groups, config, None, 7)
    alone = next(f for f in subject_folds(one, groups, 3, 0) if 0 in f[1])
    np.testing.assert_allclose(margins[alone[1]], np.log(0.5 / (alone[0].size + 0.5)))
    np.testing.assert_allclose(crossfit_tree_margins(X, one, groups, config, None, 7, start)[alone[1]], start[alone[1]])


@pytest.mark.parametrize("rare", [False, True])
def test_crossfit_blend_weight_is_chosen_on_out_of_fold_train_rows_and_tuning_rows(tmp_path, rare):
    """The default blend scores each weight on every train row's out-of-fold log-odds (trees
    refitted with the final tree count, the L1 at its C; with an offset, the offsets are the
    L1's out-of-fold log-odds) and the tuning rows: rebuilt by hand, the same weight and scores."""
    matrix = rare_matrix(tmp_path) if rare else synthetic_matrix(tmp_path)
    trained = train_models(matrix, tmp_path / "m", ModelConfig(n_jobs=1))
    summary = json.loads(trained.summary_path.read_text())
    blend = summary["xgboost"]["blend"]
    X, rows, _ = matrix.load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(int)
    tr, tu = (rows[schema.SPLIT] == "train").to_numpy(), (rows[schema.SPLIT] == "tuning").to_numpy()
    assert summary["xgboost"]["offset"]["method"] == ("l1" if rare else "none")
    assert (blend["method"], blend["scored_on"], blend["folds"]) == ("crossfit", "out-of-fold train and tuning", 5)
    # no events count: with the published total it would give a small held-out count back
    assert blend["rows"] == int(tr.sum() + tu.sum()) and "events" not in blend
    assert blend["objective"] == ("auprc" if rare else "auroc")
    l1 = L1Logistic.from_json(json.loads(trained.l1_path.read_text()))
    subjects = rows[schema.SUBJECT_ID].to_numpy()
    linear = crossfit_l1_margins(X[tr], y[tr], subjects[tr], l1.C, 5, 0, 1e-3)
    trees_model = load_primary(trained)
    n_trees = int(trees_model.clf.best_iteration) + 1
    oof = crossfit_tree_margins(X[tr], y[tr], subjects[tr], ModelConfig(n_jobs=1), None, n_trees, linear if rare else None,
                                l1.C if rare else None)
    plain = PrimaryModel(trees_model.clf, trees_model.offset)
    weight, objective, scores, guard, rule = choose_blend(np.r_[oof, plain.tree_margin(X[tu])], np.r_[linear, l1.margin(X[tu])],
                                                          np.r_[y[tr], y[tu]], y[tr], ModelConfig(), np.r_[subjects[tr], subjects[tu]])
    assert (weight, objective) == (blend["weight"], blend["objective"])
    assert scores == pytest.approx(blend["score_by_weight"], abs=1e-6)
    assert guard["by_weight"] == pytest.approx(blend["guard"]["by_weight"], abs=1e-6)
    allowed = [w for w in blend["score_by_weight"] if blend["guard"]["by_weight"][w] >= blend["guard"]["l1"]]
    assert blend["guard"]["excluded"] == [w for w in blend["score_by_weight"] if w not in allowed]
    best = max(allowed, key=lambda w: (blend["score_by_weight"][w], -float(w)))
    if ModelConfig().blend_rule == "best":
        assert rule is None and blend["rule"] is None and weight == float(best)
    else:  # the rule's tolerances come from resamples of the same rows and patients
        assert rule["tolerance"] == pytest.approx(blend["rule"]["tolerance"], abs=1e-6)
        assert rule["best"] == blend["rule"]["best"] == float(best)
        assert weight == max(float(w) for w in blend["rule"]["within"])
    assert trees_model.blend == weight


def test_out_of_fold_offsets_never_see_their_own_label():
    rng = np.random.default_rng(3)
    X = sp.random(300, 8, density=0.4, format="csr", random_state=3)
    y = (np.asarray(X[:, 0].todense()).ravel() + rng.normal(0, 0.3, 300) > 0.5).astype(int)
    groups = np.arange(300) // 2  # two rows a subject
    base = crossfit_l1_margins(X, y, groups, 1.0, 5, 0, 1e-6)
    # Flip the labels of one fold's rows: their own offsets stay, the other folds' move.
    folds = subject_folds(y, groups, 5, 0)
    held = folds[0][1]
    flipped = y.copy()
    flipped[held[:10]] = 1 - flipped[held[:10]]
    # (The flip moves which subjects have an event, and so the folds: deal them by the first labels.)
    import forewarn.models.train as train_module

    original = train_module.subject_folds
    train_module.subject_folds = lambda *_a, **_k: folds
    try:
        moved = crossfit_l1_margins(X, flipped, groups, 1.0, 5, 0, 1e-6)
    finally:
        train_module.subject_folds = original
    np.testing.assert_array_equal(moved[held], base[held])
    assert not np.allclose(moved[folds[1][1]], base[folds[1][1]])
    # Each fold's offsets are an L1 fitted on the other folds: the same as fitting it by hand.
    fit_rows, score_rows = folds[2]
    lr, _ = fit_l1_logistic(X[fit_rows], y[fit_rows], X[fit_rows], y[fit_rows], ModelConfig(l1_c_grid=[1.0], l1_tol=1e-6),
                            groups[fit_rows])
    np.testing.assert_allclose(base[score_rows], lr.margin(X[score_rows]), rtol=1e-10)


def test_offset_with_fewer_event_subjects_than_folds(tmp_path):
    """One train subject with an event: the folds without it get the smoothed base rate of
    the other folds (an L1 needs both classes), and training goes on."""
    X, rows, _ = synthetic_matrix(tmp_path).load()
    y = np.zeros(X.shape[0], bool)
    split = rows[schema.SPLIT].to_numpy()
    y[np.flatnonzero(split == "train")[0]] = True
    y[np.flatnonzero(split == "tuning")[:2]] = True
    y[np.flatnonzero(split == "held_out")[:2]] = True
    matrix = write_matrix(tmp_path / "one", X, y, split)
    assert "the train split must hold at least 11 subjects with the outcome" in trainability(matrix)
    # the offset's mechanics, with the rule of 11 for the trees' leaves off (development only)
    trained = train_models(matrix, tmp_path / "m", ModelConfig(n_jobs=1, leaf_min_cell=1))
    assert json.loads(trained.summary_path.read_text())["xgboost"]["offset"]["method"] == "l1"
    tr = split == "train"
    margins = crossfit_l1_margins(X[tr], y[tr].astype(int), np.arange(tr.sum()), 1.0, 5, 0, 1e-3)
    event_fold = [f for f in subject_folds(y[tr], np.arange(tr.sum()), 5, 0) if y[tr][f[1]].any()][0]
    others = np.setdiff1d(np.arange(tr.sum()), event_fold[1])
    n = event_fold[0].size  # the rows the event's own fold is scored from: no event among them
    np.testing.assert_allclose(margins[event_fold[1]], np.log(0.5 / (n + 0.5)))
    assert np.isfinite(margins[others]).all() and len(set(np.round(margins[others], 9))) > 1  # fitted L1s elsewhere


def test_missing_values_count_as_absent_in_the_offset(tmp_path):
    matrix = rare_matrix(tmp_path)
    trained = train_models(matrix, tmp_path / "m", ModelConfig(n_jobs=1))
    model = load_primary(trained)
    X, _, _ = matrix.load()
    dense = np.asarray(X[:40].todense())
    dense[dense == 0] = np.nan  # a dense input marks absent features as missing
    np.testing.assert_allclose(model.offset.margin(dense), model.offset.margin(X[:40]))
    np.testing.assert_allclose(model.probability(dense), model.probability(X[:40]), rtol=1e-6)


def test_shap_values_of_an_offset_model_sum_to_its_log_odds(tmp_path):
    from forewarn.evaluation.explain import shap_values

    matrix = rare_matrix(tmp_path)
    trained = train_models(matrix, tmp_path / "m", ModelConfig(n_jobs=1, blend="none"))
    model = load_primary(trained)
    X, _, _ = matrix.load()
    values, base = shap_values(model, X[:200])
    p = model.probability(X[:200])
    np.testing.assert_allclose(values.sum(axis=1) + base, np.log(p / (1 - p)), atol=1e-4)
    # The offset's features carry its linear part: a feature only the L1 uses is explained by it alone.
    w = model.offset.coef / model.offset.scale
    trees_only, _ = shap_values(PrimaryModel(model.clf), X[:200])
    x = np.asarray(X[:200].todense())
    np.testing.assert_allclose(values - trees_only, (x - x.mean(axis=0)) * w, atol=1e-5)
    # Blended with the L1 at 0.3: the values are 0.7 x the offset model's + 0.3 x the L1's linear values.
    blended = PrimaryModel(model.clf, model.offset, 0.3, model.offset)
    b_values, b_base = shap_values(blended, X[:200])
    p = blended.probability(X[:200])
    np.testing.assert_allclose(b_values.sum(axis=1) + b_base, np.log(p / (1 - p)), atol=1e-4)
    np.testing.assert_allclose(b_values, 0.7 * values + 0.3 * (x - x.mean(axis=0)) * w, atol=1e-5)


def _depths(tree: dict) -> list[int]:
    """The depth of every leaf of one tree of XGBoost's JSON model."""
    left, right = tree["left_children"], tree["right_children"]
    out, stack = [], [(0, 0)]
    while stack:
        node, d = stack.pop()
        if left[node] == -1:
            out.append(d)
        else:
            stack += [(left[node], d + 1), (right[node], d + 1)]
    return out


def test_weighted_training_stops_on_the_weighted_tuning_loss(tmp_path):
    X, rows, _ = synthetic_matrix(tmp_path).load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(np.int8)
    tr, tu = (rows[schema.SPLIT] == "train").to_numpy(), (rows[schema.SPLIT] == "tuning").to_numpy()
    config = ModelConfig(n_jobs=1, class_weight="balanced", xgboost={"n_estimators": 20}, leaf_min_cell=1)  # trees as fitted
    spw = pos_weight(y[tr], config)
    w = tuning_weights(y[tu], spw)
    assert spw > 1 and np.array_equal(w, np.where(y[tu] == 1, spw, 1.0))
    assert tuning_weights(y[tu], 1.0) is None
    clf = fit_xgboost(X[tr], y[tr], X[tu], y[tu], config)
    p = clf.predict_proba(X[tu], iteration_range=(0, 20))[:, 1]
    from sklearn.metrics import log_loss

    assert clf.evals_result()["validation_0"]["logloss"][-1] == pytest.approx(log_loss(y[tu], p, sample_weight=w), rel=1e-4)


def per_c_l1_fits(X_train, y_train, X_tune, y_tune, grid, seed=0, tol=1e-4, kept=None):
    """The L1 baseline fitted plainly: one liblinear fit per C on the max-abs scaled train
    split, the columns not ``kept`` zeroed (all kept when None), at scikit-learn's default
    tolerance unless ``tol`` is given."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MaxAbsScaler

    scaler = MaxAbsScaler().fit(X_train)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    kept = np.ones(X_train.shape[1], bool) if kept is None else kept
    Xs = X_train @ sp.diags(kept / scale)
    out = {}
    for c in grid:
        lr = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=c, tol=tol, max_iter=1000, random_state=seed).fit(Xs, y_train)
        model = L1Logistic(scale, lr.coef_.ravel().copy(), float(lr.intercept_[0]), c)
        out[c] = (model, float(roc_auc_score(y_tune, model.predict_proba(X_tune))))
    return out


def test_l1_leaves_out_columns_fewer_than_11_subjects_hold_and_ships_no_scale():
    """13 rows of 12 subjects (the last row is subject 0's second). Column 0: 1..12 and
    20: scale 20, 12 subjects, kept. Column 1: 11 rows with a value but 10 subjects: left
    out, so its coefficient is 0 though its rows all have the outcome. Column 2: empty.
    ``min_cell`` 1 keeps every column holding a value. The saved model holds each
    feature's weight on its unscaled value, not the scales (one person's largest value)."""
    X = np.zeros((13, 3))
    X[:12, 0] = np.arange(1, 13)
    X[12, 0] = 20
    X[:10, 1], X[12, 1] = 5.0, 9.0  # subjects 0..9, subject 0 twice
    groups = np.r_[np.arange(12), 0]
    scale, kept = l1_columns(sp.csr_matrix(X), groups)
    assert scale.tolist() == [20.0, 9.0, 1.0] and kept.tolist() == [True, False, False]
    assert l1_columns(sp.csr_matrix(X))[1].tolist() == [True, True, False]  # by rows: 11 "subjects"
    assert l1_columns(sp.csr_matrix(X), groups, min_cell=1)[1].tolist() == [True, True, False]
    y = np.r_[np.ones(10), np.zeros(2), 1].astype(int)  # column 1's rows: all with the outcome
    model, _ = fit_l1_logistic(sp.csr_matrix(X), y, sp.csr_matrix(X), y, ModelConfig(l1_c_grid=[10.0]), groups)
    assert model.coef[1] == 0.0 and model.coef[0] != 0.0
    saved = model.to_json()
    assert set(saved) == {"C", "intercept", "weights"} and saved["weights"][0] == model.coef[0] / 20.0
    loaded = L1Logistic.from_json(json.loads(json.dumps(saved)))
    np.testing.assert_array_equal(loaded.margin(sp.csr_matrix(X)), model.margin(sp.csr_matrix(X)))
    # A model saved before session 18 (with its scales) still loads.
    legacy = L1Logistic.from_json({"C": 1.0, "intercept": 0.5, "scale": [2.0, 4.0], "coef": [1.0, 2.0]})
    assert legacy.weights.tolist() == [0.5, 0.5] and legacy.margin(sp.csr_matrix(np.ones((1, 2))))[0] == 1.5
    # The registered model reads both, without Forewarn.
    from forewarn.flows.serving import _linear

    assert _linear(saved)[0].tolist() == saved["weights"] and _linear(saved)[1] == saved["intercept"]
    assert _linear({"C": 1.0, "intercept": 0.5, "scale": [2.0, 4.0], "coef": [1.0, 2.0]})[0].tolist() == [0.5, 0.5]


def _l1_case(tmp_path):
    X, rows, _ = synthetic_matrix(tmp_path, n=1500, seed=3).load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(np.int8)
    tr, tu = (rows[schema.SPLIT] == "train").to_numpy(), (rows[schema.SPLIT] == "tuning").to_numpy()
    return X[tr], y[tr], X[tu], y[tu]


def test_l1_grid_matches_the_per_c_fits(tmp_path):
    """The grid gives exactly the per-C liblinear fits at the same tolerance."""
    X_tr, y_tr, X_tu, y_tu = _l1_case(tmp_path)
    config = ModelConfig(n_jobs=1)
    model, scores = fit_l1_logistic(X_tr, y_tr, X_tu, y_tu, config)
    kept = np.asarray((sp.csr_matrix(X_tr) != 0).sum(axis=0)).ravel() >= 11  # a row a subject
    reference = per_c_l1_fits(X_tr, y_tr, X_tu, y_tu, config.l1_c_grid, tol=config.l1_tol, kept=kept)
    assert scores == {c: auc for c, (_, auc) in reference.items()}
    assert max(scores, key=lambda c: (scores[c], -c)) == model.C
    np.testing.assert_array_equal(model.coef, reference[model.C][0].coef)
    assert model.intercept == reference[model.C][0].intercept


def test_l1_looser_tolerance_picks_the_same_c_as_before(tmp_path):
    """The default tolerance (1e-3) against the fits at scikit-learn's 1e-4 on a golden case."""
    X_tr, y_tr, X_tu, y_tu = _l1_case(tmp_path)
    config = ModelConfig(n_jobs=1)
    assert config.l1_tol == 1e-3
    model, scores = fit_l1_logistic(X_tr, y_tr, X_tu, y_tu, config)
    before = per_c_l1_fits(X_tr, y_tr, X_tu, y_tu, config.l1_c_grid)
    before_best = max(before, key=lambda c: (before[c][1], -c))
    assert model.C == before_best == 0.3
    assert abs(scores[model.C] - before[before_best][1]) <= 0.002


def test_isotonic_needs_enough_tuning_events():
    rng = np.random.default_rng(1)
    risk = rng.random(4000) * 0.04
    y = rng.random(4000) < risk  # about 80 events
    assert 0 < y.sum() < MIN_ISOTONIC_EVENTS
    calibrator, scores = choose_calibrator(np.clip(risk * 3, 0, 1), y)
    assert set(scores) == {"none", "sigmoid"} and calibrator.method == "sigmoid"
    many = rng.random(4000) < 0.5
    assert set(choose_calibrator(rng.random(4000), many)[1]) == {"none", "sigmoid", "isotonic"}
    assert "isotonic" in choose_calibrator(np.clip(risk * 3, 0, 1), y, method="isotonic")[1]  # asked for by name: allowed


def test_calibrator_folds_keep_a_subjects_rows_together(monkeypatch):
    import forewarn.models.calibration as calibration

    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(300), 4)  # four prediction times a subject, as max_per_subject > 1 gives
    p = np.repeat(rng.random(300), 4)  # a subject's rows share a score, so a score names its subject
    y = np.repeat(rng.random(300) < p[::4], 4)
    fit = calibration.fit_calibrator
    overlaps = []

    def spy(p_fit, y_fit, method):
        calibrator = fit(p_fit, y_fit, method)
        if p_fit.size == p.size:  # the final refit on every row
            return calibrator
        return lambda p_test: overlaps.append(len(set(p_fit) & set(p_test))) or calibrator(p_test)

    monkeypatch.setattr(calibration, "fit_calibrator", spy)
    calibration.choose_calibrator(p, y, groups=subjects)
    assert len(overlaps) == 3 * 5 and max(overlaps) == 0  # 3 candidates x 5 folds, no subject on both sides
    overlaps.clear()
    calibration.choose_calibrator(p, y)  # rows split alone: a subject's rows land on both sides
    assert min(overlaps) > 0


def test_calibrator_with_one_subject_holding_every_event_is_not_cross_validated():
    # Five event rows, all one subject's: no fold can score a calibrator on other people.
    p = np.linspace(0.05, 0.95, 40)
    y = np.zeros(40, bool)
    y[-5:] = True
    groups = np.r_[np.arange(35), [99] * 5]
    calibrator, scores = choose_calibrator(p, y, groups=groups)
    assert (calibrator.method, scores) == ("none", {})
    assert choose_calibrator(p, y)[1]  # rows alone would have folded them


def test_isotonic_calibration_keeps_the_ranking():
    rng = np.random.default_rng(4)
    p = rng.random(5000) ** 2
    y = rng.random(5000) < p
    calibrator = fit_calibrator(p, y, "isotonic")
    plain = np.interp(p, calibrator.x, calibrator.y)
    flat = (p <= calibrator.x[0]) | (p >= calibrator.x[-1])
    assert flat.any() and np.unique(plain[flat]).size == 2  # beyond the end knots the map is flat
    out = calibrator(p)
    assert np.unique(out).size == np.unique(p).size and np.abs(out - plain).max() <= 1e-6
    assert np.array_equal(np.argsort(out, kind="stable"), np.argsort(p, kind="stable"))  # the model's order
    assert roc_auc_score(y, out) == roc_auc_score(y, p) != roc_auc_score(y, plain)


def test_sigmoid_that_would_reverse_the_ranking_is_not_used():
    rng = np.random.default_rng(2)
    p = rng.random(2000)
    y = rng.random(2000) < 0.6 - 0.5 * p  # the scores rank the wrong way round
    calibrator, scores = choose_calibrator(p, y)
    assert scores["sigmoid"] < scores["none"]  # a sigmoid would fit better ...
    assert fit_calibrator(p, y, "sigmoid").b < 0  # ... by reversing the ranking
    assert calibrator.method == "none"


def test_few_training_events_warn(tmp_path):
    trained = train_models(synthetic_matrix(tmp_path, n=400), tmp_path / "m", ModelConfig(n_jobs=1))
    summary = json.loads(trained.summary_path.read_text())
    assert summary["positives"]["train"] < 100
    size = summary["sample_size"]
    assert size["event_subjects"] == summary["positives"]["train"]  # one row a subject here
    assert summary["warnings"][0].startswith(f"only {size['event_subjects']} training subjects with the outcome (fewer than 100)")
    # The features the model uses: those a tree splits on, with any the L1 it blends with weighs.
    model = load_primary(trained)
    trees = {int(k[1:]) for k in model.clf.get_booster().get_score(importance_type="weight")}
    linear = set(np.flatnonzero(model.linear.coef)) if model.blend else set()
    assert size["features_used"] == len(trees | linear) > 0
    assert size["events_per_feature_used"] == round(size["event_subjects"] / size["features_used"], 2)
    assert set(summary["age_sex"]) == {"coef_age_per_decade", "coef_female", "intercept"}


@pytest.mark.parametrize(
    ("events", "used", "expected"),
    [
        (150, 40, []),  # 3.75 events per used feature: a limitation in the report, not a warning
        (99, 40, ["only 99 training subjects with the outcome (fewer than 100)"]),
        (120, 121, ["fewer training subjects with the outcome (120) than features the model uses (121)"]),
        (120, 120, []),
        (30, 45, ["only 30 training subjects", "fewer training subjects with the outcome (30) than features"]),
    ],
)
def test_sample_size_warnings_weigh_events_against_the_models_size(events, used, expected):
    got = sample_size_warnings({"event_subjects": events, "features_used": used,
                                "events_per_feature_used": round(events / used, 2)})
    assert len(got) == len(expected) and all(g.startswith(e) for g, e in zip(got, expected, strict=True))


def test_search_runs_trials_and_refits_with_the_best(tmp_path):
    from forewarn.models.search import SearchConfig

    matrix = synthetic_matrix(tmp_path)
    config = ModelConfig(n_jobs=1, search=SearchConfig(trials=6, seed=1))
    trained = train_models(matrix, tmp_path / "m", config)
    summary = json.loads(trained.summary_path.read_text())
    trials = summary["search"]["trials"]
    assert len(trials) == 6 and summary["search"]["objective"] == "auroc"
    complete = [t for t in trials if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"])
    assert summary["search"]["best_params"] == best["params"]
    assert summary["xgboost"]["params"]["max_depth"] == best["params"]["max_depth"]
    again = json.loads(train_models(matrix, tmp_path / "m2", config).summary_path.read_text())
    assert [t["value"] for t in again["search"]["trials"]] == [t["value"] for t in trials]  # seeded


def _search_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, 5))
    y = (X[:, 0] + 0.5 * rng.normal(size=600) > 0.8).astype(int)
    return X[:400], y[:400], X[400:], y[400:]


def test_search_prunes_a_trial_that_lags_the_median():
    """Trials 0-2 learn the signal (tuning AUROC near 0.9 at round 20); from trial 3 on
    the fit sees shuffled labels (AUROC near 0.5), which the median pruner stops at its
    first report after the 20 warm-up rounds."""
    import xgboost as xgb

    from forewarn.models.search import SearchConfig, search_xgboost

    X_train, y_train, X_tune, y_tune = _search_data()
    shuffled = np.random.default_rng(1).permutation(y_train)
    calls = []

    def fit(params, callbacks, eval_metric):
        labels = y_train if len(calls) < 3 else shuffled
        calls.append(params)
        clf = xgb.XGBClassifier(n_estimators=60, early_stopping_rounds=60, eval_metric=eval_metric, callbacks=callbacks,
                                n_jobs=1, random_state=0, **params)
        return clf.fit(X_train, labels, eval_set=[(X_tune, y_tune)], verbose=False)

    _, records = search_xgboost(X_train, y_train, X_tune, y_tune, fit, SearchConfig(trials=5, seed=0))
    assert [r["state"] for r in records] == ["complete"] * 3 + ["pruned"] * 2
    assert all(r["value"] > 0.8 for r in records[:3])
    # A pruned trial stops at its first report past the warm-up: round 20 is its last.
    assert [r["best_iteration"] <= 20 for r in records[3:]] == [True, True]


@pytest.mark.parametrize("objective", ["auroc", "auprc"])
def test_a_named_search_objective_scores_every_trial_by_it_whatever_the_prevalence(objective):
    """``auto`` picks AUPRC below 5% prevalence and AUROC otherwise; a named objective
    holds at any prevalence: each trial's value is that metric of its tuning risks, and
    the fits are asked for XGBoost's matching metric (``auc`` / ``aucpr``) to prune on."""
    import xgboost as xgb
    from sklearn.metrics import average_precision_score, roc_auc_score

    from forewarn.models.search import SearchConfig, objective_name, search_xgboost

    rare, common = np.r_[np.ones(4), np.zeros(96)], np.r_[np.ones(30), np.zeros(70)]
    assert objective_name(SearchConfig(), rare) == "auprc" and objective_name(SearchConfig(), common) == "auroc"
    assert objective_name(SearchConfig(objective=objective), rare) == objective
    assert objective_name(SearchConfig(objective=objective), common) == objective
    X_train, y_train, X_tune, y_tune = _search_data()  # 20-30% prevalence: auto would be AUROC
    asked, risks = [], []

    def fit(params, callbacks, eval_metric):
        asked.append(eval_metric[0])
        clf = xgb.XGBClassifier(n_estimators=20, early_stopping_rounds=20, eval_metric=eval_metric, callbacks=callbacks,
                                n_jobs=1, random_state=0, **params)
        clf.fit(X_train, y_train, eval_set=[(X_tune, y_tune)], verbose=False)
        risks.append(clf.predict_proba(X_tune)[:, 1])
        return clf

    _, records = search_xgboost(X_train, y_train, X_tune, y_tune, fit, SearchConfig(trials=3, objective=objective))
    score = roc_auc_score if objective == "auroc" else average_precision_score
    assert asked == [{"auroc": "auc", "auprc": "aucpr"}[objective]] * 3
    assert [r["objective"] for r in records] == [objective] * 3
    assert [r["value"] for r in records] == pytest.approx([score(y_tune, p) for p in risks])


def test_search_stops_starting_trials_at_the_time_budget():
    import time

    import xgboost as xgb

    from forewarn.models.search import SearchConfig, search_xgboost

    X_train, y_train, X_tune, y_tune = _search_data()

    def slow_fit(params, callbacks, eval_metric):
        time.sleep(0.5)  # each trial takes at least half a second
        clf = xgb.XGBClassifier(n_estimators=5, early_stopping_rounds=5, eval_metric=eval_metric, callbacks=callbacks, n_jobs=1,
                                **params)
        return clf.fit(X_train, y_train, eval_set=[(X_tune, y_tune)], verbose=False)

    _, records = search_xgboost(X_train, y_train, X_tune, y_tune, slow_fit, SearchConfig(trials=100, timeout_s=1))
    # Optuna starts no trial after 1 s, so at most 3 of the 100 asked for run (the one
    # running at the deadline finishes).
    assert 1 <= len(records) <= 3


def test_search_scores_trials_with_the_offset(tmp_path):
    """Trials of trees that boost from the L1 are scored as the model predicts: with the
    tuning rows' offset. The refit with the best trial's values scores that trial's value,
    and the blend with the L1, chosen after the search, scores at least that."""
    from sklearn.metrics import average_precision_score

    from forewarn.models.search import SearchConfig

    matrix = rare_matrix(tmp_path)
    config = ModelConfig(n_jobs=1, search=SearchConfig(trials=4, seed=1), blend="tuned",  # scored on tuning alone, as the trials
                         blend_rule="best", leaf_min_cell=1)  # trees as fitted, where the blend improves on them
    trained = train_models(matrix, tmp_path / "m", config)
    summary = json.loads(trained.summary_path.read_text())
    assert summary["search"]["objective"] == "auprc" and summary["xgboost"]["offset"]["method"] == "l1"
    best = max((t for t in summary["search"]["trials"] if t["state"] == "complete"), key=lambda t: t["value"])
    pred = pq.read_table(trained.predictions_path("xgboost_uncalibrated")).to_pandas()
    tune = pred[schema.SPLIT] == "tuning"
    refit = average_precision_score(pred.loc[tune, schema.BOOLEAN_VALUE], pred.loc[tune, schema.PREDICTED_BOOLEAN_PROBABILITY])
    blend = summary["xgboost"]["blend"]
    assert blend["score_by_weight"]["0.0"] == pytest.approx(best["value"], abs=1e-6)  # the trees alone: the trial's score
    assert refit == pytest.approx(blend["score_by_weight"][str(blend["weight"])], abs=1e-6)
    assert refit > best["value"] and blend["weight"] > 0  # here the blend improves on the trees


def test_subject_folds_keep_subjects_whole_and_spread_events():
    # 10 subjects, two rows each; subjects 0-3 have an event (on their second row).
    groups = np.repeat(np.arange(10), 2)
    y = np.zeros(20, int)
    y[[1, 3, 5, 7]] = 1
    folds = subject_folds(y, groups, k=2, seed=0)
    tests = [set(groups[t]) for _, t in folds]
    assert tests[0] | tests[1] == set(range(10)) and not tests[0] & tests[1]  # each subject in one test fold
    assert [len(s & {0, 1, 2, 3}) for s in tests] == [2, 2]  # the 4 subjects with events: 2 per fold
    assert [len(s) for s in tests] == [5, 5]
    for train, test in folds:
        assert sorted(np.r_[train, test]) == list(range(20))
    assert [t.tolist() for _, t in folds] == [t.tolist() for _, t in subject_folds(y, groups, k=2, seed=0)]  # seeded


def test_tree_count_auto_uses_cross_validation_below_100_tuning_events():
    assert tree_count_method(np.r_[np.ones(99), np.zeros(5000)], ModelConfig(tree_count="auto")) == "cv"
    assert tree_count_method(np.r_[np.ones(100), np.zeros(100)], ModelConfig(tree_count="auto")) == "tuning"
    assert tree_count_method(np.r_[np.ones(500), np.zeros(99)], ModelConfig(tree_count="auto")) == "cv"  # few non-events
    assert tree_count_method(np.r_[np.ones(5), np.zeros(50)], ModelConfig(tree_count="tuning")) == "tuning"


def test_cross_validated_tree_count_is_the_fitted_and_saved_count(tmp_path):
    X, rows, _ = synthetic_matrix(tmp_path).load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(np.int8)
    tr, tu = (rows[schema.SPLIT] == "train").to_numpy(), (rows[schema.SPLIT] == "tuning").to_numpy()
    config = ModelConfig(n_jobs=1, tree_count="cv", cv_folds=3)
    groups = rows[schema.SUBJECT_ID].to_numpy()[tr]
    trees, loss = cv_tree_count(X[tr], y[tr], groups, xgboost_params(y[tr], config), 3, 1)
    assert 1 < trees < 600 and 0 < loss < 0.7  # stopped early, better than chance (log 2 = 0.693)
    clf = fit_xgboost(X[tr], y[tr], X[tu], y[tu], config, tree_count="cv", groups=groups)
    assert clf.get_booster().num_boosted_rounds() == trees and clf.best_iteration == trees - 1
    clf.save_model(tmp_path / "cv.json")
    assert load_xgboost(tmp_path / "cv.json").best_iteration == trees - 1
    # train_models records how the count was chosen.
    (tmp_path / "t").mkdir()
    trained = train_models(synthetic_matrix(tmp_path / "t"), tmp_path / "models", config)
    summary = json.loads(trained.summary_path.read_text())["xgboost"]
    assert summary["tree_count"] == {"method": "cv", "folds": 3} and summary["best_iteration"] == trees - 1


def test_external_validation_recalibrates_only_on_11_events_and_non_events(tmp_path):
    """A site's calibrator for a shipped model leaves the site (its coefficients or
    knots): it is fitted only when the tuning split holds at least 11 events and 11
    non-events, else the record says why and nothing is fitted."""
    from forewarn.evaluation.validation import external_validation

    matrix = synthetic_matrix(tmp_path)
    trained = train_models(matrix, tmp_path / "models", ModelConfig(n_jobs=1))
    (tmp_path / "other").mkdir()
    (tmp_path / "few").mkdir()
    record = external_validation(trained, synthetic_matrix(tmp_path / "other", seed=1), n_boot=10)
    assert record["recalibrated"]["auroc"] is not None
    assert record["recalibration"]["method"] in ("shipped", "none", "sigmoid", "isotonic")
    # the other site's tuning split with only 6 events
    X, rows, _ = synthetic_matrix(tmp_path / "few", seed=1).load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool).copy()
    tuning_events = np.flatnonzero(y & (rows[schema.SPLIT] == "tuning").to_numpy())
    assert tuning_events.size > 6
    y[tuning_events[6:]] = False
    few = write_matrix(tmp_path / "few6", X, y, rows[schema.SPLIT].to_numpy())
    record = external_validation(trained, few, n_boot=10)
    assert record["recalibrated"] is None
    assert record["recalibration"] == {"method": None, "note": "not recalibrated: this site's tuning split holds fewer "
                                                               "than 11 events or non-events"}
    assert record["as_shipped"]["auroc"] is not None  # the held-out rows are untouched


def test_external_recalibration_keeps_the_shipped_calibrator_unless_a_refit_beats_it(tmp_path):
    """A calibrator refitted on the validating site's tuning split replaces the model's own
    only where its cross-validated Brier there beats the shipped risks' Brier on the same
    rows; else the model is kept as shipped (method ``shipped``), and its worklist and
    ``forewarn score --recalibrate-here`` score with its own calibrator."""
    from forewarn.evaluation.validation import (
        external_validation,
        local_calibrator,
        model_probabilities,
    )
    from forewarn.models.calibration import choose_calibrator

    trained = train_models(synthetic_matrix(tmp_path), tmp_path / "models", ModelConfig(n_jobs=1))
    (tmp_path / "alike").mkdir()
    alike = synthetic_matrix(tmp_path / "alike", seed=1)  # drawn as the model's own site's rows were
    record = external_validation(trained, alike, n_boot=0)
    raw, calibrated, rows = model_probabilities(trained, alike)
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool)
    tune = (rows[schema.SPLIT] == "tuning").to_numpy()
    _, scores = choose_calibrator(raw[tune], y[tune], seed=0, groups=rows[schema.SUBJECT_ID].to_numpy()[tune])
    assert min(scores.values()) >= np.mean((calibrated[tune] - y[tune]) ** 2)  # no refit beats the shipped risks
    assert record["recalibration"] == {"method": "shipped", "fitted_on": "tuning split of the validating site",
                                       "note": "kept as shipped: no calibrator fitted on this site's tuning split "
                                               "beat the model's own there"}
    assert json.dumps(record["recalibrated"]) == json.dumps(record["as_shipped"])  # NaN intervals without a bootstrap
    assert local_calibrator(record["recalibration"]) is None  # scored with the model's own calibrator
    # Where the outcome is commoner at the same features (y = signal + noise > 0.35, not
    # 0.6), the shipped risks are too low there and a refit wins.
    X, rows, _ = alike.load()
    rng = np.random.default_rng(1)
    signal = np.asarray(X[:, 0].todense()).ravel() + np.asarray(X[:, 1].todense()).ravel()
    shifted = write_matrix(tmp_path / "shifted", X, signal + rng.normal(0, 0.25, X.shape[0]) > 0.35,
                           rows[schema.SPLIT].to_numpy())
    record = external_validation(trained, shifted, n_boot=0)
    assert record["recalibration"]["method"] in ("sigmoid", "isotonic")
    assert record["recalibrated"]["brier"] < record["as_shipped"]["brier"]
    assert local_calibrator(record["recalibration"]).method == record["recalibration"]["method"]


def test_external_validation_scores_the_home_threshold_by_site_age_band_and_sex(tmp_path):
    """The shipped model's subgroups at the validating site, its one "site" level the
    whole held-out split there, scored at the threshold set at the model's own site."""
    from forewarn.evaluation.validation import external_validation, model_probabilities

    trained = train_models(synthetic_matrix(tmp_path), tmp_path / "models", ModelConfig(n_jobs=1))
    (tmp_path / "other").mkdir()
    other = synthetic_matrix(tmp_path / "other", seed=1)
    _, p, rows = model_probabilities(trained, other)
    held = (rows[schema.SPLIT] == "held_out").to_numpy()
    y, p = rows[schema.BOOLEAN_VALUE].to_numpy(bool)[held], p[held]
    threshold = float(np.quantile(p, 0.7))
    record = external_validation(trained, other, n_boot=10, site="community", threshold=threshold)
    (site,) = [r for r in record["subgroups"] if r["group"] == "site"]
    flag = p >= threshold
    assert (site["level"], site["rows"], site["events"]) == ("community", int(held.sum()), int(y.sum()))
    assert site["sensitivity"] == pytest.approx((flag & y).sum() / y.sum())
    assert site["specificity"] == pytest.approx((~flag & ~y).sum() / (~y).sum())
    assert site["alerts_per_1000"] == pytest.approx(1000 * flag.mean())
    assert site["auroc"] == pytest.approx(record["as_shipped"]["auroc"])
    assert {r["group"] for r in record["subgroups"]} == {"age_band", "sex", "site"}
    assert record["subgroup_threshold"]["threshold"] == threshold
    # Given this site's events, by race and ethnicity too (even subjects' static code
    # Race//5, odd ones' Race//3; no ethnicity recorded: one level, missing)
    from helpers import write_events

    ids = rows[schema.SUBJECT_ID].to_numpy()
    write_events(tmp_path / "events", [(int(i), None, "Race//5" if i % 2 == 0 else "Race//3", None) for i in np.unique(ids)])
    audited = external_validation(trained, other, n_boot=0, site="community", threshold=threshold,
                                  events_dir=tmp_path / "events")
    race = {r["level"]: r["rows"] for r in audited["subgroups"] if r["group"] == "race"}
    expected = {"Black or African American": int((ids[held] % 2 == 1).sum()), "White": int((ids[held] % 2 == 0).sum())}
    assert set(race) == set(expected) and any(race.values())  # the rule of 11 may withhold one (and so the other)
    assert all(race[level] in (None, n) for level, n in expected.items())
    assert [(r["level"], r["rows"]) for r in audited["subgroups"] if r["group"] == "ethnicity"] == [(None, int(held.sum()))]
    json.dumps(record)  # plain JSON for MLflow and the report row
    assert "lead_median_days" not in site  # no outcome times given
    # Given the site's outcome times (each subject with the outcome 60 days after its
    # prediction time), each level's lead times come back too.
    X, all_rows, _ = other.load()
    positive = all_rows[all_rows[schema.BOOLEAN_VALUE]]
    outcomes = pd.DataFrame({schema.SUBJECT_ID: positive[schema.SUBJECT_ID].to_numpy(),
                             "outcome_time": (positive[schema.PREDICTION_TIME] + pd.Timedelta(days=60)).to_numpy()})
    outcomes.to_parquet(tmp_path / "outcomes.parquet")
    assert int((flag & y).sum()) >= 11
    timed = external_validation(trained, other, n_boot=0, site="community", threshold=threshold,
                                outcomes_path=tmp_path / "outcomes.parquet")
    (site,) = [r for r in timed["subgroups"] if r["group"] == "site"]
    assert [site[k] for k in ("lead_median_days", "lead_q25_days", "lead_q75_days")] == [60.0, 60.0, 60.0]
    # Without a threshold: no operating point to score.
    assert "sensitivity" not in external_validation(trained, other, n_boot=0, site="community")["subgroups"][0]


def test_l1_record_withholds_tuning_aurocs_when_the_tuning_split_has_1_to_10_events(tmp_path):
    """An AUROC with the tuning split's published size would give its 1..10 events back."""
    from forewarn.models.train import l1_record

    matrix = synthetic_matrix(tmp_path)
    X, rows, _ = matrix.load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool)
    tr = (rows[schema.SPLIT] == "train").to_numpy()
    config = ModelConfig(n_jobs=1)
    lr, scores = fit_l1_logistic(X[tr], y[tr], X[tr], y[tr], config)
    groups = rows[schema.SUBJECT_ID].to_numpy()[tr]
    shown = l1_record(lr, scores, X[tr], groups, config, np.r_[np.ones(11), np.zeros(11)])
    assert list(shown["tuning_auroc_by_C"].values()) == list(scores.values())
    for y_tune in (np.r_[np.ones(10), np.zeros(500)], np.r_[np.ones(500), np.zeros(3)]):
        hidden = l1_record(lr, scores, X[tr], groups, config, y_tune)
        assert set(hidden["tuning_auroc_by_C"].values()) == {None} and hidden["C"] == lr.C


def test_paired_auroc_of_the_champion_against_itself_is_zero_and_rows_must_match(tmp_path):
    from forewarn.evaluation.validation import model_probabilities, paired_auroc

    matrix = synthetic_matrix(tmp_path)
    trained = train_models(matrix, tmp_path / "models", ModelConfig(n_jobs=1))
    assert paired_auroc(trained, matrix, trained, matrix, n_boot=20) == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    # Another model on the same rows: the point difference is the two held-out AUROCs'.
    other = train_models(matrix, tmp_path / "other", ModelConfig(n_jobs=1, seed=1, xgboost={"max_depth": 1}))
    d = paired_auroc(trained, matrix, other, matrix, n_boot=20)
    _, p, rows = model_probabilities(trained, matrix)
    _, q, _ = model_probabilities(other, matrix)
    held = (rows[schema.SPLIT] == "held_out").to_numpy()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool)[held]
    assert d["difference"] == pytest.approx(roc_auc_score(y, p[held]) - roc_auc_score(y, q[held]))
    assert d["ci_low"] <= d["difference"] <= d["ci_high"]
    # Rows pair by subject and prediction time, not by position: the champion's matrix in
    # another order gives the same 0; one that lacks rows, or holds one twice, is an error.
    X, r, cols = matrix.load()

    def reordered(name, order):
        folder = tmp_path / name
        folder.mkdir()
        sp.save_npz(folder / "X.npz", X[order])
        r.iloc[order].reset_index(drop=True).to_parquet(folder / "rows.parquet")
        cols.to_parquet(folder / "columns.parquet")
        return FeatureMatrix(folder)

    order = np.random.default_rng(0).permutation(len(r))
    assert paired_auroc(trained, matrix, trained, reordered("shuffled", order), n_boot=20) == {
        "difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert paired_auroc(trained, matrix, other, reordered("shuffled-other", order), n_boot=20) == d
    held_rows = np.flatnonzero((r[schema.SPLIT] == "held_out").to_numpy())
    with pytest.raises(ValueError, match=r"the champion's matrix lacks some of the candidate's held-out rows; featurize"):
        paired_auroc(trained, matrix, trained, reordered("half", np.setdiff1d(order, held_rows[::2])), n_boot=20)
    with pytest.raises(ValueError):  # pandas' MergeError: not one to one
        paired_auroc(trained, matrix, trained, reordered("twice", np.r_[order, held_rows[:1]]), n_boot=20)
    # 1-10 held-out events: withheld, as the held-out metrics are.
    yy = r[schema.BOOLEAN_VALUE].to_numpy(bool).copy()
    held_events = np.flatnonzero(yy & (r[schema.SPLIT] == "held_out").to_numpy())
    yy[held_events[5:]] = False
    few = write_matrix(tmp_path / "few", X, yy, r[schema.SPLIT].to_numpy())
    assert paired_auroc(trained, few, trained, few, n_boot=20) is None


def test_published_importance_leaves_out_features_whose_mean_abs_shap_counts_a_handful_of_rows():
    """A linear part's SHAP value for a 0/1 code is w (x - k/m): its mean |SHAP| over m rows is
    |w| 2k(m - k) / m^2, and w is published with the model, so the value gave k back. Features
    recorded (or missing) in 1..10 explained rows are left out of the published table."""
    from forewarn.evaluation.explain import global_importance, linear_shap

    m = 200
    present = {"a": 4, "b": 11, "c": 0, "d": 195, "e": 200}  # d: missing in 5 rows
    dense = np.zeros((m, len(present)))
    for j, k in enumerate(present.values()):
        dense[:k, j] = 1.0
    X = sp.csr_matrix(dense)
    w = np.array([1.7, 0.4, 0.9, 0.3, 0.2])
    values, _ = linear_shap(L1Logistic(np.ones(5), w, 0.0, 1.0), X)
    k = present["a"]
    assert np.abs(values[:, 0]).mean() == pytest.approx(1.7 * 2 * k * (m - k) / m**2)  # the attack: solve for k
    names = list(present)
    columns = pd.DataFrame({"name": names, "code": names, "agg": "count", "window": "full", "description": names})
    assert sorted(global_importance(values, columns, X)["name"]) == ["b", "c", "e"]
    # A stored 0 is a value to the trees but 0 to the linear part: "b" stored in 11 rows,
    # 4 of them non-zero, gives its 4 back the same way.
    coo = X.tocoo()
    keep = ~((coo.col == 1) & (coo.row >= 4))
    rows_, cols_, data_ = coo.row[keep], coo.col[keep], coo.data[keep]
    stored = sp.csr_matrix((np.r_[data_, np.zeros(7)], (np.r_[rows_, np.arange(4, 11)], np.r_[cols_, np.ones(7, int)])),
                           shape=X.shape)  # explicit zeros stay stored entries
    assert np.diff(sp.csc_matrix(stored).indptr)[1] == 11
    assert "b" not in set(global_importance(values, columns, stored)["name"])
    assert sorted(global_importance(values, columns)["name"]) == names  # without the rows: everything, as before


def test_held_out_record_keeps_events_withheld_beside_1_to_10_non_events(tmp_path):
    """The calibration statistics merged into the held-out record must not put back the
    events that metrics.evaluate withheld (rows less events = the 7 non-events)."""
    from forewarn.evaluation.evaluate import EvaluationConfig, held_out_metrics

    X, rows, _ = synthetic_matrix(tmp_path).load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool).copy()
    held = (rows[schema.SPLIT] == "held_out").to_numpy()
    y[held] = True
    y[np.flatnonzero(held)[:7]] = False
    matrix = write_matrix(tmp_path / "few", X, y, rows[schema.SPLIT].to_numpy())
    trained = train_models(matrix, tmp_path / "models", ModelConfig(n_jobs=1))
    record = held_out_metrics(trained, EvaluationConfig(bootstrap=10))
    assert record["n"] == int(held.sum()) and record["events"] is None and record["few_non_events"] is True
    # withheld metrics, but whether the risks vary at all still ships (models.promotion's floor)
    assert record["withheld"] is True and record["constant_risk"] is False


def test_constant_risk_says_whether_every_row_got_the_same_risk():
    from forewarn.evaluation.evaluate import risk_spread

    assert risk_spread(np.full(5, 0.2)) == {"constant_risk": True}
    assert risk_spread(np.array([0.2, 0.2, 0.2000001])) == {"constant_risk": False}
    assert risk_spread(np.array([])) == {"constant_risk": True}


def test_the_shipped_trees_start_from_a_rounded_train_rate_not_the_exact_one(tmp_path):
    """XGBoost would store the exact train event rate as base_score; times the published
    train rows it gave the exact train events (and, less the labelled total, the tuning
    and held-out events the report shows as <11)."""
    from forewarn.models.train import base_score

    X, rows, _ = synthetic_matrix(tmp_path).load()
    labels = rows[schema.BOOLEAN_VALUE].to_numpy(bool).copy()
    train = (rows[schema.SPLIT] == "train").to_numpy()
    labels[np.flatnonzero(train & labels)[:2]] = False  # 77 train events here: make them 75, not a multiple of 11
    matrix = write_matrix(tmp_path / "m2", X, labels, rows[schema.SPLIT].to_numpy())
    y = labels[train]
    events, n = int(y.sum()), int(y.size)
    trained = train_models(matrix, tmp_path / "models", ModelConfig(n_jobs=1))
    stored = json.loads(trained.xgboost_path.read_text())["learner"]["learner_model_param"]["base_score"]
    stored = float(stored.strip("[]"))
    e, ne = round(events / 11) * 11, round((n - events) / 11) * 11
    assert stored == pytest.approx(e / (e + ne), rel=1e-6) == base_score(y)
    assert events % 11 and stored * n != pytest.approx(events, abs=0.01)  # the exact count is not in the model
    assert base_score(np.r_[np.ones(5, bool), np.zeros(100, bool)]) == 0.5  # 5 events round to none


def test_a_calibrator_must_beat_a_simpler_one_by_more_than_one_standard_error():
    """``simplest_within_one_se`` by hand: sigmoid's mean squared error 0.2 against none's
    0.25, their row differences [0, 0, 0, 0.2] (mean 0.05, sd 0.1, se 0.05): within one
    standard error, so none; with [0.05, 0.05, 0.05, 0.2] (mean 0.0875, se 0.0375) the
    sigmoid. Per subject (rows 1-2 and 3-4 one subject each) the first case's two sums
    [0, 0.2], scaled by 2/4 to [0, 0.1], have mean 0.05 and se 0.05: none."""
    from forewarn.models.calibration import simplest_within_one_se

    none = np.array([0.1, 0.2, 0.3, 0.4])
    assert simplest_within_one_se({"none": none, "sigmoid": np.array([0.1, 0.2, 0.3, 0.2])}) == "none"
    assert simplest_within_one_se({"none": none, "sigmoid": np.array([0.05, 0.15, 0.25, 0.2])}) == "sigmoid"
    assert simplest_within_one_se({"none": none, "sigmoid": np.array([0.1, 0.2, 0.3, 0.2])},
                                  np.array([1, 1, 2, 2])) == "none"
    # the lowest is chosen when it is the simplest, and a tie goes to the simpler
    assert simplest_within_one_se({"none": np.array([0.1, 0.2]), "sigmoid": np.array([0.3, 0.4])}) == "none"
    assert simplest_within_one_se({"shipped": none, "none": none.copy()}) == "shipped"
