"""The registered model for XGBoost trees that boost from an L1-logistic offset
(``ModelConfig.offset``), as an MLflow "model from code".

MLflow's XGBoost flavour can only hold the trees; this file is logged as the model's
code (``mlflow.pyfunc.log_model(python_model=<this file>)``) with two artifacts, the
XGBoost JSON model and the offset's JSON coefficients, so the registered model needs
neither pickle nor Forewarn to serve: numpy, scipy and xgboost. ``predict`` takes the
feature matrix (dense, missing features NaN, or scipy sparse) and returns the
uncalibrated probability of the outcome per row, the same as
``models.train.PrimaryModel.probability``.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import scipy.sparse as sp
import xgboost as xgb


class OffsetXGBoost(mlflow.pyfunc.PythonModel):
    # The input is one plain array, which the logged signature describes: no validation
    # from type hints on ``predict`` (MLflow otherwise warns that it has none).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.clf = xgb.XGBClassifier()
        self.clf.load_model(context.artifacts["xgboost"])
        with open(context.artifacts["offset"]) as f:
            offset = json.load(f)
        self.weights = np.asarray(offset["coef"], dtype=np.float64) / np.asarray(offset["scale"], dtype=np.float64)
        self.intercept = float(offset["intercept"])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        X = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        if sp.issparse(X):
            margin = np.asarray(X @ self.weights).ravel()
        else:
            # A missing feature counts as absent (0) for the linear offset, as unstored
            # entries of the sparse training matrix did; the trees see it as missing.
            margin = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0) @ self.weights
        return self.clf.predict_proba(X, base_margin=margin + self.intercept)[:, 1]


mlflow.models.set_model(OffsetXGBoost())
