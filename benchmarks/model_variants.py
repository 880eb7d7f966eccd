"""XGBoost settings against the L1-logistic and a MEDS-Tab-style default XGBoost on a
*development* demo network (seed 101 by default, not the benchmark's seed 7), for
choosing model defaults without looking at the benchmark's held-out rows.

    python benchmarks/model_variants.py --people 20000 --work /tmp/fw-variants
    python benchmarks/model_variants.py --people 20000 --work /tmp/fw-variants \\
        --variants default,mcw5_l5 --cells community/ckd3_2y,academic/pancreatic_cancer_1y

The network is generated, pulled, labelled and featurized once into ``--work`` (both
Forewarn's and the MEDS-Tab-style feature sets) and reused by later calls with the same
``--people`` and ``--seed``. Each variant is an ``XGBoostConfig`` change (or a bag of
seeds) fitted with ``models.train.fit_xgboost`` (early stopping on the tuning split, the
rare-outcome defaults where the variant leaves them unset); the scores are raw
probabilities, which rank as the calibrated ones do (calibration never reorders rows).
Prints held-out AUROC / AUPRC per (site, task) with the trees kept, and marks a
variant below either baseline on either metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import xgboost as xgb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_comparison import MEDSTAB, medstab_default  # noqa: E402

from forewarn.evaluation.metrics import point_metrics  # noqa: E402
from forewarn.features.featurize import FeatureConfig, FeatureMatrix, featurize  # noqa: E402
from forewarn.features.labels import label_dataset, load_task  # noqa: E402
from forewarn.models.train import (  # noqa: E402
    PRIMARY,
    ModelConfig,
    XGBoostConfig,
    crossfit_l1_margins,
    crossfit_tree_margins,
    fit_l1_logistic,
    fit_xgboost,
    split_masks,
    subject_folds,
    train_models,
    xgboost_params,
)
from forewarn.records import schema  # noqa: E402
from forewarn.records.deid import DeidConfig, load_secret  # noqa: E402
from forewarn.records.demo import generate_network  # noqa: E402
from forewarn.records.omop import pull_omop  # noqa: E402

TASKS = ["t2d_2y", "ckd3_2y", "pancreatic_cancer_1y"]
BASELINES = ("L1-logistic", "MEDS-Tab-style")
VARIANTS: dict[str, dict] = {
    "default": {},
    "l1off": {"offset": "crossfit"},
    "l1off_in": {"offset": "insample"},
    "l1off_depth3": {"offset": "crossfit", "xgboost": {"max_depth": 3}},
    "l1off_plain": {"offset": "crossfit", "xgboost": {"max_depth": 4, "min_child_weight": 2, "max_delta_step": 0}},
    "l1off_depth2": {"offset": "crossfit", "xgboost": {"max_depth": 2}},
    "l1off_lr0.02": {"offset": "crossfit", "xgboost": {"learning_rate": 0.02, "n_estimators": 3000, "early_stopping_rounds": 150}},
    "blend0.3": {"blend": 0.3},
    "blend0.5": {"blend": 0.5},
    "blend_tuned": {"blend": "tuned"},
    "blend_auroc": {"blend": "auroc"},
    "blend_stack": {"blend": "stack"},
    "blend_cv": {"blend": "cv"},
    "blend_cvonly": {"blend": "cvonly"},
    "l1off_blend_cv": {"offset": "crossfit", "blend": "cv"},
    "l1off_blend_cvonly": {"offset": "crossfit", "blend": "cvonly"},
    "l1off_blend_stack": {"offset": "crossfit", "blend": "stack"},
    "l1off_blend_tuned": {"offset": "crossfit", "blend": "tuned"},
    "blend_cv_guard": {"blend": "cv_guard"},
    "l1off_blend_cv_guard": {"offset": "crossfit", "blend": "cv_guard"},
    "blend_cv_bag": {"blend": "cv_bag"},
    "l1off_blend_cv_bag": {"offset": "crossfit", "blend": "cv_bag"},
    # The production pipeline itself (train_models: offset auto, crossfit blend, guard,
    # calibrator), scored on its calibrated held-out predictions as model_comparison.py
    # scores it; with an Optuna search of N trials (search.trials) before the final fit.
    "production": {"production": {}},
    "production_search20": {"production": {"search": {"trials": 20}}},
    "production_search50": {"production": {"search": {"trials": 50}}},
    "production_treecount_auto": {"production": {"tree_count": "auto"}},
    "production_best": {"production": {"blend_rule": "best"}},
    # Session 34: the blend's guard floor the better of its parts' (not the L1's alone)
    "production_guard_better": {"production": {"blend_guard_floor": "better"}},
    "production_guard_better_best": {"production": {"blend_guard_floor": "better", "blend_rule": "best"}},
    "production_1se": {"production": {"blend_rule": "one_se"}},
    "production_offset_l1": {"production": {"offset": "l1"}},
    "production_offset_none": {"production": {"offset": "none"}},
    # Session 16: the production pipeline releases its trees under the rule of 11
    # (models.release); this is the pipeline with the trees as XGBoost fitted them.
    "production_as_fitted": {"production": {"leaf_min_cell": 1}},
    # Session 17: a leaf that breaks the rule moves its split's threshold before it is
    # collapsed (models.release); this is session 16's collapse-only release.
    "production_collapse": {"production": {"leaf_move_splits": False}},
    # Trees grown nearer the rule (larger leaves) before they are released; a study-set
    # min_child_weight also replaces the rare-outcome default, so run these on T2D and CKD.
    "production_mcw5": {"production": {"xgboost": {"min_child_weight": 5.0}}},
    "production_mcw10": {"production": {"xgboost": {"min_child_weight": 10.0}}},
    "bag5": {"seeds": (0, 1, 2, 3, 4)},
    "es_auc": {"eval_metric": ["auc"]},
    "es200": {"xgboost": {"early_stopping_rounds": 200, "n_estimators": 2000}},
    "col0.5": {"xgboost": {"colsample_bytree": 0.5}},
    "lr0.02": {"xgboost": {"learning_rate": 0.02, "n_estimators": 3000, "early_stopping_rounds": 150}},
    "depth3": {"xgboost": {"max_depth": 3}},
    "mcw5_l5": {"xgboost": {"min_child_weight": 5, "reg_lambda": 5}},
    "cv5": {"tree_count": "cv"},
    "cv5_mcw5_l5": {"tree_count": "cv", "xgboost": {"min_child_weight": 5, "reg_lambda": 5}},
    "lr0.02_mcw5_l5": {"xgboost": {"learning_rate": 0.02, "n_estimators": 3000, "early_stopping_rounds": 150,
                                   "min_child_weight": 5, "reg_lambda": 5}},
    "depth2": {"xgboost": {"max_depth": 2}},
    "depth6": {"xgboost": {"max_depth": 6}},
    "mcw1": {"xgboost": {"min_child_weight": 1}},
    "mcw10_l10": {"xgboost": {"min_child_weight": 10, "reg_lambda": 10}},
    "mcw5_l5_auc": {"eval_metric": ["auc"], "xgboost": {"min_child_weight": 5, "reg_lambda": 5}},
    "mcw5_l5_col0.5": {"xgboost": {"min_child_weight": 5, "reg_lambda": 5, "colsample_bytree": 0.5}},
    "pt4": {"xgboost": {"num_parallel_tree": 4}},
    "pt4_node0.5": {"xgboost": {"num_parallel_tree": 4, "colsample_bynode": 0.5}},
    "node0.5": {"xgboost": {"colsample_bynode": 0.5}},
    "depth1": {"xgboost": {"max_depth": 1}},
    "mds0": {"xgboost": {"max_delta_step": 0}},
    "mds5": {"xgboost": {"max_delta_step": 5}},
    "mds5_depth2": {"xgboost": {"max_delta_step": 5, "max_depth": 2}},
    "mds0_depth2": {"xgboost": {"max_delta_step": 0, "max_depth": 2}},
    "mds0_mcw0.1": {"xgboost": {"max_delta_step": 0, "min_child_weight": 0.1}},
    "mds0_l5": {"xgboost": {"max_delta_step": 0, "reg_lambda": 5}},
    "lr0.15": {"xgboost": {"learning_rate": 0.15}},
    "mcw0.1": {"xgboost": {"min_child_weight": 0.1}},
    "mcw0.2": {"xgboost": {"min_child_weight": 0.2}},
    "lr0.1": {"xgboost": {"learning_rate": 0.1}},
    "mcw0.02": {"xgboost": {"min_child_weight": 0.02}},
    "mcw0.1_l5": {"xgboost": {"min_child_weight": 0.1, "reg_lambda": 5}},
    "mcw0.1_depth2": {"xgboost": {"min_child_weight": 0.1, "max_depth": 2}},
    "depth2_mcw5_l5": {"xgboost": {"max_depth": 2, "min_child_weight": 5, "reg_lambda": 5}},
    "depth1_lr0.1": {"xgboost": {"max_depth": 1, "learning_rate": 0.1, "n_estimators": 2000}},
    "bag5_lr0.02": {"seeds": (0, 1, 2, 3, 4),
                    "xgboost": {"learning_rate": 0.02, "n_estimators": 3000, "early_stopping_rounds": 150}},
}
# min_child_weight x reg_lambda for rare outcomes: mcw{0.5,2,5}_l{1,5} (mcw5_l5 above).
VARIANTS.update({f"mcw{m}_l{lam}": {"xgboost": {"min_child_weight": m, "reg_lambda": lam}}
                 for m in (0.5, 2, 5) for lam in (1, 5) if (m, lam) != (5, 5)})


def build(people: int, seed: int, work: Path, tasks: list[str] = TASKS) -> dict[str, dict[str, str]]:
    """The (site/task) -> feature matrix folders of the development network, built once."""
    index = work / f"net{people}-seed{seed}" / ("matrices.json" if tasks == TASKS else f"matrices-{'-'.join(tasks)}.json")
    if index.exists():
        return json.loads(index.read_text())
    root = index.parent
    out = {}
    for site, db in generate_network(root / "sites", people=people, seed=seed).items():
        pull = pull_omop(db, root / site / "pull", site=site, config=DeidConfig(load_secret(site, demo=True)))
        for task in tasks:
            table, splits, _ = label_dataset(pull.events_dir, load_task(task), root / site).load()
            ours = featurize(pull.events_dir, table, splits, root / site / task / "forewarn", FeatureConfig(), codes_path=pull.codes_path)
            theirs = featurize(pull.events_dir, table, splits, root / site / task / "medstab", MEDSTAB, codes_path=pull.codes_path)
            out[f"{site}/{task}"] = {"ours": str(ours.dir), "medstab": str(theirs.dir)}
    index.write_text(json.dumps(out, indent=1))
    return out


def offsets(kind: str, X, y, m, subjects: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
    """L1-logistic log-odds for the train, tuning and held-out rows (``offset`` variants):
    tuning and held-out from the L1 fitted on train (C chosen on tuning); train rows
    out-of-fold (``crossfit``, 5 subject folds at that C) or in-sample (``insample``).
    Kept in ``cache`` for the cell's other variants."""
    if kind not in cache:
        config = ModelConfig()
        if "l1" not in cache:
            cache["l1"], _ = fit_l1_logistic(X[m["train"]], y[m["train"]], X[m["tuning"]], y[m["tuning"]], config,
                                             subjects[m["train"]])
        l1 = cache["l1"]
        train = (l1.margin(X[m["train"]]) if kind == "insample" else
                 crossfit_l1_margins(X[m["train"]], y[m["train"]], subjects[m["train"]], l1.C, 5, config.seed, config.l1_tol))
        cache[kind] = {"train": train, "tuning": l1.margin(X[m["tuning"]]), "held_out": l1.margin(X[m["held_out"]])}
    return cache[kind]


