"""The calibrator rules on development networks: for each (network, site, task) cell the
production pipeline (``train_models``) is trained once, and its uncalibrated risks on the
tuning split are calibrated by each rule, then scored on the held-out split:

- ``one_se`` (Forewarn's, since session 37): the simplest of none, sigmoid, isotonic
  within one standard error of the lowest cross-validated Brier (``choose_calibrator``);
- ``lowest``: the lowest cross-validated Brier (the rule before session 37);
- ``slope_ci``: as ``one_se``, but ``none`` is not a candidate when the 95% confidence
  interval of the uncalibrated risks' slope on the tuning rows excludes 1 (the tuning rows
  show the risks too spread or too compressed, which Brier barely sees);
- ``slope_band``: as ``one_se``, but ``none`` is not a candidate when that slope lies
  outside [0.8, 1.25];
- ``none``, ``sigmoid``, ``isotonic``: that calibrator, always.

    python benchmarks/calibration_rule.py --seeds 101,102,103,104,105,106 \\
        --tasks t2d_2y,ckd3_2y --work /tmp/fwv38

``--generator session38`` builds the networks with session 38's prediabetes coding
(60% of incident cases, 35% of non-cases from HbA1c 5.7%), in ``WORK/session38``.

Prints each cell's held-out Brier, calibration slope and CITL, and ICI per rule, and a
summary: mean Brier, mean |slope - 1|, mean |CITL|, mean ICI, and how often each rule's
held-out Brier is the cell's lowest.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_variants import build  # noqa: E402

import forewarn.records.demo as demo  # noqa: E402
from forewarn.evaluation.clinical import EPS, _logistic_fit, calibration_stats  # noqa: E402
from forewarn.features.featurize import FeatureMatrix  # noqa: E402
from forewarn.models.calibration import (  # noqa: E402
    MIN_ISOTONIC_EVENTS,
    choose_calibrator,
    cv_predictions,
    fit_calibrator,
    simplest_within_one_se,
)
from forewarn.models.train import UNCALIBRATED, ModelConfig, train_models  # noqa: E402
from forewarn.records import schema  # noqa: E402

RULES = ("one_se", "lowest", "slope_ci", "slope_band", "none", "sigmoid", "isotonic")
GENERATORS = {"current": {}, "session38": {"PREDIABETES_CASE_SHARE": 0.6, "PREDIABETES_NOISE_A1C": 5.7,
                                           "PREDIABETES_NOISE_SHARE": 0.35}}


def tuning_slope(p, y) -> tuple[float, float] | None:
    """The slope ``b`` of ``logit P(y) = a + b logit(p)`` on (p, y) and its standard error
    (inverse Fisher information); None without an estimate."""
    fit = _logistic_fit(logit(np.clip(p, EPS, 1 - EPS)), y, np.zeros(y.size))
    if fit is None:
        return None
    lp = logit(np.clip(p, EPS, 1 - EPS))
    X = np.column_stack([np.ones(y.size), lp])
    mu = expit(X @ fit)
    cov = np.linalg.inv((X * (mu * (1 - mu))[:, None]).T @ X)
    return float(fit[1]), float(np.sqrt(cov[1, 1]))


def _one_se(p, y, subjects, candidates):
    preds = cv_predictions(p, y, candidates, groups=subjects)
    if not preds:
        return fit_calibrator(p, y, "none")
    chosen = fit_calibrator(p, y, simplest_within_one_se({m: (v - y) ** 2 for m, v in preds.items()}, subjects))
    return chosen if chosen.method != "sigmoid" or chosen.b > 0 else fit_calibrator(p, y, "none")


def calibrators(p, y, subjects) -> dict:
    """Each rule's calibrator fitted on the tuning rows (p, y)."""
    out = {"one_se": choose_calibrator(p, y, groups=subjects)[0]}
    candidates = ["none", "sigmoid"] + (["isotonic"] if min(y.sum(), (~y).sum()) >= MIN_ISOTONIC_EVENTS else [])
    preds = cv_predictions(p, y, candidates, groups=subjects)
    lowest = min(preds, key=lambda m: float(np.mean((preds[m] - y) ** 2))) if preds else "none"
    out["lowest"] = fit_calibrator(p, y, lowest)
    slope = tuning_slope(p, y)
    refits = candidates[1:]
    off_ci = slope is not None and abs(slope[0] - 1) > 1.96 * slope[1]
    off_band = slope is not None and not 0.8 <= slope[0] <= 1.25
    out["slope_ci"] = _one_se(p, y, subjects, refits if off_ci else candidates)
    out["slope_band"] = _one_se(p, y, subjects, refits if off_band else candidates)
    for method in ("none", "sigmoid", "isotonic"):
        out[method] = fit_calibrator(p, y, method)
    return out


