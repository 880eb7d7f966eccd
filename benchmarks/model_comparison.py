"""Forewarn's XGBoost against its L1-logistic baseline and a MEDS-Tab-style default
XGBoost, on the same subjects, splits and held-out rows, for every demo task and site.

    .venv/bin/python benchmarks/model_comparison.py --people 20000
    .venv/bin/python benchmarks/model_comparison.py --people 20000 --rare-people 100000

MEDS-Tab-style: MEDS-Tab's default windows (1d, 7d, 30d, 365d, full) and aggregations
(code/count, value/count, value/sum, value/sum_sqd, value/min, value/max), and the
XGBoost of MEDS-Tab's launcher without a sweep (``configs/model_launcher/xgboost.yaml``
and ``xgboost_model.py`` in MEDS_Tabular_AutoML): ``xgb.train`` with XGBoost's default
parameters (depth 6, learning rate 0.3, hist), up to 1,000 rounds, early stopping after 5
rounds without a lower tuning log-loss, predictions from every tree the booster kept
(``Booster.predict``), no calibration. Until session 20 this benchmark used 100 trees
and no early stopping instead, which is not MEDS-Tab's default; that model is still
shown (``MEDSTAB_100``). Beside them (not part of the bar) MEDS-Tab's trees released
under the rule of 11, as Forewarn's must be to leave the site. Prints a Markdown table of held-out AUROC and
AUPRC with patient-bootstrap 95% CIs, then the paired differences (Forewarn XGBoost
minus each baseline, the same subject resamples for both models) with their 95% CIs.

A rare outcome has a handful of held-out events at 20,000 people, too few to separate
the models: ``--rare-people N`` runs the rare tasks (``--rare-tasks``) again on a
network of N people (same seed), so that they have enough held-out events.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from forewarn.evaluation import metrics
from forewarn.evaluation.metrics import evaluate
from forewarn.features.featurize import FeatureConfig, featurize
from forewarn.features.labels import label_dataset, load_task
from forewarn.models.release import ReleaseSettings, release_trees
from forewarn.models.train import (
    BASELINE,
    PRIMARY,
    ModelConfig,
    load_primary,
    split_masks,
    train_models,
    trainability,
)
from forewarn.records import schema
from forewarn.records.deid import DeidConfig, load_secret
from forewarn.records.demo import generate_network
from forewarn.records.omop import pull_omop

MEDSTAB = FeatureConfig(
    windows=["1d", "7d", "30d", "365d", "full"],
    aggs=["code/count", "value/count", "value/sum", "value/sum_sqd", "value/min", "value/max", "static/present", "static/first"],
    min_code_subjects=11, rollup_icd10=False, parent_codes=False,
)
OURS, L1, MEDSTAB_XGB = "Forewarn XGBoost (calibrated)", "L1-logistic", "MEDS-Tab-style default XGBoost"
# Not a bar: the same MEDS-Tab-style trees made fit to leave the site as Forewarn's are
# (``models.release``: every leaf 0 or 11+ train subjects with and without the outcome),
# to show what part of a gap to MEDS-Tab-style is the rule of 11's cost.
MEDSTAB_RELEASED = "MEDS-Tab-style default XGBoost, released (rule of 11)"
# Sessions 1-20's "MEDS-Tab-style default": XGBClassifier's 100 trees, no early stopping.
MEDSTAB_100 = "XGBoost defaults, 100 trees (the baseline through session 20)"
# Not a bar either: Forewarn's own trees without the blend with the L1-logistic (weight 0;
# with their L1 offset where they boost from one, as for the rare outcome), uncalibrated
# (calibration is monotone): what the XGBoost part alone ranks.
TREES = "Forewarn's trees alone (no blend)"
BARS = (L1, MEDSTAB_XGB)
# MEDS-Tab's launcher (MEDS_Tabular_AutoML, configs/model_launcher/xgboost.yaml): the
# model parameters it sets (the rest are XGBoost's defaults) and its training parameters.
MEDSTAB_PARAMS = {"booster": "gbtree", "tree_method": "hist", "objective": "binary:logistic"}
MEDSTAB_ROUNDS, MEDSTAB_PATIENCE = 1000, 5


def medstab_default(X, y, m: dict, threads: int = 2) -> xgb.Booster:
    """MEDS-Tab's XGBoost without a sweep (``XGBoostModel._train``): trained on the train
    rows, early-stopped on the tuning rows' log-loss (the last of its ``evals``); the
    booster keeps the rounds after the best, and MEDS-Tab predicts with all of them."""
    train = xgb.DMatrix(X[m["train"]], label=y[m["train"]])
    tuning = xgb.DMatrix(X[m["tuning"]], label=y[m["tuning"]])
    return xgb.train(MEDSTAB_PARAMS | {"nthread": threads, "seed": 0}, train, num_boost_round=MEDSTAB_ROUNDS,
                     early_stopping_rounds=MEDSTAB_PATIENCE, evals=[(train, "train"), (tuning, "tuning")], verbose_eval=0)
RARE_TASKS = ["pancreatic_cancer_1y"]


def fmt(rec: dict, metric: str) -> str:
    return f"{rec[metric]:.3f} ({rec[metric + '_ci_low']:.3f}–{rec[metric + '_ci_high']:.3f})"


def paired_differences(y: np.ndarray, p: dict[str, np.ndarray], subjects: np.ndarray, *, n_boot: int, seed: int = 0) -> dict:
    """AUROC and AUPRC of ``OURS`` minus each other model: the point difference and a
    95% percentile interval over patient-level resamples, both models scored on the same
    resample (``evaluation.metrics.paired_difference``, as the promotion rule's)."""
    out = {}
    for o in (m for m in p if m != OURS):
        for k in ("auroc", "auprc"):
            d = metrics.paired_difference(y, p[OURS], p[o], subjects, n_boot=n_boot, seed=seed, metric=k)
            out[(o, k)] = (d["difference"], d["ci_low"], d["ci_high"])
    return out


def run_network(people: int, tasks: list[str], root: Path, n_boot: int, config: ModelConfig,
                split_seeds: tuple[int, ...] = (0,)) -> list[dict]:
    """Every (site, task) cell of a ``people``-person demo network: the held-out metric
    records and paired differences of the three models, and how each was trained; once
    per split seed (0 is the nightly flow's)."""
    cells = []
    sites = generate_network(root / "sites", people=people, seed=7)
    for site, db in sites.items():
        pull = pull_omop(db, root / site / "pull", site=site, config=DeidConfig(load_secret(site, demo=True)))
        for split_seed, task in ((s, t) for s in split_seeds for t in tasks):
            spec = load_task(task)
            work = root / site / f"split-{split_seed}"
            labels = label_dataset(pull.events_dir, spec, work, split_seed=split_seed)
            table, splits, _ = labels.load()
            ours = featurize(pull.events_dir, table, splits, work / task / "forewarn", FeatureConfig(), codes_path=pull.codes_path)
            reason = trainability(ours, min_cell=config.leaf_min_cell)
            if reason:  # as the nightly flow does: no model of this cell may leave the site
                cells.append({"people": people, "task": task, "site": site, "split_seed": split_seed, "untrained": reason})
                print_cell(cells[-1])
                continue
            start = time.perf_counter()
            trained = train_models(ours, work / task / "models", config)
            train_s = time.perf_counter() - start
            summary = json.loads(trained.summary_path.read_text())
            key = [schema.SUBJECT_ID, schema.PREDICTION_TIME]
            held_prob, held = {}, None
            for model, name in ((PRIMARY, OURS), (BASELINE, L1)):
                pred = pd.read_parquet(trained.predictions_path(model))
                held = pred[pred[schema.SPLIT] == schema.HELD_OUT].reset_index(drop=True)
                held_prob[name] = held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)
            held_y, held_subject = held[schema.BOOLEAN_VALUE].to_numpy(bool), held[schema.SUBJECT_ID].to_numpy()
            X_ours, r_ours, _ = ours.load()  # the predictions files hold the matrix's rows in its order
            in_held = (r_ours[schema.SPLIT] == schema.HELD_OUT).to_numpy()
            assert (r_ours.loc[in_held, key].reset_index(drop=True) == held[key]).all().all()
            held_prob[TREES] = 1.0 / (1.0 + np.exp(-load_primary(trained).tree_margin(X_ours[in_held])))
            theirs = featurize(pull.events_dir, table, splits, work / task / "medstab", MEDSTAB, codes_path=pull.codes_path)
            X, r, _ = theirs.load()
            y = r[schema.BOOLEAN_VALUE].to_numpy(bool)
            m = split_masks(r)
            booster = medstab_default(X, y, m)
            clf = xgb.XGBClassifier(n_estimators=100, max_depth=6, learning_rate=0.3, tree_method="hist", n_jobs=2, random_state=0)
            clf.fit(X[m["train"]], y[m["train"]])
            held_X = xgb.DMatrix(X[m["held_out"]])
            theirs_rows = r.loc[m["held_out"], key].reset_index(drop=True)

            def aligned(p: np.ndarray, theirs_rows=theirs_rows, held=held, key=key) -> np.ndarray:
                """The same held-out rows as the predictions files, matched on (subject, prediction time)."""
                out = held[key].merge(theirs_rows.assign(p=p), on=key, how="left", validate="one_to_one")
                assert len(out) == len(held) and not out["p"].isna().any(), "MEDS-Tab-style rows differ from Forewarn's"
                return out["p"].to_numpy(float)

            held_prob[MEDSTAB_XGB] = aligned(booster.predict(held_X))
            held_prob[MEDSTAB_100] = aligned(clf.predict_proba(X[m["held_out"]])[:, 1])
            if config.leaf_min_cell > 1:
                train_subjects = r[schema.SUBJECT_ID].to_numpy()[m["train"]]
                released, _ = release_trees(booster, X[m["train"]], y[m["train"]], train_subjects,
                                            ReleaseSettings.from_params(MEDSTAB_PARAMS), min_cell=config.leaf_min_cell)
                held_prob[MEDSTAB_RELEASED] = aligned(released.predict(held_X))
            records = {name: evaluate(held_y, prob, held_subject, n_boot=n_boot, min_cell=1) for name, prob in held_prob.items()}
            cell = {
                "people": people, "task": task, "site": site, "split_seed": split_seed,
                "rows": int(held_y.size), "events": int(held_y.sum()),
                "records": records, "differences": paired_differences(held_y, held_prob, held_subject, n_boot=n_boot),
                "train_seconds": round(train_s, 1), "positives": summary["positives"],
                "xgboost": {"trees": summary["xgboost"]["best_iteration"] + 1, "rare_outcome_defaults": summary["xgboost"].get("rare_outcome_defaults"),
                            "scale_pos_weight": summary["xgboost"]["scale_pos_weight"],
                            "offset": (summary["xgboost"].get("offset") or {"method": "none"})["method"],
                            "blend": (summary["xgboost"].get("blend") or {"weight": 0.0})["weight"]},
                "calibration": summary["calibration"]["method"], "l1_C": summary["l1_logistic"]["C"],
                "medstab": {"best_iteration": int(booster.best_iteration), "trees": int(booster.num_boosted_rounds())},
            }
            cells.append(cell)
            print_cell(cell)
    return cells


