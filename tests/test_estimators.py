"""The three models behind scikit-learn's estimator API: the same fits as train_models,
usable in scikit-learn's tooling, and loadable from a trained folder without refitting."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from test_models import rare_matrix, synthetic_matrix

from forewarn.models.estimators import (
    AgeSexClassifier,
    ForewarnXGBClassifier,
    L1LogisticClassifier,
    load_estimators,
)
from forewarn.models.train import AGE_SEX, BASELINE, PRIMARY, ModelConfig, train_models
from forewarn.records import schema


def _splits(matrix):
    X, rows, columns = matrix.load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool).astype(int)
    split = rows[schema.SPLIT].to_numpy()
    tr, tu = split == "train", split == "tuning"
    return X, y, tr, tu, rows[schema.SUBJECT_ID].to_numpy(), columns


def _saved(trained, model) -> np.ndarray:
    return pq.read_table(trained.predictions_path(model)).column(schema.PREDICTED_BOOLEAN_PROBABILITY).to_numpy()


@pytest.mark.parametrize("make", [synthetic_matrix, rare_matrix], ids=["common", "rare"])
def test_estimators_predict_what_train_models_saved(tmp_path, make):
    matrix = make(tmp_path)
    config = ModelConfig(n_jobs=1)
    trained = train_models(matrix, tmp_path / "models", config)
    X, y, tr, tu, subjects, columns = _splits(matrix)
    fitted = {
        PRIMARY: ForewarnXGBClassifier(config=config).fit(X[tr], y[tr], X_tune=X[tu], y_tune=y[tu], groups=subjects[tr],
                                                           groups_tune=subjects[tu]),
        BASELINE: L1LogisticClassifier().fit(X[tr], y[tr], X_tune=X[tu], y_tune=y[tu], groups=subjects[tr]),
        AGE_SEX: AgeSexClassifier.for_columns(columns).fit(X[tr], y[tr]),
    }
    loaded = load_estimators(trained, columns, config)
    for name in (PRIMARY, BASELINE, AGE_SEX):
        for est in (fitted[name], loaded[name]):
            p = est.predict_proba(X)
            assert p.shape == (X.shape[0], 2) and list(est.classes_) == [0, 1] and est.n_features_in_ == 30
            np.testing.assert_allclose(p[:, 1], _saved(trained, name), rtol=1e-6, err_msg=name)
            np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (fitted[PRIMARY].model_.offset is not None) == (make is rare_matrix)  # the offset below 2% prevalence
    np.testing.assert_allclose(fitted[PRIMARY].decision_function(X), np.log(_saved(trained, "xgboost_uncalibrated") / (
        1 - _saved(trained, "xgboost_uncalibrated"))), rtol=1e-5)
    assert fitted[BASELINE].C_ == loaded[BASELINE].C_


def test_estimators_clone_and_work_in_scikit_learn_tooling(tmp_path):
    X, y, tr, tu, _, columns = _splits(synthetic_matrix(tmp_path))
    l1 = L1LogisticClassifier(C=0.3, tol=1e-4)
    assert clone(l1).get_params() == {"C": 0.3, "C_grid": (0.01, 0.03, 0.1, 0.3, 1.0), "tol": 1e-4, "random_state": 0,
                                       "min_cell": 11}
    age_sex = AgeSexClassifier.for_columns(columns)
    assert age_sex.get_params() == {"age_index": 0, "female_indexes": (1,)}
    xgb_est = ForewarnXGBClassifier(config=ModelConfig(n_jobs=1), params={"max_depth": 2})
    assert clone(xgb_est).set_params(params={"max_depth": 3}).params == {"max_depth": 3}
    # Cross-validation and pipelines take the baselines as they take any classifier.
    scores = cross_val_score(l1, X, y, cv=3, scoring="roc_auc")
    assert scores.shape == (3,) and (scores > 0.8).all()
    assert cross_val_score(make_pipeline(AgeSexClassifier.for_columns(columns)), X, y, cv=3, scoring="roc_auc").shape == (3,)
    fitted = clone(xgb_est).fit(X[tr], y[tr], X_tune=X[tu], y_tune=y[tu])
    assert fitted.score(X[~tr & ~tu], y[~tr & ~tu]) == np.mean(fitted.predict(X[~tr & ~tu]) == y[~tr & ~tu])


def test_estimators_say_what_fit_needs(tmp_path):
    X, y, tr, _, _, _ = _splits(synthetic_matrix(tmp_path))
    with pytest.raises(ValueError, match=r"C is chosen from C_grid \(5 values\) on a tuning split; pass X_tune and y_tune, or set C"):
        L1LogisticClassifier().fit(X[tr], y[tr])
    with pytest.raises(ValueError, match=r"ForewarnXGBClassifier.fit: pass X_tune and y_tune"):
        ForewarnXGBClassifier().fit(X[tr], y[tr])
    with pytest.raises(ValueError, match=r"L1LogisticClassifier.fit: y must be binary \(0/1 or False/True\); got the values \[0, 1, 2\]"):
        L1LogisticClassifier(C=1.0).fit(X[:3], [0, 1, 2])