def fit_variant(spec: dict, X, y, m, threads: int, subjects: np.ndarray, cache: dict) -> tuple[np.ndarray, list[int]]:
    """Held-out probabilities of one variant (the mean over its seeds) and its tree counts."""
    probs, trees = [], []
    margin = offsets(spec["offset"], X, y, m, subjects, cache) if "offset" in spec else None
    for s in spec.get("seeds", (0,)):
        config = ModelConfig(seed=s, n_jobs=threads, xgboost=XGBoostConfig(**spec.get("xgboost", {})))
        clf = fit_xgboost(X[m["train"]], y[m["train"]], X[m["tuning"]], y[m["tuning"]], config, eval_metric=spec.get("eval_metric"),
                          tree_count=spec.get("tree_count", "tuning"), groups=subjects[m["train"]],
                          margins=None if margin is None else (margin["train"], margin["tuning"]))
        if "blend" in spec:
            probs.append(blend(spec["blend"], clf, X, y, m, margin, cache, subjects, config))
        else:
            probs.append(clf.predict_proba(X[m["held_out"]], base_margin=None if margin is None else margin["held_out"])[:, 1])
        trees.append(int(clf.best_iteration) + 1)
    return np.mean(probs, axis=0), trees


BLEND_GRID = np.round(np.arange(0, 1.01, 0.1), 2)