def _task(cell: dict) -> str:
    """The task, with the split seed when it is not the nightly flow's."""
    return cell["task"] + (f" (split {cell['split_seed']})" if cell.get("split_seed", 0) else "")


def print_cell(cell: dict) -> None:
    if "untrained" in cell:
        print(f"| {cell['people']:,} | {_task(cell)} | {cell['site']} | not trained: {cell['untrained']} |", flush=True)
        return
    n, events = cell["rows"], cell["events"]
    for name, rec in cell["records"].items():
        print(f"| {cell['people']:,} | {_task(cell)} | {cell['site']} | {n:,} / {events:,} | {name} | {fmt(rec, 'auroc')} | {fmt(rec, 'auprc')} |", flush=True)


def print_tables(cells: list[dict]) -> None:
    print("\n| people | task | site | held-out rows / events | model | AUROC (95% CI) | AUPRC (95% CI) |\n|---:|---|---|---|---|---|---|")
    for cell in cells:
        print_cell(cell)
    print("\nForewarn XGBoost minus baseline, paired patient bootstrap 95% CI:\n")
    print("| people | task | site | events (train / tuning / held-out) | baseline | ΔAUROC (95% CI) | ΔAUPRC (95% CI) |\n|---:|---|---|---|---|---|---|")
    for cell in [c for c in cells if "untrained" not in c]:
        pos = cell["positives"]
        for baseline in [b for b in cell["records"] if b != OURS]:
            d = {k: cell["differences"][(baseline, k)] for k in ("auroc", "auprc")}
            cis = {k: f"{v[0]:+.3f} ({v[1]:+.3f} to {v[2]:+.3f})" for k, v in d.items()}
            print(f"| {cell['people']:,} | {_task(cell)} | {cell['site']} | {pos['train']} / {pos['tuning']} / {pos['held_out']} | {baseline} | {cis['auroc']} | {cis['auprc']} |")
    print("\nTraining: trees, rare-outcome defaults, offset, blend weight on the L1, calibrator, L1 C, train_models seconds\n")
    for cell in [c for c in cells if "untrained" not in c]:
        x = cell["xgboost"]
        print(f"- {cell['people']:,} {_task(cell)} {cell['site']}: {x['trees']} trees, rare defaults {x['rare_outcome_defaults'] or '-'}, offset {x.get('offset', 'none')}, blend {x.get('blend', 0.0)}, "
              f"scale_pos_weight {x['scale_pos_weight']:.0f}, calibration {cell['calibration']}, L1 C {cell['l1_C']}, {cell['train_seconds']} s; "
              f"MEDS-Tab-style {cell['medstab']['trees']} trees (best round {cell['medstab']['best_iteration'] + 1})")


