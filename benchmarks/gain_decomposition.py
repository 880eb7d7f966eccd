"""Where Forewarn's AUROC gain over the MEDS-Tab-style baseline comes from: features or
model settings. On the development networks ``model_variants.py`` built (its --work), for
every T2D and CKD cell, held-out AUROC of Forewarn's XGBoost settings (``fit_xgboost``:
early stopping on the tuning split, no offset, no blend) and of XGBoost's defaults as
MEDS-Tab's launcher runs them (100 trees, depth 6, rate 0.3), each on Forewarn's feature
matrix and on the MEDS-Tab-style one:

    python benchmarks/gain_decomposition.py /tmp/fwv/net20000-seed10{1,2,3,4,5,6}/matrices.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import xgboost as xgb

from forewarn.evaluation.metrics import point_metrics
from forewarn.features.featurize import FeatureMatrix
from forewarn.models.train import ModelConfig, fit_xgboost, split_masks
from forewarn.records import schema

CELLS = ["academic/t2d_2y", "community/t2d_2y", "academic/ckd3_2y", "community/ckd3_2y"]


def cell_scores(paths: dict[str, str], threads: int = 2) -> dict[str, dict[str, float]]:
    out = {}
    for features in ("ours", "medstab"):
        X, rows, _ = FeatureMatrix(Path(paths[features])).load()
        y, m = rows[schema.BOOLEAN_VALUE].to_numpy(bool), split_masks(rows)
        ours = fit_xgboost(X[m["train"]], y[m["train"]], X[m["tuning"]], y[m["tuning"]], ModelConfig(n_jobs=threads))
        default = xgb.XGBClassifier(n_estimators=100, max_depth=6, learning_rate=0.3, tree_method="hist", n_jobs=threads,
                                    random_state=0).fit(X[m["train"]], y[m["train"]])
        held = y[m["held_out"]]
        out[features] = {"forewarn_settings": point_metrics(held, ours.predict_proba(X[m["held_out"]])[:, 1])["auroc"],
                         "medstab_defaults": point_metrics(held, default.predict_proba(X[m["held_out"]])[:, 1])["auroc"]}
    return out


def main() -> None:
    scores = {}
    for index in sys.argv[1:]:
        matrices = json.loads(Path(index).read_text())
        for cell in CELLS:
            key = f"{Path(index).parent.name}/{cell}"
            scores[key] = s = cell_scores(matrices[cell])
            print(f"{key}: Forewarn settings {s['ours']['forewarn_settings']:.4f} on Forewarn's features, "
                  f"{s['medstab']['forewarn_settings']:.4f} on MEDS-Tab's; MEDS-Tab defaults "
                  f"{s['ours']['medstab_defaults']:.4f} / {s['medstab']['medstab_defaults']:.4f}", flush=True)
    a = np.array([[s[f][m] for f in ("ours", "medstab") for m in ("forewarn_settings", "medstab_defaults")] for s in scores.values()])
    mean = a.mean(axis=0)
    print(f"\n{len(a)} cells, mean held-out AUROC (rows: settings; columns: Forewarn's features, MEDS-Tab's)")
    print(f"Forewarn settings   {mean[0]:.4f}  {mean[2]:.4f}")
    print(f"MEDS-Tab defaults   {mean[1]:.4f}  {mean[3]:.4f}")
    print(f"features: {np.mean([mean[0] - mean[2], mean[1] - mean[3]]):+.4f}; settings: {np.mean([mean[0] - mean[1], mean[2] - mean[3]]):+.4f}")
    print(f"Forewarn's features better in {int(np.sum(a[:, 0] > a[:, 2]))} of {len(a)} cells (Forewarn settings), "
          f"{int(np.sum(a[:, 1] > a[:, 3]))} (MEDS-Tab defaults)")


if __name__ == "__main__":
    main()