def blend(weight, clf, X, y, m, margin, cache: dict, subjects=None, config=None) -> np.ndarray:
    """Held-out probabilities of ``(1 - w) * XGBoost log-odds + w * L1 log-odds``: ``w``
    fixed, or ("tuned") the grid value with the best tuning-split objective (AUPRC below
    5% train prevalence, else AUROC; ties to the smaller ``w``). Returns the held-out
    sigmoid of the blend (ranking is what the harness scores)."""
    l1 = cache.setdefault("l1", None) or fit_l1_logistic(X[m["train"]], y[m["train"]], X[m["tuning"]], y[m["tuning"]], ModelConfig(),
                                                         None if subjects is None else subjects[m["train"]])[0]
    cache["l1"] = l1
    part = {k: (clf.predict(X[m[k]], output_margin=True, base_margin=None if margin is None else margin[k]), l1.margin(X[m[k]]))
            for k in ("tuning", "held_out")}
    if weight == "stack":
        # Stacking by likelihood: a logistic regression of the tuning labels on the two
        # log-odds; the weight on the L1 is its share of the two (non-negative) coefficients.
        from sklearn.linear_model import LogisticRegression

        yt = y[m["tuning"]]
        coef = (LogisticRegression(C=1e6, max_iter=1000).fit(np.column_stack(part["tuning"]), yt).coef_.ravel()
                if 0 < yt.sum() < yt.size else np.zeros(2))
        coef = np.clip(coef, 0, None)
        weight = float(np.round(coef[1] / coef.sum(), 2)) if coef.sum() > 0 else 0.0
        cache.setdefault("weights", []).append(weight)
        print(f"      blend weight on the L1 (stack): {weight}", flush=True)
    if weight in ("cv", "cvonly", "cv_guard", "cv_bag"):
        # The weight chosen on out-of-fold log-odds of the train rows (5 subject folds, trees
        # with the final fit's tree count, L1 at its C) and, for "cv", the tuning rows too.
        # cv_guard: the best objective among the weights whose other metric (AUROC when the
        # objective is AUPRC, and the reverse) is at least the L1's (w = 1) on the same rows.
        # cv_bag: the trees' tuning and held-out log-odds are the mean of the final fit's and
        # the five fold fits' (the weight still scored on single fold fits out of fold).
        tr = m["train"]
        if weight == "cv_bag":
            trees, bags = fold_fits(X, y, m, subjects, config, int(clf.best_iteration) + 1, margin)
            for k in ("tuning", "held_out"):
                part[k] = (np.mean([part[k][0], *bags[k]], axis=0), part[k][1])
        else:
            trees = crossfit_tree_margins(X[tr], y[tr], subjects[tr], config, None, int(clf.best_iteration) + 1,
                                          None if margin is None else margin["train"])
        if "l1_oof" not in cache:
            cache["l1_oof"] = crossfit_l1_margins(X[tr], y[tr], subjects[tr], l1.C, 5, 0, ModelConfig().l1_tol)
        zt, zl, ys = trees, cache["l1_oof"], y[tr]
        if weight != "cvonly":
            zt, zl, ys = np.r_[zt, part["tuning"][0]], np.r_[zl, part["tuning"][1]], np.r_[ys, y[m["tuning"]]]
        metric = "auprc" if y[tr].mean() < 0.05 else "auroc"
        other = "auroc" if metric == "auprc" else "auprc"
        points = [point_metrics(ys.astype(bool), 1 / (1 + np.exp(-((1 - w) * zt + w * zl)))) for w in BLEND_GRID]
        scores = [p[metric] for p in points]
        if weight == "cv_guard":
            scores = [s if p[other] >= points[-1][other] else -np.inf for s, p in zip(scores, points, strict=True)]
        label = weight
        weight = float(BLEND_GRID[int(np.argmax(scores))])
        cache.setdefault("weights", []).append(weight)
        print(f"      blend weight on the L1 ({label}): {weight}", flush=True)
    if weight in ("tuned", "auroc"):
        metric = "auroc" if weight == "auroc" else ("auprc" if y[m["train"]].mean() < 0.05 else "auroc")
        yt = y[m["tuning"]].astype(bool)
        scores = [point_metrics(yt, 1 / (1 + np.exp(-((1 - w) * part["tuning"][0] + w * part["tuning"][1]))))[metric] for w in BLEND_GRID]
        weight = float(BLEND_GRID[int(np.argmax(scores))])
        cache.setdefault("weights", []).append(weight)
        print(f"      blend weight on the L1: {weight}", flush=True)
    z = (1 - weight) * part["held_out"][0] + weight * part["held_out"][1]
    return 1 / (1 + np.exp(-z))


