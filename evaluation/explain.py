"""TreeSHAP explanations through XGBoost's own ``pred_contribs`` (exact, path-dependent).

``shap.TreeExplainer(model)`` in its default mode calls the same routine; calling it
directly keeps sparse input sparse. Plots use shap's plotting on an ``Explanation``
built from these values, with readable feature names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb


@dataclass(frozen=True)
class Explanations:
    dir: Path

    @property
    def values_path(self) -> Path:
        return self.dir / "shap.npz"

    @property
    def importance_path(self) -> Path:
        return self.dir / "importance.parquet"


def shap_values(clf: xgb.XGBClassifier, X: sp.csr_matrix) -> tuple[np.ndarray, float]:
    """SHAP values in log-odds (rows x features) and the base value."""
    booster = clf.get_booster()
    best = getattr(clf, "best_iteration", None)
    rng = (0, best + 1) if best is not None else (0, 0)
    contribs = booster.predict(xgb.DMatrix(X), pred_contribs=True, iteration_range=rng)
    return contribs[:, :-1], float(contribs[0, -1]) if contribs.shape[0] else 0.0


def global_importance(values: np.ndarray, columns: pd.DataFrame) -> pd.DataFrame:
    """Mean |SHAP| per feature, largest first, with code, aggregation, window and readable name."""
    frame = columns[["name", "code", "agg", "window", "description"]].copy()
    frame["mean_abs_shap"] = np.abs(values).mean(axis=0) if values.size else 0.0
    frame = frame.sort_values(["mean_abs_shap", "name"], ascending=[False, True], kind="stable")
    return frame.reset_index(drop=True)


def explain(
    clf: xgb.XGBClassifier,
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
    values, base = shap_values(clf, X[rows])
    np.savez_compressed(out.values_path, values=values, rows=rows, base_value=base)
    global_importance(values, columns).to_parquet(out.importance_path, index=False)
    return out, values, rows, base
