"""Where Forewarn's gain over the MEDS-Tab-style baseline comes from: features, model
settings or the blend with the L1-logistic. For every T2D and CKD cell of the networks
``model_variants.py`` built (its --work; the benchmark network, seed 7, too), held-out
AUROC and AUPRC of

- Forewarn's XGBoost settings as fitted (``fit_xgboost`` with ``leaf_min_cell=1``:
  depth 4, rate 0.05, early stopping on the tuning split; not released, no offset, no
  blend) and MEDS-Tab's launcher default
  (``model_comparison.medstab_default``: XGBoost's defaults, early stopping after 5
  rounds on the tuning log-loss), each on Forewarn's feature matrix and on the
  MEDS-Tab-style one;
- the registered model (``train_models``: the trees released under the rule of 11 and
  blended with the L1-logistic), on Forewarn's features (``--production``; slower).

    python benchmarks/gain_decomposition.py --production /tmp/fwv/net20000-seed{7,101,102,103,104,105,106}/matrices.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_comparison import medstab_default  # noqa: E402

from forewarn.evaluation.metrics import point_metrics  # noqa: E402
from forewarn.features.featurize import FeatureMatrix  # noqa: E402
from forewarn.models.train import PRIMARY, ModelConfig, fit_xgboost, split_masks, train_models  # noqa: E402
from forewarn.records import schema  # noqa: E402

CELLS = ["academic/t2d_2y", "community/t2d_2y", "academic/ckd3_2y", "community/ckd3_2y"]
# (settings, features) -> label; "production" is the registered model on Forewarn's features.
COLUMNS = {("forewarn", "ours"): "Forewarn settings, Forewarn features", ("forewarn", "medstab"): "Forewarn settings, MEDS-Tab features",
           ("medstab", "ours"): "MEDS-Tab default, Forewarn features", ("medstab", "medstab"): "MEDS-Tab default, MEDS-Tab features",
           ("production", "ours"): "registered model (released, blended)"}


def held_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    pm = point_metrics(y, p)
    return {"auroc": pm["auroc"], "auprc": pm["auprc"]}


def cell_scores(paths: dict[str, str], production: bool, threads: int = 2) -> dict[tuple[str, str], dict[str, float]]:
    out = {}
    for features in ("ours", "medstab"):
        X, rows, _ = FeatureMatrix(Path(paths[features])).load()
        y, m = rows[schema.BOOLEAN_VALUE].to_numpy(bool), split_masks(rows)
        held = y[m["held_out"]]
        as_fitted = ModelConfig(n_jobs=threads, leaf_min_cell=1)  # as MEDS-Tab's: the rule of 11 is the production column's
        ours = fit_xgboost(X[m["train"]], y[m["train"]], X[m["tuning"]], y[m["tuning"]], as_fitted)
        out[("forewarn", features)] = held_metrics(held, ours.predict_proba(X[m["held_out"]])[:, 1])
        default = medstab_default(X, y, m, threads)
        out[("medstab", features)] = held_metrics(held, default.predict(xgb.DMatrix(X[m["held_out"]])))
        if production and features == "ours":
            with tempfile.TemporaryDirectory() as tmp:
                trained = train_models(FeatureMatrix(Path(paths["ours"])), Path(tmp), ModelConfig(n_jobs=threads))
                pred = pd.read_parquet(trained.predictions_path(PRIMARY))
            pred = pred[pred[schema.SPLIT] == schema.HELD_OUT]
            out[("production", "ours")] = held_metrics(pred[schema.BOOLEAN_VALUE].to_numpy(bool),
                                                       pred[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("indexes", nargs="+", type=Path, help="matrices.json of model_variants.py's networks")
    parser.add_argument("--production", action="store_true", help="also the registered model (train_models)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    scores: dict[str, dict] = {}
    for index in args.indexes:
        matrices = json.loads(index.read_text())
        for cell in CELLS:
            key = f"{index.parent.name}/{cell}"
            scores[key] = s = cell_scores(matrices[cell], args.production)
            print(key + ": " + "; ".join(f"{COLUMNS[c]} {v['auroc']:.3f} / {v['auprc']:.3f}" for c, v in s.items()), flush=True)
    columns = [c for c in COLUMNS if all(c in s for s in scores.values())]
    print(f"\n{len(scores)} cells, mean held-out AUROC / AUPRC:")
    for c in columns:
        a = np.array([[s[c]["auroc"], s[c]["auprc"]] for s in scores.values()])
        print(f"  {COLUMNS[c]:42s} {a[:, 0].mean():.4f} / {a[:, 1].mean():.4f}")
    for metric in ("auroc", "auprc"):
        mean = {c: np.mean([s[c][metric] for s in scores.values()]) for c in columns}
        feat = np.mean([mean[(k, "ours")] - mean[(k, "medstab")] for k in ("forewarn", "medstab")])
        sett = np.mean([mean[("forewarn", f)] - mean[("medstab", f)] for f in ("ours", "medstab")])
        wins = sum(s[("forewarn", "ours")][metric] > s[("forewarn", "medstab")][metric] for s in scores.values())
        line = f"{metric}: features {feat:+.4f}, settings {sett:+.4f}"
        if ("production", "ours") in mean:
            line += f", release and blend {mean[('production', 'ours')] - mean[('forewarn', 'ours')]:+.4f}"
        print(line + f"; Forewarn's features better in {wins} of {len(scores)} cells (Forewarn settings)")
    if args.json:
        args.json.write_text(json.dumps({k: {"|".join(c): v for c, v in s.items()} for k, s in scores.items()}, indent=1))


if __name__ == "__main__":
    main()
