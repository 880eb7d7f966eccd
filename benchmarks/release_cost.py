"""What the rule of 11 for leaves (``models.release``) costs the trees alone: the
production XGBoost fit of each matrix (no blend, no calibration) as fitted, released by
collapsing only (session 16), and released by moving splits first (session 17), scored
on the tuning and held-out rows at the fit's own tree count, with the leaves kept, the
splits moved, the thresholds replaced keeping every row's route (session 18), the
thresholds that show a value (fewer than 11 train subjects with a value below it or at
or above it, +-FLT_MAX excepted) and the seconds each release took.

    python benchmarks/release_cost.py /tmp/fwv/net20000-seed101/academic/t2d_2y/forewarn \\
        /tmp/fwv/net20000-seed101/community/ckd3_2y/forewarn

The matrices are ``model_variants.py``'s (``--work``), so run it on development networks
only, never on the benchmark's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import xgboost as xgb
from sklearn.metrics import average_precision_score, roc_auc_score

from forewarn.features.featurize import FeatureMatrix
from forewarn.models import train
from forewarn.models.release import FLT_MAX, ReleaseSettings, release_trees
from forewarn.records import schema


def scores(model: xgb.Booster, X, y: np.ndarray, masks, n: int) -> str:
    out = []
    for mask in masks:
        p = model.predict(xgb.DMatrix(X[mask]), iteration_range=(0, n))
        out.append(f"{roc_auc_score(y[mask], p):.3f} / {average_precision_score(y[mask], p):.3f}")
    return " | ".join(out)


def shown_thresholds(booster: xgb.Booster, X, subjects: np.ndarray, min_cell: int = 11) -> int:
    """Splits whose threshold has fewer than ``min_cell`` subjects of the train rows ``X``
    with a (present) value below it or at or above it, +-FLT_MAX excepted."""
    C = sp.csc_matrix(X)
    trees = json.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"]["model"]["trees"]
    out = 0
    for tree in trees:
        for k, child in enumerate(tree["left_children"]):
            f, t = tree["split_indices"][k], np.float32(tree["split_conditions"][k])
            if child == -1 or abs(t) == np.float32(FLT_MAX):
                continue
            v, s = C.data[C.indptr[f]:C.indptr[f + 1]].astype(np.float32), subjects[C.indices[C.indptr[f]:C.indptr[f + 1]]]
            out += int(np.unique(s[v < t]).size < min_cell or np.unique(s[v >= t]).size < min_cell)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("matrices", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    print("| matrix | trees | tuning AUROC / AUPRC | held-out AUROC / AUPRC | leaves | splits moved | thresholds replaced | thresholds showing a value | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.matrices:
        X, rows, _ = FeatureMatrix(path).load()
        y = rows[schema.BOOLEAN_VALUE].to_numpy(bool).astype(np.int8)
        m = train.split_masks(rows)
        tr, tu, ho = m[schema.TRAIN], m[schema.TUNING], m[schema.HELD_OUT]
        subjects = rows[schema.SUBJECT_ID].to_numpy()
        config = train.ModelConfig(n_jobs=args.threads, leaf_min_cell=1)
        clf = train.fit_xgboost(X[tr], y[tr], X[tu], y[tu], config)
        booster, n = clf.get_booster(), clf.best_iteration + 1
        name = "/".join(path.parts[-3:-1])

        print(f"| {name} | as fitted | {scores(booster, X, y, (tu, ho), n)} | - | - | - | "
              f"{shown_thresholds(booster, X[tr], subjects[tr]):,} | - |", flush=True)
        for label, move in (("collapse only", False), ("move, then collapse", True)):
            settings = dataclasses.replace(ReleaseSettings.from_params(train.xgboost_params(y[tr], config)), move_splits=move)
            start = time.perf_counter()
            released, summary = release_trees(booster, X[tr], y[tr], subjects[tr], settings)
            seconds = time.perf_counter() - start
            print(f"| {name} | {label} | {scores(released, X, y, (tu, ho), n)} | {summary['leaves_before']:,} -> {summary['leaves_after']:,} | "
                  f"{summary['splits_moved']:,} | {summary['thresholds_replaced']:,} | "
                  f"{shown_thresholds(released, X[tr], subjects[tr]):,} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
