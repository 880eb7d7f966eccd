"""Probability calibration that travels as JSON: isotonic or sigmoid (Platt), chosen by
cross-validated Brier score on the tuning split (the simplest within one standard error), and refitted on another site's data
for external recalibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from forewarn.records import privacy

Method = Literal["isotonic", "sigmoid", "none"]
EPS = 1e-6
# Isotonic regression is a step function whose steps the events set: with few of them it
# pools most rows into a handful of plateaus, which ties risks the model had ranked
# apart and so loses discrimination, and it overfits small calibration sets
# (Niculescu-Mizil & Caruana, ICML 2005, where Platt scaling did better below about
# 1,000 calibration cases). ``choose_calibrator`` therefore considers it only with at
# least this many events and as many non-events on the calibration data; below that,
# the choice is between sigmoid (two parameters, strictly monotone) and none.
MIN_ISOTONIC_EVENTS = 100
# Where isotonic regression is used, its plateaus still tie rows that the model ranked
# apart. A share this small of the raw probability is mixed in to break those ties in
# the model's order: calibration then never changes AUROC or AUPRC, and moves no
# probability by more than this.
TIE_BREAK = 1e-6


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
            return (1 - TIE_BREAK) * np.interp(p, self.x, self.y) + TIE_BREAK * np.clip(p, 0, 1)
        if self.method == "sigmoid":
            return expit(self.a + self.b * _logit(p))  # no overflow warning where the slope is steep
        return p

    def to_json(self) -> dict:
        return {"method": self.method, "x": list(self.x), "y": list(self.y), "a": self.a, "b": self.b}

    @classmethod
    def from_json(cls, data: dict) -> Calibrator:
        return cls(data["method"], tuple(data["x"]), tuple(data["y"]), float(data["a"]), float(data["b"]))


def isotonic_blocks(
    p: np.ndarray, y: np.ndarray, min_cell: int = privacy.MIN_CELL
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centred isotonic regression (Oron & Flournoy 2017) on blocks no smaller than a cell.

    Isotonic regression pools adjacent rows (sorted by ``p``) into blocks of equal fitted
    rate. A block of a few rows would put those rows' risks and outcomes into a
    calibrator that travels with the model, so a block whose rows, events or non-events
    number 1 to ``min_cell - 1`` is pooled with the neighbour whose rate is nearer (pooling
    adjacent blocks keeps the rates monotone) until none is left. Each block becomes one
    knot at its mean ``p`` (an aggregate, not a row's risk) with its event rate; the
    calibrator interpolates linearly between knots. Returns (knots, rates, rows, events)
    per block; the calibrator keeps the first two."""
    order = np.argsort(p, kind="stable")
    ps, ys = np.asarray(p, float)[order], np.asarray(y, bool)[order]
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0).fit_transform(ps, ys)
    starts = np.flatnonzero(np.r_[True, fitted[1:] != fitted[:-1]])
    blocks = [[float(n), float(e), float(t)] for n, e, t in zip(
        np.diff(np.r_[starts, ps.size]), np.add.reduceat(ys.astype(float), starts), np.add.reduceat(ps, starts), strict=True)]

    def small(block: list[float]) -> bool:
        n, events = block[0], block[1]
        return any(0 < c < min_cell for c in (n, events, n - events))

    while len(blocks) > 1 and any(small(b) for b in blocks):
        i = next(k for k, b in enumerate(blocks) if small(b))
        rate = blocks[i][1] / blocks[i][0]
        neighbours = [k for k in (i - 1, i + 1) if 0 <= k < len(blocks)]
        j = min(neighbours, key=lambda k: (abs(blocks[k][1] / blocks[k][0] - rate), k))
        lo, hi = min(i, j), max(i, j)
        blocks[lo:hi + 1] = [[a + b for a, b in zip(blocks[lo], blocks[hi], strict=True)]]
    n, events, total = (np.array(c) for c in zip(*blocks, strict=True))
    return total / n, events / n, n.astype(int), events.astype(int)


def fit_calibrator(p: np.ndarray, y: np.ndarray, method: Method) -> Calibrator:
    """Fit ``method`` on raw probabilities ``p`` and outcomes ``y``."""
    y = np.asarray(y, bool)
    if method == "none":
        return Calibrator("none")
    if method == "isotonic":
        knots, rates, _, _ = isotonic_blocks(p, y)
        return Calibrator("isotonic", tuple(map(float, knots)), tuple(map(float, rates)))
    lr = LogisticRegression(C=np.inf).fit(_logit(p).reshape(-1, 1), y)
    return Calibrator("sigmoid", a=float(lr.intercept_[0]), b=float(lr.coef_[0, 0]))