def production(matrix: Path, settings: dict, threads: int) -> tuple[np.ndarray, list[int]]:
    """Held-out calibrated probabilities of ``train_models`` with ``ModelConfig(**settings)``
    (the rows in the matrix's order) and its tree count."""
    import tempfile

    import pandas as pd

    config = ModelConfig.model_validate({"n_jobs": threads, **settings})
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_models(FeatureMatrix(matrix), Path(tmp), config)
        pred = pd.read_parquet(trained.predictions_path(PRIMARY))
        summary = json.loads(trained.summary_path.read_text())
    held = pred[pred[schema.SPLIT] == "held_out"]
    print(f"      production {settings}: blend {summary['xgboost']['blend']['weight']}, "
          f"offset {summary['xgboost']['offset']['method']}", flush=True)
    return held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(), [int(summary["xgboost"]["best_iteration"]) + 1]


def fold_fits(X, y, m, subjects, config, n_trees: int, margin) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """``crossfit_tree_margins``' out-of-fold train log-odds, plus each fold fit's log-odds
    for the tuning and held-out rows (the cv_bag variant's bag)."""
    tr = m["train"]
    Xt, yt = X[tr], y[tr]
    kwargs = xgboost_params(yt, config, None)
    kwargs.update(n_estimators=n_trees, early_stopping_rounds=None)
    out, bags = np.empty(Xt.shape[0]), {"tuning": [], "held_out": []}
    for fit_rows, score_rows in subject_folds(yt, subjects[tr], config.cv_folds, config.seed):
        base = None if margin is None else margin["train"]
        clf = xgb.XGBClassifier(**kwargs, n_jobs=config.n_jobs or os.cpu_count())
        clf.fit(Xt[fit_rows], yt[fit_rows], base_margin=None if base is None else base[fit_rows], verbose=False)
        out[score_rows] = clf.predict(Xt[score_rows], output_margin=True, base_margin=None if base is None else base[score_rows])
        for k in bags:
            bags[k].append(clf.predict(X[m[k]], output_margin=True, base_margin=None if margin is None else margin[k]))
    return out, bags


