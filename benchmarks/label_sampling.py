"""What the draw of prediction times does to a task's outcome rate (``prediction_times``:
``max_per_subject`` and ``sample_from``, ``features.labels.PredictionTimes``).

A worklist scores each person still at risk once, at their latest visit: its people count
in proportion to their time at risk. Drawing a task's times among the visits that survive
the exclusions (``sample_from: eligible``) counts each person once however short their time
at risk, and a future case's visits all lie before their onset, so the draw lands in their
outcome window far more often than a night's worklist does. Printed per task and site:
labelled times, positives and the outcome rate under each draw, and under every time at
risk (no cap) for reference.

    python benchmarks/label_sampling.py --people 20000 --seed 101 --work /tmp/fw40

The network and its pull are made once under ``WORK/net<people>-seed<seed>`` (where
``calibration_rule.py`` and ``model_variants.py`` put theirs) and reused.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from forewarn.features.labels import label_dataset, load_task
from forewarn.records import schema
from forewarn.records.deid import DeidConfig, load_secret
from forewarn.records.demo import generate_network
from forewarn.records.omop import pull_omop

DRAWS = {"eligible, 1": ("eligible", 1), "population, 1": ("population", 1), "population, 2": ("population", 2),
         "population, 3": ("population", 3), "population, 5": ("population", 5), "every time": ("eligible", 10**6)}


def events(people: int, seed: int, work: Path) -> dict[str, Path]:
    root = work / f"net{people}-seed{seed}"
    sites = {s: root / s / "pull" / "events" for s in ("academic", "community")}
    if all(p.is_dir() for p in sites.values()):
        return sites
    for site, db in generate_network(root / "sites", people=people, seed=seed).items():
        pull_omop(db, root / site / "pull", site=site, config=DeidConfig(load_secret(site, demo=True)))
    return sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--tasks", default="t2d_2y,ckd3_2y")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fw-variants"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = {}
    print("| task | site | " + " | ".join(f"{d}: times / positives / rate" for d in DRAWS) + " |")
    print("|---|---|" + "---:|" * len(DRAWS))
    for task in args.tasks.split(","):
        base = load_task(task)
        for site, path in events(args.people, args.seed, args.work).items():
            cells = {}
            for name, (where, k) in DRAWS.items():
                times = base.prediction_times.model_copy(update={"sample_from": where, "max_per_subject": k})
                with tempfile.TemporaryDirectory() as tmp:
                    table = label_dataset(path, base.model_copy(update={"prediction_times": times}), Path(tmp)).load()[0]
                y = table.column(schema.BOOLEAN_VALUE).to_numpy(zero_copy_only=False)
                cells[name] = {"times": int(y.size), "positives": int(y.sum()), "rate": float(y.mean())}
            out[f"{task}/{site}"] = cells
            print(f"| {task} | {site} | " + " | ".join(
                f"{c['times']:,} / {c['positives']:,} / {c['rate']:.4f}" for c in cells.values()) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