def print_below(cells: list[dict]) -> None:
    """Per split seed: how many of the (cell, baseline, metric) comparisons Forewarn's
    point estimate is below, and which."""
    seeds = sorted({c.get("split_seed", 0) for c in cells})
    for title, baselines, ours in (("a baseline of the bar (the L1-logistic, MEDS-Tab-style)", BARS, OURS),
                                   ("a baseline of the bar, for Forewarn's trees alone (not the model registered)", BARS,
                                    TREES),
                             ("the 100-tree XGBoost of sessions 1-20 (not MEDS-Tab's default)", (MEDSTAB_100,), OURS),
                             ("MEDS-Tab-style released under the rule of 11 (not a bar)", (MEDSTAB_RELEASED,), OURS)):
        trained = [c for c in cells if "untrained" not in c and all(b in c["records"] for b in (*baselines, ours))]
        if not trained:
            continue
        print(f"\nComparisons below {title} (point estimates), per split seed:\n")
        print("| split seed | trained cells | comparisons | below | which (Δ) |\n|---:|---:|---:|---:|---|")
        for seed in seeds:
            these = [c for c in trained if c.get("split_seed", 0) == seed]
            below = [f"{c['site']} {c['task']} {k.upper()} vs {b} ({c['records'][ours][k] - c['records'][b][k]:+.3f})"
                     for c in these for b in baselines for k in ("auroc", "auprc")
                     if c["records"][ours][k] < c["records"][b][k]]
            print(f"| {seed} | {len(these)} | {2 * len(baselines) * len(these)} | {len(below)} | {'; '.join(below) or '-'} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--tasks", nargs="+", default=["t2d_2y", "ckd3_2y", "pancreatic_cancer_1y"])
    parser.add_argument("--rare-people", type=int, default=0, help="also run --rare-tasks on a network of this many people (0: no)")
    parser.add_argument("--rare-tasks", nargs="+", default=RARE_TASKS)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--json", type=Path, help="write the cells here")
    parser.add_argument("--leaf-min-cell", type=int, default=11,
                        help="models.leaf_min_cell: 11 (the default) releases the trees under the rule of 11; 1 keeps them "
                             "as fitted, as before session 16 (development measurement only)")
    parser.add_argument("--split-seeds", type=int, nargs="+", default=[0],
                        help="the subject split's seeds (0: the nightly flow's); more give the same network other splits")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="forewarn-models-bench-"))
    config = ModelConfig(leaf_min_cell=args.leaf_min_cell)
    print("| people | task | site | held-out rows / events | model | AUROC (95% CI) | AUPRC (95% CI) |\n|---:|---|---|---|---|---|---|", flush=True)
    seeds = tuple(args.split_seeds)
    cells = run_network(args.people, args.tasks, root / f"people-{args.people}", args.bootstrap, config, seeds) if args.tasks else []
    if args.rare_people:
        cells += run_network(args.rare_people, args.rare_tasks, root / f"people-{args.rare_people}", args.bootstrap, config, seeds)
    print_tables(cells)
    print_below(cells)
    if args.json:
        args.json.write_text(json.dumps(
            [c if "untrained" in c else {**c, "differences": {f"{o} {k}": v for (o, k), v in c["differences"].items()}}
             for c in cells], indent=1))


if __name__ == "__main__":
    main()
