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
from forewarn.models.calibration import Calibrator, choose_calibrator, fit_calibrator
from forewarn.models.train import L1Logistic, ModelConfig, load_xgboost, pos_weight, train_models
from forewarn.records import schema


def synthetic_matrix(tmp_path, n=900, seed=0, tuning_positives=True) -> FeatureMatrix:
    rng = np.random.default_rng(seed)
    X = sp.random(n, 30, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    signal = np.asarray(X[:, 0].todense()).ravel() + np.asarray(X[:, 1].todense()).ravel()
    y = signal + rng.normal(0, 0.25, n) > 0.6
    split = np.array(["train", "tuning", "held_out"])[rng.choice(3, n, p=[0.6, 0.2, 0.2])]
    if not tuning_positives:
        y[split == "tuning"] = False
    rows = pd.DataFrame(
        {
            schema.SUBJECT_ID: np.arange(n),
            schema.PREDICTION_TIME: pd.Timestamp(datetime(2020, 1, 1)),
            schema.BOOLEAN_VALUE: y,
            schema.SPLIT: split,
        }
    )
    cols = pd.DataFrame({"name": ["AGE/years/at_prediction/t", "Gender//F/static/present/static"] + [f"X//{i}/code/count/full" for i in range(2, 30)]})
    (tmp_path / "m").mkdir()
    sp.save_npz(tmp_path / "m" / "X.npz", X)
    rows.to_parquet(tmp_path / "m" / "rows.parquet")
    cols.to_parquet(tmp_path / "m" / "columns.parquet")
    return FeatureMatrix(tmp_path / "m")


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
    np.testing.assert_allclose(
        calibrator(clf.predict_proba(X)[:, 1]),
        pq.read_table(trained.predictions_path("xgboost")).column(schema.PREDICTED_BOOLEAN_PROBABILITY).to_numpy(),
        rtol=1e-6,
    )
    summary = json.loads(trained.summary_path.read_text())
    assert summary["rows"] == {s: int((rows[schema.SPLIT] == s).sum()) for s in schema.SPLITS}
    assert summary["l1_logistic"]["C"] in config.l1_c_grid


def test_training_is_reproducible(tmp_path):
    matrix = synthetic_matrix(tmp_path)
    a = train_models(matrix, tmp_path / "a", ModelConfig(n_jobs=1))
    b = train_models(matrix, tmp_path / "b", ModelConfig(n_jobs=1))
    assert a.xgboost_path.read_bytes() == b.xgboost_path.read_bytes()


def test_tuning_split_without_positives_is_a_clear_error(tmp_path):
    matrix = synthetic_matrix(tmp_path, tuning_positives=False)
    with pytest.raises(ValueError, match=r"the tuning split must hold both positive and negative labels; it has \d+ rows and 0 positives"):
        train_models(matrix, tmp_path / "models", ModelConfig(n_jobs=1))


def test_calibration_by_hand_and_round_trip():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    y = np.array([0, 0, 1, 1], bool)
    iso = fit_calibrator(p, y, "isotonic")
    assert list(iso(p)) == [0.0, 0.0, 1.0, 1.0] and iso(np.array([0.25]))[0] == 0.5  # interpolated between knots
    again = Calibrator.from_json(json.loads(json.dumps(iso.to_json())))
    assert np.array_equal(again(p), iso(p))
    assert np.array_equal(fit_calibrator(p, y, "none")(p), p)


def test_choose_calibrator_fixes_overconfident_scores():
    rng = np.random.default_rng(0)
    true = rng.random(3000) * 0.3
    y = rng.random(3000) < true
    overconfident = np.clip(true * 2.5, 0, 1)
    calibrator, scores = choose_calibrator(overconfident, y)
    assert calibrator.method in ("sigmoid", "isotonic") and scores[calibrator.method] < scores["none"]
    assert abs(calibrator(overconfident).mean() - y.mean()) < 0.01 < abs(overconfident.mean() - y.mean())


def test_class_weighting():
    rare = np.r_[np.ones(10), np.zeros(990)]
    common = np.r_[np.ones(100), np.zeros(900)]
    assert pos_weight(rare, ModelConfig()) == 99.0  # auto: balanced below 2% prevalence
    assert pos_weight(common, ModelConfig()) == 1.0
    assert pos_weight(common, ModelConfig(class_weight="balanced")) == 9.0
    assert pos_weight(rare, ModelConfig(class_weight="none")) == 1.0


def test_few_training_events_warn(tmp_path):
    trained = train_models(synthetic_matrix(tmp_path, n=400), tmp_path / "m", ModelConfig(n_jobs=1))
    summary = json.loads(trained.summary_path.read_text())
    assert summary["positives"]["train"] < 100
    assert summary["warnings"] and "training events (fewer than 100)" in summary["warnings"][0]
    assert set(summary["age_sex"]) == {"coef_age_per_decade", "coef_female", "intercept"}


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
