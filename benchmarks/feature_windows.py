"""Does Forewarn's model gain from MEDS-Tab's short windows? On the development networks:
train_models (production defaults) and the L1-logistic on Forewarn's default features
(30d, 365d, full) and on the same aggregations over 1d, 7d, 30d, 365d, full (``w5``) or
7d, 30d, 365d, full (``w4``), or with a slope only over values spanning 30 or 90 days
(``slope30``, ``slope90``), on the matrices ``model_variants.py`` built (its --work):

    python benchmarks/feature_windows.py w5 /tmp/fwv/net20000-seed10{1,2,3,4,5,6}/matrices.json

Featurizes each cell once more into ``<site>/<task>/forewarn_<which>`` beside the built
matrices; prints one line per cell and writes /tmp/feature_windows_<which>.json."""
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from forewarn.evaluation.metrics import point_metrics
from forewarn.features.featurize import FeatureConfig, FeatureMatrix, featurize
from forewarn.features.labels import LabelSet
from forewarn.models.train import (
    PRIMARY,
    ModelConfig,
    fit_l1_logistic,
    split_masks,
    train_models,
    trainability,
)
from forewarn.records import schema

CONFIGS = {"w5": FeatureConfig(windows=["1d", "7d", "30d", "365d", "full"]), "w4": FeatureConfig(windows=["7d", "30d", "365d", "full"]),
           # the default windows and aggregations, a slope only over values spanning 30 (90) days
           "slope30": FeatureConfig(slope_min_days=30), "slope90": FeatureConfig(slope_min_days=90)}
def main() -> None:
    which = sys.argv[1]
    out = {}
    for idx in sys.argv[2:]:
        root = Path(idx).parent
        for cell, paths in json.loads(Path(idx).read_text()).items():
            site, task = cell.split("/")
            key = f"{root.name}/{cell}"
            res = {}
            for name in ["ours", which]:
                mdir = Path(paths["ours"]) if name == "ours" else root / site / task / f"forewarn_{name}"
                if name != "ours" and not (mdir / "X.npz").exists():
                    table, splits, _ = LabelSet(root / site, task).load()
                    featurize(root / site / "pull" / "events", table, splits, mdir, CONFIGS[name], codes_path=root / site / "pull" / "metadata" / "codes.parquet")
                fm = FeatureMatrix(mdir)
                if trainability(fm):  # a rare cell too small to train under the rule of 11
                    break
                X, rows, cols = fm.load()
                y = rows[schema.BOOLEAN_VALUE].to_numpy(bool)
                m = split_masks(rows)
                if not (0 < y[m["tuning"]].sum() < m["tuning"].sum()):
                    break
                l1, _ = fit_l1_logistic(X[m["train"]], y[m["train"]], X[m["tuning"]], y[m["tuning"]], ModelConfig(),
                                        rows[schema.SUBJECT_ID].to_numpy()[m["train"]])
                with tempfile.TemporaryDirectory() as tmp:
                    trained = train_models(fm, Path(tmp), ModelConfig(n_jobs=2))
                    pred = pd.read_parquet(trained.predictions_path(PRIMARY))
                    summ = json.loads(trained.summary_path.read_text())
                held = pred[pred[schema.SPLIT] == "held_out"]
                assert (held[schema.SUBJECT_ID].to_numpy() == rows.loc[m["held_out"], schema.SUBJECT_ID].to_numpy()).all()
                pm = point_metrics(y[m["held_out"]], held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy())
                lm = point_metrics(y[m["held_out"]], l1.predict_proba(X[m["held_out"]]))
                res[name] = {"cols": X.shape[1], "model": [pm["auroc"], pm["auprc"]], "l1": [lm["auroc"], lm["auprc"]],
                             "w": summ["xgboost"]["blend"]["weight"], "events": int(y[m["held_out"]].sum())}
            if len(res) == 2:
                out[key] = res
                a, b = res["ours"], res[which]
                print(f"{key} ({a['events']} held-out events): cols {a['cols']}->{b['cols']}; model {a['model'][0]:.4f}/{a['model'][1]:.4f} -> "
                      f"{b['model'][0]:.4f}/{b['model'][1]:.4f} (w {a['w']}->{b['w']}); L1 {a['l1'][0]:.4f}/{a['l1'][1]:.4f} -> {b['l1'][0]:.4f}/{b['l1'][1]:.4f}", flush=True)
    Path(f"/tmp/feature_windows_{which}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
