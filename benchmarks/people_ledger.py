"""What the rule of 11 between nights costs a site each night (``records.people``).

A synthetic pull of N people with E events each (MEDS events, one shard per 100,000
people, each with a birth and a gender row) and a task's labels (2 prediction times per
person, 70/15/15 splits): the time and peak memory of the people digests, of the
held-out subgroup levels, of one task's people table (with the levels), of comparing a night
with K published nights, and the ledger's size on disk. No peer keeps such a ledger
(MEDS-Tab, ACES, PatientLevelPrediction and FEMR publish whatever a run computes), so
the yardstick is the pull itself: the demo's 20,000-person network pulls in about 20 s.

    .venv/bin/python benchmarks/people_ledger.py --people 20000 200000 --events 60 --nights 10
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forewarn.evaluation.evaluate import label_demographics
from forewarn.records import schema
from forewarn.records.people import PeopleLedger, person_digests, task_people


def synthetic_pull(folder: Path, people: int, events: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (folder / schema.EVENTS_DIR).mkdir(parents=True)
    for shard, start in enumerate(range(0, people, 100_000)):
        ids = np.arange(start, min(people, start + 100_000), dtype=np.int64)
        n = ids.size * events
        days = np.concatenate([rng.integers(0, 3000, n), rng.integers(-30_000, -7_000, ids.size)])
        times = (np.datetime64("2015-01-01") + days.astype("timedelta64[D]")).astype("datetime64[us]")
        # each person's events, birth (timed) and gender (static: no time)
        table = pa.table({
            "subject_id": np.concatenate([np.repeat(ids, events), ids, ids]),
            "time": pa.array(np.concatenate([times, np.full(ids.size, np.datetime64("NaT"), "datetime64[us]")]),
                             pa.timestamp("us")),
            "code": pa.array(np.concatenate([rng.choice([f"LOINC/{k}" for k in range(300)], n),
                                             np.full(ids.size, schema.BIRTH_CODE),
                                             rng.choice(["Gender//F", "Gender//M"], ids.size)])),
            "numeric_value": pa.array(np.concatenate([rng.normal(size=n), np.full(2 * ids.size, np.nan)]).astype(np.float32),
                                      from_pandas=True),  # NaN as null, as a pull writes it
        })
        pq.write_table(schema.align(table, schema.DATA_SCHEMA), folder / schema.EVENTS_DIR / f"{shard}.parquet")


def synthetic_labels(folder: Path, people: int, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(people, dtype=np.int64), 2)
    labels = pd.DataFrame({"subject_id": ids,
                           "prediction_time": pd.Timestamp("2020-01-01") + pd.to_timedelta(np.tile([0, 365], people), "D"),
                           "boolean_value": rng.random(ids.size) < 0.03})
    splits = pd.DataFrame({"subject_id": np.arange(people, dtype=np.int64),
                           "split": rng.choice(["train", "tuning", "held_out"], people, p=[0.7, 0.15, 0.15])})
    folder.mkdir(parents=True, exist_ok=True)
    labels.to_parquet(folder / "labels.parquet", index=False)
    splits.to_parquet(folder / "splits.parquet", index=False)
    return folder / "labels.parquet", folder / "splits.parquet"


def timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def measure(root: Path, people: int, events: int, nights: int) -> str:
    synthetic_pull(root / "pull", people, events, seed=people)
    _, t_digest = timed(person_digests, root / "pull")
    labels, splits = synthetic_labels(root / "labels", people, seed=1)
    levels, t_levels = timed(label_demographics, root / "pull" / schema.EVENTS_DIR, labels)
    task, t_task = timed(task_people, labels, splits, levels)
    ledger = PeopleLedger(root / "work", task="bench")
    # Published nights that each differ by 11 or more people (so the check reads all).
    ledger.record("n0", task)
    _, t_one = timed(ledger.check, "now", task)
    for k in range(1, nights):
        ledger.record(f"n{k}", task.assign(digest=task["digest"].where(task["subject_id"] % nights != k, 0)))
    _, t_all = timed(ledger.check, "now", task)
    size = sum(p.stat().st_size for p in ledger.folder.glob("*.parquet")) / nights / 1e6
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (f"| {people:,} | {people * events:,} | {t_digest:.2f} | {t_levels:.2f} | {t_task:.2f} | {t_one:.2f} | {t_all:.2f} "
            f"| {size:.2f} | {rss:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--nights", type=int, default=10)
    args = parser.parse_args()
    print("| people | events | digests (s) | subgroup levels (s) | task table (s) | check vs 1 night (s) | check vs "
          f"{args.nights} nights (s) | ledger per night (MB) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for people in args.people:
        with tempfile.TemporaryDirectory() as tmp:
            print(measure(Path(tmp), people, args.events, args.nights), flush=True)


if __name__ == "__main__":
    main()
