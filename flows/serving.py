"""The registered model: Forewarn's primary model (``models.train.PrimaryModel``) as an
MLflow "model from code".

MLflow's XGBoost flavour can only hold trees, and its ``pyfunc`` ``predict`` returns 0/1
labels. This file is logged as the model's code (``mlflow.pyfunc.log_model(python_model=
<this file>)``) with the model's JSON files as artifacts: the XGBoost model (``xgboost``)
and, where the model has them, the L1-logistic offset the trees boost from (``offset``,
``ModelConfig.offset``) and the blend with the L1-logistic (``blend``: its weight and
coefficients, ``ModelConfig.blend``) and its calibrator (``calibration``). The registered
model needs neither pickle nor Forewarn to serve: numpy, scipy and xgboost. ``predict``
takes the feature matrix (dense, missing features NaN, or scipy sparse) and returns the
calibrated probability of the outcome per row, the risk the report's thresholds and
calibration refer to (``models.calibration.Calibrator`` applied to
``PrimaryModel.probability``); ``params={"calibrated": False}`` returns the uncalibrated
one. The trees alone are the ``xgboost`` artifact, in XGBoost's own JSON format.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import scipy.sparse as sp
import xgboost as xgb
from scipy.special import expit


def _linear(data: dict) -> tuple[np.ndarray, float]:
    """The weights on the unscaled features and the intercept of an L1-logistic's JSON
    (saved before session 18: its coefficients on the scaled features and the scales)."""
    if "weights" in data:
        return np.asarray(data["weights"], dtype=np.float64), float(data["intercept"])
    return np.asarray(data["coef"], dtype=np.float64) / np.asarray(data["scale"], dtype=np.float64), float(data["intercept"])


def _margin(X, weights: np.ndarray, intercept: float) -> np.ndarray:
    if sp.issparse(X):
        return np.asarray(X @ weights).ravel() + intercept
    # A missing feature counts as absent (0) for a linear part, as unstored entries of the
    # sparse training matrix did; the trees see it as missing.
    return np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0) @ weights + intercept


def _calibrated(p: np.ndarray, calibration: dict | None) -> np.ndarray:
    """``models.calibration.Calibrator`` from its JSON, without Forewarn."""
    method = (calibration or {}).get("method", "none")
    if method == "isotonic":  # the step function, its ties broken by a 1e-6 share of p
        return (1 - 1e-6) * np.interp(p, calibration["x"], calibration["y"]) + 1e-6 * np.clip(p, 0, 1)
    if method == "sigmoid":
        q = np.clip(p, 1e-6, 1 - 1e-6)
        return expit(calibration["a"] + calibration["b"] * np.log(q / (1 - q)))
    return p


class PrimaryXGBoost(mlflow.pyfunc.PythonModel):
    # The input is one plain array, which the logged signature describes: no validation
    # from type hints on ``predict`` (MLflow otherwise warns that it has none).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.clf = xgb.XGBClassifier()
        self.clf.load_model(context.artifacts["xgboost"])
        self.offset = self.linear = self.calibration = None
        self.weight = 0.0
        if "calibration" in context.artifacts:
            with open(context.artifacts["calibration"]) as f:
                self.calibration = json.load(f)
        if "offset" in context.artifacts:
            with open(context.artifacts["offset"]) as f:
                self.offset = _linear(json.load(f))
        if "blend" in context.artifacts:
            with open(context.artifacts["blend"]) as f:
                blend = json.load(f)
            self.weight, self.linear = float(blend["weight"]), _linear(blend["l1_logistic"])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        X = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        base = None if self.offset is None else _margin(X, *self.offset)
        if not self.weight:
            p = self.clf.predict_proba(X, base_margin=base)[:, 1].astype(np.float64)
        else:
            z = (1.0 - self.weight) * self.clf.predict(X, output_margin=True, base_margin=base) + self.weight * _margin(X, *self.linear)
            p = 1.0 / (1.0 + np.exp(-z))
        return _calibrated(p, self.calibration) if (params or {}).get("calibrated", True) else p


mlflow.models.set_model(PrimaryXGBoost())