def baselines(cell: str, paths: dict[str, str], X, y, rows, m, threads: int) -> dict[str, np.ndarray]:
    """Held-out probabilities of the L1-logistic and the MEDS-Tab-style default XGBoost,
    fitted once per cell and kept beside its matrix (``baselines.npz``)."""
    # -v2: MEDS-Tab's launcher default (early stopping), since session 21; baselines.npz
    # held the 100-tree XGBoost of sessions 1-20.
    cache = Path(paths["ours"]).parent / "baselines-v2.npz"
    if cache.exists():
        with np.load(cache) as saved:
            return {"L1-logistic": saved["l1"], "MEDS-Tab-style": saved["medstab"]}
    l1, _ = fit_l1_logistic(X[m["train"]], y[m["train"]], X[m["tuning"]], y[m["tuning"]], ModelConfig(),
                            rows[schema.SUBJECT_ID].to_numpy()[m["train"]])
    Xt, rt, _ = FeatureMatrix(Path(paths["medstab"])).load()
    mt = split_masks(rt)
    if not (rt.loc[mt["held_out"], schema.SUBJECT_ID].to_numpy() == rows.loc[m["held_out"], schema.SUBJECT_ID].to_numpy()).all():
        raise SystemExit(f"{cell}: the MEDS-Tab-style held-out rows differ from Forewarn's")
    medstab = medstab_default(Xt, rt[schema.BOOLEAN_VALUE].to_numpy(bool), mt, threads)
    out = {"L1-logistic": l1.predict_proba(X[m["held_out"]]), "MEDS-Tab-style": medstab.predict(xgb.DMatrix(Xt[mt["held_out"]]))}
    np.savez(cache, l1=out["L1-logistic"], medstab=out["MEDS-Tab-style"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=101, help="network seed (the benchmark's is 7: keep away from it)")
    parser.add_argument("--seeds", default="", help="comma list of network seeds (overrides --seed); ends with a summary over every network's cells")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fw-variants"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--cells", default="", help="comma list of site/task (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma list of tasks to build the network's matrices for")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
    seeds = [int(x) for x in args.seeds.split(",") if x] or [args.seed]
    if 7 in seeds:
        parser.error("--seeds: 7 is the benchmark's network; choose variants on other seeds")
    results = {}
    for seed in seeds:
        matrices = build(args.people, seed, args.work, [t for t in args.tasks.split(",") if t])
        for cell in [c for c in args.cells.split(",") if c] or list(matrices):
            key = cell if len(seeds) == 1 else f"seed{seed}/{cell}"
            try:
                results[key] = run_cell(key, matrices[cell], variants, args.threads)
            except ValueError as err:  # train_models refuses a cell (e.g. no tuning event): so would the flow
                print(f"{key}: skipped, {err}", flush=True)
    if len(results) > 1:
        print_summary(results, variants)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def run_cell(cell: str, paths: dict[str, str], variants: list[str], threads: int) -> dict:
    """Every variant's held-out AUROC / AUPRC on one (network, site, task) cell, beside the baselines'."""
    X, rows, _ = FeatureMatrix(Path(paths["ours"])).load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(np.int8)
    m = split_masks(rows)
    held_y = y[m["held_out"]].astype(bool)
    trees: dict[str, list[int]] = {}
    probs = baselines(cell, paths, X, y, rows, m, threads)
    start = time.perf_counter()
    subjects = rows[schema.SUBJECT_ID].to_numpy()
    cache: dict = {}
    for name in variants:
        if "production" in VARIANTS[name]:
            probs[name], trees[name] = production(Path(paths["ours"]), VARIANTS[name]["production"], threads)
        else:
            probs[name], trees[name] = fit_variant(VARIANTS[name], X, y, m, threads, subjects, cache)
    scores = {name: point_metrics(held_y, p) for name, p in probs.items()}
    events = "/".join(str(int(y[m[k]].sum())) for k in ("train", "tuning", "held_out"))
    print(f"{cell}: train/tuning/held-out events {events}; variants {time.perf_counter() - start:.0f} s", flush=True)
    for name, s in scores.items():
        below = [b for b in BASELINES if name in trees and (s["auroc"] < scores[b]["auroc"] or s["auprc"] < scores[b]["auprc"])]
        note = f"  below {', '.join(below)}" if below else ""
        print(f"   {name:16s} AUROC {s['auroc']:.4f}  AUPRC {s['auprc']:.4f}  {trees.get(name, '')}{note}", flush=True)
    return {"events": events, **{name: {"auroc": s["auroc"], "auprc": s["auprc"], "trees": trees.get(name)} for name, s in scores.items()}}


