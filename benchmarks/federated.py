"""One model trained across the network's sites without moving rows (``models.federated``,
cyclic boosting) against each site's own models, on each site's held-out rows.

    .venv/bin/python benchmarks/federated.py --people 20000
    .venv/bin/python benchmarks/federated.py --people 100000 --tasks pancreatic_cancer_1y
    .venv/bin/python benchmarks/federated.py --seed 101 --rounds 1 5 10 25 50 --tasks t2d_2y ckd3_2y   # the rounds per visit

For every task, on the demo network (seed 7; at 20,000 people it is the demo's network):

- **local Forewarn**: the site's registered model (``train_models`` on its own vocabulary);
- **local L1-logistic**: the site's baseline, from the same fit;
- **network XGBoost**: ``train_federated`` over all sites, each featurized in the
  network's shared columns (``shared_columns``): only the model and sums over at least
  11 rows, events and non-events cross a site's boundary;
- **pooled XGBoost (rows moved)**: the same XGBoost settings fitted on every site's train
  rows together, early-stopped on their tuning rows together. A network that may not
  move rows cannot build it; it is here as the ceiling that cyclic boosting aims at.

AUROC and AUPRC with patient-bootstrap 95% CIs on each site's held-out split, the paired
differences of the network model against the others, and the seconds each took.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_comparison import OURS, fmt, paired_differences  # noqa: E402

from forewarn.evaluation.metrics import evaluate  # noqa: E402
from forewarn.features.featurize import FeatureConfig, featurize  # noqa: E402
from forewarn.features.labels import label_dataset, load_task  # noqa: E402
from forewarn.models.federated import SiteRows, shared_columns, train_federated  # noqa: E402
from forewarn.models.train import (  # noqa: E402
    BASELINE,
    PRIMARY,
    ModelConfig,
    fit_xgboost,
    split_masks,
    train_models,
)
from forewarn.records import schema  # noqa: E402
from forewarn.records.deid import DeidConfig, load_secret  # noqa: E402
from forewarn.records.demo import generate_network  # noqa: E402

NETWORK, LOCAL, LOCAL_L1, POOLED = "network XGBoost (federated)", "local Forewarn", "local L1-logistic", "pooled XGBoost (rows moved)"
KEY = [schema.SUBJECT_ID, schema.PREDICTION_TIME]


def held_out(pred_path: Path) -> pd.DataFrame:
    pred = pd.read_parquet(pred_path)
    return pred[pred[schema.SPLIT] == schema.HELD_OUT].reset_index(drop=True)


def pooled_fit(matrices: dict, config: ModelConfig) -> tuple[dict[str, np.ndarray], int]:
    """XGBoost on every site's rows together (the reference a network may not build)."""
    loaded = {site: m.load() for site, m in matrices.items()}
    X = sp.vstack([x for x, _, _ in loaded.values()]).tocsr()
    rows = pd.concat([r for _, r, _ in loaded.values()], ignore_index=True)
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool).astype(np.int8)
    m = split_masks(rows)
    clf = fit_xgboost(X[m["train"]], y[m["train"]], X[m["tuning"]], y[m["tuning"]], config)
    out = {}
    for site, (x, r, _) in loaded.items():
        p = clf.predict_proba(x)[:, 1]
        keep = (r[schema.SPLIT] == schema.HELD_OUT).to_numpy()
        out[site] = r.loc[keep, KEY].reset_index(drop=True).assign(p=p[keep])
    return out, int(clf.best_iteration) + 1


