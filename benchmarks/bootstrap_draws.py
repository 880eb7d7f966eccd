"""What the number of patient-bootstrap draws costs and changes: the demo network's T2D
cell at each site (pulled, labelled, featurized and trained as the flow does), then
``evaluate_and_explain`` timed at each number of draws, with the AUROC's 95% interval.

    .venv/bin/python benchmarks/bootstrap_draws.py --people 20000 --draws 200 1000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from forewarn.evaluation.evaluate import EvaluationConfig, evaluate_and_explain
from forewarn.features.featurize import FeatureConfig, featurize
from forewarn.features.labels import label_dataset, load_task
from forewarn.models.train import ModelConfig, train_models
from forewarn.records.deid import DeidConfig, load_secret
from forewarn.records.demo import generate_network
from forewarn.records.omop import pull_omop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--draws", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--task", default="t2d_2y")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="forewarn-bootstrap-bench-"))
    sites = generate_network(root / "sites", people=args.people, seed=7)
    print("| site | draws | evaluate_and_explain, s | AUROC 95% CI |\n|---|---:|---:|---|")
    for site, db in sites.items():
        pull = pull_omop(db, root / site / "pull", site=site, config=DeidConfig(load_secret(site, demo=True)))
        labels = label_dataset(pull.events_dir, load_task(args.task), root / site / "labels")
        table, splits, _ = labels.load()
        matrix = featurize(pull.events_dir, table, splits, root / site / "features", FeatureConfig(),
                           codes_path=pull.codes_path)
        trained = train_models(matrix, root / site / "models", ModelConfig())
        for draws in args.draws:
            start = time.perf_counter()
            evaluation = evaluate_and_explain(matrix, trained, root / site / f"evaluation-{draws}",
                                              EvaluationConfig(bootstrap=draws), site=site,
                                              outcomes_path=labels.outcomes_path)
            held = evaluation.load_metrics()["held_out"]["xgboost"]
            print(f"| {site} | {draws:,} | {time.perf_counter() - start:.1f} | "
                  f"{held['auroc_ci_low']:.3f}-{held['auroc_ci_high']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
