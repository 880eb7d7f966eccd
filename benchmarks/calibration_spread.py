"""Where the uncalibrated model's spread comes from, and three ways to correct it, on the
development networks that ``calibration_rule.py`` built (its ``--work`` folder; the
session 38 generator's networks are under ``WORK/session38``).

For each (network, site, task) cell the production pipeline (``train_models``) is
trained once (kept under ``WORK/trained``), and on the held-out split it prints the
calibration slope and calibration-in-the-large of:

- ``blend``: the registered model's uncalibrated risks (trees and L1 log-odds pooled with
  weights summing to one);
- ``trees`` and ``l1``: each component alone;
- ``sigmoid``: the blend recalibrated by ``logit p' = a + b logit p`` fitted on the tuning
  rows (Forewarn's sigmoid calibrator);
- ``stacked``: the trees' and the L1's log-odds as two free coefficients (and an
  intercept) fitted on the tuning rows;
- ``spread``: the sigmoid's ``b``, with ``a`` set so that the mean risk on the tuning rows
  is the blend's own (the slope corrected, the model's level kept: the heuristic
  shrinkage of Van Houwelingen and le Cessie, applied after fitting).

    python benchmarks/calibration_spread.py --work /tmp/fw40
    python benchmarks/calibration_spread.py --work /tmp/fw40/session38

and a summary: mean held-out slope, mean |slope - 1|, mean |CITL| and mean Brier.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression

from forewarn.evaluation.clinical import EPS, calibration_stats
from forewarn.features.featurize import FeatureMatrix
from forewarn.models.train import BASELINE, TREES, UNCALIBRATED, ModelConfig, train_models
from forewarn.records import schema

KINDS = ("blend", "trees", "l1", "sigmoid", "stacked", "spread")


def _z(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, EPS, 1 - EPS))


def cell(trained: Path) -> dict:
    """The held-out calibration of each kind (``KINDS``) for one trained cell."""
    frames = {m: pd.read_parquet(trained / "predictions" / f"{m}.parquet") for m in (UNCALIBRATED, TREES, BASELINE)}
    first = frames[UNCALIBRATED]
    for m in (TREES, BASELINE):
        if not np.array_equal(frames[m][schema.SUBJECT_ID].to_numpy(), first[schema.SUBJECT_ID].to_numpy()):
            raise RuntimeError(f"{trained}: {m}'s predictions are not in the registered model's row order")
    y = first[schema.BOOLEAN_VALUE].to_numpy(bool)
    split = first[schema.SPLIT].to_numpy()
    t, h = split == "tuning", split == "held_out"
    zb, zt, zl = (_z(frames[m][schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)) for m in (UNCALIBRATED, TREES, BASELINE))
    risks = {"blend": expit(zb[h]), "trees": expit(zt[h]), "l1": expit(zl[h])}
    sig = LogisticRegression(C=np.inf).fit(zb[t].reshape(-1, 1), y[t])
    risks["sigmoid"] = sig.predict_proba(zb[h].reshape(-1, 1))[:, 1]
    stack = LogisticRegression(C=np.inf).fit(np.column_stack([zt[t], zl[t]]), y[t])
    risks["stacked"] = stack.predict_proba(np.column_stack([zt[h], zl[h]]))[:, 1]
    b = float(sig.coef_[0, 0])
    level = float(expit(zb[t]).mean())
    a = brentq(lambda a: float(expit(a + b * zb[t]).mean()) - level, -30, 30)
    risks["spread"] = expit(a + b * zb[h])
    blend = trained / "xgboost_blend.json"
    out = {"events": [int(y[t].sum()), int(y[h].sum())],
           "weight": json.loads(blend.read_text())["weight"] if blend.exists() else None,
           "b_tuning": b, "stack_coefficients": [float(c) for c in stack.coef_[0]]}
    for kind, p in risks.items():
        s = calibration_stats(y[h], p)
        out[kind] = {k: s.get(k) for k in ("brier", "calibration_slope", "calibration_in_the_large")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="calibration_rule.py's --work (or WORK/session38)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cells = {}
    for index in sorted(args.work.glob("net*-seed*/matrices-*.json")):
        for name, paths in json.loads(index.read_text()).items():
            key = f"{index.parent.name}/{name}"
            trained = args.work / "trained" / key.replace("/", "_")
            if not (trained / "done").exists():
                trained.mkdir(parents=True, exist_ok=True)
                train_models(FeatureMatrix(Path(paths["ours"])), trained, ModelConfig(n_jobs=args.threads))
                (trained / "done").touch()
            c = cells[key] = cell(trained)
            print(f"{key}: events {c['events'][0]}/{c['events'][1]}, weight {c['weight']}, tuning b {c['b_tuning']:.3f}, "
                  f"stacked {c['stack_coefficients'][0]:.2f}/{c['stack_coefficients'][1]:.2f} | " + " | ".join(
                      f"{k} {c[k]['calibration_slope']:.3f} {c[k]['calibration_in_the_large']:+.3f}" for k in KINDS), flush=True)
    if args.json:
        args.json.write_text(json.dumps(cells, indent=1))
    print("\n| risks | cells | mean slope | mean \\|slope − 1\\| | mean \\|CITL\\| | mean Brier |\n|---|---:|---:|---:|---:|---:|")
    for kind in KINDS:
        v = [c[kind] for c in cells.values()]
        print(f"| {kind} | {len(v)} | {np.mean([x['calibration_slope'] for x in v]):.3f} | "
              f"{np.mean([abs(x['calibration_slope'] - 1) for x in v]):.3f} | "
              f"{np.mean([abs(x['calibration_in_the_large']) for x in v]):.3f} | {np.mean([x['brier'] for x in v]):.5f} |")


if __name__ == "__main__":
    main()
