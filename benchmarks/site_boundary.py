"""What the network's site processes cost: the same cyclic boosting with every site in
this process (``SiteRows``) and with each site in a process of its own
(``models.site_process``, calls and answers in ``models.wire``'s plain encoding), on the
demo network's shared-column matrices.

    .venv/bin/python benchmarks/site_boundary.py --people 20000
    .venv/bin/python benchmarks/site_boundary.py --people 20000 --repeat 3 --json /tmp/boundary.json

For each task: the seconds of each way (the processes' start included, as the flow
pays it), whether the trees are byte for byte the same, and what crossed each site's
boundary (answers and encoded bytes by call, ``SiteProcess.summary``). The wire's own
cost is measured apart: encoding and decoding every answer kind a site sends, against
pickle, over the same values.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from federated import pull_site  # noqa: E402

from forewarn.features.featurize import FeatureConfig, featurize  # noqa: E402
from forewarn.features.labels import label_dataset, load_task  # noqa: E402
from forewarn.models import wire  # noqa: E402
from forewarn.models.federated import SiteRows, shared_columns, train_federated  # noqa: E402
from forewarn.models.site_process import SiteProcess  # noqa: E402
from forewarn.models.train import ModelConfig  # noqa: E402
from forewarn.records.demo import generate_network  # noqa: E402


def matrices(task: str, pulls: dict, root: Path) -> dict:
    spec, labels, own = load_task(task), {}, {}
    for site, pull in pulls.items():
        labels[site] = label_dataset(pull.events_dir, spec, root / site / task).load()
        table, splits, _ = labels[site]
        m = featurize(pull.events_dir, table, splits, root / site / task / "own", FeatureConfig(), codes_path=pull.codes_path)
        own[site] = pd.read_parquet(m.columns_path)
    shared = shared_columns(list(own.values()))
    return {site: featurize(pull.events_dir, labels[site][0], labels[site][1], root / site / task / "shared", FeatureConfig(),
                            codes_path=pull.codes_path, columns=shared) for site, pull in pulls.items()}


def in_process(mats: dict, config: ModelConfig, rounds: int):
    start = time.perf_counter()
    sites = [SiteRows(n, m, config.n_jobs) for n, m in mats.items()]
    model = train_federated(sites, config, rounds_per_visit=rounds)
    return model, time.perf_counter() - start


def in_processes(mats: dict, config: ModelConfig, rounds: int):
    start = time.perf_counter()
    sites = [SiteProcess(n, m, config.n_jobs, wait=False) for n, m in mats.items()]
    try:
        for site in sites:
            site.ready()
        started = time.perf_counter() - start
        model = train_federated(sites, config, rounds_per_visit=rounds)
    finally:
        for site in sites:
            site.close()
    return model, time.perf_counter() - start, started


def wire_cost(mats: dict, model, repeat: int = 20) -> list[dict]:
    """Encode + decode every answer kind a site sends, against pickle, on real values."""
    site = SiteRows(*next(iter(mats.items())))
    answers = {"boost (a model)": model.trees, "columns (a table)": site.columns, "label_counts": site.label_counts(),
               "platt_sums (two arrays)": site.platt_sums(model.trees, 0.0, 1.0) if site.can_tune else
               (np.zeros(2), np.zeros((2, 2))), "tuning_logloss": (123.456, 789)}
    out = []
    for name, value in answers.items():
        times = {}
        for codec, enc, dec in (("wire", wire.encode, wire.decode), ("pickle", pickle.dumps, pickle.loads)):
            start = time.perf_counter()
            for _ in range(repeat):
                data = enc(["ok", value])
                dec(data)
            times[codec] = ((time.perf_counter() - start) / repeat * 1e3, len(data))
        out.append({"answer": name, "wire_ms": times["wire"][0], "wire_bytes": times["wire"][1],
                    "pickle_ms": times["pickle"][0], "pickle_bytes": times["pickle"][1]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7, help="the network's seed (7: the demo's network)")
    parser.add_argument("--tasks", nargs="+", default=["t2d_2y", "ckd3_2y"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="trees a site adds per visit")
    parser.add_argument("--repeat", type=int, default=1, help="time each way this many times (the best is shown)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    xgb.set_config(verbosity=0)
    root = Path(tempfile.mkdtemp(prefix="forewarn-boundary-bench-"))
    config = ModelConfig(n_jobs=args.threads)
    start = time.perf_counter()
    pulls = {site: pull_site(db, root / site, site)
             for site, db in generate_network(root / "sites", people=args.people, seed=args.seed).items()}
    print(f"network of {args.people:,} people generated and pulled in {time.perf_counter() - start:.0f} s", flush=True)
    results = []
    for task in args.tasks:
        mats = matrices(task, pulls, root / "m")
        local = [in_process(mats, config, args.rounds) for _ in range(args.repeat)]
        remote = [in_processes(mats, config, args.rounds) for _ in range(args.repeat)]
        same = all(r[0].trees == local[0][0].trees and r[0].calibrator == local[0][0].calibrator for r in remote)
        boundary = remote[0][0].summary["boundary"]["answers"]
        cell = {"task": task, "trees": local[0][0].n_trees, "same_trees": same,
                "in_process_s": min(t for _, t in local), "processes_s": min(t for _, t, _ in remote),
                "processes_start_s": min(s for _, _, s in remote), "boundary": boundary,
                "wire": wire_cost(mats, local[0][0])}
        results.append(cell)
        print(f"\n{task}: {cell['trees']} trees, the same in both ways: {same}; in this process {cell['in_process_s']:.1f} s, "
              f"sites in processes of their own {cell['processes_s']:.1f} s (of which starting them "
              f"{cell['processes_start_s']:.1f} s)", flush=True)
        print("| site | call | answers | bytes |\n|---|---|---:|---:|")
        for site, calls in boundary.items():
            for call, c in calls.items():
                print(f"| {site} | {call} | {c['answers']:,} | {c['bytes']:,} |")
        print("\n| answer | wire: encode + decode (ms) | wire bytes | pickle: dumps + loads (ms) | pickle bytes |\n|---|---:|---:|---:|---:|")
        for w in cell["wire"]:
            print(f"| {w['answer']} | {w['wire_ms']:.3f} | {w['wire_bytes']:,} | {w['pickle_ms']:.3f} | {w['pickle_bytes']:,} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
