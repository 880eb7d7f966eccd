"""Forewarn's XGBoost against its L1-logistic baseline and a MEDS-Tab-style default
XGBoost, on the same subjects, splits and held-out rows, for every demo task and site.

    .venv/bin/python benchmarks/model_comparison.py --people 20000

MEDS-Tab-style: MEDS-Tab's default windows (1d, 7d, 30d, 365d, full) and aggregations
(code/count, value/count, value/sum, value/sum_sqd, value/min, value/max), and
XGBoost's defaults (as MEDS-Tab's launcher uses without a sweep: 100 trees, depth 6,
learning rate 0.3), no calibration. Prints a Markdown table of held-out AUROC and
AUPRC with patient-bootstrap 95% CIs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import xgboost as xgb

from forewarn.evaluation.metrics import evaluate
from forewarn.features.featurize import FeatureConfig, featurize
from forewarn.features.labels import label_dataset, load_task
from forewarn.models.train import BASELINE, PRIMARY, ModelConfig, split_masks, train_models
from forewarn.records import schema
from forewarn.records.deid import DeidConfig, load_secret
from forewarn.records.demo import generate_network
from forewarn.records.omop import pull_omop

MEDSTAB = FeatureConfig(
    windows=["1d", "7d", "30d", "365d", "full"],
    aggs=["code/count", "value/count", "value/sum", "value/sum_sqd", "value/min", "value/max", "static/present", "static/first"],
    min_code_subjects=10, rollup_icd10=False, parent_codes=False,
)


def fmt(rec: dict, metric: str) -> str:
    return f"{rec[metric]:.3f} ({rec[metric + '_ci_low']:.3f}–{rec[metric + '_ci_high']:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--tasks", nargs="+", default=["t2d_2y", "ckd3_2y", "pancreatic_cancer_1y"])
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="forewarn-models-bench-"))
    sites = generate_network(root / "sites", people=args.people, seed=7)
    print("| task | site | held-out rows / events | model | AUROC (95% CI) | AUPRC (95% CI) |\n|---|---|---|---|---|---|")
    for site, db in sites.items():
        pull = pull_omop(db, root / site / "pull", site=site, config=DeidConfig(load_secret(site, demo=True)))
        for task in args.tasks:
            spec = load_task(task)
            labels = label_dataset(pull.events_dir, spec, root / site)
            table, splits, _ = labels.load()
            ours = featurize(pull.events_dir, table, splits, root / site / task / "forewarn", FeatureConfig(), codes_path=pull.codes_path)
            trained = train_models(ours, root / site / task / "models", ModelConfig())
            import pandas as pd

            rows = {}
            for model in (PRIMARY, BASELINE):
                pred = pd.read_parquet(trained.predictions_path(model))
                held = pred[pred[schema.SPLIT] == schema.HELD_OUT]
                rows[{"xgboost": "Forewarn XGBoost (calibrated)", "l1_logistic": "L1-logistic"}[model]] = evaluate(
                    held[schema.BOOLEAN_VALUE].to_numpy(bool), held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float),
                    held[schema.SUBJECT_ID].to_numpy(), n_boot=args.bootstrap)
            theirs = featurize(pull.events_dir, table, splits, root / site / task / "medstab", MEDSTAB, codes_path=pull.codes_path)
            X, r, _ = theirs.load()
            y = r[schema.BOOLEAN_VALUE].to_numpy(bool)
            m = split_masks(r)
            clf = xgb.XGBClassifier(n_estimators=100, max_depth=6, learning_rate=0.3, tree_method="hist", n_jobs=2, random_state=0)
            clf.fit(X[m["train"]], y[m["train"]])
            p = clf.predict_proba(X[m["held_out"]])[:, 1]
            rows["MEDS-Tab-style default XGBoost"] = evaluate(y[m["held_out"]], p, r[schema.SUBJECT_ID].to_numpy()[m["held_out"]], n_boot=args.bootstrap)
            n = int(m["held_out"].sum())
            events = int(y[m["held_out"]].sum())
            for name, rec in rows.items():
                print(f"| {task} | {site} | {n:,} / {events:,} | {name} | {fmt(rec, 'auroc')} | {fmt(rec, 'auprc')} |", flush=True)


if __name__ == "__main__":
    main()