def run_task(task: str, pulls: dict, root: Path, config: ModelConfig, n_boot: int, rounds: list[int]) -> list[dict]:
    spec = load_task(task)
    local, own_columns, labels = {}, {}, {}
    seconds: dict[str, float] = {}
    for site, pull in pulls.items():
        labels[site] = label_dataset(pull.events_dir, spec, root / site / task).load()
        table, splits, _ = labels[site]
        own = featurize(pull.events_dir, table, splits, root / site / task / "own", FeatureConfig(), codes_path=pull.codes_path)
        own_columns[site] = pd.read_parquet(own.columns_path)
        start = time.perf_counter()
        local[site] = train_models(own, root / site / task / "models", config)
        seconds[f"local {site}"] = round(time.perf_counter() - start, 1)
    shared = shared_columns(list(own_columns.values()))
    matrices = {}
    for site, pull in pulls.items():
        table, splits, _ = labels[site]
        matrices[site] = featurize(pull.events_dir, table, splits, root / site / task / "shared", FeatureConfig(),
                                   codes_path=pull.codes_path, columns=shared)
    start = time.perf_counter()
    sites = [SiteRows(site, m, threads=config.n_jobs or 2) for site, m in matrices.items()]
    try:
        model = train_federated(sites, config, rounds_per_visit=rounds[0])
    except ValueError as exc:
        print(f"\n{task}: no network model: {exc}", flush=True)
        return []
    seconds["network"] = round(time.perf_counter() - start, 1)
    network = {s.name: s.write_trained(model, root / s.name / task / "network", config) for s in sites}
    others = {}  # the same network trained with other rounds per visit
    for r in rounds[1:]:
        other = train_federated(sites, config, rounds_per_visit=r)
        others[f"{NETWORK}, {r} rounds/visit"] = (other, {s.name: s.write_trained(other, root / s.name / task / f"network-{r}", config,
                                                                                 baselines=False) for s in sites})
    start = time.perf_counter()
    pooled, pooled_trees = pooled_fit(matrices, config)
    seconds["pooled"] = round(time.perf_counter() - start, 1)
    cells = []
    for site in pulls:
        ours = held_out(local[site].predictions_path(PRIMARY))
        y, subjects = ours[schema.BOOLEAN_VALUE].to_numpy(bool), ours[schema.SUBJECT_ID].to_numpy()
        probs = {LOCAL: ours[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float),
                 LOCAL_L1: held_out(local[site].predictions_path(BASELINE))[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)}
        net = held_out(network[site].predictions_path(PRIMARY))
        aligned = ours[KEY].merge(net[KEY + [schema.PREDICTED_BOOLEAN_PROBABILITY]], on=KEY, how="left", validate="one_to_one")
        assert not aligned[schema.PREDICTED_BOOLEAN_PROBABILITY].isna().any(), "network rows differ from the site's"
        probs[NETWORK] = aligned[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)
        aligned = ours[KEY].merge(pooled[site], on=KEY, how="left", validate="one_to_one")
        probs[POOLED] = aligned["p"].to_numpy(float)
        for name, (_, trained) in others.items():
            alt = held_out(trained[site].predictions_path(PRIMARY))
            aligned = ours[KEY].merge(alt[KEY + [schema.PREDICTED_BOOLEAN_PROBABILITY]], on=KEY, how="left", validate="one_to_one")
            probs[name] = aligned[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)
        records = {name: evaluate(y, p, subjects, n_boot=n_boot, min_cell=1) for name, p in probs.items()}
        # paired_differences reports OURS minus the others: the network model plays OURS here.
        diffs = paired_differences(y, {OURS: probs[NETWORK], **{k: v for k, v in probs.items() if k != NETWORK}}, subjects, n_boot=n_boot)
        cells.append({"task": task, "site": site, "rows": int(y.size), "events": int(y.sum()), "records": records,
                      "differences": diffs, "columns": {"own": len(own_columns[site]), "shared": len(shared)},
                      "trees": {"network": model.n_trees, "pooled": pooled_trees,
                                **{name: other.n_trees for name, (other, _) in others.items()}}, "calibration": model.calibrator.method,
                      "tuning_sites": model.summary["tuning_sites"], "visits": model.summary["visits"], "seconds": seconds})
        print_cell(cells[-1])
    return cells


def print_cell(cell: dict) -> None:
    for name, rec in cell["records"].items():
        print(f"| {cell['task']} | {cell['site']} | {cell['rows']:,} / {cell['events']:,} | {name} | {fmt(rec, 'auroc')} | {fmt(rec, 'auprc')} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--tasks", nargs="+", default=["t2d_2y", "ckd3_2y", "pancreatic_cancer_1y"])
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7, help="the network's seed (7: the demo's network)")
    parser.add_argument("--rounds", type=int, nargs="+", default=[10],
                        help="trees a site adds per visit: the first is the network model compared; the others are listed too")
    args = parser.parse_args()
    xgb.set_config(verbosity=0)
    root = Path(tempfile.mkdtemp(prefix="forewarn-federated-bench-"))
    config = ModelConfig(n_jobs=args.threads)
    start = time.perf_counter()
    pulls = {site: pull_site(db, root / site, site) for site, db in generate_network(root / "sites", people=args.people, seed=args.seed).items()}
    print(f"network of {args.people:,} people generated and pulled in {time.perf_counter() - start:.0f} s\n", flush=True)
    print("| task | site | held-out rows / events | model | AUROC (95% CI) | AUPRC (95% CI) |\n|---|---|---|---|---|---|", flush=True)
    cells = [c for task in args.tasks for c in run_task(task, pulls, root, config, args.bootstrap, args.rounds)]
    print("\nNetwork XGBoost minus each other model, paired patient bootstrap 95% CI:\n")
    print("| task | site | other model | ΔAUROC (95% CI) | ΔAUPRC (95% CI) |\n|---|---|---|---|---|")
    for cell in cells:
        for other in (LOCAL, LOCAL_L1, POOLED):
            d = {k: cell["differences"][(other, k)] for k in ("auroc", "auprc")}
            ci = {k: f"{v[0]:+.3f} ({v[1]:+.3f} to {v[2]:+.3f})" for k, v in d.items()}
            print(f"| {cell['task']} | {cell['site']} | {other} | {ci['auroc']} | {ci['auprc']} |")
    print("\nTraining:\n")
    for cell in cells:
        print(f"- {cell['task']} {cell['site']}: columns own {cell['columns']['own']}, shared {cell['columns']['shared']}; trees network "
              f"{cell['trees']['network']} ({cell['visits']} visits, others {[v for k, v in cell['trees'].items() if 'rounds/visit' in k]}, tuned at {', '.join(cell['tuning_sites'])}, calibration "
              f"{cell['calibration']}), pooled {cell['trees']['pooled']}; seconds {cell['seconds']}")


def pull_site(db: Path, root: Path, site: str):
    from forewarn.records.omop import pull_omop
    return pull_omop(db, root / "pull", site=site, config=DeidConfig(load_secret(site, demo=True)))


if __name__ == "__main__":
    main()
