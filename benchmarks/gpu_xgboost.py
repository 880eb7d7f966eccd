"""Forewarn's XGBoost training and TreeSHAP (``pred_contribs``) on CPU against a GPU.

Two steps, on two machines:

    # here (the forewarn environment): a real Forewarn feature matrix and the params
    .venv/bin/python benchmarks/gpu_xgboost.py --build .xfer/d200k --people 200000

    # on the GPU machine (numpy, scipy and xgboost only)
    python3 benchmarks/gpu_xgboost.py --measure .xfer/d200k --out $OUT/d200k

    # a dry run of --measure without a GPU (the "GPU" side is a second CPU fit)
    .venv/bin/python benchmarks/gpu_xgboost.py --measure .xfer/d200k --out /tmp/dry --gpu-device cpu --repeats 1

``--build`` generates the demo network (``generate_network``), pulls one site
(``pull_omop``), labels a task (``t2d_2y`` by default) and featurizes it with
Forewarn's default ``FeatureConfig``, as ``benchmarks/model_comparison.py`` does. It
writes ``X.npz`` (CSR, compressed), ``y.npy``, ``train.npy``, ``tuning.npy``,
``held_out.npy`` (boolean masks) and ``params.json``: the ``XGBClassifier`` keyword
arguments ``models/train.py`` ``xgboost_params`` gives for the default ``ModelConfig``
(hist trees, early stopping on the tuning split's log-loss, class weighting).

``--measure`` trains that model on the train rows with early stopping on the tuning
rows, once with ``device="cpu"`` (every core) and once with ``device="cuda"``, and
times the fit, ``predict_proba`` on the held-out rows and TreeSHAP on the held-out
rows (``Booster.predict(DMatrix, pred_contribs=True, iteration_range=(0, best + 1))``,
as ``evaluation/explain.py`` calls it). Each timing is the median of ``--repeats``
runs, after one untimed CUDA warm-up fit (context start-up is reported apart). It
reports both models' held-out AUROC, the largest SHAP difference between the CPU and
the GPU computation for the same (CPU-trained) trees, and, for the two different
models, their SHAP additivity and how their global importances agree. It prints a
Markdown table and writes ``gpu_xgboost.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

SPLITS = ("train", "tuning", "held_out")


def build(out: Path, people: int, site: str, task: str, seed: int) -> None:
    import tempfile

    from forewarn.features.featurize import FeatureConfig, featurize
    from forewarn.features.labels import label_dataset, load_task
    from forewarn.models.train import ModelConfig, split_masks, xgboost_params
    from forewarn.records import schema
    from forewarn.records.deid import DeidConfig, load_secret
    from forewarn.records.demo import generate_network
    from forewarn.records.omop import pull_omop

    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="forewarn-gpu-bench-"))
    sites = generate_network(root / "sites", people=people, seed=seed)
    pull = pull_omop(sites[site], root / site / "pull", site=site, config=DeidConfig(load_secret(site, demo=True)))
    labels = label_dataset(pull.events_dir, load_task(task), root / site)
    table, splits, _ = labels.load()
    matrix = featurize(pull.events_dir, table, splits, root / site / task / "features", FeatureConfig(), codes_path=pull.codes_path)
    X, rows, columns = matrix.load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool)
    masks = split_masks(rows)
    out.mkdir(parents=True, exist_ok=True)
    X = sp.csr_matrix(X, dtype=np.float32)
    sp.save_npz(out / "X.npz", X, compressed=True)
    np.save(out / "y.npy", y)
    for name in SPLITS:
        np.save(out / f"{name}.npy", masks[name])
    config = ModelConfig()
    params = xgboost_params(y[masks[schema.TRAIN]].astype(np.int8), config)
    meta = {
        "people": people, "site": site, "task": task, "seed": seed,
        "rows": int(X.shape[0]), "features": int(X.shape[1]), "nnz": int(X.nnz),
        "split_rows": {name: int(masks[name].sum()) for name in SPLITS},
        "split_events": {name: int(y[masks[name]].sum()) for name in SPLITS},
        "build_s": round(time.perf_counter() - t0, 1),
    }
    (out / "params.json").write_text(json.dumps({"params": params, "meta": meta}, indent=2))
    print(json.dumps(meta, indent=2))
    print(f"X.npz: {(out / 'X.npz').stat().st_size / 1e6:.1f} MB; params: {params}")


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    from scipy.stats import rankdata

    y = np.asarray(y, bool)
    r = rankdata(p)
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return result, statistics.median(times), times


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc})"


def measure(data: Path, out: Path, repeats: int, gpu: str = "cuda") -> None:
    import xgboost as xgb

    spec = json.loads((data / "params.json").read_text())
    params, meta = spec["params"], spec["meta"]
    X = sp.load_npz(data / "X.npz").tocsr().astype(np.float32)
    y = np.load(data / "y.npy").astype(np.int8)
    m = {name: np.load(data / f"{name}.npy") for name in SPLITS}
    X_tr, y_tr, X_tu, y_tu = X[m["train"]], y[m["train"]], X[m["tuning"]], y[m["tuning"]]
    X_ho, y_ho = X[m["held_out"]], y[m["held_out"]]
    threads = os.cpu_count() or 1
    print(f"xgboost {xgb.__version__}; CPU threads {threads}; GPU {gpu_name()}", flush=True)
    print(f"X {X.shape[0]:,} x {X.shape[1]:,}, {X.nnz:,} stored; train {X_tr.shape[0]:,}, tuning {X_tu.shape[0]:,}, "
          f"held-out {X_ho.shape[0]:,}; params {params}", flush=True)

    t = time.perf_counter()
    warm = xgb.XGBClassifier(n_estimators=2, tree_method="hist", device=gpu)
    warm.fit(X_tr[:256], y_tr[:256])
    cuda_init_s = time.perf_counter() - t

    res: dict[str, dict] = {}
    models: dict[str, xgb.XGBClassifier] = {}
    for key, device in (("cpu", "cpu"), ("cuda", gpu)):
        def fit(device=device):
            clf = xgb.XGBClassifier(**params, n_jobs=threads, device=device)
            clf.fit(X_tr, y_tr, eval_set=[(X_tu, y_tu)], verbose=False)
            return clf

        clf, fit_s, fit_all = timed(fit, repeats)
        models[key] = clf
        booster = clf.get_booster()
        rng = (0, clf.best_iteration + 1)
        d_ho = xgb.DMatrix(X_ho)
        # predict_proba: the sklearn path (inplace predict; falls back to a DMatrix
        # on the GPU for CPU input), as Forewarn's predictions call it.
        p, pred_s, pred_all = timed(lambda clf=clf: clf.predict_proba(X_ho)[:, 1], repeats)
        shap, shap_s, shap_all = timed(
            lambda b=booster, r=rng, d=d_ho: b.predict(d, pred_contribs=True, iteration_range=r), repeats)
        margin = booster.predict(d_ho, output_margin=True, iteration_range=rng)
        res[key] = {
            "fit_s": fit_s, "fit_all_s": fit_all, "best_iteration": int(clf.best_iteration),
            "predict_s": pred_s, "predict_all_s": pred_all, "shap_s": shap_s, "shap_all_s": shap_all,
            "auroc_held_out": auroc(y_ho, p),
            "shap_additivity_max_abs": float(np.abs(shap.sum(axis=1) - margin).max()),
            "mean_abs_shap": np.abs(shap[:, :-1]).mean(axis=0),
            "shap": shap,
        }
        print(f"{key} ({device}): fit {fit_s:.2f} s (best iteration {clf.best_iteration}), predict {pred_s:.3f} s, "
              f"SHAP {shap_s:.3f} s, AUROC {res[key]['auroc_held_out']:.4f}", flush=True)

    # The same (CPU-trained) trees, explained on the GPU: a purely numerical comparison.
    cpu_booster = models["cpu"].get_booster()
    rng = (0, models["cpu"].best_iteration + 1)
    cpu_booster.set_param({"device": gpu})
    d_ho = xgb.DMatrix(X_ho)
    shap_gpu_same, shap_gpu_same_s, _ = timed(
        lambda: cpu_booster.predict(d_ho, pred_contribs=True, iteration_range=rng), repeats)
    cpu_booster.set_param({"device": "cpu"})
    same_diff = np.abs(shap_gpu_same - res["cpu"]["shap"])
    imp_c, imp_g = res["cpu"]["mean_abs_shap"], res["cuda"]["mean_abs_shap"]
    top = 20
    top_c, top_g = set(np.argsort(-imp_c)[:top]), set(np.argsort(-imp_g)[:top])
    summary = {
        "xgboost": xgb.__version__, "python": platform.python_version(), "cpu_threads": threads,
        "cpu_model": _cpu_model(), "gpu": gpu_name(), "data": meta, "params": params, "repeats": repeats,
        "gpu_device": gpu, "cuda_init_s": cuda_init_s,
        "devices": {d: {k: v for k, v in r.items() if k not in ("shap", "mean_abs_shap")} for d, r in res.items()},
        "speedup": {"fit": res["cpu"]["fit_s"] / res["cuda"]["fit_s"],
                    "predict": res["cpu"]["predict_s"] / res["cuda"]["predict_s"],
                    "shap_own_models": res["cpu"]["shap_s"] / res["cuda"]["shap_s"],
                    "shap_same_trees": res["cpu"]["shap_s"] / shap_gpu_same_s},
        "same_trees": {"shap_gpu_s": shap_gpu_same_s, "shap_max_abs_diff": float(same_diff.max()),
                       "shap_max_abs_value": float(np.abs(res["cpu"]["shap"]).max())},
        "different_models": {
            "shap_max_abs_diff": float(np.abs(res["cuda"]["shap"] - res["cpu"]["shap"]).max()),
            "importance_spearman": _spearman(imp_c, imp_g),
            f"top{top}_overlap": len(top_c & top_g),
            "auroc_diff": res["cuda"]["auroc_held_out"] - res["cpu"]["auroc_held_out"],
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_xgboost.json").write_text(json.dumps(summary, indent=2))
    c, g = res["cpu"], res["cuda"]
    print()
    print(f"| step | CPU ({threads} threads) | GPU (`device=\"{gpu}\"`) | speed-up |\n|---|---|---|---|")
    print(f"| fit, early stopping (best iteration) | {c['fit_s']:.2f} s ({c['best_iteration']}) | "
          f"{g['fit_s']:.2f} s ({g['best_iteration']}) | {summary['speedup']['fit']:.1f}x |")
    print(f"| predict_proba, {X_ho.shape[0]:,} held-out rows | {c['predict_s']:.3f} s | {g['predict_s']:.3f} s | "
          f"{summary['speedup']['predict']:.1f}x |")
    print(f"| TreeSHAP, own model | {c['shap_s']:.3f} s | {g['shap_s']:.3f} s | {summary['speedup']['shap_own_models']:.1f}x |")
    print(f"| TreeSHAP, the CPU model's trees | {c['shap_s']:.3f} s | {shap_gpu_same_s:.3f} s | "
          f"{summary['speedup']['shap_same_trees']:.1f}x |")
    print(f"| held-out AUROC | {c['auroc_held_out']:.4f} | {g['auroc_held_out']:.4f} | |")
    print(f"| SHAP additivity, max abs | {c['shap_additivity_max_abs']:.2e} | {g['shap_additivity_max_abs']:.2e} | |")
    print()
    print(f"CUDA warm-up fit (context start-up): {cuda_init_s:.2f} s")
    print(f"Same trees, SHAP CPU vs GPU: max abs diff {summary['same_trees']['shap_max_abs_diff']:.3e} "
          f"(largest |SHAP| {summary['same_trees']['shap_max_abs_value']:.3f})")
    print(f"Different models (CPU- vs GPU-trained): SHAP max abs diff {summary['different_models']['shap_max_abs_diff']:.3f}, "
          f"mean|SHAP| Spearman {summary['different_models']['importance_spearman']:.3f}, "
          f"top-{top} overlap {summary['different_models'][f'top{top}_overlap']}/{top}")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    keep = (a > 0) | (b > 0)
    return float(spearmanr(a[keep], b[keep]).statistic) if keep.sum() > 2 else float("nan")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--build", type=Path, metavar="DIR", help="write the feature matrix and params here")
    mode.add_argument("--measure", type=Path, metavar="DIR", help="time CPU against CUDA on the data in DIR")
    parser.add_argument("--people", type=int, default=50_000, help="--build: people in the demo network")
    parser.add_argument("--site", default="community", help="--build: the site to pull and featurize")
    parser.add_argument("--task", default="t2d_2y", help="--build: the task to label")
    parser.add_argument("--seed", type=int, default=7, help="--build: the network seed")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="--measure: JSON goes here")
    parser.add_argument("--gpu-device", default="cuda", help="--measure: the device compared with the CPU (cpu: a dry run)")
    parser.add_argument("--repeats", type=int, default=3, help="--measure: timed runs of each step (median)")
    args = parser.parse_args()
    if args.build:
        build(args.build, args.people, args.site, args.task, args.seed)
    else:
        measure(args.measure, args.out, args.repeats, args.gpu_device)


if __name__ == "__main__":
    sys.exit(main())