def cv_predictions(
    p: np.ndarray, y: np.ndarray, candidates: list[Method], *, folds: int = 5, seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Each candidate's out-of-fold calibrated risks of (p, y) (``folds`` stratified folds,
    a subject's rows kept together where ``groups`` repeat); empty where there are too few
    events, non-events or subjects of either for two folds."""
    y = np.asarray(y, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    k = min(folds, n_pos, n_neg)
    if k < 2:
        return {}
    repeated = groups is not None and np.unique(groups).size < y.size
    if repeated:
        k = min(k, np.unique(groups[y]).size, np.unique(groups[~y]).size)
        if k < 2:  # too few subjects with (or without) the outcome to score any calibrator on others
            return {}
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed) if repeated else StratifiedKFold(
        k, shuffle=True, random_state=seed)
    folds_of = list(splitter.split(p.reshape(-1, 1), y, groups if repeated else None))
    out = {}
    for m in candidates:
        pred = np.empty(y.size)
        for fit_idx, test_idx in folds_of:
            pred[test_idx] = fit_calibrator(p[fit_idx], y[fit_idx], m)(p[test_idx])
        out[m] = pred
    return out


def simplest_within_one_se(errors: dict[str, np.ndarray], groups: np.ndarray | None = None) -> str:
    """The first of ``errors``' keys (listed simplest first) whose mean squared error is
    within one standard error of the lowest's: the standard error of the mean per-row
    difference from the lowest (per subject, summed over a subject's rows, where
    ``groups`` repeat), the rule the blend's weight follows. A calibrator must beat a
    simpler one by more than the noise of the tuning rows to be chosen over it."""
    names = list(errors)
    best = min(names, key=lambda m: (float(np.mean(errors[m])), names.index(m)))
    for m in names:
        d = errors[m] - errors[best]
        if groups is not None and np.unique(groups).size < d.size:
            _, inverse = np.unique(groups, return_inverse=True)
            d = np.bincount(inverse, weights=d) * (np.unique(inverse).size / d.size)  # per subject, same mean
        se = float(np.std(d, ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
        if float(np.mean(d)) <= se:
            return m
    return best


def choose_calibrator(
    p: np.ndarray, y: np.ndarray, *, method: Method | Literal["auto"] = "auto", folds: int = 5, seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[Calibrator, dict[str, float]]:
    """The simplest calibrator (none, then sigmoid, then isotonic) whose cross-validated
    Brier score is within one standard error of the lowest (:func:`simplest_within_one_se`),
    refitted on all of (p, y), and the score of each candidate (``none`` included).
    ``groups`` (each row's subject): where a subject has several rows, the folds keep a
    subject's rows together, so a calibrator is never scored on the people it was fitted to.

    ``auto`` considers isotonic regression only with ``MIN_ISOTONIC_EVENTS`` events and
    non-events, and keeps a sigmoid only if its slope on logit(p) is positive (a slope
    of zero or below would flatten or reverse the model's ranking); the fallback is
    ``none``."""
    calibrator, scores = _choose(p, y, method=method, folds=folds, seed=seed, groups=groups, incumbent=None)
    assert calibrator is not None  # only an incumbent can win over every refit
    return calibrator, scores


def choose_recalibration(
    p: np.ndarray, y: np.ndarray, incumbent: np.ndarray, *, folds: int = 5, seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[Calibrator | None, dict[str, float]]:
    """Recalibration of a model at another site: as :func:`choose_calibrator` on that
    site's rows, with the model's own calibrated risks there (``incumbent``) as the first,
    simplest candidate. Fitted elsewhere, their squared errors on these rows are out of
    sample, as the refits' cross-validated ones are, so a refit replaces them only if it
    beats them by more than one standard error. None: keep the model's own calibrator.
    With too few events or non-events to cross-validate, the incumbent is kept."""
    return _choose(p, y, method="auto", folds=folds, seed=seed, groups=groups, incumbent=np.asarray(incumbent, float))


INCUMBENT = "incumbent"


def _choose(
    p: np.ndarray, y: np.ndarray, *, method: Method | Literal["auto"], folds: int, seed: int,
    groups: np.ndarray | None, incumbent: np.ndarray | None,
) -> tuple[Calibrator | None, dict[str, float]]:
    y = np.asarray(y, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if method == "auto":
        candidates: list[Method] = ["none", "sigmoid"] + (["isotonic"] if min(n_pos, n_neg) >= MIN_ISOTONIC_EVENTS else [])
    else:
        candidates = [method]
    preds = cv_predictions(p, y, candidates, folds=folds, seed=seed, groups=groups)
    if incumbent is not None and preds:
        preds = {INCUMBENT: incumbent} | preds
    scores = {m: float(brier_score_loss(y, pred)) for m, pred in preds.items()}
    if preds:
        best = simplest_within_one_se({m: (pred - y) ** 2 for m, pred in preds.items()}, groups)
    elif incumbent is not None:
        best = INCUMBENT
    else:
        best = "none" if method == "auto" else method
    if best == INCUMBENT:
        return None, scores
    calibrator = fit_calibrator(p, y, best)  # type: ignore[arg-type]
    if method == "auto" and calibrator.method == "sigmoid" and not calibrator.b > 0:
        calibrator = fit_calibrator(p, y, "none")
    return calibrator, scores
