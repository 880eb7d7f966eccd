"""Learning curves on a demo network: what ``evaluation.learning_curve`` costs beside
training the model, and what it shows, for every task and site.

    .venv/bin/python benchmarks/learning_curve.py --people 20000 --seed 7 --work /tmp/fwv
    .venv/bin/python benchmarks/learning_curve.py --people 100000 --seed 7 --work /tmp/fwv --tasks pancreatic_cancer_1y

The network and its feature matrices are ``model_variants.py``'s ``build`` (reused when
already built in ``--work``). Per cell: the registered model's training
(``train_models``, default settings) and the learning curve at ``--fractions`` (default
PatientLevelPrediction's 0.25, 0.5, 0.75 and the whole train split), timed on the same
threads, then each point's held-out AUROC / AUPRC for the trees and the L1-logistic.
Published numbers only (the rule of 11), as the report shows them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_variants import build  # noqa: E402

from forewarn.evaluation.learning_curve import LearningCurveConfig, learning_curve, rising  # noqa: E402
from forewarn.features.featurize import FeatureMatrix  # noqa: E402
from forewarn.models.train import ModelConfig, train_models, trainability  # noqa: E402


def fmt(held: dict, metric: str) -> str:
    return "withheld" if held.get("withheld") else f"{held[metric]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fwv"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", help="the demo tasks to build and run (default: all three)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cells = build(args.people, args.seed, args.work, *([args.tasks] if args.tasks else []))
    config = ModelConfig(n_jobs=args.threads)
    curve_config = LearningCurveConfig(fractions=args.fractions)
    results = {}
    for cell, paths in cells.items():
        matrix = FeatureMatrix(Path(paths["ours"]))
        if trainability(matrix):
            print(f"{cell}: not trainable ({trainability(matrix)})", flush=True)
            continue
        started = time.perf_counter()
        trained = train_models(matrix, args.work / "lc" / cell, config)
        train_s = time.perf_counter() - started
        params = (json.loads(trained.summary_path.read_text()).get("search") or {}).get("best_params") or None
        X, rows, _ = matrix.load()
        started = time.perf_counter()
        curve = learning_curve(X, rows, config, params, curve_config, n_boot=200, seed=0)
        curve_s = time.perf_counter() - started
        results[cell] = {"train_seconds": train_s, "curve_seconds": curve_s, "curve": curve}
        print(f"{cell}: training {train_s:.1f} s, learning curve {curve_s:.1f} s", flush=True)
    print("\n| cell | training | curve | " + " | ".join(f"{f:g}" for f in args.fractions) + " | last step's AUROC, paired 98.75% CI (trees / L1) |")
    print("|---|---:|---:|" + "---|" * len(args.fractions) + "---|")
    for cell, r in results.items():
        points = []
        for p in r["curve"]["points"]:
            if not p["fitted"]:
                points.append("not fitted")
                continue
            t, lr = p["held_out"]["xgboost"], p["held_out"]["l1_logistic"]
            points.append(f"{fmt(t, 'auroc')} / {fmt(lr, 'auroc')} ({fmt(t, 'auprc')} / {fmt(lr, 'auprc')})")
        step = r["curve"]["last_step"]
        last = "–" if step is None else " / ".join(
            "{difference:+.3f} ({ci_low:+.3f} to {ci_high:+.3f})".format(**step[k]["auroc"]) for k in ("xgboost", "l1_logistic"))
        last += " rising" if rising(step) else ""
        print(f"| {cell} | {r['train_seconds']:.1f} s | {r['curve_seconds']:.1f} s | " + " | ".join(points) + f" | {last} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
