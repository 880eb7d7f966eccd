"""TreeSHAP explanations through XGBoost's own ``pred_contribs`` (exact, path-dependent).

``shap.TreeExplainer(model)`` in its default mode calls the same routine; calling it
directly keeps sparse input sparse. A model whose trees boost from an L1-logistic offset
(``models.train.PrimaryModel``) is the sum of a linear model and trees, and SHAP values
add: each feature's value is its trees' TreeSHAP value plus its linear one,
``w_j * (x_j - mean_j)`` (exact for a linear model with the explained rows as background),
so the values still sum, with the base value, to every row's log-odds. A model blended with
the L1-logistic (``ModelConfig.blend``) scores ``(1 - w) * trees + w * linear``, and its
values are the same blend of the two parts' values. Plots use shap's plotting on an ``Explanation``
built from these values, with readable feature names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb

from forewarn.models.train import PrimaryModel
from forewarn.records import privacy


@dataclass(frozen=True)
class Explanations:
    dir: Path

    @property
    def values_path(self) -> Path:
        return self.dir / "shap.npz"

    @property
    def importance_path(self) -> Path:
        return self.dir / "importance.parquet"


def shap_values(model: PrimaryModel, X: sp.csr_matrix) -> tuple[np.ndarray, float]:
    """SHAP values in log-odds (rows x features) and the base value: per row, the values
    and the base value sum to the model's log-odds."""
    clf = model.clf
    booster = clf.get_booster()
    best = getattr(clf, "best_iteration", None)
    rng = (0, best + 1) if best is not None else (0, 0)
    # With an offset the trees' base is 0 (their bias column is then their mean output),
    # and the offset's own part is added below.
    data = xgb.DMatrix(X) if model.offset is None else xgb.DMatrix(X, base_margin=np.zeros(X.shape[0]))
    contribs = booster.predict(data, pred_contribs=True, iteration_range=rng)
    values, base = contribs[:, :-1], float(contribs[0, -1]) if contribs.shape[0] else 0.0
    if model.offset is not None and X.shape[0]:
        linear, linear_base = linear_shap(model.offset, X)
        values, base = values + linear, base + linear_base
    if model.blend and X.shape[0]:
        # SHAP values are linear in the model: the blend's are the blend of its parts'.
        linear, linear_base = linear_shap(model.linear, X)
        values = (1.0 - model.blend) * values + model.blend * linear
        base = (1.0 - model.blend) * base + model.blend * linear_base
    return values, base


def linear_shap(l1, X: sp.csr_matrix) -> tuple[np.ndarray, float]:
    """Exact SHAP values of the L1-logistic ``l1`` (a ``models.train.L1Logistic``) on the
    rows of ``X`` with those rows as background, ``w_j * (x_j - mean_j)``, and its base
    value, the intercept plus ``w . mean``."""
    w = l1.coef / l1.scale
    used = np.flatnonzero(w)
    x = np.asarray(X[:, used].todense(), dtype=np.float64)
    mean = x.mean(axis=0)
    values = np.zeros(X.shape, dtype=np.float64)
    values[:, used] = (x - mean) * w[used]
    return values, l1.intercept + float(mean @ w[used])


def global_importance(values: np.ndarray, columns: pd.DataFrame, explained: sp.spmatrix | None = None) -> pd.DataFrame:
    """Mean |SHAP| per feature, largest first, with code, aggregation, window and readable name.

    With ``explained`` (the explained rows of the feature matrix) only features recorded
    in none or at least 11 of those rows, and missing in none or at least 11, are listed
    (``disclosable``). The table leaves the site, and a feature's mean |SHAP| gives its
    recorded count back where the model is linear in it: with the blend or the L1 offset
    a 0/1 code no tree splits on has mean |SHAP| = b |w| 2k(m - k) / m^2 for k of the m
    rows, b and w being published with the model. Its rank among listed features would
    bound the same number, so such a feature is left out, not merely blanked."""
    frame = columns[["name", "code", "agg", "window", "description"]].copy()
    frame["mean_abs_shap"] = np.abs(values).mean(axis=0) if values.size else 0.0
    if explained is not None:
        frame = frame[disclosable(explained)]
    frame = frame.sort_values(["mean_abs_shap", "name"], ascending=[False, True], kind="stable")
    return frame.reset_index(drop=True)


def disclosable(explained: sp.spmatrix) -> np.ndarray:
    """Per column of ``explained``: recorded in none or at least 11 rows and missing in
    none or at least 11 (``privacy.MIN_CELL``), and likewise non-zero in none or at least
    11 and zero-or-missing in none or at least 11 (a stored 0 splits apart from a missing
    value in a tree, but is 0 to the linear part)."""
    csc = sp.csc_matrix(explained)
    n = explained.shape[0]

    def fine(k: np.ndarray) -> np.ndarray:
        return ((k == 0) | (k >= privacy.MIN_CELL)) & ((n - k == 0) | (n - k >= privacy.MIN_CELL))

    nonzero = np.diff(sp.csc_matrix(csc != 0).indptr)
    return fine(np.diff(csc.indptr)) & fine(nonzero)


def explain(
    model: PrimaryModel,
    X: sp.csr_matrix,
    columns: pd.DataFrame,
    out_dir: Path,
    *,
    max_rows: int = 2000,
    seed: int = 0,
) -> tuple[Explanations, np.ndarray, np.ndarray, float]:
    """Explain up to ``max_rows`` rows of ``X`` (a seeded sample). Returns the paths and
    the sampled values, the row numbers explained and the base value."""
    out = Explanations(Path(out_dir))
    out.dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(X.shape[0], size=min(max_rows, X.shape[0]), replace=False))
    values, base = shap_values(model, X[rows])
    np.savez_compressed(out.values_path, values=values, rows=rows, base_value=base)
    global_importance(values, columns, X[rows]).to_parquet(out.importance_path, index=False)
    return out, values, rows, base
