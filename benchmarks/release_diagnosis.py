"""What the rule of 11 on the leaves costs Forewarn's trees, and whether one group of
columns explains it: the trees alone (``fit_xgboost``, default settings, uncalibrated)
released (``leaf_min_cell`` 11) and as fitted (1), with all columns and without those
whose name matches ``--drop``, on development networks' matrices (built once by
``model_variants.build``; the benchmark network is seed 7).

    python benchmarks/release_diagnosis.py --cells 7:academic,103:community,101:academic \\
        --task t2d_2y --drop '714628002|R73' --work /tmp/fwv38

Prints, for each column dropped, how many train subjects hold it and how many of them
have the outcome (development data only: these counts stay on this machine), then the
held-out AUROC / AUPRC of the four fits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_variants import build  # noqa: E402

from forewarn.evaluation.metrics import point_metrics  # noqa: E402
from forewarn.features.featurize import FeatureMatrix  # noqa: E402
from forewarn.models.train import ModelConfig, fit_xgboost, split_masks  # noqa: E402
from forewarn.records import schema  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="7:academic", help="comma list of network seed:site")
    parser.add_argument("--task", default="t2d_2y")
    parser.add_argument("--drop", default="714628002|R73", help="regular expression on column names")
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fw-variants"))
    args = parser.parse_args()
    for cell in args.cells.split(","):
        seed, site = cell.split(":")
        paths = build(args.people, int(seed), args.work, [args.task])[f"{site}/{args.task}"]
        X, rows, cols = FeatureMatrix(Path(paths["ours"])).load()
        y = rows[schema.BOOLEAN_VALUE].to_numpy(np.int8)
        m = split_masks(rows)
        subjects = rows[schema.SUBJECT_ID].to_numpy()
        names = cols["name"].astype(str)
        dropped = names.str.contains(args.drop, regex=True).to_numpy()
        train = X[m["train"]].tocsc()
        y_train = y[m["train"]].astype(bool)
        for j in np.flatnonzero(dropped):
            holders = np.unique(subjects[m["train"]][train[:, j].indices])
            with_outcome = np.unique(subjects[m["train"]][train[:, j].indices[y_train[train[:, j].indices]]])
            print(f"  {names[j]}: {holders.size} train subjects hold it, {with_outcome.size} with the outcome")
        out = []
        for label, XX in (("all columns", X), ("dropped", X[:, np.flatnonzero(~dropped)])):
            for name, min_cell in (("released", 11), ("as fitted", 1)):
                clf = fit_xgboost(XX[m["train"]], y[m["train"]], XX[m["tuning"]], y[m["tuning"]],
                                  ModelConfig(n_jobs=2, leaf_min_cell=min_cell), groups=subjects[m["train"]])
                s = point_metrics(y[m["held_out"]].astype(bool), clf.predict_proba(XX[m["held_out"]])[:, 1])
                out.append(f"{label}, {name} {s['auroc']:.3f} / {s['auprc']:.3f}")
        print(f"seed {seed} {site} {args.task}: " + " | ".join(out), flush=True)


if __name__ == "__main__":
    main()