def print_summary(results: dict[str, dict], variants: list[str]) -> None:
    """Per variant over every cell: the mean difference from each baseline (AUROC, AUPRC),
    how many of the 4 x cells comparisons it loses, and its mean difference from the
    default. Cells whose held-out split has fewer than 10 events are left out of the
    means (their AUPRC is a handful of ranks) but still counted in the losses."""
    names = ["variant", "cells", "losses"] + [f"{b} Δ{k}" for b in BASELINES for k in ("AUROC", "AUPRC")] + ["vs default ΔAUROC", "ΔAUPRC"]
    print("\n| " + " | ".join(names) + " |\n|" + "---|" * len(names))
    for v in variants:
        losses, diffs, vs_default = 0, {(b, k): [] for b in BASELINES for k in ("auroc", "auprc")}, {"auroc": [], "auprc": []}
        for r in results.values():
            held = int(r["events"].split("/")[-1])
            for b in BASELINES:
                for k in ("auroc", "auprc"):
                    losses += r[v][k] < r[b][k]
                    if held >= 10:
                        diffs[(b, k)].append(r[v][k] - r[b][k])
            if held >= 10 and "default" in r:
                for k in vs_default:
                    vs_default[k].append(r[v][k] - r["default"][k])
        cells = [f"{np.mean(d):+.4f}" if d else "-" for d in diffs.values()]
        base = [f"{np.mean(d):+.4f}" if d else "-" for d in vs_default.values()]
        print(f"| {v} | {len(results)} | {losses} of {4 * len(results)} | " + " | ".join(cells + base) + " |")


if __name__ == "__main__":
    main()
