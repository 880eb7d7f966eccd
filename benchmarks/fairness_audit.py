"""What the race and ethnicity audit costs a night, and what the demo draws.

Each evaluation now reads every held-out person's race and ethnicity from the pull's
static codes (``evaluation.evaluate.audit_levels``), and the people ledger and the
worklist's follow-up read them per label row (``label_demographics``). Printed per site:
people, the shares of each race and ethnicity level (the generator's draw, a stream of
its own), and the seconds each read takes (best of three).

    python benchmarks/fairness_audit.py --people 20000 --seed 101 --work /tmp/fw41

The network and its pull are made once under ``WORK/net<people>-seed<seed>`` (as
``label_sampling.py`` makes them) and reused.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import duckdb
from label_sampling import events

from forewarn.evaluation.evaluate import audit_levels, label_demographics
from forewarn.features.labels import label_dataset, load_task


def best_of(n: int, fn):
    times, out = [], None
    for _ in range(n):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--task", default="t2d_2y")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fw-variants"))
    args = parser.parse_args()
    print("| site | people | label rows | audit_levels, all people (s) | label_demographics, all label rows (s) | race | ethnicity |")
    print("|---|---:|---:|---:|---:|---|---|")
    for site, path in events(args.people, args.seed, args.work).items():
        labels = label_dataset(path, load_task(args.task), path.parent.parent / f"labels-{args.task}")
        everyone = duckdb.sql(f"SELECT DISTINCT subject_id FROM read_parquet('{path}/*.parquet')").df()["subject_id"]
        seconds, levels = best_of(3, lambda p=path, s=everyone: audit_levels(p, s))
        seconds_rows, rows = best_of(3, lambda p=path, lab=labels: label_demographics(p, lab.labels_path))
        share = {group: ", ".join(f"{k} {v / len(levels):.1%}" for k, v in
                                  levels[group].fillna("unrecorded").value_counts().items())
                 for group in ("race", "ethnicity")}
        print(f"| {site} | {len(levels):,} | {len(rows):,} | {seconds:.2f} | {seconds_rows:.2f} | {share['race']} | "
              f"{share['ethnicity']} |")


if __name__ == "__main__":
    main()
