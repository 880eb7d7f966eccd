"""Forewarn's three models as scikit-learn estimators.

``train_models`` fits the models with a study's settings, saves them as JSON and
predicts every row. These classes wrap the same fits in scikit-learn's estimator API:
``get_params``/``set_params`` (so ``clone`` works), ``fit``, ``predict_proba`` with
``classes_`` [0, 1], ``predict`` and ``score``. They can go into scikit-learn's tooling,
for example ``cross_val_score`` for the baselines. ``load_estimators`` turns a trained
folder into fitted estimators without refitting.

Choices made on the tuning split (the L1's C, XGBoost's early stopping, its offset and
its calibrator) take that split as fit parameters, ``fit(X, y, X_tune=..., y_tune=...)``,
as XGBoost's own ``eval_set`` does. Fitted on the same rows with the same settings, each
estimator predicts exactly what ``train_models`` saved (tested), given two things that
``train_models`` has and an estimator does not know: ``groups`` (the rows' subjects,
which the out-of-fold offset's and the cross-validated tree count's folds keep whole)
and, when the study ran a search, its best values as ``params`` (the estimator runs no
search).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin

from forewarn.models.calibration import Calibrator, choose_calibrator
from forewarn.models.train import (
    AGE_SEX,
    BASELINE,
    PRIMARY,
    AgeSexLogistic,
    L1Logistic,
    ModelConfig,
    PrimaryModel,
    TrainedModels,
    fit_blend,
    fit_l1_logistic,
    fit_xgboost,
    load_primary,
    offset_margins,
    offset_method,
    tree_count_method,
)


def _binary(y, who: str) -> np.ndarray:
    y = np.asarray(y)
    if not np.isin(np.unique(y), [0, 1]).all():
        raise ValueError(f"{who}.fit: y must be binary (0/1 or False/True); got the values {np.unique(y)[:5].tolist()}")
    return y.astype(np.int8)


def _two_columns(p: np.ndarray) -> np.ndarray:
    return np.column_stack([1.0 - p, p])


class _Binary(ClassifierMixin, BaseEstimator):
    """predict_proba's second column thresholded at 0.5, with classes [0, 1]."""

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int8)

    def _fitted(self, n_features: int) -> None:
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = int(n_features)


class L1LogisticClassifier(_Binary):
    """L1-regularised logistic regression on max-abs-scaled sparse features
    (``models.train.fit_l1_logistic``), columns that fewer than ``min_cell`` subjects hold
    a value of left out (``models.train.l1_columns``; ``min_cell`` 1: every column).
    ``groups`` (the rows' subjects) count subjects; each row is its own when None.

    With ``C`` set, that C is fitted. Otherwise C is chosen from ``C_grid`` by AUROC on
    ``X_tune``, ``y_tune``, which ``fit`` then needs."""

    def __init__(self, C: float | None = None, C_grid=(0.01, 0.03, 0.1, 0.3, 1.0), tol: float = 1e-3, random_state: int = 0,
                 min_cell: int = 11):
        self.C = C
        self.C_grid = C_grid
        self.tol = tol
        self.random_state = random_state
        self.min_cell = min_cell

    def fit(self, X, y, X_tune=None, y_tune=None, groups=None) -> L1LogisticClassifier:
        X, y = sp.csr_matrix(X), _binary(y, type(self).__name__)
        grid = [self.C] if self.C is not None else list(self.C_grid)
        if X_tune is None and len(grid) > 1:
            raise ValueError(
                f"L1LogisticClassifier.fit: C is chosen from C_grid ({len(grid)} values) on a tuning split; pass X_tune "
                "and y_tune, or set C"
            )
        X_tune, y_tune = (X, y) if X_tune is None else (sp.csr_matrix(X_tune), _binary(y_tune, type(self).__name__))
        config = ModelConfig(seed=self.random_state, l1_c_grid=grid, l1_tol=self.tol, leaf_min_cell=self.min_cell)
        self.model_, self.tuning_auroc_by_C_ = fit_l1_logistic(X, y, X_tune, y_tune, config, groups)
        self.C_ = self.model_.C
        self._fitted(X.shape[1])
        return self

    def decision_function(self, X) -> np.ndarray:
        return self.model_.margin(sp.csr_matrix(X))

    def predict_proba(self, X) -> np.ndarray:
        return _two_columns(self.model_.predict_proba(sp.csr_matrix(X)))


class AgeSexClassifier(_Binary):
    """The age + sex baseline: unpenalised logistic regression on age per decade (column
    ``age_index``) and female sex (the largest of columns ``female_indexes``).
    ``for_columns`` finds both in a feature matrix's columns."""

    def __init__(self, age_index: int | None = None, female_indexes: tuple[int, ...] = ()):
        self.age_index = age_index
        self.female_indexes = female_indexes

    @classmethod
    def for_columns(cls, columns: pd.DataFrame) -> AgeSexClassifier:
        age, female = AgeSexLogistic.indexes(columns)
        return cls(age_index=age, female_indexes=female)

    def _design(self, X) -> np.ndarray:
        return AgeSexLogistic.design_at(X, self.age_index, tuple(self.female_indexes))

    def fit(self, X, y) -> AgeSexClassifier:
        self.model_ = AgeSexLogistic.fit_design(self._design(X), _binary(y, type(self).__name__))
        self._fitted(X.shape[1])
        return self

    def decision_function(self, X) -> np.ndarray:
        return self.model_.margin_of_design(self._design(X))

    def predict_proba(self, X) -> np.ndarray:
        return _two_columns(1.0 / (1.0 + np.exp(-self.decision_function(X))))


