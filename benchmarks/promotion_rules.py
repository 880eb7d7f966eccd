"""The promotion rule's two tests on models whose true standing is known.

The registry's rule (issue 5) promotes a new model when its held-out AUROC's lower 95%
bound is at least the champion's AUROC minus a margin (``test: marginal``). Forewarn
also computes the paired version (``test: paired``): the lower bound of the new model's
AUROC minus the champion's, on the same held-out rows with one patient bootstrap, at
least minus the margin. This benchmark asks how often each test promotes:

- **alike, seed**: the champion retrained with another seed (XGBoost samples 80% of the
  rows and columns per tree): an equally good model, which a rule should promote;
- **alike, data**: retrained on a random 90% of the train subjects (a night with a
  little less data): about as good;
- **noisier, sd 0.5 / 1 / 2**: the champion's own risks with normal noise of that
  standard deviation added to their log-odds (seeded): worse by a known amount, the
  difference printed beside the decisions; a rule should refuse a model worse than the
  margin. (Retraining without the top 5 or 40 features was tried first: the features
  are so redundant that those models were no worse.)

Every model is the registered model as the flow trains it (``train_models``, the
production defaults); the champion is seed 0 on all train subjects. Both tests read the
same held-out rows, the marginal one with the flow's 200 bootstrap draws
(``evaluation.bootstrap``), the paired one with ``promotion.bootstrap`` (1,000).

    python benchmarks/promotion_rules.py /tmp/fwv/net20000-seed{7,101,102,103,104,105,106}/matrices.json

(the networks are built by ``model_variants.build``; T2D and CKD cells only: the rare
outcome's held-out metrics are withheld at 20,000 people).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from forewarn.evaluation import metrics
from forewarn.features.featurize import FeatureMatrix
from forewarn.models.promotion import PromotionConfig
from forewarn.models.train import PRIMARY, ModelConfig, TrainedModels, train_models
from forewarn.records import schema

TASKS = ("t2d_2y", "ckd3_2y")
P = schema.PREDICTED_BOOLEAN_PROBABILITY
MARGIN = PromotionConfig().auroc_margin
NOISE = (0.5, 1.0, 2.0)  # standard deviations of the noise added to the champion's log-odds


def write(folder: Path, X, rows: pd.DataFrame, columns: pd.DataFrame) -> FeatureMatrix:
    folder.mkdir(parents=True)
    sp.save_npz(folder / "X.npz", X.tocsr())
    rows.reset_index(drop=True).to_parquet(folder / "rows.parquet")
    columns.to_parquet(folder / "columns.parquet")
    return FeatureMatrix(folder)


def held_out(trained: TrainedModels) -> pd.DataFrame:
    pred = pd.read_parquet(trained.predictions_path(PRIMARY))
    return pred[pred["split"] == schema.HELD_OUT].set_index([schema.SUBJECT_ID, schema.PREDICTION_TIME]).sort_index()


def candidates(matrix: FeatureMatrix, work: Path, threads: int) -> dict[str, TrainedModels]:
    X, rows, columns = matrix.load()
    out = {"alike, seed": train_models(matrix, work / "seed", ModelConfig(seed=1, n_jobs=threads))}
    train_subjects = rows.loc[rows[schema.SPLIT] == schema.TRAIN, schema.SUBJECT_ID].unique()
    rng = np.random.default_rng(0)
    dropped = rng.choice(train_subjects, size=len(train_subjects) // 10, replace=False)
    keep = ~((rows[schema.SPLIT] == schema.TRAIN) & rows[schema.SUBJECT_ID].isin(dropped)).to_numpy()
    less = write(work / "less", X[np.flatnonzero(keep)], rows[keep], columns)
    out["alike, data"] = train_models(less, work / "data", ModelConfig(n_jobs=threads))
    return out


def judge(champion: pd.DataFrame, candidate: pd.DataFrame) -> dict:
    both = champion.merge(candidate, left_index=True, right_index=True, suffixes=("_old", "_new"))
    assert len(both) == len(champion) == len(candidate), "held-out rows differ"
    y = both[f"{schema.BOOLEAN_VALUE}_old"].to_numpy(bool)
    old = both[f"{schema.PREDICTED_BOOLEAN_PROBABILITY}_old"].to_numpy()
    new = both[f"{schema.PREDICTED_BOOLEAN_PROBABILITY}_new"].to_numpy()
    subjects = both.index.get_level_values(schema.SUBJECT_ID).to_numpy()
    champion_auroc = metrics.point_metrics(y, old)["auroc"]
    low, _ = metrics.bootstrap_ci(y, new, subjects, n_boot=200, metrics=("auroc",))["auroc"]
    paired = metrics.paired_difference(y, new, old, subjects, n_boot=PromotionConfig().bootstrap)
    return {"events": int(y.sum()), "rows": int(y.size), "champion_auroc": champion_auroc, "difference": paired["difference"],
            "marginal_low": low, "marginal": low >= champion_auroc - MARGIN,
            "paired_low": paired["ci_low"], "paired_high": paired["ci_high"], "paired": paired["ci_low"] >= -MARGIN}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("networks", nargs="+", type=Path, help="matrices.json files of model_variants.build")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    started = time.perf_counter()
    for index in args.networks:
        cells = json.loads(index.read_text())
        for cell, paths in cells.items():
            site, task = cell.split("/")
            if task not in TASKS:
                continue
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                matrix = FeatureMatrix(Path(paths["ours"]))
                champion = train_models(matrix, work / "champion", ModelConfig(n_jobs=args.threads))
                base = held_out(champion)
                scored = {kind: held_out(trained) for kind, trained in candidates(matrix, work, args.threads).items()}
                rng = np.random.default_rng(0)
                logit = np.log(base[P] / (1 - base[P]))
                for sd in NOISE:
                    noisy = base.copy()
                    noisy[P] = 1 / (1 + np.exp(-(logit + rng.normal(0, sd, len(base)))))
                    scored[f"noisier, sd {sd:g}"] = noisy
                for kind, candidate in scored.items():
                    record = {"network": index.parent.name, "site": site, "task": task, "kind": kind}
                    record |= judge(base, candidate)
                    results.append(record)
                    print(f"{index.parent.name:>20} {site:>9} {task:<8} {kind:<12} events {record['events']:>4}  "
                          f"Δ {record['difference']:+.3f}  marginal low {record['marginal_low']:.3f} vs "
                          f"{record['champion_auroc'] - MARGIN:.3f}: {'promote' if record['marginal'] else 'refuse '}  "
                          f"paired {record['paired_low']:+.3f}..{record['paired_high']:+.3f}: "
                          f"{'promote' if record['paired'] else 'refuse'}", flush=True)
            print(f"{'':>20} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    table = pd.DataFrame(results)
    print(f"\n{len(table)} candidates in {(time.perf_counter() - started) / 60:.1f} min\n")
    summary = table.groupby("kind").agg(
        candidates=("kind", "size"), mean_difference=("difference", "mean"), worst=("difference", "min"),
        worse_than_margin=("difference", lambda d: int((d < -MARGIN).sum())),
        marginal_promotes=("marginal", "sum"), paired_promotes=("paired", "sum"))
    print(summary.to_string())
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
