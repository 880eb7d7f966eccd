"""Probability calibration that travels as JSON: isotonic or sigmoid (Platt), chosen by
cross-validated Brier score on the tuning split, and refitted on another site's data
for external recalibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss
from sklearn.model_selection import StratifiedKFold

Method = Literal["isotonic", "sigmoid", "none"]
EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), EPS, 1 - EPS)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Calibrator:
    """A monotone map from raw to calibrated probabilities."""

    method: Method
    x: tuple[float, ...] = ()  # isotonic knots (raw probability)
    y: tuple[float, ...] = ()  # isotonic values
    a: float = 0.0  # sigmoid: p' = 1 / (1 + exp(-(a + b * logit(p))))
    b: float = 1.0

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, float)
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        if self.method == "sigmoid":
            return 1.0 / (1.0 + np.exp(-(self.a + self.b * _logit(p))))
        return p

    def to_json(self) -> dict:
        return {"method": self.method, "x": list(self.x), "y": list(self.y), "a": self.a, "b": self.b}

    @classmethod
    def from_json(cls, data: dict) -> Calibrator:
        return cls(data["method"], tuple(data["x"]), tuple(data["y"]), float(data["a"]), float(data["b"]))


def fit_calibrator(p: np.ndarray, y: np.ndarray, method: Method) -> Calibrator:
    """Fit ``method`` on raw probabilities ``p`` and outcomes ``y``."""
    y = np.asarray(y, bool)
    if method == "none":
        return Calibrator("none")
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
        return Calibrator("isotonic", tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)))
    lr = LogisticRegression(C=np.inf).fit(_logit(p).reshape(-1, 1), y)
    return Calibrator("sigmoid", a=float(lr.intercept_[0]), b=float(lr.coef_[0, 0]))


def choose_calibrator(
    p: np.ndarray, y: np.ndarray, *, method: Method | Literal["auto"] = "auto", folds: int = 5, seed: int = 0
) -> tuple[Calibrator, dict[str, float]]:
    """The calibrator with the lowest cross-validated Brier score on (p, y), refitted on all
    of it, and the score of each candidate (``none`` included)."""
    y = np.asarray(y, bool)
    candidates: list[Method] = ["none", "sigmoid", "isotonic"] if method == "auto" else [method]
    n_pos = int(y.sum())
    k = min(folds, n_pos, int((~y).sum()))
    scores: dict[str, float] = {}
    if k >= 2:
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
        for m in candidates:
            out = np.empty(y.size)
            for fit_idx, test_idx in splitter.split(p.reshape(-1, 1), y):
                out[test_idx] = fit_calibrator(p[fit_idx], y[fit_idx], m)(p[test_idx])
            scores[m] = float(brier_score_loss(y, out))
        best = min(scores, key=lambda m: (scores[m], candidates.index(m)))
    else:
        best = "none" if method == "auto" else method
    return fit_calibrator(p, y, best), scores