class ForewarnXGBClassifier(_Binary):
    """Forewarn's XGBoost: hist trees with early stopping on ``X_tune``, the rare-outcome
    settings and, below 2% prevalence, the L1-logistic offset (``config.offset``), blended
    with the L1-logistic at the weight ``config.blend`` chooses (``fit_blend``), then a
    calibrator chosen on ``X_tune``. ``predict_proba`` gives calibrated probabilities,
    ``decision_function`` the uncalibrated log-odds. ``params`` override ``config.xgboost``
    (a search's best). ``groups`` (the rows' subjects) keep each subject's rows in one
    fold wherever folds are cut, and ``groups_tune`` (the tuning rows' subjects) with them
    keep each subject's rows together in the blend rule's bootstrap; each row is its own
    subject when None."""

    def __init__(self, config: ModelConfig | None = None, params: dict | None = None):
        self.config = config
        self.params = params

    def fit(self, X, y, X_tune=None, y_tune=None, groups=None, groups_tune=None) -> ForewarnXGBClassifier:
        if X_tune is None or y_tune is None:
            raise ValueError("ForewarnXGBClassifier.fit: pass X_tune and y_tune (early stopping and calibration use them)")
        who = type(self).__name__
        X, y, X_tune, y_tune = sp.csr_matrix(X), _binary(y, who), sp.csr_matrix(X_tune), _binary(y_tune, who)
        config = self.config or ModelConfig()
        groups = np.arange(X.shape[0]) if groups is None else np.asarray(groups)
        offset = offset_method(y, config) == "l1"
        l1 = fit_l1_logistic(X, y, X_tune, y_tune, config, groups)[0] if offset or config.blend != "none" else None
        margins = offset_margins(X, y, X_tune, groups, l1, config) if offset else None
        clf = fit_xgboost(X, y, X_tune, y_tune, config, self.params, tree_count=tree_count_method(y_tune, config),
                          groups=groups, margins=margins)
        self.model_ = PrimaryModel(clf, l1 if offset else None)
        if l1 is not None:
            weight, _ = fit_blend(self.model_, l1, X, y, X_tune, y_tune, groups, config, self.params,
                                  None if margins is None else margins[0], groups_tune)
            if weight:
                self.model_ = PrimaryModel(clf, self.model_.offset, weight, l1)
        self.calibrator_, _ = choose_calibrator(self.model_.probability(X_tune), y_tune, method=config.calibration,
                                                seed=config.seed, groups=groups_tune)
        self._fitted(X.shape[1])
        return self

    def decision_function(self, X) -> np.ndarray:
        return self.model_.margin(sp.csr_matrix(X))

    def predict_proba(self, X) -> np.ndarray:
        return _two_columns(self.calibrator_(self.model_.probability(sp.csr_matrix(X))))


def load_estimators(trained: TrainedModels, columns: pd.DataFrame, config: ModelConfig | None = None) -> dict[str, _Binary]:
    """The fitted estimators of a ``train_models`` folder, keyed by model name (``PRIMARY``,
    ``BASELINE``, ``AGE_SEX``), as they were saved: nothing is refitted. ``columns`` are
    the feature matrix's columns (the age + sex baseline finds its two there); ``config``
    is the study's model settings, which the estimators keep as their parameters (a
    refit, e.g. after ``clone``, uses them)."""
    n_features = len(columns)
    summary = json.loads(trained.summary_path.read_text())
    config = config or ModelConfig()
    xgb_est = ForewarnXGBClassifier(config=config, params=summary["search"].get("best_params") or None)
    xgb_est.model_ = load_primary(trained)
    xgb_est.calibrator_ = Calibrator.from_json(json.loads(trained.calibration_path.read_text()))
    l1 = L1Logistic.from_json(json.loads(trained.l1_path.read_text()))
    l1_est = L1LogisticClassifier(C_grid=tuple(config.l1_c_grid), tol=config.l1_tol, random_state=config.seed,
                                  min_cell=config.leaf_min_cell)
    l1_est.model_, l1_est.C_, l1_est.tuning_auroc_by_C_ = l1, l1.C, summary["l1_logistic"]["tuning_auroc_by_C"]
    age_sex = AgeSexClassifier.for_columns(columns)
    age_sex.model_ = AgeSexLogistic.from_json(json.loads(trained.age_sex_path.read_text()))
    for est in (xgb_est, l1_est, age_sex):
        est._fitted(n_features)
    return {PRIMARY: xgb_est, BASELINE: l1_est, AGE_SEX: age_sex}