def _f(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="101,102,103,104,105,106")
    parser.add_argument("--tasks", default="t2d_2y,ckd3_2y")
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fw-variants"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--generator", choices=sorted(GENERATORS), default="current")
    args = parser.parse_args()
    for name, value in GENERATORS[args.generator].items():
        setattr(demo, name, value)
    work = args.work if args.generator == "current" else args.work / args.generator
    cells = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for task in args.tasks.split(","):
            for cell, paths in build(args.people, seed, work, [task]).items():
                with tempfile.TemporaryDirectory() as tmp:
                    trained = train_models(FeatureMatrix(Path(paths["ours"])), Path(tmp), ModelConfig(n_jobs=args.threads))
                    raw = pd.read_parquet(trained.predictions_path(UNCALIBRATED))
                    chosen = json.loads(trained.summary_path.read_text())["calibration"]["method"]
                tune, held = raw[raw[schema.SPLIT] == "tuning"], raw[raw[schema.SPLIT] == "held_out"]
                y_t = tune[schema.BOOLEAN_VALUE].to_numpy(bool)
                y_h = held[schema.BOOLEAN_VALUE].to_numpy(bool)
                fitted = calibrators(tune[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float), y_t,
                                     tune[schema.SUBJECT_ID].to_numpy())
                p_h = held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)
                scores = {}
                for rule, calibrator in fitted.items():
                    s = calibration_stats(y_h, calibrator(p_h))
                    scores[rule] = {"method": calibrator.method, **{k: s.get(k) for k in (
                        "brier", "calibration_slope", "calibration_in_the_large", "ici")}}
                key = f"seed{seed}/{cell}"
                cells[key] = scores
                assert scores["one_se"]["method"] == chosen, (key, chosen)
                print(f"{key}: events tuning/held-out {int(y_t.sum())}/{int(y_h.sum())}; " + " | ".join(
                    f"{r} ({v['method']}) {_f(v['brier'], '.5f')} {_f(v['calibration_slope'], '.3f')} "
                    f"{_f(v['calibration_in_the_large'], '+.3f')} {_f(v['ici'], '.4f')}" for r, v in scores.items()),
                    flush=True)
    if args.json:
        args.json.write_text(json.dumps(cells, indent=1))
    # Isotonic forced below MIN_ISOTONIC_EVENTS tuning events can give held-out risks of 0
    # or 1, where no slope exists: the summary is over the other rules, which always have one.
    rules = [r for r in RULES if all(c[r]["calibration_slope"] is not None for c in cells.values())]
    print("\n| rule | cells | mean Brier | mean \\|slope − 1\\| | mean \\|CITL\\| | mean ICI | lowest Brier in |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for rule in rules:
        vals = [c[rule] for c in cells.values()]
        best = sum(c[rule]["brier"] <= min(c[r]["brier"] for r in rules) + 1e-12 for c in cells.values())
        print(f"| {rule} | {len(vals)} | {np.mean([v['brier'] for v in vals]):.5f} | "
              f"{np.mean([abs(v['calibration_slope'] - 1) for v in vals]):.3f} | "
              f"{np.mean([abs(v['calibration_in_the_large']) for v in vals]):.3f} | "
              f"{np.mean([v['ici'] for v in vals]):.4f} | {best} |")
    differ = [k for k, c in cells.items() if c["one_se"]["method"] != c["lowest"]["method"]]
    print(f"\none_se and lowest chose differently in {len(differ)} of {len(cells)} cells: {', '.join(differ) or '-'}")


if __name__ == "__main__":
    main()
